import math

import pytest
import torch

from smat_peft.masks import HardConcrete, merge_dense, merge_packed, pack_binary


def test_expected_density_matches_monte_carlo():
    hc = HardConcrete(beta=2 / 3, gamma=-0.1, zeta=1.1, noise=True)
    log_alpha = torch.linspace(-3, 3, 13)
    samples = torch.stack([hc.sample(log_alpha.expand(20000, -1)) for _ in range(5)])
    monte_carlo = (samples > 0).float().mean(dim=(0, 1))
    assert torch.allclose(hc.prob_nonzero(log_alpha), monte_carlo, atol=0.01)


def test_expected_density_formula():
    hc = HardConcrete()
    log_alpha = torch.tensor([0.0])
    expected = 1 / (1 + math.exp(-(0.0 - (2 / 3) * math.log(0.1 / 1.1))))
    assert hc.prob_nonzero(log_alpha).item() == pytest.approx(expected, rel=1e-6)


def test_eval_mask_is_deterministic_and_exact_at_the_clip_bounds():
    hc = HardConcrete()
    log_alpha = torch.tensor([-math.log(100), 0.0, math.log(100)])
    assert hc.eval_mask(log_alpha).tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert torch.equal(hc.eval_mask(log_alpha), hc.eval_mask(log_alpha))


def test_training_mask_without_noise_is_the_reference_code_mask():
    hc = HardConcrete(noise=False)
    log_alpha = torch.randn(100)
    expected = (1.2 * torch.sigmoid(1.5 * log_alpha) - 0.1).clamp(0, 1)
    assert torch.allclose(hc.sample(log_alpha), expected, atol=1e-6)
    assert torch.equal(hc.sample(log_alpha), hc.sample(log_alpha))


def test_training_mask_with_noise_is_random_and_differentiable():
    hc = HardConcrete(noise=True)
    log_alpha = torch.zeros(1000, requires_grad=True)
    first, second = hc.sample(log_alpha), hc.sample(log_alpha)
    assert not torch.equal(first, second)
    assert ((first == 0) | (first == 1)).any() and ((first > 0) & (first < 1)).any()
    first.sum().backward()
    assert log_alpha.grad.abs().sum() > 0


@pytest.mark.parametrize("num_experts", [1, 4, 8, 16])
def test_packed_binary_merge_equals_dense_merge(num_experts):
    masks = (torch.rand(num_experts, 7, 5) > 0.7).float()
    weights = torch.rand(num_experts, requires_grad=True)
    packed = merge_packed(pack_binary(masks), weights)
    dense = merge_dense(masks, weights)
    assert torch.allclose(packed, dense, atol=1e-6)
    packed.sum().backward()
    assert torch.allclose(weights.grad, masks.sum(dim=(1, 2)))


