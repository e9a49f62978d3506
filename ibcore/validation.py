"""Small argument checks shared by every module, each raising a typed :mod:`ibcore.errors`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ibcore.errors import InvalidParameterError, NonFiniteError, ShapeError


def check_weight(
    name: str,
    value: float,
    *,
    low: float = 0.0,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return ``float(value)`` if it is finite and within ``[low, high]``; raise otherwise.

    Used for every trade-off weight (β, λ, γ …). The default range is ``[0, ∞)``.
    """
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"{name} must be a real number, got {value!r}") from exc
    if not math.isfinite(v):
        raise InvalidParameterError(f"{name} must be finite, got {v}")
    if v < low or (v == low and not low_inclusive):
        bound = "≥" if low_inclusive else ">"
        raise InvalidParameterError(f"{name} must be {bound} {low}, got {v}")
    if high is not None and (v > high or (v == high and not high_inclusive)):
        bound = "≤" if high_inclusive else "<"
        raise InvalidParameterError(f"{name} must be {bound} {high}, got {v}")
    return v


def check_int(name: str, value: int, *, low: int = 1, high: int | None = None) -> int:
    """Return ``value`` if it is an integer within ``[low, high]``; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameterError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f" and ≤ {high}"
        raise InvalidParameterError(f"{name} must be ≥ {low}{upper}, got {value}")
    return value


def check_shape(name: str, x: torch.Tensor, shape: Sequence[int | None]) -> torch.Tensor:
    """Check that ``x`` has ``len(shape)`` dimensions and matching sizes (``None`` = any size)."""
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, x.shape, strict=True)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ShapeError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    return x


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise :class:`NonFiniteError` if ``x`` holds a NaN or an infinity."""
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteError(f"{name} holds {n_bad} NaN/inf value(s); check the input data")
    return x


def check_float(name: str, x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` if it is a floating-point tensor without NaN or infinity; raise otherwise."""
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise InvalidParameterError(
            f"{name} must be a floating-point tensor, got dtype {x.dtype}; convert it with .float()"
        )
    return check_finite(name, x)
