"""Tiny synthetic image domains as 🤗 datasets: each class is a colour and a stripe frequency, plus noise."""

from __future__ import annotations

import datasets
import numpy as np
from PIL import Image


def synthetic_domain(num_classes: int = 30, per_class: int = 8, size: int = 32, seed: int = 0,
                     noise: float = 60.0) -> datasets.Dataset:
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
