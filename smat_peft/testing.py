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
"""Synthetic image domains for tests, benchmarks and examples (like `transformers.testing_utils`)."""

from __future__ import annotations

import datasets
import numpy as np
from PIL import Image


def synthetic_domain(num_classes: int = 30, per_class: int = 8, size: int = 32, seed: int = 0,
                     noise: float = 60.0) -> datasets.Dataset:
    """A 🤗 dataset of `num_classes` classes: each a colour and a stripe frequency, plus Gaussian pixel noise.

    Example:

    ```py
    >>> ds = synthetic_domain(num_classes=3, per_class=2, size=8)
    >>> ds.num_rows, ds.column_names
    (6, ['image', 'label'])
    ```
    """
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(num_classes):
        colour = rng.integers(0, 255, 3)
        frequency = rng.integers(1, 6)
        stripes = np.sin(np.linspace(0, 2 * np.pi * frequency, size))[None, :, None] * 60
        for _ in range(per_class):
            pixels = stripes + colour[None, None, :] + rng.normal(0, noise, (size, size, 3))
            images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
            labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
