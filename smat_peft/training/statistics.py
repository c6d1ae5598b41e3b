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
"""Paired comparisons of two methods tested on the same episodes: difference, bootstrap 95% CI, win / tie / loss.

Two methods meta-tested on the *same* fixed episodes are compared episode by episode. For a group of domains (e.g.
the out-of-domain ones), with scores `a[d][s][e]` of domain `d`, training seed `s` and episode `e`:

```
diff = mean_d  mean_e  ( mean_s a[d][s][e] − mean_s b[d][s][e] )
```

(domains weigh equally, as in the ID / OOD averages). Its 95% CI is a percentile bootstrap that resamples the
episodes within each domain — the same episodes for both methods, which is what pairing buys: the episode-to-episode
variance cancels — and, when a method has at least `min_seeds_to_resample` seeds, its seeds too (the same seed
indices for both when both have the same seeds). The claim is `"win"` when the CI lies above 0, `"loss"` when below,
`"tie"` otherwise, and `"inconclusive"` when a domain has fewer than 2 episodes (its bootstrap has no spread, so
the CI would be a point and any difference would read as a win or a loss).

Example:

```py
>>> a = [[[60.0, 80.0, 100.0]]]  # one domain, one seed, three episodes
>>> b = [[[40.0, 60.0, 80.0]]]
>>> out = paired_difference(a, b, num_bootstrap=200)
>>> out["difference"], out["claim"]
(20.0, 'win')
```
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


Scores = Sequence[Sequence[Sequence[float]]]  # [domains][seeds][episodes], percent


def claim(ci95: Sequence[float]) -> str:
    """`"win"` if the CI lies above 0, `"loss"` if below, else `"tie"`."""
    low, high = ci95
    return "win" if low > 0 else "loss" if high < 0 else "tie"


def paired_difference(a: Scores, b: Scores, num_bootstrap: int = 2000, seed: int = 0,
                      min_seeds_to_resample: int = 3) -> dict[str, Any]:
    """Mean paired difference `a − b` over a group of domains, with its bootstrap 95% CI and the claim.

    Args:
        a, b: per domain, a `[seeds, episodes]` table of per-episode scores; the episodes of a domain are the same
            (same order) for both, the number of seeds may differ (e.g. the pre-trained backbone has one).

    Returns:
        `{"difference", "ci95": [low, high], "claim", "episodes": [per domain], "seeds": [a, b], "resampled"}`.
    """
    if len(a) != len(b) or not len(a):
        raise ValueError(f"Both methods need scores on the same domains, got {len(a)} and {len(b)}.")
    tables_a = [torch.as_tensor(d, dtype=torch.float64) for d in a]
    tables_b = [torch.as_tensor(d, dtype=torch.float64) for d in b]
    for k, (ta, tb) in enumerate(zip(tables_a, tables_b)):
        if ta.dim() != 2 or tb.dim() != 2 or ta.shape[1] != tb.shape[1] or ta.shape[1] < 1:
            raise ValueError(f"Domain {k}: scores must be [seeds, episodes] tables on the same episodes, got "
                             f"{tuple(ta.shape)} and {tuple(tb.shape)}.")
    seeds_a, seeds_b = tables_a[0].shape[0], tables_b[0].shape[0]
    if any(t.shape[0] != seeds_a for t in tables_a) or any(t.shape[0] != seeds_b for t in tables_b):
        raise ValueError("A method must have the same seeds in every domain.")
    difference = float(sum(ta.mean(0).mean() - tb.mean(0).mean() for ta, tb in zip(tables_a, tables_b)) / len(a))

    generator = torch.Generator().manual_seed(seed)
    resample_a, resample_b = seeds_a >= min_seeds_to_resample, seeds_b >= min_seeds_to_resample
    shared_seeds = resample_a and resample_b and seeds_a == seeds_b
    pick_a = pick_b = None
    if resample_a:
        pick_a = torch.randint(0, seeds_a, (num_bootstrap, seeds_a), generator=generator)
    if resample_b:
        pick_b = pick_a if shared_seeds else torch.randint(0, seeds_b, (num_bootstrap, seeds_b), generator=generator)
    total = torch.zeros(num_bootstrap, dtype=torch.float64)
    for ta, tb in zip(tables_a, tables_b):
        episodes = torch.randint(0, ta.shape[1], (num_bootstrap, ta.shape[1]), generator=generator)
        total += _resampled_mean(ta, pick_a, episodes) - _resampled_mean(tb, pick_b, episodes)
    samples = total / len(a)
    ci95 = [float(samples.quantile(0.025)), float(samples.quantile(0.975))]
    resampled = ["episodes"] + (["seeds"] if resample_a or resample_b else [])
    verdict = claim(ci95) if min(t.shape[1] for t in tables_a) >= 2 else "inconclusive"
    return {"difference": difference, "ci95": ci95, "claim": verdict,
            "episodes": [int(t.shape[1]) for t in tables_a], "seeds": [seeds_a, seeds_b], "resampled": resampled}


def _resampled_mean(table: torch.Tensor, seeds: torch.Tensor | None, episodes: torch.Tensor) -> torch.Tensor:
    """Per bootstrap draw: mean over (resampled) seeds and resampled episodes of a `[seeds, episodes]` table."""
    per_episode = table.mean(0)[episodes] if seeds is None else table[seeds].mean(1).gather(1, episodes)
    return per_episode.mean(1)
