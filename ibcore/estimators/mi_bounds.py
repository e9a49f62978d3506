r"""Variational lower bounds on mutual information from critic scores (``deep_infomax.md``).

Two input conventions are supported.

*Score matrix.* ``scores`` has shape ``[N, N]`` with ``scores[i, j] = T(x_i, y_j)`` for a batch
of N joint samples ``(x_i, y_i) ~ p(x, y)``. The diagonal holds N samples of the critic under
the joint ``P = p(x, y)``; the ``N(N-1)`` off-diagonal entries are samples under the product
of marginals ``Q = p(x) p(y)`` (each one is distributed exactly as under Q; they are not
independent of one another, which costs variance but not bias in the inner averages).

*Two sample vectors.* ``joint_scores`` (shape ``[N]``, critic on joint pairs) and
``marginal_scores`` (shape ``[M]``, critic on pairs whose y was shuffled independently of x).
The ``*_from_samples`` functions take this form; the matrix functions reduce to them.

All values are in nats. With the true log density ratio as critic,
``T*(x, y) = log p(x, y) / (p(x) p(y))``:

* DV (:func:`dv_bound`) is tight: it equals ``I(X; Y)`` up to Monte-Carlo error.
* NWJ (:func:`nwj_bound`) is tight for ``T* + 1``; with ``T*`` itself it equals ``I − 1/e``.
* JSD (:func:`jsd_bound`) equals ``2·JSD(P‖Q) − log 4`` (not MI; see its docstring).
* InfoNCE (:func:`infonce_bound`) is ≈ ``I`` when ``I ≪ log N`` and never exceeds ``log N``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ibcore.errors import ShapeError
from ibcore.validation import check_float, check_weight

__all__ = [
    "MineEMA",
    "dv_bound",
    "dv_bound_from_samples",
    "infonce_bound",
    "jsd_bound",
    "jsd_bound_from_samples",
    "nwj_bound",
    "nwj_bound_from_samples",
]


# ---------------------------------------------------------------------------------------------
# input checks and the diagonal / off-diagonal split
# ---------------------------------------------------------------------------------------------


def _check_scores(scores: torch.Tensor) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise ShapeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ShapeError(
            "scores must be a square [N, N] matrix with scores[i, j] = T(x_i, y_j), got shape "
            f"{tuple(scores.shape)}"
        )
    if scores.shape[0] < 2:
        raise ShapeError(
            "scores must be at least 2 x 2 so that off-diagonal (negative) pairs exist"
        )
    return check_float("scores", scores)


def _check_vector(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1 or x.shape[0] < 1:
        raise ShapeError(
            f"{name} must be a non-empty 1-D tensor of critic values, got shape "
            f"{tuple(x.shape)}; flatten it with .reshape(-1)"
        )
    return check_float(name, x)


def _check_pair(joint: torch.Tensor, marginal: torch.Tensor) -> None:
    _check_vector("joint_scores", joint)
    _check_vector("marginal_scores", marginal)


def _split(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (diagonal [N], off-diagonal entries [N(N-1)]) of a square score matrix."""
    n = scores.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=scores.device)
    return scores.diagonal(), scores[off]


