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
"""`SmatMetaTrainer`: episodic meta-training of SMAT (or the dense PMF baseline) on Accelerate.

The loop, per meta-update: anneal the router temperature → for each of the update's tasks: sample an episode, seed,
loss (the sparsity constraint resets satisfied multipliers per task), backward → all-reduce gradients across processes → clip → step every
optimizer and schedule → clip the mask logits → log, validate, checkpoint.

Reproducibility: the episode stream is indexed globally (task `g` of update `u` on process `r` is
`u·world·tasks + r·tasks + j`), and torch's RNG is seeded from `(seed, g)` before each task, so a run resumed from a
checkpoint, or split over processes, sees exactly the same episodes and noise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import warnings
from typing import Any, Callable, Mapping, Optional, Union

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from ..atomic_io import (
    JOURNAL_NAME,
    atomic_write_text,
    commit_directory,
    discard_staging,
    process_alive,
    recover_directory,
    remove_stale_temporaries,
    staging_directory,
)
from ..diagnostics import mask_saturation
from ..integrity import check_adapter_dir
from ..model import SmatModel
from .arguments import RENAMED_ARGUMENTS, MetaTrainingArguments
from .episodes import EpisodeSampler
from .evaluation import evaluate_episodes, summarize
from .constraint import SparsityConstraint
from .objective import protonet_task_loss, smat_task_loss
from .serialization import load_state, save_state


logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
# Gradients smaller than this (elements) are all-reduced together, in buckets of about this size.
ALL_REDUCE_BUCKET = 1 << 22
# A task's loss is a cross-entropy, a distillation term and the constraint (λ · a fraction); beyond this it diverges.
LOSS_LIMIT = 1e6
STATE_STEM = "training_state"  # training_state.safetensors (tensors) + training_state.json (the rest, checksums)
LEGACY_STATE_NAME = "training_state.pt"  # written by smat-peft < 0.2; read with torch.load(weights_only=True)
DENSE_STEM = "model_state"  # a dense (PMF) model's weights, in the same pickle-free format
LATEST_NAME = "latest"
# Arguments that may change between a run and its resumption without changing what is trained.
_RESUME_NEUTRAL = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "logging_steps", "save_steps", "save_total_limit",
    "eval_steps", "eval_episodes", "test_episodes", "eval_modes", "report_to", "disable_tqdm",
    "dataloader_num_workers", "load_best_model_at_end", "use_cpu",
})


def _has_accelerator() -> bool:
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return (torch.cuda.is_available() or bool(mps and mps.is_available())
            or bool(xpu and hasattr(xpu, "is_available") and xpu.is_available()))


def _refuse_unsupported_launch(accelerator: Accelerator) -> None:
    """Launch settings the meta-trainer cannot honour, refused before any step with what to do instead."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ValueError(
            f"SmatMetaTrainer does not support {accelerator.distributed_type.value} launches: it averages gradients "
            "itself across data-parallel processes (the inner and teacher steps take `torch.autograd.grad`). Launch "
            "plain data parallelism instead: `accelerate launch --multi_gpu --num_processes N ...` or `torchrun "
            "--nproc_per_node N ...` (docs/training.md)."
        )
    if accelerator.gradient_accumulation_steps > 1:
        raise ValueError(
            f"Accelerate's gradient_accumulation_steps={accelerator.gradient_accumulation_steps} is not used by "
            "SmatMetaTrainer (it would only divide the loss): one meta-update already accumulates "
            "`tasks_per_update` tasks per process. Set `--tasks_per_update` instead and gradient accumulation to 1."
        )


