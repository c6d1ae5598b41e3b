"""The GPU check: what a user with a GPU does on day one, in one short run (a few minutes on one GPU).

1. One SMAT meta-update in fp16 (with Accelerate's loss scaler) and in bf16 against the same update in fp32, from the
   same initial adapter and episodes: relative difference of δ's update (‖Δδ_amp − Δδ_fp32‖ / ‖Δδ_fp32‖).
2. SMAT ÷ PMF step time and peak GPU memory on a ViT-S sized model at 128 px (the method's image size), 5-way
   5-shot 5-query episodes, M = 8, τ = 0.9, dense teacher on (interleaved, medians).
3. Throughput of the `merge_task` model ÷ the plain model (batch 64, 224 px, eval, fp32 and bf16 autocast).
4. `train()` end to end in bf16 (6 updates, validation and checkpoints every 3), resumed from the update-3
   checkpoint in a fresh trainer (largest |difference| of the adapter against the uninterrupted run: CUDA kernels
   need not be bit-identical), then `evaluate()` with direct, full and LoRA fine-tuning on 4 episodes per domain.

Each section records its error instead of its numbers if it fails, so one run reports every problem.

Writes `benchmarks/results/gpu_check.json`. `--cpu --quick` is a smoke run of the same code on the CPU (tiny sizes);
the numbers only mean something on a GPU.

    python benchmarks/gpu_check.py            # on a machine with CUDA
    python benchmarks/gpu_check.py --cpu --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_metatrain import backbone, domains, interleaved_step_times  # noqa: E402

from smat_peft import MetaTrainingArguments, SmatConfig, SmatMetaTrainer, get_smat_model  # noqa: E402
from smat_peft.testing import synthetic_domain  # noqa: E402


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _trainer(method: str, output_dir: str, image_size: int, cpu: bool, mixed_precision: str = "no",
             shots: int = 5, queries: int = 5) -> SmatMetaTrainer:
    _reset_accelerate()
    torch.manual_seed(0)
    values = dict(output_dir=output_dir, max_steps=100, tasks_per_update=1, ways=5, shots=shots, queries=queries,
                  image_size=image_size, warmup_steps=0, eval_steps=0, save_steps=0, disable_tqdm=True,
                  augment=False, use_cpu=cpu, mixed_precision=mixed_precision, overwrite_output_dir=True)
    model = backbone(image_size) if method == "pmf" else get_smat_model(backbone(image_size),
                                                                        SmatConfig(num_experts=8, sparsity=0.9))
    return SmatMetaTrainer(model, MetaTrainingArguments(**values), train_datasets=domains(image_size))


def precision_check(image_size: int, cpu: bool, precisions: list[str]) -> dict[str, float]:
    """Relative difference of δ's update under each mixed precision against fp32, same start and episode.

    fp16's loss scaler starts at 2^16 and halves on each overflow, skipping that step (as in any AMP run). A first
    fp16 trainer counts the steps skipped before one is taken; the comparison is then made by a fresh trainer whose
    scaler starts at the scale found, so that its first step is taken.
    """
    updates, out = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ["no"] + precisions:
            t = _trainer("smat", os.path.join(tmp, precision), image_size, cpu, precision, shots=2, queries=3)
            if precision == "fp16":
                skipped = 0
                while t.training_step([t.train_sampler.episode(0)])[0]["step_skipped"] and skipped < 40:
                    skipped += 1
                scale = float(t.accelerator.scaler.get_scale())
                out.update(fp16_steps_skipped_from_default_scale=skipped, fp16_loss_scale=scale)
                t = _trainer("smat", os.path.join(tmp, "fp16-found-scale"), image_size, cpu, precision, shots=2,
                             queries=3)
                t.accelerator.scaler = torch.amp.GradScaler(t.accelerator.device.type, init_scale=scale)
            before = [p.detach().clone() for n, p in t.model.named_parameters() if ".smat_delta." in n]
            t.model.train()
            logs = t.training_step([t.train_sampler.episode(0)])[0]
            if logs.get("step_skipped"):
                out[f"{precision}_step_skipped"] = True
            after = [p.detach() for n, p in t.model.named_parameters() if ".smat_delta." in n]
            updates[precision] = torch.cat([(a - b).flatten().float().cpu() for a, b in zip(after, before)])
    reference = updates.pop("no")
    for p, u in updates.items():
        out[p] = float((u - reference).norm() / reference.norm().clamp_min(1e-30))
    return out


def step_time_and_memory(image_size: int, cpu: bool, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {m: _trainer(m, os.path.join(tmp, m), image_size, cpu) for m in ("pmf", "smat")}
        times = interleaved_step_times(trainers, repeats)
        memory = {}
        if torch.cuda.is_available() and not cpu:
            for method, t in trainers.items():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                t.training_step([t.train_sampler.episode(0)])
                torch.cuda.synchronize()
                memory[f"{method}_peak_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    return {"pmf_step_s": times["pmf"], "smat_step_s": times["smat"], "smat_over_pmf": times["smat"] / times["pmf"],
            **memory}


@torch.no_grad()
def merged_throughput(image_size: int, batch: int, cpu: bool, repeats: int) -> dict[str, float]:
    device = torch.device("cpu" if cpu or not torch.cuda.is_available() else "cuda")
    plain = backbone(image_size).to(device).eval()
    smat = get_smat_model(backbone(image_size), SmatConfig(num_experts=8, sparsity=0.9, init_weights=False))
    smat = smat.to(device).eval()
    support = torch.randn(25, 3, image_size, image_size, device=device)
    merged = smat.base_model.merge_task(support, torch.arange(5, device=device).repeat(5)).to(device).eval()
    images = torch.randn(batch, 3, image_size, image_size, device=device)
    out: dict[str, float] = {}
    for dtype in (torch.float32, torch.bfloat16):
        times: dict[str, list[float]] = {"plain": [], "merged": []}
        for i in range(repeats + 1):
            for name, model in (("plain", plain), ("merged", merged)):
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    model(pixel_values=images)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                if i:
                    times[name].append(time.perf_counter() - start)
        label = "fp32" if dtype == torch.float32 else "bf16"
        out[f"merged_over_plain_time_{label}"] = statistics.median(times["merged"]) / statistics.median(times["plain"])
    return out


def train_evaluate_resume(image_size: int, cpu: bool) -> dict:
    """`train()` with validation and checkpoints, a resume from the middle checkpoint, then `evaluate()`."""
    precision = "no" if cpu else "bf16"
    train, ood = domains(image_size), {"c": synthetic_domain(40, 12, size=image_size, seed=2)}

    def run(output_dir: str, resume: str | None = None) -> SmatMetaTrainer:
        _reset_accelerate()
        torch.manual_seed(0)
        args = MetaTrainingArguments(
            output_dir=output_dir, max_steps=6, tasks_per_update=2, ways=5, shots=2, queries=3, image_size=image_size,
            warmup_steps=0, eval_steps=3, save_steps=3, save_total_limit=3, eval_episodes=4, test_episodes=4,
            finetune_steps=5, finetune_lr_grid=[0.0, 1e-4], finetune_search_episodes=2,
            eval_modes=["direct", "full", "lora"], disable_tqdm=True, augment=True, use_cpu=cpu,
            mixed_precision=precision)
        model = get_smat_model(backbone(image_size), SmatConfig(num_experts=8, sparsity=0.9))
        trainer = SmatMetaTrainer(model, args, train_datasets=train, eval_datasets=ood)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    def adapter(trainer: SmatMetaTrainer) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu() for k, v in trainer.model.state_dict().items() if "smat_" in k}

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        full = run(os.path.join(tmp, "full"))
        train_s = time.perf_counter() - start
        resumed = run(os.path.join(tmp, "resumed"), resume=os.path.join(tmp, "full", "checkpoint-3"))
        reference, actual = adapter(full), adapter(resumed)
        difference = max(float((reference[k] - actual[k]).abs().max()) for k in reference)
        start = time.perf_counter()
        results = full.evaluate()
        evaluate_s = time.perf_counter() - start
    return {
        "mixed_precision": precision,
        "train_6_updates_s": train_s,
        "evaluate_s": evaluate_s,
        "resumed_vs_uninterrupted_adapter_max_abs_difference": difference,
        "checkpoints_equal_keys": sorted(reference) == sorted(actual),
        "accuracy": {name: {mode: r[mode]["mean"] for mode in ("direct", "full", "lora")}
                     for name, r in results["domains"].items()},
    }


def section(fn, *args) -> dict:
    """`fn(*args)`, or its error (type, message and the last frames) if it raises."""
    try:
        return fn(*args)
    except Exception as error:  # a check reports every failure in one run
        import traceback

        return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a smoke test of the script)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "gpu_check.json"))
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --cpu for a smoke run")
    start = time.perf_counter()
    size, batch, repeats = (56, 8, 2) if args.quick else (128, 64, 10)
    precisions = ["bf16"] if args.cpu else ["fp16", "bf16"]  # Accelerate refuses fp16 on the CPU
    results = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.cpu else "cpu",
        "torch": torch.__version__,
        "delta_update_relative_difference_vs_fp32": section(precision_check, size, args.cpu, precisions),
        f"step_{size}px": section(step_time_and_memory, size, args.cpu, repeats),
        "merged_throughput": section(merged_throughput, size if args.quick else 224, batch, args.cpu, repeats),
        "train_evaluate_resume": section(train_evaluate_resume, size if args.quick else 56, args.cpu),
    }
    results["wall_s"] = time.perf_counter() - start
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
