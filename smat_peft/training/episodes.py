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
"""Few-shot episodes from 🤗 `datasets`: class splits, episode sampling, image transforms.

An *episode* (a task) is a support set and a query set drawn from the same few classes of one *domain* (one
`datasets.Dataset`); labels are renumbered `0..ways-1`. [`EpisodeSampler`] turns a mapping `domain name → Dataset`
into an indexable stream of episodes:

- **Class splits.** Each domain's classes are split into disjoint train / validation / test classes by
  [`split_classes`] from `split_seed` alone, so every sampler built with the same `split_seed` agrees on them.
- **Reproducibility.** `episode(i)` depends only on `(seed, rank, i)`: the domain, classes, images and augmentation
  of episode `i` come from `numpy.random.SeedSequence([seed, rank, i])`. The stream is the same whatever the
  DataLoader workers or the order in which episodes are requested, resuming at index `k` continues it exactly, and a
  sampler with a fixed `seed` and `num_episodes` is a fixed evaluation list.
- **Lazy images.** `__init__` reads only the label column (as Arrow, bypassing any user transform); images are
  decoded only for the rows an episode samples, so a memory-mapped dataset stays on disk.

Two episode shapes ([`EpisodeShape`], method notes §4):

- **Fixed** N-way K-shot: `ways` classes, `shots` support and `queries` query images per class.
- **Variable** (`variable=True`), Meta-Dataset's variable-way variable-shot episodes (Triantafillou et al., 2020,
  "Meta-Dataset", Sec. 3.2 and its `sampling.py`), with `ways` as the minimum number of ways (Meta-Dataset: 5):

  1. ways ~ uniform over `[ways, min(max_ways, number of classes)]`; the classes are drawn uniformly without
     replacement;
  2. queries per class `q = min(max_queries, min over the episode's classes of ⌊size_c / 2⌋)` (balanced query set);
  3. support-set size `S = min(max_support, Σ_c ⌊β · min(max_support_per_class, size_c − q)⌋ + 1)`, one
     `β ~ U[0, 1)` per episode;
  4. class-imbalanced shots: `w_c = size_c · exp(u_c)` with `u_c ~ U[log ½, log 2]`, proportions `p_c = w_c / Σ w`,
     `shots_c = min(⌊p_c · (S − ways)⌋ + 1, size_c − q, max_support_per_class)`; so every class has at least one
     support image and `Σ shots_c ≤ S ≤ max_support`;
  5. the support and query images of a class are a uniform draw without replacement from its images (disjoint).

  Departures from Meta-Dataset: no class hierarchy (Meta-Dataset picks ImageNet classes from its WordNet DAG and
  Omniglot classes from one alphabet); `max_support_per_class` also caps each class's shots (in Meta-Dataset it
  only caps a class's contribution to `S`, so a heavily weighted class may exceed it); classes with fewer than two
  images are handled by `min_images_policy` (Meta-Dataset errors in the query rule).

Images become `[3, H, W]` float32 tensors: grayscale / palette / RGBA are converted to RGB; then either the given
`transformers` image processor, or a bilinear resize to `image_size × image_size` and normalisation by
`image_mean`/`image_std`. Training augmentation (`augment=True`), plain PIL + torch: random resized crop (area scale
0.5–1, aspect ratio 3/4–4/3), horizontal flip (p = ½), brightness and contrast jitter (factors in 0.6–1.4), applied
to support and query images before resizing / normalising.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import pyarrow as pa  # comes with `datasets`
import torch

from .episode_shape import EpisodeShape


SPLITS: tuple[str, ...] = ("train", "validation", "test")
MIN_IMAGES_POLICIES: tuple[str, ...] = ("skip", "error")
DEFAULT_DOMAIN: str = "default"
"""Domain name used when the sampler is given a single `datasets.Dataset`."""

# Meta-Dataset's class-imbalance weights: log-weights uniform in [log 1/2, log 2].
MIN_LOG_WEIGHT: float = math.log(0.5)
MAX_LOG_WEIGHT: float = math.log(2.0)

# Augmentation strengths.
CROP_SCALE: tuple[float, float] = (0.5, 1.0)
CROP_RATIO: tuple[float, float] = (3 / 4, 4 / 3)
BRIGHTNESS: float = 0.4
CONTRAST: float = 0.4


# ---------------------------------------------------------------------------------------------------------------------
# Episodes and class splits
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Episode:
    """One few-shot task: a labelled support set and a labelled query set from the same classes of one domain.

    Args:
        support_pixel_values (`torch.Tensor` of shape `[Ns, C, H, W]`): Processed (and, when training, augmented)
            support images, float32.
        support_labels (`torch.Tensor` of shape `[Ns]`): int64 labels in `0..ways-1`, every label present.
        query_pixel_values (`torch.Tensor` of shape `[Nq, C, H, W]`): Processed query images.
        query_labels (`torch.Tensor` of shape `[Nq]`): int64 labels in `0..ways-1`.
        domain (`str`): Name of the domain the episode comes from.
        index (`int`): Position of the episode in its sampler's stream.
        classes (`list`): Original label values of the episode's classes: label `i` is `classes[i]`.

    Example:

    ```py
    >>> import torch
    >>> episode = Episode(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]), torch.zeros(2, 3, 8, 8),
    ...                   torch.tensor([1, 0]), domain="toy", index=0, classes=["cat", "dog"])
    >>> episode.ways, episode.classes[int(episode.query_labels[0])]
    (2, 'dog')
    ```
    """

    support_pixel_values: torch.Tensor
    support_labels: torch.Tensor
    query_pixel_values: torch.Tensor
    query_labels: torch.Tensor
    domain: str
    index: int
    classes: list

    @property
    def ways(self) -> int:
        """Number of classes of the episode."""
        return len(self.classes)

    def to(self, device: torch.device | str) -> Episode:
        """The same episode with its tensors on `device`."""
        return Episode(
            self.support_pixel_values.to(device),
            self.support_labels.to(device),
            self.query_pixel_values.to(device),
            self.query_labels.to(device),
            self.domain,
            self.index,
            list(self.classes),
        )


@dataclass
class EpisodePlan:
    """What an episode is made of, before any image is decoded (see [`EpisodeSampler.plan`]).

    Args:
        domain (`str`): Name of the domain.
        index (`int`): Position in the stream.
        classes (`list`): Original label values, in label order.
        support_rows (`list[list[int]]`): Per label, the dataset rows of its support images.
        query_rows (`list[list[int]]`): Per label, the dataset rows of its query images.
    """

    domain: str
    index: int
    classes: list
    support_rows: list[list[int]]
    query_rows: list[list[int]]

    @property
    def ways(self) -> int:
        """Number of classes of the episode."""
        return len(self.classes)

    @property
    def shots(self) -> list[int]:
        """Support images per class, in label order."""
        return [len(rows) for rows in self.support_rows]

    @property
    def queries(self) -> list[int]:
        """Query images per class, in label order."""
        return [len(rows) for rows in self.query_rows]


def _scalar(value: Any) -> Any:
    """A numpy scalar as the equivalent Python scalar (labels must compare and hash like Python values)."""
    return value.item() if isinstance(value, np.generic) else value


def _class_sort_key(value: Any) -> tuple[str, Any]:
    return (type(value).__name__, value)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(not math.isfinite(f) or f < 0 for f in values) or not math.isclose(sum(values), 1.0):
        raise ValueError(
            f"`split_fractions` must be three non-negative numbers (train, validation, test) summing to 1, got "
            f"{tuple(fractions)}; e.g. (0.7, 0.15, 0.15), or (0, 0, 1) to use every class of a domain for testing."
        )
    return values


def _split_sizes(num_classes: int, fractions: tuple[float, float, float]) -> list[int]:
    """Class counts per split: largest-remainder rounding, then one class moved to every empty split that asked for
    some, as long as the donor keeps at least one."""
    exact = [num_classes * f for f in fractions]
    sizes = [math.floor(x) for x in exact]
    by_remainder = sorted(range(3), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in by_remainder[: num_classes - sum(sizes)]:
        sizes[i] += 1
    for i in range(3):
        if fractions[i] > 0 and sizes[i] == 0:
            donor = max(range(3), key=lambda j: (sizes[j], -j))
            if sizes[donor] > 1:
                sizes[donor] -= 1
                sizes[i] += 1
    return sizes


def split_classes(
    classes: Sequence, seed: int, fractions: Sequence[float] = (0.7, 0.15, 0.15)
) -> dict[str, list]:
    """Split class labels into disjoint train / validation / test classes, deterministically from `seed`.

    The classes are de-duplicated and sorted first, so the split does not depend on their order; they are then
    shuffled with `numpy.random.default_rng(seed)` and cut by `fractions` (largest-remainder rounding). Every split
    with a positive fraction gets at least one class when there are enough classes.

    Args:
        classes (`Sequence`): Class labels (ints or strings).
        seed (`int`): Non-negative seed of the split.
        fractions (`Sequence[float]`): Fractions of classes for train, validation and test, summing to 1.

    Returns:
        `dict[str, list]`: `{"train": [...], "validation": [...], "test": [...]}`, each list sorted.

    Example:

    ```py
    >>> splits = split_classes(range(20), seed=0)
    >>> [len(splits[name]) for name in ("train", "validation", "test")]
    [14, 3, 3]
    >>> set(splits["train"]) & set(splits["test"])
    set()
    ```
    """
    fractions = _check_fractions(fractions)
    if int(seed) < 0:
        raise ValueError(f"`seed` of a class split must be non-negative, got {seed}.")
    unique = sorted({_scalar(c) for c in classes}, key=_class_sort_key)
    order = np.random.default_rng(int(seed)).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    sizes = _split_sizes(len(unique), fractions)
    bounds = np.cumsum([0] + sizes)
    return {
        name: sorted(shuffled[bounds[i] : bounds[i + 1]], key=_class_sort_key) for i, name in enumerate(SPLITS)
    }


# ---------------------------------------------------------------------------------------------------------------------
# Episode composition (which classes, how many images each): pure functions of a numpy Generator
# ---------------------------------------------------------------------------------------------------------------------


def _fixed_composition(
    rng: np.random.Generator, sizes: np.ndarray, ways: int, shots: int, queries: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """N-way K-shot: `ways` of the classes (given by their image counts `sizes`), `shots` / `queries` each.

    Returns the chosen class positions (in label order), the support images per class and the queries per class.
    """
    chosen = rng.choice(len(sizes), size=ways, replace=False)
    return chosen, np.full(ways, shots, dtype=np.int64), queries


def _variable_composition(
    rng: np.random.Generator,
    sizes: np.ndarray,
    min_ways: int,
    max_ways: int,
    max_support: int,
    max_support_per_class: int,
    max_queries: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Meta-Dataset's variable-way variable-shot composition (steps 1–4 of the module docstring).

    Every class in `sizes` must have at least 2 images, and there must be at least `min_ways` classes.
    Returns the chosen class positions (in label order), the support images per class and the queries per class.
    """
    ways = int(rng.integers(min_ways, min(max_ways, len(sizes)) + 1))
    chosen = rng.choice(len(sizes), size=ways, replace=False)
    class_sizes = sizes[chosen].astype(np.int64)
    queries = int(min(max_queries, (class_sizes // 2).min()))
    remaining = class_sizes - queries
    beta = rng.uniform()
    contributions = np.minimum(remaining, max_support_per_class)
    support_size = int(min(max_support, np.floor(beta * contributions + 1).sum()))
    weights = class_sizes * np.exp(rng.uniform(MIN_LOG_WEIGHT, MAX_LOG_WEIGHT, size=ways))
    desired = np.floor(weights / weights.sum() * (support_size - ways)).astype(np.int64) + 1
    shots = np.minimum(np.minimum(desired, remaining), max_support_per_class)
    return chosen, shots, queries


# ---------------------------------------------------------------------------------------------------------------------
# Images: decoding, augmentation, resizing and normalisation
# ---------------------------------------------------------------------------------------------------------------------


def to_rgb_image(value: Any, column: str = "image") -> PIL.Image.Image:
    """One dataset cell as an RGB PIL image.

    Accepts PIL images (any mode), undecoded `{"bytes", "path"}` cells, and arrays / tensors shaped `[H, W]`,
    `[H, W, C]` or `[C, H, W]` with `C` in 1, 3, 4 (when both the first and the last size could be `C`, the smaller
    one is; `[H, W, C]` on a tie), integer arrays in 0–255, float arrays in 0–1. Gray is repeated to three channels,
    alpha is dropped.

    Example:

    ```py
    >>> import numpy as np
    >>> to_rgb_image(np.zeros((3, 5, 6), dtype=np.uint8)).size  # [C, H, W] → width 6, height 5
    (6, 5)
    ```
    """
    if isinstance(value, PIL.Image.Image):
        return value if value.mode == "RGB" else value.convert("RGB")
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
        with PIL.Image.open(source) as image:
            return image.convert("RGB")
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        array = None
    if array is None or array.dtype == object or array.ndim not in (2, 3):
        raise TypeError(
            f"Cannot read a value of the image column {column!r} as an image: got {type(value).__name__}"
            + (f" of shape {array.shape}" if array is not None and array.dtype != object else "")
            + ". Use the `datasets.Image()` feature, or arrays / tensors shaped [H, W], [H, W, C] or [C, H, W]."
        )
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.shape[0] in (1, 3, 4) and (array.shape[-1] not in (1, 3, 4) or array.shape[0] < array.shape[-1]):
        array = array.transpose(1, 2, 0)  # [C, H, W]; when both ends could be channels, the smaller one is
    if array.shape[-1] not in (1, 3, 4):
        raise TypeError(
            f"An image of column {column!r} has shape {array.shape}: expected 1, 3 or 4 channels, first or last."
        )
    if array.dtype == bool:
        array = array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(np.rint(array * 255.0), 0, 255)
    array = np.clip(array, 0, 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return PIL.Image.fromarray(np.ascontiguousarray(array[:, :, :3]), mode="RGB")


def _images_to_tensor(images: Sequence[PIL.Image.Image]) -> torch.Tensor:
    """Same-size RGB PIL images → float32 `[N, 3, H, W]` in [0, 1] (one conversion for the whole batch)."""
    array = np.stack([np.asarray(image, dtype=np.uint8) for image in images])  # [N, H, W, 3]
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous().float().div_(255.0)


def _tensor_to_image(pixels: torch.Tensor) -> PIL.Image.Image:
    """float `[3, H, W]` in [0, 1] → RGB PIL image."""
    array = pixels.clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return PIL.Image.fromarray(np.ascontiguousarray(array), mode="RGB")


@dataclass
class _Augmentation:
    """The random choices of one image's augmentation."""

    box: tuple[float, float, float, float]  # crop (left, top, right, bottom), in pixels
    flip: bool
    brightness: float
    contrast: float


def _sample_augmentation(rng: np.random.Generator, width: int, height: int) -> _Augmentation:
    """A crop covering 50–100 % of the image area with aspect ratio 3/4–4/3 (the whole image when ten tries do not
    fit), a coin for the flip, and brightness / contrast factors."""
    box = (0.0, 0.0, float(width), float(height))
    for _ in range(10):
        target = width * height * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        crop_w, crop_h = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if crop_w <= width and crop_h <= height:
            left, top = rng.uniform(0, width - crop_w), rng.uniform(0, height - crop_h)
            box = (left, top, left + crop_w, top + crop_h)
            break
    flip = bool(rng.uniform() < 0.5)
    brightness = rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS)
    contrast = rng.uniform(1 - CONTRAST, 1 + CONTRAST)
    return _Augmentation(box, flip, brightness, contrast)


def _crop_and_flip(
    image: PIL.Image.Image, augmentation: _Augmentation, size: tuple[int, int] | None
) -> PIL.Image.Image:
    """The augmentation's crop, resized (bilinear) to `size = (height, width)` or kept at its own size, maybe
    mirrored."""
    left, top, right, bottom = augmentation.box
    if size is None:
        size = (max(1, round(bottom - top)), max(1, round(right - left)))
    image = image.resize((size[1], size[0]), PIL.Image.Resampling.BILINEAR, box=augmentation.box)
    return image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT) if augmentation.flip else image


def _jitter(pixels: torch.Tensor, brightness: Sequence[float], contrast: Sequence[float]) -> torch.Tensor:
    """Brightness then contrast jitter of `[N, 3, H, W]` images in [0, 1], one factor of each per image: brightness
    scales the pixels, contrast scales their distance to the image's mean gray level."""
    brightness_ = torch.tensor(brightness, dtype=pixels.dtype).view(-1, 1, 1, 1)
    contrast_ = torch.tensor(contrast, dtype=pixels.dtype).view(-1, 1, 1, 1)
    pixels = pixels.mul(brightness_).clamp_(0, 1)
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=pixels.dtype).view(1, 3, 1, 1)
    gray_mean = (pixels * luma).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    return pixels.sub_(gray_mean).mul_(contrast_).add_(gray_mean).clamp_(0, 1)


def augment_images(
    images: Sequence[PIL.Image.Image], rng: np.random.Generator, size: tuple[int, int] | None = None
) -> torch.Tensor | list[torch.Tensor]:
    """Random resized crop, horizontal flip, brightness / contrast jitter of RGB images, all choices drawn from `rng`
    (image by image, in order).

    With `size = (height, width)` the crops are resized (bilinear) to it and the result is one float32
    `[N, 3, H, W]` tensor in [0, 1]; with `size=None` each crop keeps its own size (an image processor resizes it
    afterwards) and the result is a list of `[3, h, w]` tensors.

    Example:

    ```py
    >>> import numpy as np, PIL.Image
    >>> image = PIL.Image.new("RGB", (20, 16), (200, 100, 50))
    >>> augment_images([image, image], np.random.default_rng(0), size=(8, 8)).shape
    torch.Size([2, 3, 8, 8])
    ```
    """
    augmentations = [_sample_augmentation(rng, image.width, image.height) for image in images]
    crops = [_crop_and_flip(image, augmentation, size) for image, augmentation in zip(images, augmentations)]
    if size is not None:
        return _jitter(_images_to_tensor(crops), [a.brightness for a in augmentations],
                       [a.contrast for a in augmentations])
    return [
        _jitter(_images_to_tensor([crop]), [a.brightness], [a.contrast])[0] for crop, a in zip(crops, augmentations)
    ]


# ---------------------------------------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Domain:
    """A domain indexed by class: the dataset to read images from and, per class of the split, its rows."""

    name: str
    source: Any  # the `datasets.Dataset` images are read from (only the image column unless a transform is set)
    num_rows: int
    class_counts: dict[str, int]  # classes per split
    classes: list  # eligible classes of the sampler's split
    rows: list[np.ndarray]  # rows of each eligible class
    skipped: list  # classes of the split left out by `min_images_policy="skip"`

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(r) for r in self.rows], dtype=np.int64)


