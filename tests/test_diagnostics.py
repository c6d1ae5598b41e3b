"""Expert diagnostics on constructed cases: saturation, overlap, specialisation score."""

import pytest
import torch

from smat_peft import SmatConfig, get_smat_model
from smat_peft.diagnostics import (
    domain_spread,
    eval_mask_overlap,
    fresh_router,
    mask_saturation,
    mean_pairwise_l1,
    specialisation_score,
)

from tiny_models import make_tiny_model


def smat(num_experts=4, **kwargs):
    torch.manual_seed(0)
    return get_smat_model(make_tiny_model("vit"), SmatConfig(num_experts=num_experts, **kwargs))


def set_logits(model, fn):
    with torch.no_grad():
        for _, layer in model.base_model.smat_layers():
            for log_alpha in layer.smat_log_alpha["default"]:
                log_alpha.copy_(fn(log_alpha))


def test_mean_pairwise_l1_and_domain_spread():
    assert mean_pairwise_l1([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])]) == \
        pytest.approx(4 / 3)
    assert mean_pairwise_l1([torch.tensor([1.0])]) == 0.0
    weights = {"a": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "b": torch.tensor([[0.5, 0.5]])}
    assert domain_spread(weights) == 0.0  # both domains average to (0.5, 0.5)


def test_identical_routing_scores_zero_and_its_ci_covers_zero():
    torch.manual_seed(0)
    untrained = {d: torch.softmax(torch.randn(30, 4) * 0.3, -1) for d in "abc"}
    trained = {d: w + 1e-4 * torch.randn_like(w) for d, w in untrained.items()}
    out = specialisation_score(trained, untrained, num_bootstrap=300)
    assert out["score"] == pytest.approx(0.0, abs=1e-3)
    assert out["ci95"][0] <= 0.0 <= out["ci95"][1] + 1e-3
    assert specialisation_score(untrained, untrained, num_bootstrap=50)["score"] == 0.0


def test_experts_routed_by_domain_score_above_zero():
    torch.manual_seed(0)
    untrained = {d: torch.softmax(torch.randn(30, 4) * 0.3, -1) for d in "abcd"}
    trained = {}
    for k, d in enumerate("abcd"):  # domain k goes to expert k
        logits = torch.randn(30, 4) * 0.3
        logits[:, k] += 3.0
        trained[d] = torch.softmax(logits, -1)
    out = specialisation_score(trained, untrained, num_bootstrap=300)
    assert out["score"] > 0.5 and out["ci95"][0] > 0
    assert out["trained_spread"] > out["untrained_spread"] and out["tasks_per_domain"] == {d: 30 for d in "abcd"}


def test_specialisation_score_refuses_mismatched_tasks():
    with pytest.raises(ValueError, match="same domains"):
        specialisation_score({"a": torch.ones(2, 2)}, {"b": torch.ones(2, 2)})
    with pytest.raises(ValueError, match="different tasks"):
        specialisation_score({"a": torch.ones(2, 2)}, {"a": torch.ones(3, 2)})


def test_mask_saturation_counts_logits_at_either_clip():
    model = smat(num_experts=3)
    clip = model.peft_config["default"].mask_logit_clip

    def logits(log_alpha):
        out = torch.zeros_like(log_alpha)
        out[0] = clip  # expert 0: all at the upper bound
        out[1] = -clip  # expert 1: all at the lower bound
        return out  # expert 2: none saturated

    set_logits(model, logits)
    out = mask_saturation(model)
    assert out["at_upper"] == pytest.approx([1.0, 0.0, 0.0]) and out["at_lower"] == pytest.approx([0.0, 1.0, 0.0])


def test_eval_mask_overlap_of_identical_and_independent_experts():
    model = smat(num_experts=3)
    torch.manual_seed(1)

    def logits(log_alpha):
        shared = torch.where(torch.rand_like(log_alpha[0]) < 0.3, 4.0, -4.0)
        out = torch.where(torch.rand_like(log_alpha) < 0.3, 4.0, -4.0)
        out[1] = shared
        out[2] = shared  # experts 1 and 2 share one mask; expert 0 is independent
        return out

    set_logits(model, logits)
    out = eval_mask_overlap(model)
    jaccard, baseline = out["jaccard"], out["independent_baseline"]
    assert jaccard[1][2] == pytest.approx(1.0)
    assert jaccard[0][1] == pytest.approx(baseline[0][1], abs=0.03)  # independent: near pq / (p + q − pq)
    assert baseline[0][1] == pytest.approx(0.09 / 0.51, abs=0.03)
    assert out["density"] == pytest.approx([0.3, 0.3, 0.3], abs=0.03)


def test_fresh_router_has_the_adapters_configuration_and_test_temperature():
    model = smat(num_experts=4, router_test_temperature=0.7)
    router = fresh_router(model, seed=0)
    trained = model.base_model.smat_router["default"]
    assert not router.training and router.test_temperature == 0.7 and router.keys.shape == trained.keys.shape
    assert torch.equal(fresh_router(model, seed=0).keys, router.keys)
    assert not torch.equal(router.keys, trained.keys)
