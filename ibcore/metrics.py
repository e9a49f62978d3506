r"""General evaluation metrics: the ROC curve and the area under it (AUROC).

Convention: ``labels`` are 1 for the *positive* class (e.g. novel / out-of-distribution
samples) and 0 for the negative class; a higher ``score`` means "more positive".

The AUROC equals the Mann-Whitney probability

.. math:: \mathrm{AUROC} = P(S_+ > S_-) + \tfrac12 P(S_+ = S_-),

for a random positive and a random negative; ties count one half. It is computed here as the
trapezoidal area under the ROC curve whose vertices are the distinct score thresholds, which is
the same number.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ibcore.errors import InvalidParameterError, NonFiniteError, ShapeError
from ibcore.validation import check_int

__all__ = ["auroc", "roc_curve", "roc_curve_on_grid"]

ArrayLike = Sequence[float] | np.ndarray | torch.Tensor


def _as_array(name: str, values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ShapeError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _check(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = _as_array("scores", scores).astype(np.float64)
    y = _as_array("labels", labels)
    if s.shape != y.shape:
        raise ShapeError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if not np.isfinite(s).all():
        raise NonFiniteError(
            f"scores hold {int((~np.isfinite(s)).sum())} NaN/inf value(s); fix the score first"
        )
    if not np.isin(y, (0, 1)).all():
        raise InvalidParameterError("labels must be 0 (negative) or 1 (positive)")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise InvalidParameterError(
            "the ROC curve needs both classes: give at least one positive and one negative"
        )
    return s, y


def roc_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC vertices ``(fpr, tpr, thresholds)``, from ``(0, 0)`` to ``(1, 1)``.

    Vertex ``k > 0`` is the operating point "positive iff score ≥ thresholds[k]", for the
    distinct scores in decreasing order; ``thresholds[0] = +inf`` (nothing flagged).
    """
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    tpr = np.r_[0.0, tp / y.sum()]
    fpr = np.r_[0.0, fp / (~y).sum()]
    thresholds = np.r_[np.inf, s[last_of_tie]]
    return fpr, tpr, thresholds


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve (ties count one half); 0.5 is chance, 1 is perfect."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def roc_curve_on_grid(
    scores: ArrayLike, labels: ArrayLike, n_points: int = 101
) -> dict[str, list[float]]:
    """The ROC curve resampled at ``n_points`` evenly spaced false-positive rates in [0, 1].

    Between vertices the curve is the straight segment the trapezoidal AUROC integrates, so
    the area under the resampled curve approaches :func:`auroc` as ``n_points`` grows. At a
    vertical step (several true-positive rates at one false-positive rate) the highest is
    kept. Returns ``{"fpr": [...], "tpr": [...]}``: small enough to store in a result file.
    """
    n_points = check_int("n_points", n_points, low=2)
    fpr, tpr, _ = roc_curve(scores, labels)
    grid = np.linspace(0.0, 1.0, n_points)
    # i: the last vertex with fpr ≤ g (the top of a vertical run); the segment to vertex i + 1
    # (the bottom of the next run) is the piece of the curve the trapezoid rule integrates
    i = np.searchsorted(fpr, grid, side="right") - 1
    j = np.minimum(i + 1, fpr.size - 1)
    span = fpr[j] - fpr[i]
    frac = np.divide(grid - fpr[i], span, out=np.zeros_like(grid), where=span > 0)
    values = tpr[i] + frac * (tpr[j] - tpr[i])
    return {"fpr": grid.tolist(), "tpr": values.tolist()}


# ---------------------------------------------------------------------------------------------
# multi-label (label-set) accuracy, for the GMVIB chapter
# ---------------------------------------------------------------------------------------------


def _check_multilabel(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if scores.dim() != 2 or targets.shape != scores.shape:
        raise ShapeError(
            f"scores and targets must both be [N, C]; got {tuple(scores.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if not bool(torch.isfinite(scores).all()):
        raise NonFiniteError("scores hold NaN/inf values; fix the model output first")
    if bool(((targets != 0) & (targets != 1)).any()):
        raise InvalidParameterError("targets must be multi-hot (0 or 1)")
    m = targets.sum(1).long()
    if bool((m < 1).any()):
        raise InvalidParameterError("every target row needs at least one label")
    return m


def top_m_prediction(scores: torch.Tensor, m: torch.Tensor | int) -> torch.Tensor:
    """Multi-hot ``[N, C]`` prediction: the ``m`` highest-scoring classes of each row.

    ``m`` is one count for all rows or a ``[N]`` tensor (the true number of labels per row).
    Ties are broken by :func:`torch.sort` (stable: the lower class index wins).
    """
    n, c = scores.shape
    m_t = torch.as_tensor(m, device=scores.device).long().expand(n)
    if bool((m_t < 1).any()) or bool((m_t > c).any()):
        raise InvalidParameterError(f"m must be between 1 and the {c} classes")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(c, device=scores.device).expand(n, c))
    return (rank < m_t[:, None]).to(torch.float32)


def exact_set_accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose top-``M`` classes are exactly the true label set (``M`` = its size).

    At chance (a label set drawn uniformly among ``C(C, M)``) this is ``1 / C(C, M)``.
    """
    m = _check_multilabel(scores, targets)
    pred = top_m_prediction(scores, m)
    return float((pred == targets.to(pred.dtype)).all(1).float().mean())


def per_label_accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of the true labels found among the top-``M`` classes, over all rows and labels.

    ``Σ_n |top_M(n) ∩ y_n| / Σ_n M_n``; with predictions of size ``M`` it is both the label-wise
    recall and precision. At chance it is ``M / C``.
    """
    m = _check_multilabel(scores, targets)
    pred = top_m_prediction(scores, m)
    hits = (pred * targets.to(pred.dtype)).sum()
    return float(hits / m.sum())
