r"""Deep InfoMax objectives: global and local MI terms and prior matching (``deep_infomax.md``).

The MI estimators themselves are those of :mod:`ibcore.estimators.mi_bounds` (DV, JSD,
InfoNCE); this module only decides *which* critic scores are positives and negatives and how
the terms are weighted.

**Global term.** With the ``[B, B]`` matrix ``S[i, j] = T(C(x_i), E(x_j))`` (diagonal: joint
pairs, off-diagonal: pairs from the product of marginals),
:math:`\hat I_G = \hat I(C(X); E(X))` is the chosen bound of ``S``.

**Local term.** With ``[B, B, M²]`` scores ``S[i, j, l] = T(C^{(l)}(x_i), E(x_j))``, the
positive pairs are the ``B · M²`` entries ``S[j, j, l]`` (location ``l`` of image ``j`` with the
global vector of the same image). Following the source, the negatives of the global vector
``E(x_j)`` are the local features of *every other image at every location*,
``S[k, j, l']`` for ``k ≠ j`` and all ``l'``: ``(B − 1) · M²`` negatives per positive pair
(``negatives="all_locations"``, the default). The three estimators then read

.. math::
    \hat I_L^{\mathrm{JSD}} = \operatorname*{mean}_{j,l} \big[-\mathrm{sp}(-S_{jjl})\big]
        - \operatorname*{mean}_{k \ne j,\, l'} \mathrm{sp}(S_{kjl'}), \qquad
    \hat I_L^{\mathrm{DV}} = \operatorname*{mean}_{j,l} S_{jjl}
        - \log \operatorname*{mean}_{k \ne j,\, l'} e^{S_{kjl'}},

.. math::
    \hat I_L^{\mathrm{NCE}} = \log\big(1 + (B-1)M^2\big) + \operatorname*{mean}_{j,l}
        \log \frac{e^{S_{jjl}}}{e^{S_{jjl}} + \sum_{k \ne j,\, l'} e^{S_{kjl'}}},

so InfoNCE can reach ``log(1 + (B − 1)M²)`` nats instead of ``log B``. The named ablation
``negatives="same_location"`` contrasts location ``l`` only with the same location of the other
images: each of the ``M²`` slices ``S[:, :, l]`` gets the ``B × B`` bound of the global term and
the ``M²`` values are averaged (``B − 1`` negatives per positive). For JSD the two are the same
number (the positives and the negatives are averaged separately over the same pairs); for DV and
InfoNCE they differ.

**Combined objective** (the source's "Combining all together")

.. math::
    \max_{\omega_1, \omega_2, \psi}\; \alpha \hat I_G + \beta \hat I_L
    \;-\; \gamma\, \hat D_\phi(\mathbb V \,\|\, \mathbb U_{\psi,\mathbb P}).

:func:`dim_mi_terms` lets the critics always maximise their own estimate (so the global and
local estimates can be monitored for every model, also when ``α = 0`` or ``β = 0``) while the
encoder receives the gradient of ``α Î_G + β Î_L`` only: the features enter each critic through
:func:`scale_gradient`. With Adam the critics' step does not depend on a positive factor in
front of their own term, so for ``α, β > 0`` this is the source's objective.

**Prior matching** (source's Figure 7) trains ``D_φ(y) = σ(s(y))`` to tell prior samples
``v ~ V = U[0, 1]^{64}`` from codes ``E(x)``:
:func:`prior_discriminator_loss` is ``−E_V log D(v) − E_P log(1 − D(E(x)))`` (minimised by φ)
and the encoder minimises the non-saturating :func:`prior_generator_loss`
``−E_P log D(E(x))`` (the usual GAN substitute for ``E_P log(1 − D(E(x)))``, same fixed point).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ibcore.errors import ShapeError, UnknownNameError
from ibcore.estimators.mi_bounds import dv_bound, infonce_bound, jsd_bound
from ibcore.validation import check_finite, check_float, check_int, check_weight

__all__ = [
    "ESTIMATORS",
    "LOCAL_NEGATIVES",
    "dim_mi_terms",
    "global_mi",
    "local_mi",
    "local_negatives_per_positive",
    "occlude_squares",
    "prior_discriminator_loss",
    "prior_generator_loss",
    "sample_uniform_prior",
    "scale_gradient",
]

ESTIMATORS: tuple[str, ...] = ("dv", "jsd", "infonce")
"""The source's three MI objectives: Donsker–Varadhan (MINE), Jensen–Shannon, InfoNCE."""


