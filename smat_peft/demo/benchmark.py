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
"""`smat-peft demo`: a Meta-Dataset-style few-shot benchmark on a real pre-trained ViT and real images, offline.

Meta-train on the training classes of four domains (emoji-google, glyphs, cards, icons), test on their held-out
classes (in-domain, ID) and on four domains never trained on (out-of-domain, OOD: emoji-twitter's held-out classes,
MNIST, Animal-MNIST, clip art). Compared side by side, from the same DINOv2 ViT-S/14:

- `pretrained`: ProtoNet on the frozen backbone;
- `pmf`: dense meta-training with the ProtoNet loss (PMF);
- `dense_expert`: the control that separates SMAT's objective from its experts: SMAT's loss, optimisers and
  schedule with one expert whose mask is fixed at 1 (M = 1, no sparsity, no routing);
- `random_mask`: the control that separates sparsity from learned experts: the same, with one fixed random binary
  mask at the same τ;
- `smat`: sparse interpolated experts with the router (the method).

The ladder pre-trained → PMF → one dense expert → random sparse mask → learned sparse experts says where SMAT's
differences come from. Every method adapts the same parameters ([`adapted_parameter_names`]: all parameters after
the frozen prefix, norms and layer-scales included) for the same number of updates; each method's learning rate
comes from the same validation search over its own grid (δ's effective step scales with the merged mask squared, so
one learning rate does not fit all). Each is tested in `direct` mode (ProtoNet on the task's weights) and, for
pre-trained, PMF and SMAT on 5-way 5-shot, with `full` and `lora` fine-tuning on the support set. The frozen first
blocks run once per image (`prefix.py`). Checkpoints are chosen on validation classes (early stopping),
learning rates on validation episodes of the training domains, never on test episodes. SMAT's experts are
instrumented ([`smat_peft.diagnostics`]): mask saturation, the experts' overlap, and the specialisation score of the
router against an untrained one.

Example:

```py
>>> from smat_peft.demo.benchmark import DemoArguments, run_demo
>>> results = run_demo(DemoArguments(output_dir="smat-demo", quick=True))  # doctest: +SKIP
>>> results["summary"]["smat"]["direct"]["5w5s"]["ood"]  # doctest: +SKIP
```
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import SmatConfig, get_smat_model
from ..atomic_io import atomic_write_text, commit_directory, staging_directory
from ..config import load_smat_config, read_config_file
from ..diagnostics import eval_mask_overlap, fresh_router, mask_saturation, specialisation_score
from ..masks import HardConcrete
from ..model import SmatModel
from ..targets import DEFAULT_TARGET_MODULES
from ..training import EpisodeSampler, EpisodeShape, MetaTrainingArguments, SmatMetaTrainer
from ..training.evaluation import (evaluate_episodes, frozen_direct_scores, mean_ci95, search_learning_rate,
                                   task_independent_model)
from ..training.statistics import paired_difference
from . import assets
from .prefix import CachedActivations, cached_prefix_activations, skip_frozen_prefix


TRAIN_DOMAINS = ["emoji_google", "glyphs", "cards", "icons"]
OOD_DOMAINS = ["emoji_twitter", "mnist", "animal_mnist", "clipart"]
# an OOD domain with the same classes as a training domain is tested on that domain's held-out classes only
SAME_CLASSES_AS = {"emoji_twitter": "emoji_google"}
ID_SPLIT = (0.7, 0.15, 0.15)
MODELS = ("pretrained", "pmf", "dense_expert", "random_mask", "smat")
# the methods trained with SMAT's objective and optimisers (a SMAT adapter each)
SMAT_FAMILY = ("dense_expert", "random_mask", "smat")

# test settings: name → episode shape (results.json has their `to_dict()`)
SETTINGS: dict[str, EpisodeShape] = {
    "5w1s": EpisodeShape(ways=5, shots=1, queries=5),
    "5w5s": EpisodeShape(ways=5, shots=5, queries=5),
    "variable": EpisodeShape(variable=True, ways=3, max_ways=10, max_support=40, max_support_per_class=10,
                             max_queries=5),
}
FINETUNE_SETTING = "5w5s"

# what --quick changes (only where the flag was left at its default)
QUICK = {
    "train_domains": ["glyphs", "cards"],
    "ood_domains": ["mnist", "animal_mnist"],
    "max_images_per_class": 30,
    "steps": 6,
    "eval_steps": 3,
    "eval_episodes": 3,
    "test_episodes": 5,
    "finetune_episodes": 1,
    "finetune_steps": 2,
    "diagnostic_episodes": 4,
    "pmf_lr": [5e-5],
    "smat_delta_lr": [0.05],
    "dense_expert_delta_lr": [1e-3],
    "random_mask_delta_lr": [1e-2],
}


# `--profile full`: the evidence run (seeds, episode counts, fine-tuning grid); set where a flag was left at default
PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "full": {
        "training_seeds": [0, 1, 2],
        "test_episodes": 100,
        "variable_test_episodes": 50,
        # fine-tuning costs ~9 s per episode and model (50 steps, full + LoRA, 2 cores): the first seed's models,
        # 5 test episodes per domain, the lr chosen on 8 validation episodes (docs/demo.md, "Where the time goes")
        "finetune_seeds": 1,
        "finetune_episodes": 5,
        "finetune_steps": 50,
        "finetune_search_episodes": 2,
        "finetune_lr_grid": [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2],
        "diagnostic_episodes": 50,
    },
}


@dataclass
class DemoArguments:
    """Arguments of `smat-peft demo`; `--help` lists them. Defaults fit about 20 minutes on 2 CPU cores.

    `--quick` sets the fields listed in `QUICK` that were left at their defaults.

    Example:

    ```py
    >>> args = DemoArguments(quick=True)
    >>> args.train_domains, args.test_episodes
    (['glyphs', 'cards'], 10)
    ```
    """

    output_dir: str = field(default="smat-demo", metadata={"help": "Where results.json, the adapter and plots go."})
    quick: bool = field(default=False, metadata={"help": "A ~3-minute smoke run: 2+2 domains, few steps and episodes."})
    profile: Literal["default", "full"] = field(default="default", metadata={
        "help": "'default' (one seed, ~20 minutes) or 'full' (3 training seeds, 100 test episodes per domain and "
                "setting, fine-tuning with a 6-value lr grid and 50 steps; resumable). Flags beat the profile."})
    training_seeds: list[int] = field(default_factory=lambda: [0], metadata={
        "help": "Seeds of every trained method's initialisation and training episodes; test episodes are the same "
                "for all (from --seed)."})
    search_lr_every_seed: bool = field(default=False, metadata={
        "help": "Search each method's meta-training lr grid at every training seed; by default the later seeds train "
                "at the lr the first seed's search chose (hyper-parameters tuned once, then seeds)."})
    finetune_seeds: Optional[int] = field(default=None, metadata={
        "help": "Fine-tune (full and LoRA modes) the models of the first N training seeds only, the others are tested "
                "in direct mode (default: all seeds)."})
    cache_dir: Optional[str] = field(
        default=None, metadata={"help": "Asset cache (default $SMAT_PEFT_CACHE or ~/.cache/smat_peft)."}
    )
    train_domains: list[str] = field(default_factory=lambda: list(TRAIN_DOMAINS),
                                     metadata={"help": "Meta-training domains (their held-out classes are ID tests)."})
    ood_domains: list[str] = field(default_factory=lambda: list(OOD_DOMAINS),
                                   metadata={"help": "Out-of-domain test domains, never trained on."})
    image_size: int = field(default=56, metadata={"help": "Image side in pixels (a multiple of 14)."})
    frozen_layers: int = field(default=8, metadata={"help": "First ViT blocks kept frozen (run once per image)."})
    max_images_per_class: int = field(default=100, metadata={"help": "Cap on images per class (MNIST has 7000)."})
    coverage: Literal["all", "linears"] = field(default="all", metadata={
        "help": "What every method adapts after the frozen prefix: 'all' parameters (norms, layer-scales, biases; "
                "the method) or the attention and MLP 'linears' only (an ablation)."})
    smat_config: Optional[str] = field(default=None, metadata={
        "help": "A JSON or YAML file of SmatConfig fields for SMAT and its controls (mask_dtype, router_hidden_size, "
                "hard-concrete constants, ...), as `smat-peft meta-train --smat_config`; --num_experts, --sparsity, "
                "--mask_noise and --router_test_temperature override it where given away from their defaults. The "
                "adapted modules are the demo's (--frozen_layers, --coverage), so the file cannot set them."})
    num_experts: int = field(default=8, metadata={"help": "SMAT experts M."})
    router_test_temperature: float = field(default=0.5, metadata={
        "help": "SMAT's router temperature at test time (saved with the adapter; the training schedule ends there)."})
    sparsity: float = field(default=0.9, metadata={"help": "SMAT sparsity target τ (and the random-mask control's)."})
    steps: int = field(default=40, metadata={"help": "Meta-updates of every trained method (one budget for all)."})
    pmf_lr: list[float] = field(default_factory=lambda: [1e-5, 2e-5, 5e-5, 1e-4, 2e-4], metadata={
        "help": "AdamW learning rate(s) of PMF; several values (`1e-5,2e-5`) are searched on validation episodes."})
    smat_delta_lr: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1, 0.2], metadata={
        "help": "SGD learning rate(s) of SMAT's δ; several values are searched on validation episodes."})
    dense_expert_delta_lr: list[float] = field(default_factory=lambda: [3e-4, 1e-3, 3e-3], metadata={
        "help": "SGD learning rate(s) of the one-dense-expert control's δ (searched like SMAT's)."})
    random_mask_delta_lr: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2], metadata={
        "help": "SGD learning rate(s) of the random-mask control's δ (searched like SMAT's)."})
    mask_lr: float = field(default=1e6, metadata={"help": "SGD learning rate of SMAT's mask logits (the method: 1e6)."})
    mask_grad_clip: float = field(default=5.0, metadata={"help": "Gradient-norm clip of the mask logits (method: 5)."})
    mask_noise: bool = field(default=True, metadata={
        "help": "Noisy hard-concrete training masks (paper); false: the reference code's deterministic ones (P1)."})
    mask_init_at_target: bool = field(default=True, metadata={
        "help": "Start the mask logits at the training masks' target density 1 − τ (the demo's default: measured "
                "better in 40 updates, docs/demo.md); false: the method's N(0, 0.5²), dense at the start."})
    lagrangian_lr: float = field(default=50.0, metadata={"help": "SGD learning rate of the multipliers λ."})
    router_lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate of SMAT's router."})
    diagnostic_episodes: int = field(default=20, metadata={
        "help": "5-way 5-shot test episodes per domain scoring the router (α per domain, specialisation score)."})
    tasks_per_update: int = field(default=2, metadata={"help": "Training episodes per meta-update."})
    eval_steps: int = field(default=10, metadata={"help": "Validate (early stopping) every N updates."})
    eval_episodes: int = field(default=8, metadata={"help": "Validation episodes per training domain."})
    test_episodes: int = field(default=25, metadata={"help": "Test episodes per domain and setting (direct mode)."})
    variable_test_episodes: Optional[int] = field(default=None, metadata={
        "help": "Test episodes per domain of the variable-way setting (default: --test_episodes)."})
    finetune_episodes: int = field(default=3, metadata={"help": "Test episodes per domain of the fine-tuning modes."})
    finetune_steps: int = field(default=5, metadata={"help": "Fine-tuning steps on the support set."})
    finetune_search_episodes: int = field(
        default=1, metadata={"help": "Validation episodes per training domain scoring each fine-tuning lr."}
    )
    finetune_lr_grid: list[float] = field(default_factory=lambda: [0.0, 1e-5, 1e-4], metadata={
        "help": "Fine-tuning learning rates searched on validation episodes (must include 0)."})
    sweep_sparsity: list[str] = field(
        default_factory=list,
        metadata={"help": "Instead of the benchmark, train SMAT at each of these τ (`0.5,0.8,0.9,0.95` or "
                  "`0.5 0.8 0.9 0.95`) and plot the ID/OOD trade-off."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the class splits and of the validation and test episodes."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})

    def __post_init__(self) -> None:
        self.sweep_sparsity = _numbers("sweep_sparsity", self.sweep_sparsity)
        for name in LR_FIELDS.values():
            grid = _numbers(name, getattr(self, name))
            if not grid or any(not lr > 0 for lr in grid) or len(set(grid)) != len(grid):
                raise ValueError(f"`{name}` must be one or more distinct positive learning rates, got {grid}.")
            setattr(self, name, grid)
        if self.profile not in PROFILES:
            raise ValueError(f"Unknown `profile` {self.profile!r}; choose from {list(PROFILES)}.")
        defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                    for f in dataclasses.fields(self)}
        for preset in (PROFILES[self.profile], QUICK if self.quick else {}, self._smat_config_flags()):
            for name, value in preset.items():
                if getattr(self, name) == defaults[name]:
                    setattr(self, name, value)
        self.training_seeds = [int(v) for v in _numbers("training_seeds", self.training_seeds)]
        if not self.training_seeds or len(set(self.training_seeds)) != len(self.training_seeds):
            raise ValueError(f"`training_seeds` must be distinct seeds, got {self.training_seeds}.")
        self.finetune_lr_grid = _numbers("finetune_lr_grid", self.finetune_lr_grid)
        if 0.0 not in self.finetune_lr_grid or any(lr < 0 for lr in self.finetune_lr_grid):
            raise ValueError(f"`finetune_lr_grid` must hold non-negative learning rates including 0 (no fine-tuning), "
                             f"got {self.finetune_lr_grid}.")
        if self.coverage not in COVERAGES:
            raise ValueError(f"`coverage` must be one of {COVERAGES}, got {self.coverage!r}.")
        if not self.router_test_temperature > 0:
            raise ValueError(f"`router_test_temperature` must be > 0, got {self.router_test_temperature}.")
        if self.finetune_seeds is not None and self.finetune_seeds < 1:
            raise ValueError(f"`finetune_seeds` must be >= 1 (the fine-tuned seeds come first), got "
                             f"{self.finetune_seeds}.")
        if self.variable_test_episodes is not None and self.variable_test_episodes < 1:
            raise ValueError(f"`variable_test_episodes` must be >= 1, got {self.variable_test_episodes}.")
        unknown = [d for d in self.train_domains + self.ood_domains if d not in assets.DOMAINS]
        if unknown:
            raise ValueError(f"Unknown domain(s) {unknown}; choose from {list(assets.DOMAINS)}.")
        if set(self.train_domains) & set(self.ood_domains):
            raise ValueError("A domain cannot be both a training and an out-of-domain domain.")
        if not self.train_domains:
            raise ValueError("Give at least one training domain.")
        if self.image_size % 14:
            raise ValueError(f"`image_size` must be a multiple of the ViT's patch size 14, got {self.image_size}.")
        if not all(0.0 < s < 1.0 for s in [self.sparsity, *self.sweep_sparsity]):
            raise ValueError("Sparsity targets must be in (0, 1).")
        for name in ("steps", "diagnostic_episodes", "tasks_per_update", "eval_steps", "eval_episodes", "test_episodes",
                     "finetune_episodes", "finetune_steps", "finetune_search_episodes", "max_images_per_class"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")

    def _smat_config_flags(self) -> dict[str, Any]:
        """The values `--smat_config` gives the flags that mirror SmatConfig fields (after checking the file)."""
        if self.smat_config is None:
            return {}
        values = smat_config_fields(self)
        targeting = sorted(set(values) & set(_DEMO_TARGETING))
        if targeting:
            raise ValueError(f"--smat_config {self.smat_config}: the demo chooses the adapted modules itself (one "
                             f"parameter set for every method, from --frozen_layers and --coverage); remove "
                             f"{targeting} from the file.")
        try:
            load_smat_config(self.smat_config)
        except ValueError as error:
            raise ValueError(f"--smat_config {error}") from error
        return {name: values[name] for name in _SMAT_CONFIG_FLAGS if name in values}


COVERAGES = ("all", "linears")
# DemoArguments that set the SmatConfig field of the same name (over --smat_config's, where away from their default)
_SMAT_CONFIG_FLAGS = ("num_experts", "sparsity", "mask_noise", "router_test_temperature")
# SmatConfig fields that choose the adapted modules: the demo's own (`adapted_module_names`), not --smat_config's
_DEMO_TARGETING = ("target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
                   "target_all_parameters")
# each trained method's searched learning rate
LR_FIELDS = {"pmf": "pmf_lr", "dense_expert": "dense_expert_delta_lr", "random_mask": "random_mask_delta_lr",
             "smat": "smat_delta_lr"}


def _numbers(name: str, values: Any) -> list[float]:
    """`0.5,0.8` or `[0.5, 0.8]` or `["0.5,0.8"]` → `[0.5, 0.8]`."""
    values = [values] if isinstance(values, (str, float, int)) else values
    try:
        return [float(v) for value in values for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"`{name}` takes numbers such as 0.5,0.8,0.9; got {values}.") from None


# ----------------------------------------------------------------------------------------------------------------
# data


def cap_images_per_class(dataset: Any, max_images: int, seed: int = 0) -> Any:
    """At most `max_images` rows per label (a fixed random choice), in the original row order."""
    import numpy as np

    labels = np.asarray(dataset["label"])
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        keep.append(rows if len(rows) <= max_images else rng.choice(rows, max_images, replace=False))
    keep = np.sort(np.concatenate(keep))
    return dataset if len(keep) == len(dataset) else dataset.select(keep.tolist())


def load_demo_domains(args: DemoArguments) -> dict[str, Any]:
    """Build or load the demo's domains (skipping unavailable OOD ones with a message), capped per class."""
    names = args.train_domains + args.ood_domains
    domains = assets.build_all(names, cache=args.cache_dir, progress=not args.disable_tqdm)
    missing = [d for d in args.train_domains if d not in domains]
    if missing:
        raise RuntimeError(f"Training domain(s) {missing} could not be built (see the messages above for what to "
                           "install), or pass other --train_domains.")
    return {name: cap_images_per_class(domains[name], args.max_images_per_class, args.seed) for name in names
            if name in domains}


