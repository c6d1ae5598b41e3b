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
"""Image helpers shared by the domains: transparency on white, padding to a square, PNG encoding."""

from __future__ import annotations

import io

import PIL.Image


def on_white(image: PIL.Image.Image) -> PIL.Image.Image:
    """Composite an image with transparency on white; return a new RGB image (L for grayscale input without alpha).

    Example:
        >>> im = PIL.Image.new("RGBA", (4, 4), (0, 0, 0, 0))
        >>> on_white(im).getpixel((0, 0))
        (255, 255, 255)
    """
    if image.mode == "L":
        return image.copy()
    if image.mode in ("1", "I", "I;16", "F"):
        return image.convert("L")
    if image.mode == "P" and "transparency" not in image.info:
        return image.convert("RGB")
    if image.mode in ("RGBA", "LA", "P", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit_square(image: PIL.Image.Image, size: int, *, margin: float = 0.0) -> PIL.Image.Image:
    """Pad `image` (RGB or L) on white to a square, with `margin` (a fraction of its longer side) on every side, and
    resize it to `size` × `size`.

    Example:
        >>> fit_square(PIL.Image.new("RGB", (30, 10)), 16).size
        (16, 16)
    """
    w, h = image.size
    side = max(w, h)
    pad = int(round(side * margin))
    canvas_side = side + 2 * pad
    fill = 255 if image.mode == "L" else (255, 255, 255)
    canvas = PIL.Image.new(image.mode, (canvas_side, canvas_side), fill)
    canvas.paste(image, ((canvas_side - w) // 2, (canvas_side - h) // 2))
    if canvas_side != size:
        canvas = canvas.resize((size, size), PIL.Image.Resampling.LANCZOS)
    return canvas


def png_bytes(image: PIL.Image.Image) -> bytes:
    """Encode an image as PNG."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
