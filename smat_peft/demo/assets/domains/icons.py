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
"""The icon domain `icons`: freedesktop icon names across the icon themes of Debian/Ubuntu packages."""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import PIL.Image

from ..archives import SourceTree
from ..dataset_io import MIN_IMAGES_PER_CLASS, Row
from ..errors import AssetError
from ..images import fit_square, on_white, png_bytes
from ..parallel import chunks, parallel_concat, workers
from ..registry import DomainSource, register
from ..sources import SourceArchive, debian_licenses, fetch_debs, read_debs, require_debian
from ..svg import check_librsvg, default_renderer


logger = logging.getLogger(__name__)


ICON_THEMES: dict[str, str] = {
    "Tango": "tango-icon-theme", "oxygen": "oxygen-icon-theme", "gnome": "gnome-icon-theme",
    "breeze": "breeze-icon-theme", "Papirus": "papirus-icon-theme", "Adwaita": "adwaita-icon-theme",
    "elementary": "elementary-icon-theme", "elementary-xfce": "elementary-xfce-icon-theme",
    "Faba": "faba-icon-theme", "Faenza": "faenza-icon-theme", "gnome-human": "gnome-human-icon-theme",
    "gartoon": "gnome-icon-theme-gartoon", "Nuovo": "gnome-icon-theme-nuovo", "Suede": "gnome-icon-theme-suede",
    "yasis": "gnome-icon-theme-yasis", "nuoveXT2": "lxde-icon-theme", "mate": "mate-icon-theme",
    "Moka": "moka-icon-theme", "Numix": "numix-icon-theme", "Obsidian": "obsidian-icon-theme",
    "Paper": "paper-icon-theme", "suru": "suru-icon-theme", "bloom": "deepin-icon-theme",
}
"""Icon theme (folder under `usr/share/icons`) → Debian/Ubuntu package."""

ICON_SIZE: int = 64
ICON_MIN_THEMES: int = 10
_SIZE_DIR = re.compile(r"^(\d+)(?:x(\d+))?(?:@(\d+)x?)?$")
_ICON_SKIP_DIRS = frozenset({"cursors", "animations", "scalable-up-to-32"})


def _icon_candidate(theme_path: str) -> tuple[str, float] | None:
    """(icon name, preference score: lower is better) of a file path inside a theme, or `None` if not an icon."""
    parts = theme_path.split("/")
    name, ext = os.path.splitext(parts[-1])
    if ext not in (".png", ".svg") or name.endswith("-symbolic") or not name:
        return None
    size: int | None = None
    scalable = False
    for part in parts[:-1]:
        if "symbolic" in part or part in _ICON_SKIP_DIRS:
            return None
        match = _SIZE_DIR.match(part)
        if match:
            size = int(match.group(1)) * int(match.group(3) or 1)
        elif part == "scalable":
            scalable = True
    if ext == ".svg" and (scalable or size is None or size >= 32):
        return name, 0.0 if size is None or size >= 48 else 0.5
    if size is None:
        return None
    if size >= 32:
        return name, abs(math.log2(size / ICON_SIZE)) + 0.01
    return name, 10.0 + (32 - size)


def _icon_wanted(path: str) -> bool:
    parts = path.split("/")
    if len(parts) < 5 or parts[:3] != ["usr", "share", "icons"] or parts[3] not in ICON_THEMES:
        return False
    candidate = _icon_candidate("/".join(parts[4:]))
    return candidate is not None and candidate[1] <= 1.01  # SVG, or PNG of 32 to 128 px


