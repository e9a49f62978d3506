r"""The ``.ibc`` file format: a small versioned header and one ANS stream of integer latents.

Layout of format version 2 (all multi-byte integers little endian)::

    offset  size  field
    0       4     magic  b"\x89IBC"
    4       1     format version (2)
    5       4     model id: the first 4 bytes of the SHA-256 of the model's weights
                  (ibcore.models.ncvae.state_digest)
    9       …     image height, image width          (unsigned LEB128 varints)
    …       …     ŷ symbol range lo, hi; ĥ range lo, hi (zig-zag LEB128 varints)
    …       …     payload length in 32-bit words      (unsigned LEB128 varint)
    …       4     prior check: CRC-32 of the numbers the coder's models are built from
                  (ibcore.codec.entropy.prior_checksum)
    …       4     latent check: CRC-32 of the integer latents ŷ and ĥ
                  (ibcore.codec.entropy.latent_checksum)
    …       4     CRC-32 of every header byte before it and of the payload
    …       4·n   payload: the words of one ``constriction`` ANS stack

The payload holds the side information ``ĥ`` on top of the latent ``ŷ`` (an ANS coder is a
stack: ``ŷ`` is pushed first, so the decoder pops ``ĥ`` first). ``ĥ`` is coded under the
model's factorised density, tabulated on ``[lo, hi]`` and renormalised; ``ŷ`` under
``constriction.stream.model.QuantizedGaussian(lo, hi)`` with every symbol's own mean and scale
from the RDO module (:class:`ibcore.models.ncvae.RDOModule`) — a Gaussian integrated over unit
bins and clipped to ``[lo − ½, hi + ½]``. Nothing else is needed to decode, so
``bpp = 8 · len(file) / (H · W)`` counts every bit.

**Reproducible probabilities.** Encoder and decoder must give the coder bit-identical
probabilities, whatever their thread count, BLAS, CPU or device. So the coder's inputs are not
the float RDO module's outputs but those of :mod:`ibcore.codec.entropy`: the RDO module in
fixed-point integer arithmetic, the scale snapped to a fixed table of 128 log-spaced levels by
integer thresholds, and the side tables computed in exact decimal arithmetic; the transforms
``g_a`` and ``g_s`` stay in floating point (they do not touch the probabilities). On the shipped
models and test images the payload grew by 0.04 % on average and whole files, with the 8 bytes
of the two checks, by 0.12 % (``benchmarks/codec_exact_prior_rate.py``). **Self-verification:** the header carries a checksum of
those inputs and one of the decoded latents; a decoder that computes a different probability
model or decodes different symbols raises :class:`DecoderMismatchError` instead of returning an
image. Version 1 files (written before this scheme) are refused with a message saying so.

Decoding never trusts the file: a wrong magic raises :class:`ForeignFileError`, an unknown
version :class:`UnsupportedVersionError`, a file that ends early
:class:`TruncatedBitstreamError`, a checksum mismatch or an impossible field
:class:`CorruptedBitstreamError`, a file written by another model
:class:`ModelMismatchError`, and a decoder that does not reproduce the encoder's probability
model or symbols :class:`DecoderMismatchError`. Sizes are bounded (:data:`MAX_SIDE`, :data:`MAX_PIXELS`,
:data:`MAX_SYMBOL_RANGE`) before anything is allocated, so the work per file is bounded too.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

import constriction
import numpy as np
import torch
from torch import Tensor

from ibcore.codec.entropy import exact_prior, latent_checksum, prior_checksum, side_tables
from ibcore.errors import IBCoreError, InvalidParameterError, ShapeError
from ibcore.estimators.rate import gaussian_bits
from ibcore.models.ncvae import DOWNSAMPLING, NCVAE, pad_to_multiple, state_digest

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "BitstreamError",
    "CorruptedBitstreamError",
    "DecoderMismatchError",
    "EncodeResult",
    "ForeignFileError",
    "Header",
    "ModelMismatchError",
    "TruncatedBitstreamError",
    "UnsupportedVersionError",
    "decode",
    "coder_inputs",
    "decode_latents",
    "encode",
    "encode_detailed",
    "encode_latents",
    "file_digest",
    "model_id",
    "pack",
    "side_support",
    "unpack",
]

MAGIC = b"\x89IBC"
FORMAT_VERSION = 2
MODEL_ID_BYTES = 4
MAX_SIDE = 16384
"""Largest image height or width a file may declare."""
MAX_PIXELS = 2**26
"""Largest ``H · W`` a file may declare (64 Mpixel)."""
MAX_SYMBOL_RANGE = 4096
"""Largest ``hi − lo + 1`` of a coded symbol alphabet."""
_MAX_VARINT_BYTES = 5


class BitstreamError(IBCoreError, ValueError):
    """A ``.ibc`` file cannot be decoded (base class of the errors below)."""


class ForeignFileError(BitstreamError):
    """The data is not an ``.ibc`` file (wrong magic bytes)."""


class UnsupportedVersionError(BitstreamError):
    """The file was written in a format version this code does not read."""


class TruncatedBitstreamError(BitstreamError):
    """The file ends before its header or its declared payload does."""


class CorruptedBitstreamError(BitstreamError):
    """Checksum mismatch, impossible header field, or a payload that does not decode."""


class ModelMismatchError(BitstreamError):
    """The file was written by a different model than the one given to decode it."""


class DecoderMismatchError(BitstreamError):
    """The decoder computed a different probability model, or decoded different symbols, than
    the encoder (the header's prior or latent check does not match)."""


@dataclass(frozen=True)
class Header:
    """The fields of a ``.ibc`` header (see the module docstring)."""

    model_id: bytes
    height: int
    width: int
    y_range: tuple[int, int]
    h_range: tuple[int, int]
    version: int = FORMAT_VERSION
    prior_check: int = 0
    """CRC-32 of the coder's model inputs (:func:`ibcore.codec.entropy.prior_checksum`)."""
    latent_check: int = 0
    """CRC-32 of ``ŷ`` and ``ĥ`` (:func:`ibcore.codec.entropy.latent_checksum`)."""


# --------------------------------------------------------------------------- varints
def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _zigzag(n: int) -> int:
    return 2 * n if n >= 0 else -2 * n - 1


def _unzigzag(n: int) -> int:
    return n // 2 if n % 2 == 0 else -(n + 1) // 2


def _read_uvarint(data: bytes, pos: int, field: str) -> tuple[int, int]:
    value = 0
    for k in range(_MAX_VARINT_BYTES):
        if pos + k >= len(data):
            raise TruncatedBitstreamError(
                f"the file ends inside its header (field {field!r}); it is truncated: "
                "copy or download it again"
            )
        byte = data[pos + k]
        value |= (byte & 0x7F) << (7 * k)
        if not byte & 0x80:
            return value, pos + k + 1
    raise CorruptedBitstreamError(f"header field {field!r} is not a valid varint; the file is corrupted")


# --------------------------------------------------------------------------- pack / unpack
def _header_bytes(header: Header, n_words: int) -> bytes:
    if len(header.model_id) != MODEL_ID_BYTES:
        raise InvalidParameterError(f"model_id must be {MODEL_ID_BYTES} bytes")
    fields = [_uvarint(header.height), _uvarint(header.width)]
    fields += [_uvarint(_zigzag(v)) for v in (*header.y_range, *header.h_range)]
    fields.append(_uvarint(n_words))
    for check in (header.prior_check, header.latent_check):
        if not 0 <= check < 2**32:
            raise InvalidParameterError("checks must be 32-bit unsigned integers")
        fields.append(check.to_bytes(4, "little"))
    return MAGIC + bytes([header.version]) + header.model_id + b"".join(fields)


def pack(header: Header, words: np.ndarray) -> bytes:
    """Header + CRC-32 + payload words (little-endian ``uint32``) as the bytes of a file."""
    words = np.ascontiguousarray(words, dtype="<u4")
    head = _header_bytes(header, int(words.size))
    payload = words.tobytes()
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + crc.to_bytes(4, "little") + payload


def _check_dims(height: int, width: int) -> None:
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE) or height * width > MAX_PIXELS:
        raise CorruptedBitstreamError(
            f"the header declares a {height}x{width} image, outside the supported range "
            f"(1..{MAX_SIDE} per side, ≤ {MAX_PIXELS} pixels); the file is corrupted"
        )