LOCAL_NEGATIVES: tuple[str, ...] = ("all_locations", "same_location")
"""Negatives of the local term: the source's (other images, every location) and the ablation
(other images, the positive's location only)."""


def _check_negatives(negatives: str) -> str:
    if negatives not in LOCAL_NEGATIVES:
        raise UnknownNameError(
            f"unknown local negatives {negatives!r}; choose one of {', '.join(LOCAL_NEGATIVES)}"
        )
    return negatives


def local_negatives_per_positive(batch_size: int, locations: int, negatives: str) -> int:
    """Negative pairs each positive pair of the local term is contrasted with."""
    batch_size, locations = check_int("batch_size", batch_size, low=2), check_int(
        "locations", locations)
    if _check_negatives(negatives) == "all_locations":
        return (batch_size - 1) * locations
    return batch_size - 1


def _check_estimator(estimator: str) -> str:
    if estimator not in ESTIMATORS:
        raise UnknownNameError(
            f"unknown MI estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}"
        )
    return estimator


def _bound_of_matrix(estimator: str) -> Callable[[Tensor], Tensor]:
    """The bound of a ``[B, B]`` matrix whose rows index inputs and columns global vectors.

    InfoNCE is applied to the transpose, so that the softmax runs over the inputs ``x'`` for a
    fixed ``E(x)``; DV and JSD only use the diagonal/off-diagonal split (transpose-invariant).
    """
    if estimator == "dv":
        return dv_bound
    if estimator == "jsd":
        return jsd_bound
    return lambda s: infonce_bound(s.T)


def global_mi(scores: Tensor, estimator: str) -> Tensor:
    """``Î(C(X); E(X))`` from ``[B, B]`` scores ``S[i, j] = T(C(x_i), E(x_j))``."""
    _check_estimator(estimator)
    if not isinstance(scores, Tensor) or scores.dim() != 2:
        raise ShapeError(
            "global scores must be a [B, B] matrix S[i, j] = T(C(x_i), E(x_j)), got "
            f"{tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__}"
        )
    return _bound_of_matrix(estimator)(scores)


def local_mi(scores: Tensor, estimator: str, negatives: str = "all_locations") -> Tensor:
    """The local MI estimate from ``[B, B, M²]`` scores with the chosen negatives (module
    docstring): the source's all-location negatives, or the same-location ablation."""
    _check_estimator(estimator)
    _check_negatives(negatives)
    if not isinstance(scores, Tensor) or scores.dim() != 3 or scores.shape[0] != scores.shape[1]:
        raise ShapeError(
            "local scores must have shape [B, B, M²] with S[i, j, l] = T(C^(l)(x_i), E(x_j)), got "
            f"{tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__}"
        )
    scores = check_float("local scores", scores)
    if negatives == "same_location":
        return _local_bounds(scores, estimator).mean()
    return _pooled_local_bound(scores, estimator)


def _pooled_local_bound(scores: Tensor, estimator: str) -> Tensor:
    """The local bound with every other image's features at every location as negatives.

    For the global vector of image ``j`` the positives are ``S[j, j, :]`` and the negatives
    ``S[k, j, :]``, ``k ≠ j`` (all ``M²`` locations): see the module docstring for the three
    estimators. The image's own other locations are neither positives nor negatives.
    """
    b, _, m2 = scores.shape
    if b < 2:
        raise ShapeError("local scores need B ≥ 2 images so that negative pairs exist")
    pos = scores.diagonal(dim1=0, dim2=1).T  # [B, M²]: pos[j, l] = S[j, j, l]
    same_image = torch.eye(b, dtype=torch.bool, device=scores.device)[:, :, None]
    if estimator == "infonce":
        # per global vector j, the log-sum-exp of its (B − 1)·M² negatives S[k, j, l'], k ≠ j
        neg = scores.masked_fill(same_image, -math.inf).transpose(0, 1).reshape(b, -1)
        neg_lse = torch.logsumexp(neg, dim=1, keepdim=True)  # [B, 1]
        log_p = pos - torch.logaddexp(pos, neg_lse)
        return math.log(1 + (b - 1) * m2) + log_p.mean()
    n_neg = b * (b - 1) * m2
    if estimator == "dv":
        neg_lse = torch.logsumexp(scores.masked_fill(same_image, -math.inf).flatten(), dim=0)
        return pos.mean() - (neg_lse - math.log(n_neg))
    sp_neg = F.softplus(scores).masked_fill(same_image, 0.0).sum() / n_neg
    return -F.softplus(-pos).mean() - sp_neg


