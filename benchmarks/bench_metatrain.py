"""Meta-training cost of SMAT vs PMF, measured side by side in one run on the same episodes and backbone.

- SMAT meta-training step ÷ PMF step, with the dense teacher on (target ≤ 4.0) and off (target ≤ 2.5);
- episode sampling + collation as a share of the update time, with 2 DataLoader workers (target ≤ 10%);
- peak memory of one training step of each (fresh subprocesses, peak RSS growth);
- the gradient all-reduce's peak extra memory, before (every gradient flattened into one buffer, then
  `accelerator.reduce`, which clones it) and after (`all_reduce_mean_`: in place, small gradients in ~4M-element
  buckets), on the gradients of the ViT-S SMAT adapter (M = 8), each in a fresh single-process gloo group
  (NCCL and `torch.cuda.max_memory_allocated` on a GPU); `--all-reduce` runs only this row and updates it in the
  results JSON.

Backbone: a ViT-S sized model (hidden 384, 12 layers, patch 14, random weights) at 56 and 112 px (the paper
meta-trains at 128 px); 5-way 5-shot 5-query episodes from synthetic domains; SMAT with M = 8, τ = 0.9 on the
default targets. SMAT's per-task cost has a part that does not depend on the images (sampling 8 masks over the
21M adapted weights, merging, and their backward): the smaller the images, the larger its share.

    python benchmarks/bench_metatrain.py           # about 5 minutes on 2 CPU cores
    python benchmarks/bench_metatrain.py --quick   # fewer repeats
    python benchmarks/bench_metatrain.py --all-reduce   # only the all-reduce memory row (about a minute)
    python benchmarks/bench_metatrain.py --demo    # the demo's own configuration instead (target ≤ 2.5)

`--demo` times one task of SMAT (dense teacher on) and of PMF in the configuration of `smat-peft demo`: the real
DINOv2 ViT-S/14 at 56 px, its first 8 blocks cached, every parameter of blocks 8-11 and the final norm adapted
(the same set for both), M = 8, τ = 0.9, 5-way 5-shot 5-query episodes of the demo's training domains; written to
`results/bench_metatrain_demo.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch
from transformers import ViTConfig, ViTModel

from smat_peft import MetaTrainingArguments, SmatConfig, SmatMetaTrainer, get_smat_model
from smat_peft.testing import synthetic_domain
from smat_peft.training.trainer import all_reduce_mean_


def backbone(image_size: int) -> ViTModel:
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                       image_size=image_size, patch_size=14)
    return ViTModel(config, add_pooling_layer=False)


def domains(image_size: int) -> dict:
    return {name: synthetic_domain(40, 12, size=image_size, seed=seed) for name, seed in (("a", 0), ("b", 1))}


def trainer(method: str, output_dir: str, image_size: int = 56, **overrides) -> SmatMetaTrainer:
    values = dict(output_dir=output_dir, max_steps=1000, tasks_per_update=1, ways=5, shots=5, queries=5,
                  image_size=image_size, warmup_steps=0, eval_steps=0, save_steps=0, disable_tqdm=True, augment=True)
    values.update(overrides)
    if method == "pmf":
        model = backbone(image_size)
    else:
        model = get_smat_model(backbone(image_size), SmatConfig(num_experts=8, sparsity=0.9))
        values["teacher_steps"] = 1 if method == "smat" else 0
    return SmatMetaTrainer(model, MetaTrainingArguments(**values), train_datasets=domains(image_size))


def interleaved_step_times(trainers: dict[str, SmatMetaTrainer], repeats: int) -> dict[str, float]:
    """Median per-task training step of each trainer on the same episodes, interleaved (first round: warm-up)."""
    sampler = next(iter(trainers.values())).train_sampler
    episodes = [sampler.episode(i) for i in range(repeats + 1)]
    times: dict[str, list[float]] = {m: [] for m in trainers}
    for i, episode in enumerate(episodes):
        for method, t in trainers.items():
            t.model.train()
            logs = t.training_step([episode])
            if i:
                times[method].append(logs[0]["step_time_s"])
    return {m: statistics.median(v) for m, v in times.items()}


def step_times(repeats: int, image_size: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {m: trainer(m, os.path.join(tmp, m), image_size) for m in ("pmf", "smat", "smat_no_teacher")}
        return interleaved_step_times(trainers, repeats)


def data_share(updates: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        t = trainer("smat", tmp, max_steps=updates, dataloader_num_workers=2, logging_steps=1)
        t.train()
        data = sum(h["data_time_s"] for h in t.history[1:])  # the first update includes the workers' start-up
        step = sum(h["step_time_s"] for h in t.history[1:])
    return {"data_time_s": data, "step_time_s": step, "data_share": data / (data + step)}


def demo_step_times(repeats: int) -> dict[str, float]:
    """Per-task training step of SMAT (with the dense teacher) and PMF in the demo's configuration, interleaved."""
    from smat_peft.demo.benchmark import DemoArguments, build_model, prepare, training_arguments

    args = DemoArguments(disable_tqdm=True)
    domains, frozen_prefix_backbone, activations, _ = prepare(args)
    train = {d: domains[d] for d in args.train_domains}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for method in ("pmf", "smat"):
            model = build_model(method, frozen_prefix_backbone, args, args.sparsity)
            values = training_arguments(args, os.path.join(tmp, method), tasks_per_update=1, eval_steps=0)
            trainers[method] = SmatMetaTrainer(model, values, train_datasets=train, load_inputs=activations)
        medians = interleaved_step_times(trainers, repeats)
    return {"pmf_task_s": medians["pmf"], "smat_task_s": medians["smat"],
            "smat_over_pmf": medians["smat"] / medians["pmf"], "repeats": repeats}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_worker(method: str) -> dict[str, float]:
    """Peak RSS above the resting model during two training steps (Linux: VmHWM reset via clear_refs)."""
    with tempfile.TemporaryDirectory() as tmp:
        t = trainer(method, tmp)
        t.model.train()
        t.training_step([t.train_sampler.episode(0)])  # optimizer state exists from here on
        rest = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter
        t.training_step([t.train_sampler.episode(1)])
        peak = _status_kib("VmHWM")
    return {"method": method, "resting_MiB": rest / 1024, "peak_step_memory_MiB": (peak - rest) / 1024}


