"""The NC-VAE image codec: real ``.ibc`` files, classical baselines and Bjøntegaard metrics.

* :mod:`ibcore.codec.bitstream` — the versioned file format; :func:`encode` / :func:`decode`
  entropy-code the integer latent of an :class:`ibcore.models.ncvae.NCVAE` with
  ``constriction``'s ANS coder (a Gaussian mean and scale per symbol); the header carries
  checksums that a decoder must reproduce.
* :mod:`ibcore.codec.entropy` — the probabilities the coder sees, computed bit-exactly on
  every machine (fixed-point hyper-synthesis, a table of scales, exact side tables).
* :mod:`ibcore.codec.zoo` — the shipped models: find and load them by name or id, checksums
  verified.
* :mod:`ibcore.codec.baselines` — JPEG, WebP, JPEG 2000 and AVIF through Pillow, with a quality
  search to a target rate.
* :mod:`ibcore.codec.bdmetrics` — BD-rate and BD-PSNR.
* ``python -m ibcore.codec`` — the command line (encode, decode, info).
"""

from ibcore.codec.bitstream import (
    BitstreamError,
    CorruptedBitstreamError,
    DecoderMismatchError,
    ForeignFileError,
    ModelMismatchError,
    TruncatedBitstreamError,
    UnsupportedVersionError,
    decode,
    encode,
    encode_detailed,
)

__all__ = [
    "BitstreamError",
    "CorruptedBitstreamError",
    "DecoderMismatchError",
    "ForeignFileError",
    "ModelMismatchError",
    "TruncatedBitstreamError",
    "UnsupportedVersionError",
    "decode",
    "encode",
    "encode_detailed",
]