def _local_bounds(scores: Tensor, estimator: str) -> Tensor:
    """The ``[M²]`` per-location bounds of ``[B, B, M²]`` scores, all locations at once.

    Location ``l`` gets exactly what :func:`_bound_of_matrix` gives its ``B × B`` slice
    ``S[:, :, l]``: DV ``mean(diag) − log mean(exp(off-diagonal))``, JSD
    ``−mean(sp(−diag)) − mean(sp(off-diagonal))``, InfoNCE ``log B − CE`` with the softmax over
    the inputs (the slice's columns). One batched operation instead of ``M²`` small ones (and
    one finiteness check instead of ``M²`` host synchronisations); the same values up to the
    order of the floating-point sums.
    """
    b = scores.shape[0]
    if b < 2:
        raise ShapeError("local scores need B ≥ 2 images so that negative pairs exist")
    per_loc = scores.permute(2, 0, 1)  # [M², B, B]: slice l is S[:, :, l]
    if estimator == "infonce":
        # rows of slice l transposed: fixed E(x_i), candidates x_j along the last axis
        logits = per_loc.transpose(1, 2).reshape(-1, b)
        target = torch.arange(b, device=scores.device).repeat(per_loc.shape[0])
        ce = F.cross_entropy(logits, target, reduction="none").reshape(per_loc.shape[0], b)
        return math.log(b) - ce.mean(dim=1)
    # the off-diagonal entries by masking, not by boolean indexing (whose output size a GPU
    # must copy back to the host before it can go on)
    eye = torch.eye(b, dtype=torch.bool, device=scores.device)
    joint = per_loc.diagonal(dim1=1, dim2=2)  # [M², B]
    n_neg = b * (b - 1)
    flat_off = per_loc.masked_fill(eye, -math.inf).flatten(1)  # diagonal excluded by -inf
    if estimator == "dv":
        return joint.mean(dim=1) - (torch.logsumexp(flat_off, dim=1) - math.log(n_neg))
    sp_off = F.softplus(per_loc).masked_fill(eye, 0.0).flatten(1).sum(dim=1) / n_neg
    return -F.softplus(-joint).mean(dim=1) - sp_off


def scale_gradient(x: Tensor, weight: float) -> Tensor:
    """Identity in the forward pass; multiplies the gradient flowing back into ``x`` by ``weight``.

    ``weight · x + (1 − weight) · x.detach()`` has the value of ``x`` and the derivative
    ``weight``. ``weight = 0`` stops the gradient, ``weight = 1`` is the identity.
    """
    weight = check_weight("gradient weight", weight)
    if weight == 1.0:
        return x
    if weight == 0.0:
        return x.detach()
    return x * weight + x.detach() * (1.0 - weight)


