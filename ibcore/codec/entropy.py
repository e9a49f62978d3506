r"""The probability model the entropy coder sees, computed bit-exactly on every machine.

A range or ANS decoder recovers the right symbols only if it uses *exactly* the probabilities
the encoder used: one changed bit in a symbol's model can change every symbol decoded after
it. Floating-point convolutions do not guarantee that — a different thread count, BLAS, CPU or
a GPU sums their terms in another order and changes the last bits — so nothing here runs in
floating point on tensors. Everything the coder is given is a function of integers and of the
model's stored ``float32`` weights computed with exact arithmetic:

**Fixed-point hyper-synthesis.** The RDO module's two transposed convolutions read the
integer side information ``ĥ``. Their weights and biases are rounded once to the grid
``2^{-F}`` (:data:`FRACTION_BITS` ``F = 24``; multiplying a float by a power of two and
rounding is exact), ``W_q = round(2^F W)``, and the convolutions are evaluated in ``int64``:

.. math::
    \mu_q = \mathrm{convT}(\hat h; W^\mu_q) + b^\mu_q, \qquad
    s_q = \mathrm{convT}(\hat h; W^\sigma_q) + b^\sigma_q ,

integer sums that are exact in any order. The mean given to the coder is ``μ = μ_q / 2^F``
(exactly representable in ``float64``); its distance to the float model's mean is below
``2^{-F-1} (1 + Σ|ĥ|)``, far below anything that changes a rate.

**Scale table.** The float model's scale is ``σ = σ_min + softplus(s)``, a transcendental
function whose last bit depends on the maths library. Instead the coder uses one of
``K`` (:data:`SCALE_LEVELS`) fixed scales, log-spaced from ``σ_min`` to :data:`SCALE_MAX`,

.. math::
    \sigma_k = \sigma_{\min} \left(\sigma_{\max}/\sigma_{\min}\right)^{k/(K-1)},

chosen as the level nearest to ``σ`` in log scale. Since ``softplus`` is increasing, "σ is
above the geometric midpoint ``b_j = \sqrt{\sigma_j \sigma_{j+1}}``" is the integer comparison
``s_q ≥ T_j`` with ``T_j = ⌈2^F \, \mathrm{softplus}^{-1}(b_j − σ_{\min})⌉``, and the index is
``k = \#\{j : s_q ≥ T_j\}`` — no floating point is involved. The thresholds ``T_j`` and the
levels ``σ_k`` are computed with Python's :mod:`decimal` (software arithmetic whose ``exp`` and
``ln`` are correctly rounded, hence identical on every platform) and the levels converted to
``float64`` with correct rounding. This is the idea of CompressAI's Gaussian conditional
(scales snapped to a fixed table), applied to the pre-activation so that the snapping itself is
exact. The rate cost of snapping is the Kullback-Leibler divergence of a Gaussian to one whose
scale is off by at most half a table step, ``(σ_max/σ_min)^{1/(2(K−1))}``.

**Side information.** The per-channel tables of ``ĥ``'s logistic-mixture density
(:class:`ibcore.estimators.rate.FactorizedDensity`) are likewise computed in :mod:`decimal`
from the stored parameters.

The coder (``constriction``) then turns these identical ``float64`` inputs into integer
probabilities with deterministic single-threaded code. What is left machine-dependent is only
what lies outside this package (a different build of the coder library): the file therefore
also carries checksums of these inputs and of the decoded symbols
(:func:`prior_checksum`, :func:`latent_checksum`), and a decoder that does not reproduce them
refuses to return an image.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from decimal import ROUND_CEILING, Context, Decimal
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from ibcore.errors import InvalidParameterError, ShapeError

__all__ = [
    "FRACTION_BITS",
    "SCALE_LEVELS",
    "SCALE_MAX",
    "ExactPrior",
    "exact_prior",
    "latent_checksum",
    "prior_checksum",
    "scale_table",
    "side_tables",
]

FRACTION_BITS = 24
"""``F``: the hyper-synthesis computes in units of ``2^{-F}``."""
SCALE_LEVELS = 128
"""``K``: number of prior scales the coder can use."""
SCALE_MAX = 256.0
"""``σ_max``: the largest scale of the table (larger scales are coded with it)."""
_PRECISION = 60
"""Significant decimal digits of the :mod:`decimal` computations."""
_INT_LIMIT = 2**62


def _ctx() -> Context:
    return Context(prec=_PRECISION)


def _decimal_scale_levels(scale_min: float) -> list[Decimal]:
    ctx = _ctx()
    lo, hi = ctx.ln(Decimal(scale_min)), ctx.ln(Decimal(SCALE_MAX))
    step = ctx.divide(ctx.subtract(hi, lo), Decimal(SCALE_LEVELS - 1))
    return [ctx.exp(ctx.add(lo, ctx.multiply(Decimal(k), step))) for k in range(SCALE_LEVELS)]


def scale_table(scale_min: float) -> tuple[np.ndarray, np.ndarray]:
    """``(levels, thresholds)``: the ``K`` scales ``σ_k`` (``float64``) and the ``K − 1``
    integer thresholds ``T_j`` (``int64``, units ``2^{-F}`` of the pre-activation ``s``).

    ``σ_min + softplus(s)`` is nearer (in log scale) to ``σ_k`` than to its neighbours exactly
    when ``k = #{j : 2^F s ≥ T_j}`` (up to the rounding of ``T_j`` to the grid).
    """
    if not (0.0 < scale_min < SCALE_MAX):
        raise InvalidParameterError(f"scale_min must lie in (0, {SCALE_MAX}), got {scale_min}")
    levels, thresholds = _scale_table(float(scale_min))
    return np.array(levels, dtype=np.float64), np.array(thresholds, dtype=np.int64)


@lru_cache(maxsize=8)
def _scale_table(scale_min: float) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """:func:`scale_table` as tuples (a pure function of ``scale_min``, computed once)."""
    ctx = _ctx()
    levels = _decimal_scale_levels(scale_min)
    smin = Decimal(scale_min)
    unit = Decimal(2**FRACTION_BITS)
    thresholds = []
    for a, b in zip(levels[:-1], levels[1:], strict=True):
        mid = ctx.sqrt(ctx.multiply(a, b))  # geometric midpoint b_j
        c = ctx.subtract(mid, smin)  # softplus(s) ≥ c  ⇔  s ≥ ln(e^c − 1)
        t = ctx.ln(ctx.subtract(ctx.exp(c), Decimal(1)))
        thresholds.append(int(ctx.multiply(t, unit).to_integral_value(rounding=ROUND_CEILING)))
    return tuple(float(v) for v in levels), tuple(thresholds)


def _fixed(t: torch.Tensor, what: str) -> np.ndarray:
    """``round(2^F t)`` as ``int64`` (exact: scaling by a power of two loses nothing)."""
    a = t.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(a).all():
        raise InvalidParameterError(f"the {what} holds non-finite values")
    q = np.round(np.ldexp(a, FRACTION_BITS))
    if np.abs(q).max(initial=0.0) >= 2.0**40:
        raise InvalidParameterError(f"the {what} holds values too large for the fixed-point prior")
    return q.astype(np.int64)


@dataclass(frozen=True)
class ExactPrior:
    """The RDO module in fixed point and the scale table (see the module docstring).

    ``weight`` is ``int64 [H, 2M, 3, 3]`` (the mean's ``M`` output channels, then the scale's),
    ``bias`` ``int64 [2M]``; ``levels`` and ``thresholds`` are :func:`scale_table`.
    """

    weight: np.ndarray
    bias: np.ndarray
    levels: np.ndarray
    thresholds: np.ndarray

    @property
    def latent(self) -> int:
        return self.bias.size // 2

    def pre_activations(self, h_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(μ_q, s_q)``, each ``int64 [M, 2h, 2w]``, of integer side info ``[H, h, w]``.

        The stride-2 transposed 3×3 convolution with padding 1 and output padding 1: output
        ``(2i − 1 + a, 2j − 1 + b)`` receives ``W[:, :, a, b]ᵀ ĥ[:, i, j]``.
        """
        h_hat = np.asarray(h_hat)
        if h_hat.ndim != 3 or h_hat.shape[0] != self.weight.shape[0]:
            raise ShapeError(
                f"side information must have shape [{self.weight.shape[0]}, h, w], got "
                f"{h_hat.shape}"
            )
        if h_hat.dtype.kind not in "iu":
            raise InvalidParameterError(f"side information must be integers, got {h_hat.dtype}")
        cin, cout = self.weight.shape[:2]
        _, hh, ww = h_hat.shape
        h64 = h_hat.astype(np.int64)
        # bound every sum before computing it: at most 4 taps × cin terms reach one output
        bound = (int(np.abs(self.weight).max(initial=0)) * int(np.abs(h64).max(initial=0))
                 * 4 * cin + int(np.abs(self.bias).max(initial=0)))
        if bound >= _INT_LIMIT:
            raise InvalidParameterError("the side information is too large for the fixed-point prior")
        # Below 2^53 every partial sum of integers is an integer that float64 holds exactly, so
        # a float64 matrix product (any BLAS, any order, with or without FMA) is exact and much
        # faster than numpy's int64 product; above it the int64 product is used.
        dtype = np.float64 if bound < 2**53 else np.int64
        flat = h64.reshape(cin, hh * ww).astype(dtype)
        weight = self.weight.astype(dtype)
        full = np.zeros((cout, 2 * hh + 2, 2 * ww + 2), dtype=dtype)
        for a in range(3):
            for b in range(3):
                tap = (weight[:, :, a, b].T @ flat).reshape(cout, hh, ww)
                full[:, a : a + 2 * hh : 2, b : b + 2 * ww : 2] += tap
        full = full.astype(np.int64)
        out = full[:, 1 : 2 * hh + 1, 1 : 2 * ww + 1] + self.bias[:, None, None]
        m = self.latent
        return out[:m], out[m:]

    def coder_arrays(self, h_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flattened ``(means, scales)`` (``float64``, C order over ``[M, 2h, 2w]``) for the
        Gaussian coder of ``ŷ``: ``μ_q / 2^F`` and the table scale ``σ_k``."""
        mean_q, scale_q = self.pre_activations(h_hat)
        means = np.ldexp(mean_q.astype(np.float64), -FRACTION_BITS).ravel()
        index = np.searchsorted(self.thresholds, scale_q.ravel(), side="right")
        return means, self.levels[index]


def exact_prior(rdo: nn.Module) -> ExactPrior:
    """The :class:`ExactPrior` of an :class:`ibcore.models.ncvae.RDOModule`."""
    weight = torch.cat([rdo.mean.weight, rdo.scale.weight], dim=1)
    bias = torch.cat([rdo.mean.bias, rdo.scale.bias])
    if tuple(weight.shape[2:]) != (3, 3) or rdo.mean.stride != (2, 2):
        raise ShapeError("the RDO module must consist of stride-2 transposed 3x3 convolutions")
    levels, thresholds = scale_table(float(rdo.scale_min))
    return ExactPrior(_fixed(weight, "RDO module's weights"), _fixed(bias, "RDO module's biases"),
                      levels, thresholds)


def side_tables(density: nn.Module, lo: int, hi: int) -> np.ndarray:
    r"""Per-channel pmf of the side symbols ``lo … hi``: ``float64 [C, hi − lo + 1]``, rows
    summing to 1.

    ``P_c(v) ∝ Σ_m π_{c,m} [sigmoid((v + ½ − μ_{c,m})/s_{c,m}) − sigmoid((v − ½ − μ_{c,m})/s_{c,m})]``
    (:class:`ibcore.estimators.rate.FactorizedDensity`), evaluated in :mod:`decimal` from the
    stored parameters and renormalised on ``[lo, hi]``; identical on every machine.
    """
    if not lo < hi:
        raise InvalidParameterError(f"need lo < hi, got [{lo}, {hi}]")
    ctx = _ctx()
    logits = density.logits.detach().to("cpu", torch.float64).numpy()
    locs = density.locs.detach().to("cpu", torch.float64).numpy()
    log_scales = density.log_scales.detach().to("cpu", torch.float64).numpy()
    n_edges = hi - lo + 2  # the bin edges lo − ½, lo + ½, …, hi + ½
    one = Decimal(1)
    rows = []
    for c in range(logits.shape[0]):
        exps = [ctx.exp(Decimal(float(v))) for v in logits[c]]
        total = sum(exps, Decimal(0))
        cdf = [Decimal(0)] * n_edges
        for m in range(logits.shape[1]):
            weight = ctx.divide(exps[m], total)
            loc, scale = Decimal(float(locs[c, m])), ctx.exp(Decimal(float(log_scales[c, m])))
            # sigmoid((e − loc)/s) = 1 / (1 + q_e) with q_e = exp(−(e − loc)/s); consecutive
            # edges differ by 1, so q_{e+1} = q_e · exp(−1/s) (exact decimal operations only)
            q = ctx.exp(ctx.divide(ctx.subtract(loc, Decimal(lo) - Decimal("0.5")), scale))
            ratio = ctx.exp(ctx.divide(Decimal(-1), scale))
            for k in range(n_edges):
                cdf[k] = ctx.add(cdf[k], ctx.divide(weight, ctx.add(one, q)))
                q = ctx.multiply(q, ratio)
        mass = [ctx.subtract(b, a) for a, b in zip(cdf[:-1], cdf[1:], strict=True)]
        norm = sum(mass, Decimal(0))
        rows.append([float(ctx.divide(p, norm)) for p in mass])
    return np.array(rows, dtype=np.float64)


def prior_checksum(side: np.ndarray, means: np.ndarray, scales: np.ndarray) -> int:
    """CRC-32 of every number the coder's models are built from (side tables, then the
    means and scales of ``ŷ``), as little-endian ``float64``."""
    crc = 0
    for a in (side, means, scales):
        crc = zlib.crc32(np.ascontiguousarray(a, dtype="<f8").tobytes(), crc)
    return crc


def latent_checksum(y_int: np.ndarray, h_int: np.ndarray) -> int:
    """CRC-32 of the integer latents ``ŷ`` then ``ĥ`` (C order, little-endian ``int32``)."""
    crc = zlib.crc32(np.ascontiguousarray(y_int, dtype="<i4").tobytes())
    return zlib.crc32(np.ascontiguousarray(h_int, dtype="<i4").tobytes(), crc)
