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
"""Dataset IO: rows → a domain's `datasets.Dataset`, saved with card, licences and checksums, loaded memory-mapped."""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ...atomic_io import file_sha256, folder_checksums, staged_folder
from .errors import AssetError, ChecksumError


FORMAT_VERSION: int = 1
"""Version of the saved dataset layout; part of each dataset's directory name."""

MIN_IMAGES_PER_CLASS: int = 5
"""Classes with fewer images than this are left out of a domain (too few for a few-shot episode)."""


@dataclass(frozen=True)
class Row:
    """One image of a domain before the dataset is made: encoded PNG bytes, class name and instance."""

    png: bytes
    class_name: str
    instance: str


def dataset_features(class_names: Sequence[str]) -> datasets.Features:
    """The features of every domain: image, label (`ClassLabel`), class_name, domain, instance."""
    return datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=list(class_names)),
        "class_name": datasets.Value("string"),
        "domain": datasets.Value("string"),
        "instance": datasets.Value("string"),
    })


def dataset_from_rows(
    rows: Iterable[Row],
    domain: str,
    *,
    min_images: int = MIN_IMAGES_PER_CLASS,
    max_images: int | None = None,
) -> datasets.Dataset:
    """Make a domain's `datasets.Dataset` from its rows, deterministically.

    Within a class, byte-identical images are kept once; an image found in two or more classes (e.g. a placeholder,
    or Greek omicron and Cyrillic o drawn by the same font) is ambiguous and dropped from all of them. Classes with
    fewer than `min_images` images are dropped; classes with more than `max_images` keep an evenly spaced selection.
    Labels number the sorted class names; rows are ordered by (class name, instance, image bytes), whatever order
    the rows came in.

    Example:
        >>> import PIL.Image
        >>> rows = [Row(png_bytes(PIL.Image.new("L", (8, 8), v)), c, str(v)) for c in "ab" for v in range(3)]
        >>> ds = dataset_from_rows(rows, "toy", min_images=2)
        >>> ds.features["label"].names, len(ds)
        (['a', 'b'], 6)
    """
    by_class: dict[str, dict[bytes, Row]] = defaultdict(dict)
    for row in rows:
        by_class[row.class_name].setdefault(row.png, row)
    classes_of: dict[bytes, int] = defaultdict(int)
    for items_by_png in by_class.values():
        for png in items_by_png:
            classes_of[png] += 1
    kept: dict[str, list[Row]] = {}
    for name in sorted(by_class):
        unique = [r for r in by_class[name].values() if classes_of[r.png] == 1]
        items = sorted(unique, key=lambda r: (r.instance, hashlib.sha1(r.png).hexdigest()))
        if len(items) < min_images:
            continue
        if max_images is not None and len(items) > max_images:
            picks = sorted({int(round(i)) for i in np.linspace(0, len(items) - 1, max_images)})
            items = [items[i] for i in picks]
        kept[name] = items
    if not kept:
        raise AssetError(f"{domain}: no class has {min_images} or more images")
    names = list(kept)
    columns: dict[str, list[Any]] = {"image": [], "label": [], "class_name": [], "domain": [], "instance": []}
    for label, name in enumerate(names):
        for row in kept[name]:
            columns["image"].append({"bytes": row.png, "path": None})
            columns["label"].append(label)
            columns["class_name"].append(name)
            columns["domain"].append(domain)
            columns["instance"].append(row.instance)
    return datasets.Dataset.from_dict(columns, features=dataset_features(names))


MANIFEST_NAME: str = "manifest.json"


def save_dataset(
    dataset: datasets.Dataset,
    path: str | os.PathLike,
    *,
    card: str,
    manifest: dict[str, Any],
    licenses: dict[str, bytes] | None = None,
) -> None:
    """Save a domain atomically: `save_to_disk`, the dataset card (`README.md`), licence files (`LICENSES/`), and
    `manifest.json` with the SHA-256 of every saved file (checked by [`load_dataset`]).

    Example:
        >>> save_dataset(ds, "/tmp/toy", card="# toy", manifest={"domain": "toy"})  # doctest: +SKIP
    """
    path = Path(path)
    with staged_folder(path) as tmp:
        dataset.save_to_disk(str(tmp))
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if licenses:
            (tmp / "LICENSES").mkdir()
            for name, text in sorted(licenses.items()):
                (tmp / "LICENSES" / name).write_bytes(text)
        files = folder_checksums(tmp)
        full = dict(manifest, format_version=FORMAT_VERSION, num_rows=len(dataset),
                    num_classes=dataset.features["label"].num_classes, files=files)
        (tmp / MANIFEST_NAME).write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_dataset(path: str | os.PathLike) -> datasets.Dataset:
    """Load a domain saved by [`save_dataset`] (memory-mapped), after checking every file against its manifest.

    Raises [`ChecksumError`] naming the file if one was changed, and [`AssetError`] if the manifest is missing.

    Example:
        >>> ds = load_dataset(cache_dir() / "datasets" / "mnist-v1")  # doctest: +SKIP
    """
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.exists():
        raise AssetError(f"{path} has no {MANIFEST_NAME}: it was not saved by smat_peft.demo.assets; "
                         "delete it and build again")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for name, expected in manifest.get("files", {}).items():
        file = path / name
        if not file.exists():
            raise ChecksumError(f"{file} is missing from the saved dataset; rebuild with force=True")
        if file_sha256(file) != expected:
            raise ChecksumError(f"{file} does not match the checksum recorded when it was built (it was modified "
                                "or corrupted); rebuild with force=True")
    return datasets.load_from_disk(str(path))


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The `manifest.json` of a saved domain or backbone directory."""
    return json.loads((Path(path) / MANIFEST_NAME).read_text(encoding="utf-8"))


def class_counts(dataset: datasets.Dataset) -> tuple[int, int, int, float]:
    """(number of classes, fewest, most and median images per class) of a domain."""
    labels = np.asarray(dataset.data.column("label").to_numpy())
    counts = np.bincount(labels, minlength=dataset.features["label"].num_classes)
    return len(counts), int(counts.min()), int(counts.max()), float(np.median(counts))
