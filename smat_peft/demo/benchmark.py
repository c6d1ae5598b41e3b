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
- `random_mask`: the control, one fixed random sparse delta at the same τ (no router, no learned masks);
- `smat`: sparse interpolated experts with the router (the method).

Each in `direct` mode (ProtoNet on the task's weights) and, on 5-way 5-shot, with `full` and `lora` fine-tuning
on the support set. All adapt only the last blocks of the ViT; the frozen first blocks run once per image
(`prefix.py`). Checkpoints are chosen on validation classes (early stopping), fine-tuning learning rates on
validation episodes of the training domains, never on test episodes.

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
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .. import SmatConfig, get_smat_model
from ..layer import hard_concrete
from ..targets import DEFAULT_TARGET_MODULES
from ..training import MetaTrainingArguments, SmatMetaTrainer
from ..training.trainer import _atomic_write_text
from ..training.evaluation import evaluate_episodes, frozen_direct_scores, mean_ci95, search_learning_rate
from . import assets
from .control import fix_random_sparse_delta_
from .prefix import CachedEpisodeSampler, cached_prefix_activations, skip_frozen_prefix


TRAIN_DOMAINS = ["emoji_google", "glyphs", "cards", "icons"]
OOD_DOMAINS = ["emoji_twitter", "mnist", "animal_mnist", "clipart"]
# an OOD domain with the same classes as a training domain is tested on that domain's held-out classes only
SAME_CLASSES_AS = {"emoji_twitter": "emoji_google"}
ID_SPLIT = (0.7, 0.15, 0.15)
MODELS = ("pretrained", "pmf", "random_mask", "smat")

# test settings: name → EpisodeSampler arguments
SETTINGS: dict[str, dict[str, Any]] = {
    "5w1s": {"ways": 5, "shots": 1, "queries": 5},
    "5w5s": {"ways": 5, "shots": 5, "queries": 5},
    "variable": {"variable": True, "ways": 3, "max_ways": 10, "max_support": 40, "max_support_per_class": 10,
                 "max_queries": 5},
}
FINETUNE_SETTING = "5w5s"

# what --quick changes (only where the flag was left at its default)
QUICK = {
    "train_domains": ["glyphs", "cards"],
    "ood_domains": ["mnist", "animal_mnist"],
    "max_images_per_class": 30,
    "smat_steps": 6,
    "dense_steps": 6,
    "eval_steps": 3,
    "eval_episodes": 3,
    "test_episodes": 5,
    "finetune_episodes": 1,
    "finetune_steps": 2,
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
    num_experts: int = field(default=8, metadata={"help": "SMAT experts M."})
    sparsity: float = field(default=0.9, metadata={"help": "SMAT sparsity target τ (and the random-mask control's)."})
    smat_steps: int = field(default=40, metadata={"help": "SMAT meta-updates."})
    dense_steps: int = field(default=40, metadata={"help": "Meta-updates of PMF and of the random-mask control."})
    tasks_per_update: int = field(default=2, metadata={"help": "Training episodes per meta-update."})
    eval_steps: int = field(default=10, metadata={"help": "Validate (early stopping) every N updates."})
    eval_episodes: int = field(default=8, metadata={"help": "Validation episodes per training domain."})
    test_episodes: int = field(default=25, metadata={"help": "Test episodes per domain and setting (direct mode)."})
    finetune_episodes: int = field(default=3, metadata={"help": "Test episodes per domain of the fine-tuning modes."})
    finetune_steps: int = field(default=5, metadata={"help": "Fine-tuning steps on the support set."})
    finetune_search_episodes: int = field(
        default=1, metadata={"help": "Validation episodes per training domain scoring each fine-tuning lr."}
    )
    sweep_sparsity: list[str] = field(
        default_factory=list,
        metadata={"help": "Instead of the benchmark, train SMAT at each of these τ (`0.5,0.8,0.9,0.95` or "
                  "`0.5 0.8 0.9 0.95`) and plot the ID/OOD trade-off."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of class splits, episodes and initialisation."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})

    def __post_init__(self) -> None:
        values = [self.sweep_sparsity] if isinstance(self.sweep_sparsity, (str, float)) else self.sweep_sparsity
        try:
            self.sweep_sparsity = [float(v) for value in values for v in str(value).split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"`sweep_sparsity` takes numbers such as 0.5,0.8,0.9,0.95; got {values}.") from None
        if self.quick:
            defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                        for f in dataclasses.fields(self)}
            for name, value in QUICK.items():
                if getattr(self, name) == defaults[name]:
                    setattr(self, name, value)
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
        for name in ("smat_steps", "dense_steps", "tasks_per_update", "eval_steps", "eval_episodes", "test_episodes",
                     "finetune_episodes", "finetune_steps", "finetune_search_episodes", "max_images_per_class"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")


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


def training_arguments(args: DemoArguments, output_dir: str, steps: int, **overrides: Any) -> MetaTrainingArguments:
    """The meta-training arguments shared by SMAT, PMF and the control: 5-way 5-shot 5-query, early stopping."""
    tasks = steps * args.tasks_per_update
    values = dict(
        output_dir=output_dir, seed=args.seed, split_seed=args.seed, image_size=args.image_size, ways=5, shots=5,
        overwrite_output_dir=True,  # a demo run starts anew: its earlier run's checkpoints are replaced
        queries=5, augment=False, max_steps=steps, tasks_per_update=args.tasks_per_update,
        warmup_steps=max(1, steps // 10), lr_schedule="constant", eval_steps=args.eval_steps,
        eval_episodes=args.eval_episodes, load_best_model_at_end=True, save_steps=0, save_total_limit=1,
        logging_steps=max(1, steps // 20), disable_tqdm=args.disable_tqdm, use_cpu=not torch.cuda.is_available(),
        # anneal the router temperature from 5 to 0.5 over the run, as the paper does over its 50k tasks
        router_temperature_decay=4.5 / max(1, tasks), dense_weight_decay=0.0, finetune_augment=False,
        # a run of a hundred tasks, not 50k: δ needs a far larger step than the paper's 1e-4 to move at all, λ a
        # larger one to hold the masks at τ while they are learned, the router one to specialise (docs/demo.md)
        delta_lr=0.05, lagrangian_lr=50.0, router_lr=1e-3,
        finetune_steps=args.finetune_steps, finetune_lr_grid=[0.0, 1e-5, 1e-4],
    )
    values.update(overrides)
    return MetaTrainingArguments(**values)


def adapted_module_names(model: nn.Module, frozen_layers: int) -> list[str]:
    """The modules SMAT adapts in the demo: the default targets of the blocks after the frozen prefix."""
    targets = set(DEFAULT_TARGET_MODULES[model.config.model_type])
    names = []
    for name, _ in model.named_modules():
        parts = name.split(".")
        if parts[-1] in targets and "layer" in parts and int(parts[parts.index("layer") + 1]) >= frozen_layers:
            names.append(name)
    return names


def smat_config(args: DemoArguments, backbone: nn.Module, sparsity: float) -> SmatConfig:
    """SMAT on the blocks after the frozen prefix, its masks initialised at the target sparsity.

    A run of a few hundred tasks is far too short for the Lagrangian to carry the masks from dense to τ (the paper
    trains on 50k tasks), so `mask_init_mean` puts the eval masks' density at `1 − τ` from the start; the
    constraint then only has to keep them there while the masks are learned.
    """
    from statistics import NormalDist

    num_layers = backbone.config.num_hidden_layers
    config = SmatConfig(num_experts=args.num_experts, sparsity=sparsity,
                        layers_to_transform=list(range(args.frozen_layers, num_layers)), layers_pattern="layer")
    threshold = hard_concrete(config).eval_nonzero_threshold
    config.mask_init_mean = threshold - config.mask_init_std * NormalDist().inv_cdf(sparsity)
    return config


def _train(model: nn.Module, training_args: MetaTrainingArguments, train: dict, sampler_class: type) -> tuple:
    trainer = SmatMetaTrainer(model, training_args, train_datasets=train, sampler_class=sampler_class)
    start = time.perf_counter()
    trainer.train()
    return trainer, time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------------
# evaluation


def _split_fractions(domain: str, args: DemoArguments) -> tuple[float, float, float]:
    return ID_SPLIT if domain in args.train_domains or domain in SAME_CLASSES_AS else (0.0, 0.0, 1.0)


def test_sampler(sampler_class: type, domains: dict, domain: str, setting: str, args: DemoArguments,
                 num_episodes: int, split: str = "test", seed_offset: int = 2):
    """Fixed episodes of one domain and setting; the same for every model."""
    return sampler_class(
        {domain: domains[domain]}, split=split, num_episodes=num_episodes, seed=args.seed + seed_offset,
        split_seed=args.seed, split_fractions=_split_fractions(domain, args), image_size=args.image_size,
        **SETTINGS[setting],
    )


def evaluate_model(model: nn.Module, name: str, training_args: MetaTrainingArguments, domains: dict,
                   sampler_class: type, args: DemoArguments, modes: tuple[str, ...]) -> dict[str, Any]:
    """`{mode: {setting: {domain: {mean, ci95, episodes[, lr]}}}}` for one model."""
    results: dict[str, Any] = {}
    is_smat = name.startswith("smat")
    features: dict = {}  # a frozen model embeds each test image once, across settings
    for setting in SETTINGS:
        for domain in domains:
            sampler = test_sampler(sampler_class, domains, domain, setting, args, args.test_episodes)
            if is_smat:
                out = evaluate_episodes(model, sampler, training_args, modes=("direct",), is_smat=True,
                                        disable_tqdm=args.disable_tqdm, description=f"{name} {setting} {domain}")
                entry = out[domain]["direct"]
            else:
                scores = frozen_direct_scores(model, sampler, training_args, cache=features, disable_tqdm=args.disable_tqdm)
                entry = mean_ci95(scores[domain])
            results.setdefault("direct", {}).setdefault(setting, {})[domain] = entry
    finetune = [m for m in modes if m != "direct"]
    if finetune:
        search = sampler_class(
            {d: domains[d] for d in args.train_domains}, split="validation",
            num_episodes=args.finetune_search_episodes * len(args.train_domains), seed=args.seed + 3,
            split_seed=args.seed, split_fractions=ID_SPLIT, image_size=args.image_size, **SETTINGS[FINETUNE_SETTING],
        )
        for mode in finetune:
            lr, scores = search_learning_rate(model, search, training_args, is_smat, mode)
            for domain in domains:
                sampler = test_sampler(sampler_class, domains, domain, FINETUNE_SETTING, args, args.finetune_episodes)
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
def expert_weights_by_domain(model: nn.Module, domains: dict, sampler_class: type, args: DemoArguments,
                             num_episodes: int = 20) -> dict[str, list[float]]:
    """Mean router weights α per domain over 5-way 5-shot test episodes."""
    smat = model.base_model
    model.eval()
    out = {}
    for domain in domains:
        sampler = test_sampler(sampler_class, domains, domain, FINETUNE_SETTING, args, num_episodes)
        weights = [smat.expert_weights(e.support_pixel_values, e.support_labels) for e in sampler]
        out[domain] = torch.stack(weights).mean(0).tolist()
    return out


def mean_pairwise_l1(vectors: dict[str, list[float]]) -> float:
    """Mean L1 distance between every pair of vectors."""
    pairs = list(itertools.combinations(vectors.values(), 2))
    if not pairs:
        return 0.0
    return sum(sum(abs(a - b) for a, b in zip(u, v)) for u, v in pairs) / len(pairs)


def claims(results: dict[str, Any]) -> dict[str, Any]:
    """What the default run must show, each measured (5-way 5-shot direct unless said otherwise)."""
    s = results["summary"]
    get = lambda model, key, setting="5w5s", mode="direct": s[model][mode][setting].get(key)  # noqa: E731
    sparsity = results["sparsity"]
    target = sparsity["target"]
    worst = max(abs(e["measured_sparsity"] - target) for e in sparsity["per_expert"])
    out = {}
    for setting in SETTINGS:
        out[f"smat_above_pretrained_id_{setting}"] = get("smat", "id", setting) > get("pretrained", "id", setting)
        out[f"smat_above_pretrained_ood_{setting}"] = get("smat", "ood", setting) > get("pretrained", "ood", setting)
        out[f"smat_at_least_pmf_ood_{setting}"] = get("smat", "ood", setting) >= get("pmf", "ood", setting)
        out[f"smat_above_random_mask_ood_{setting}"] = get("smat", "ood", setting) > get("random_mask", "ood", setting)
    out["max_expert_sparsity_gap"] = worst
    out["every_expert_within_0.02_of_target"] = worst <= 0.02
    out["expert_weights_mean_pairwise_l1"] = results["expert_weights_l1"]
    return out


# ----------------------------------------------------------------------------------------------------------------
# the run


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def _write_json(path: Path, data: Any) -> None:
    _atomic_write_text(str(path), json.dumps(data, indent=2, default=_json_default))


def prepare(args: DemoArguments) -> tuple[dict, nn.Module, type, str]:
    """Domains, the backbone with its frozen prefix skipped, and the sampler class over cached activations."""
    from transformers import Dinov2Model

    torch.manual_seed(args.seed)
    domains = load_demo_domains(args)
    backbone_dir = str(assets.build_backbone(args.cache_dir))
    backbone = Dinov2Model.from_pretrained(backbone_dir).eval()
    activations = cached_prefix_activations(
        backbone, domains, backbone_dir=backbone_dir, cache=assets._resolve_cache(args.cache_dir) / "activations",
        image_size=args.image_size, frozen_layers=args.frozen_layers, progress=not args.disable_tqdm,
    )
    skip_frozen_prefix(backbone, args.frozen_layers)
    return domains, backbone, CachedEpisodeSampler.with_activations(activations), backbone_dir


def train_smat(backbone: nn.Module, args: DemoArguments, sparsity: float, output_dir: str, train: dict,
               sampler_class: type) -> tuple[nn.Module, MetaTrainingArguments, float]:
    torch.manual_seed(args.seed)
    model = get_smat_model(copy.deepcopy(backbone), smat_config(args, backbone, sparsity))
    training_args = training_arguments(args, output_dir, args.smat_steps)
    _, seconds = _train(model, training_args, train, sampler_class)
    return model, training_args, seconds


def run_demo(args: DemoArguments) -> dict[str, Any]:
    """Run the benchmark (or the sparsity sweep) and write `results.json`, the SMAT adapter and the plots."""
    from . import plots

    if args.sweep_sparsity:
        return run_sweep(args)
    start = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    domains, backbone, sampler_class, backbone_dir = prepare(args)
    timings["assets_and_cache_s"] = time.perf_counter() - start
    train = {d: domains[d] for d in args.train_domains}
    modes = ("direct", "full", "lora")
    results: dict[str, Any] = {
        "arguments": dataclasses.asdict(args), "backbone": backbone_dir, "settings": SETTINGS,
        "finetune_setting": FINETUNE_SETTING, "train_domains": args.train_domains,
        "ood_domains": [d for d in domains if d not in args.train_domains], "models": {}, "training": {},
    }
    eval_args = training_arguments(args, str(out / "runs"), 1)

    def record(name: str, model: nn.Module, training_args: MetaTrainingArguments) -> None:
        t = time.perf_counter()
        # the control answers one question (direct, out of domain); fine-tuning it would only cost time
        model_modes = ("direct",) if name == "random_mask" else modes
        results["models"][name] = evaluate_model(model, name, training_args, domains, sampler_class, args,
                                                 model_modes)
        timings[f"{name}_evaluation_s"] = time.perf_counter() - t

    record("pretrained", backbone, eval_args)

    pmf = copy.deepcopy(backbone).requires_grad_(True)
    pmf_args = training_arguments(args, str(out / "runs" / "pmf"), args.dense_steps)
    trainer, timings["pmf_training_s"] = _train(pmf, pmf_args, train, sampler_class)
    results["training"]["pmf"] = {"best_validation_accuracy": trainer.best_metric}
    record("pmf", pmf, pmf_args)
    del pmf, trainer

    control = copy.deepcopy(backbone)
    fix_random_sparse_delta_(control, adapted_module_names(control, args.frozen_layers), args.sparsity, args.seed)
    control_args = training_arguments(args, str(out / "runs" / "random_mask"), args.dense_steps)
    trainer, timings["random_mask_training_s"] = _train(control, control_args, train, sampler_class)
    results["training"]["random_mask"] = {"best_validation_accuracy": trainer.best_metric}
    record("random_mask", control, control_args)
    del control, trainer

    smat, smat_args, timings["smat_training_s"] = train_smat(backbone, args, args.sparsity, str(out / "runs" / "smat"),
                                                             train, sampler_class)
    with open(out / "runs" / "smat" / "metrics.json") as f:
        results["training"]["smat"] = {"best_validation_accuracy": json.load(f).get("best_validation_accuracy")}
    record("smat", smat, smat_args)
    results["sparsity"] = smat.base_model.sparsity_report()
    results["expert_weights"] = expert_weights_by_domain(smat, domains, sampler_class, args)
    results["expert_weights_l1"] = mean_pairwise_l1(results["expert_weights"])
    smat.save_pretrained(str(out / "adapter"))

    results["summary"] = {name: summarize_model(r, args, domains) for name, r in results["models"].items()}
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
    domains, backbone, sampler_class, backbone_dir = prepare(args)
    train = {d: domains[d] for d in args.train_domains}
    eval_args = training_arguments(args, str(out / "runs"), 1)
    pretrained = evaluate_model(backbone, "pretrained", eval_args, domains, sampler_class, args, ("direct",))
    results: dict[str, Any] = {
        "arguments": dataclasses.asdict(args), "backbone": backbone_dir,
        "pretrained": summarize_model(pretrained, args, domains)["direct"], "sweep": {},
    }
    for sparsity in args.sweep_sparsity:
        model, training_args, seconds = train_smat(backbone, args, sparsity, str(out / "runs" / f"smat-{sparsity}"),
                                                   train, sampler_class)
        evaluated = evaluate_model(model, f"smat τ={sparsity}", training_args, domains, sampler_class, args,
                                   ("direct",))
        report = model.base_model.sparsity_report()
        results["sweep"][str(sparsity)] = {
            "summary": summarize_model(evaluated, args, domains)["direct"], "domains": evaluated["direct"],
            "measured_sparsity": [e["measured_sparsity"] for e in report["per_expert"]], "training_s": seconds,
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
