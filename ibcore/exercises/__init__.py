r"""Self-checks for the book's exercises: ``check(name, fn)`` says whether ``fn`` is right, and if not, what is wrong.

Each check runs the reader's function on a few fixed inputs and compares it with ``ibcore``'s
own implementation (the estimators and objectives the chapters use). A failing check names
the problem: an exception, a wrong shape, NaN, a known mistake (a swapped argument, the sign
the source prints, nats for bits, …), a flipped sign, a constant offset or factor, or the first
input where the values differ. See :mod:`ibcore.exercises.checking` for the machinery.

>>> from ibcore.exercises import check
>>> check("gmvib.dirichlet_kl", my_dirichlet_kl)        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ibcore.errors import UnknownNameError
from ibcore.exercises import entropy_ib, foundations, glasses, gmvib, infomax, ncvae
from ibcore.exercises.checking import Check, CheckResult, Mistake, run_check

__all__ = ["CHECKS", "Check", "CheckResult", "Mistake", "check", "names", "reference", "task"]

CHECKS: dict[str, Check] = {
    c.name: c
    for module in (foundations, gmvib, glasses, entropy_ib, ncvae, infomax)
    for c in module.CHECKS
}
"""Every self-check, keyed by ``"<chapter>.<function>"``."""


def names() -> list[str]:
    """The names of all checks, chapter by chapter."""
    return list(CHECKS)


def _get(name: str) -> Check:
    if name not in CHECKS:
        raise UnknownNameError(f"no check named {name!r}; the checks are {', '.join(CHECKS)}")
    return CHECKS[name]


def task(name: str) -> str:
    """What the function of check ``name`` must compute (its signature and meaning)."""
    return _get(name).task


def reference(name: str) -> Callable[..., Any]:
    """``ibcore``'s function that check ``name`` compares against."""
    return _get(name).reference


def check(name: str, fn: Callable[..., Any]) -> CheckResult:
    """Run check ``name`` on ``fn``; the result is truthy when ``fn`` is right and says why not."""
    return run_check(_get(name), fn)
