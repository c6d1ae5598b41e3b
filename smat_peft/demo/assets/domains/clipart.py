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
"""The clip-art domain `clipart`: Open Clip Art Library drawings from the Debian/Ubuntu package `openclipart-png`."""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import PIL.Image

from ..archives import SourceTree
from ..dataset_io import Row
from ..images import fit_square, on_white, png_bytes
from ..parallel import chunks, parallel_concat, workers
from ..registry import DomainSource, register
from ..sources import SourceArchive, debian_licenses, fetch_debs, read_debs


logger = logging.getLogger(__name__)


CLIPART_PACKAGE: str = "openclipart-png"
CLIPART_ROOT: str = "usr/share/openclipart/png/"
CLIPART_SIZE: int = 96
CLIPART_MAX_PER_CLASS: int = 60
CLIPART_MAX_PIXELS: int = 30_000_000
CLIPART_EXCLUDED: tuple[str, ...] = ("special", "unsorted", "computer/icons", "recreation/games", "buttons", "logos",
                                     "recreation/art")


def clipart_class(path: str) -> str | None:
    """Class of an openclipart PNG: its first two folder levels (e.g. `animals/birds`), or `None` if excluded.

    Example:
        >>> clipart_class("usr/share/openclipart/png/animals/birds/owl.png")
        'animals/birds'
        >>> clipart_class("usr/share/openclipart/png/animals/cat.png") is None
        True
    """
    if not path.startswith(CLIPART_ROOT) or not path.endswith(".png"):
        return None
    parts = path[len(CLIPART_ROOT):].split("/")
    if len(parts) < 3:
        return None
    name = "/".join(parts[:2])
    if parts[0] in CLIPART_EXCLUDED or name in CLIPART_EXCLUDED:
        return None
    return name


def _clipart_job(jobs: list[tuple[str, str, bytes]]) -> list[Row]:
    rows = []
    old_limit = PIL.Image.MAX_IMAGE_PIXELS
    PIL.Image.MAX_IMAGE_PIXELS = CLIPART_MAX_PIXELS  # checked before opening; some files are 13,000 px wide
    try:
        for name, path, data in jobs:
            try:
                with PIL.Image.open(io.BytesIO(data)) as im:
                    im.thumbnail((4 * CLIPART_SIZE, 4 * CLIPART_SIZE), PIL.Image.Resampling.BILINEAR,
                                 reducing_gap=2.0)
                    image = on_white(im)
            except (OSError, ValueError, PIL.Image.DecompressionBombError) as exc:
                logger.info("clipart: %s left out: %s", path, exc)
                continue
            box = _nonwhite_box(image)
            if box is None:
                continue
            image = fit_square(image.crop(box).convert("RGB"), CLIPART_SIZE, margin=0.04)
            rows.append(Row(png_bytes(image), name, Path(path).stem))
    finally:
        PIL.Image.MAX_IMAGE_PIXELS = old_limit
    return rows


def _nonwhite_box(image: PIL.Image.Image) -> tuple[int, int, int, int] | None:
    from PIL import ImageOps

    return ImageOps.invert(image.convert("L")).getbbox()


def clipart_selection(sizes: dict[str, tuple[int, int]], max_per_class: int = CLIPART_MAX_PER_CLASS,
                      max_pixels: int = CLIPART_MAX_PIXELS) -> dict[str, list[str]]:
    """Class → chosen file paths: files of at most `max_pixels` pixels, at most `max_per_class` per class, evenly
    spaced over the sorted paths.

    Example:
        >>> clipart_selection({"usr/share/openclipart/png/a/b/x.png": (10, 10)})
        {'a/b': ['usr/share/openclipart/png/a/b/x.png']}
    """
    by_class: dict[str, list[str]] = defaultdict(list)
    for path in sorted(sizes):
        name = clipart_class(path)
        width, height = sizes[path]
        if name is not None and width * height <= max_pixels:
            by_class[name].append(path)
    out = {}
    for name in sorted(by_class):
        paths = by_class[name]
        if len(paths) > max_per_class:
            picks = sorted({int(round(i)) for i in np.linspace(0, len(paths) - 1, max_per_class)})
            paths = [paths[i] for i in picks]
        out[name] = paths
    return out


def _png_size(data: bytes) -> tuple[int, int]:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return (1 << 30, 1 << 30)  # not a PNG: never chosen


def clipart_rows(tree: SourceTree, progress: bool = False) -> list[Row]:
    """Rows of the clip-art domain: class = category folder, instance = file name.

    Example:
        >>> rows = clipart_rows(tree)  # doctest: +SKIP
    """
    sizes = {p: _png_size(b) for p, b in tree.files.items() if clipart_class(p) is not None}
    chosen = clipart_selection(sizes)
    jobs = [(name, path, tree.files[path]) for name, paths in chosen.items() for path in paths]
    return parallel_concat(_clipart_job, chunks(jobs, 8 * workers()), desc="clipart", progress=progress)


def _clipart_source() -> DomainSource:
    def rows(downloads: Path, progress: bool) -> tuple[list[Row], list[SourceArchive], dict[str, bytes]]:
        archives = fetch_debs((CLIPART_PACKAGE,), downloads, domain="clipart")
        tree = read_debs(archives, lambda p: clipart_class(p) is not None, progress, "reading clip art")
        return clipart_rows(tree, progress), archives, debian_licenses(tree, archives)

    return DomainSource(
        name="clipart", title="Clip art (openclipart categories)",
        description="Open Clip Art Library drawings (Debian/Ubuntu package openclipart-png): class = category "
                    "folder (first two levels, e.g. animals/birds, food/fruit), at most "
                    f"{CLIPART_MAX_PER_CLASS} drawings per class; generic, unsorted and logo folders left out.",
        registry="debian", packages=(CLIPART_PACKAGE,), license_id="other",
        license_text="Open Clip Art Library drawings, dedicated to the public domain by their authors (Creative "
                     "Commons Public Domain Dedication); see LICENSES/.",
        rows=rows, max_images_per_class=CLIPART_MAX_PER_CLASS,
        image_size=f"{CLIPART_SIZE} × {CLIPART_SIZE} RGB",
    )


register(_clipart_source())
