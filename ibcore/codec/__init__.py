"""The NC-VAE image codec: real ``.ibc`` files, classical baselines and Bjøntegaard metrics.

* :mod:`ibcore.codec.bitstream` — the versioned file format; :func:`encode` / :func:`decode`
  entropy-code the integer latent of an :class:`ibcore.models.ncvae.NCVAE` with
  ``constriction``'s ANS coder (exact Gaussian mean and scale per symbol).
* :mod:`ibcore.codec.baselines` — JPEG, WebP, JPEG 2000 and AVIF through Pillow, with a quality
  search to a target rate.
* :mod:`ibcore.codec.bdmetrics` — BD-rate and BD-PSNR.
* ``python -m ibcore.codec`` — the command line (encode, decode, info).
"""

from ibcore.codec.bitstream import (
    BitstreamError,
    CorruptedBitstreamError,
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
    "ForeignFileError",
    "ModelMismatchError",
    "TruncatedBitstreamError",
    "UnsupportedVersionError",
    "decode",
    "encode",
    "encode_detailed",
]
