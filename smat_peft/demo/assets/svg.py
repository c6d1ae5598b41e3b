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
"""The SVG renderer: the system's librsvg and cairo through ctypes (no Python binding needed).

Used by the SVG domains (cards, icons); [`check_librsvg`] says what to install when the libraries are missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image

from .errors import AssetError, SourceUnavailableError


class _RsvgRect(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double), ("width", ctypes.c_double),
                ("height", ctypes.c_double)]


class _GError(ctypes.Structure):
    _fields_ = [("domain", ctypes.c_uint32), ("code", ctypes.c_int), ("message", ctypes.c_char_p)]


LIBRSVG_HINT: str = ("librsvg not found: the SVG domains (cards, icons) render with the system library librsvg "
                     "(Debian/Ubuntu: apt-get install librsvg2-2)")


class SvgRenderer:
    """Render SVG documents and single SVG elements with the system's librsvg 2.46+ and cairo, through ctypes.

    Raises [`SourceUnavailableError`] if the libraries are missing. One instance per process.

    Example:
        >>> r = SvgRenderer()  # doctest: +SKIP
        >>> svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'
        >>> r.render_document(svg, 16).size  # doctest: +SKIP
        (16, 16)
    """

    def __init__(self, domain: str = "svg"):
        names = {"rsvg": ("rsvg-2", "librsvg-2.so.2"), "cairo": ("cairo", "libcairo.so.2"),
                 "gobject": ("gobject-2.0", "libgobject-2.0.so.0"), "glib": ("glib-2.0", "libglib-2.0.so.0")}
        libs = {}
        for key, (name, soname) in names.items():
            try:
                libs[key] = ctypes.CDLL(ctypes.util.find_library(name) or soname)
            except OSError as exc:
                raise SourceUnavailableError(domain, LIBRSVG_HINT) from exc
        self.rsvg, self.cairo, self.gobject, self.glib = libs["rsvg"], libs["cairo"], libs["gobject"], libs["glib"]
        vp, err = ctypes.c_void_p, ctypes.POINTER(ctypes.POINTER(_GError))
        rect = ctypes.POINTER(_RsvgRect)
        try:
            self.rsvg.rsvg_handle_new_from_data.restype = vp
            self.rsvg.rsvg_handle_new_from_data.argtypes = [ctypes.c_char_p, ctypes.c_size_t, err]
            self.rsvg.rsvg_handle_has_sub.argtypes = [vp, ctypes.c_char_p]
            self.rsvg.rsvg_handle_get_geometry_for_element.argtypes = [vp, ctypes.c_char_p, rect, rect, err]
            self.rsvg.rsvg_handle_render_element.argtypes = [vp, vp, ctypes.c_char_p, rect, err]
            self.rsvg.rsvg_handle_render_document.argtypes = [vp, vp, rect, err]
            self.rsvg.rsvg_handle_set_dpi.argtypes = [vp, ctypes.c_double]
        except AttributeError as exc:  # librsvg older than 2.46
            raise SourceUnavailableError(domain, f"{LIBRSVG_HINT}; version 2.46 or newer is needed") from exc
        self.gobject.g_object_unref.argtypes = [vp]
        self.glib.g_error_free.argtypes = [ctypes.POINTER(_GError)]
        c = self.cairo
        c.cairo_image_surface_create.restype = vp
        c.cairo_image_surface_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        c.cairo_create.restype = vp
        c.cairo_create.argtypes = [vp]
        c.cairo_translate.argtypes = [vp, ctypes.c_double, ctypes.c_double]
        c.cairo_image_surface_get_data.restype = vp
        c.cairo_image_surface_get_data.argtypes = [vp]
        c.cairo_image_surface_get_stride.argtypes = [vp]
        for name in ("cairo_surface_flush", "cairo_destroy", "cairo_surface_destroy"):
            getattr(c, name).argtypes = [vp]

    def _check(self, error: Any, ok: int, what: str) -> None:
        if error:
            message = (error.contents.message or b"").decode(errors="replace")
            self.glib.g_error_free(error)
            raise AssetError(f"librsvg: {what}: {message}")
        if not ok:
            raise AssetError(f"librsvg: {what} failed")

    def load(self, data: bytes) -> int:
        """Parse an SVG document (gzip-compressed `.svgz` data is accepted); returns a handle for `close`."""
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        error = ctypes.POINTER(_GError)()
        handle = self.rsvg.rsvg_handle_new_from_data(data, len(data), ctypes.byref(error))
        self._check(error, handle, "parse SVG")
        self.rsvg.rsvg_handle_set_dpi(handle, 96.0)
        return handle

    def close(self, handle: int) -> None:
        self.gobject.g_object_unref(handle)

    def has_element(self, handle: int, element_id: str) -> bool:
        return bool(self.rsvg.rsvg_handle_has_sub(handle, f"#{element_id}".encode()))

    def _draw(self, width: int, height: int, paint: Callable[[int], None]) -> PIL.Image.Image:
        """Let `paint(cairo_context)` draw on a transparent ARGB surface; return it as RGBA."""
        c = self.cairo
        surface = c.cairo_image_surface_create(0, width, height)  # CAIRO_FORMAT_ARGB32
        context = c.cairo_create(surface)
        try:
            paint(context)
            c.cairo_surface_flush(surface)
            stride = c.cairo_image_surface_get_stride(surface)
            raw = ctypes.string_at(c.cairo_image_surface_get_data(surface), stride * height)
        finally:
            c.cairo_destroy(context)
            c.cairo_surface_destroy(surface)
        bgra = np.frombuffer(raw, np.uint8).reshape(height, stride)[:, : width * 4].reshape(height, width, 4)
        # cairo stores premultiplied native-endian ARGB (B, G, R, A bytes on little-endian machines)
        order = [2, 1, 0] if sys.byteorder == "little" else [1, 2, 3]
        color = bgra[..., order].astype(np.float32)
        alpha_index = 3 if sys.byteorder == "little" else 0
        alpha = bgra[..., alpha_index : alpha_index + 1].astype(np.float32)
        rgb = np.where(alpha > 0, color * 255.0 / np.maximum(alpha, 1.0), 0.0)
        rgba = np.concatenate([np.clip(rgb + 0.5, 0, 255), alpha], axis=-1).astype(np.uint8)
        return PIL.Image.fromarray(rgba, "RGBA")

    def render_document(self, data: bytes | int, size: int) -> PIL.Image.Image:
        """Render a whole SVG document scaled to fit `size` × `size` (RGBA)."""
        handle = self.load(data) if isinstance(data, bytes) else data
        try:
            def paint(context: int) -> None:
                error = ctypes.POINTER(_GError)()
                viewport = _RsvgRect(0.0, 0.0, float(size), float(size))
                ok = self.rsvg.rsvg_handle_render_document(handle, context, ctypes.byref(viewport), ctypes.byref(error))
                self._check(error, ok, "render document")

            return self._draw(size, size, paint)
        finally:
            if isinstance(data, bytes):
                self.close(handle)

    def render_element(self, handle: int, element_id: str, size: int) -> PIL.Image.Image:
        """Render one element (by id) so that its visible part's longer side is about `size` pixels; returns the
        RGBA image cropped to its non-transparent pixels.

        Some elements report an ink box much larger than what they draw; they are rendered a second time, zoomed on
        the drawn part.
        """
        error = ctypes.POINTER(_GError)()
        ink, logical = _RsvgRect(), _RsvgRect()
        eid = f"#{element_id}".encode()
        ok = self.rsvg.rsvg_handle_get_geometry_for_element(handle, eid, ctypes.byref(ink), ctypes.byref(logical),
                                                             ctypes.byref(error))
        self._check(error, ok, f"geometry of {element_id!r}")
        if ink.width <= 0 or ink.height <= 0:
            raise AssetError(f"librsvg: element {element_id!r} draws nothing")
        scale = 2.0 * size / max(ink.width, ink.height)
        width, height = max(1, math.ceil(ink.width * scale)), max(1, math.ceil(ink.height * scale))

        def paint_zoomed(zoom: float, dx: float, dy: float) -> Callable[[int], None]:
            def paint(context: int) -> None:
                err = ctypes.POINTER(_GError)()
                self.cairo.cairo_translate(context, -dx, -dy)
                viewport = _RsvgRect(0.0, 0.0, width * zoom, height * zoom)
                done = self.rsvg.rsvg_handle_render_element(handle, context, eid, ctypes.byref(viewport),
                                                            ctypes.byref(err))
                self._check(err, done, f"render {element_id!r}")

            return paint

        image = self._draw(width, height, paint_zoomed(1.0, 0.0, 0.0))
        box = image.getchannel("A").getbbox()
        if box is None:
            raise AssetError(f"librsvg: element {element_id!r} draws nothing")
        drawn = max(box[2] - box[0], box[3] - box[1])
        if drawn < size:  # the ink box was too large: zoom on what was drawn
            zoom = 2.0 * size / drawn
            w2, h2 = math.ceil((box[2] - box[0]) * zoom), math.ceil((box[3] - box[1]) * zoom)
            image = self._draw(w2, h2, paint_zoomed(zoom, box[0] * zoom, box[1] * zoom))
            box = image.getchannel("A").getbbox() or (0, 0, w2, h2)
        return image.crop(box)


_RENDERER: SvgRenderer | None = None


def default_renderer() -> SvgRenderer:
    """The renderer of this process (created on first use; each worker process has its own)."""
    global _RENDERER
    if _RENDERER is None:
        _RENDERER = SvgRenderer()
    return _RENDERER


def check_librsvg(domain: str) -> None:
    """Raise [`SourceUnavailableError`] for `domain` if librsvg cannot be loaded."""
    SvgRenderer(domain)
