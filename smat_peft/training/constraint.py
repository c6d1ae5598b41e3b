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
"""The sparsity constraint of SMAT: every expert's training mask at least τ sparse, by Lagrange multipliers.

For expert `m` with training-mask expected density `ρ_m = E[‖z_m‖₀] / N` (the expected L0 of the hard-concrete
distribution at the training temperature β, differentiable w.r.t. `log α`), the constraint is
`s_m = 1 − ρ_m ≥ τ`. Once per task, with the task's (detached) expert weights `α_m` (method §2):

```
Δ_m   = s_m − τ
λ_m  ← 0  where Δ_m ≥ 0                                   (reset: a satisfied expert is not pushed further)
L_lag = Σ_m Δ_m · λ_m · α_m                                (gradient to λ only: SGD raises λ_m while Δ_m < 0)
L_sp  = Σ_m (τ − 1 + ρ_m) · stopgrad(λ_m) · α_m            (gradient to log α only, through ρ_m)
```

After each optimiser step the multipliers are projected back to `λ ≥ 0`. The reference code counts the non-zeros
of the sampled mask for `Δ` (pitfall P10); the expected density is its expectation and is the same on every process,
so the reset and the update do not depend on the noise a process happened to draw.

Example:

```py
>>> import torch
>>> constraint = SparsityConstraint(num_experts=2, target=0.9)
>>> constraint.multipliers.data = torch.tensor([1.0, 1.0])
>>> loss = constraint.loss(torch.tensor([0.05, 0.3]), torch.tensor([0.5, 0.5]))
>>> constraint.multipliers.tolist()  # expert 0 meets τ (sparsity 0.95): reset
[0.0, 1.0]
```
"""

from __future__ import annotations

import torch
from torch import nn


class SparsityConstraint(nn.Module):
    """Per-expert Lagrange multipliers `λ ≥ 0` for `1 − E[density of training mask m] ≥ τ` (module docstring).

    Args:
        num_experts (`int`): Number of experts `M`.
        target (`float`): The sparsity target τ in [0, 1).
        reset (`bool`): Reset the multipliers of satisfied experts to 0 before each task (the method).
    """

    def __init__(self, num_experts: int, target: float, reset: bool = True) -> None:
        super().__init__()
        if not 0.0 <= target < 1.0:
            raise ValueError(f"The sparsity target τ must be in [0, 1), got {target}.")
        self.target = float(target)
        self.reset = reset
        self.multipliers = nn.Parameter(torch.zeros(num_experts))

    def loss(self, expected_density: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """`L_lag + L_sp` of one task (resets the multipliers of satisfied experts first, in place)."""
        density = expected_density.float()
        gap = (1.0 - density.detach()) - self.target
        if self.reset:
            with torch.no_grad():
                self.multipliers.masked_fill_(gap.to(self.multipliers.device) >= 0, 0.0)
        weights = weights.detach().float()
        multipliers = self.multipliers.to(density.device)
        lagrangian = (gap * multipliers * weights).sum()
        penalty = ((self.target - 1.0 + density) * multipliers.detach() * weights).sum()
        return lagrangian + penalty

    @torch.no_grad()
    def project_(self) -> None:
        """Keep `λ ≥ 0` (called after each optimiser step)."""
        self.multipliers.clamp_(min=0.0)