class SmatMetaTrainer:
    """Meta-trains a SMAT adapter over episodes from several 🤗 datasets, and meta-tests it.

    Pass a SMAT `PeftModel` (from [`get_smat_model`]) to meta-train SMAT, or a plain backbone to meta-train it
    densely with the ProtoNet loss (the PMF baseline); `evaluate()` alone on a plain backbone is the pre-trained
    ProtoNet baseline.

    Args:
        model: A SMAT `PeftModel` or a plain vision backbone.
        args ([`MetaTrainingArguments`]): Every knob.
        train_datasets (`dict[str, datasets.Dataset]`): Training domains; their held-out classes are the in-domain
            validation and test tasks.
        eval_datasets (`dict[str, datasets.Dataset]`, *optional*): Out-of-domain test domains, never trained on.
        image_processor (*optional*): The backbone's transformers image processor (resize and normalisation).
        sampler_class (`Callable[..., EpisodeSampler]`, *optional*): What makes the samplers: [`EpisodeSampler`], a
            subclass, or a factory with its signature.
        load_inputs (`Callable[[str, list[int]], torch.Tensor]`, *optional*): Makes the model inputs of dataset rows
            instead of decoding images ([`EpisodeSampler`]'s `load_inputs`: un-augmented, so `args.augment` must be
            off); the demo passes cached activations of the backbone's frozen first blocks.

    Example:

    ```py
    >>> trainer = SmatMetaTrainer(model, MetaTrainingArguments(output_dir="runs/smat", max_steps=500),
    ...                           train_datasets={"emoji": emoji, "glyphs": glyphs}, eval_datasets={"mnist": mnist})
    >>> trainer.train()  # doctest: +SKIP
    >>> trainer.evaluate()["ood_average"]["direct"]  # doctest: +SKIP
    ```
    """

    def __init__(
        self,
        model: nn.Module,
        args: MetaTrainingArguments,
        train_datasets: Optional[Mapping[str, Any]] = None,
        eval_datasets: Optional[Mapping[str, Any]] = None,
        image_processor: Any = None,
        sampler_class: Callable[..., EpisodeSampler] = EpisodeSampler,
        load_inputs: Optional[Callable[[str, list[int]], torch.Tensor]] = None,
    ) -> None:
        self.sampler_class = sampler_class
        self.load_inputs = load_inputs
        self.args = args
        self.model = model
        self.train_datasets = dict(train_datasets or {})
        self.eval_datasets = dict(eval_datasets or {})
        overlap = set(self.train_datasets) & set(self.eval_datasets)
        if overlap:
            raise ValueError(f"Domains {sorted(overlap)} are both training and out-of-domain evaluation domains.")
        self.image_processor = image_processor
        self.is_smat = isinstance(getattr(model, "base_model", None), SmatModel)
        self.accelerator = Accelerator(
            # on a machine without any accelerator (CUDA, MPS, XPU) this makes torchrun / `accelerate launch
            # --multi_gpu` give a gloo process group of CPU processes; otherwise Accelerate picks the device
            cpu=args.use_cpu or not _has_accelerator(),
            mixed_precision=args.mixed_precision,
            log_with=list(args.report_to) or None,
            project_dir=args.output_dir,
        )
        _refuse_unsupported_launch(self.accelerator)
        self.model.to(self.accelerator.device)
        self.train_sampler = self._sampler(self.train_datasets, "train", args.max_steps) if self.train_datasets else None
        self.global_step = 0
        self.best_metric: Optional[float] = None
        self.history: list[dict[str, Any]] = []
        self.optimizers: Optional[dict[str, torch.optim.Optimizer]] = None  # built by train()
        if self.is_smat:
            smat: SmatModel = self.model.base_model
            self.adapter_name = smat.active_adapters[0]
            config = smat.peft_config[self.adapter_name]
            # λ, one Lagrange multiplier per expert
            self.constraint = SparsityConstraint(config.num_experts, config.sparsity, reset=args.sparsity_reset).to(
                self.accelerator.device)

    # ------------------------------------------------------------------------------------------------------------
    # data
    def _sampler(self, datasets: Mapping[str, Any], split: str, num_episodes: int, seed: Optional[int] = None,
                 augment: Optional[bool] = None) -> EpisodeSampler:
        args = self.args
        return self.sampler_class(
            datasets, args.episode_shape, split=split, num_episodes=num_episodes,
            seed=args.seed if seed is None else seed, split_seed=args.split_seed, split_fractions=args.split_fractions,
            image_column=args.image_column, label_column=args.label_column,
            image_size=args.image_size, image_processor=self.image_processor,
            augment=(args.augment and split == "train") if augment is None else augment,
            min_images_policy=args.min_images_policy, load_inputs=self.load_inputs,
        )

    def _task_indices(self, start_update: int) -> list[int]:
        world, tasks = self.accelerator.num_processes, self.args.tasks_per_update
        rank = self.accelerator.process_index
        return [u * world * tasks + rank * tasks + j for u in range(start_update, self.args.max_steps) for j in range(tasks)]

    def _episodes(self, start_update: int):
        indices = self._task_indices(start_update)
        # the sampler yields a fixed number of episodes; the global stream may index past it
        self.train_sampler.num_episodes = max(self.train_sampler.num_episodes, max(indices, default=0) + 1)
        loader = DataLoader(Subset(self.train_sampler, indices), batch_size=None, shuffle=False,
                            num_workers=self.args.dataloader_num_workers, collate_fn=lambda episode: episode)
        return iter(loader)

    # ------------------------------------------------------------------------------------------------------------
    # optimisation
    def _build_optimizers(self) -> None:
        if self.optimizers is not None:
            return
        args = self.args
        self.optimizers = {}
        self.clip_groups: dict[str, tuple[list[nn.Parameter], float]] = {}
        if self.is_smat:
            named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
            deltas = [p for n, p in named if ".smat_delta." in n]
            masks = [p for n, p in named if ".smat_log_alpha." in n]
            adamw = [p for n, p in named if ".smat_delta." not in n and ".smat_log_alpha." not in n]
            if not deltas:
                raise ValueError("The SMAT adapter has no trainable parameters: load it with `is_trainable=True`.")
            self.optimizers["delta"] = torch.optim.SGD(deltas, lr=args.delta_lr, momentum=args.delta_momentum,
                                                       weight_decay=args.delta_weight_decay)
            if masks:  # none with SmatConfig(train_masks=False)
                self.optimizers["mask"] = torch.optim.SGD(masks, lr=args.mask_lr)
                self.clip_groups["mask"] = (masks, args.mask_grad_clip)
            self.optimizers["lagrangian"] = torch.optim.SGD(self.constraint.parameters(), lr=args.lagrangian_lr)
            self.optimizers["router"] = torch.optim.AdamW(adamw, lr=args.router_lr, weight_decay=args.router_weight_decay)
            self.clip_groups["router"] = (adamw, args.router_grad_clip)
        else:
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizers["dense"] = torch.optim.AdamW(params, lr=args.dense_lr, weight_decay=args.dense_weight_decay)
        make = get_cosine_schedule_with_warmup if args.lr_schedule == "cosine" else get_constant_schedule_with_warmup
        self.schedulers = {}
        for name, optimizer in self.optimizers.items():
            kwargs = {"num_training_steps": args.max_steps} if args.lr_schedule == "cosine" else {}
            self.schedulers[name] = make(optimizer, num_warmup_steps=args.warmup_steps, **kwargs)

    def _all_reduce_gradients(self) -> None:
        """Average every optimised gradient across processes, in place ([`all_reduce_mean_`])."""
        if self.accelerator.num_processes == 1:
            return
        params = [p for opt in self.optimizers.values() for group in opt.param_groups for p in group["params"]]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        all_reduce_mean_([p.grad for p in params], self.accelerator.num_processes)

    def _broadcast_initial_state(self) -> None:
        """Every trainable parameter, the routers' buffers and λ from process 0, so replicas start identical
        whatever each process's seed did."""
        if self.accelerator.num_processes == 1:
            return
        import torch.distributed as dist

        tensors = [p.data for p in self.model.parameters() if p.requires_grad]
        if self.is_smat:
            tensors += [b for b in self.model.base_model.smat_router.buffers()]
            tensors += [self.constraint.multipliers.data]
        for tensor in tensors:
            dist.broadcast(tensor, src=0)

    def _start_update(self, update: int) -> None:
        """Per-update state that depends only on the update index, hence identical on every process."""
        if not self.is_smat:
            return
        smat: SmatModel = self.model.base_model
        tasks_seen = update * self.accelerator.num_processes * self.args.tasks_per_update
        for router in smat.smat_router.values():
            router.anneal_(tasks_seen, self.args.router_temperature_decay)
            router.update_spectral_norm()

    def _task_loss(self, episode):
        autocast = self.accelerator.autocast
        if self.is_smat:
            return smat_task_loss(self.model, episode, self.args, self.constraint, autocast=autocast)
        return protonet_task_loss(self.model, episode, self.args, autocast=autocast)

    # ------------------------------------------------------------------------------------------------------------
    # training
    def training_step(self, episodes: list) -> list[dict[str, float]]:
        """One meta-update over `episodes` (the update's tasks on this process, on any device: each is moved to the
        accelerator's); returns each task's metrics.

        Anneals the router temperature, accumulates the tasks' gradients, averages them across processes, clips,
        steps every optimizer and schedule, clips the mask logits and projects the multipliers to λ ≥ 0.
        """
        self._build_optimizers()
        update = self.global_step
        self._start_update(update)
        task_logs = []
        for episode in episodes:
            episode = episode.to(self.accelerator.device)
            torch.manual_seed(self.args.seed * 1_000_003 + episode.index)
            start = time.perf_counter()
            out = self._task_loss(episode)
            if not torch.isfinite(out.loss) or abs(out.loss.item()) > LOSS_LIMIT:
                kind = "Non-finite" if not torch.isfinite(out.loss) else f"Diverging (|loss| > {LOSS_LIMIT:g})"
                raise FloatingPointError(
                    f"{kind} loss {out.loss.item()} at update {update} "
                    f"(episode {episode.index}, domain {episode.domain!r}); no step was taken. The last good checkpoint is "
                    f"{self._latest_checkpoint() or 'none (no checkpoint saved yet)'}. Lower the learning rates "
                    "or use bf16 instead of fp16."
                )
            self.accelerator.backward(out.loss / len(episodes))
            task_logs.append({"loss": out.loss.item(), "query_loss": out.query_loss, "accuracy": out.query_accuracy,
                              **out.metrics, "step_time_s": time.perf_counter() - start})
        self._all_reduce_gradients()
        scaler = self.accelerator.scaler  # fp16: backward scaled the loss; unscale before clipping and logging
        if scaler is not None:
            for optimizer in self.optimizers.values():
                scaler.unscale_(optimizer)
        finite = True
        for name, optimizer in self.optimizers.items():
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            max_norm = self.clip_groups[name][1] if name in self.clip_groups else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
            finite = finite and bool(torch.isfinite(norm))
            if not torch.isfinite(norm) and scaler is None:  # clipping an infinite norm would zero the gradients
                raise FloatingPointError(
                    f"The gradient norm of the {name!r} parameters is {float(norm)} at update {update}: training is "
                    "diverging (e.g. a multiplier λ grown huge by `lagrangian_lr`); no step was taken. The last good "
                    f"checkpoint is {self._latest_checkpoint() or 'none (no checkpoint saved yet)'}. Lower the "
                    "learning rates."
                )
            if name in self.clip_groups:
                for logs in task_logs:  # before clipping: does the clip bind?
                    logs[f"{name}_grad_norm"] = float(norm)
        if scaler is not None:
            # all or nothing: an inf/NaN anywhere skips every optimizer's step and lowers the scale
            if finite:
                for optimizer in self.optimizers.values():
                    scaler.step(optimizer)
            scaler.update()
            for logs in task_logs:
                logs.update(loss_scale=float(scaler.get_scale()), step_skipped=not finite)
        else:
            for optimizer in self.optimizers.values():
                optimizer.step()
        for name, optimizer in self.optimizers.items():
            if finite:
                self.schedulers[name].step()
            optimizer.zero_grad(set_to_none=True)
        if self.is_smat and finite:
            self.model.base_model.clip_mask_logits_()
            self.constraint.project_()
        self.global_step += 1
        return task_logs

    def train(self, resume_from_checkpoint: Union[str, bool, None] = None) -> dict[str, Any]:
        """Meta-train for `max_steps` updates; resume from a checkpoint directory, or `True` / `"latest"` for the
        latest one (default: `args.resume_from_checkpoint`).

        Without a checkpoint to resume, an `output_dir` that holds a previous run is refused unless
        `args.overwrite_output_dir` (then its checkpoints are deleted first). Returns the final training metrics;
        `output_dir/metrics.json` holds the whole history.
        """
        args = self.args
        if self.train_sampler is None:
            raise ValueError("No `train_datasets` were given to the trainer.")
        self._build_optimizers()
        if resume_from_checkpoint is None:
            resume_from_checkpoint = args.resume_from_checkpoint
        if resume_from_checkpoint:
            self._load_checkpoint(resume_from_checkpoint)
        else:
            self._prepare_output_dir()
        self._broadcast_initial_state()
        if self.accelerator.is_main_process:
            os.makedirs(args.output_dir, exist_ok=True)
            self._remove_stale_temporaries()
        if args.report_to:
            self.accelerator.init_trackers("smat-peft", config={k: str(v) for k, v in vars(args).items()
                                                                if k not in RENAMED_ARGUMENTS})
        self.model.train()
        episodes = self._episodes(self.global_step)
        progress = tqdm(total=args.max_steps, initial=self.global_step, desc="meta-training",
                        disable=args.disable_tqdm or not self.accelerator.is_local_main_process)
        window: list[dict[str, float]] = []
        start_time = time.perf_counter()
        while self.global_step < args.max_steps:
            wait = time.perf_counter()
            batch = [next(episodes) for _ in range(args.tasks_per_update)]
            data_time = time.perf_counter() - wait
            task_logs = self.training_step(batch)
            window += [{**logs, "data_time_s": data_time / len(batch)} for logs in task_logs]
            progress.update(1)

            if self.global_step % args.logging_steps == 0 or self.global_step == args.max_steps:
                logs = {k: sum(w[k] for w in window if k in w) / sum(k in w for w in window) for k in window[0]}
                logs.update(step=self.global_step, elapsed_s=time.perf_counter() - start_time)
                if self.is_smat:
                    logs.update(self.expert_diagnostics())
                self._log(logs)
                progress.set_postfix({k: f"{logs[k]:.3f}" for k in ("loss", "accuracy", "train_mask_expected_density")
                                      if k in logs})
                window = []
            if args.eval_steps and self.global_step % args.eval_steps == 0:
                self._validate()
            if (args.save_steps and self.global_step % args.save_steps == 0) or self.global_step == args.max_steps:
                self.save_checkpoint()
        progress.close()
        if args.eval_steps and self.best_metric is None:
            self._validate()
        if args.load_best_model_at_end and self.best_metric is not None:
            self._load_weights(os.path.join(args.output_dir, "best"))
        # not `accelerator.end_training()`: it also destroys the process group, which evaluate() and save_model()
        # still need under several processes
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self._write_metrics()
        return self.history[-1] if self.history else {}

    def expert_diagnostics(self) -> dict[str, Any]:
        """Per expert: the share of mask logits at each clip bound, the training masks' expected density, λ; and
        the router's training temperature (logged every `logging_steps`, see `smat_peft.diagnostics`)."""
        smat: SmatModel = self.model.base_model
        saturation = mask_saturation(smat, self.adapter_name)
        with torch.no_grad():
            density = smat.expected_density(self.adapter_name)
        return {
            "expert_mask_at_upper_clip": saturation["at_upper"],
            "expert_mask_at_lower_clip": saturation["at_lower"],
            "mask_saturated": sum(saturation["at_upper"] + saturation["at_lower"]) / len(saturation["at_upper"]),
            "expert_train_mask_expected_density": density.tolist(),
            "multipliers": self.constraint.multipliers.detach().cpu().tolist(),
            "router_temperature": float(smat.smat_router[self.adapter_name].temperature),
        }

    def _log(self, logs: dict[str, Any]) -> None:
        self.history.append(logs)
        if self.args.report_to:
            self.accelerator.log({k: v for k, v in logs.items() if isinstance(v, (int, float))}, step=self.global_step)

    def _write_metrics(self, extra: Optional[dict[str, Any]] = None) -> None:
        if not self.accelerator.is_main_process:
            return
        os.makedirs(self.args.output_dir, exist_ok=True)
        path = os.path.join(self.args.output_dir, "metrics.json")
        existing = {}
        if os.path.exists(path):
            with open(path) as f:
                existing = json.load(f)
        existing.update({"train_history": self.history, "best_validation_accuracy": self.best_metric})
        existing.update(extra or {})
        atomic_write_text(path, json.dumps(existing, indent=2, default=str))

    # ------------------------------------------------------------------------------------------------------------
    # validation and meta-test
    def _validate(self) -> float:
        """Direct ProtoNet accuracy on the fixed validation episodes of the training domains; keeps the best adapter."""
        was_training = self.model.training
        sampler = self._sampler(self.train_datasets, "validation", self.args.eval_episodes, seed=self.args.seed + 1)
        per_domain = evaluate_episodes(self.model, sampler, self.args, modes=("direct",), is_smat=self.is_smat,
                                       disable_tqdm=True, **self._evaluation_shard())
        accuracy = sum(d["direct"]["mean"] for d in per_domain.values()) / len(per_domain)
        self._log({"step": self.global_step, "validation_accuracy": accuracy})
        if self.best_metric is None or accuracy > self.best_metric:
            self.best_metric = accuracy
            if self.accelerator.is_main_process:
                self._save_adapter(os.path.join(self.args.output_dir, "best"))
        self.model.train(was_training)
        return accuracy

    def _evaluation_shard(self) -> dict[str, int]:
        """Each process evaluates every `num_processes`-th episode; `evaluate_episodes` gathers the scores."""
        return {"process_index": self.accelerator.process_index, "num_processes": self.accelerator.num_processes}

    def evaluate(self, datasets: Optional[Mapping[str, Any]] = None, modes: Optional[tuple[str, ...]] = None,
                 split: str = "test") -> dict[str, Any]:
        """Meta-test over fixed episodes per domain: accuracy mean ± 95% CI per domain and mode, ID/OOD averages.

        Training domains (their held-out test classes) count as in-domain, `eval_datasets` as out-of-domain.
        Fine-tuning modes pick their learning rate per domain on validation episodes, never on test ones. Under
        several processes each evaluates 1/`num_processes` of the episodes and every process returns the results
        of one process (per-episode scores gathered in episode order).
        """
        modes = tuple(modes or self.args.eval_modes)
        domains = dict(datasets) if datasets is not None else {**self.train_datasets, **self.eval_datasets}
        results: dict[str, Any] = {"domains": {}, "modes": list(modes)}
        for name, dataset in domains.items():
            sampler = self._sampler({name: dataset}, split, self.args.test_episodes, seed=self.args.seed + 2)
            search = None
            if any(m in ("full", "lora") for m in modes):
                search = self._sampler({name: dataset}, "validation", self.args.finetune_search_episodes,
                                       seed=self.args.seed + 3)
            results["domains"][name] = evaluate_episodes(
                self.model, sampler, self.args, modes=modes, is_smat=self.is_smat, search_sampler=search,
                disable_tqdm=self.args.disable_tqdm or not self.accelerator.is_local_main_process,
                description=f"meta-test {name}", **self._evaluation_shard(),
            )[name]
        results.update(summarize(results["domains"], in_domain=set(self.train_datasets), modes=modes))
        self._write_metrics({"evaluation": results})
        return results

    # ------------------------------------------------------------------------------------------------------------
    # checkpoints
    def save_model(self, directory: str) -> None:
        """Save the trained model where `from_pretrained` (and `smat-peft evaluate`) loads it: a SMAT adapter in peft's
        format (`--adapter_name_or_path`), a dense (PMF) backbone whole in transformers' format — `config.json`,
        `model.safetensors` and the image processor, if any (`--model_name_or_path`). Crash-safe; process 0 writes.
        """
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return
        if self.is_smat:
            self.model.save_pretrained(directory)  # atomic and checksummed (smat_peft.integrity)
            return
        if not hasattr(self.model, "save_pretrained"):
            raise TypeError(
                f"A dense {type(self.model).__name__} has no `save_pretrained`: save it with `torch.save` / "
                "safetensors yourself, or train a transformers model."
            )
        staging = staging_directory(directory)
        try:
            self.model.save_pretrained(staging, safe_serialization=True)
            if self.image_processor is not None:
                self.image_processor.save_pretrained(staging)
            commit_directory(staging, directory)
        finally:
            discard_staging(staging, directory)

    def _save_adapter(self, directory: str) -> None:
        """Save the adapter (SMAT) or the whole model (PMF) to `directory`; crash-safe, no pickle."""
        if self.is_smat:
            self.model.save_pretrained(directory)  # atomic and checksummed (smat_peft.integrity)
            return
        staging = staging_directory(directory)
        try:
            save_state(self.model.state_dict(), staging, DENSE_STEM)
            commit_directory(staging, directory)
        finally:
            discard_staging(staging, directory)

    def _load_weights(self, directory: str) -> None:
        """Load what `_save_adapter` wrote into the model being trained, after checking its checksums."""
        if self.is_smat:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            check_adapter_dir(directory)  # checksum, truncation, format: a damaged adapter never resumes silently
            weights = load_file(os.path.join(directory, "adapter_model.safetensors"))
            result = set_peft_model_state_dict(self.model, weights, adapter_name=self.adapter_name)
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"unexpected keys {result.unexpected_keys[:5]}")
        else:
            recover_directory(directory)
            self.model.load_state_dict(load_state(directory, DENSE_STEM, map_location=str(self.accelerator.device)))

    def _checkpoints(self, complete: bool = True) -> list[str]:
        """Names of the checkpoint directories in `output_dir`: those that hold a training state, or a commit
        journal that loading finishes (`complete=False`: also the empty ones a killed save left)."""
        if not os.path.isdir(self.args.output_dir):
            return []
        names = [n for n in os.listdir(self.args.output_dir)
                 if n.startswith(CHECKPOINT_PREFIX) and n[len(CHECKPOINT_PREFIX):].isdigit()
                 and os.path.isdir(os.path.join(self.args.output_dir, n))]
        if not complete:
            return names
        marks = (f"{STATE_STEM}.json", LEGACY_STATE_NAME, JOURNAL_NAME)
        return [n for n in names if any(os.path.isfile(os.path.join(self.args.output_dir, n, m)) for m in marks)]

    def _prepare_output_dir(self) -> None:
        """Refuse to start over a previous run in `output_dir` unless `overwrite_output_dir` (then delete its
        checkpoints, `latest` and `best`): a re-run must never silently restart, nor mix its checkpoints with
        another run's."""
        args = self.args
        previous = sorted(self._checkpoints(), key=lambda n: int(n[len(CHECKPOINT_PREFIX):]))
        latest = os.path.join(args.output_dir, LATEST_NAME)
        if not previous and not os.path.exists(latest):
            return
        if not args.overwrite_output_dir:
            raise ValueError(
                f"Output directory {args.output_dir} holds a previous run ({', '.join(previous) or 'no checkpoint'}"
                f"{', latest' if os.path.exists(latest) else ''}). Resume it with `--resume_from_checkpoint latest` "
                "(`trainer.train(resume_from_checkpoint=True)`), start anew with `--overwrite_output_dir` (deletes "
                "its checkpoints), or choose another `--output_dir`."
            )
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            for name in previous + ["best"]:
                shutil.rmtree(os.path.join(args.output_dir, name), ignore_errors=True)
            if os.path.exists(latest):
                os.remove(latest)
        self.accelerator.wait_for_everyone()

    def _latest_checkpoint(self) -> Optional[str]:
        path = os.path.join(self.args.output_dir, LATEST_NAME)
        if not os.path.exists(path):
            # a kill between committing a checkpoint and writing `latest`: the highest-numbered checkpoint is the last
            names = sorted(self._checkpoints(), key=lambda n: int(n[len(CHECKPOINT_PREFIX):]))
            return os.path.join(self.args.output_dir, names[-1]) if names else None
        with open(path) as f:
            name = f.read().strip()
        if not name or os.sep in name or "/" in name or not os.path.isdir(os.path.join(self.args.output_dir, name)):
            raise FileNotFoundError(
                f"{path} names {repr(name) if name else 'nothing (the file is empty)'}, which is not a checkpoint "
                f"directory in {self.args.output_dir}. Pass a checkpoint explicitly (`--resume_from_checkpoint "
                f"{os.path.join(self.args.output_dir, 'checkpoint-N')}`), or write its name into {path}."
            )
        return os.path.join(self.args.output_dir, name)

    def _arguments_record(self) -> dict[str, Any]:
        record = {}
        for key, value in dataclasses.asdict(self.args).items():
            if key in RENAMED_ARGUMENTS:  # deprecated spellings: always None once the arguments are built
                continue
            if isinstance(value, (list, tuple)):
                value = list(value)
            if value is None or isinstance(value, (bool, int, float, str, list)):
                record[key] = value
        return record

    def save_checkpoint(self) -> Optional[str]:
        """Save the adapter and the full training state (no pickle: safetensors + JSON with checksums) into
        `output_dir/checkpoint-N` in one crash-safe step; then update `output_dir/latest` and rotate."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        name = f"{CHECKPOINT_PREFIX}{self.global_step}"
        final = os.path.join(self.args.output_dir, name)
        state = {
            "global_step": self.global_step,
            "best_metric": self.best_metric,
            "history": self.history,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "constraint": {k: v.detach().cpu() for k, v in self.constraint.state_dict().items()} if self.is_smat else None,
            "mixed_precision": self.accelerator.mixed_precision,
            "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None,
            "rng": {"torch": torch.get_rng_state()},
            "world_size": self.accelerator.num_processes,
            "tasks_per_update": self.args.tasks_per_update,
            "arguments": self._arguments_record(),
        }
        staging = staging_directory(final)
        try:
            self._save_adapter(os.path.join(staging, "adapter"))
            save_state(state, staging, STATE_STEM)
            commit_directory(staging, final)
        finally:
            discard_staging(staging, final)
        atomic_write_text(os.path.join(self.args.output_dir, LATEST_NAME), name)
        self._rotate_checkpoints(keep=name)
        self._remove_stale_temporaries()
        return final

    def _remove_stale_temporaries(self) -> None:
        """Delete `latest.tmp-<pid>`, `metrics.json.tmp-<pid>` (and older versions' `checkpoint-N.tmp-<pid>` /
        `.old-<pid>`) and the staging directories of checkpoint saves that killed processes left in `output_dir`."""
        for name in os.listdir(self.args.output_dir):
            if name.startswith(f".{CHECKPOINT_PREFIX}") and ".tmp-" in name:  # staging of a killed checkpoint save
                remove_stale_temporaries(os.path.join(self.args.output_dir, name[1:].partition(".tmp-")[0]))
                continue
            stem, sep, pid = name.rpartition(".tmp-") if ".tmp-" in name else name.rpartition(".old-")
            if not sep or not pid.isdigit() or process_alive(int(pid)):
                continue
            if stem in (LATEST_NAME, "metrics.json") or stem.startswith(CHECKPOINT_PREFIX):
                path = os.path.join(self.args.output_dir, name)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        for name in set(self._checkpoints(complete=False)) - set(self._checkpoints()):  # a save killed before commit
            shutil.rmtree(os.path.join(self.args.output_dir, name), ignore_errors=True)

    def _rotate_checkpoints(self, keep: str) -> None:
        """Keep the `save_total_limit` most recently written checkpoints; never `keep` (the one just saved)."""
        if self.args.save_total_limit < 1:
            return
        names = [n for n in self._checkpoints() if n != keep]
        output_dir = self.args.output_dir
        names.sort(key=lambda n: (os.path.getmtime(os.path.join(output_dir, n)), int(n[len(CHECKPOINT_PREFIX):])))
        for name in names[: max(0, len(names) - (self.args.save_total_limit - 1))]:
            shutil.rmtree(os.path.join(self.args.output_dir, name), ignore_errors=True)

    def _read_state(self, checkpoint: str) -> dict[str, Any]:
        if os.path.isfile(os.path.join(checkpoint, LEGACY_STATE_NAME)) and not os.path.isfile(
            os.path.join(checkpoint, f"{STATE_STEM}.json")
        ):  # an older checkpoint: torch's restricted unpickler runs no code from the file
            return torch.load(os.path.join(checkpoint, LEGACY_STATE_NAME), map_location="cpu", weights_only=True)
        return load_state(checkpoint, STATE_STEM)

    def _warn_changed_arguments(self, checkpoint: str, recorded: Optional[Mapping[str, Any]]) -> None:
        if not recorded:
            return
        current = self._arguments_record()
        recorded = {RENAMED_ARGUMENTS.get(k, k): v for k, v in recorded.items()}  # checkpoints of older releases
        changed = [f"{k}: {recorded[k]!r} → {current[k]!r}" for k in sorted(set(recorded) & set(current))
                   if k not in _RESUME_NEUTRAL and recorded[k] != current[k]]
        if changed:
            message = (
                f"Resuming from {checkpoint} with arguments that differ from the run that wrote it: "
                f"{'; '.join(changed)}. "
                "The optimizers and learning-rate schedules continue from the checkpoint (its learning rates and "
                "schedule); other changes apply from now on. To train with the new values from the start, use "
                "`--overwrite_output_dir` or another `--output_dir`."
            )
            logger.warning(message)
            warnings.warn(message, UserWarning, stacklevel=3)

    def _unresumable(self, checkpoint: str, error: Exception) -> RuntimeError:
        return RuntimeError(
            f"Cannot resume from checkpoint {checkpoint!r}: it is incomplete or corrupt ({type(error).__name__}: "
            f"{error}). Resume from an earlier checkpoint-N directory in {self.args.output_dir!r}, or start anew."
        )

    def _check_resumable(self, checkpoint: str, state: Mapping[str, Any]) -> None:
        """Refuse a checkpoint this launch cannot continue exactly: another number of tasks per update (processes ×
        `tasks_per_update`: the episode stream and the gradient average depend on it), or another mixed precision."""
        world, tasks = state.get("world_size", 1), state.get("tasks_per_update", 1)
        if world * tasks != self.accelerator.num_processes * self.args.tasks_per_update:
            raise ValueError(
                f"Checkpoint {checkpoint!r} was made with world_size={world} process(es) × tasks_per_update={tasks} "
                f"= {world * tasks} tasks per update; this launch has world_size={self.accelerator.num_processes} × "
                f"tasks_per_update={self.args.tasks_per_update}. Resume with {world} process(es) (`accelerate launch "
                f"--num_processes {world}` / `torchrun --nproc_per_node {world}`) and `--tasks_per_update {tasks}`, "
                f"or any processes × tasks_per_update = {world * tasks}; nothing was loaded."
            )
        precision = state.get("mixed_precision", "no")
        if precision != self.accelerator.mixed_precision:
            raise ValueError(
                f"Checkpoint {checkpoint!r} was trained with mixed_precision={precision!r}, this run uses "
                f"{self.accelerator.mixed_precision!r}: resume with `--mixed_precision {precision}` (or your launch "
                "configuration's equivalent), or start anew in another --output_dir."
            )

    def _load_checkpoint(self, checkpoint: Union[str, bool]) -> None:
        self._build_optimizers()
        if checkpoint is True or checkpoint == "latest":
            checkpoint = self._latest_checkpoint()
            if checkpoint is None:
                raise FileNotFoundError(
                    f"No checkpoint to resume from in {self.args.output_dir} (no '{LATEST_NAME}' file). Start without "
                    "`resume_from_checkpoint`, or pass a checkpoint directory."
                )
        checkpoint = os.fspath(checkpoint)
        try:
            recover_directory(checkpoint)
            state = self._read_state(checkpoint)
        except Exception as error:  # report, never silently start over
            raise self._unresumable(checkpoint, error) from error
        self._check_resumable(checkpoint, state)  # before the model or any optimizer is touched
        try:
            self._load_weights(os.path.join(checkpoint, "adapter"))
        except Exception as error:
            raise self._unresumable(checkpoint, error) from error
        self._warn_changed_arguments(checkpoint, state.get("arguments"))
        if self.accelerator.scaler is not None and state.get("scaler"):
            self.accelerator.scaler.load_state_dict(state["scaler"])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        if self.is_smat:
            self.constraint.load_state_dict(state["constraint"])
        torch.set_rng_state(state["rng"]["torch"])
        self.global_step = state["global_step"]
        self.best_metric = state["best_metric"]
        self.history = state["history"]


def all_reduce_mean_(tensors: list[torch.Tensor], world_size: int, bucket_elements: int = ALL_REDUCE_BUCKET) -> None:
    """Average `tensors` across the default process group, in place: those of at least `bucket_elements` elements
    one by one, smaller ones packed into buckets of about `bucket_elements` — never a full-size copy of them all
    (`benchmarks/bench_metatrain.py --all-reduce` measures the peak memory against flattening everything)."""
    import torch.distributed as dist

    bucket: list[torch.Tensor] = []
    size = 0

    def flush() -> None:
        if bucket:
            flat = torch.cat([t.flatten() for t in bucket])
            dist.all_reduce(flat)
            flat.div_(world_size)
            offset = 0
            for t in bucket:
                t.copy_(flat[offset: offset + t.numel()].view_as(t))
                offset += t.numel()
        bucket.clear()

    for tensor in tensors:
        if tensor.numel() >= bucket_elements:
            dist.all_reduce(tensor)
            tensor.div_(world_size)
            continue
        bucket.append(tensor)
        size += tensor.numel()
        if size >= bucket_elements:
            flush()
            size = 0
    flush()