def _check_range(name: str, lo: int, hi: int) -> None:
    if not lo < hi or hi - lo + 1 > MAX_SYMBOL_RANGE:
        raise CorruptedBitstreamError(
            f"the header declares the {name} symbol range [{lo}, {hi}], which has fewer than 2 "
            f"or more than {MAX_SYMBOL_RANGE} symbols; the file is corrupted"
        )


def _coded_range(values: np.ndarray) -> tuple[int, int]:
    """``[min, max]`` of the symbols, widened to ≥ 2 symbols (constriction's models need it)."""
    lo, hi = int(values.min()), int(values.max())
    return lo, max(hi, lo + 1)


def unpack(data: bytes, *, verify_checksum: bool = True) -> tuple[Header, np.ndarray]:
    """Parse and verify a file's bytes; return its header and payload words (``uint32``).

    ``verify_checksum=False`` skips only the CRC comparison (for tools that repair or fuzz
    files); every other check still applies.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidParameterError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC):
        if MAGIC.startswith(data) and data:
            raise TruncatedBitstreamError(
                f"the file has only {len(data)} byte(s); it is truncated: copy it again"
            )
        raise ForeignFileError("this is not an .ibc file (too short to hold the magic bytes)")
    if data[: len(MAGIC)] != MAGIC:
        raise ForeignFileError(
            "this is not an .ibc file (wrong magic bytes); decode only files written by "
            "`python -m ibcore.codec encode`"
        )
    pos = len(MAGIC)
    if pos >= len(data):
        raise TruncatedBitstreamError("the file ends after its magic bytes; it is truncated")
    version = data[pos]
    if version == 1:
        raise UnsupportedVersionError(
            "the file has format version 1, written by an older ibcore whose decoder could "
            "compute slightly different probabilities on another machine or thread count and "
            f"then decode a wrong image; this ibcore reads only version {FORMAT_VERSION}: "
            "re-encode the original image"
        )
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"the file has format version {version}; this ibcore reads version {FORMAT_VERSION}: "
            "update ibcore or re-encode the image"
        )
    pos += 1
    if pos + MODEL_ID_BYTES > len(data):
        raise TruncatedBitstreamError("the file ends inside its model id; it is truncated")
    mid = data[pos : pos + MODEL_ID_BYTES]
    pos += MODEL_ID_BYTES
    height, pos = _read_uvarint(data, pos, "height")
    width, pos = _read_uvarint(data, pos, "width")
    ranges = []
    for field in ("y_lo", "y_hi", "h_lo", "h_hi"):
        raw, pos = _read_uvarint(data, pos, field)
        ranges.append(_unzigzag(raw))
    n_words, pos = _read_uvarint(data, pos, "payload length")
    if pos + 8 > len(data):
        raise TruncatedBitstreamError("the file ends inside its checks; it is truncated")
    prior_check = int.from_bytes(data[pos : pos + 4], "little")
    latent_check = int.from_bytes(data[pos + 4 : pos + 8], "little")
    pos += 8
    head_end = pos
    if pos + 4 > len(data):
        raise TruncatedBitstreamError("the file ends inside its checksum; it is truncated")
    crc = int.from_bytes(data[pos : pos + 4], "little")
    payload = data[pos + 4 :]
    if len(payload) < 4 * n_words:
        raise TruncatedBitstreamError(
            f"the payload has {len(payload)} of its {4 * n_words} bytes; the file is truncated: "
            "copy or download it again"
        )
    if len(payload) > 4 * n_words:
        raise CorruptedBitstreamError(
            f"{len(payload) - 4 * n_words} unexpected byte(s) after the payload; the file is "
            "corrupted or two files were concatenated"
        )
    if verify_checksum and zlib.crc32(payload, zlib.crc32(data[:head_end])) != crc:
        raise CorruptedBitstreamError("checksum mismatch: the file is corrupted")
    _check_dims(height, width)
    _check_range("latent", ranges[0], ranges[1])
    _check_range("side-information", ranges[2], ranges[3])
    header = Header(mid, height, width, (ranges[0], ranges[1]), (ranges[2], ranges[3]), version,
                    prior_check, latent_check)
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    return header, words


# --------------------------------------------------------------------------- coding
def model_id(model: NCVAE) -> bytes:
    """The 4-byte id of a model's weights written into every file it encodes."""
    return bytes.fromhex(state_digest(model))[:MODEL_ID_BYTES]


