"""The Markdown report of a `smat-peft demo` run, from its `results.json` alone: what the README and docs/demo.md show.

Every number the README states about the demo comes from this script, so anyone can check it against the committed
results (or their own run):

    python benchmarks/demo_report.py benchmarks/results/demo_full_results.json
    python benchmarks/demo_report.py smat-demo/results.json --section claims
    python benchmarks/demo_report.py benchmarks/results/demo_sweep.json     # a `--sweep-sparsity` run's sweep.json

Sections: `tables` (accuracy per model, mode and setting; SMAT minus each model, paired), `claims` (win / tie / loss
counted per comparison, the expert diagnostics per seed), `time` (where the run's time went, per method and phase).
A sweep.json gets its own report (`sweep`): accuracy per τ, SMAT minus pre-trained paired per τ, the masks' sparsity.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from smat_peft.demo.benchmark import format_comparisons, format_table


def tables(results: dict[str, Any]) -> str:
    """The accuracy table and the paired comparisons table."""
    args = results["arguments"]
    seeds = len(args["training_seeds"])
    finetuned = min(seeds, args.get("finetune_seeds") or seeds)
    variable = args.get("variable_test_episodes") or args["test_episodes"]
    header = (f"Accuracy (%), averaged over the {len(results['train_domains'])} ID and "
              f"{len(results['ood_domains'])} OOD domains; `direct`: {args['test_episodes']} fixed test episodes per "
              f"domain for 5w1s and 5w5s, {variable} for the variable setting, the mean over {seeds} training "
              f"seed(s); `full` / `lora`: {args['finetune_episodes']} episodes per domain (5-way 5-shot), "
              f"{args['finetune_steps']} steps, the model(s) of the first {finetuned} seed(s).")
    comparisons = ("SMAT minus each model, paired on the same test episodes (points; bootstrap 95% CI over episodes"
                   + (" and seeds" if seeds >= 3 else "") + "; **win / tie / loss** from the CI):")
    return "\n\n".join([header, format_table(results), comparisons, format_comparisons(results)])


def claim_counts(results: dict[str, Any]) -> dict[tuple[str, str, str], Counter]:
    """`{(baseline, mode, group): Counter(win=…, tie=…, loss=…)}` over the settings."""
    counts: dict[tuple[str, str, str], Counter] = {}
    for entry in results["comparisons"]:
        counts.setdefault((entry["baseline"], entry["mode"], entry["group"]), Counter())[entry["claim"]] += 1
    return counts


def claims(results: dict[str, Any]) -> str:
    """Claims counted per comparison, then the expert diagnostics of every seed."""
    lines = ["| SMAT vs | mode | ID | OOD |", "|---|---|---|---|"]
    counts = claim_counts(results)
    for baseline, mode in dict.fromkeys((b, m) for b, m, _ in counts):
        cells = [", ".join(f"{n} {c}" for c in ("win", "tie", "loss", "inconclusive") if (n := counts[baseline, mode, g].get(c)))
                 or "–" for g in ("id", "ood")]
        lines.append(f"| {baseline} | {mode} | {cells[0]} | {cells[1]} |")
    lines += ["", "| seed | specialisation score [95% CI] | mask logits at a clip bound | eval-mask Jaccard "
              "(independent) | eval-mask sparsity |", "|---|---|---|---|---|"]
    for seed, diagnostics in results["diagnostics_per_seed"].items():
        score = diagnostics["specialisation"]
        saturation = diagnostics["mask_saturation"]
        saturated = sum(saturation["at_upper"] + saturation["at_lower"]) / len(saturation["at_upper"])
        overlap = diagnostics["eval_mask_overlap"]
        sparsity = [e["eval_mask_sparsity"] for e in results["sparsity_per_seed"][seed]["per_expert"]]
        lines.append(f"| {seed} | {score['score']:+.3f} [{score['ci95'][0]:+.3f}, {score['ci95'][1]:+.3f}] | "
                     f"{100 * saturated:.1f}% | {overlap['mean_jaccard']:.3f} ({overlap['mean_independent_baseline']:.3f})"
                     f" | {min(sparsity):.3f}–{max(sparsity):.3f} |")
    return "\n".join(lines)


def time_breakdown(results: dict[str, Any]) -> str:
    """Minutes per method in training and evaluation, and the run's total."""
    timings = results["timings"]
    methods = list(dict.fromkeys(k.rsplit("_", 2)[0] for k in timings if k.endswith(("_training_s", "_evaluation_s"))))
    lines = ["| method | training (min) | evaluation (min) |", "|---|---|---|"]
    for method in methods:
        lines.append(f"| {method} | {timings.get(f'{method}_training_s', 0) / 60:.1f} | "
                     f"{timings.get(f'{method}_evaluation_s', 0) / 60:.1f} |")
    phases = sum(v for k, v in timings.items() if k.endswith(("_training_s", "_evaluation_s")))
    lines.append(f"| **all** (of {timings['total_s'] / 60:.0f} min in this invocation; resumed runs count their "
                 f"first time) | | {phases / 60:.0f} min in the runs |")
    return "\n".join(lines)


def sweep(results: dict[str, Any]) -> str:
    """A sparsity sweep: ID / OOD accuracy per τ (direct), SMAT minus pre-trained paired per τ, masks' sparsity."""
    settings = list(results["pretrained"])
    header = ("| τ | " + " | ".join(f"{s} ID / OOD" for s in settings)
              + " | eval-mask sparsity | training-mask E[density] |")
    lines = [header, "|---" * (3 + len(settings)) + "|"]

    def pair(summary: dict[str, Any], setting: str) -> str:
        return f"{summary[setting]['id']:.1f} / {summary[setting]['ood']:.1f}"

    for tau, run in results["sweep"].items():
        sparsity, density = run["eval_mask_sparsity"], run["train_mask_expected_density"]
        lines.append(f"| {tau} | " + " | ".join(pair(run["summary"], s) for s in settings)
                     + f" | {min(sparsity):.3f}–{max(sparsity):.3f} | {min(density):.3f}–{max(density):.3f} |")
    lines.append("| pre-trained | " + " | ".join(pair(results["pretrained"], s) for s in settings) + " | – | – |")
    paired = ["", "SMAT at each τ minus the pre-trained backbone, paired per episode (points, bootstrap 95% CI):", "",
              "| τ | setting | ID | OOD |", "|---|---|---|---|"]
    for tau, run in results["sweep"].items():
        cells: dict[str, dict[str, str]] = {}
        for entry in run["vs_pretrained"]:
            low, high = entry["ci95"]
            cells.setdefault(entry["setting"], {})[entry["group"]] = (
                f"{entry['difference']:+.1f} [{low:+.1f}, {high:+.1f}] {entry['claim']}")
        paired += [f"| {tau} | {setting} | {g.get('id', '–')} | {g.get('ood', '–')} |"
                   for setting, g in cells.items()]
    return "\n".join(lines + paired)


SECTIONS = {"tables": tables, "claims": claims, "time": time_breakdown}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="A demo run's results.json.")
    parser.add_argument("--section", choices=list(SECTIONS), action="append",
                        help="Only these sections (repeatable; default all).")
    args = parser.parse_args()
    with open(args.results) as f:
        results = json.load(f)
    if "sweep" in results:
        print(sweep(results))
        return
    print("\n\n".join(SECTIONS[name](results) for name in args.section or SECTIONS))


if __name__ == "__main__":
    main()