def _flatten_all_reduce_mean_(tensors: list[torch.Tensor], world_size: int) -> None:
    """The all-reduce before `all_reduce_mean_`: one flat copy of every gradient, `accelerator.reduce(flat,
    "mean")` (which all-reduces a clone of it), copied back."""
    import torch.distributed as dist

    flat = torch.cat([t.flatten() for t in tensors])
    reduced = flat.clone()  # what accelerate.utils.reduce does
    dist.all_reduce(reduced)
    reduced /= world_size
    offset = 0
    for t in tensors:
        t.copy_(reduced[offset: offset + t.numel()].view_as(t))
        offset += t.numel()


def all_reduce_worker(approach: str) -> dict[str, float]:
    """Peak memory above the resting gradients while averaging the ViT-S SMAT (M = 8) gradients with `approach`
    ("flatten" or "bucketed") in a single-process group: peak RSS growth on CPU (VmHWM reset via clear_refs, which
    sees every page the allocator touches), `torch.cuda.max_memory_allocated` growth on a GPU."""
    import time

    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29541")
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
    model = get_smat_model(backbone(56), SmatConfig(num_experts=8, sparsity=0.9))
    device = "cuda" if cuda else "cpu"
    grads = [torch.ones_like(p, device=device) for p in model.parameters() if p.requires_grad]
    del model
    reduce = _flatten_all_reduce_mean_ if approach == "flatten" else all_reduce_mean_
    reduce(grads, 1)  # once before measuring: the process group's own first-use buffers
    if cuda:
        torch.cuda.synchronize()
        rest = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        rest = _status_kib("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter
    start = time.perf_counter()
    reduce(grads, 1)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024
    dist.destroy_process_group()
    gradient_bytes = sum(g.numel() * g.element_size() for g in grads)
    return {"approach": approach, "device": device, "gradients": len(grads),
            "gradient_elements": sum(g.numel() for g in grads), "gradient_MiB": gradient_bytes / 2**20,
            "peak_extra_MiB": (peak - rest) / 2**20, "seconds": seconds}


def all_reduce_memory() -> dict[str, dict[str, float]]:
    """Both all-reduce approaches, each in a fresh subprocess, side by side."""
    return {approach: json.loads(subprocess.run(
        [sys.executable, __file__, "--all-reduce-worker", approach], check=True, capture_output=True,
        text=True).stdout.strip().splitlines()[-1]) for approach in ("flatten", "bucketed")}


def _all_reduce_row(memory: dict[str, dict[str, float]]) -> str:
    before, after = memory["flatten"], memory["bucketed"]
    return (f"| gradient all-reduce peak extra memory, flatten + reduce (before) / bucketed in place (after), "
            f"{before['gradient_MiB']:.0f} MiB of ViT-S SMAT gradients ({before['device']}) | "
            f"{before['peak_extra_MiB']:.0f} / {after['peak_extra_MiB']:.0f} MiB | reported |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "bench_metatrain.json"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[56, 112], help="image sizes to time (px)")
    parser.add_argument("--demo", action="store_true", help="time the demo's configuration instead (real assets)")
    parser.add_argument("--all-reduce", action="store_true",
                        help="only measure the all-reduce memory row, and update it in --output")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    parser.add_argument("--all-reduce-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker)))
        return
    if args.all_reduce_worker:
        print(json.dumps(all_reduce_worker(args.all_reduce_worker)))
        return
    if args.all_reduce:
        results = {}
        if os.path.exists(args.output):
            with open(args.output) as f:
                results = json.load(f)
        results["all_reduce_memory"] = all_reduce_memory()
        os.makedirs(os.path.dirname(args.output), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
        print("\n| measure | value | target |\n|---|---|---|\n" + _all_reduce_row(results["all_reduce_memory"]))
        print(f"\nwritten to {args.output}")
        return
    if args.demo:
        results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu",
                   "demo_56px": demo_step_times(4 if args.quick else 10)}
        output = args.output.replace("bench_metatrain.json", "bench_metatrain_demo.json")
        os.makedirs(os.path.dirname(output), exist_ok=True)
        with open(output, "w") as f:
            json.dump(results, f, indent=2)
        demo = results["demo_56px"]
        print("\n| measure | value | target |\n|---|---|---|")
        print(f"| SMAT task / PMF task, demo configuration (56 px, cached prefix, dense teacher on) | "
              f"{demo['smat_over_pmf']:.2f} ({demo['smat_task_s']:.2f} s / {demo['pmf_task_s']:.2f} s) | ≤ 2.5 |")
        print(f"\nwritten to {output}")
        return
    repeats = 2 if args.quick else 4
    times = {size: step_times(repeats, size) for size in args.sizes}
    results = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu",
        "step_time_s": times,
        "smat_over_pmf": {size: t["smat"] / t["pmf"] for size, t in times.items()},
        "smat_no_teacher_over_pmf": {size: t["smat_no_teacher"] / t["pmf"] for size, t in times.items()},
        "data": data_share(4 if args.quick else 8),
        "memory": [json.loads(subprocess.run([sys.executable, __file__, "--memory-worker", m], check=True,
                                             capture_output=True, text=True).stdout.strip().splitlines()[-1])
                   for m in ("pmf", "smat", "smat_no_teacher")],
        "all_reduce_memory": all_reduce_memory(),
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    print("\n| measure | value | target |\n|---|---|---|")
    for size in times:
        print(f"| SMAT step / PMF step, dense teacher on, {size} px | {results['smat_over_pmf'][size]:.2f} | ≤ 4.0 |")
        print(f"| SMAT step / PMF step, dense teacher off, {size} px | {results['smat_no_teacher_over_pmf'][size]:.2f} "
              "| ≤ 2.5 |")
    print(f"| episode sampling + collation share of update time (2 workers) | {100 * results['data']['data_share']:.1f}% | ≤ 10% |")
    for m in results["memory"]:
        print(f"| peak memory of a training step, {m['method']} | {m['peak_step_memory_MiB']:.0f} MiB | reported |")
    print(_all_reduce_row(results["all_reduce_memory"]))
    for size, t in times.items():
        print(f"| step time at {size} px: PMF / SMAT / SMAT no teacher | {t['pmf']:.2f} s / {t['smat']:.2f} s / "
              f"{t['smat_no_teacher']:.2f} s | reported |")
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
