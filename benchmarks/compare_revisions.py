"""Speed of two revisions of smat-peft side by side: the guard rail of a change that should move nothing.

Checks out `--base` and `--head` as temporary git worktrees and runs the same probe in fresh subprocesses,
alternating base / head `--rounds` times (machine noise hits both alike). The probe, on a ViT-S sized model with
random weights (hidden 384, 12 layers, M = 8, τ = 0.9, 2 threads):

- one SMAT meta-training task, dense teacher on and off (5-way 5-shot 5-query, 56 px; `bench_metatrain`'s
  interleaved median of 5 after a warm-up);
- a conditioned forward (16 images, 112 px, inside `model.task`) and the task setup (5-way 5-shot support set).

Reports, per measure, the median over rounds of the paired ratio head ÷ base, and writes JSON.

    python benchmarks/compare_revisions.py --base 4242dc6 --head HEAD      # about 8 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

PROBE = r"""
import json, os, statistics, sys, tempfile, time
sys.path.insert(0, "benchmarks")
import torch
torch.set_num_threads(2)
from bench_metatrain import backbone, interleaved_step_times, trainer
from smat_peft import SmatConfig, get_smat_model

with tempfile.TemporaryDirectory() as tmp:
    trainers = {m: trainer(m, os.path.join(tmp, m), 56) for m in ("smat", "smat_no_teacher")}
    out = {f"{m}_task_s": seconds for m, seconds in interleaved_step_times(trainers, 5).items()}
model = get_smat_model(backbone(112), SmatConfig(num_experts=8, sparsity=0.9, init_weights=False)).eval()
support, labels, query = torch.randn(25, 3, 112, 112), torch.arange(5).repeat(5), torch.randn(16, 3, 112, 112)
forward, setup = [], []
with torch.no_grad():
    for i in range(5):
        start = time.perf_counter()
        with model.task(support, labels):
            built = time.perf_counter()
            model(pixel_values=query)
            done = time.perf_counter()
        if i:
            forward.append(done - built)
            setup.append(built - start)
out["conditioned_forward_s"] = statistics.median(forward)
out["task_setup_s"] = statistics.median(setup)
print(json.dumps(out))
"""


def run_probe(tree: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": tree, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"The probe failed in {tree}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the revision before the change (a commit, tag or branch)")
    parser.add_argument("--head", default="HEAD", help="the revision after it (default: HEAD)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating base / head runs (default: 5)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "compare_revisions.json"))
    args = parser.parse_args()
    repo = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          check=True).stdout.strip()
    revisions = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for side in ("base", "head"):
            rev = getattr(args, side)
            revisions[side] = subprocess.run(["git", "-C", repo, "rev-parse", "--short", rev], capture_output=True,
                                             text=True, check=True).stdout.strip()
            trees[side] = os.path.join(tmp, side)
            subprocess.run(["git", "-C", repo, "worktree", "add", "-q", "--detach", trees[side], rev], check=True)
        try:
            runs: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
            for round_ in range(args.rounds):
                for side in ("base", "head"):
                    runs[side].append(run_probe(trees[side]))
                print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
                    f"{k} {runs['head'][-1][k] / runs['base'][-1][k]:.3f}" for k in runs["base"][-1]), flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", repo, "worktree", "remove", "--force", tree], check=False)
    measures = list(runs["base"][0])
    results = {
        "base": revisions["base"], "head": revisions["head"], "rounds": args.rounds,
        "head_over_base_median_paired_ratio": {
            m: statistics.median(h[m] / b[m] for b, h in zip(runs["base"], runs["head"])) for m in measures},
        "runs": runs,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results["head_over_base_median_paired_ratio"], indent=2))


if __name__ == "__main__":
    main()
