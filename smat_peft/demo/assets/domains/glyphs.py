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
"""The glyph domain `glyphs`: letters of six scripts rendered from the fonts of Debian/Ubuntu font packages."""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ..dataset_io import Row
from ..errors import SourceUnavailableError
from ..images import fit_square, png_bytes
from ..parallel import parallel_concat
from ..registry import DomainSource, register
from ..sources import SourceArchive, debian_licenses, fetch_debs, read_debs, require_debian


logger = logging.getLogger(__name__)


GLYPH_PACKAGES: tuple[str, ...] = (
    "fonts-noto-core", "fonts-dejavu-core", "fonts-dejavu-extra", "fonts-freefont-ttf", "fonts-urw-base35",
    "fonts-cmu", "fonts-linuxlibertine", "fonts-stix", "fonts-ebgaramond", "fonts-croscore", "fonts-liberation",
    "fonts-liberation2", "fonts-sil-charis", "fonts-sil-gentium", "fonts-sil-andika", "fonts-sil-annapurna",
    "fonts-junicode", "fonts-cardo", "fonts-mph-2b-damase", "fonts-inter", "fonts-go", "fonts-play", "fonts-jura",
    "fonts-gfs-artemisia", "fonts-gfs-baskerville", "fonts-gfs-bodoni-classic", "fonts-gfs-complutum",
    "fonts-gfs-didot", "fonts-gfs-didot-classic", "fonts-gfs-gazis", "fonts-gfs-neohellenic", "fonts-gfs-olga",
    "fonts-gfs-porson", "fonts-gfs-solomos", "fonts-gfs-theokritos", "fonts-bpg-georgian", "fonts-lohit-deva",
    "fonts-samyak-deva", "fonts-sarai", "fonts-gargi", "fonts-nakula", "fonts-sahadeva",
)

SCRIPTS: dict[str, tuple[str, ...]] = {
    "greek": tuple(chr(c) for c in range(0x03B1, 0x03CA) if c != 0x03C2),  # α..ω without final sigma: 24
    "cyrillic": tuple(chr(c) for c in range(0x0430, 0x0450)),  # а..я: 32
    "armenian": tuple(chr(c) for c in range(0x0561, 0x0587)),  # ա..ֆ: 38
    "georgian": tuple(chr(c) for c in range(0x10D0, 0x10F1)),  # ა..ჰ: 33
    "hebrew": tuple(chr(c) for c in range(0x05D0, 0x05EB)),  # א..ת with final forms: 27
    "devanagari": tuple(chr(c) for c in range(0x0915, 0x093A)),  # consonants क..ह: 37
}
"""The letters of each script used by the glyph domain (191 classes)."""

GLYPH_FONTS_PER_SCRIPT: int = 20
GLYPH_POINT_SIZE: int = 48
GLYPH_SIZE: int = 64
_REGULAR_STYLES = ("regular", "book", "roman", "normal", "medium")
GLYPH_DECORATIVE_WORDS: tuple[str, ...] = ("Keyboard",)
"""Families whose name holds one of these words are left out (Linux Biolinum Keyboard draws letters on key caps)."""


@dataclass(frozen=True)
class FontFace:
    path: str
    family: str
    style: str
    scripts: tuple[str, ...]


def font_faces(fonts: dict[str, bytes], scripts: dict[str, Sequence[str]] = SCRIPTS) -> list[FontFace]:
    """Inspect font files (path → bytes) with fontTools: family, style and the scripts whose letters the font maps
    all of. Unreadable files are skipped.

    Example:
        >>> data = open("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "rb").read()  # doctest: +SKIP
        >>> faces = font_faces({"DejaVuSans.ttf": data})  # doctest: +SKIP
    """
    from fontTools.ttLib import TTFont, TTLibError

    faces = []
    for path in sorted(fonts):
        try:
            font = TTFont(io.BytesIO(fonts[path]), lazy=True, fontNumber=0)
            cmap = font.getBestCmap() or {}
            names = font["name"]
            family = names.getBestFamilyName() or Path(path).stem
            style = names.getBestSubFamilyName() or ""
        except (TTLibError, KeyError, ValueError, AssertionError, struct.error) as exc:
            logger.info("skipping unreadable font %s: %s", path, exc)
            continue
        covered = tuple(s for s, letters in scripts.items() if all(ord(ch) in cmap for ch in letters))
        if covered:
            faces.append(FontFace(path, str(family), str(style), covered))
    return faces


def choose_fonts(faces: Sequence[FontFace], per_script: int = GLYPH_FONTS_PER_SCRIPT) -> dict[str, list[FontFace]]:
    """One face per family (a regular style preferred; decorative families left out), then at most `per_script`
    families per script, evenly spaced over the families sorted by name.

    Example:
        >>> f = [FontFace("A-Bold.ttf", "A", "Bold", ("greek",)), FontFace("A-Regular.ttf", "A", "Regular", ("greek",))]
        >>> [x.path for x in choose_fonts(f)["greek"]]
        ['A-Regular.ttf']
    """
    best: dict[str, FontFace] = {}
    for face in sorted(faces, key=lambda f: (f.family, f.style.lower() not in _REGULAR_STYLES, len(f.path), f.path)):
        if not any(word in face.family for word in GLYPH_DECORATIVE_WORDS):
            best.setdefault(face.family, face)
    chosen: dict[str, list[FontFace]] = {}
    for script in SCRIPTS:
        families = [best[f] for f in sorted(best) if script in best[f].scripts]
        if len(families) > per_script:
            picks = sorted({int(round(i)) for i in np.linspace(0, len(families) - 1, per_script)})
            families = [families[i] for i in picks]
        if families:
            chosen[script] = families
    return chosen


