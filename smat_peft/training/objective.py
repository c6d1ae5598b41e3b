# Copyright 2026-present the smat-peft authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The per-task meta-training losses of SMAT and of the dense PMF baseline.

SMAT, for one episode (method notes §4, with the pitfalls as options):

1. α from the support set (frozen-backbone prototypes → router); `θ_i = θ_pre + (Σ α_m z_m) ⊙ δ`.
2. Prototypes from θ_i's support features; `inner_steps` first-order SGD steps on the support loss over θ_i and
   the prototypes (P3).
3. Student query logits; query cross-entropy.
4. Dense teacher: `teacher_steps` query-loss SGD steps from the (detached) student parameters; distillation
   toward its logits (direction configurable, P4), optionally also toward the pre-trained ProtoNet.
5. Sparsity: the per-expert Lagrangian on the training masks' expected density vs τ, weighted by the task's α
   ([`SparsityConstraint`]); router logit penalty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..targets import default_features
from .arguments import MetaTrainingArguments
from .constraint import SparsityConstraint
from .episodes import Episode
from ..heads import class_prototypes, cosine_logits


@dataclass
class TaskLoss:
    """The loss of one task and what to log about it."""

    loss: torch.Tensor
    query_loss: float
    query_accuracy: float
    metrics: dict[str, float]


def distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float, direction: str) -> torch.Tensor:
    """`T² · KL` between temperature-softened distributions; `teacher` is detached.

    `"forward"` is Hinton's `KL(teacher ‖ student)`; `"reverse"` is `KL(student ‖ teacher)`, what the reference
    code computes (pitfall P4).
    """
    log_s = F.log_softmax(student / temperature, dim=-1)
    log_t = F.log_softmax(teacher.detach() / temperature, dim=-1)
    if direction == "forward":
        kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
    else:
        kl = F.kl_div(log_t, log_s, log_target=True, reduction="batchmean")
    return temperature**2 * kl


def _functional_step(loss: torch.Tensor, params: list[torch.Tensor], lr: float, keep_graph: bool) -> list[torch.Tensor]:
    """One first-order SGD step `p − lr · stopgrad(∇p loss)`; with `keep_graph` the result still depends on `params`
    (identity path) and the loss's graph is kept for the outer backward."""
    grads = torch.autograd.grad(loss, params, retain_graph=keep_graph, allow_unused=True)
    base = params if keep_graph else [p.detach() for p in params]
    return [p if g is None else p - lr * g.detach() for p, g in zip(base, grads)]


def smat_task_loss(
    model: nn.Module,
    episode: Episode,
    args: MetaTrainingArguments,
    constraint: SparsityConstraint,
    features: Callable = default_features,
    autocast=None,
) -> TaskLoss:
    """The SMAT loss of one episode for a SMAT `PeftModel` (see the module docstring)."""
    from contextlib import nullcontext

    autocast = autocast or nullcontext
    smat = model.base_model
    backbone = smat.model
    adapter = smat.active_adapters[0]
    xs, ys, xq, yq = (episode.support_pixel_values, episode.support_labels, episode.query_pixel_values,
                      episode.query_labels)
    ways = int(ys.max()) + 1
    scale = args.protonet_scale

    frozen_support = smat.support_features(xs)
    frozen_prototypes = class_prototypes(frozen_support, ys, ways)
    metrics: dict[str, float] = {}
    with smat.task(xs, ys, ways, prototypes=frozen_prototypes) as routed:
        route = routed[adapter]
        theta = smat.task_parameters()
        with autocast():
            support_features = features(backbone, xs)
        prototypes = class_prototypes(support_features, ys, ways)
        for step in range(args.inner_steps):
            if step:
                with autocast():
                    support_features = features(backbone, xs)
            support_loss = F.cross_entropy(cosine_logits(support_features, prototypes, scale), ys)
            *theta, prototypes = _functional_step(support_loss, theta + [prototypes], args.inner_lr, True)
            smat.set_task_parameters(theta)
        with autocast():
            student = cosine_logits(features(backbone, xq), prototypes, scale)
        query_loss = F.cross_entropy(student, yq)
        distilling = args.teacher_steps > 0 or args.pretrained_distillation_share > 0
        loss = (1.0 - args.distillation_weight) * query_loss if distilling else query_loss

        teacher_share = 1.0 - args.pretrained_distillation_share
        if args.teacher_steps and teacher_share > 0:
            teacher_params = [p.detach().requires_grad_(True) for p in theta + [prototypes]]
            for _ in range(args.teacher_steps):
                smat.set_task_parameters(teacher_params[:-1])
                with autocast():
                    teacher_logits = cosine_logits(features(backbone, xq), teacher_params[-1], scale)
                stepped = _functional_step(F.cross_entropy(teacher_logits, yq), teacher_params, args.teacher_lr, False)
                teacher_params = [p.requires_grad_(True) for p in stepped]
            smat.set_task_parameters(teacher_params[:-1])
            with torch.no_grad(), autocast():
                teacher = cosine_logits(features(backbone, xq), teacher_params[-1], scale)
            smat.set_task_parameters(theta)
            kd = distillation(student, teacher, args.distillation_temperature, args.distillation_direction)
            loss = loss + args.distillation_weight * teacher_share * kd
            metrics["distillation"] = kd.item()
        if args.pretrained_distillation_share > 0:
            pretrained = cosine_logits(smat.support_features(xq), frozen_prototypes, scale)
            kd = distillation(student, pretrained, args.distillation_temperature, args.distillation_direction)
            loss = loss + args.distillation_weight * args.pretrained_distillation_share * kd

        expected = smat.expected_density(adapter)
        loss = loss + constraint.loss(expected, route.weights)
        loss = loss + args.router_logit_penalty * route.logits.pow(2).mean()

    metrics.update(
        train_mask_expected_density=expected.mean().item(),
        max_expert_expected_density=expected.max().item(),
        router_entropy=-(route.weights * route.weights.clamp_min(1e-12).log()).sum().item(),
    )
    accuracy = (student.argmax(-1) == yq).float().mean().item()
    return TaskLoss(loss=loss, query_loss=query_loss.item(), query_accuracy=accuracy, metrics=metrics)


def protonet_task_loss(
    model: nn.Module, episode: Episode, args: MetaTrainingArguments, features: Callable = default_features, autocast=None
) -> TaskLoss:
    """The PMF baseline's loss: cosine ProtoNet query cross-entropy of the dense backbone."""
    from contextlib import nullcontext

    autocast = autocast or nullcontext
    ways = int(episode.support_labels.max()) + 1
    with autocast():
        prototypes = class_prototypes(features(model, episode.support_pixel_values), episode.support_labels, ways)
        logits = cosine_logits(features(model, episode.query_pixel_values), prototypes, args.protonet_scale)
    loss = F.cross_entropy(logits, episode.query_labels)
    accuracy = (logits.argmax(-1) == episode.query_labels).float().mean().item()
    return TaskLoss(loss=loss, query_loss=loss.item(), query_accuracy=accuracy, metrics={})
