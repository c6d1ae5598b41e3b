"""Where a SMAT meta-training step spends its time: `torch.profiler` over a few steps, as tables.

Same model and episodes as `gpu_check.py`'s step row (ViT-S sized, 128 px, 5-way 5-shot 5-query, M = 8, τ = 0.9):
median step time of SMAT with the dense teacher on and off and of PMF, then the profiler's top operators of the
SMAT step (teacher on) by device time and by host time. Writes `results/profile_metatrain.json` and the tables
as `results/profile_metatrain.txt`.

    python benchmarks/profile_metatrain.py          # on a GPU
    python benchmarks/profile_metatrain.py --cpu --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
from bench_metatrain import interleaved_step_times, trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="profile on the CPU")
    parser.add_argument("--quick", action="store_true", help="56 px and few repeats")
    parser.add_argument("--output_dir", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    size, repeats = (56, 2) if args.quick else (128, 10)
    cuda = torch.cuda.is_available() and not args.cpu
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: trainer(name, os.path.join(tmp, name), size, use_cpu=not cuda, augment=False)
                    for name in ("pmf", "smat", "smat_no_teacher")}
        times = interleaved_step_times(trainers, repeats)
        smat = trainers["smat"]
        episodes = [smat.train_sampler.episode(100 + i) for i in range(3)]
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            for episode in episodes:
                smat.training_step([episode])
            if cuda:
                torch.cuda.synchronize()
    device_key = "device_time_total" if cuda else "cpu_time_total"
    tables = {
        "by_device_time": prof.key_averages().table(sort_by=device_key, row_limit=30),
        "by_host_time": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30),
    }
    events = prof.key_averages()
    result = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "image_size": size,
        "step_s": times,
        "smat_over_pmf": times["smat"] / times["pmf"],
        "smat_no_teacher_over_pmf": times["smat_no_teacher"] / times["pmf"],
        "kernel_launches_per_smat_step": (sum(e.count for e in events if e.key in ("cudaLaunchKernel",
                                                                                   "cuLaunchKernel")) / 3)
        if cuda else None,
    }
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "profile_metatrain.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.output_dir, "profile_metatrain.txt"), "w") as f:
        for name, table in tables.items():
            f.write(f"== {name}\n{table}\n")
    print(json.dumps(result, indent=2))
    print(tables["by_device_time"])
    print(tables["by_host_time"])


if __name__ == "__main__":
    main()
