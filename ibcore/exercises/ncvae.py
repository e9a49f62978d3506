r"""Self-checks of the NC-VAE exercises: code lengths of quantised latents under a Gaussian prior."""

from __future__ import annotations

import math

import torch

from ibcore.estimators.rate import gaussian_bits
from ibcore.exercises.checking import Case, Check, Mistake

__all__ = ["CHECKS"]


def _bits_cases() -> list[Case]:
    g = torch.Generator().manual_seed(19)
    out = []
    for n, s_lo, s_hi in ((6, 0.1, 0.4), (10, 0.5, 3.0), (8, 2.0, 20.0)):
        mean = 2.0 * torch.randn(n, generator=g, dtype=torch.float64)
        scale = s_lo + (s_hi - s_lo) * torch.rand(n, generator=g, dtype=torch.float64)
        y_hat = torch.round(mean + scale * torch.randn(n, generator=g, dtype=torch.float64))
        out.append(Case(f"{n} symbols, scales between {s_lo:g} and {s_hi:g}",
                        (y_hat, mean, scale)))
    return out


def _bits_nats(y_hat: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return gaussian_bits(y_hat, mean, scale) * math.log(2.0)


def _bits_density(y_hat: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    z = (y_hat - mean) / scale
    return ((0.5 * torch.log(2 * math.pi * scale**2) + 0.5 * z**2) / math.log(2.0)).sum()


BIN_BITS = Check(
    name="ncvae.bin_bits",
    task="bin_bits(y_hat, mean, scale) -> total code length in bits of the integer symbols y_hat "
         "under Gaussians N(mean, scale²) integrated over the unit bin around each integer",
    reference=gaussian_bits,
    cases=_bits_cases,
    mistakes=(
        Mistake(_bits_nats,
                "the result is in nats: a file is measured in bits, so take log₂ of the "
                "probabilities (or divide by ln 2)."),
        Mistake(_bits_density,
                "this is width × density at the bin centre (the source's eq. (7)). A coder spends "
                "−log₂ of the bin's mass Φ((ŷ+½−μ)/σ) − Φ((ŷ−½−μ)/σ); the two differ badly for "
                "narrow Gaussians, where the approximation can even go negative."),
    ),
)


def _leaky_cases() -> list[Case]:
    g = torch.Generator().manual_seed(23)
    out = []
    for n, s in ((12, 0.2), (20, 1.0), (8, 4.0)):
        y = 3.0 * torch.randn(n, generator=g, dtype=torch.float64)
        out.append(Case(f"{n} unrounded latents, scale = {s:g}", (y, s)))
    return out


def _leaky(y: torch.Tensor, scale: float) -> torch.Tensor:
    """Bits of round(y) under N(y, scale²): a prior that has seen the unrounded latent."""
    return gaussian_bits(torch.round(y), y, scale)


def _leaky_unrounded(y: torch.Tensor, scale: float) -> torch.Tensor:
    return gaussian_bits(y, y, scale)


def _leaky_zero_mean(y: torch.Tensor, scale: float) -> torch.Tensor:
    return gaussian_bits(torch.round(y), 0.0, scale)


LEAKY_BITS = Check(
    name="ncvae.leaky_bits",
    task="leaky_bits(y, scale) -> bits of round(y) under N(y, scale²) per bin, summed: the code "
         "length a prior centred on the unrounded latent would claim",
    reference=_leaky,
    cases=_leaky_cases,
    mistakes=(
        Mistake(_leaky_unrounded,
                "y itself is coded instead of round(y): the file holds the rounded symbols ŷ, "
                "so measure −log₂ P(ŷ) with ŷ = round(y)."),
        Mistake(_leaky_zero_mean,
                "the prior is centred at 0: the point of the exercise is a prior whose mean is the "
                "unrounded latent y itself."),
    ),
)


CHECKS = (BIN_BITS, LEAKY_BITS)
