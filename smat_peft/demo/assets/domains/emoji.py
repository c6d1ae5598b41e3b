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
"""The emoji domains `emoji_google` and `emoji_twitter`, from the npm packages `emoji-datasource-<vendor>`."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import PIL.Image

from ..archives import SourceTree
from ..dataset_io import Row
from ..errors import AssetError
from ..images import fit_square, on_white, png_bytes
from ..registry import DomainSource, register
from ..sources import SourceArchive, fetch_npm


EMOJI_VERSION: str = "16.0.0"
EMOJI_SIZE: int = 64
EMOJI_MAX_PER_CLASS: int = 60


def emoji_rows(tgz: str | os.PathLike, vendor: str) -> list[Row]:
    """Rows of one emoji vendor from an `emoji-datasource-<vendor>` npm tarball: every emoji that has an image of
    this vendor (skin-tone variants left out), class = Unicode sub-category, instance = the emoji's short name.
    Images are 64 × 64 RGB on white.

    Example:
        >>> rows = emoji_rows("emoji-datasource-google-16.0.0.tgz", "google")  # doctest: +SKIP
    """
    prefix = f"package/img/{vendor}/64/"
    tree = SourceTree.from_archive(tgz, lambda p: p == "package/emoji.json" or (p.startswith(prefix)
                                                                                and p.endswith(".png")))
    if "package/emoji.json" not in tree.files:
        raise AssetError(f"{tgz}: package/emoji.json not found; not an emoji-datasource package?")
    rows = []
    for entry in json.loads(tree.files["package/emoji.json"]):
        path = prefix + str(entry.get("image", ""))
        if not entry.get(f"has_img_{vendor}") or path not in tree.files:
            continue
        with PIL.Image.open(io.BytesIO(tree.files[path])) as im:
            image = on_white(im)
        if image.size != (EMOJI_SIZE, EMOJI_SIZE):
            image = fit_square(image, EMOJI_SIZE)
        rows.append(Row(png_bytes(image), str(entry["subcategory"]), str(entry.get("short_name") or entry["image"])))
    return rows


def _emoji_source(vendor: str, license_id: str, license_text: str) -> DomainSource:
    package = f"emoji-datasource-{vendor}"

    def rows(downloads: Path, progress: bool) -> tuple[list[Row], list[SourceArchive], dict[str, bytes]]:
        archive = fetch_npm(package, EMOJI_VERSION, downloads, domain=f"emoji_{vendor}")
        tree = SourceTree.from_archive(archive.path, lambda p: p in ("package/LICENSE", "package/README.md"))
        licenses = {f"{package}.LICENSE": tree.files.get("package/LICENSE", b"")}
        return emoji_rows(archive.path, vendor), [archive], licenses

    return DomainSource(
        name=f"emoji_{vendor}",
        title=f"Emoji ({vendor.capitalize()})",
        description=(f"{vendor.capitalize()} emoji images (64 × 64) from the npm package {package}@{EMOJI_VERSION}; "
                     "class = Unicode emoji sub-category (e.g. animal-mammal, food-fruit), one image per emoji "
                     "(skin-tone variants left out)."),
        registry="npm",
        packages=(f"{package}@{EMOJI_VERSION}",),
        license_id=license_id,
        license_text=license_text,
        rows=rows,
        max_images_per_class=EMOJI_MAX_PER_CLASS,
        image_size=f"{EMOJI_SIZE} × {EMOJI_SIZE} RGB",
    )


register(_emoji_source(
    "google", "apache-2.0",
    "Emoji images: Google Noto Emoji, © Google Inc., Apache License 2.0 "
    "(https://github.com/googlefonts/noto-emoji). Emoji metadata and packaging: emoji-datasource by Cal Henderson "
    "(iamcal/emoji-data), MIT licence.",
))
register(_emoji_source(
    "twitter", "cc-by-4.0",
    "Emoji images: Twemoji, © Twitter, Inc. and other contributors (graphics maintained at jdecked/twemoji), "
    "licensed under CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/); attribution is required when you "
    "share images from this dataset. Emoji metadata and packaging: emoji-datasource by Cal Henderson "
    "(iamcal/emoji-data), MIT licence.",
))
