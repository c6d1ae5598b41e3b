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
"""Expert diagnostics: do the masks learn, do the experts differ, does the router route?

- **Saturation**: the fraction of each expert's mask logits at either clip bound `±mask_logit_clip`. The method's
  large mask learning rate drives the logits there (binary masks); logits that stay inside have not been learned.
- **Overlap**: the pairwise Jaccard index `|A ∩ B| / |A ∪ B|` of the experts' eval-mask supports, next to what two
  *independent* random masks of the same densities `p, q` would give, `pq / (p + q − pq)`. Interchangeable experts
  (one shared mask) show overlap far above that baseline; unrelated ones near it.
- **Specialisation score**: the spread of the router's expert weights across domains — the mean pairwise L1 distance
  between the domains' mean `α` — minus the spread that an *untrained* router of the same configuration gives on the
  same tasks at the same temperature, with a paired bootstrap 95% CI over tasks. An untrained router already spreads
  `α` by domain (its input, the class prototypes, differs by domain), so only the excess is learned routing.

Example:

```py
>>> import torch
>>> same = {"a": torch.full((20, 4), 0.25), "b": torch.full((20, 4), 0.25)}
>>> specialisation_score(same, same)["score"]
0.0
```
"""

from __future__ import annotations

import itertools
from typing import Any, Optional

import torch
from torch import nn

from .masks import HardConcrete
from .model import SmatModel
from .router import SmatRouter


@torch.no_grad()
def mask_saturation(model: nn.Module, adapter_name: Optional[str] = None, atol: float = 1e-3) -> dict[str, list[float]]:
    """Per expert, the fraction of mask logits at the upper clip (`"at_upper"`) and at the lower one (`"at_lower"`).

    `model` is a SMAT `PeftModel` or `SmatModel`; elements are weighted by the parameter elements they mask.
    """
    smat = _smat(model)
    adapter_name = adapter_name or smat.active_adapters[0]
    clip = smat.peft_config[adapter_name].mask_logit_clip
    upper = lower = total = 0
    for _, layer in smat.smat_layers():
        if adapter_name not in layer.smat_log_alpha:
            continue
        for log_alpha, param in zip(layer.smat_log_alpha[adapter_name], layer.base_params):
            flat = log_alpha.detach().float().flatten(1)
            repeat = param.numel() // flat.shape[1]
            upper = upper + (flat >= clip - atol).sum(1).double() * repeat
            lower = lower + (flat <= -clip + atol).sum(1).double() * repeat
            total += param.numel()
    return {"at_upper": (upper / total).tolist(), "at_lower": (lower / total).tolist()}


@torch.no_grad()
def eval_mask_overlap(model: nn.Module, adapter_name: Optional[str] = None) -> dict[str, Any]:
    """Pairwise Jaccard overlap of the experts' eval-mask supports, and the independent-masks baseline.

    Returns `{"jaccard": [[M × M]], "mean_jaccard", "independent_baseline": [[M × M]], "mean_independent_baseline",
    "density": [M]}` (means over pairs `m < n`).
    """
    smat = _smat(model)
    adapter_name = adapter_name or smat.active_adapters[0]
    config = smat.peft_config[adapter_name]
    threshold = HardConcrete.from_config(config).eval_nonzero_threshold
    intersection, count, total = 0, 0, 0
    for _, layer in smat.smat_layers():
        if adapter_name not in layer.smat_log_alpha:
            continue
        for log_alpha, param in zip(layer.smat_log_alpha[adapter_name], layer.base_params):
            support = (log_alpha.detach().float().flatten(1) > threshold).double()
            repeat = param.numel() // support.shape[1]
            intersection = intersection + (support @ support.T) * repeat
            count = count + support.sum(1) * repeat
            total += param.numel()
    union = count[:, None] + count[None, :] - intersection
    jaccard = torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))
    p = count / total
    baseline = (p[:, None] * p[None, :]) / (p[:, None] + p[None, :] - p[:, None] * p[None, :]).clamp_min(1e-12)
    pairs = list(itertools.combinations(range(len(p)), 2))
    mean = lambda matrix: float(sum(matrix[i, j] for i, j in pairs) / len(pairs)) if pairs else float("nan")  # noqa: E731
    return {"jaccard": jaccard.tolist(), "mean_jaccard": mean(jaccard), "independent_baseline": baseline.tolist(),
            "mean_independent_baseline": mean(baseline), "density": p.tolist()}