def _identity(episode: Episode) -> Episode:
    return episode


class EpisodeSampler(torch.utils.data.Dataset):
    """A reproducible stream of few-shot episodes from one or several image-classification datasets.

    Each episode comes from one domain (drawn uniformly, or by `domain_weights`), from the classes of that domain's
    `split` (class splits from `split_seed`, see [`split_classes`]), in the given [`EpisodeShape`]. See the module
    docstring for the fixed and variable (Meta-Dataset) episode shapes and for the image pipeline.

    Args:
        datasets (`Mapping[str, datasets.Dataset]` or `datasets.Dataset`): Domains by name, or one dataset (domain
            `"default"`). Each needs an image column (the `datasets.Image` feature, or arrays / tensors) and a label
            column (int, `ClassLabel` or str).
        shape ([`EpisodeShape`], *optional*): Ways, shots and queries, fixed or variable; default `EpisodeShape()`
            (5-way 5-shot, 15 queries).
        **shape_fields: Instead of `shape`, its fields as keywords: `ways=5, shots=1` is
            `shape=EpisodeShape(ways=5, shots=1)`.
        split (`str`): Which classes to sample from: `"train"`, `"validation"` or `"test"`.
        num_episodes (`int`): Length of the sampler (`len`, `loader`); `episode(i)` is defined for any `i >= 0`.
        seed (`int`): Seed of the episode stream.
        split_seed (`int`): Seed of the class splits (keep it fixed across training, validation and test samplers).
        split_fractions (`Sequence[float]`): Fractions of each domain's classes for train, validation and test.
        image_column (`str`), label_column (`str`): Column names.
        domain_weights (`Mapping[str, float]`, *optional*): Relative probability of each domain; domains left out
            get weight 0. Uniform when None.
        image_size (`int`): Side of the square output images when no `image_processor` is given.
        image_mean, image_std (`Sequence[float]`): Per-channel normalisation when no `image_processor` is given.
        image_processor (*optional*): A `transformers` image processor; if given, it resizes and normalises
            (`image_size`, `image_mean` and `image_std` are then unused).
        augment (`bool`): Training augmentation (random resized crop, flip, brightness / contrast jitter).
        rank (`int`), world_size (`int`): This process's index among `world_size` processes; each rank samples its
            own stream. To share one fixed evaluation list between processes, give every process the same `rank`
            and let each take every `world_size`-th index.
        min_images_policy (`str`): Classes with fewer images than an episode may need (`shots + queries` for fixed
            episodes, 2 for variable ones): `"skip"` leaves them out (an error if fewer than `ways` classes remain),
            `"error"` raises.
        load_inputs (`Callable[[str, list[int]], torch.Tensor]`, *optional*): Makes the model inputs of dataset rows
            instead of decoding images. Called as `load_inputs(domain, rows)` (a domain name and a list of row
            indices), it returns a float tensor `[len(rows), ...]`, one input per row in order, un-augmented:
            `augment` must then be False, and the image arguments are unused (the image column is still needed to
            index the domain). The demo passes cached activations of the backbone's frozen first blocks.

    Example:

    ```py
    >>> import datasets, numpy as np
    >>> images = [np.full((16, 16, 3), i, dtype=np.uint8) for i in range(48)]
    >>> data = datasets.Dataset.from_dict({"image": images, "label": [i % 8 for i in range(48)]})
    >>> shape = EpisodeShape(ways=3, shots=2, queries=1)
    >>> sampler = EpisodeSampler({"toy": data}, shape, split_fractions=(1, 0, 0), image_size=8)
    >>> episode = sampler[0]
    >>> episode.support_pixel_values.shape, episode.query_labels.tolist()
    (torch.Size([6, 3, 8, 8]), [0, 1, 2])
    >>> torch.equal(sampler.episode(0).support_pixel_values, episode.support_pixel_values)
    True
    ```
    """

    def __init__(
        self,
        datasets: Mapping[str, Any] | Any,
        shape: EpisodeShape | None = None,
        *,
        split: str = "train",
        num_episodes: int = 1000,
        seed: int = 0,
        split_seed: int = 0,
        split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
        image_column: str = "image",
        label_column: str = "label",
        domain_weights: Mapping[str, float] | None = None,
        image_size: int = 224,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        image_processor: Any = None,
        augment: bool = False,
        rank: int = 0,
        world_size: int = 1,
        min_images_policy: str = "skip",
        load_inputs: Callable[[str, list[int]], torch.Tensor] | None = None,
        **shape_fields: Any,
    ) -> None:
        if shape is None:
            known = [f.name for f in dataclasses.fields(EpisodeShape)]
            unknown = sorted(set(shape_fields) - set(known))
            if unknown:
                raise TypeError(f"EpisodeSampler got unexpected keyword arguments {unknown}; the shape's are {known}.")
            shape = EpisodeShape(**shape_fields)
        elif not isinstance(shape, EpisodeShape):
            raise TypeError(f"`shape` must be an EpisodeShape, got {type(shape).__name__}.")
        elif shape_fields:
            raise TypeError(f"Pass `shape` or its fields {sorted(shape_fields)} as keywords, not both.")
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
        if min_images_policy not in MIN_IMAGES_POLICIES:
            raise ValueError(f"`min_images_policy` must be one of {MIN_IMAGES_POLICIES}, got {min_images_policy!r}.")
        for name, value in (("image_size", image_size), ("world_size", world_size)):
            if int(value) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value}.")
        for name, value in (("num_episodes", num_episodes), ("seed", seed), ("split_seed", split_seed)):
            if int(value) < 0:
                raise ValueError(f"`{name}` must be a non-negative integer, got {value}.")
        if not 0 <= rank < world_size:
            raise ValueError(f"`rank` must be in [0, world_size={world_size}), got {rank}.")
        if load_inputs is not None and augment:
            raise ValueError("Inputs from `load_inputs` cannot be augmented (augmentation works on images); pass "
                             "`augment=False`.")
        if len(image_mean) != 3 or len(image_std) != 3 or any(s <= 0 for s in image_std):
            raise ValueError(
                f"`image_mean` and `image_std` must have 3 values (RGB), `image_std` positive; got {tuple(image_mean)}"
                f" and {tuple(image_std)}."
            )
        self.split = split
        self.shape = shape
        self.num_episodes, self.seed, self.split_seed = int(num_episodes), int(seed), int(split_seed)
        self.split_fractions = _check_fractions(split_fractions)
        self.image_column, self.label_column = image_column, label_column
        self.image_size = int(image_size)
        self.image_mean = torch.tensor([float(m) for m in image_mean]).view(3, 1, 1)
        self.image_std = torch.tensor([float(s) for s in image_std]).view(3, 1, 1)
        self.image_processor = image_processor
        self.augment = bool(augment)
        self.rank, self.world_size = int(rank), int(world_size)
        self.min_images_policy = min_images_policy
        self.load_inputs = load_inputs

        if not isinstance(datasets, Mapping):
            datasets = {DEFAULT_DOMAIN: datasets}
        if not datasets:
            raise ValueError("`datasets` is empty: pass a `datasets.Dataset` or a mapping of domain name → Dataset.")
        self._domains: list[_Domain] = [self._index_domain(str(name), datasets[name]) for name in sorted(datasets)]
        self.domain_probabilities = self._domain_probabilities(domain_weights)

    # ---- set-up

    @property
    def domains(self) -> list[str]:
        """Domain names, sorted (the order of `domain_probabilities`)."""
        return [d.name for d in self._domains]

    @property
    def min_images_per_class(self) -> int:
        """Images a class needs to take part in an episode: `shots + queries`, or 2 for variable episodes."""
        return 2 if self.shape.variable else self.shape.shots + self.shape.queries

    def _index_domain(self, name: str, dataset: Any) -> _Domain:
        """Read the label column of one domain, split its classes, apply `min_images_policy`."""
        shape = self.shape
        if not all(hasattr(dataset, attr) for attr in ("column_names", "select_columns", "with_format")):
            raise TypeError(
                f"Domain {name!r} is a {type(dataset).__name__}; expected a `datasets.Dataset` (map-style: streaming "
                "`IterableDataset`s cannot be indexed by row)."
            )
        for role, column in (("image", self.image_column), ("label", self.label_column)):
            if column not in dataset.column_names:
                raise ValueError(
                    f"Domain {name!r} has no {role} column {column!r}; its columns are {dataset.column_names}. Pass "
                    f"`{role}_column=` with the right name."
                )
        labels = dataset.select_columns([self.label_column]).with_format("arrow")[:].column(self.label_column)
        if labels.null_count:
            raise ValueError(
                f"Domain {name!r}: {labels.null_count} rows have no value in the label column {self.label_column!r}; "
                "drop them first (e.g. `dataset.filter(lambda label: label is not None, input_columns=...)`)."
            )
        if not (pa.types.is_integer(labels.type) or pa.types.is_string(labels.type)
                or pa.types.is_large_string(labels.type) or pa.types.is_boolean(labels.type)):
            raise ValueError(
                f"Domain {name!r}: the label column {self.label_column!r} has type {labels.type}; expected integers, "
                "`ClassLabel` or strings."
            )
        values = labels.to_numpy() if pa.types.is_integer(labels.type) else np.asarray(labels.to_pylist())
        uniques, inverse = np.unique(values, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse.ravel(), minlength=len(uniques)))])
        rows_by_class = {_scalar(c): order[bounds[i] : bounds[i + 1]] for i, c in enumerate(uniques)}

        splits = split_classes(list(rows_by_class), self.split_seed, self.split_fractions)
        split_classes_ = splits[self.split]
        if len(split_classes_) < shape.ways:
            raise ValueError(
                f"Domain {name!r} has {len(split_classes_)} classes in its {self.split!r} split, fewer than "
                f"`ways`={shape.ways}{' (the least number of ways of variable episodes)' if shape.variable else ''}. "
                f"Lower `ways`, change `split_fractions` (now {self.split_fractions}), or leave this domain out."
            )
        needed = self.min_images_per_class
        small = [c for c in split_classes_ if len(rows_by_class[c]) < needed]
        what = "2 (one support and one query image)" if shape.variable else f"shots + queries = {needed}"
        if small and self.min_images_policy == "error":
            listed = ", ".join(f"{c!r} ({len(rows_by_class[c])})" for c in small[:20])
            raise ValueError(
                f"Domain {name!r}, split {self.split!r}: {len(small)} classes have fewer than {what} images: "
                f"{listed}{', ...' if len(small) > 20 else ''}. Lower `shots`/`queries`, or set "
                "`min_images_policy='skip'` to leave such classes out."
            )
        eligible = [c for c in split_classes_ if len(rows_by_class[c]) >= needed]
        if len(eligible) < shape.ways:
            raise ValueError(
                f"Domain {name!r}, split {self.split!r}: only {len(eligible)} of its {len(split_classes_)} classes "
                f"have at least {what} images, fewer than `ways`={shape.ways}. Lower `shots`/`queries`/`ways`, or "
                "leave this domain out."
            )
        if shape.variable and shape.max_support < min(shape.max_ways, len(eligible)):
            raise ValueError(
                f"Domain {name!r}: `max_support`={shape.max_support} cannot hold one support image for each of up to "
                f"{min(shape.max_ways, len(eligible))} ways; raise `max_support` or lower `max_ways`."
            )
        custom = dataset.format.get("type") == "custom"  # a user transform may need every column
        source = dataset if custom else dataset.select_columns([self.image_column])
        return _Domain(
            name=name,
            source=source,
            num_rows=len(dataset),
            class_counts={s: len(splits[s]) for s in SPLITS},
            classes=eligible,
            rows=[rows_by_class[c] for c in eligible],
            skipped=small,
        )

    def _domain_probabilities(self, weights: Mapping[str, float] | None) -> np.ndarray:
        if weights is None:
            return np.full(len(self._domains), 1.0 / len(self._domains))
        unknown = sorted(set(map(str, weights)) - set(self.domains))
        if unknown:
            raise ValueError(f"`domain_weights` names unknown domains {unknown}; the domains are {self.domains}.")
        values = np.array([float(weights.get(name, 0.0)) for name in self.domains])
        if not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
            raise ValueError(
                f"`domain_weights` must be finite, non-negative and not all zero, got {dict(weights)}."
            )
        return values / values.sum()

    # ---- sampling

    def _generators(self, index: int) -> tuple[np.random.Generator, np.random.Generator]:
        """Independent generators for the episode's composition and for its augmentation, from (seed, rank, index)
        only; turning augmentation on or off does not change which images an episode holds."""
        if int(index) < 0:
            raise IndexError(f"Episode indices are non-negative, got {index}.")
        sampling, augmentation = np.random.SeedSequence([self.seed, self.rank, int(index)]).spawn(2)
        return np.random.default_rng(sampling), np.random.default_rng(augmentation)

    def plan(self, index: int) -> EpisodePlan:
        """The domain, classes and dataset rows of episode `index`, without decoding any image.

        Example:

        ```py
        >>> import datasets
        >>> data = datasets.Dataset.from_dict({"image": [[[0]]] * 40, "label": [i % 10 for i in range(40)]})
        >>> sampler = EpisodeSampler(data, ways=5, shots=1, queries=2, split_fractions=(1, 0, 0))
        >>> plan = sampler.plan(3)
        >>> plan.ways, plan.shots, plan.queries
        (5, [1, 1, 1, 1, 1], [2, 2, 2, 2, 2])
        ```
        """
        shape = self.shape
        rng, _ = self._generators(index)
        domain = self._domains[int(rng.choice(len(self._domains), p=self.domain_probabilities))]
        if shape.variable:
            chosen, shots, queries = _variable_composition(
                rng, domain.sizes, shape.ways, shape.max_ways, shape.max_support, shape.max_support_per_class,
                shape.max_queries,
            )
        else:
            chosen, shots, queries = _fixed_composition(rng, domain.sizes, shape.ways, shape.shots, shape.queries)
        support_rows, query_rows = [], []
        for position, num_support in zip(chosen.tolist(), shots.tolist()):
            rows = domain.rows[position]
            picked = rows[rng.choice(len(rows), size=num_support + queries, replace=False)].tolist()
            support_rows.append(picked[:num_support])
            query_rows.append(picked[num_support:])
        classes = [domain.classes[position] for position in chosen.tolist()]
        return EpisodePlan(domain.name, int(index), classes, support_rows, query_rows)

    def episode(self, index: int) -> Episode:
        """Episode `index` of the stream: a function of `(seed, rank, index)` only.

        Support and query images are ordered by label (all of label 0 first).
        """
        plan = self.plan(index)
        _, augmentation_rng = self._generators(index)
        labels = [torch.tensor([k for k, rows in enumerate(part) for _ in rows], dtype=torch.long)
                  for part in (plan.support_rows, plan.query_rows)]
        support = [row for rows in plan.support_rows for row in rows]
        query = [row for rows in plan.query_rows for row in rows]
        pixels = self._inputs(plan.domain, support + query, augmentation_rng)
        return Episode(
            support_pixel_values=pixels[: len(support)],
            support_labels=labels[0],
            query_pixel_values=pixels[len(support) :],
            query_labels=labels[1],
            domain=plan.domain,
            index=plan.index,
            classes=plan.classes,
        )

    def _domain(self, name: str) -> _Domain:
        return self._domains[self.domains.index(name)]

    def pixel_values(self, domain: str, rows: Sequence[int]) -> torch.Tensor:
        """The processed, un-augmented images `[len(rows), 3, H, W]` of dataset rows of one of the sampler's domains
        (or what `load_inputs` makes of them)."""
        if domain not in self.domains:
            raise KeyError(f"Unknown domain {domain!r}; the sampler has {self.domains}.")
        augment, self.augment = self.augment, False
        try:
            return self._inputs(domain, [int(r) for r in rows], None)
        finally:
            self.augment = augment

    def _inputs(self, domain: str, rows: list[int], rng: np.random.Generator | None) -> torch.Tensor:
        """The model inputs of `rows`: from `load_inputs` if given, else the decoded (and augmented) images."""
        if self.load_inputs is None:
            return self._load_pixels(self._domain(domain), rows, rng)
        inputs = self.load_inputs(domain, rows)
        if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point() or inputs.dim() < 1 \
                or inputs.shape[0] != len(rows):
            got = f"a {inputs.dtype} tensor of shape {list(inputs.shape)}" if isinstance(inputs, torch.Tensor) \
                else type(inputs).__name__
            raise ValueError(f"`load_inputs({domain!r}, rows)` must return a float tensor with one input per row "
                             f"({len(rows)}), got {got}.")
        return inputs

    def _load_pixels(self, domain: _Domain, rows: list[int], rng: np.random.Generator) -> torch.Tensor:
        """Decode exactly `rows` of the domain and turn them into a `[len(rows), 3, H, W]` float32 batch."""
        batch = domain.source[rows]
        if self.image_column not in batch:
            raise KeyError(
                f"Domain {domain.name!r}: the dataset's transform returned columns {list(batch)}, without the image "
                f"column {self.image_column!r}; keep it in the transform's output."
            )
        images = [to_rgb_image(value, self.image_column) for value in batch[self.image_column]]
        if self.image_processor is not None:
            if self.augment:
                images = [_tensor_to_image(pixels) for pixels in augment_images(images, rng)]
            pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
            return pixels.to(torch.float32)
        size = (self.image_size, self.image_size)
        if self.augment:
            pixels = augment_images(images, rng, size)
        else:
            pixels = _images_to_tensor(
                [image if image.size == size else image.resize(size, PIL.Image.Resampling.BILINEAR) for image in images]
            )
        return pixels.sub_(self.image_mean).div_(self.image_std)

    # ---- Dataset / DataLoader

    def __len__(self) -> int:
        return self.num_episodes

    def __getitem__(self, index: int) -> Episode:
        index = int(index)
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"Episode index {index} is out of range for a sampler of {self.num_episodes} episodes.")
        return self.episode(index)

    def loader(self, start: int = 0, num_workers: int = 0) -> torch.utils.data.DataLoader:
        """A DataLoader over episodes `start, start + 1, ..., num_episodes - 1`, in that order.

        One episode per item (`batch_size=None`); `num_workers` processes decode episodes ahead. The episodes are
        the same as `episode(i)`'s, whatever `num_workers`, so resuming a run at episode `start` continues its
        stream exactly.
        """
        if not 0 <= start <= self.num_episodes:
            raise ValueError(f"`start` must be in [0, {self.num_episodes}], got {start}.")
        return torch.utils.data.DataLoader(
            self,
            batch_size=None,
            sampler=range(start, self.num_episodes),
            num_workers=num_workers,
            collate_fn=_identity,
        )

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per domain: rows, classes per split, and for this sampler's split the classes it samples from, the
        classes skipped by `min_images_policy`, their images, and the domain's probability.

        Example:

        ```py
        >>> import datasets
        >>> data = datasets.Dataset.from_dict({"image": [[[0]]] * 60, "label": [i % 20 for i in range(60)]})
        >>> EpisodeSampler({"toy": data}, ways=2, shots=1, queries=1).describe()["toy"]["classes"]
        {'train': 14, 'validation': 3, 'test': 3}
        ```
        """
        report = {}
        for domain, probability in zip(self._domains, self.domain_probabilities.tolist()):
            sizes = domain.sizes
            report[domain.name] = {
                "rows": domain.num_rows,
                "classes": dict(domain.class_counts),
                "split": self.split,
                "sampled_classes": len(domain.classes),
                "skipped_classes": list(domain.skipped),
                "images": int(sizes.sum()),
                "min_images_per_class": int(sizes.min()),
                "max_images_per_class": int(sizes.max()),
                "probability": probability,
            }
        return report
