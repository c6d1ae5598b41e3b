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
"""The hypernetwork: a support set's class prototypes → expert weights α.

`[prototypes ; skill tokens]` go through one pre-LN transformer block (spectral norm on every linear layer); the
task embedding is the **mean of the outputs at the prototype positions**, then a LayerNorm. A transformer block
without position embeddings is permutation-equivariant, so the mean makes α invariant to the order of the classes
(the reference code reads position 0, i.e. class 0's prototype, and is not: pitfall P6). Logits against learnable
expert keys give relaxed-Bernoulli weights, normalised to sum to one (neither softmax nor top-k, as in the paper).

Temperatures: in training, `s = σ((ℓ + logistic noise) / T_train)` with `T_train` annealed per training task
(`T(n) = max(T_test, T_0 − decay·n)`, reference 5 → 0.5, see [`SmatRouter.anneal_`]); in eval mode
`s = σ(ℓ / T_test)` with the fixed `test_temperature` of the adapter's config, never the training buffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm


if TYPE_CHECKING:
    from .config import SmatConfig


@dataclass
class RouterOutput:
    """What the router computed for one task.

    Args:
        weights (`torch.Tensor` of shape `[num_experts]`): Expert weights α, non-negative, summing to 1.
        logits (`torch.Tensor` of shape `[num_experts]`): Router logits ℓ (the trainer penalises `mean(ℓ²)`).
        embedding (`torch.Tensor` of shape `[feature_dim]`): The task embedding.
    """

    weights: torch.Tensor
    logits: torch.Tensor
    embedding: torch.Tensor


class SmatRouter(nn.Module):
    """Support-set router: class prototypes `[num_classes, feature_dim]` → [`RouterOutput`].

    Example:

    ```py
    >>> import torch
    >>> router = SmatRouter(feature_dim=32, num_experts=4).eval()
    >>> out = router(torch.randn(5, 32))
    >>> out.weights.shape, round(out.weights.sum().item(), 4)
    (torch.Size([4]), 1.0)
    ```
    """

    def __init__(
        self,
        feature_dim: int,
        num_experts: int,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        num_skill_tokens: int = 4,
        spectral_norm: bool = True,
        temperature: float = 5.0,
        test_temperature: float = 0.5,
    ) -> None:
        super().__init__()
        if feature_dim % num_heads != 0:
            raise ValueError(
                f"The router's feature size {feature_dim} must be divisible by `router_num_heads` ({num_heads}); "
                "change `router_num_heads` in the SmatConfig."
            )
        self.feature_dim = feature_dim
        self.num_heads = num_heads
        hidden = int(feature_dim * mlp_ratio)
        self.skill_tokens = nn.Parameter(torch.randn(num_skill_tokens, feature_dim) * 1e-3)
        self.norm1 = nn.LayerNorm(feature_dim)
        self.qkv = nn.Linear(feature_dim, 3 * feature_dim, bias=False)
        self.proj = nn.Linear(feature_dim, feature_dim)
        self.norm2 = nn.LayerNorm(feature_dim)
        self.fc1 = nn.Linear(feature_dim, hidden)
        self.fc2 = nn.Linear(hidden, feature_dim)
        self.norm = nn.LayerNorm(feature_dim)
        self.keys = nn.Parameter(torch.empty(num_experts, feature_dim))
        nn.init.kaiming_normal_(self.keys)
        self.start_temperature = float(temperature)
        self.test_temperature = float(test_temperature)
        # The training temperature, annealed by the meta-trainer; a buffer so that a resumed run continues it. Eval
        # mode uses `test_temperature` instead.
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        if spectral_norm:
            for name in ("qkv", "proj", "fc1", "fc2"):
                setattr(self, name, _spectral_norm(getattr(self, name)))
        self.train(self.training)

    @classmethod
    def from_config(cls, config: "SmatConfig", feature_dim: int) -> "SmatRouter":
        """The router a `SmatConfig` describes, reading support features of size `feature_dim`."""
        return cls(
            feature_dim=feature_dim,
            num_experts=config.num_experts,
            num_heads=config.router_num_heads,
            mlp_ratio=config.router_mlp_ratio,
            num_skill_tokens=config.router_num_skill_tokens,
            spectral_norm=config.router_spectral_norm,
            temperature=config.router_temperature,
            test_temperature=config.router_test_temperature,
        )

    def _spectral_norms(self) -> list[nn.Module]:
        return [m for m in self.modules() if type(m).__name__ == "_SpectralNorm"]

    def train(self, mode: bool = True) -> "SmatRouter":
        # The power iteration of spectral norm runs only in `update_spectral_norm`, not on every forward: the
        # estimate then depends on the number of updates, not on how tasks are spread over processes.
        super().train(mode)
        for norm in self._spectral_norms():
            norm.eval()
        return self

    @torch.no_grad()
    def anneal_(self, tasks_seen: int, decay: float) -> float:
        """Set the training temperature after `tasks_seen` training tasks: `max(T_test, T_0 − decay · tasks_seen)`."""
        value = max(self.test_temperature, self.start_temperature - decay * tasks_seen)
        self.temperature.fill_(value)
        return value

    @torch.no_grad()
    def update_spectral_norm(self) -> None:
        """One power iteration of every spectral-normalised layer (the meta-trainer calls it once per update)."""
        for norm in self._spectral_norms():
            norm.train()
        for name in ("qkv", "proj", "fc1", "fc2"):
            getattr(self, name).weight  # noqa: B018  (reading the parametrized weight runs the iteration)
        for norm in self._spectral_norms():
            norm.eval()

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q, k, v = self.qkv(x).view(tokens, 3, self.num_heads, head_dim).permute(1, 2, 0, 3)  # 3 × [heads, T, hd]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(0, 1).reshape(tokens, dim))

    def forward(self, prototypes: torch.Tensor) -> RouterOutput:
        num_classes = prototypes.shape[0]
        x = torch.cat([prototypes.to(self.skill_tokens.dtype), self.skill_tokens], dim=0)
        x = x + self._attention(self.norm1(x))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        embedding = self.norm(x[:num_classes].mean(dim=0))
        logits = self.keys @ embedding
        if self.training:
            u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
            scores = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / self.temperature)
        else:
            scores = torch.sigmoid(logits / self.test_temperature)
        weights = scores / (scores.sum() + 1e-8)
        return RouterOutput(weights=weights, logits=logits, embedding=embedding)