def _smat(model: nn.Module) -> SmatModel:
    """The `SmatModel` of a SMAT `PeftModel` (or the `SmatModel` itself)."""
    return model if isinstance(model, SmatModel) else model.base_model


def fresh_router(model: nn.Module, adapter_name: Optional[str] = None, seed: int = 0,
                 spectral_norm_iterations: int = 30) -> SmatRouter:
    """An untrained router of the same configuration (and test temperature) as the adapter's, in eval mode, its
    spectral-norm estimates converged by `spectral_norm_iterations` power iterations."""
    smat = _smat(model)
    adapter_name = adapter_name or smat.active_adapters[0]
    config = smat.peft_config[adapter_name]
    trained = smat.smat_router[adapter_name]
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        router = SmatRouter.from_config(config, trained.feature_dim)
        # converge the spectral-norm estimates, as a trained router's have (one power iteration per update)
        for _ in range(spectral_norm_iterations):
            router.update_spectral_norm()
    finally:
        torch.random.set_rng_state(state)
    return router.to(trained.keys.device).eval()


def mean_pairwise_l1(vectors: list[torch.Tensor]) -> float:
    """Mean L1 distance between every pair of vectors (0 for fewer than two)."""
    pairs = list(itertools.combinations(vectors, 2))
    if not pairs:
        return 0.0
    return float(sum((u - v).abs().sum() for u, v in pairs) / len(pairs))


def domain_spread(weights: dict[str, torch.Tensor]) -> float:
    """Spread of expert weights across domains: mean pairwise L1 between the domains' mean `α` (`[tasks, M]` each)."""
    return mean_pairwise_l1([w.float().mean(0) for w in weights.values()])


def specialisation_score(trained: dict[str, torch.Tensor], untrained: dict[str, torch.Tensor],
                         num_bootstrap: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Spread of the trained router's `α` across domains minus the untrained router's, on the same tasks.

    Args:
        trained, untrained: domain → `[tasks, M]` expert weights of the same tasks (same order in both).
        num_bootstrap: resamples of the tasks within each domain (paired: the same tasks for both routers).

    Returns:
        `{"score", "ci95": [low, high], "trained_spread", "untrained_spread", "tasks_per_domain"}`.
    """
    if trained.keys() != untrained.keys():
        raise ValueError(f"Both routers must be scored on the same domains, got {sorted(trained)} and {sorted(untrained)}.")
    for name in trained:
        if trained[name].shape != untrained[name].shape:
            raise ValueError(f"Domain {name!r}: trained and untrained weights cover different tasks "
                             f"({tuple(trained[name].shape)} vs {tuple(untrained[name].shape)}).")
    score = domain_spread(trained) - domain_spread(untrained)
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(num_bootstrap):
        draw = {name: torch.randint(0, len(w), (len(w),), generator=generator) for name, w in trained.items()}
        samples.append(domain_spread({n: trained[n][i] for n, i in draw.items()})
                       - domain_spread({n: untrained[n][i] for n, i in draw.items()}))
    low, high = _percentiles(samples)
    return {"score": score, "ci95": [low, high], "trained_spread": domain_spread(trained),
            "untrained_spread": domain_spread(untrained),
            "tasks_per_domain": {name: len(w) for name, w in trained.items()}}


def _percentiles(samples: list[float]) -> tuple[float, float]:
    if not samples:
        return float("nan"), float("nan")
    values = torch.tensor(samples, dtype=torch.float64)
    return float(values.quantile(0.025)), float(values.quantile(0.975))