def _check_image(image: Tensor) -> Tensor:
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ShapeError(
            f"image must be a uint8 tensor of shape [3, H, W] (RGB), got "
            f"{getattr(image, 'shape', type(image).__name__)}"
        )
    if image.dtype != torch.uint8:
        raise InvalidParameterError(f"image must be uint8 (0..255), got dtype {image.dtype}")
    h, w = int(image.shape[1]), int(image.shape[2])
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE) or h * w > MAX_PIXELS:
        raise ShapeError(f"image size {h}x{w} is outside 1..{MAX_SIDE} per side, ≤ {MAX_PIXELS} px")
    return image


def side_support(model: NCVAE, tail: float = 1e-4) -> tuple[int, int]:
    """The integer range ``[lo, hi]`` outside which every channel of the side density has less
    than ``tail`` of its mass (grown by doubling from ``[−8, 8]``, at most ±``MAX_SYMBOL_RANGE/4``).

    The side information is coded on the union of this range and the range of the image's
    symbols, so the coder's renormalised table is the model's density itself (the file then
    matches the model's estimated code length, instead of saving the clipped tail mass).
    """
    half = 8
    with torch.inference_mode():
        while True:
            mass = model.side_density.pmf_table(-half, half, normalize=False).sum(dim=-1)
            if float(mass.min()) >= 1.0 - tail or 4 * half >= MAX_SYMBOL_RANGE:
                return -half, half
            half *= 2