def icon_instances(tree: SourceTree, themes: Iterable[str], *, min_themes: int = ICON_MIN_THEMES,
                   min_instances: int = MIN_IMAGES_PER_CLASS) -> dict[str, dict[str, str]]:
    """Choose the icon classes and their files: icon name → {theme: resolved file path}.

    Per theme and icon name, the file of the size closest to 64 px (SVG counts as exact) is taken, after following
    links. A name is a class if it is in at least `min_themes` themes. Names are taken in order of theme count (then
    names stored as files before names that are links); a file already taken by another name in the same theme (an
    alias) or byte-identical to a file already taken is not used again; classes left with fewer than
    `min_instances` themes are dropped.

    Example:
        >>> tree = SourceTree({"usr/share/icons/T/64x64/apps/a.png": b"x"})
        >>> icon_instances(tree, ["T"], min_themes=1, min_instances=1)
        {'a': {'T': 'usr/share/icons/T/64x64/apps/a.png'}}
    """
    best: dict[str, dict[str, tuple[float, str, bool]]] = defaultdict(dict)
    wanted = set(themes)
    for path in tree.paths():
        parts = path.split("/", 4)
        if len(parts) < 5 or parts[:3] != ["usr", "share", "icons"] or parts[3] not in wanted:
            continue
        theme = parts[3]
        candidate = _icon_candidate(parts[4])
        if candidate is None:
            continue
        name, score = candidate
        resolved = tree.resolve(path)
        if resolved is None:
            continue
        current = best[name].get(theme)
        if current is None or (score, resolved) < current[:2]:
            best[name][theme] = (score, resolved, path != resolved)
    # names in more themes first; among equals, names that are real files rather than links (aliases) first
    order = sorted((n for n in best if len(best[n]) >= min_themes),
                   key=lambda n: (-len(best[n]), sum(link for _, _, link in best[n].values()), n))
    used_files: set[tuple[str, str]] = set()
    used_bytes: set[str] = set()
    classes: dict[str, dict[str, str]] = {}
    for name in order:
        chosen: dict[str, str] = {}
        digests: set[str] = set()
        for theme, (_, resolved, _) in sorted(best[name].items()):
            digest = hashlib.sha256(tree.files[resolved]).hexdigest()
            if (theme, resolved) in used_files or digest in used_bytes or digest in digests:
                continue
            chosen[theme] = resolved
            digests.add(digest)
        used_files.update(chosen.items())
        used_bytes.update(digests)
        if len(chosen) >= min_instances:
            classes[name] = chosen
    return dict(sorted(classes.items()))


def render_icon(data: bytes, path: str, size: int = ICON_SIZE) -> PIL.Image.Image:
    """An icon file (PNG or SVG) as a `size` × `size` RGB image on white."""
    if path.endswith(".svg"):
        image = default_renderer().render_document(data, size)
    else:
        with PIL.Image.open(io.BytesIO(data)) as im:
            im.load()
            image = im.copy()
    image = on_white(image)
    if image.size != (size, size):
        image = fit_square(image, size)
    return image.convert("RGB")


def _icon_job(jobs: list[tuple[str, str, str, bytes]]) -> list[Row]:
    rows = []
    for name, theme, path, data in jobs:
        try:
            image = render_icon(data, path)
        except (AssetError, OSError, ValueError, PIL.Image.DecompressionBombError) as exc:
            logger.info("icons: %s (%s) left out: %s", name, theme, exc)
            continue
        rows.append(Row(png_bytes(image), name, theme))
    return rows


def icon_rows(tree: SourceTree, progress: bool = False, themes: Iterable[str] | None = None,
              min_themes: int = ICON_MIN_THEMES) -> list[Row]:
    """Rows of the icon domain: class = freedesktop icon name, instance = theme (see [`icon_instances`]).

    Example:
        >>> rows = icon_rows(tree)  # doctest: +SKIP
    """
    themes = list(ICON_THEMES if themes is None else themes)
    classes = icon_instances(tree, themes, min_themes=min_themes)
    jobs = [(name, theme, path, tree.files[path]) for name, chosen in classes.items() for theme, path in chosen.items()]
    return parallel_concat(_icon_job, chunks(jobs, 8 * workers()), desc="icons", progress=progress)


def _icon_source() -> DomainSource:
    packages = tuple(dict.fromkeys(ICON_THEMES.values()))

    def rows(downloads: Path, progress: bool) -> tuple[list[Row], list[SourceArchive], dict[str, bytes]]:
        require_debian("icons", packages)
        check_librsvg("icons")
        archives = fetch_debs(packages, downloads, domain="icons")
        tree = read_debs(archives, _icon_wanted, progress, "reading icon themes")
        return icon_rows(tree, progress), archives, debian_licenses(tree, archives)

    return DomainSource(
        name="icons", title="Icon themes (icon names across themes)",
        description="Desktop icons: class = freedesktop icon name (e.g. folder, edit-copy, audio-x-generic) present "
                    f"in at least {ICON_MIN_THEMES} of 23 icon themes, instance = theme (Tango, Oxygen, GNOME, "
                    "Breeze, Papirus, Adwaita, elementary, Faenza, Numix, Paper, ...); the size closest to 64 px, "
                    "SVGs rendered with librsvg; aliases and byte-identical copies left out.",
        registry="debian", packages=packages, license_id="other",
        license_text="Icon themes under their own licences: GPL-2/GPL-3/LGPL-3 (Oxygen, Breeze, GNOME, elementary, "
                     "Faenza, Numix, ...), CC-BY-SA (Papirus, Paper, Moka, Faba, Adwaita (CC-BY-SA-3.0 or "
                     "LGPL-3)), public domain (Tango). The `instance` column names the theme. Exact terms and "
                     "authors are in LICENSES/.",
        rows=rows, image_size=f"{ICON_SIZE} × {ICON_SIZE} RGB",
    )


register(_icon_source())
