import pytest
import torch

from smat_peft.training.heads import class_prototypes, cosine_logits
from smat_peft.training.objective import distillation, sparsity_losses


def test_lagrangian_raises_multipliers_of_too_dense_experts_only():
    multipliers = torch.zeros(3, requires_grad=True)
    measured = torch.tensor([0.5, 0.9, 0.95])  # too dense, exactly at τ, sparser than τ
    weights = torch.tensor([0.2, 0.3, 0.5])
    lagrangian, _ = sparsity_losses(measured, torch.full((3,), 0.3), multipliers, weights, target=0.9)
    lagrangian.backward()
    step = -multipliers.grad  # what SGD adds
    assert step[0] > 0 and step[1] == 0 and step[2] < 0
    assert step[0] == pytest.approx((0.9 - 0.5) * 0.2)


def test_sparsity_penalty_lowers_expected_density_in_proportion_to_the_multiplier():
    log_alpha = torch.zeros(3, requires_grad=True)
    expected = torch.sigmoid(log_alpha + 1.6)
    multipliers = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    _, penalty = sparsity_losses(torch.zeros(3), expected, multipliers, torch.ones(3) / 3, target=0.9)
    penalty.backward()
    assert log_alpha.grad[0] == 0 and 0 < log_alpha.grad[1] < log_alpha.grad[2]  # SGD lowers log α
    assert multipliers.grad is None or torch.all(multipliers.grad == 0)  # stop-gradient to λ


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
