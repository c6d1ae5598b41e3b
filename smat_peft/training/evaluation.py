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
"""Meta-test: accuracy over fixed episodes per domain, for three modes.

- `direct`: cosine ProtoNet on the task's weights θ_i (SMAT: inside `model.task(support)`; a plain backbone as is).
- `full`: fine-tune every parameter of the merged task model (`merge_task`) on the support set, then ProtoNet.
- `lora`: fine-tune a peft LoRA adapter (attention q/v) on the merged task model, at `finetune_lora_lr_multiplier` ×
  lr.

Fine-tuning minimises the support cross-entropy of cosine logits against prototypes recomputed (with gradient) from
the un-augmented support images at every step, on augmented support images (colour and translation jitter, as
DiffAugment in PMF). Its learning rate is chosen per domain on validation episodes (the reference code searches on
the first test episodes, pitfall P11).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..model import SmatModel
from ..targets import default_features
from .arguments import MetaTrainingArguments
from ..heads import class_prototypes, cosine_logits


def mean_ci95(values: list[float]) -> dict[str, Any]:
    """Mean and 95% confidence half-width (1.96 · std / √n), in percent; with the per-episode `scores` (percent, in
    episode order) for paired comparisons between models tested on the same episodes."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": 100.0 * mean, "ci95": 100.0 * 1.96 * std / math.sqrt(n), "episodes": n,
            "scores": [100.0 * v for v in values]}


def augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Colour (brightness, saturation, contrast) and translation (±1/8 of the side) jitter of a batch."""
    n = pixels.shape[0]
    rand = lambda *shape: torch.rand(*shape, generator=generator).to(pixels)  # noqa: E731
    x = pixels + (rand(n, 1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (rand(n, 1, 1, 1) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (rand(n, 1, 1, 1) + 0.5) + mean
    shift = max(1, pixels.shape[-1] // 8)
    dx, dy = torch.randint(-shift, shift + 1, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def _protonet_accuracy(model: nn.Module, episode, scale: float) -> float:
    ways = int(episode.support_labels.max()) + 1
    prototypes = class_prototypes(default_features(model, episode.support_pixel_values), episode.support_labels, ways)
    logits = cosine_logits(default_features(model, episode.query_pixel_values), prototypes, scale)
    return (logits.argmax(-1) == episode.query_labels).float().mean().item()


def direct_accuracy(model: nn.Module, episode, args: MetaTrainingArguments, is_smat: bool) -> float:
    """ProtoNet accuracy on the episode's queries, with the task's weights for a SMAT model."""
    with torch.no_grad():
        if is_smat:
            smat: SmatModel = model.base_model
            with smat.task(episode.support_pixel_values, episode.support_labels):
                return _protonet_accuracy(smat.model, episode, args.protonet_scale)
        return _protonet_accuracy(model, episode, args.protonet_scale)


def _lora_targets(model: nn.Module) -> Any:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if {"q_proj", "v_proj"} <= names:
        return ["q_proj", "v_proj"]
    return "all-linear" if model_type is not None else [n for n in names if "qkv" in n] or "all-linear"


def finetuned_accuracy(model: nn.Module, episode, args: MetaTrainingArguments, is_smat: bool, mode: str,
                       lr: float) -> float:
    """Fine-tune a copy of the task model on the support set (`full` or `lora`), then ProtoNet on the queries.

    Torch's RNG (LoRA's initialisation, dropout) is seeded from the episode's index and restored afterwards, so an
    episode's accuracy does not depend on which episodes were evaluated before it (nor on which process runs it).
    """
    if lr == 0.0:
        return direct_accuracy(model, episode, args, is_smat)
    devices = [torch.cuda.current_device()] if episode.support_pixel_values.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(args.seed * 1_000_003 + episode.index)
        return _finetuned_accuracy(model, episode, args, is_smat, mode, lr)


def _finetuned_accuracy(model: nn.Module, episode, args: MetaTrainingArguments, is_smat: bool, mode: str,
                        lr: float) -> float:
    xs, ys = episode.support_pixel_values, episode.support_labels
    if is_smat:
        task_model = model.base_model.merge_task(xs, ys)
    else:
        task_model = copy.deepcopy(model).requires_grad_(True)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=args.finetune_lora_r, lora_alpha=args.finetune_lora_alpha,
                          lora_dropout=args.finetune_lora_dropout, target_modules=_lora_targets(task_model))
        task_model = get_peft_model(task_model, lora)
        lr = lr * args.finetune_lora_lr_multiplier
    task_model.train()
    params = [p for p in task_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(episode.index)
    ways = int(ys.max()) + 1
    with torch.enable_grad():
        for _ in range(args.finetune_steps):
            support = default_features(task_model, xs)
            prototypes = class_prototypes(support, ys, ways)
            if args.finetune_augment:
                support = default_features(task_model, augment(xs, generator))
            loss = F.cross_entropy(cosine_logits(support, prototypes, args.protonet_scale), ys)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    task_model.eval()
    with torch.no_grad():
        return _protonet_accuracy(task_model, episode, args.protonet_scale)


def frozen_direct_scores(model: nn.Module, sampler, args: MetaTrainingArguments, batch_size: int = 128,
                         disable_tqdm: bool = True, cache: Optional[dict] = None) -> dict[str, list[float]]:
    """Direct ProtoNet accuracy per episode, by domain, for a model whose weights do not depend on the task.

    Every image of the sampler's (un-augmented) episodes is embedded once, then each episode is a lookup: the same
    numbers as `direct_accuracy` per episode, many times faster when episodes share images. Pass the same `cache`
    dict to samplers over the same datasets (e.g. several settings) to embed each image once across them.
    """
    scores: dict[str, list[float]] = {}
    for domain, accuracy in frozen_episode_scores(model, sampler, args, range(len(sampler)), batch_size,
                                                  disable_tqdm, cache):
        scores.setdefault(domain, []).append(accuracy)
    return scores


@torch.no_grad()
def frozen_episode_scores(model: nn.Module, sampler, args: MetaTrainingArguments, indices: Sequence[int],
                          batch_size: int = 128, disable_tqdm: bool = True,
                          cache: Optional[dict] = None) -> list[tuple[str, float]]:
    """`(domain, direct accuracy)` of the sampler's episodes `indices`, in that order, embedding each of their
    images once (see [`frozen_direct_scores`])."""
    device = next(model.parameters()).device
    plans = [sampler.plan(i) for i in indices]
    rows_by_domain: dict[str, list[int]] = {}
    for plan in plans:
        rows_by_domain.setdefault(plan.domain, []).extend(r for part in (plan.support_rows, plan.query_rows)
                                                          for rows in part for r in rows)
    features: dict[str, dict[int, torch.Tensor]] = {} if cache is None else cache
    for domain, rows in rows_by_domain.items():
        table = features.setdefault(domain, {})
        unique = sorted(set(rows) - set(table))
        for i in tqdm(range(0, len(unique), batch_size), desc=f"embedding {domain}", disable=disable_tqdm):
            chunk = unique[i:i + batch_size]
            table.update(zip(chunk, default_features(model, sampler.pixel_values(domain, chunk).to(device)).float()))
    scores = []
    for plan in plans:
        table = features[plan.domain]
        support = torch.stack([table[r] for rows in plan.support_rows for r in rows])
        query = torch.stack([table[r] for rows in plan.query_rows for r in rows])
        labels = [torch.tensor([k for k, rows in enumerate(part) for _ in rows], device=support.device)
                  for part in (plan.support_rows, plan.query_rows)]
        prototypes = class_prototypes(support, labels[0], plan.ways)
        logits = cosine_logits(query, prototypes, args.protonet_scale)
        scores.append((plan.domain, (logits.argmax(-1) == labels[1]).float().mean().item()))
    return scores


def task_independent_model(model: nn.Module, episode) -> Optional[nn.Module]:
    """The model whose weights are every task's, if they do not depend on the support set; else `None`.

    A plain backbone is returned as is. A SMAT model whose active adapters have one expert each routes every task
    to α = (1,), so its task weights `θ + z ⊙ δ` are the same for all: merged once (with `episode`'s support set,
    any would do) into a plain model. Evaluating that model once per image ([`frozen_direct_scores`]) gives the
    per-episode numbers of `direct_accuracy` at a fraction of the cost.
    """
    smat = getattr(model, "base_model", None)
    if not isinstance(smat, SmatModel):
        return model
    if any(smat.peft_config[name].num_experts != 1 for name in smat.active_adapters):
        return None
    return smat.merge_task(episode.support_pixel_values, episode.support_labels).eval()


def shard(num_episodes: int, process_index: int = 0, num_processes: int = 1) -> range:
    """The episode indices process `process_index` of `num_processes` evaluates: every `num_processes`-th one."""
    return range(process_index, num_episodes, num_processes)


def gather_in_order(indices: Sequence[int], values: Sequence[Any], num_processes: int = 1) -> list[Any]:
    """Every process's `values` (those of its episodes `indices`), on every process, in episode order.

    With one process, `values` as they are; with several, Accelerate's `gather_object` (a collective: every process
    calls it, in the same order).
    """
    if num_processes == 1:
        return list(values)
    from accelerate.utils import gather_object

    records = gather_object(list(zip(indices, values)))
    return [value for _, value in sorted(records, key=lambda record: record[0])]


def search_learning_rate(model, sampler, args, is_smat: bool, mode: str, process_index: int = 0,
                         num_processes: int = 1) -> tuple[float, dict[float, float]]:
    """The learning rate of `finetune_lr_grid` with the best mean query accuracy on the validation episodes.

    With several processes each fine-tunes its share of the episodes ([`shard`]); the sums are taken in episode
    order, so every process picks what one process would.
    """
    indices = shard(len(sampler), process_index, num_processes)
    device = next(model.parameters()).device
    scores = {}
    for lr in args.finetune_lr_grid:
        values = [finetuned_accuracy(model, sampler[i].to(device), args, is_smat, mode, lr) for i in indices]
        scores[lr] = sum(gather_in_order(indices, values, num_processes))
    return max(scores, key=lambda lr: (scores[lr], -lr)), {lr: s / len(sampler) for lr, s in scores.items()}


def evaluate_episodes(
    model: nn.Module,
    sampler,
    args: MetaTrainingArguments,
    modes: Iterable[str] = ("direct",),
    is_smat: Optional[bool] = None,
    search_sampler=None,
    disable_tqdm: bool = False,
    description: str = "meta-test",
    learning_rates: Optional[dict[str, float]] = None,
    process_index: int = 0,
    num_processes: int = 1,
) -> dict[str, dict[str, Any]]:
    """Accuracy (mean ± 95% CI, percent) per domain and mode over the sampler's fixed episodes.

    Fine-tuning modes use `learning_rates[mode]` when given, else search `finetune_lr_grid` on `search_sampler`.
    A model whose weights do not depend on the task (not SMAT, or SMAT with one expert: [`task_independent_model`])
    embeds each image once in `direct` mode ([`frozen_episode_scores`]) unless the sampler augments.

    Data parallel: with `num_processes` > 1 (every process calls this), process `process_index` evaluates every
    `num_processes`-th episode and the per-episode scores are gathered back in episode order on every process, so
    each returns exactly what one process would.
    """
    if is_smat is None:
        is_smat = isinstance(getattr(model, "base_model", None), SmatModel)
    was_training = model.training
    model.eval()
    modes = tuple(modes)
    learning_rates = dict(learning_rates or {})
    searches: dict[str, dict[float, float]] = {}
    for mode in modes:
        if mode in ("full", "lora") and mode not in learning_rates:
            if search_sampler is None:
                raise ValueError(f"Mode {mode!r} needs validation episodes to pick its learning rate.")
            learning_rates[mode], searches[mode] = search_learning_rate(model, search_sampler, args, is_smat, mode,
                                                                        process_index, num_processes)
    indices = shard(len(sampler), process_index, num_processes)
    rows = _episode_rows(model, sampler, args, modes, is_smat, learning_rates, indices, disable_tqdm, description)
    model.train(was_training)
    scores: dict[str, dict[str, list[float]]] = {}
    for domain, accuracies in gather_in_order(indices, rows, num_processes):
        domain_scores = scores.setdefault(domain, {m: [] for m in modes})
        for mode in modes:
            domain_scores[mode].append(accuracies[mode])
    results = {}
    for domain, per_mode in scores.items():
        results[domain] = {mode: mean_ci95(values) for mode, values in per_mode.items()}
        for mode, lr in learning_rates.items():
            if mode in results[domain]:
                results[domain][mode]["lr"] = lr
                if mode in searches:
                    results[domain][mode]["lr_search"] = {str(k): v for k, v in searches[mode].items()}
    return results


def _episode_rows(model, sampler, args, modes: tuple[str, ...], is_smat: bool, learning_rates: dict[str, float],
                  indices: Sequence[int], disable_tqdm: bool, description: str) -> list[tuple[str, dict[str, float]]]:
    """`(domain, {mode: accuracy})` of the episodes `indices`, in that order."""
    device = next(model.parameters()).device
    per_episode = list(modes)
    domains: list[str] = [""] * len(indices)
    accuracies: list[dict[str, float]] = [{} for _ in indices]
    frozen = task_independent_model(model, sampler[0].to(device)) if "direct" in modes and not sampler.augment \
        else None
    if frozen is not None:
        per_episode.remove("direct")
        for k, (domain, accuracy) in enumerate(frozen_episode_scores(frozen, sampler, args, indices,
                                                                     disable_tqdm=disable_tqdm)):
            domains[k], accuracies[k]["direct"] = domain, accuracy
    if per_episode:
        for k, index in enumerate(tqdm(indices, desc=description, disable=disable_tqdm)):
            episode = sampler[index].to(device)
            domains[k] = episode.domain
            for mode in per_episode:
                if mode == "direct":
                    accuracies[k][mode] = direct_accuracy(model, episode, args, is_smat)
                else:
                    accuracies[k][mode] = finetuned_accuracy(model, episode, args, is_smat, mode, learning_rates[mode])
    return list(zip(domains, accuracies))


def summarize(domains: dict[str, dict[str, Any]], in_domain: set, modes: Iterable[str]) -> dict[str, Any]:
    """ID and OOD averages of the per-domain mean accuracies, per mode."""
    summary: dict[str, Any] = {"id_average": {}, "ood_average": {}}
    for mode in modes:
        for key, selected in (("id_average", [d for d in domains if d in in_domain]),
                              ("ood_average", [d for d in domains if d not in in_domain])):
            if selected:
                summary[key][mode] = sum(domains[d][mode]["mean"] for d in selected) / len(selected)
    return summary
