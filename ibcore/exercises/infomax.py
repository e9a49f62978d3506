r"""Self-checks of the Deep InfoMax exercises: the DV and Jensen–Shannon estimators from scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ibcore.estimators.mi_bounds import dv_bound, jsd_bound
from ibcore.exercises.checking import Case, Check, Mistake

__all__ = ["CHECKS"]


def _cases(large: bool) -> list[Case]:
    g = torch.Generator().manual_seed(29)
    out = []
    for n, scale in ((4, 1.0), (8, 2.0)):
        s = scale * torch.randn(n, n, generator=g) + 1.5 * torch.eye(n)
        out.append(Case(f"a {n}×{n} float32 score matrix (seed 29)", (s,)))
    if large:
        s = 30.0 * torch.randn(6, 6, generator=g) + 100.0
        out.append(Case("a 6×6 float32 score matrix with scores around 100", (s,)))
    return out


def _off(scores: torch.Tensor) -> torch.Tensor:
    return scores[~torch.eye(scores.shape[0], dtype=torch.bool)]


def _dv_jensen(scores: torch.Tensor) -> torch.Tensor:
    return scores.diagonal().mean() - _off(scores).mean()


def _dv_all_negatives(scores: torch.Tensor) -> torch.Tensor:
    flat = scores.reshape(-1)
    return scores.diagonal().mean() - (torch.logsumexp(flat, 0) - torch.log(
        torch.tensor(float(flat.numel()))))


DV = Check(
    name="infomax.dv",
    task="dv(scores) -> the Donsker–Varadhan bound E_P[T] − log E_Q[e^T] in nats of an [N, N] "
         "score matrix (matched pairs on the diagonal, negatives off it)",
    reference=dv_bound,
    cases=lambda: _cases(large=True),
    mistakes=(
        Mistake(_dv_jensen,
                "log E_Q[e^T] was replaced by E_Q[T]: the log of an average of exponentials is not "
                "the average of the scores (by Jensen it is larger), so keep the log outside."),
        Mistake(_dv_all_negatives,
                "the diagonal is counted among the negatives: samples of the product of marginals "
                "are the N(N − 1) off-diagonal pairs only."),
    ),
    nonfinite_hint="exp of a score near 100 overflows in float32; compute log E_Q[e^T] as "
                   "logsumexp(T) − log M (torch.logsumexp).",
)


def _jsd_swapped(scores: torch.Tensor) -> torch.Tensor:
    return -F.softplus(scores.diagonal()).mean() - F.softplus(-_off(scores)).mean()


def _jsd_all_negatives(scores: torch.Tensor) -> torch.Tensor:
    return -F.softplus(-scores.diagonal()).mean() - F.softplus(scores.reshape(-1)).mean()


JSD = Check(
    name="infomax.jsd",
    task="jsd(scores) -> Deep InfoMax's Jensen–Shannon estimator E_P[−sp(−T)] − E_Q[sp(T)] of an "
         "[N, N] score matrix (sp = softplus)",
    reference=jsd_bound,
    cases=lambda: _cases(large=False),
    mistakes=(
        Mistake(_jsd_swapped,
                "the softplus signs are swapped: a matched pair contributes −sp(−T) = log σ(T) and "
                "a negative −sp(T) = log(1 − σ(T)), as for a classifier that labels positives 1."),
        Mistake(_jsd_all_negatives,
                "the diagonal is counted among the negatives: only the off-diagonal pairs are "
                "samples of the product of marginals."),
    ),
)

CHECKS = (DV, JSD)