def render_glyph(font: Any, char: str, size: int = GLYPH_SIZE) -> PIL.Image.Image | None:
    """Render one letter in black on white with a PIL font, cropped to its ink, padded by 25% and resized to a
    `size` × `size` grayscale image; `None` if the font draws nothing for it.

    Example:
        >>> from PIL import ImageFont
        >>> render_glyph(ImageFont.load_default(48), "A").size
        (64, 64)
    """
    from PIL import ImageDraw, ImageOps

    point = getattr(font, "size", GLYPH_POINT_SIZE)
    side = int(point * 3)
    canvas = PIL.Image.new("L", (side, side), 255)
    ImageDraw.Draw(canvas).text((side / 2, side / 2), char, font=font, fill=0, anchor="mm")
    box = ImageOps.invert(canvas).getbbox()
    if box is None:
        return None
    return fit_square(canvas.crop(box), size, margin=0.25)


def _glyph_job(job: tuple[str, bytes, str, tuple[str, ...]]) -> list[Row]:
    from PIL import ImageFont

    family, data, script, letters = job
    font = ImageFont.truetype(io.BytesIO(data), GLYPH_POINT_SIZE)
    # a font may map a letter to an empty box: drop renders equal to the font's missing-glyph box (.notdef)
    missing = render_glyph(font, "\U0010fffd")
    missing_png = png_bytes(missing) if missing is not None else None
    rows = []
    for char in letters:
        image = render_glyph(font, char)
        if image is not None:
            png = png_bytes(image)
            if png != missing_png:
                rows.append(Row(png, f"{script}:{char}", family))
    if len({r.png for r in rows}) < 0.9 * len(letters):  # many letters drawn alike: the font lacks the script
        logger.info("glyphs: %s left out for %s (%d distinct letters of %d)", family, script,
                    len({r.png for r in rows}), len(letters))
        return []
    return rows


def glyph_rows(fonts: dict[str, bytes], progress: bool = False,
               scripts: dict[str, Sequence[str]] = SCRIPTS) -> list[Row]:
    """Rows of the glyph domain from font files (path → bytes): class `<script>:<letter>`, instance = typeface.

    Example:
        >>> rows = glyph_rows({"DejaVuSans.ttf": open("DejaVuSans.ttf", "rb").read()})  # doctest: +SKIP
    """
    chosen = choose_fonts(font_faces(fonts, scripts))
    jobs = [(face.family, fonts[face.path], script, tuple(scripts[script]))
            for script, faces in chosen.items() for face in faces]
    return parallel_concat(_glyph_job, jobs, desc="glyphs", progress=progress)


def _glyph_source() -> DomainSource:
    def rows(downloads: Path, progress: bool) -> tuple[list[Row], list[SourceArchive], dict[str, bytes]]:
        require_debian("glyphs", GLYPH_PACKAGES)
        try:
            import fontTools  # noqa: F401
        except ImportError as exc:
            raise SourceUnavailableError("glyphs", "the glyphs domain reads font tables with fontTools: "
                                                   "pip install fonttools") from exc
        archives = fetch_debs(GLYPH_PACKAGES, downloads, domain="glyphs")
        tree = read_debs(archives, lambda p: p.lower().endswith((".ttf", ".otf")), progress, "reading fonts")
        fonts = {p: b for p, b in tree.files.items() if p.lower().endswith((".ttf", ".otf"))}
        return glyph_rows(fonts, progress), archives, debian_licenses(tree, archives)

    return DomainSource(
        name="glyphs", title="Glyphs (letters of six scripts across typefaces)",
        description="Omniglot-like: isolated letters of six non-Latin scripts (Greek, Cyrillic, Armenian, Georgian, "
                    "Hebrew, Devanagari consonants), one class per letter, one image per typeface (up to 20 "
                    "typefaces per script, one per font family, each covering the whole script), rendered from the "
                    "fonts of Debian/Ubuntu font packages.",
        registry="debian", packages=GLYPH_PACKAGES, license_id="other",
        license_text="Rendered from fonts under their own licences, mostly SIL Open Font License 1.1; DejaVu: "
                     "Bitstream Vera licence; GNU FreeFont: GPL-3+ with the font exception; BPG Georgian: GPL-2; "
                     "URW base35: AGPL-3 with the font exception. The `instance` column names the typeface; the "
                     "exact terms of each package are in LICENSES/.",
        rows=rows, image_size=f"{GLYPH_SIZE} × {GLYPH_SIZE} grayscale",
    )


register(_glyph_source())
