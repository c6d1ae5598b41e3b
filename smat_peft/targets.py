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
"""Where SMAT goes in a model: default target modules per `model_type`, and the support features the router reads.

Module names are those of transformers 5.x, which renamed the ViT family's `query`/`key`/`value`/`output.dense`
to `q_proj`/`k_proj`/`v_proj`/`o_proj`.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional

import torch
from torch import nn


_ATTENTION_AND_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]

# Attention q/k/v/output projections and MLP linears. Classifier heads are never in these lists.
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "vit": _ATTENTION_AND_MLP,
    "deit": _ATTENTION_AND_MLP,
    "beit": _ATTENTION_AND_MLP,
    "data2vec-vision": _ATTENTION_AND_MLP,
    "dinov2": _ATTENTION_AND_MLP,
    "dinov2_with_registers": _ATTENTION_AND_MLP,
    "dinov3_vit": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
    "clip_vision_model": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "siglip_vision_model": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "swin": _ATTENTION_AND_MLP,
}

# Modules never adapted by `target_all_parameters=True`: task heads are trained by the ProtoNet head or
# `modules_to_save`, not masked.
CLASSIFIER_NAMES = ("classifier", "lm_head")

# For these types `pooler_output` is a freshly initialised tanh layer in most checkpoints, not the image
# embedding: use the class token instead.
_CLS_TOKEN_TYPES = ("vit", "deit")

FeatureFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def parameter_units(model: nn.Module) -> list[str]:
    """Names of the modules that `target_all_parameters=True` adapts: every outermost module owning parameters.

    A module that owns parameters directly (e.g. ViT's `embeddings`, with the class token and position embeddings)
    is adapted as one unit together with its children (the patch projection); the classifier is left out.
    """
    units: list[str] = []
    skipped: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in units + skipped):
            continue
        if name.rsplit(".", 1)[-1] in CLASSIFIER_NAMES:
            skipped.append(name)
            continue
        if next(module.parameters(recurse=False), None) is not None:
            units.append(name)
    return units


def reads_weights_directly(model: nn.Module, key: str) -> bool:
    """Whether the module at `key` is a child whose weights its parent reads without calling it.

    `nn.MultiheadAttention` passes `out_proj.weight` to a functional kernel: wrapping `out_proj` would do nothing.
    """
    parent_name = key.rpartition(".")[0]
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        return False
    return isinstance(parent, nn.MultiheadAttention)


def infer_feature_dim(model: nn.Module) -> Optional[int]:
    """Size of the image features [`default_features`] returns, from the model's transformers config."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        return None
    if config.model_type == "swin":
        return int(config.embed_dim * 2 ** (len(config.depths) - 1))
    if getattr(config, "hidden_size", None):
        return config.hidden_size
    sizes = getattr(config, "hidden_sizes", None)  # convolutional backbones (ResNet, ConvNeXt)
    return sizes[-1] if sizes else None


def default_features(model: nn.Module, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
    """Image features `[N, D]` of a batch: the pooled output of transformers vision models, else the model's output.

    For ViT and DeiT the class token of the last hidden state is used, since their pooler is usually untrained.
    """
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "model_type"):
        # `base_model` is the headless backbone of task models (ViTForImageClassification.vit); for DINOv3 it is
        # the encoder, which does not take pixels.
        backbone = getattr(model, "base_model", model)
        if "pixel_values" not in inspect.signature(backbone.forward).parameters:
            backbone = model
        out = backbone(pixel_values=pixel_values, **kwargs)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None and config.model_type not in _CLS_TOKEN_TYPES:
            return pooled.flatten(1)
        return out.last_hidden_state[:, 0]
    out = model(pixel_values, **kwargs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"The model returned {type(out).__name__}, not a tensor of features; pass a feature function with "
            "`model.set_feature_fn(fn)`, where fn(model, pixel_values) returns [N, D] features."
        )
    return out.flatten(1)
