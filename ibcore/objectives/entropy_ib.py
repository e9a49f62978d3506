r"""The entropy-estimator IB objective of Kirsch, Lyle & Gal (``entropy_estimator_ib.md``).

For a deterministic encoder :math:`\hat z = f_\theta(x)` with zero-entropy noise,
:math:`Z = \hat Z + \epsilon`, :math:`\epsilon \sim \mathcal N(0, I / (2\pi e))`, the IB and DIB
objectives coincide and reduce (Observation 1, eqs. 5–9, then eq. 10, dropping the constant
:math:`H[Y]`) to

.. math::

    \min_\theta\; H[Z \mid Y] + (\beta'' - 1)\, H[Z], \qquad \beta'' = 1/\beta \in [0, 1).

Both entropies are estimated on each mini-batch with the Kozachenko–Leonenko estimator
(eq. 11, in the squared-distance form eq. 13 whose gradient is eq. 14):
:math:`H[Z]` by :func:`~ibcore.estimators.knn_entropy.knn_entropy` on the whole batch and
:math:`H[Z \mid Y] = \sum_c \frac{N_c}{N} H[Z \mid Y = c]` by
:func:`~ibcore.estimators.knn_entropy.conditional_knn_entropy`, each class's estimate using its
own :math:`N_c` in :math:`\psi(N_c)` (see that module's note on the sign of :math:`\psi(N)`).
No decoder is trained with the encoder.

``noise=False`` is the source's ablation (its Fig. 2b): the estimator is applied to
:math:`\hat z` itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ibcore.errors import InvalidParameterError, ShapeError, UnknownNameError
from ibcore.estimators.knn_entropy import (
    add_zero_entropy_noise,
    conditional_knn_entropy,
    knn_entropy,
)
from ibcore.validation import check_int, check_weight

__all__ = ["SMALL_CLASS_POLICIES", "check_beta2", "entropy_ib_loss"]

#: What :func:`entropy_ib_loss` does with a class of ≤ k samples in a batch.
SMALL_CLASS_POLICIES: tuple[str, ...] = ("raise", "skip")


def check_beta2(beta2: float) -> float:
    r"""Return β'' if it lies in [0, 1) (eq. 9: :math:`\beta'' = 1/\beta` with β > 1); raise."""
    return check_weight("beta'' (beta2)", beta2, low=0.0, high=1.0, high_inclusive=False)


def entropy_ib_loss(
    z_hat: Tensor,
    y: Tensor,
    beta2: float,
    *,
    noise: bool = True,
    k: int = 1,
    small_classes: str = "raise",
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    r"""Eq. 10 on one batch of encoder outputs ``z_hat [N, K]`` with labels ``y [N]``.

    Returns ``loss`` :math:`= \hat H[Z|Y] + (\beta''-1)\hat H[Z]` (differentiable),
    ``h_z`` and ``h_z_given_y`` (nats), ``z`` (the latent the estimates saw: ``z_hat`` plus
    zero-entropy noise drawn from ``generator`` when ``noise``, else ``z_hat`` itself) and
    ``skipped_classes`` (a count).

    Every class present needs k + 1 samples for its :math:`\hat H[Z \mid y]`.
    ``small_classes="raise"`` raises :class:`~ibcore.errors.InvalidParameterError` otherwise;
    ``"skip"`` leaves such classes out of :math:`\hat H[Z \mid Y]` (their weights
    :math:`N_c/N` renormalised over the kept classes) and counts them in ``skipped_classes``
    — for training with randomly drawn batches, where a rare batch can hold one sample of a
    class. :math:`\hat H[Z]` always uses the whole batch.
    """
    beta2 = check_beta2(beta2)
    k = check_int("k", k)
    if small_classes not in SMALL_CLASS_POLICIES:
        raise UnknownNameError(
            f"small_classes must be one of {SMALL_CLASS_POLICIES}, got {small_classes!r}"
        )
    if not isinstance(z_hat, Tensor) or z_hat.dim() != 2:
        raise ShapeError(
            f"z_hat must be a [N, K] tensor of encoder outputs, got {getattr(z_hat, 'shape', z_hat)!r}"
        )
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != z_hat.shape[0]:
        raise ShapeError(f"y must have shape ({z_hat.shape[0]},) to match z_hat, got "
                         f"{tuple(getattr(y, 'shape', ()))}")
    z = add_zero_entropy_noise(z_hat, generator) if noise else z_hat
    skipped = 0
    if small_classes == "skip":
        classes, counts = torch.unique(y, return_counts=True)
        small = classes[counts <= k]
        skipped = int(small.numel())
        if skipped:
            keep = ~torch.isin(y, small)
            if int(keep.sum()) <= k:
                raise InvalidParameterError(
                    f"no class of this batch has k + 1 = {k + 1} samples; use larger batches"
                )
            h_zy = conditional_knn_entropy(z[keep.to(z.device)], y[keep], k=k)
        else:
            h_zy = conditional_knn_entropy(z, y, k=k)
    else:
        h_zy = conditional_knn_entropy(z, y, k=k)
    h_z = knn_entropy(z, k=k)
    loss = h_zy + (beta2 - 1.0) * h_z
    return {"loss": loss, "h_z": h_z.detach(), "h_z_given_y": h_zy.detach(),
            "z": z, "skipped_classes": torch.tensor(float(skipped))}
