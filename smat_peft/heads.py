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
"""The cosine ProtoNet head: class prototypes of support features, scaled cosine similarity as logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean feature `[num_classes, D]` of each class (differentiable w.r.t. `features`).

    Example:

    ```py
    >>> class_prototypes(torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0, 1]), 2)
    tensor([[2., 0.],
            [0., 2.]])
    ```
    """
    one_hot = F.one_hot(labels.to(features.device), num_classes).to(features.dtype)  # [N, C]
    return (one_hot.T @ features) / one_hot.sum(0)[:, None]


def cosine_logits(features: torch.Tensor, prototypes: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    """`scale · cos(feature, prototype)` for every pair: `[N, num_classes]`."""
    return scale * F.normalize(features.float(), dim=-1) @ F.normalize(prototypes.float(), dim=-1).T
