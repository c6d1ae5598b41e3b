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
"""PNG plots of a demo run, from its `results.json` alone (so they can be redrawn without rerunning).

Example:

```py
>>> import json
>>> from smat_peft.demo.plots import plot_all
>>> plot_all(json.load(open("smat-demo/results.json")), "smat-demo")  # doctest: +SKIP
['smat-demo/sparsity.png', 'smat-demo/expert_weights.png', 'smat-demo/experts.png', 'smat-demo/accuracy.png',
 'smat-demo/comparisons.png']
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


COLORS = {"pretrained": "#9e9e9e", "pmf": "#1f77b4", "dense_expert": "#9467bd", "random_mask": "#ff7f0e",
          "smat": "#2ca02c"}


def plot_sparsity(report: dict[str, Any], path: Union[str, Path]) -> str:
    """Eval-mask sparsity per block and per module type (mean over experts, bars from the min to the max expert),
    with the training masks' expected sparsity `1 − E[density]` (what the constraint holds at τ) as dots."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, key, label in ((axes[0], "per_block", "block"), (axes[1], "per_module_type", "module type")):
        names = list(report[key])
        values = [report[key][n]["eval_mask_sparsity"] for n in names]
        means = [sum(v) / len(v) for v in values]
        low = [m - min(v) for m, v in zip(means, values)]
        high = [max(v) - m for m, v in zip(means, values)]
        ax.bar(range(len(names)), means, yerr=[low, high], color="#2ca02c", capsize=3, label="eval masks")
        expected = [1 - sum(report[key][n]["train_mask_expected_density"]) / len(values[0]) for n in names]
        ax.plot(range(len(names)), expected, "o", color="k", label="training masks, 1 − E[density]")
        values = [v + [e] for v, e in zip(values, expected)]
        ax.axhline(report["target"], color="k", linestyle="--", linewidth=1, label=f"target τ = {report['target']}")
        ax.set_xticks(range(len(names)), names, rotation=30 if key == "per_module_type" else 0)
        ax.set_xlabel(label)
        lowest = min(min(v) for v in values)
        ax.set_ylim(max(0.0, min(lowest, report["target"]) - 0.1), 1.0)
    axes[0].set_ylabel("fraction of zeros")
    axes[0].legend(loc="lower left")
    fig.suptitle("SMAT sparsity: eval masks (bars: min–max over experts) and training masks (dots)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def plot_expert_weights(weights: dict[str, list[float]], train_domains: list[str], path: Union[str, Path]) -> str:
    """Heat map of the mean router weights α per domain (rows) and expert (columns)."""
    domains = list(weights)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(weights[domains[0]]), 0.9 + 0.45 * len(domains)))
    image = ax.imshow([weights[d] for d in domains], cmap="viridis", aspect="auto", vmin=0.0)
    ax.set_yticks(range(len(domains)), [f"{d} ({'ID' if d in train_domains else 'OOD'})" for d in domains])
    ax.set_xticks(range(len(weights[domains[0]])), [f"{m}" for m in range(len(weights[domains[0]]))])
    ax.set_xlabel("expert")
    fig.colorbar(image, ax=ax, label="mean α")
    ax.set_title("Expert weights α per domain (5-way 5-shot test tasks)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def plot_diagnostics(results: dict[str, Any], path: Union[str, Path]) -> str:
    """SMAT's experts over training (saturated mask logits, training-mask density, λ, per expert) and the
    specialisation score of the router against an untrained one, with its 95% CI."""
    runs = results["training"]["smat"]  # training seed → record; the first seed is drawn
    history = next(iter(runs.values())).get("history", []) if runs else []
    diagnostics = results["diagnostics"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.4))
    steps = [h["step"] for h in history if "expert_mask_at_upper_clip" in h]
    rows = [h for h in history if "expert_mask_at_upper_clip" in h]
    panels = (
        (axes[0], lambda h: [u + lo for u, lo in zip(h["expert_mask_at_upper_clip"], h["expert_mask_at_lower_clip"])],
         "mask logits at a clip bound"),
        (axes[1], lambda h: h["expert_train_mask_expected_density"], "training-mask E[density]"),
        (axes[2], lambda h: h["multipliers"], "Lagrange multiplier λ"),
    )
    for ax, value, title in panels:
        if rows:
            per_expert = list(zip(*[value(h) for h in rows]))
            for m, series in enumerate(per_expert):
                ax.plot(steps, series, linewidth=1, label=f"expert {m}")
        ax.set_xlabel("update")
        ax.set_title(title)
    target = results["sparsity"]["target"]
    axes[1].axhline(1 - target, color="k", linestyle="--", linewidth=1, label="1 − τ")
    axes[0].legend(fontsize=6, ncol=2)
    score = diagnostics["specialisation"]
    ax = axes[3]
    ax.bar([0, 1], [score["untrained_spread"], score["trained_spread"]], color=["#9e9e9e", "#2ca02c"])
    ax.set_xticks([0, 1], ["untrained router", "trained router"])
    ax.set_ylabel("α spread across domains (mean pairwise L1)")
    low, high = score["ci95"]
    ax.set_title(f"specialisation {score['score']:+.3f} [{low:+.3f}, {high:+.3f}]", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def plot_accuracy(results: dict[str, Any], path: Union[str, Path], mode: str = "direct") -> str:
    """Accuracy per domain with 95% CIs, one panel per setting, one bar per model."""
    settings = list(results["settings"])
    models = [m for m in results["models"] if mode in results["models"][m]]
    fig, axes = plt.subplots(len(settings), 1, figsize=(11, 2.8 * len(settings)), squeeze=False)
    width = 0.8 / len(models)
    for ax, setting in zip(axes[:, 0], settings):
        domains = list(results["models"][models[0]][mode][setting])
        for k, model in enumerate(models):
            entries = [results["models"][model][mode][setting][d] for d in domains]
            ax.bar([i + (k - (len(models) - 1) / 2) * width for i in range(len(domains))],
                   [e["mean"] for e in entries], width, yerr=[e["ci95"] for e in entries], capsize=2,
                   color=COLORS.get(model), label=model)
        ax.set_xticks(range(len(domains)),
                      [f"{d}\n({'ID' if d in results['train_domains'] else 'OOD'})" for d in domains], fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{setting}, {mode}")
    axes[0, 0].legend(ncol=len(models), fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def plot_comparisons(results: dict[str, Any], path: Union[str, Path]) -> str:
    """SMAT minus each other model, paired per episode, with bootstrap 95% CIs: one row per comparison, a panel
    per meta-test mode (ID and OOD side by side)."""
    comparisons = results["comparisons"]
    modes = list(dict.fromkeys(c["mode"] for c in comparisons))
    rows = {mode: list(dict.fromkeys((c["baseline"], c["setting"]) for c in comparisons if c["mode"] == mode))
            for mode in modes}
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 0.8 + 0.32 * max(map(len, rows.values()))),
                             squeeze=False)
    for ax, mode in zip(axes[0], modes):
        labels = rows[mode]
        for group, color, offset in (("id", "#1f77b4", -0.15), ("ood", "#d62728", 0.15)):
            for i, (baseline, setting) in enumerate(labels):
                entry = next((c for c in comparisons if (c["mode"], c["baseline"], c["setting"], c["group"])
                              == (mode, baseline, setting, group)), None)
                if entry is None:
                    continue
                low, high = entry["ci95"]
                ax.errorbar(entry["difference"], i + offset, xerr=[[entry["difference"] - low], [high - entry["difference"]]],
                            fmt="o", color=color, markersize=4, capsize=2, label=group.upper() if i == 0 else None)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(labels)), [f"vs {b}, {s}" for b, s in labels], fontsize=8)
        ax.set_ylim(max(map(len, rows.values())) - 0.5, -0.5)  # one row height in every panel, top down
        ax.set_xlabel("SMAT − model (accuracy points, 95% CI)")
        ax.set_title(mode)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def plot_sweep(results: dict[str, Any], path: Union[str, Path]) -> str:
    """ID and OOD average accuracy against the sparsity target τ, per setting, with the pre-trained level; the error
    bars are the 95% CI of the paired difference to the pre-trained backbone (where the sweep recorded it)."""
    taus = sorted(results["sweep"], key=float)
    settings = list(results["sweep"][taus[0]]["summary"])
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for key, color in (("id", "#1f77b4"), ("ood", "#d62728")):
            means = [results["sweep"][t]["summary"][setting][key] for t in taus]
            errors = [[0.0] * len(taus), [0.0] * len(taus)]
            for k, t in enumerate(taus):
                entry = next((c for c in results["sweep"][t].get("vs_pretrained", [])
                              if c["setting"] == setting and c["group"] == key), None)
                if entry is not None:
                    errors[0][k] = entry["difference"] - entry["ci95"][0]
                    errors[1][k] = entry["ci95"][1] - entry["difference"]
            ax.errorbar([float(t) for t in taus], means, yerr=errors, fmt="o-", capsize=3, color=color,
                        label=f"SMAT {key.upper()}")
            ax.axhline(results["pretrained"][setting][key], color=color, linestyle=":", linewidth=1,
                       label=f"pre-trained {key.upper()}")
        ax.set_xlabel("sparsity target τ")
        ax.set_title(setting)
    axes[0, 0].set_ylabel("average accuracy (%)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def plot_all(results: dict[str, Any], out: Union[str, Path]) -> list[str]:
    """The plots of a benchmark run (the paired comparisons' once they are computed), written into `out`; returns
    their paths."""
    out = Path(out)
    return [
        plot_sparsity(results["sparsity"], out / "sparsity.png"),
        plot_expert_weights(results["diagnostics"]["expert_weights"], results["train_domains"],
                            out / "expert_weights.png"),
        plot_diagnostics(results, out / "experts.png"),
        plot_accuracy(results, out / "accuracy.png"),
    ] + ([plot_comparisons(results, out / "comparisons.png")] if results.get("comparisons") else [])
