r"""The Monte-Carlo objectives of Basic, VIB and GMVIB (``gmvib.md`` eqs. 9–12), in nats.

The decoder ``q(y|z)`` of a label *set* is a product of independent Bernoullis over the ``C``
classes (``y`` multi-hot), so ``−log q(y|z) = Σ_c BCE(logit_c, y_c)``. With ``S`` samples
``z^{(s)}`` of the encoder per example, the minimised objective (eq. 10) is

.. math::
    J = \frac1B \sum_n \Bigl[\frac1S \sum_s -\log q\bigl(y_n \mid z_n^{(s)}\bigr)\Bigr]
        + \beta\, \frac1B \sum_n R(x_n),

with the rate ``R`` the KL of the encoder from the prior: for VIB
``KL(N(μ, diag σ²) ‖ N(0, I))``; for GMVIB the sum of eq. 11, ``Σ_k KL(N(μ_k, σ_k²) ‖ N(0, I))
+ KL(Dir(α) ‖ Dir(α_prior))`` (:func:`ibcore.estimators.gmvib_rate`, eq. 12 corrected);
Basic has no rate. The batch means of the two terms bound the information plane:
``I(Z;x) ≤ E[R]`` (eq. 8) and ``I(Z;y) ≥ H(y) − E[−log q(y|z)]`` (eq. 7).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ibcore.errors import InvalidParameterError, ShapeError, UnknownNameError
from ibcore.estimators.kl import gmvib_rate, kl_diag_gaussian_std_normal
from ibcore.models.gmvib import KINDS, BottleneckOutput
from ibcore.validation import check_finite, check_weight

__all__ = [
    "basic_objective",
    "bottleneck_objective",
    "gmvib_objective",
    "multilabel_nll",
    "vib_objective",
]


def multilabel_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """``(1/S) Σ_s Σ_c BCE(logits[s, b, c], targets[b, c])`` per example: shape ``[B]``.

    ``logits`` is ``[S, B, C]`` (``S`` Monte-Carlo samples) or ``[B, C]``; ``targets`` is the
    ``[B, C]`` multi-hot label set (0/1 floats).
    """
    if logits.dim() == 2:
        logits = logits.unsqueeze(0)
    if logits.dim() != 3 or targets.dim() != 2 or logits.shape[1:] != targets.shape:
        raise ShapeError(
            f"logits must be [S, B, C] (or [B, C]) and targets [B, C] with the same B, C; got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    check_finite("logits", logits)
    if bool(((targets != 0) & (targets != 1)).any()):
        raise InvalidParameterError("targets must be multi-hot (0 or 1); use multi_hot(...)")
    bce = F.binary_cross_entropy_with_logits(
        logits, targets.to(logits.dtype).expand_as(logits), reduction="none"
    )
    return bce.sum(-1).mean(0)


def basic_objective(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Basic: ``loss = ce`` (the mean of :func:`multilabel_nll`)."""
    ce = multilabel_nll(logits, targets).mean()
    return {"loss": ce, "ce": ce}


def vib_objective(
    logits: Tensor, targets: Tensor, mu: Tensor, logvar: Tensor, beta: float
) -> dict[str, Tensor]:
    """VIB (Alemi et al.; GMVIB with ``K = 1`` and ``e ≡ 1``): ``loss = ce + β · rate``.

    ``mu``/``logvar`` are ``[B, D]`` or ``[B, 1, D]``; ``rate`` is the batch mean of
    ``KL(N(μ, diag σ²) ‖ N(0, I))``.
    """
    beta = check_weight("beta", beta)
    if mu.dim() == 3:
        if mu.shape[1] != 1:
            raise ShapeError(f"VIB has one component; got mu of shape {tuple(mu.shape)}")
        mu, logvar = mu[:, 0], logvar[:, 0]
    ce = multilabel_nll(logits, targets).mean()
    rate = kl_diag_gaussian_std_normal(mu, logvar).mean()
    return {"loss": ce + beta * rate, "ce": ce, "rate": rate}


def gmvib_objective(
    logits: Tensor,
    targets: Tensor,
    mu: Tensor,
    logvar: Tensor,
    alpha: Tensor,
    beta: float,
    alpha_prior: float | Tensor = 1.0,
) -> dict[str, Tensor]:
    """GMVIB (eqs. 10–11): ``loss = ce + β · (Σ_k KL_k + KL_Dir)``.

    ``mu``/``logvar`` ``[B, K, D]``, ``alpha`` ``[B, K]``; ``rate`` is the batch mean of
    :func:`~ibcore.estimators.gmvib_rate`; ``rate_gauss`` and ``rate_dirichlet`` are its two
    parts (for the record).
    """
    beta = check_weight("beta", beta)
    ce = multilabel_nll(logits, targets).mean()
    rate_all = gmvib_rate(mu, logvar, alpha, alpha_prior)
    gauss = kl_diag_gaussian_std_normal(mu, logvar).sum(-1).mean()
    rate = rate_all.mean()
    return {"loss": ce + beta * rate, "ce": ce, "rate": rate, "rate_gauss": gauss,
            "rate_dirichlet": rate - gauss}


def bottleneck_objective(
    kind: str,
    out: BottleneckOutput,
    targets: Tensor,
    beta: float,
    alpha_prior: float | Tensor = 1.0,
) -> dict[str, Tensor]:
    """Dispatch on the model ``kind`` (:data:`ibcore.models.gmvib.KINDS`)."""
    if kind not in KINDS:
        raise UnknownNameError(f"unknown model kind {kind!r}; choose one of {KINDS}")
    if kind == "basic":
        return basic_objective(out.logits, targets)
    assert out.mu is not None and out.logvar is not None
    if kind == "vib":
        return vib_objective(out.logits, targets, out.mu, out.logvar, beta)
    assert out.alpha is not None
    return gmvib_objective(out.logits, targets, out.mu, out.logvar, out.alpha, beta, alpha_prior)