def _log_mean_exp(x: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(x, dim=0) - math.log(x.shape[0])


# ---------------------------------------------------------------------------------------------
# Donsker–Varadhan (MINE)
# ---------------------------------------------------------------------------------------------


def dv_bound_from_samples(
    joint_scores: torch.Tensor, marginal_scores: torch.Tensor
) -> torch.Tensor:
    r"""Donsker–Varadhan bound ``E_P[T] − log E_Q[e^T]`` from two sample vectors.

    The DV representation of ``KL(P‖Q) = I(X; Y)`` used by MINE (``deep_infomax.md``,
    "Objective 1"). The inner ``log E_Q[e^T]`` is computed with a log-sum-exp, so large critic
    values do not overflow. The plug-in estimate is biased (Jensen) for finite M.
    """
    _check_pair(joint_scores, marginal_scores)
    return joint_scores.mean() - _log_mean_exp(marginal_scores)


def dv_bound(scores: torch.Tensor) -> torch.Tensor:
    """Donsker–Varadhan (MINE) bound from an ``[N, N]`` score matrix (negatives = off-diagonal)."""
    joint, marginal = _split(_check_scores(scores))
    return dv_bound_from_samples(joint, marginal)


# ---------------------------------------------------------------------------------------------
# NWJ (f-divergence, "MINE-f")
# ---------------------------------------------------------------------------------------------


def nwj_bound_from_samples(
    joint_scores: torch.Tensor, marginal_scores: torch.Tensor
) -> torch.Tensor:
    r"""NWJ / f-divergence bound ``E_P[T] − E_Q[e^{T−1}]`` from two sample vectors.

    The Fenchel dual of ``KL`` with the ``e^{T−1}`` convention: it is maximised by
    ``T = 1 + log p/q`` where it equals ``KL(P‖Q)``. Unlike DV the estimate is unbiased
    (no log of an average), at the price of higher variance.
    """
    _check_pair(joint_scores, marginal_scores)
    return joint_scores.mean() - (marginal_scores - 1.0).exp().mean()


def nwj_bound(scores: torch.Tensor) -> torch.Tensor:
    """NWJ bound from an ``[N, N]`` score matrix (negatives = off-diagonal)."""
    joint, marginal = _split(_check_scores(scores))
    return nwj_bound_from_samples(joint, marginal)


# ---------------------------------------------------------------------------------------------
# Jensen–Shannon (Deep InfoMax)
# ---------------------------------------------------------------------------------------------


def jsd_bound_from_samples(
    joint_scores: torch.Tensor, marginal_scores: torch.Tensor
) -> torch.Tensor:
    r"""Deep InfoMax's Jensen–Shannon estimator ``E_P[−sp(−T)] − E_Q[sp(T)]``, sp = softplus.

    This is **not** a bound on the mutual information in nats. Writing ``D = σ(T)``,
    ``−sp(−T) = log D`` and ``−sp(T) = log(1 − D)``, so the estimator is the (negated binary
    cross-entropy) value of a discriminator between P and Q with balanced classes. Its
    supremum over critics, reached at ``T* = log p/q``, is

    .. math::
        \sup_T \; \mathbb E_P[-\mathrm{sp}(-T)] - \mathbb E_Q[\mathrm{sp}(T)]
        = 2\,\mathrm{JSD}(P\|Q) - \log 4,

    with ``JSD(P‖Q) = ½ KL(P‖M) + ½ KL(Q‖M)``, ``M = (P + Q)/2``, in nats (``0 ≤ JSD ≤ log 2``).
    So the estimator lies in ``[−log 4, 0]``: it is −log 4 for independent variables and
    approaches 0 as P and Q become disjoint. Any critic gives a lower bound on
    ``2·JSD − log 4``; the JSD is a monotone proxy of dependence that Deep InfoMax maximises
    instead of the MI itself (``deep_infomax.md``, "Objective 2").
    """
    _check_pair(joint_scores, marginal_scores)
    return -F.softplus(-joint_scores).mean() - F.softplus(marginal_scores).mean()


def jsd_bound(scores: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon (Deep InfoMax) estimator from an ``[N, N]`` score matrix."""
    joint, marginal = _split(_check_scores(scores))
    return jsd_bound_from_samples(joint, marginal)


# ---------------------------------------------------------------------------------------------
# InfoNCE (CPC)
# ---------------------------------------------------------------------------------------------


def infonce_bound(scores: torch.Tensor) -> torch.Tensor:
    r"""InfoNCE bound ``log N − CE``: each row ``x_i`` must pick its partner ``y_i`` among N.

    .. math::
        \hat I_{\text{NCE}} = \log N + \frac1N \sum_i \Bigl(T(x_i, y_i)
        - \log \sum_j e^{T(x_i, y_j)}\Bigr)

    (``deep_infomax.md``, "Objective 3"; the softmax runs along rows, i.e. over the y's). Each
    summand is a log-softmax ≤ 0, so the estimate never exceeds ``log N``: InfoNCE cannot
    report more than ``log N`` nats whatever the true MI. For the symmetric version average
    ``infonce_bound(scores)`` and ``infonce_bound(scores.T)``.
    """
    scores = _check_scores(scores)
    n = scores.shape[0]
    target = torch.arange(n, device=scores.device)
    return math.log(n) - F.cross_entropy(scores, target)


# ---------------------------------------------------------------------------------------------
# MINE with the moving-average gradient correction
# ---------------------------------------------------------------------------------------------


class MineEMA(nn.Module):
    r"""MINE's bias-corrected DV gradient with an exponential moving average of ``E_Q[e^T]``.

    The gradient of the DV bound is ``E_P[∇T] − E_Q[e^T ∇T] / E_Q[e^T]``; estimating the
    denominator on the same mini-batch biases the gradient. MINE replaces the denominator by a
    running average ``m ← decay·m + (1 − decay)·mean_batch(e^T)`` (kept in log space here),
    updated *before* it is used on each call; the first call initialises ``m`` to the batch
    mean.

    :meth:`objective` returns a tensor whose **value is the DV bound** of the batch (as
    :func:`dv_bound` would give) and whose **gradient is the corrected one**; maximise it.
    :meth:`loss` is its negative, for optimisers that minimise. The running average lives in
    two buffers (detached from autograd), so it is part of :meth:`state_dict`: pass the object
    among the modules a :class:`~ibcore.training.Trainer` checkpoints and a resumed run continues
    with the same average. Make one object per estimator.
    """

    log_ema: torch.Tensor
    started: torch.Tensor

    def __init__(self, decay: float = 0.99) -> None:
        super().__init__()
        self.decay = check_weight("decay", decay, low=0.0, high=1.0, high_inclusive=False)
        self.register_buffer("log_ema", torch.zeros((), dtype=torch.float64))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    @property
    def running_mean(self) -> torch.Tensor | None:
        """The current moving average of ``E_Q[e^T]`` (``None`` before the first call)."""
        return self.log_ema.exp() if bool(self.started) else None

    def reset(self) -> None:
        """Forget the moving average."""
        self.started.fill_(False)

    def objective_from_samples(
        self, joint_scores: torch.Tensor, marginal_scores: torch.Tensor
    ) -> torch.Tensor:
        """DV value with the EMA-corrected gradient, from two sample vectors."""
        _check_pair(joint_scores, marginal_scores)
        log_batch = _log_mean_exp(marginal_scores.detach())
        if not bool(self.started):
            log_ema = log_batch
        else:
            prev = self.log_ema.to(log_batch)
            log_ema = torch.logaddexp(
                prev + math.log(self.decay), log_batch + math.log1p(-self.decay)
            )
        self.log_ema = log_ema.detach().to(torch.float64)  # exact for float32 and float64
        self.started.fill_(True)
        # d/dT of mean(e^T) / m is e^T / (M m): the corrected denominator
        surrogate = joint_scores.mean() - (marginal_scores - log_ema).exp().mean()
        value = dv_bound_from_samples(joint_scores, marginal_scores).detach()
        return value + (surrogate - surrogate.detach())

    def objective(self, scores: torch.Tensor) -> torch.Tensor:
        """DV value with the EMA-corrected gradient, from an ``[N, N]`` score matrix."""
        joint, marginal = _split(_check_scores(scores))
        return self.objective_from_samples(joint, marginal)

    def loss_from_samples(
        self, joint_scores: torch.Tensor, marginal_scores: torch.Tensor
    ) -> torch.Tensor:
        """``−objective_from_samples``: minimise it to maximise the DV bound."""
        return -self.objective_from_samples(joint_scores, marginal_scores)

    def loss(self, scores: torch.Tensor) -> torch.Tensor:
        """``−objective(scores)``: minimise it; ``−loss`` is the DV bound of the batch."""
        return -self.objective(scores)
