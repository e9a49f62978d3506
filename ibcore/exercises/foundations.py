r"""Self-checks of the Foundations exercises: the InfoNCE bound and the Gaussian IB curve."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ibcore.estimators.gaussian_ib import gaussian_ib_curve
from ibcore.estimators.mi_bounds import infonce_bound
from ibcore.exercises.checking import Case, Check, Mistake

__all__ = ["CHECKS"]


def _scores_cases() -> list[Case]:
    g = torch.Generator().manual_seed(11)
    out = []
    for n, scale, shift in ((4, 1.0, 0.0), (8, 3.0, 1.0), (16, 0.5, -2.0)):
        s = scale * torch.randn(n, n, generator=g, dtype=torch.float64) + shift
        s = s + 2.0 * torch.eye(n, dtype=torch.float64)  # matched pairs score higher
        out.append(Case(f"a {n}×{n} score matrix (seed 11)", (s,)))
    return out


def _infonce_no_log_n(scores: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(scores, torch.arange(scores.shape[0]))


def _infonce_columns(scores: torch.Tensor) -> torch.Tensor:
    return infonce_bound(scores.T)


def _infonce_without_positive(scores: torch.Tensor) -> torch.Tensor:
    n = scores.shape[0]
    off = scores.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    return math.log(n) + (scores.diagonal() - torch.logsumexp(off, dim=1)).mean()


INFONCE = Check(
    name="foundations.infonce",
    task="infonce(scores) -> the InfoNCE bound in nats of an [N, N] score matrix "
         "scores[i, j] = T(x_i, y_j)",
    reference=infonce_bound,
    cases=_scores_cases,
    mistakes=(
        Mistake(_infonce_no_log_n,
                "the log N term is missing: without it every summand is a log-softmax and the "
                "value is at most 0, so it cannot estimate a positive information."),
        Mistake(_infonce_columns,
                "the softmax runs over the wrong index: each row i (the input x_i) must pick its "
                "partner among the codes y_j, so normalise along each row (over j)."),
        Mistake(_infonce_without_positive,
                "the denominator leaves out the matched pair: the sum over j runs over all N "
                "candidates, the positive one included (that is what caps the bound at log N)."),
    ),
)


def _curve_cases() -> list[Case]:
    rho = torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64)
    return [Case(f"rho = (0.9, 0.6, 0.3), beta = {b:g}", (rho, b)) for b in (0.8, 1.5, 5.0, 20.0)]


def _curve(rho: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The IB curve at β for canonical correlations rho: (I(X;Z), I(Z;Y)) in nats."""
    d = rho.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    out = gaussian_ib_curve(eye, torch.diag(rho.to(torch.float64)), eye, [float(beta)])
    return out["i_tx"][0], out["i_ty"][0]


def _curve_with(rho: torch.Tensor, beta: float, active: torch.Tensor,
                sign: float = -1.0) -> tuple[torch.Tensor, torch.Tensor]:
    lam = 1.0 - rho.to(torch.float64) ** 2
    tx = torch.where(active, 0.5 * torch.log((beta - 1.0) * (1.0 - lam) / lam), 0.0).sum()
    ty_extra = torch.where(active, 0.5 * torch.log(beta * (1.0 - lam)), 0.0).sum()
    return tx, tx + sign * ty_extra


def _curve_switch_at_rho(rho: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _curve_with(rho, beta, beta > 1.0 / rho.abs())


def _curve_plus(rho: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _curve_with(rho, beta, beta > 1.0 / rho**2, sign=+1.0)


IB_CURVE = Check(
    name="foundations.ib_curve_point",
    task="ib_curve_point(rho, beta) -> (I(X;Z), I(Z;Y)) in nats on the Gaussian IB curve, for "
         "canonical correlations rho (a 1-D tensor) and trade-off beta",
    reference=_curve,
    cases=_curve_cases,
    mistakes=(
        Mistake(_curve_switch_at_rho,
                "a direction switches on too early: direction i joins at β > 1/ρ_i² (that is "
                "1/(1 − λ_i) with λ_i = 1 − ρ_i²), not at β > 1/ρ_i."),
        Mistake(_curve_plus,
                "I(Z;Y) is I(X;Z) minus ½ Σ log(β(1 − λ_i)) over the active directions, not plus: "
                "the relevance can never exceed the compression term."),
    ),
    nonfinite_hint="A log of a negative number? Directions below their critical β must be "
                   "left out of both sums (they contribute 0).",
)

CHECKS = (INFONCE, IB_CURVE)
