"""Classical image codecs through Pillow, at a chosen quality or searched to a target rate.

Codecs (each used only where this Pillow build supports it, :func:`available_codecs`, which asks
``PIL.features``):

============  ===============  =====================================================  ==========
name          Pillow feature   settings                                               "quality"
============  ===============  =====================================================  ==========
``jpeg``      ``jpg``          libjpeg, 4:2:0 chroma subsampling, optimised Huffman   1 … 95
``webp``      ``webp``         libwebp lossy, ``method=6`` (slowest, best)            0 … 100
``jpeg2000``  ``jpg_2000``     OpenJPEG, 9/7 wavelet, raw codestream (no JP2 boxes);  rate (bpp)
                               one quality layer at compression ratio 24 / bpp
``avif``      ``avif``         libavif (AV1 intra), 4:2:0, ``speed=6``                0 … 100
============  ===============  =====================================================  ==========

The rate of a file is ``bpp = 8 · len(bytes) / (H · W)``, headers included, like our codec's.
PSNR is over all three channels of the 8-bit images, ``10 log10(255² / MSE)``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from PIL import features as pil_features

from ibcore.errors import InvalidParameterError, ShapeError, UnknownNameError
from ibcore.validation import check_int, check_weight

__all__ = [
    "CODECS",
    "BaselinePoint",
    "available_codecs",
    "decode_image",
    "encode_at_bpp",
    "encode_image",
    "psnr",
    "rd_curve",
]


@dataclass(frozen=True)
class _Codec:
    feature: str
    pil_format: str
    integer_quality: bool
    quality_range: tuple[float, float]


CODECS: dict[str, _Codec] = {
    "jpeg": _Codec("jpg", "JPEG", True, (1, 95)),
    "webp": _Codec("webp", "WEBP", True, (0, 100)),
    "jpeg2000": _Codec("jpg_2000", "JPEG2000", False, (0.005, 8.0)),
    "avif": _Codec("avif", "AVIF", True, (0, 100)),
}


def available_codecs() -> dict[str, bool]:
    """``{codec: supported by this Pillow build}`` for every codec of :data:`CODECS`."""
    out = {}
    for name, codec in CODECS.items():
        try:
            out[name] = bool(pil_features.check(codec.feature))
        except ValueError:  # a Pillow too old to know the feature's name
            out[name] = False
    return out


def _codec(name: str) -> _Codec:
    if name not in CODECS:
        raise UnknownNameError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}")
    if not available_codecs()[name]:
        raise UnknownNameError(
            f"this Pillow build cannot write {name} (PIL.features.check({CODECS[name].feature!r}) "
            "is False); install a Pillow wheel with that codec or leave it out"
        )
    return CODECS[name]


def _check_rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ShapeError(
            f"image must be a uint8 array of shape [H, W, 3], got "
            f"{getattr(image, 'shape', type(image).__name__)}"
        )
    if image.dtype != np.uint8:
        raise InvalidParameterError(f"image must be uint8, got {image.dtype}")
    return image


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB of two ``uint8`` arrays of equal shape (∞ when identical)."""
    if reference.shape != test.shape:
        raise ShapeError(f"shapes differ: {reference.shape} vs {test.shape}")
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def encode_image(image: np.ndarray, codec: str, quality: float) -> bytes:
    """The file bytes of ``uint8 [H, W, 3]`` ``image`` coded by ``codec`` at ``quality``.

    ``quality`` is the codec's quality setting (an integer for JPEG, WebP and AVIF); for
    JPEG 2000 it is the target rate in bits per pixel.
    """
    c = _codec(codec)
    _check_rgb(image)
    lo, hi = c.quality_range
    q = check_weight("quality", quality, low=lo, high=hi)
    if c.integer_quality:
        if not float(q).is_integer():
            raise InvalidParameterError(f"{codec} quality must be an integer, got {quality}")
        q = int(q)
    kwargs: dict[str, object]
    if codec == "jpeg":
        kwargs = {"quality": q, "subsampling": 2, "optimize": True}
    elif codec == "webp":
        kwargs = {"quality": q, "method": 6}
    elif codec == "jpeg2000":
        kwargs = {"quality_mode": "rates", "quality_layers": [24.0 / q], "irreversible": True,
                  "no_jp2": True}
    else:
        kwargs = {"quality": q, "speed": 6, "subsampling": "4:2:0"}
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format=c.pil_format, **kwargs)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """Decode any of the codecs' files to ``uint8 [H, W, 3]``."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


@dataclass(frozen=True)
class BaselinePoint:
    """One coded image: codec, setting, real rate, PSNR, and whether a target was reached."""

    codec: str
    quality: float
    bytes: int
    bpp: float
    psnr: float
    reached: bool = True

    def as_dict(self) -> dict[str, object]:
        return {"codec": self.codec, "quality": self.quality, "bytes": self.bytes,
                "bpp": self.bpp, "psnr": self.psnr, "reached": self.reached}


def _point(image: np.ndarray, codec: str, quality: float) -> tuple[BaselinePoint, bytes]:
    data = encode_image(image, codec, quality)
    bpp = 8.0 * len(data) / (image.shape[0] * image.shape[1])
    return BaselinePoint(codec, float(quality), len(data), bpp,
                         psnr(image, decode_image(data))), data


def rd_curve(image: np.ndarray, codec: str, qualities: Sequence[float]) -> list[BaselinePoint]:
    """One :class:`BaselinePoint` per quality setting, sorted by rate."""
    points = [_point(image, codec, q)[0] for q in qualities]
    return sorted(points, key=lambda p: p.bpp)


def encode_at_bpp(
    image: np.ndarray,
    codec: str,
    target_bpp: float,
    *,
    rel_tol: float = 0.02,
    max_iter: int = 30,
) -> tuple[BaselinePoint, bytes]:
    """Search the quality setting whose file comes closest to ``target_bpp``.

    Bisection on the quality (the rate grows with it): for the integer-quality codecs the result
    is the setting with the smallest ``|bpp − target|`` among those the bisection visited (the
    two neighbours of the target are always among them); for JPEG 2000 the search stops once the
    relative error is within ``rel_tol``. When the target lies below the codec's lowest rate (or
    above its highest), the extreme setting is returned with ``reached=False`` — as the source
    does for JPEG and WebP at 0.07 bpp. Returns the point and the file bytes.
    """
    c = _codec(codec)
    _check_rgb(image)
    target = check_weight("target_bpp", target_bpp, low=0.0, low_inclusive=False)
    rel_tol = check_weight("rel_tol", rel_tol, low=0.0, low_inclusive=False)
    max_iter = check_int("max_iter", max_iter, low=1)
    lo, hi = c.quality_range
    if not c.integer_quality:
        hi = min(hi, 24.0)
    seen: dict[float, tuple[BaselinePoint, bytes]] = {}

    def at(q: float) -> tuple[BaselinePoint, bytes]:
        if q not in seen:
            seen[q] = _point(image, codec, q)
        return seen[q]

    def best(reached: bool) -> tuple[BaselinePoint, bytes]:
        p, data = min(seen.values(), key=lambda pd: abs(pd[0].bpp - target))
        return BaselinePoint(p.codec, p.quality, p.bytes, p.bpp, p.psnr, reached), data

    if not c.integer_quality:  # JPEG 2000's setting is the rate itself: try it first
        first = min(max(target, lo), hi)
        if abs(at(first)[0].bpp - target) <= rel_tol * target:
            return best(True)
    if at(lo)[0].bpp >= target:
        return best(abs(at(lo)[0].bpp - target) <= rel_tol * target)
    if at(hi)[0].bpp <= target:
        return best(abs(at(hi)[0].bpp - target) <= rel_tol * target)
    a, b = lo, hi  # bpp(a) < target < bpp(b)
    for _ in range(max_iter):
        if c.integer_quality:
            if b - a <= 1:
                break
            mid = float((int(a) + int(b)) // 2)
        else:
            mid = math.sqrt(a * b)
        p = at(mid)[0]
        if abs(p.bpp - target) <= rel_tol * target and not c.integer_quality:
            break
        if p.bpp < target:
            a = mid
        else:
            b = mid
    return best(True)
