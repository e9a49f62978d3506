"""Per-step learning-rate schedules, described by a frozen :class:`Schedule` and built for a run.

A schedule is a function of the optimisation step ``t = 0 … T − 1`` (``T`` = total steps of
the run) that multiplies nothing and remembers nothing but ``t``: the learning rate used at step
``t`` is ``η(t)``. Because ``η`` depends on ``t`` only, a run resumed from a checkpoint (which
stores the scheduler's step count) continues with exactly the rates of a run that never stopped.

Kinds (``p`` = peak rate, ``w`` = ``warmup_fraction``, ``f`` = ``final_lr_fraction``,
``s`` = ``initial_lr_fraction``, ``W = round(w T)``):

* ``constant``: ``η(t) = p``.
* ``warmup_cosine``: linear warm-up from ``s p`` to ``p`` over the first ``W`` steps, then
  cosine decay to ``f p`` at the last step,
  ``η(t) = f p + (p − f p) · ½ (1 + cos(π (t − W) / (T − 1 − W)))``.
* ``one_cycle``: PyTorch's :class:`torch.optim.lr_scheduler.OneCycleLR` (Smith & Topin 2019):
  cosine warm-up from ``s p`` to ``p`` over the first fraction ``w``, then cosine annealing to
  ``s f p``; for Adam-type optimisers it also cycles β₁ between 0.85 and 0.95 (momentum is low
  while the rate is high), as in the fast-training recipes it comes from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ibcore.errors import UnknownNameError
from ibcore.validation import check_int, check_weight

SCHEDULE_KINDS: tuple[str, ...] = ("constant", "warmup_cosine", "one_cycle")


@dataclass(frozen=True)
class Schedule:
    """How the learning rate moves over a run's optimisation steps (see the module docstring)."""

    kind: str = "warmup_cosine"
    peak_lr: float = 1e-3
    warmup_fraction: float = 0.05
    final_lr_fraction: float = 1e-3
    initial_lr_fraction: float = 0.04

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise UnknownNameError(
                f"unknown schedule kind {self.kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}"
            )
        check_weight("peak_lr", self.peak_lr, low=0.0, low_inclusive=False)
        check_weight("warmup_fraction", self.warmup_fraction, low=0.0, high=1.0,
                     high_inclusive=False)
        check_weight("final_lr_fraction", self.final_lr_fraction, low=0.0, high=1.0)
        check_weight("initial_lr_fraction", self.initial_lr_fraction, low=0.0, high=1.0,
                     low_inclusive=False)

    def lr_at(self, step: int, total_steps: int) -> float:
        """The rate ``η(step)`` of the ``warmup_cosine`` and ``constant`` kinds (closed form)."""
        check_int("total_steps", total_steps, low=1)
        check_int("step", step, low=0, high=total_steps - 1)
        if self.kind == "constant":
            return self.peak_lr
        if self.kind != "warmup_cosine":
            raise UnknownNameError(f"lr_at has no closed form for kind {self.kind!r}; build it")
        return self.peak_lr * _warmup_cosine_factor(step, total_steps, self.warmup_fraction,
                                                    self.final_lr_fraction,
                                                    self.initial_lr_fraction)


def _warmup_cosine_factor(t: int, total: int, warmup_fraction: float, final: float,
                          initial: float) -> float:
    warm = round(warmup_fraction * total)
    if t < warm:
        return initial + (1.0 - initial) * t / warm
    span = total - 1 - warm
    if span <= 0:
        return 1.0
    cosine = 0.5 * (1.0 + math.cos(math.pi * (t - warm) / span))
    return final + (1.0 - final) * cosine


def build_scheduler(schedule: Schedule, optimizer: torch.optim.Optimizer,
                    total_steps: int) -> Any:
    """A PyTorch scheduler for ``optimizer`` that follows ``schedule`` over ``total_steps`` steps.

    It sets the optimizer's rate for step 0 at once; call ``.step()`` after every optimizer step.
    Its ``state_dict`` holds only numbers, so it round-trips through a ``weights_only`` checkpoint.
    """
    total_steps = check_int("total_steps", total_steps, low=1)
    if schedule.kind == "one_cycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=schedule.peak_lr, total_steps=max(total_steps, 2),
            pct_start=schedule.warmup_fraction,
            div_factor=1.0 / schedule.initial_lr_fraction,
            final_div_factor=1.0 / max(schedule.final_lr_fraction, 1e-12),
        )
    for group in optimizer.param_groups:
        group["lr"] = schedule.peak_lr
        group["initial_lr"] = schedule.peak_lr
    if schedule.kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0)
    w, f, s = schedule.warmup_fraction, schedule.final_lr_fraction, schedule.initial_lr_fraction
    # Clamped at the last step, so an extra call (e.g. by a step_fn after the last step) is harmless.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: _warmup_cosine_factor(min(t, total_steps - 1), total_steps, w, f, s)
    )
