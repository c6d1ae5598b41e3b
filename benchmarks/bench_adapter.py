"""Adapter overhead on a ViT-S sized model (random weights), measured as ratios side by side in one run.

(a) forward of the model returned by `merge_task` ÷ plain forward                 (target ≤ 1.02)
(b) conditioned (unmerged, inside `model.task`) forward ÷ plain forward, batch 64 (target ≤ 1.25)
(c) one task setup (prototypes + router + building θ_i) ÷ one plain forward of the
    same 5-way 5-shot support set, at 224 px (target ≤ 1.2) and at 56 px (reported)
(d) bytes of trainable state per backbone parameter, and peak memory of one training step, for log α in fp32
    and bf16 (each in a fresh subprocess, so that peak RSS is the step's own)

Timings interleave the compared calls and report medians, so machine noise hits both sides alike.

    python benchmarks/bench_adapter.py            # full run (a few minutes on 2 CPU cores)
    python benchmarks/bench_adapter.py --quick    # smaller batches, fewer repeats
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch
from transformers import ViTConfig, ViTModel

from smat_peft import SmatConfig, get_smat_model


def vit_s(image_size: int) -> ViTModel:
    config = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                       image_size=image_size, patch_size=16)
    torch.manual_seed(0)
    return ViTModel(config, add_pooling_layer=False).eval()


def smat_vit_s(image_size: int, mask_dtype: str = "float32", binary: bool = True):
    model = get_smat_model(vit_s(image_size), SmatConfig(num_experts=8, sparsity=0.9, init_weights=False,
                                                         mask_dtype=mask_dtype)).eval()
    if binary:  # trained masks are binary (log α saturates at ±clip); 90% zeros per expert
        with torch.no_grad():
            for _, layer in model.base_model.smat_layers():
                for log_alpha in layer.smat_log_alpha["default"]:
                    log_alpha.copy_(torch.where(torch.rand(log_alpha.shape) < 0.9, -4.6, 4.6))
    return model


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, calling them in turn `repeats` times after one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for round_ in range(repeats + 1):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                if round_:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def support_set(image_size: int, ways: int = 5, shots: int = 5):
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(ways * shots, 3, image_size, image_size, generator=generator),
            torch.arange(ways).repeat(shots))


def bench_forward(batch: int, repeats: int) -> dict[str, float]:
    plain, model = vit_s(224), smat_vit_s(224)
    x, y = support_set(224)
    q = torch.randn(batch, 3, 224, 224)
    merged = model.merge_task(x, y)
    with model.task(x, y):
        t = interleaved({"plain": lambda: plain(pixel_values=q), "merged": lambda: merged(pixel_values=q),
                         "conditioned": lambda: model(pixel_values=q)}, repeats)
    return {"batch": batch, **{f"{k}_s": v for k, v in t.items()},
            "merged_over_plain": t["merged"] / t["plain"], "conditioned_over_plain": t["conditioned"] / t["plain"]}


def bench_setup(image_size: int, repeats: int, binary: bool) -> dict[str, float]:
    plain, model = vit_s(image_size), smat_vit_s(image_size, binary=binary)
    x, y = support_set(image_size)

    def setup():
        with model.task(x, y):
            pass

    t = interleaved({"plain_support_forward": lambda: plain(pixel_values=x), "task_setup": setup}, repeats)
    return {"image_size": image_size, "binary_masks": binary, **{f"{k}_s": v for k, v in t.items()},
            "setup_over_forward": t["task_setup"] / t["plain_support_forward"]}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def training_step_memory(mask_dtype: str) -> dict[str, float]:
    """Run in a subprocess: peak RSS above the resting model during one SMAT training step (5-way 5-shot, 112 px).

    Linux only: the peak counter (VmHWM) is reset through /proc/self/clear_refs after a first step.
    """
    model = smat_vit_s(112, mask_dtype=mask_dtype, binary=False).train()
    backbone = sum(p.numel() for n, p in model.named_parameters() if "smat_" not in n)
    trainable = [p for p in model.parameters() if p.requires_grad]
    state_bytes = sum(p.numel() * p.element_size() for p in trainable)
    optimizer = torch.optim.SGD(trainable, lr=1e-4, momentum=0.9)
    x, y = support_set(112)

    def step():
        with model.task(x, y):
            features = model(pixel_values=x).last_hidden_state[:, 0]
            loss = torch.nn.functional.cross_entropy(features @ features[:5].T, y)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # gradients and momentum buffers exist from here on
    rest = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    peak = _status_kib("VmHWM")
    return {"mask_dtype": mask_dtype, "backbone_params": backbone,
            "trainable_state_bytes_per_backbone_param": state_bytes / backbone,
            "resting_MiB": rest / 1024, "peak_step_memory_MiB": (peak - rest) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller batch and fewer repeats (a smoke run)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "bench_adapter.json"))
    parser.add_argument("--memory-worker", choices=["float32", "bfloat16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        print(json.dumps(training_step_memory(args.memory_worker)))
        return

    repeats = 3 if args.quick else 5
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu",
               "forward": bench_forward(batch=16 if args.quick else 64, repeats=repeats),
               "setup": [bench_setup(224, repeats, True), bench_setup(56, repeats, True),
                         bench_setup(56, repeats, False)],
               "memory": [json.loads(subprocess.run([sys.executable, __file__, "--memory-worker", dtype],
                                                    check=True, capture_output=True, text=True).stdout)
                          for dtype in ("float32", "bfloat16")]}
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)

    f = results["forward"]
    print("\n| measure | ratio | target |\n|---|---|---|")
    print(f"| (a) merged forward / plain forward (batch {f['batch']}, 224 px) | {f['merged_over_plain']:.3f} | ≤ 1.02 |")
    print(f"| (b) conditioned forward / plain forward (batch {f['batch']}, 224 px) | {f['conditioned_over_plain']:.3f} | ≤ 1.25 |")
    for s in results["setup"]:
        masks = "binary" if s["binary_masks"] else "fractional"
        target = "≤ 1.2" if s["image_size"] == 224 else "reported"
        print(f"| (c) task setup / support forward (5-way 5-shot, {s['image_size']} px, {masks} masks) "
              f"| {s['setup_over_forward']:.3f} | {target} |")
    for m in results["memory"]:
        print(f"| (d) trainable bytes per backbone parameter, log α {m['mask_dtype']} "
              f"| {m['trainable_state_bytes_per_backbone_param']:.1f} | reported |")
        print(f"| (d) resting memory / peak extra memory of a training step (112 px episode), log α "
              f"{m['mask_dtype']} | {m['resting_MiB']:.0f} MiB / {m['peak_step_memory_MiB']:.0f} MiB | reported |")
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
