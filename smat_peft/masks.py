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
"""Hard-concrete masks (Louizos et al., 2018, "Learning Sparse Neural Networks through L0 Regularization").

Each expert `m` owns mask logits `log α_m` shaped like the parameter it masks (or like one column of it, for
structured masks). A mask value is `z = clamp(s · (ζ − γ) + γ, 0, 1)` with `s` a (noisy in training) sigmoid of
`log α`; stretching to `(γ, ζ) ⊃ [0, 1]` and clamping gives exact zeros and ones.

Binary masks are packed into one integer code per element (bit `m` = expert `m`), so that the merged mask
`Σ_m α_m z_m` of a task is a gather from a `2^M`-entry table instead of an `M`-way weighted sum: this is what makes
building a task's weights cheap once training has saturated the masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch


if TYPE_CHECKING:
    from .config import SmatConfig


_EPS = 1e-6
# Largest number of experts whose binary masks are packed into integer codes (table of 2**16 entries).
MAX_PACKED_EXPERTS = 16
# Smallest table of logistic noise (64 MiB in fp32); it grows to twice the largest request.
_MIN_NOISE_TABLE = 2**24
_NOISE_TABLES: dict[tuple[torch.device, float], torch.Tensor] = {}  # per device and scale


def logistic_noise(shape: torch.Size | tuple[int, ...], device: torch.device | str = "cpu", table: bool = True,
                   scale: float = 1.0) -> torch.Tensor:
    """Logistic noise `scale · logit(u)`, `u ~ U(0, 1)` i.i.d., of `shape` (float32), for hard-concrete samples.

    With `table=True` it is a contiguous slice, at an offset drawn from torch's global RNG, of a fixed table of
    i.i.d. samples made once per device from a fixed seed (as the shared noise table of evolution strategies,
    Salimans et al., 2017): the values of one draw are exactly i.i.d. logistic, draws are reproducible under
    `torch.manual_seed`, and a draw costs no random numbers. Two draws may overlap at different positions.

    Example:

    ```py
    >>> torch.manual_seed(0)
    >>> logistic_noise((2, 3)).shape
    torch.Size([2, 3])
    ```
    """
    numel = math.prod(shape)
    if not table:
        return torch.rand(shape, device=device).clamp_(_EPS, 1.0 - _EPS).logit_().mul_(scale)
    device = torch.device(device)
    noise = _NOISE_TABLES.get((device, scale))
    if noise is None or noise.numel() < 2 * numel:
        size = max(_MIN_NOISE_TABLE, 1 << (2 * numel - 1).bit_length())
        generator = torch.Generator().manual_seed(20240721)
        noise = torch.rand(size, generator=generator).clamp_(_EPS, 1.0 - _EPS).logit_().mul_(scale).to(device)
        _NOISE_TABLES[(device, scale)] = noise
    offset = int(torch.randint(0, noise.numel() - numel + 1, (1,)).item())
    return noise[offset: offset + numel].view(shape)


@dataclass(frozen=True)
class HardConcrete:
    """The hard-concrete distribution with temperature `beta` and stretch interval `(gamma, zeta)`.

    A SMAT adapter's masks follow `HardConcrete.from_config(config)`.

    Example:

    ```py
    >>> import torch
    >>> hc = HardConcrete(beta=2 / 3, gamma=-0.1, zeta=1.1)
    >>> hc.eval_mask(torch.tensor([-10.0, 0.0, 10.0]))
    tensor([0.0000, 0.5000, 1.0000])
    >>> hc.eval_logit(0.5), round(hc.eval_saturation_logit, 3)
    (0.0, 2.398)
    ```
    """

    beta: float = 2.0 / 3.0
    gamma: float = -0.1
    zeta: float = 1.1
    noise: bool = True
    noise_table: bool = True

    @classmethod
    def from_config(cls, config: SmatConfig) -> HardConcrete:
        """The distribution of the masks of a SMAT adapter: `config.hard_concrete_{beta,gamma,zeta}`, its
        `mask_noise` and `mask_noise_table`."""
        return cls(
            beta=config.hard_concrete_beta,
            gamma=config.hard_concrete_gamma,
            zeta=config.hard_concrete_zeta,
            noise=config.mask_noise,
            noise_table=config.mask_noise_table,
        )

    def sample(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """A training mask, differentiable w.r.t. `log_alpha` (reparameterised sample)."""
        log_alpha = log_alpha.float()
        if self.noise:
            noise = logistic_noise(log_alpha.shape, log_alpha.device, self.noise_table, scale=1.0 / self.beta)
            s = torch.sigmoid(noise + log_alpha / self.beta)
        else:
            # The reference code's u ~ U(0.5 ± 1e-6): logit(u) is ~0, the mask is deterministic (pitfall P1).
            s = torch.sigmoid(log_alpha / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def eval_mask(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """The deterministic mask used in eval mode: `clamp(σ(log α)·(ζ − γ) + γ, 0, 1)` (not rounded)."""
        s = torch.sigmoid(log_alpha.float())
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def eval_logit(self, value: float) -> float:
        """The `log α` at which the eval mask is `value` (in [0, 1]): `logit((value − γ) / (ζ − γ))`.

        The eval mask increases with `log α`, so it is above `value` exactly where `log α` is above this.
        """
        p = (value - self.gamma) / (self.zeta - self.gamma)
        return math.log(p / (1.0 - p))

    @property
    def eval_nonzero_threshold(self) -> float:
        """`log α` above which the eval mask is non-zero: `eval_logit(0) = logit(−γ / (ζ − γ))`."""
        return self.eval_logit(0.0)

    @property
    def eval_saturation_logit(self) -> float:
        """The `|log α|` from which the eval mask is exactly 0 or 1: `max(eval_logit(1), −eval_logit(0))`, i.e.
        `max(logit((1 − γ)/(ζ − γ)), −logit(−γ/(ζ − γ)))` (`log 11 ≈ 2.4` with the default γ, ζ)."""
        return max(self.eval_logit(1.0), -self.eval_logit(0.0))

    def sample_merged(self, log_alpha: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """`Σ_m weights_m z_m` of freshly sampled training masks `z` of `log_alpha [M, ...]`, in one fused pass.

        Same values and gradients as `merge_dense(self.sample(log_alpha), weights)`, with a fraction of the memory
        traffic: the backward needs only the masks themselves (see `_HardConcreteMerge`).
        """
        return _HardConcreteMerge.apply(log_alpha, weights, self)

    @property
    def _nonzero_shift(self) -> float:
        """`β·log(−γ/ζ)`: `P(z ≠ 0) = σ(log α − β·log(−γ/ζ))`."""
        return self.beta * math.log(-self.gamma / self.zeta)

    def prob_nonzero(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """`P(z ≠ 0) = σ(log α − β·log(−γ/ζ))`, the expected-L0 density of each element (differentiable)."""
        return (log_alpha.float() - self._nonzero_shift).sigmoid_()  # in place: one large allocation instead of two

    def log_alpha_at_sparsity(self, sparsity: float) -> float:
        """The `log α` whose expected-L0 density `prob_nonzero` is `1 − sparsity` (the inverse of `prob_nonzero`):
        `β·log(−γ/ζ) + log((1 − τ) / τ)` for `τ = sparsity` in (0, 1)."""
        return self._nonzero_shift + math.log((1 - sparsity) / sparsity)


class _HardConcreteMerge(torch.autograd.Function):
    """Sample hard-concrete masks and merge them with expert weights; saves only the masks for backward.

    With `z = clamp(s·(ζ−γ) + γ, 0, 1)` and `s = σ((logit(u) + log α)/β)`, `dz/dlog α = (z−γ)(ζ−z) / ((ζ−γ)·β)`
    where `0 < z < 1` and 0 where the mask is clamped, so the sigmoid need not be kept.
    """

    @staticmethod
    def forward(ctx, log_alpha: torch.Tensor, weights: torch.Tensor, hc: "HardConcrete") -> torch.Tensor:
        if hc.noise:
            # (logit(u) + log α) / β in one pass: the table holds logit(u) / β
            noise = logistic_noise(log_alpha.shape, log_alpha.device, hc.noise_table, scale=1.0 / hc.beta)
            masks = torch.add(noise, log_alpha, alpha=1.0 / hc.beta)
        else:
            masks = log_alpha.to(torch.float32).mul(1.0 / hc.beta)
        masks.sigmoid_().mul_(hc.zeta - hc.gamma).add_(hc.gamma).clamp_(0.0, 1.0)
        ctx.hc = hc
        ctx.log_alpha_dtype = log_alpha.dtype
        ctx.save_for_backward(masks, weights)
        return torch.tensordot(weights.to(masks.dtype), masks, dims=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        masks, weights = ctx.saved_tensors
        hc = ctx.hc
        grad = grad.to(masks.dtype)
        grad_weights = grad_log_alpha = None
        if ctx.needs_input_grad[1]:
            grad_weights = (masks.flatten(1) @ grad.flatten()).to(weights.dtype)
        if ctx.needs_input_grad[0]:
            shape = (-1,) + (1,) * (masks.dim() - 1)
            scale = weights.to(masks.dtype).view(shape) / ((hc.zeta - hc.gamma) * hc.beta)
            slope = (masks - hc.gamma).mul_(hc.zeta - masks).mul_(scale).mul_(grad)
            # zero where the mask is clamped to 0 or 1, in one fused pass, in place
            torch.ops.aten.hardtanh_backward.grad_input(slope, masks, 0.0, 1.0, grad_input=slope)
            grad_log_alpha = slope.to(ctx.log_alpha_dtype)
        return grad_log_alpha, grad_weights, None


def pack_binary(masks: torch.Tensor) -> torch.Tensor:
    """Pack binary masks `[M, *shape]` (values in {0, 1}) into int32 codes `[*shape]`, bit `m` = expert `m`."""
    num_experts = masks.shape[0]
    if num_experts > MAX_PACKED_EXPERTS:
        raise ValueError(f"At most {MAX_PACKED_EXPERTS} experts can be packed, got {num_experts}.")
    codes = torch.zeros(masks.shape[1:], dtype=torch.int32, device=masks.device)
    for m in range(num_experts):
        codes |= (masks[m] > 0.5).to(torch.int32) << m
    return codes


def code_table(weights: torch.Tensor) -> torch.Tensor:
    """Table `[2^M]` of `Σ_m weights_m · bit_m(code)` for every code, differentiable w.r.t. `weights`."""
    num_experts = weights.shape[0]
    codes = torch.arange(2**num_experts, device=weights.device)
    bits = ((codes[:, None] >> torch.arange(num_experts, device=weights.device)) & 1).to(weights.dtype)
    return bits @ weights


def merge_packed(codes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The merged mask `Σ_m weights_m z_m` of packed binary masks."""
    return code_table(weights)[codes]


def merge_dense(masks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The merged mask `Σ_m weights_m z_m` of masks `[M, *shape]`."""
    return torch.tensordot(weights.to(masks.dtype), masks, dims=1)
