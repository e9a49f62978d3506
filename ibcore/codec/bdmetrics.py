r"""Bjøntegaard delta metrics: the average gap between two rate-distortion curves.

Given an *anchor* curve A and a *test* curve B, each a few points (rate Rᵢ > 0, PSNR Dᵢ):

* **BD-PSNR** (dB): fit PSNR as a function of ``r = log₁₀ R`` for each curve, integrate both
  over the overlap ``[r_lo, r_hi]`` of their log-rate ranges, and average the difference:

  .. math:: \Delta D = \frac{1}{r_{hi} - r_{lo}} \int_{r_{lo}}^{r_{hi}} \big(D_B(r) - D_A(r)\big)\,dr.

* **BD-rate** (%): fit ``log₁₀ R`` as a function of PSNR, average the difference over the
  overlap of the PSNR ranges, and turn the average log-ratio into a percentage:

  .. math:: \Delta R = 100\,\big(10^{\overline{r_B(D) - r_A(D)}} - 1\big).

  Negative means B needs fewer bits than A for the same quality (B wins).

Fits: ``method="cubic"`` is Bjøntegaard's original least-squares polynomial of degree
``min(3, n − 1)`` (exact through 4 points); ``method="pchip"`` is a monotone piecewise cubic
through the points (scipy's ``PchipInterpolator``), which does not oscillate between points.
Both are exact when the true curves are polynomials of degree ≤ 1 in ``r`` (the hand-checkable
case in the tests).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.polynomial import polynomial as P
from scipy.interpolate import PchipInterpolator

from ibcore.errors import InvalidParameterError, NonFiniteError, ShapeError, UnknownNameError

__all__ = ["bd_psnr", "bd_rate"]

_METHODS = ("cubic", "pchip")


def _curve(name: str, rates: Sequence[float], psnrs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rates, dtype=float)
    d = np.asarray(psnrs, dtype=float)
    if r.ndim != 1 or d.ndim != 1 or r.size != d.size:
        raise ShapeError(f"{name}: rates and PSNRs must be 1-D of equal length, got {r.shape}, {d.shape}")
    if r.size < 2:
        raise ShapeError(f"{name}: a curve needs at least 2 points, got {r.size}")
    if not (np.isfinite(r).all() and np.isfinite(d).all()):
        raise NonFiniteError(f"{name}: rates and PSNRs must be finite")
    if (r <= 0).any():
        raise InvalidParameterError(f"{name}: rates must be > 0 (they are taken in log), got {r}")
    order = np.argsort(r)
    return np.log10(r[order]), d[order]


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    """∫_lo^hi of the fit of y(x)."""
    if method == "cubic":
        coef = P.polyfit(x, y, min(3, x.size - 1))
        anti = P.polyint(coef)
        return float(P.polyval(hi, anti) - P.polyval(lo, anti))
    order = np.argsort(x)
    xs, ys = x[order], y[order]
    if (np.diff(xs) <= 0).any():
        raise InvalidParameterError(
            "method='pchip' needs strictly monotone curves (distinct abscissae); use 'cubic'"
        )
    return float(PchipInterpolator(xs, ys).integrate(lo, hi))


def _overlap(a: np.ndarray, b: np.ndarray, what: str) -> tuple[float, float]:
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    if not hi > lo:
        raise InvalidParameterError(
            f"the two curves' {what} ranges do not overlap ([{a.min():.4g}, {a.max():.4g}] vs "
            f"[{b.min():.4g}, {b.max():.4g}]); BD metrics need a common range"
        )
    return float(lo), float(hi)


def _check_method(method: str) -> str:
    if method not in _METHODS:
        raise UnknownNameError(f"unknown method {method!r}; choose one of {', '.join(_METHODS)}")
    return method


def bd_psnr(
    anchor_rates: Sequence[float],
    anchor_psnrs: Sequence[float],
    test_rates: Sequence[float],
    test_psnrs: Sequence[float],
    *,
    method: str = "cubic",
) -> float:
    """BD-PSNR of the test curve over the anchor, in dB (positive: the test is better)."""
    method = _check_method(method)
    ra, da = _curve("anchor", anchor_rates, anchor_psnrs)
    rb, db = _curve("test", test_rates, test_psnrs)
    lo, hi = _overlap(ra, rb, "log-rate")
    return (_integral(rb, db, lo, hi, method) - _integral(ra, da, lo, hi, method)) / (hi - lo)


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_psnrs: Sequence[float],
    test_rates: Sequence[float],
    test_psnrs: Sequence[float],
    *,
    method: str = "cubic",
) -> float:
    """BD-rate of the test curve against the anchor, in percent (negative: the test saves bits)."""
    method = _check_method(method)
    ra, da = _curve("anchor", anchor_rates, anchor_psnrs)
    rb, db = _curve("test", test_rates, test_psnrs)
    lo, hi = _overlap(da, db, "PSNR")
    avg = (_integral(db, rb, lo, hi, method) - _integral(da, ra, lo, hi, method)) / (hi - lo)
    return float(100.0 * (10.0**avg - 1.0))
