"""Image encodings for the frames that sliders and animations inline into a page.

A page carries every frame of its sliders and animations as base64 ``data:`` URLs, so the frame
encoding sets the page's weight. Three encodings, all of the same pixel size:

* ``"png"`` — matplotlib's RGBA PNG, exact;
* ``"palette"`` — the same picture reduced to an adaptive palette of at most 256 colours (median
  cut, no dithering) and saved as an 8-bit PNG. Plots (lines, markers, text, a colour map) lose
  no visible detail and shrink about threefold. Not for photographs or codec reconstructions,
  whose artefacts the palette would alter;
* ``"webp"`` — lossless WebP: exact pixels, about a quarter smaller than PNG for plots and
  up to half for photographs.
"""

from __future__ import annotations

import io

from PIL import Image

from ibcore.errors import InvalidParameterError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ENCODINGS: tuple[str, ...] = ("png", "palette", "webp")


def image_mime(data: bytes) -> str:
    """The MIME type of PNG or WebP bytes (from their signature); anything else raises."""
    if data[:8] == PNG_SIGNATURE:
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise InvalidParameterError("frame is neither PNG nor WebP bytes (unknown signature)")


def _opaque_rgb(png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB")


def encode_frame(png: bytes, encoding: str = "palette") -> bytes:
    """Re-encode PNG bytes as ``encoding`` (see the module docstring); same pixel size.

    Transparent pixels are composited onto white first (a page's background). ``"palette"``
    keeps the original PNG when the palette version would not be smaller.
    """
    if encoding not in ENCODINGS:
        raise InvalidParameterError(f"encoding must be one of {ENCODINGS}, not {encoding!r}")
    if png[:8] != PNG_SIGNATURE:
        raise InvalidParameterError("encode_frame expects PNG bytes")
    if encoding == "png":
        return png
    rgb = _opaque_rgb(png)
    out = io.BytesIO()
    if encoding == "webp":
        rgb.save(out, format="WEBP", lossless=True, method=4)
        return out.getvalue()
    quantized = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                             dither=Image.Dither.NONE)
    quantized.save(out, format="PNG", optimize=True)
    small = out.getvalue()
    return small if len(small) < len(png) else png
