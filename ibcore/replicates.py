r"""Numbers over replicates (training seeds) and repeated estimates, with 95 % intervals.

A chapter trains its main rows with several seeds (*replicates*) and compares two rows by the
differences of their replicate-paired values :math:`d_r = a_r - b_r`: their mean
:math:`\bar d`, sample standard deviation :math:`s` and the two-sided 95 % Student-t interval

.. math::  \bar d \pm t_{0.975,\,n-1}\, s / \sqrt n .

The interval decides the claim "a > b": *supported* when it lies above 0, *contradicted* when it
lies below 0, *undecided* otherwise (also for a single pair, which has no interval).
:func:`mean_interval` gives the same interval for one set of values (a repeated estimate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ibcore.errors import InvalidParameterError

__all__ = ["aggregate_rows", "mean_interval", "numeric_keys", "paired_difference", "verdict"]


def _t_quantile(dof: int) -> float:
    """``t_{0.975, dof}``, the two-sided 95 % quantile of Student's t."""
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.975, dof))


def mean_interval(values: Sequence[float]) -> dict[str, Any]:
    r"""Mean, sample std and the 95 % Student-t interval :math:`\bar x \pm t\,s/\sqrt n` of
    ``values`` (``interval_95`` and ``std`` are ``None`` for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        raise InvalidParameterError("an interval needs at least one value")
    if not all(math.isfinite(v) for v in vals):
        raise InvalidParameterError(f"values must be finite, got {vals}")
    n = len(vals)
    mean = sum(vals) / n
    if n < 2:
        return {"mean": mean, "std": None, "n": n, "interval_95": None, "values": vals}
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = _t_quantile(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "std": sd, "n": n, "interval_95": [mean - half, mean + half],
            "values": vals}


def verdict(interval: Sequence[float] | None) -> str:
    """``"supported"`` (interval above 0), ``"contradicted"`` (below 0) or ``"undecided"``."""
    if interval is None:
        return "undecided"
    lo, hi = interval
    return "supported" if lo > 0 else "contradicted" if hi < 0 else "undecided"


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Mean of the replicate-paired differences ``a_r − b_r`` with a two-sided 95 % Student-t
    interval (``n − 1`` degrees of freedom; none for a single pair) and the verdict it gives on
    "a > b": ``supported`` (interval above 0), ``contradicted`` (below 0) or ``undecided``."""
    if len(a) != len(b) or not a:
        raise InvalidParameterError("paired differences need the same, non-zero number of "
                                    f"replicates, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    stats = mean_interval(d)
    out = {"mean": stats["mean"], "n": stats["n"], "differences": d,
           "interval_95": stats["interval_95"], "verdict": verdict(stats["interval_95"])}
    if stats["std"] is not None:
        out["std"] = stats["std"]
    return out


def numeric_keys(row: Mapping[str, Any]) -> list[str]:
    """The keys of a model's row that hold a number measured on a split (``test_``, ``val_``,
    ``train_`` prefixes; booleans and ``None`` excluded)."""
    return [k for k, v in row.items() if k.startswith(("test_", "val_", "train_"))
            and isinstance(v, (int, float)) and not isinstance(v, bool)]


def aggregate_rows(models: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per table row: every numeric metric's mean, sample std and values over the replicates
    (``{"row": {"label", "seeds", "metrics": {key: {"mean", "std", "n", "values"}}}}``).

    Each model's entry names its table row (``"row"``) and its ``"replicate"``; ``"label"`` is
    optional (default: the row's name). A metric missing from some replicate is left out."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in models.values():
        groups.setdefault(row["row"], []).append(row)
    out: dict[str, dict[str, Any]] = {}
    for name, rows in groups.items():
        rows = sorted(rows, key=lambda r: r["replicate"])
        stats = {}
        for key in numeric_keys(rows[0]):
            if not all(isinstance(r.get(key), (int, float)) for r in rows):
                continue
            values = [float(r[key]) for r in rows]
            mean = sum(values) / len(values)
            std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                   if len(values) > 1 else None)
            stats[key] = {"mean": mean, "std": std, "n": len(values), "values": values}
        out[name] = {"label": rows[0].get("label", name), "seeds": [r["replicate"] for r in rows],
                     "metrics": stats}
    return out
