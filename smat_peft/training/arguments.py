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
"""`MetaTrainingArguments`: every knob of meta-training and meta-testing, one source of truth for the CLI too.

Defaults follow the paper's ViT-S setting (see `docs/training.md`); where the reference code departs from the paper
(pitfalls P1-P14 of the method notes) the behaviour is an explicit option and the default is what the paper intends.
"""

from __future__ import annotations

import argparse
import math
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Optional

from .episode_shape import EpisodeShape


def _shape_field(name: str) -> Any:
    """A field of the arguments with the default and help string of `EpisodeShape`'s field `name`."""
    spec = next(f for f in fields(EpisodeShape) if f.name == name)
    return field(default=spec.default, metadata=dict(spec.metadata))


# Deprecated argument names → their new names; the old names still work until the next release (FutureWarning),
# and a checkpoint's recorded arguments under an old name count as the new one on resume.
RENAMED_ARGUMENTS = {
    "lora_r": "finetune_lora_r",
    "lora_alpha": "finetune_lora_alpha",
    "lora_dropout": "finetune_lora_dropout",
    "lora_lr_multiplier": "finetune_lora_lr_multiplier",
}


@dataclass
class MetaTrainingArguments:
    """Arguments of [`SmatMetaTrainer`]. Every field has a help string; `smat-peft meta-train --help` lists them.

    Example:

    ```py
    >>> args = MetaTrainingArguments(output_dir="runs/smat", max_steps=100, ways=5, shots=5)
    >>> args.tasks_per_update
    4
    ```
    """

    output_dir: str = field(default="smat-output", metadata={"help": "Where checkpoints, the best adapter and metrics.json go."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start anew in an `output_dir` that holds a previous run: its checkpoints, `latest` and "
                  "`best` are deleted first. Without it (and without `resume_from_checkpoint`) such a run is refused."},
    )
    resume_from_checkpoint: Optional[str] = field(
        default=None,
        metadata={"help": "Resume from this checkpoint directory, or 'latest' for the one `output_dir/latest` names."},
    )
    seed: int = field(
        default=0,
        metadata={"help": "Seed of the episode stream, class splits and model noise; `smat-peft meta-train` also seeds "
                  "the adapter's initialisation with it."},
    )

    # ---- episodes
    image_column: str = field(default="image", metadata={"help": "Image column of the datasets."})
    label_column: str = field(default="label", metadata={"help": "Label column of the datasets."})
    image_size: int = field(default=224, metadata={"help": "Side of the square images fed to the backbone."})
    # the episode shape, flat for the command line: defaults and help from `EpisodeShape` (see `episode_shape`)
    variable_ways_shots: bool = _shape_field("variable")
    ways: int = _shape_field("ways")
    shots: int = _shape_field("shots")
    queries: int = _shape_field("queries")
    max_ways: int = _shape_field("max_ways")
    max_support: int = _shape_field("max_support")
    split_seed: int = field(default=0, metadata={"help": "Seed of the disjoint train/validation/test class splits."})
    split_fractions: list[float] = field(
        default_factory=lambda: [0.7, 0.15, 0.15], metadata={"help": "Fractions of each domain's classes in train/validation/test."}
    )
    min_images_policy: Literal["skip", "error"] = field(
        default="skip",
        metadata={"help": "Classes with fewer images than shots + queries: 'skip' them or raise an 'error'."},
    )
    augment: bool = field(default=True, metadata={"help": "Random resized crop, flip and colour jitter in training."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader workers decoding episodes."})

    # ---- optimisation
    max_steps: int = field(default=12500, metadata={"help": "Number of meta-updates."})
    tasks_per_update: int = field(default=4, metadata={"help": "Tasks (episodes) per meta-update and process."})
    warmup_steps: int = field(default=500, metadata={"help": "Linear warm-up updates of every learning rate."})
    delta_lr: float = field(default=1e-4, metadata={"help": "SGD learning rate of the dense delta δ (5e-4 for ViT-B)."})
    delta_momentum: float = field(default=0.9, metadata={"help": "SGD momentum of δ."})
    delta_weight_decay: float = field(default=1e-4, metadata={"help": "Weight decay of δ."})
    mask_lr: float = field(
        default=1e6, metadata={"help": "SGD learning rate of the mask logits log α (large: masks become binary)."}
    )
    mask_grad_clip: float = field(default=5.0, metadata={"help": "Gradient-norm clip over all log α."})
    lagrangian_lr: float = field(default=2e-3, metadata={"help": "SGD learning rate of the multipliers λ."})
    router_lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the router (and LoRA factors)."})
    router_weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay of the router."})
    router_grad_clip: float = field(default=1.0, metadata={"help": "Gradient-norm clip over the router."})
    dense_lr: float = field(default=2e-5, metadata={"help": "AdamW learning rate of the whole backbone (PMF baseline)."})
    dense_weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay of the backbone (PMF baseline)."})
    lr_schedule: Literal["cosine", "constant"] = field(default="cosine", metadata={"help": "'cosine' (after warm-up) or 'constant'."})

    # ---- the SMAT objective
    protonet_scale: float = field(default=10.0, metadata={"help": "Scale of the cosine ProtoNet logits."})
    inner_steps: int = field(
        default=1, metadata={"help": "First-order support-set SGD steps before the query loss (P3; 0 disables)."}
    )
    inner_lr: float = field(default=1e-3, metadata={"help": "Learning rate of the inner support step."})
    teacher_steps: int = field(
        default=1, metadata={"help": "Query-loss steps from the student that make the dense teacher (0: no teacher)."}
    )
    teacher_lr: float = field(default=5e-3, metadata={"help": "Learning rate of the dense teacher's steps."})
    distillation_weight: float = field(default=0.25, metadata={"help": "Weight w of distillation vs (1-w) of query CE."})
    distillation_temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of distillation."})
    distillation_direction: Literal["forward", "reverse"] = field(
        default="forward",
        metadata={
            "help": "'forward': KL(teacher‖student), Hinton's KD (paper); 'reverse': KL(student‖teacher), the "
            "reference code (P4)."
        },
    )
    pretrained_distillation_share: float = field(
        default=0.0,
        metadata={
            "help": "Share of the distillation weight given to the frozen pre-trained ProtoNet as a second teacher "
            "(reference code: 0.5; not in the paper, P4)."
        },
    )
    sparsity_reset: bool = field(default=True, metadata={"help": "Reset λ to 0 for experts that meet τ (per task)."})
    router_temperature_decay: float = field(
        default=2.5e-4,
        metadata={"help": "Router temperature decrease per training task (reference: 1/4000), from the adapter's "
                  "`router_temperature` down to its `router_test_temperature` (both in the SmatConfig)."},
    )
    router_logit_penalty: float = field(default=1e-4, metadata={"help": "Weight of mean(ℓ²) of the router logits."})

    # ---- evaluation, checkpoints, logging
    eval_steps: int = field(default=500, metadata={"help": "Validate (and keep the best adapter) every N updates; 0: never."})
    eval_episodes: int = field(default=120, metadata={"help": "Fixed validation episodes per training domain."})
    test_episodes: int = field(default=600, metadata={"help": "Fixed test episodes per domain in `evaluate()`."})
    eval_modes: list[str] = field(
        default_factory=lambda: ["direct"],
        metadata={"help": "Meta-test modes: 'direct' (ProtoNet on θ_i), 'full' and/or 'lora' fine-tuning on the support set."},
    )
    finetune_steps: int = field(default=50, metadata={"help": "Fine-tuning steps on the support set (P2: not 0)."})
    finetune_lr_grid: list[float] = field(
        default_factory=lambda: [0.0, 1e-6, 1e-5, 1e-4, 1e-3], metadata={"help": "Learning rates searched per domain for fine-tuning."}
    )
    finetune_search_episodes: int = field(
        default=5, metadata={"help": "Validation episodes per domain scoring each learning rate (never test ones, P11)."}
    )
    finetune_augment: bool = field(default=True, metadata={"help": "Augment the support images while fine-tuning."})
    finetune_lora_r: int = field(default=8, metadata={"help": "Rank of the LoRA fine-tuning mode."})
    finetune_lora_alpha: int = field(default=32, metadata={"help": "Alpha of the LoRA fine-tuning mode."})
    finetune_lora_dropout: float = field(default=0.1, metadata={"help": "Dropout of the LoRA fine-tuning mode."})
    finetune_lora_lr_multiplier: float = field(
        default=10.0, metadata={"help": "The LoRA fine-tuning mode trains at this times the searched lr."}
    )
    load_best_model_at_end: bool = field(
        default=False,
        metadata={"help": "After training, load the weights with the best validation accuracy (needs `eval_steps`)."},
    )
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every N updates; 0: only at the end."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (oldest deleted first)."})
    logging_steps: int = field(default=10, metadata={"help": "Log metrics every N updates."})
    report_to: list[str] = field(
        default_factory=list,
        metadata={"help": "Accelerate trackers, e.g. tensorboard wandb, or 'all'; 'none' (the default) for none."}
    )
    use_cpu: bool = field(default=False, metadata={"help": "Train on CPU even if an accelerator is available."})
    mixed_precision: Optional[Literal["no", "bf16", "fp16"]] = field(
        default=None,
        metadata={"help": "'no', 'bf16' or 'fp16' (Accelerate autocast; fp16 with a loss scaler). Default: the launch "
                  "configuration (`accelerate config`, `ACCELERATE_MIXED_PRECISION`), else 'no'. bf16 is recommended "
                  "on GPUs that have it."},
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})

    # ---- deprecated spellings (see `RENAMED_ARGUMENTS`), hidden from --help; None: not given
    lora_r: Optional[int] = field(default=None, repr=False, metadata={"help": argparse.SUPPRESS})
    lora_alpha: Optional[int] = field(default=None, repr=False, metadata={"help": argparse.SUPPRESS})
    lora_dropout: Optional[float] = field(default=None, repr=False, metadata={"help": argparse.SUPPRESS})
    lora_lr_multiplier: Optional[float] = field(default=None, repr=False, metadata={"help": argparse.SUPPRESS})

    @property
    def episode_shape(self) -> EpisodeShape:
        """The episode shape of `ways`, `shots`, `queries`, `variable_ways_shots`, `max_ways` and `max_support` (the
        other caps at `EpisodeShape`'s defaults): what the trainer's samplers draw.

        Example:

        ```py
        >>> MetaTrainingArguments(ways=5, shots=1).episode_shape.to_dict()
        {'ways': 5, 'shots': 1, 'queries': 15}
        ```
        """
        return EpisodeShape(ways=self.ways, shots=self.shots, queries=self.queries, variable=self.variable_ways_shots,
                            max_ways=self.max_ways, max_support=self.max_support)

    def __post_init__(self) -> None:
        self._apply_renamed_arguments()
        for name in ("split_fractions", "eval_modes", "finetune_lr_grid", "report_to"):
            value = getattr(self, name)
            setattr(self, name, [value] if isinstance(value, (str, int, float)) else list(value))
        if self.report_to in (["none"], ["None"], []):  # transformers' spelling of "no trackers"
            self.report_to = []
        elif "none" in self.report_to:
            raise ValueError(f"`report_to` is 'none' or a list of trackers (or 'all'), got {self.report_to}.")
        self.episode_shape  # checks the episode shape (EpisodeShape's validation)
        positive = ("max_steps", "tasks_per_update", "image_size", "eval_episodes", "test_episodes")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        choices = {
            "distillation_direction": ("forward", "reverse"),
            "min_images_policy": ("skip", "error"),
            "lr_schedule": ("cosine", "constant"),
            "mixed_precision": (None, "no", "bf16", "fp16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {getattr(self, name)!r}.")
        for name in ("delta_lr", "mask_lr", "lagrangian_lr", "router_lr", "dense_lr"):
            value = getattr(self, name, None)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise ValueError(f"`{name}` must be a finite learning rate >= 0, got {value!r}.")
        unknown = set(self.eval_modes) - {"direct", "full", "lora"}
        if unknown:
            raise ValueError(f"Unknown `eval_modes` {sorted(unknown)}; choose from 'direct', 'full', 'lora'.")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(f"`split_fractions` must be three fractions summing to 1, got {self.split_fractions}.")
        if not 0.0 <= self.distillation_weight <= 1.0 or not 0.0 <= self.pretrained_distillation_share <= 1.0:
            raise ValueError("`distillation_weight` and `pretrained_distillation_share` must be in [0, 1].")

    def _apply_renamed_arguments(self) -> None:
        """A deprecated spelling given (not None) sets its new name, with a FutureWarning, and is reset to None."""
        defaults = {f.name: f.default for f in fields(self)}
        for old, new in RENAMED_ARGUMENTS.items():
            value = getattr(self, old)
            if value is None:
                continue
            if getattr(self, new) not in (defaults[new], value):
                raise ValueError(f"`{old}` is the deprecated name of `{new}`: give only `{new}`, got {old}={value!r} "
                                 f"and {new}={getattr(self, new)!r}.")
            warnings.warn(f"`{old}` is deprecated and will be removed in the next release; use `{new}` instead "
                          f"(`--{new}` on the command line).", FutureWarning, stacklevel=4)
            setattr(self, new, value)
            setattr(self, old, None)
