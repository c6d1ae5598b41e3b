"""Paired bootstrap of per-episode differences, and the win / tie / loss claim."""

import pytest
import torch

from smat_peft.training.statistics import claim, paired_difference


def test_a_known_difference_is_recovered_with_a_ci_around_it():
    torch.manual_seed(0)
    episodes = torch.rand(2, 200) * 100  # two domains; episodes vary a lot, the difference is a constant 3
    a = [[(e + 3).tolist() for _ in range(3)] for e in episodes]
    b = [[e.tolist()] for e in episodes]
    out = paired_difference(a, b, num_bootstrap=500)
    assert out["difference"] == pytest.approx(3.0)
    assert out["ci95"][0] == pytest.approx(3.0) and out["ci95"][1] == pytest.approx(3.0)  # pairing cancels the rest
    assert out["claim"] == "win" and out["seeds"] == [3, 1] and out["episodes"] == [200, 200]


def test_pairing_narrows_the_ci_against_unpaired_noise():
    torch.manual_seed(0)
    base = torch.rand(1, 300) * 100
    noise = torch.randn(1, 300) * 2
    out = paired_difference([[(base[0] + 1 + noise[0]).tolist()]], [[base[0].tolist()]], num_bootstrap=1000)
    low, high = out["ci95"]
    assert low < out["difference"] < high and 0 < low and high - low < 1.0  # ±0.23 expected, not ±6 (unpaired)


def test_no_difference_is_a_tie_and_a_negative_one_a_loss():
    torch.manual_seed(1)
    scores = (torch.rand(1, 100) * 100).tolist()
    noisy = [[(torch.tensor(scores[0]) + torch.randn(100) * 5).tolist()]]
    assert paired_difference(noisy, [scores], num_bootstrap=500)["claim"] == "tie"
    lower = [[(torch.tensor(scores[0]) - 10).tolist()]]
    assert paired_difference(lower, [scores], num_bootstrap=200)["claim"] == "loss"


def test_seeds_are_resampled_when_there_are_enough():
    episodes = [0.0] * 50
    a = [[[v + s for v in episodes] for s in (0.0, 10.0, 20.0)]]  # the seeds disagree by 10 points
    b = [[episodes]]
    out = paired_difference(a, b, num_bootstrap=500)
    assert out["difference"] == pytest.approx(10.0) and "seeds" in out["resampled"]
    assert out["ci95"][1] - out["ci95"][0] > 5.0  # seed spread shows in the CI
    fixed = paired_difference(a, b, num_bootstrap=500, min_seeds_to_resample=4)
    assert fixed["ci95"] == pytest.approx([10.0, 10.0]) and fixed["resampled"] == ["episodes"]


def test_claim_and_bad_input():
    assert claim([0.1, 2.0]) == "win" and claim([-2.0, -0.1]) == "loss" and claim([-1.0, 1.0]) == "tie"
    with pytest.raises(ValueError, match="same domains"):
        paired_difference([[[1.0]]], [])
    with pytest.raises(ValueError, match="same episodes"):
        paired_difference([[[1.0, 2.0]]], [[[1.0]]])


def test_one_episode_per_domain_is_inconclusive_not_a_win():
    out = paired_difference([[[80.0]], [[70.0]]], [[[60.0]], [[60.0]]], num_bootstrap=200)
    assert out["difference"] == pytest.approx(15.0) and out["ci95"] == pytest.approx([15.0, 15.0])
    assert out["claim"] == "inconclusive"  # a point CI from one episode is no evidence