def test_pack_refuses_too_many_experts():
    with pytest.raises(ValueError, match="At most 16"):
        pack_binary(torch.ones(17, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_sample_merge_matches_autograd_reference(dtype):
    hc = HardConcrete(noise=False)
    log_alpha = (torch.randn(4, 6, 5) * 2).to(dtype).requires_grad_(True)
    weights = torch.softmax(torch.randn(4), 0).requires_grad_(True)
    upstream = torch.randn(6, 5)
    fused = hc.sample_merged(log_alpha, weights)
    (fused * upstream).sum().backward()
    grads = log_alpha.grad.clone(), weights.grad.clone()
    log_alpha.grad = weights.grad = None
    reference = merge_dense(hc.sample(log_alpha), weights)
    (reference * upstream).sum().backward()
    assert torch.allclose(fused, reference, atol=1e-6)
    assert torch.allclose(grads[0].float(), log_alpha.grad.float(), atol=1e-5)
    assert torch.allclose(grads[1], weights.grad, atol=1e-5)


def test_fused_sample_with_noise_has_the_expected_mean():
    hc = HardConcrete(noise=True)
    log_alpha = torch.zeros(1, 200000)
    merged = hc.sample_merged(log_alpha, torch.ones(1))
    reference = hc.sample(log_alpha)
    assert merged.mean().item() == pytest.approx(reference.mean().item(), abs=0.01)
    assert (merged == 0).float().mean().item() == pytest.approx(1 - hc.prob_nonzero(log_alpha).mean().item(), abs=0.01)


def test_eval_threshold_matches_the_eval_mask():
    hc = HardConcrete()
    log_alpha = torch.linspace(-5, 5, 1001)
    assert torch.equal(hc.eval_mask(log_alpha) > 0, log_alpha > hc.eval_nonzero_threshold)


HARD_CONCRETE_CONSTANTS = [(2 / 3, -0.1, 1.1), (0.5, -0.2, 1.3), (1.0, -0.05, 1.01), (0.3, -1e-3, 1.7)]


@pytest.mark.parametrize("beta, gamma, zeta", HARD_CONCRETE_CONSTANTS)
def test_logit_formulas_are_bit_identical_to_their_closed_forms(beta, gamma, zeta):
    # the formulas export.py and the demo computed inline before they moved here
    hc = HardConcrete(beta=beta, gamma=gamma, zeta=zeta)
    p = (0.5 - gamma) / (zeta - gamma)
    assert hc.eval_logit(0.5) == math.log(p / (1.0 - p))
    p_zero = -gamma / (zeta - gamma)
    assert hc.eval_nonzero_threshold == math.log(p_zero / (1.0 - p_zero))
    p_one = (1.0 - gamma) / (zeta - gamma)
    assert hc.eval_saturation_logit == max(math.log(p_one / (1.0 - p_one)), -math.log(p_zero / (1.0 - p_zero)))
    for tau in (0.5, 0.8, 0.9, 0.95, 0.99):
        shift = beta * math.log(-gamma / zeta)
        assert hc.log_alpha_at_sparsity(tau) == shift + math.log((1 - tau) / tau)


@pytest.mark.parametrize("beta, gamma, zeta", HARD_CONCRETE_CONSTANTS)
def test_logit_formulas_invert_the_masks(beta, gamma, zeta):
    hc = HardConcrete(beta=beta, gamma=gamma, zeta=zeta)
    for value in (0.25, 0.5, 0.75):
        assert hc.eval_mask(torch.tensor(hc.eval_logit(value), dtype=torch.float64)).item() == pytest.approx(value)
    beyond = hc.eval_saturation_logit + 0.01  # exactly at the bound, float32 rounding may leave ~1e-8
    assert hc.eval_mask(torch.tensor([-beyond, beyond])).tolist() == [0.0, 1.0]
    for tau in (0.5, 0.9, 0.99):
        density = hc.prob_nonzero(torch.tensor(hc.log_alpha_at_sparsity(tau))).item()
        assert density == pytest.approx(1 - tau, rel=1e-5)


def test_hard_concrete_from_config_reads_every_mask_setting():
    from smat_peft import SmatConfig

    config = SmatConfig(hard_concrete_beta=0.5, hard_concrete_gamma=-0.2, hard_concrete_zeta=1.3, mask_noise=False,
                        mask_noise_table=False)
    assert HardConcrete.from_config(config) == HardConcrete(beta=0.5, gamma=-0.2, zeta=1.3, noise=False,
                                                            noise_table=False)
    assert HardConcrete.from_config(SmatConfig()) == HardConcrete()


def test_logistic_noise_table_is_exact_reproducible_and_cheap_to_slice():
    from smat_peft.masks import logistic_noise

    torch.manual_seed(0)
    first = logistic_noise((400, 500))
    torch.manual_seed(0)
    assert torch.equal(first, logistic_noise((400, 500)))  # reproducible under torch.manual_seed
    assert not torch.equal(first, logistic_noise((400, 500)))  # a new offset each draw
    # i.i.d. standard logistic: mean 0, variance π²/3, CDF σ(x)
    assert first.mean().item() == pytest.approx(0.0, abs=0.02)
    assert first.var().item() == pytest.approx(math.pi**2 / 3, rel=0.02)
    assert (first < 1.0).float().mean().item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=0.005)
    fresh = logistic_noise((400, 500), table=False)
    assert fresh.var().item() == pytest.approx(math.pi**2 / 3, rel=0.02)


@pytest.mark.parametrize("noise_table", [True, False])
def test_fused_sample_merge_with_noise_matches_reference(noise_table):
    hc = HardConcrete(noise=True, noise_table=noise_table)
    log_alpha = torch.randn(3, 40, 20).requires_grad_(True)
    weights = torch.softmax(torch.randn(3), 0).requires_grad_(True)
    upstream = torch.randn(40, 20)
    torch.manual_seed(1)
    fused = hc.sample_merged(log_alpha, weights)
    (fused * upstream).sum().backward()
    grads = log_alpha.grad.clone(), weights.grad.clone()
    log_alpha.grad = weights.grad = None
    torch.manual_seed(1)
    reference = merge_dense(hc.sample(log_alpha), weights)
    (reference * upstream).sum().backward()
    assert torch.allclose(fused, reference, atol=1e-6)
    assert torch.allclose(grads[0], log_alpha.grad, atol=1e-5)
    assert torch.allclose(grads[1], weights.grad, atol=1e-5)