def dim_mi_terms(
    local: Tensor,
    y: Tensor,
    global_critic: Callable[[Tensor, Tensor], Tensor],
    local_critic: Callable[[Tensor, Tensor], Tensor],
    estimator: str,
    *,
    alpha: float,
    beta: float,
    local_negatives: str = "all_locations",
) -> dict[str, Tensor]:
    r"""The MI part of the DIM objective for one batch.

    ``local`` is the ``[B, C, M, M]`` feature map, ``y`` the ``[B, D]`` global vector; the
    critics map ``(local, y)`` to ``[B, B]`` and ``[B, B, M²]`` scores; ``local_negatives``
    picks the local term's negatives (:data:`LOCAL_NEGATIVES`). Returns

    * ``"global_mi"``, ``"local_mi"``: the two estimates (nats for DV and InfoNCE; the JSD
      objective lies in ``[−log 4, 0]`` and is not in nats);
    * ``"objective"``: ``α Î_G + β Î_L`` (detached; the value the source maximises);
    * ``"loss"``: ``−(Î_G + Î_L)`` with the features' gradients scaled by α and β (see the
      module docstring): back-propagating it gives the critics ``−∇(Î_G + Î_L)`` and the
      encoder ``−∇(α Î_G + β Î_L)``.
    """
    estimator = _check_estimator(estimator)
    alpha = check_weight("alpha (global weight)", alpha)
    beta = check_weight("beta (local weight)", beta)
    if local.dim() != 4 or y.dim() != 2 or local.shape[0] != y.shape[0]:
        raise ShapeError(
            f"expected a [B, C, M, M] feature map and [B, D] codes for the same B, got "
            f"{tuple(local.shape)} and {tuple(y.shape)}"
        )
    if local.shape[0] < 2:
        raise ShapeError("DIM needs a batch of at least 2 images: negatives come from the batch")
    g_scores = global_critic(scale_gradient(local, alpha), scale_gradient(y, alpha))
    l_scores = local_critic(scale_gradient(local, beta), scale_gradient(y, beta))
    ig = global_mi(g_scores, estimator)
    il = local_mi(l_scores, estimator, local_negatives)
    return {
        "loss": -(ig + il),
        "objective": (alpha * ig + beta * il).detach(),
        "global_mi": ig.detach(),
        "local_mi": il.detach(),
    }


def occlude_squares(images: Tensor, side: int, *, fill: float = 0.0,
                    generator: torch.Generator | None = None) -> Tensor:
    """A copy of ``[B, C, H, W]`` images with one ``side × side`` square per image set to
    ``fill``, at a uniformly random position (the source's Table 5 "occlude": the global vector
    is computed from the occluded image, the local features from the full one).

    Positions come from ``generator`` or, with ``None``, from torch's global RNG (which the
    :class:`ibcore.training.Trainer` checkpoints).
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ShapeError(f"images must be [B, C, H, W], got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else images!r}")
    b, _, h, w = images.shape
    side = check_int("side", side, low=1, high=min(h, w))
    top = torch.randint(0, h - side + 1, (b,), generator=generator).to(images.device)
    left = torch.randint(0, w - side + 1, (b,), generator=generator).to(images.device)
    rows = torch.arange(h, device=images.device)[None, :, None]
    cols = torch.arange(w, device=images.device)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + side)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + side)[:, None, None]))
    return images.masked_fill(inside[:, None], fill)


def sample_uniform_prior(
    n: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``n`` samples of the source's prior ``V = U[0, 1]^dim``.

    With ``generator=None`` the samples come from torch's global RNG, whose state the
    :class:`ibcore.training.Trainer` checkpoints (so a resumed run draws the same samples).
    """
    n, dim = check_int("n", n), check_int("dim", dim)
    if generator is None:
        return torch.rand(n, dim, device=device, dtype=dtype)
    return torch.rand(n, dim, generator=generator, dtype=dtype).to(device)


def _check_logits(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 1 or x.shape[0] < 1:
        raise ShapeError(f"{name} must be a non-empty 1-D tensor of logits s(y), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    return check_finite(name, x)


def prior_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    r"""``−E_V[log D(v)] − E_P[log(1 − D(E(x)))]`` with ``D = σ(s)``, i.e.

    ``mean(sp(−s(v))) + mean(sp(s(E(x))))`` (``sp`` = softplus). ``real_logits`` are
    ``s(v)`` on prior samples, ``fake_logits`` ``s(E(x))`` on codes. Its minimum over the
    discriminator is ``log 4 − 2 JSD(V ‖ U)`` nats.
    """
    real = _check_logits("real_logits", real_logits)
    fake = _check_logits("fake_logits", fake_logits)
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def prior_generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating encoder loss ``−E_P[log D(E(x))] = mean(sp(−s(E(x))))``."""
    return F.softplus(-_check_logits("fake_logits", fake_logits)).mean()
