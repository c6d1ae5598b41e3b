import math

import pytest
import torch

from smat_peft.heads import class_prototypes, cosine_logits
from smat_peft.masks import HardConcrete
from smat_peft.training.constraint import SparsityConstraint
from smat_peft.training.objective import distillation


def test_lagrangian_raises_multipliers_of_too_dense_experts_only():
    constraint = SparsityConstraint(num_experts=3, target=0.9)
    density = torch.tensor([0.5, 0.1, 0.05])  # too dense, exactly at τ, sparser than τ
    weights = torch.tensor([0.2, 0.3, 0.5])
    constraint.loss(density, weights).backward()
    step = -constraint.multipliers.grad  # what SGD adds
    assert step[0] > 0 and step[1] == pytest.approx(0.0, abs=1e-7) and step[2] < 0
    assert step[0] == pytest.approx((0.9 - 0.5) * 0.2)


def test_multipliers_of_satisfied_experts_are_reset_before_every_task():
    constraint = SparsityConstraint(num_experts=3, target=0.9)
    with torch.no_grad():
        constraint.multipliers.copy_(torch.tensor([2.0, 3.0, 4.0]))
    constraint.loss(torch.tensor([0.5, 0.1, 0.05]), torch.ones(3) / 3)
    assert constraint.multipliers.tolist() == [2.0, 0.0, 0.0]  # only the too-dense expert keeps its λ
    kept = SparsityConstraint(num_experts=3, target=0.9, reset=False)
    with torch.no_grad():
        kept.multipliers.copy_(torch.tensor([2.0, 3.0, 4.0]))
    kept.loss(torch.tensor([0.5, 0.1, 0.05]), torch.ones(3) / 3)
    assert kept.multipliers.tolist() == [2.0, 3.0, 4.0]


def test_constraint_gradient_reaches_the_training_masks_expected_l0():
    """d(loss)/d log α equals the finite difference of λ·α·E[density of the training mask] (β = 2/3)."""
    hc = HardConcrete(beta=2 / 3)
    log_alpha = torch.tensor([[-1.0, 0.5, 2.0], [0.3, -0.2, 1.0]], dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([0.4, 0.6], dtype=torch.float64)
    constraint = SparsityConstraint(num_experts=2, target=0.9).double()
    with torch.no_grad():
        constraint.multipliers.copy_(torch.tensor([1.5, 0.7]))
    density = lambda la: hc.prob_nonzero(la).double().mean(1)  # noqa: E731
    constraint.loss(density(log_alpha), weights).backward()
    eps = 1e-3  # prob_nonzero computes in float32
    for index in [(0, 0), (0, 2), (1, 1)]:
        plus, minus = log_alpha.detach().clone(), log_alpha.detach().clone()
        plus[index] += eps
        minus[index] -= eps
        value = lambda la: float((constraint.multipliers.detach() * weights * density(la)).sum())  # noqa: E731
        numeric = (value(plus) - value(minus)) / (2 * eps)
        assert log_alpha.grad[index].item() == pytest.approx(numeric, rel=1e-3, abs=5e-5)
    # the density is that of the *training* distribution (β = 2/3), not the eval threshold's
    assert hc.prob_nonzero(torch.tensor(0.0)).item() == pytest.approx(torch.sigmoid(torch.tensor(-2 / 3 * math.log(0.1 / 1.1))).item())


def test_forward_and_reverse_distillation_directions():
    student = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 1.0, 0.0]])
    t = 2.0
    p_s, p_t = torch.softmax(student / t, -1), torch.softmax(teacher / t, -1)
    forward = (p_t * (p_t.log() - p_s.log())).sum() * t**2
    reverse = (p_s * (p_s.log() - p_t.log())).sum() * t**2
    assert distillation(student, teacher, t, "forward").item() == pytest.approx(forward.item(), rel=1e-5)
    assert distillation(student, teacher, t, "reverse").item() == pytest.approx(reverse.item(), rel=1e-5)
    distillation(student, teacher.requires_grad_(True), t, "forward").backward()
    assert teacher.grad is None  # the teacher is a target only


def test_cosine_protonet_head():
    features = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    prototypes = class_prototypes(features, torch.tensor([0, 0, 1]), 2)
    logits = cosine_logits(torch.tensor([[1.0, 1.0]]), prototypes, scale=10.0)
    assert torch.allclose(logits, torch.tensor([[10 / 2**0.5, 10 / 2**0.5]]))