# ----------------------------------------------------------------------------------------------------------------
# models and training


def training_arguments(args: DemoArguments, output_dir: str, training_seed: Optional[int] = None,
                       **overrides: Any) -> MetaTrainingArguments:
    """The meta-training arguments shared by every trained method: 5-way 5-shot 5-query, early stopping."""
    tasks = args.steps * args.tasks_per_update
    values = dict(
        output_dir=output_dir, seed=args.training_seeds[0] if training_seed is None else training_seed,
        split_seed=args.seed, image_size=args.image_size, ways=5, shots=5,
        overwrite_output_dir=True,  # a demo run starts anew: its earlier run's checkpoints are replaced
        queries=5, augment=False, max_steps=args.steps, tasks_per_update=args.tasks_per_update,
        warmup_steps=max(1, args.steps // 10), lr_schedule="constant", eval_steps=args.eval_steps,
        eval_episodes=args.eval_episodes, load_best_model_at_end=True, save_steps=0, save_total_limit=1,
        logging_steps=max(1, args.steps // 20), disable_tqdm=args.disable_tqdm, use_cpu=not torch.cuda.is_available(),
        # anneal the router temperature from 5 to its test value over the run, as the paper does over 50k tasks
        router_temperature_decay=(smat_config_fields(args).get("router_temperature", SmatConfig.router_temperature)
                                  - args.router_test_temperature) / max(1, tasks),
        dense_weight_decay=0.0, finetune_augment=False,
        # a run of a hundred tasks, not 50k: λ needs a larger step to move the masks to τ within it, the router one
        # to specialise at all (docs/demo.md); δ's learning rate is searched per method
        mask_lr=args.mask_lr, mask_grad_clip=args.mask_grad_clip, lagrangian_lr=args.lagrangian_lr,
        router_lr=args.router_lr, finetune_steps=args.finetune_steps, finetune_lr_grid=args.finetune_lr_grid,
    )
    values.update(overrides)
    return MetaTrainingArguments(**values)


def adapted_parameter_names(backbone: nn.Module, frozen_layers: int, coverage: str = "all") -> list[str]:
    """What every method adapts: all parameters of the blocks after the frozen prefix and of the final norm.

    Norms, layer-scales and biases included (the method adapts every parameter); `coverage="linears"` keeps only
    the attention and MLP linears (the ablation). PMF trains exactly these, and the SMAT adapters of SMAT and both
    controls target exactly their modules.
    """
    if coverage not in COVERAGES:
        raise ValueError(f"`coverage` must be one of {COVERAGES}, got {coverage!r}.")
    blocks = dict(backbone.named_modules())["encoder.layer"]
    prefixes = tuple(f"encoder.layer.{i}." for i in range(frozen_layers, len(blocks)))
    names = [n for n, _ in backbone.named_parameters() if n.startswith(prefixes) or not n.startswith("encoder.")]
    names = [n for n in names if not n.startswith(("embeddings.", "pooler."))]
    if coverage == "linears":
        linears = set(DEFAULT_TARGET_MODULES[backbone.config.model_type])
        names = [n for n in names if n.rsplit(".", 2)[-2] in linears]
    return names


def adapted_module_names(backbone: nn.Module, frozen_layers: int, coverage: str = "all") -> list[str]:
    """The modules owning [`adapted_parameter_names`]."""
    owners = {name.rsplit(".", 1)[0] for name in adapted_parameter_names(backbone, frozen_layers, coverage)}
    return sorted(owners)


def smat_config_fields(args: DemoArguments) -> dict[str, Any]:
    """The SmatConfig fields the `--smat_config` file sets (none without it)."""
    return read_config_file(args.smat_config) if args.smat_config else {}


def smat_config(args: DemoArguments, backbone: nn.Module, sparsity: float, method: str = "smat") -> SmatConfig:
    """The SMAT adapter of `method` (SMAT or one of its controls) on [`adapted_module_names`].

    `smat`: `num_experts` learned masks, the method's initialisation `log α ~ N(0, 0.5²)` (or, with
    `--mask_init_at_target`, the training masks' expected density at `1 − τ` from the start, unless `--smat_config`
    sets `mask_init_mean`). `dense_expert`: one expert whose mask is fixed at 1. `random_mask`: one expert whose mask
    is a fixed random binary mask at τ. All three start from `--smat_config`'s fields, if given.
    """
    modules = adapted_module_names(backbone, args.frozen_layers, args.coverage)
    target = "|".join(re.escape(name) for name in modules)  # exact names: loads onto the full Dinov2Model too
    if method == "dense_expert":
        return load_smat_config(args.smat_config, num_experts=1, sparsity=0.0, target_modules=target,
                                mask_init="dense", train_masks=False, mask_noise=False)
    if method == "random_mask":
        return load_smat_config(args.smat_config, num_experts=1, sparsity=sparsity, target_modules=target,
                                mask_init="random_binary", train_masks=False, mask_noise=False)
    config = load_smat_config(args.smat_config, num_experts=args.num_experts, sparsity=sparsity,
                              target_modules=target, mask_noise=args.mask_noise,
                              router_test_temperature=args.router_test_temperature)
    if args.mask_init_at_target and "mask_init_mean" not in smat_config_fields(args):
        # the median element's P(z ≠ 0) at 1 − τ
        config.mask_init_mean = HardConcrete.from_config(config).log_alpha_at_sparsity(sparsity)
    return config


def build_model(method: str, backbone: nn.Module, args: DemoArguments, sparsity: float,
                training_seed: Optional[int] = None) -> nn.Module:
    """A fresh trainable copy of the backbone for `method` (seeded: the same initialisation for every lr)."""
    torch.manual_seed(args.training_seeds[0] if training_seed is None else training_seed)
    model = copy.deepcopy(backbone)
    if method == "pmf":
        adapted = set(adapted_parameter_names(model, args.frozen_layers, args.coverage))
        for name, param in model.named_parameters():
            param.requires_grad_(name in adapted)
        return model
    return get_smat_model(model, smat_config(args, backbone, sparsity, method))


def train_method(method: str, backbone: nn.Module, args: DemoArguments, out: Path, train: dict,
                 activations: CachedActivations, sparsity: Optional[float] = None, training_seed: Optional[int] = None,
                 grid: Optional[list[float]] = None) -> tuple[nn.Module, MetaTrainingArguments, dict[str, Any]]:
    """Train `method` at every learning rate of its grid (default: its `LR_FIELDS` argument); keep the one with the
    best validation accuracy.

    Returns the model, its training arguments and a record: chosen lr, the search, the kept (early-stopped) update,
    the validation history, wall time and, for SMAT adapters, the trainer's expert diagnostics over time.
    """
    sparsity = args.sparsity if sparsity is None else sparsity
    seed = args.training_seeds[0] if training_seed is None else training_seed
    grid = getattr(args, LR_FIELDS[method]) if grid is None else grid
    best = None
    search: dict[str, Any] = {}
    for lr in grid:
        model = build_model(method, backbone, args, sparsity, seed)
        run_dir = out / "runs" / method / f"seed-{seed}" / ("train" if len(grid) == 1 else f"lr-{lr:g}")
        lr_field = "dense_lr" if method == "pmf" else "delta_lr"
        training_args = training_arguments(args, str(run_dir), seed, **{lr_field: lr})
        trainer = SmatMetaTrainer(model, training_args, train_datasets=train, load_inputs=activations)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        validation = [(h["step"], h["validation_accuracy"]) for h in trainer.history if "validation_accuracy" in h]
        record = {
            "lr": lr, "best_validation_accuracy": trainer.best_metric, "training_s": seconds,
            "kept_update": max(validation, key=lambda v: v[1])[0] if validation else args.steps,
            "validation": validation,
        }
        if method in SMAT_FAMILY:
            keys = ("step", "query_loss", "mask_grad_norm", "mask_saturated", "expert_mask_at_upper_clip",
                    "expert_mask_at_lower_clip", "expert_train_mask_expected_density", "multipliers",
                    "router_temperature")
            record["history"] = [{k: h[k] for k in keys if k in h} for h in trainer.history if "query_loss" in h]
        search[f"{lr:g}"] = trainer.best_metric
        if best is None or trainer.best_metric > best[2]["best_validation_accuracy"]:
            best = (model, training_args, record)
        del trainer
    model, training_args, record = best
    record["lr_search"] = search
    return model, training_args, record


# ----------------------------------------------------------------------------------------------------------------
# evaluation


def _split_fractions(domain: str, args: DemoArguments) -> tuple[float, float, float]:
    return ID_SPLIT if domain in args.train_domains or domain in SAME_CLASSES_AS else (0.0, 0.0, 1.0)


def test_sampler(activations: CachedActivations, domains: dict, domain: str, setting: str, args: DemoArguments,
                 num_episodes: int, split: str = "test", seed_offset: int = 2):
    """Fixed episodes of one domain and setting; the same for every model."""
    return EpisodeSampler(
        {domain: domains[domain]}, SETTINGS[setting], split=split, num_episodes=num_episodes,
        seed=args.seed + seed_offset, split_seed=args.seed, split_fractions=_split_fractions(domain, args),
        image_size=args.image_size, load_inputs=activations,
    )


def evaluate_model(model: nn.Module, name: str, training_args: MetaTrainingArguments, domains: dict,
                   activations: CachedActivations, args: DemoArguments, modes: tuple[str, ...],
                   settings: Optional[list[str]] = None) -> dict[str, Any]:
    """`{mode: {setting: {domain: {mean, ci95, episodes[, lr]}}}}` for one model (direct mode in `settings`,
    default all of `SETTINGS`)."""
    results: dict[str, Any] = {}
    is_smat = isinstance(getattr(model, "base_model", None), SmatModel)
    # the model's one set of weights if they do not depend on the task (pre-trained, PMF, the one-expert controls)
    frozen = task_independent_model(model, test_sampler(activations, domains, next(iter(domains)), FINETUNE_SETTING,
                                                        args, 1)[0])
    features: dict = {}  # a frozen model embeds each test image once, across settings
    for setting in settings or list(SETTINGS):
        episodes = args.variable_test_episodes if setting == "variable" and args.variable_test_episodes else \
            args.test_episodes
        for domain in domains:
            sampler = test_sampler(activations, domains, domain, setting, args, episodes)
            if frozen is None:
                out = evaluate_episodes(model, sampler, training_args, modes=("direct",), is_smat=True,
                                        disable_tqdm=args.disable_tqdm, description=f"{name} {setting} {domain}")
                entry = out[domain]["direct"]
            else:
                scores = frozen_direct_scores(frozen, sampler, training_args, cache=features,
                                              disable_tqdm=args.disable_tqdm)
                entry = mean_ci95(scores[domain])
            results.setdefault("direct", {}).setdefault(setting, {})[domain] = entry
    finetune = [m for m in modes if m != "direct"]
    if finetune:
        search = EpisodeSampler(
            {d: domains[d] for d in args.train_domains}, SETTINGS[FINETUNE_SETTING], split="validation",
            num_episodes=args.finetune_search_episodes * len(args.train_domains), seed=args.seed + 3,
            split_seed=args.seed, split_fractions=ID_SPLIT, image_size=args.image_size, load_inputs=activations,
        )
        for mode in finetune:
            lr, scores = search_learning_rate(model, search, training_args, is_smat, mode)
            for domain in domains:
                sampler = test_sampler(activations, domains, domain, FINETUNE_SETTING, args, args.finetune_episodes)
                out = evaluate_episodes(model, sampler, training_args, modes=(mode,), is_smat=is_smat,
                                        learning_rates={mode: lr}, disable_tqdm=args.disable_tqdm,
                                        description=f"{name} {mode} {domain}")
                entry = out[domain][mode]
                entry["lr_search"] = {str(k): v for k, v in scores.items()}
                results.setdefault(mode, {}).setdefault(FINETUNE_SETTING, {})[domain] = entry
    return results


def summarize_model(results: dict[str, Any], args: DemoArguments, domains: dict) -> dict[str, Any]:
    """ID and OOD averages per mode and setting."""
    summary: dict[str, Any] = {}
    for mode, per_setting in results.items():
        for setting, per_domain in per_setting.items():
            entry = {}
            for key, names in (("id", args.train_domains), ("ood", [d for d in domains if d not in args.train_domains])):
                values = [per_domain[d]["mean"] for d in names if d in per_domain]
                if values:
                    entry[key] = sum(values) / len(values)
            summary.setdefault(mode, {})[setting] = entry
    return summary


@torch.no_grad()
def routing_by_domain(model: nn.Module, domains: dict, activations: CachedActivations, args: DemoArguments
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Expert weights α `[episodes, M]` per domain on 5-way 5-shot test episodes, of the trained router and of an
    untrained router of the same configuration and test temperature (the same episodes for both)."""
    smat = model.base_model
    model.eval()
    fresh = fresh_router(smat, seed=args.seed + 1)
    trained, untrained = {}, {}
    for domain in domains:
        sampler = test_sampler(activations, domains, domain, FINETUNE_SETTING, args, args.diagnostic_episodes)
        prototypes = [smat.prototypes(e.support_pixel_values, e.support_labels) for e in sampler]
        trained[domain] = torch.stack([smat.route(p).weights for p in prototypes]).cpu()
        untrained[domain] = torch.stack([fresh(p.to(fresh.keys.device)).weights for p in prototypes]).cpu()
    return trained, untrained


def expert_diagnostics(model: nn.Module, domains: dict, activations: CachedActivations, args: DemoArguments
                       ) -> dict[str, Any]:
    """Do SMAT's experts learn? Saturation, overlap, α per domain and the specialisation score (with its CI)."""
    trained, untrained = routing_by_domain(model, domains, activations, args)
    return {
        "mask_saturation": mask_saturation(model),
        "eval_mask_overlap": eval_mask_overlap(model),
        "expert_weights": {d: w.mean(0).tolist() for d, w in trained.items()},
        "untrained_expert_weights": {d: w.mean(0).tolist() for d, w in untrained.items()},
        "specialisation": specialisation_score(trained, untrained, seed=args.seed),
        "router_test_temperature": model.base_model.peft_config[model.base_model.active_adapters[0]]
        .router_test_temperature,
    }


def comparisons(results: dict[str, Any], method: str = "smat", mode: str = "direct") -> list[dict[str, Any]]:
    """`method` against every other model, per setting, ID and OOD: the paired per-episode difference of accuracy
    (points) with its bootstrap 95% CI and the claim (win / tie / loss), see `training.statistics`."""
    out = []
    per_seed = results["per_seed"]
    groups = {"id": results["train_domains"], "ood": results["ood_domains"]}

    def table(model: str, setting: str, domain: str) -> list[list[float]]:  # [seeds][episodes]
        return [r[mode][setting][domain]["scores"] for r in per_seed[model].values() if mode in r]

    reference = next(iter(per_seed[method].values()))
    for other in [m for m in MODELS if m in per_seed and m != method]:
        for setting in results["settings"]:
            for group, names in groups.items():
                names = [d for d in names if d in reference.get(mode, {}).get(setting, {})]
                if not names or setting not in next(iter(per_seed[other].values())).get(mode, {}) or \
                        setting not in reference.get(mode, {}):
                    continue
                a = [table(method, setting, d) for d in names]
                b = [table(other, setting, d) for d in names]
                entry = paired_difference(a, b, seed=results["arguments"]["seed"])
                out.append({"method": method, "baseline": other, "setting": setting, "group": group, "mode": mode,
                            **entry})
    return out


def claims(results: dict[str, Any]) -> dict[str, Any]:
    """What the run shows: each paired comparison of SMAT as win / tie / loss with the difference and its CI, and
    the expert diagnostics."""
    out: dict[str, Any] = {}
    for entry in results["comparisons"]:
        low, high = entry["ci95"]
        mode = "" if entry["mode"] == "direct" else f"_{entry['mode']}"
        out[f"smat_vs_{entry['baseline']}_{entry['group']}_{entry['setting']}{mode}"] = (
            f"{entry['claim']} ({entry['difference']:+.1f} points, 95% CI [{low:+.1f}, {high:+.1f}])")
    per_seed = results["diagnostics_per_seed"]
    out["specialisation_score_per_seed"] = {
        seed: f"{d['specialisation']['score']:+.3f} [{d['specialisation']['ci95'][0]:+.3f}, "
              f"{d['specialisation']['ci95'][1]:+.3f}]" for seed, d in per_seed.items()}
    out["seeds_whose_experts_specialise"] = sum(d["specialisation"]["ci95"][0] > 0 for d in per_seed.values())
    diagnostics = results["diagnostics"]
    score = diagnostics["specialisation"]
    out["specialisation_score"] = round(score["score"], 4)
    out["specialisation_score_ci95"] = [round(v, 4) for v in score["ci95"]]
    out["experts_specialise"] = score["ci95"][0] > 0
    saturation = diagnostics["mask_saturation"]
    out["mask_logits_saturated"] = round(sum(saturation["at_upper"] + saturation["at_lower"]) / len(saturation["at_upper"]), 4)
    overlap = diagnostics["eval_mask_overlap"]
    out["eval_mask_jaccard"] = round(overlap["mean_jaccard"], 4)
    out["eval_mask_jaccard_independent"] = round(overlap["mean_independent_baseline"], 4)
    sparsity = results["sparsity"]
    densities = [e["train_mask_expected_density"] for e in sparsity["per_expert"]]
    out["max_train_mask_density_gap"] = round(max(abs(d - (1 - sparsity["target"])) for d in densities), 4)
    out["eval_mask_sparsity_range"] = [round(min(e["eval_mask_sparsity"] for e in sparsity["per_expert"]), 4),
                                       round(max(e["eval_mask_sparsity"] for e in sparsity["per_expert"]), 4)]
    return out


# ----------------------------------------------------------------------------------------------------------------
# the run


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(str(path), json.dumps(data, indent=2, default=_json_default))


def prepare(args: DemoArguments) -> tuple[dict, nn.Module, CachedActivations, str]:
    """Domains, the backbone with its frozen prefix skipped, the cached activations of its frozen prefix (the
    samplers' `load_inputs`) and the backbone's directory."""
    from transformers import Dinov2Model

    torch.manual_seed(args.seed)
    domains = load_demo_domains(args)
    backbone_dir = str(assets.build_backbone(args.cache_dir))
    backbone = Dinov2Model.from_pretrained(backbone_dir).eval()
    activations = cached_prefix_activations(
        backbone, domains, backbone_dir=backbone_dir, cache=assets.cache_dir(args.cache_dir) / "activations",
        image_size=args.image_size, frozen_layers=args.frozen_layers, progress=not args.disable_tqdm,
    )
    skip_frozen_prefix(backbone, args.frozen_layers)
    return domains, backbone, CachedActivations(activations), backbone_dir


TRAINED = ("pmf", "dense_expert", "random_mask", "smat")
# arguments that do not change what a (method, seed) run computes
_NOT_IN_FINGERPRINT = {"output_dir", "disable_tqdm", "training_seeds", "profile", "quick", "cache_dir", "sweep_sparsity",
                       "search_lr_every_seed", "finetune_seeds"}  # the last two: through the run's grid and modes


def run_fingerprint(args: DemoArguments, method: str, seed: Optional[int], modes: tuple[str, ...] = ("direct",),
                    grid: Optional[list[float]] = None) -> str:
    """What a finished (method, seed) run was computed from (arguments, its meta-test modes and lr grid); a saved
    run with another fingerprint is redone. `grid` defaults to the method's searched lr grid."""
    values = {k: v for k, v in dataclasses.asdict(args).items() if k not in _NOT_IN_FINGERPRINT}
    # the file's fields, not its path (and no key without it: fingerprints of runs from before the flag still hold)
    values["smat_config"] = smat_config_fields(args)
    if not values["smat_config"]:
        values.pop("smat_config")
    for name in LR_FIELDS.values():
        values.pop(name)
    if grid is None and method in LR_FIELDS:
        grid = getattr(args, LR_FIELDS[method])
    text = json.dumps([method, seed, values, list(modes), grid], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_run(path: Path, fingerprint: str) -> Optional[dict[str, Any]]:
    """A finished run's saved result, or `None` (with a message) if it is missing, corrupt or made otherwise."""
    if not path.exists():
        return None
    try:
        run = json.loads(path.read_text())
        if not isinstance(run, dict) or not {"fingerprint", "models"} <= run.keys():
            raise ValueError("not a run result")
    except (OSError, ValueError) as error:
        print(f"{path} is corrupt ({error}); running it again.")
        return None
    if run["fingerprint"] != fingerprint:
        print(f"{path} was made with other arguments; running it again.")
        return None
    return run


def _save_trained_model(method: str, model: nn.Module, directory: Path, args: DemoArguments) -> str:
    """SMAT and its controls as peft adapters; PMF as safetensors of its adapted parameters (load onto the
    backbone with `load_state_dict(..., strict=False)`)."""
    if method == "pmf":
        from safetensors.torch import save_file

        adapted = set(adapted_parameter_names(model, args.frozen_layers, args.coverage))
        weights = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if n in adapted}
        directory.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(directory / "pmf_weights.safetensors"), metadata={"format": "pt"})
        return str(directory / "pmf_weights.safetensors")
    model.save_pretrained(str(directory / "adapter"))
    return str(directory / "adapter")


def average_over_seeds(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One model's results averaged over training seeds: per episode, the mean over seeds; then mean ± 95% CI."""
    out: dict[str, Any] = {}
    for mode, per_setting in next(iter(per_seed.values())).items():
        seeds = [s for s in per_seed if mode in per_seed[s]]  # fine-tuning modes may be run on the first seeds only
        for setting, per_domain in per_setting.items():
            for domain in per_domain:
                entries = [per_seed[s][mode][setting][domain] for s in seeds]
                scores = [sum(column) / len(column) for column in zip(*(e["scores"] for e in entries))]
                entry = {**mean_ci95([v / 100.0 for v in scores]), "seeds": len(seeds),
                         "seed_means": [e["mean"] for e in entries]}
                for key in ("lr", "lr_search"):
                    if key in entries[0]:
                        entry[f"{key}_per_seed"] = {s: e.get(key) for s, e in zip(seeds, entries)}
                out.setdefault(mode, {}).setdefault(setting, {})[domain] = entry
    return out


def run_demo(args: DemoArguments) -> dict[str, Any]:
    """Run the benchmark (or the sparsity sweep) and write `results.json`, the models and the plots.

    Every (method, training seed) run is saved under `runs/<method>/seed-<s>/` (its `result.json` and model) as
    soon as it ends; running the same command again reuses finished runs and redoes missing, corrupt or
    differently-configured ones.
    """
    from . import plots

    if args.sweep_sparsity:
        return run_sweep(args)
    start = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    domains, backbone, activations, backbone_dir = prepare(args)
    timings["assets_and_cache_s"] = time.perf_counter() - start
    train = {d: domains[d] for d in args.train_domains}
    results: dict[str, Any] = {
        "arguments": dataclasses.asdict(args), "backbone": backbone_dir,
        "settings": {name: shape.to_dict() for name, shape in SETTINGS.items()},
        "finetune_setting": FINETUNE_SETTING, "train_domains": args.train_domains,
        "ood_domains": [d for d in domains if d not in args.train_domains], "models": {}, "per_seed": {},
        "training": {}, "adapted_parameters": len(adapted_parameter_names(backbone, args.frozen_layers, args.coverage)),
    }
    runs = [("pretrained", None)] + [(m, s) for m in TRAINED for s in args.training_seeds]
    finetuned_seeds = args.training_seeds[:args.finetune_seeds]
    chosen_lr: dict[str, float] = {}  # each method's lr chosen at the first seed
    overall = tqdm(runs, desc="demo runs", disable=args.disable_tqdm)
    for method, seed in overall:
        overall.set_postfix_str(method if seed is None else f"{method} seed {seed}")
        run_dir = out / "runs" / method / ("frozen" if seed is None else f"seed-{seed}")
        # the controls answer one question (direct ProtoNet); fine-tuning them would only cost time
        modes = ("direct",) if method in ("dense_expert", "random_mask") or seed not in (None, *finetuned_seeds) \
            else ("direct", "full", "lora")
        grid = [chosen_lr[method]] if method in chosen_lr and not args.search_lr_every_seed else None
        fingerprint = run_fingerprint(args, method, seed, modes, grid)
        run = load_run(run_dir / "result.json", fingerprint)
        if run is None:
            run = {"fingerprint": fingerprint, "method": method, "seed": seed}
            t = time.perf_counter()
            if method == "pretrained":
                model, training_args = backbone, training_arguments(args, str(run_dir))
            else:
                model, training_args, run["training"] = train_method(method, backbone, args, out, train,
                                                                     activations, training_seed=seed, grid=grid)
            run["training_s"] = time.perf_counter() - t
            t = time.perf_counter()
            run["models"] = evaluate_model(model, method, training_args, domains, activations, args, modes)
            if method == "smat":
                run["sparsity"] = model.base_model.sparsity_report()
                run["diagnostics"] = expert_diagnostics(model, domains, activations, args)
            run["evaluation_s"] = time.perf_counter() - t
            if method in SMAT_FAMILY:  # the adapter's model card carries its test accuracy (model-index)
                direct = run["models"]["direct"][FINETUNE_SETTING]
                model.base_model.record_eval_results(
                    {f"{d} 5-way 5-shot": f"{e['mean']:.1f} ± {e['ci95']:.1f}" for d, e in direct.items()},
                    meta_training={"method": method, "steps": args.steps, "tasks_per_update": args.tasks_per_update,
                                   "train_domains": args.train_domains, "training_seed": seed})
            if method != "pretrained":
                run["model_path"] = _save_trained_model(method, model, run_dir, args)
            _write_json(run_dir / "result.json", run)
            del model
        key = "frozen" if seed is None else str(seed)
        results["per_seed"].setdefault(method, {})[key] = run["models"]
        for phase in ("training", "evaluation"):
            timings[f"{method}_{phase}_s"] = timings.get(f"{method}_{phase}_s", 0.0) + run.get(f"{phase}_s", 0.0)
        if "training" in run:
            results["training"].setdefault(method, {})[key] = run["training"]
            chosen_lr.setdefault(method, run["training"]["lr"])
        if method == "smat":
            results.setdefault("sparsity_per_seed", {})[key] = run["sparsity"]
            results.setdefault("diagnostics_per_seed", {})[key] = run["diagnostics"]
    overall.close()

    first = str(args.training_seeds[0])
    results["models"] = {m: average_over_seeds(per_seed) for m, per_seed in results["per_seed"].items()}
    results["sparsity"] = results["sparsity_per_seed"][first]
    results["diagnostics"] = results["diagnostics_per_seed"][first]
    # the first seed's SMAT adapter at the top of the output, switched in crash-safely as every save is
    staging = staging_directory(str(out / "adapter"))
    shutil.copytree(out / "runs" / "smat" / f"seed-{first}" / "adapter", staging, dirs_exist_ok=True)
    commit_directory(staging, str(out / "adapter"))
    results["summary"] = {name: summarize_model(r, args, domains) for name, r in results["models"].items()}
    results["comparisons"] = [c for mode in ("direct", "full", "lora") for c in comparisons(results, mode=mode)]
    results["claims"] = claims(results)
    timings["total_s"] = time.perf_counter() - start
    results["timings"] = timings
    _write_json(out / "results.json", results)
    results["plots"] = plots.plot_all(results, out)
    _write_json(out / "results.json", results)
    return results


def run_sweep(args: DemoArguments) -> dict[str, Any]:
    """Train SMAT at each sparsity target; ID/OOD accuracy (direct, every setting) per τ, plus the pre-trained line."""
    from . import plots

    start = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    domains, backbone, activations, backbone_dir = prepare(args)
    train = {d: domains[d] for d in args.train_domains}
    eval_args = training_arguments(args, str(out / "runs"))
    pretrained = evaluate_model(backbone, "pretrained", eval_args, domains, activations, args, ("direct",))
    results: dict[str, Any] = {
        "arguments": dataclasses.asdict(args), "backbone": backbone_dir,
        "pretrained": summarize_model(pretrained, args, domains)["direct"], "sweep": {},
    }
    for sparsity in args.sweep_sparsity:
        model, training_args, record = train_method("smat", backbone, args, out / f"smat-{sparsity}", train,
                                                    activations, sparsity=sparsity)
        evaluated = evaluate_model(model, f"smat τ={sparsity}", training_args, domains, activations, args,
                                   ("direct",))
        report = model.base_model.sparsity_report()
        paired = comparisons({"per_seed": {"smat": {"0": evaluated}, "pretrained": {"frozen": pretrained}},
                              "train_domains": args.train_domains, "settings": SETTINGS,
                              "ood_domains": [d for d in domains if d not in args.train_domains],
                              "arguments": {"seed": args.seed}})
        results["sweep"][str(sparsity)] = {
            "summary": summarize_model(evaluated, args, domains)["direct"], "domains": evaluated["direct"],
            "vs_pretrained": paired,
            "eval_mask_sparsity": [e["eval_mask_sparsity"] for e in report["per_expert"]],
            "train_mask_expected_density": [e["train_mask_expected_density"] for e in report["per_expert"]],
            "training_s": record["training_s"],
        }
    results["timings"] = {"total_s": time.perf_counter() - start}
    results["plots"] = [plots.plot_sweep(results, out / "sparsity_sweep.png")]
    _write_json(out / "sweep.json", results)
    return results


def format_table(results: dict[str, Any]) -> str:
    """Markdown: ID / OOD average accuracy per model and mode (rows) and setting (columns), then the claims."""
    settings = list(results["settings"])
    header = "| model | mode | " + " | ".join(f"{s} ID | {s} OOD" for s in settings) + " |"
    lines = [header, "|---" * (2 + 2 * len(settings)) + "|"]
    for name, per_mode in results["summary"].items():
        for mode, per_setting in per_mode.items():
            cells = []
            for s in settings:
                entry = per_setting.get(s, {})
                cells += [f"{entry[k]:.1f}" if k in entry else "–" for k in ("id", "ood")]
            lines.append(f"| {name} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_domain_table(results: dict[str, Any], setting: str = "5w5s", mode: str = "direct") -> str:
    """Markdown: accuracy ± 95% CI per domain (rows) and model (columns) for one setting and mode."""
    models = [m for m in results["models"] if setting in results["models"][m].get(mode, {})]
    domains = list(results["models"][models[0]][mode][setting])
    lines = ["| domain | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for domain in domains:
        tag = "ID" if domain in results["train_domains"] else "OOD"
        cells = [f"{results['models'][m][mode][setting][domain]['mean']:.1f} ± "
                 f"{results['models'][m][mode][setting][domain]['ci95']:.1f}" for m in models]
        lines.append(f"| {domain} ({tag}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_comparisons(results: dict[str, Any]) -> str:
    """Markdown: SMAT minus each model, paired per episode (points, 95% bootstrap CI, claim), ID and OOD."""
    lines = ["| SMAT vs | mode | setting | ID | OOD |", "|---|---|---|---|---|"]
    cells: dict[tuple[str, str, str], dict[str, str]] = {}
    for entry in results["comparisons"]:
        low, high = entry["ci95"]
        cells.setdefault((entry["baseline"], entry["mode"], entry["setting"]), {})[entry["group"]] = (
            f"{entry['difference']:+.1f} [{low:+.1f}, {high:+.1f}] {entry['claim']}")
    for (baseline, mode, setting), groups in cells.items():
        lines.append(f"| {baseline} | {mode} | {setting} | {groups.get('id', '–')} | {groups.get('ood', '–')} |")
    return "\n".join(lines)