def _side_models(table: np.ndarray) -> list:
    """One ``constriction`` categorical model per side channel (rows of :func:`side_tables`)."""
    return [constriction.stream.model.Categorical(row, perfect=False) for row in table]


def coder_inputs(model: NCVAE, h_int: np.ndarray,
                 h_range: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(side table, means, scales)``: every number the coder's models are built from, for
    integer side info ``h_int`` ``[H, h, w]`` coded on ``h_range`` (see
    :mod:`ibcore.codec.entropy`; bit-identical on every machine)."""
    means, scales = exact_prior(model.rdo).coder_arrays(h_int)
    return side_tables(model.side_density, *h_range), means, scales


def _to_uint8(x_hat: Tensor) -> Tensor:
    return torch.round(x_hat.clamp(0.0, 1.0) * 255.0).to(torch.uint8)


@dataclass(frozen=True)
class EncodeResult:
    """What :func:`encode_detailed` computed: the file and the quantities behind it."""

    data: bytes
    header: Header
    estimated_bits_main: float
    estimated_bits_side: float
    reconstruction: Tensor
    """``uint8 [3, H, W]``: what :func:`decode` of ``data`` returns."""
    y_hat: Tensor
    h_hat: Tensor

    @property
    def estimated_bits(self) -> float:
        """The model's code length of ``ŷ`` and ``ĥ`` (``−Σ log₂ P``), header excluded."""
        return self.estimated_bits_main + self.estimated_bits_side

    @property
    def bpp(self) -> float:
        """``8 · len(data) / (H · W)``: the real rate, header included."""
        return 8.0 * len(self.data) / (self.header.height * self.header.width)


def _encode(model: NCVAE, image: Tensor, detailed: bool) -> EncodeResult:
    image = _check_image(image)
    device = next(model.parameters()).device
    height, width = int(image.shape[1]), int(image.shape[2])
    model.eval()
    with torch.inference_mode():
        x = pad_to_multiple(image.to(device=device, dtype=torch.float32)[None] / 255.0)
        y, h = model.analyse(x)
        y_hat, h_hat = torch.round(y), torch.round(h)
        bits_main = bits_side = float("nan")
        recon = image.new_empty(0)
        if detailed:
            mean, scale = model.prior(h_hat)
            bits_main = float(gaussian_bits(y_hat, mean, scale))
            bits_side = float(model.side_density.bits(h_hat))
            recon = _to_uint8(model.synthesise(y_hat)[0, :, :height, :width]).cpu()
    data = _pack_latents(model, y_hat[0], h_hat[0], height, width)
    return EncodeResult(data, unpack(data)[0], bits_main, bits_side, recon, y_hat[0].cpu(),
                        h_hat[0].cpu())


def _pack_latents(model: NCVAE, y_hat: Tensor, h_hat: Tensor, height: int, width: int) -> bytes:
    y_int = y_hat.to(torch.int64).cpu().numpy()
    h_int = h_hat.to(torch.int64).cpu().numpy()
    y_range = _coded_range(y_int)
    lo, hi = _coded_range(h_int)
    support = side_support(model)
    h_range = (min(lo, support[0]), max(hi, support[1]))
    for name, (lo, hi) in (("latent", y_range), ("side-information", h_range)):
        if hi - lo + 1 > MAX_SYMBOL_RANGE:
            raise InvalidParameterError(
                f"the {name} symbols span [{lo}, {hi}], wider than {MAX_SYMBOL_RANGE}; the image "
                "is far outside what the model was trained on"
            )
    table, means, scales = coder_inputs(model, h_int, h_range)
    coder = constriction.stream.stack.AnsCoder()
    gaussian = constriction.stream.model.QuantizedGaussian(*y_range)
    coder.encode_reverse(y_int.astype(np.int32).ravel(), gaussian, means, scales)
    # channel by channel, last channel first, so that the decoder pops channel 0 first
    side = _side_models(table)
    for c in reversed(range(h_int.shape[0])):
        coder.encode_reverse((h_int[c] - h_range[0]).astype(np.int32).ravel(), side[c])
    header = Header(model_id(model), height, width, y_range, h_range, FORMAT_VERSION,
                    prior_checksum(table, means, scales), latent_checksum(y_int, h_int))
    return pack(header, coder.get_compressed())


def encode_latents(model: NCVAE, y_hat: Tensor, h_hat: Tensor, height: int, width: int) -> bytes:
    """The file of given integer latents ``ŷ`` ``[M, h, w]`` and ``ĥ`` ``[H, h/2, w/2]``.

    ``height`` and ``width`` are the image size the file declares; the latent shapes must be
    those of a ``height × width`` image (padded to multiples of 32). The prior of ``ŷ`` is the
    model's RDO module applied to ``ĥ``, in the exact form of :mod:`ibcore.codec.entropy`.
    """
    y_shape, h_shape = _latent_shapes(model, height, width)
    if tuple(y_hat.shape) != y_shape or tuple(h_hat.shape) != h_shape:
        raise ShapeError(
            f"latents of a {height}x{width} image must have shapes {y_shape} and {h_shape}, got "
            f"{tuple(y_hat.shape)} and {tuple(h_hat.shape)}"
        )
    for name, t in (("y_hat", y_hat), ("h_hat", h_hat)):
        if not bool(torch.isfinite(t).all()) or not bool((t == torch.round(t)).all()):
            raise InvalidParameterError(f"{name} must hold integers (stored as floats)")
    return _pack_latents(model, y_hat, h_hat, height, width)


def encode_detailed(model: NCVAE, image: Tensor) -> EncodeResult:
    """Encode ``uint8 [3, H, W]`` ``image`` with ``model``; return the file and its details.

    Besides the file this computes the model's own code length of ``ŷ`` and ``ĥ`` and the
    reconstruction ``g_s(ŷ)`` that :func:`decode` must reproduce.
    """
    return _encode(model, image, detailed=True)


def encode(model: NCVAE, image: Tensor) -> bytes:
    """The ``.ibc`` bytes of ``uint8 [3, H, W]`` ``image`` (see :func:`encode_detailed`)."""
    return _encode(model, image, detailed=False).data


def _latent_shapes(model: NCVAE, height: int, width: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    hp = -(-height // DOWNSAMPLING) * DOWNSAMPLING
    wp = -(-width // DOWNSAMPLING) * DOWNSAMPLING
    a = model.arch
    return (a.latent, hp // 16, wp // 16), (a.hyper, hp // 32, wp // 32)


def decode_latents(model: NCVAE, data: bytes) -> tuple[Header, Tensor, Tensor]:
    """Entropy-decode a file: ``(header, ŷ [M, h, w], ĥ [H, h/2, w/2])`` as float tensors.

    Raises a :class:`BitstreamError` subclass for anything that is not a valid file of this
    model (see the module docstring).
    """
    header, words = unpack(data)
    if header.model_id != model_id(model):
        raise ModelMismatchError(
            f"the file was encoded by model {header.model_id.hex()}, not by the given model "
            f"{model_id(model).hex()}; decode it with the model that encoded it (--model)"
        )
    y_shape, h_shape = _latent_shapes(model, header.height, header.width)
    device = next(model.parameters()).device
    model.eval()
    mismatch = (
        "; this decoder does not reproduce the probability model of the encoder (a different "
        "build of ibcore or of its coder library `constriction`, or a modified model), so no "
        "image is returned: decode with the software that encoded the file"
    )
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        per_channel = h_shape[1] * h_shape[2]
        table = side_tables(model.side_density, *header.h_range)
        side = _side_models(table)
        h_sym = np.stack([coder.decode(side[c], per_channel) for c in range(h_shape[0])])
        h_int = (h_sym.astype(np.int64) + header.h_range[0]).reshape(h_shape)
        means, scales = exact_prior(model.rdo).coder_arrays(h_int)
        if prior_checksum(table, means, scales) != header.prior_check:
            raise DecoderMismatchError(
                "the probability model computed from the decoded side information does not "
                "match the encoder's (prior check)" + mismatch
            )
        gaussian = constriction.stream.model.QuantizedGaussian(*header.y_range)
        y_sym = coder.decode(gaussian, means, scales)
    except DecoderMismatchError:
        raise
    except BaseException as exc:  # noqa: BLE001 - see below
        # constriction reports bad input as ValueError, but a failed internal assertion of its
        # Rust core surfaces as pyo3's PanicException, a BaseException: turn both into a typed
        # error (the header checks of unpack are meant to make the second impossible).
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit | MemoryError):
            raise
        raise CorruptedBitstreamError(f"the payload does not decode ({exc}); it is corrupted") from exc
    if not coder.is_empty():
        raise CorruptedBitstreamError(
            "the payload holds more data than the header's image needs; the file is corrupted"
        )
    y_int = y_sym.astype(np.int64).reshape(y_shape)
    if latent_checksum(y_int, h_int) != header.latent_check:
        raise DecoderMismatchError(
            "the decoded latent symbols differ from the encoded ones (latent check)" + mismatch
        )
    y_hat = torch.from_numpy(y_int.astype(np.float32)).to(device)
    h_hat = torch.from_numpy(h_int.astype(np.float32)).to(device)
    return header, y_hat, h_hat


def decode(model: NCVAE, data: bytes) -> Tensor:
    """Decode ``.ibc`` bytes with ``model``; return the ``uint8 [3, H, W]`` image.

    Raises a :class:`BitstreamError` subclass for anything that is not a valid file of this
    model (see the module docstring); never returns a partial image.
    """
    header, y_hat, _ = decode_latents(model, data)
    with torch.inference_mode():
        x_hat = model.synthesise(y_hat[None])[0, :, : header.height, : header.width]
    return _to_uint8(x_hat).cpu()


def file_digest(data: bytes) -> str:
    """SHA-256 (hex) of a file's bytes (for result records)."""
    return hashlib.sha256(data).hexdigest()
