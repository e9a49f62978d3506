r"""FGSM and PGD attacks and accuracy under them (``entropy_estimator_ib.md``, Fig. 1).

For a classifier with logits :math:`g(x)` and cross-entropy :math:`\ell(x, y) = -\log
\mathrm{softmax}(g(x))_y`, FGSM (Goodfellow et al., 2014) perturbs each input by one step of
size :math:`\epsilon` along the sign of the loss gradient, then clips to the valid pixel range:

.. math::

    x_{\mathrm{adv}} = \mathrm{clip}_{[a, b]}\bigl(x + \epsilon\, \mathrm{sign}\,\nabla_x \ell(x, y)\bigr).

Projected gradient descent (PGD; Madry et al., 2018) iterates that step with a smaller size
:math:`\alpha` from a random start in the :math:`\ell_\infty` ball, projecting back onto the
ball and the pixel range after every step:

.. math::

    x_0 = \mathrm{clip}_{[a, b]}(x + u),\ u \sim \mathcal U[-\epsilon, \epsilon]^d, \qquad
    x_{t+1} = \Pi_{B_\epsilon(x) \cap [a, b]^d}\bigl(x_t + \alpha\,
    \mathrm{sign}\,\nabla_x \ell(x_t, y)\bigr).

A one-step attack can be defeated by a model whose loss surface is flat or noisy near the data
(gradient masking) without the model being robust; a many-step attack with a random start is far
harder to fool that way (Athalye, Carlini & Wagner, 2018), so an advantage that survives PGD is
evidence of robustness and one that vanishes under it is evidence of masking.

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

__all__ = ["attack_accuracy", "fgsm", "fgsm_accuracy", "pgd", "pgd_accuracy"]

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
    _check_clip(clip)
    adv = x.detach() + eps * _loss_grad(model, x, y).sign()
    if clip is not None:
        adv = adv.clamp(clip[0], clip[1])
    return adv


def _check_clip(clip: tuple[float, float] | None) -> None:
    if clip is not None and not clip[0] < clip[1]:
        raise InvalidParameterError(f"clip must be (low, high) with low < high, got {clip}")


def _loss_grad(model: Model, x: Tensor, y: Tensor) -> Tensor:
    """The gradient of the mean cross-entropy of ``model(x)`` against ``y`` with respect to x."""
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
    return grad


def pgd(
    model: Model,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    clip: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The :math:`\ell_\infty` PGD adversarial inputs of ``x`` within ``epsilon`` ≥ 0.

    ``step_size`` defaults to ``2.5 ε / steps`` (Madry et al.), so the iterates can reach the
    ball's boundary from any start. The random start is drawn from ``generator`` (CPU) or the
    global generator. With ``steps=1``, ``step_size=ε`` and ``random_start=False`` this is
    :func:`fgsm`.
    """
    _check(x, y)
    eps = check_weight("epsilon", epsilon)
    steps = check_int("steps", steps)
    alpha = 2.5 * eps / steps if step_size is None else check_weight("step_size", step_size)
    _check_clip(clip)

    def project(a: Tensor) -> Tensor:
        a = torch.minimum(torch.maximum(a, x - eps), x + eps)
        return a.clamp(clip[0], clip[1]) if clip is not None else a

    x = x.detach()
    adv = x.clone()
    if random_start and eps > 0:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        adv = project(x + (2 * u - 1) * eps)
    for _ in range(steps):
        adv = project(adv + alpha * _loss_grad(model, adv, y).sign())
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
    return attack_accuracy(model, x, y, epsilons, lambda m, xb, yb, e: fgsm(m, xb, yb, e,
                                                                             clip=clip),
                           batch_size=batch_size, device=device, transform=transform)


def pgd_accuracy(
    model: Model,
    x: Tensor,
    y: Tensor,
    epsilons: Sequence[float],
    *,
    steps: int = 10,
    step_size_factor: float = 2.5,
    batch_size: int = 500,
    clip: tuple[float, float] | None = (0.0, 1.0),
    device: torch.device | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Accuracy of ``model`` under :func:`pgd` (random start, ``steps`` steps of size
    ``step_size_factor · ε / steps``), one value per ε; the starts come from ``generator``."""
    steps = check_int("steps", steps)
    factor = check_weight("step_size_factor", step_size_factor, low=0.0, low_inclusive=False)
    return attack_accuracy(
        model, x, y, epsilons,
        lambda m, xb, yb, e: pgd(m, xb, yb, e, steps=steps, step_size=factor * e / steps,
                                 clip=clip, generator=generator),
        batch_size=batch_size, device=device, transform=transform)


def attack_accuracy(
    model: Model,
    x: Tensor,
    y: Tensor,
    epsilons: Sequence[float],
    attack: Callable[[Model, Tensor, Tensor, float], Tensor],
    *,
    batch_size: int = 500,
    device: torch.device | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> list[float]:
    """Accuracy of ``model`` on ``attack(model, x, y, ε)`` for every ε (ε = 0: clean inputs)."""
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
            adv = attack(model, xb, yb, eps) if eps > 0 else xb
            with torch.no_grad():
                correct[i] += int((model(adv).argmax(dim=1) == yb).sum())
    return [c / x.shape[0] for c in correct]
