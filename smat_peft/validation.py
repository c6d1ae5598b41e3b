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
"""Checks of user input at the public boundary, with messages that say what was wrong and how to fix it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Union

import torch
from torch import nn


def check_pixel_values(model: nn.Module, pixel_values: torch.Tensor, name: str) -> None:
    """Raise if `pixel_values` is not a finite, non-empty batch on the model's device; for vision configs also check
    `[N, C, H, W]`."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(pixel_values).__name__}.")
    if pixel_values.ndim == 0 or pixel_values.shape[0] == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(pixel_values.shape)}): pass at least one image per class.")
    weight = next(model.parameters(), None)
    if weight is not None and weight.device.type != "meta" and pixel_values.device != weight.device:
        raise ValueError(
            f"`{name}` is on {pixel_values.device} but the model is on {weight.device}; move the images to the "
            f"model's device first (`{name}.to(model.device)`)."
        )
    channels = getattr(getattr(model, "config", None), "num_channels", None)
    # a model whose patch embedding was replaced (the demo's cached frozen prefix) takes hidden states, not pixels
    if channels is not None and not getattr(model, "takes_hidden_states", False):
        if pixel_values.ndim != 4:
            raise ValueError(f"`{name}` must have shape [N, C, H, W], got shape {tuple(pixel_values.shape)}.")
        if pixel_values.shape[1] != channels:
            raise ValueError(
                f"`{name}` has {pixel_values.shape[1]} channels but the model takes {channels} "
                f"(shape {tuple(pixel_values.shape)}); convert the images (e.g. grayscale to RGB) with the model's "
                "image processor."
            )
    if pixel_values.is_floating_point() and not torch.isfinite(pixel_values).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")


def check_support(
    pixel_values: torch.Tensor, labels: torch.Tensor, num_classes: Optional[int] = None
) -> tuple[torch.Tensor, int]:
    """Validate support labels against the images; return them as int64 and the number of classes.

    Labels must be integers in `[0, num_classes)` with at least one image for every class.
    """
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
        raise ValueError(f"`num_classes` must be an int (the number of classes, ways), got {num_classes!r}.")
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"`support_labels` must hold integer class indices, got dtype {labels.dtype}.")
    if labels.ndim != 1:
        raise ValueError(f"`support_labels` must have shape [N], got shape {tuple(labels.shape)}.")
    if labels.numel() == 0:
        raise ValueError("The support set is empty: pass at least one labelled image per class.")
    if isinstance(pixel_values, torch.Tensor) and pixel_values.shape[0] != labels.shape[0]:
        if pixel_values.ndim == 3:
            raise ValueError(
                f"`support_pixel_values` must have shape [N, C, H, W], got shape {tuple(pixel_values.shape)} (3-D). "
                "For a single image add the batch dimension (`images.unsqueeze(0)`); for several, stack them."
            )
        raise ValueError(
            f"`support_pixel_values` has {pixel_values.shape[0]} images but `support_labels` has "
            f"{labels.shape[0]} labels; pass one label per image."
        )
    labels = labels.long().cpu()
    low, high = int(labels.min()), int(labels.max())
    if num_classes is None:
        num_classes = high + 1
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"`support_labels` must be class indices in [0, {num_classes}), got values from {low} to {high}. "
            "Map the episode's classes to 0..num_classes-1."
        )
    counts = torch.bincount(labels, minlength=num_classes)
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(
            f"Classes {missing} have no support image (labels must cover every class in [0, {num_classes})); "
            "relabel the support set so that its classes are 0..num_classes-1 without gaps."
        )
    return labels, num_classes


def format_accuracy(domain: str, value: Union[float, str]) -> str:
    """An accuracy as the model card prints it: a fraction in [0, 1] or a percentage in (1, 100] → `"91.00"`; a
    string (e.g. `"80.1 ± 0.7"`) as it is. Raises for a number outside [0, 100]."""
    if isinstance(value, str):
        return value
    value = float(value)
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"`eval_results[{domain!r}]` must be an accuracy in [0, 1] or [0, 100], got {value}.")
    return f"{100.0 * value if value <= 1.0 else value:.2f}"


def check_eval_results(eval_results: Mapping[str, Union[float, str]]) -> None:
    """Raise if a value of domain → accuracy is neither a string nor an accuracy in [0, 1] or [0, 100]."""
    for domain, value in eval_results.items():
        format_accuracy(domain, value)
