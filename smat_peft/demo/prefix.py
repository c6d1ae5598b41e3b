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
"""A frozen prefix of the backbone, computed once per image: what makes the demo fit a laptop CPU.

The demo adapts only the last blocks of the ViT (SMAT, PMF and the random-mask control alike). The first
`frozen_layers` blocks never change, so their output for every image is computed once, stored under the cache
directory, and the model runs from there: [`skip_frozen_prefix`] replaces the patch embeddings and the frozen
blocks by pass-throughs, so `model(pixel_values=activations)` runs only the adapted blocks, and
[`CachedActivations`] gives samplers and the trainer those activations instead of pixels (`load_inputs=`). Module
names are unchanged, so an adapter trained this way loads onto the full `Dinov2Model`.

Training episodes are therefore not augmented (augmentation happens in pixel space, before the cached blocks).

Example:

```py
>>> import torch
>>> from transformers import Dinov2Config, Dinov2Model
>>> model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
...                                  intermediate_size=64, image_size=28, patch_size=14)).eval()
>>> pixels = torch.randn(2, 3, 28, 28)
>>> hidden = prefix_activations(model, pixels, frozen_layers=2)
>>> full = model(pixel_values=pixels).pooler_output
>>> skip_frozen_prefix(model, frozen_layers=2)
>>> torch.allclose(model(pixel_values=hidden).pooler_output, full, atol=1e-5)
True
```
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..atomic_io import atomic_write
from ..training.episodes import EpisodeSampler


class PassThrough(nn.Module):
    """Returns its first input unchanged: stands in for a frozen, cached part of the backbone."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


def _blocks(model: nn.Module) -> nn.ModuleList:
    encoder = getattr(model, "encoder", None)
    if encoder is None or not isinstance(getattr(encoder, "layer", None), nn.ModuleList) or not hasattr(model, "embeddings"):
        raise TypeError(
            f"{type(model).__name__} has no `embeddings` and `encoder.layer`; the frozen-prefix cache supports "
            "ViT-style transformers backbones such as Dinov2Model and ViTModel."
        )
    return encoder.layer


def _check_layers(model: nn.Module, frozen_layers: int) -> nn.ModuleList:
    blocks = _blocks(model)
    if not 0 <= frozen_layers < len(blocks):
        raise ValueError(f"`frozen_layers` must be in [0, {len(blocks) - 1}] for this {len(blocks)}-block model, "
                         f"got {frozen_layers}.")
    return blocks


@torch.no_grad()
def prefix_activations(model: nn.Module, pixel_values: torch.Tensor, frozen_layers: int) -> torch.Tensor:
    """Hidden states `[N, tokens, hidden]` entering block `frozen_layers` (the embeddings for 0)."""
    blocks = _check_layers(model, frozen_layers)
    hidden = model.embeddings(pixel_values)
    for block in blocks[:frozen_layers]:
        hidden = block(hidden)
    return hidden


def skip_frozen_prefix(model: nn.Module, frozen_layers: int) -> nn.Module:
    """Make `model(pixel_values=h)` take the activations `h` of [`prefix_activations`] instead of pixels.

    The embeddings and the first `frozen_layers` blocks become [`PassThrough`] modules (in place; returns the model).
    Do this before `get_smat_model` or after: the adapted blocks keep their names.
    """
    blocks = _check_layers(model, frozen_layers)
    model.embeddings = PassThrough()
    for index in range(frozen_layers):
        blocks[index] = PassThrough()
    model.takes_hidden_states = True  # read by `check_pixel_values`
    return model


def _cache_key(backbone_dir: str, domain: str, num_rows: int, image_size: int, frozen_layers: int) -> str:
    manifest = Path(backbone_dir) / "manifest.json"
    backbone = manifest.read_text() if manifest.exists() else os.path.abspath(backbone_dir)
    text = json.dumps([backbone, domain, num_rows, image_size, frozen_layers])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_prefix_activations(
    model: nn.Module,
    datasets: dict[str, Any],
    *,
    backbone_dir: str,
    cache: Path,
    image_size: int,
    frozen_layers: int,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Per domain, the frozen-prefix activations of every row (bf16), computed once and kept under `cache`.

    `model` must still be the full backbone. Files are keyed by the backbone's manifest, the domain's size, the image
    size and `frozen_layers`, and written atomically, so an interrupted run recomputes only what is missing.
    """
    out = {}
    cache.mkdir(parents=True, exist_ok=True)
    for name, dataset in datasets.items():
        path = cache / f"{name}-{_cache_key(backbone_dir, name, len(dataset), image_size, frozen_layers)}.safetensors"
        if path.exists():
            out[name] = load_file(path)["activations"]
            continue
        reader = EpisodeSampler({name: dataset}, split_fractions=(1.0, 0.0, 0.0), ways=1, shots=1, queries=1,
                                image_size=image_size)
        chunks = []
        rows = list(range(len(dataset)))
        for start in tqdm(range(0, len(rows), batch_size), desc=f"caching {name} (first {frozen_layers} blocks)",
                          disable=not progress):
            pixels = reader.pixel_values(name, rows[start:start + batch_size])
            chunks.append(prefix_activations(model, pixels, frozen_layers).to(torch.bfloat16))
        activations = torch.cat(chunks)
        atomic_write(path, lambda tmp: save_file({"activations": activations}, tmp))
        out[name] = activations
    return out


class CachedActivations:
    """Cached prefix activations as an [`EpisodeSampler`]'s `load_inputs`: episodes then hold activations instead of
    pixels (un-augmented; the sampler refuses `augment=True`).

    Args:
        activations (`dict[str, torch.Tensor]`): Per domain, `[rows, tokens, hidden]` activations, one per dataset row
            (those of [`cached_prefix_activations`]).

    Example: `EpisodeSampler(domains, shape, load_inputs=CachedActivations(activations))`, or
    `SmatMetaTrainer(model, args, train_datasets=domains, load_inputs=CachedActivations(activations))`.
    """

    def __init__(self, activations: dict[str, torch.Tensor]) -> None:
        self.activations = activations

    def __call__(self, domain: str, rows: list[int]) -> torch.Tensor:
        """The activations `[len(rows), tokens, hidden]` of `rows` of `domain`, as float32."""
        if domain not in self.activations:
            raise KeyError(f"No cached activations for domain {domain!r}; there are {sorted(self.activations)}.")
        return self.activations[domain][rows].to(torch.float32)
