r"""The fast gradient sign method (FGSM) and accuracy under it (``entropy_estimator_ib.md``, Fig. 1).

For a classifier with logits :math:`g(x)` and cross-entropy :math:`\ell(x, y) = -\log
\mathrm{softmax}(g(x))_y`, FGSM (Goodfellow et al., 2014) perturbs each input by one step of
size :math:`\epsilon` along the sign of the loss gradient, then clips to the valid pixel range:

.. math::

    x_{\mathrm{adv}} = \mathrm{clip}_{[a, b]}\bigl(x + \epsilon\, \mathrm{sign}\,\nabla_x \ell(x, y)\bigr).

The attacked model is any callable from inputs to logits (log-posteriors work too: the
softmax of a log-posterior is the posterior itself). Models are put in eval mode by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ibcore.errors import InvalidParameterError, ShapeError
from ibcore.validation import check_int, check_weight

__all__ = ["fgsm", "fgsm_accuracy"]

Model = Callable[[Tensor], Tensor]


def _check(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise InvalidParameterError("x must be a floating-point tensor of inputs")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ShapeError(f"y must have shape ({x.shape[0]},) to match x, got "
                         f"{tuple(getattr(y, 'shape', ()))}")


def fgsm(
    model: Model,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    *,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> Tensor:
    """The FGSM adversarial inputs of ``x`` (labels ``y``) at step size ``epsilon`` ≥ 0.

    ``clip=(a, b)`` clips to the valid input range (``None``: no clipping). The gradient is taken
    of the mean cross-entropy over the batch (its sign equals that of each example's own loss).
    """
    _check(x, y)
    eps = check_weight("epsilon", epsilon)
    if clip is not None and not clip[0] < clip[1]:
        raise InvalidParameterError(f"clip must be (low, high) with low < high, got {clip}")
    xx = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xx)
        if logits.device != y.device:
            raise InvalidParameterError(
                f"the model returned logits on {logits.device} for inputs on {x.device}, but the "
                f"labels are on {y.device}; the model must compute on its inputs' device"
            )
        loss = F.cross_entropy(logits, y)
        (grad,) = torch.autograd.grad(loss, xx)
    adv = x.detach() + eps * grad.sign()
    if clip is not None:
        adv = adv.clamp(clip[0], clip[1])
    return adv


def fgsm_accuracy(
    model: Model,
    x: Tensor,
    y: Tensor,
    epsilons: Sequence[float],
    *,
    batch_size: int = 500,
    clip: tuple[float, float] | None = (0.0, 1.0),
    device: torch.device | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> list[float]:
    """Accuracy (fraction in [0, 1]) of ``model`` on FGSM inputs, one value per ε in ``epsilons``.

    ``transform`` maps a stored batch (e.g. ``uint8`` images) to the model's float inputs; the
    attack then happens in that float space. ε = 0 gives the clean accuracy.
    """
    batch_size = check_int("batch_size", batch_size)
    if len(epsilons) == 0:
        raise InvalidParameterError("epsilons is empty; give at least one step size")
    epsilons = [check_weight("epsilon", e) for e in epsilons]
    correct = [0] * len(epsilons)
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        yb = y[start : start + batch_size]
        if device is not None:
            xb, yb = xb.to(device), yb.to(device)
        if transform is not None:
            xb = transform(xb)
        for i, eps in enumerate(epsilons):
            adv = fgsm(model, xb, yb, eps, clip=clip) if eps > 0 else xb
            with torch.no_grad():
                correct[i] += int((model(adv).argmax(dim=1) == yb).sum())
    return [c / x.shape[0] for c in correct]
