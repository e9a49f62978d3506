r"""The machinery of the self-checks: run a reader's function against a reference, say what is off.

A :class:`Check` holds a reference function, a few fixed inputs (built from a fixed seed, so a
check gives the same verdict every time) and a list of :class:`Mistake` s, each a function that
makes one typical error together with the sentence that explains it. :func:`run_check` calls
the reader's function on every input and compares it with the reference. On a mismatch it
looks, in this order, for

1. an exception, a value of the wrong type or structure, or the wrong shape;
2. NaN or ±inf where the answer is finite;
3. one of the check's known mistakes (the reader's values equal that mistake's on every input);
4. a flipped sign, a constant offset or a constant factor across all inputs (with a hint when
   the factor is one of the usual suspects, ln 2 or 2);
5. otherwise the first input where the values differ, with both values.

Outputs may be a tensor, a NumPy array, a number, a tuple of those, or a mapping from names to
numbers; they are compared in float64 with ``rtol``/``atol``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ibcore.errors import InvalidParameterError

__all__ = ["Case", "Check", "CheckResult", "Mistake", "run_check"]

Output = tuple[np.ndarray, ...] | dict[str, float]


@dataclass(frozen=True)
class Case:
    """One input of a check: a short description for messages and the positional arguments."""

    desc: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Mistake:
    """A function that makes one typical error, and the sentence that explains the error."""

    wrong: Callable[..., Any]
    message: str


@dataclass(frozen=True)
class Check:
    """A self-check: what to compute, the reference, the inputs and the known mistakes."""

    name: str
    task: str
    reference: Callable[..., Any]
    cases: Callable[[], Sequence[Case]]
    mistakes: tuple[Mistake, ...] = ()
    nonfinite_hint: str = ""
    rtol: float = 1e-5
    atol: float = 1e-6


@dataclass(frozen=True)
class CheckResult:
    """The verdict of a check; ``bool(result)`` is ``passed`` and the text says why."""

    name: str
    passed: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return self.message

    def _repr_markdown_(self) -> str:
        mark = "**✓ passed**" if self.passed else "**✗ not yet**"
        return f"{mark} `{self.name}` — {self.message}"


# ---------------------------------------------------------------------------------------------
# turning answers into comparable float64 arrays
# ---------------------------------------------------------------------------------------------


class _BadOutput(Exception):
    pass


def _array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise _BadOutput(f"a complex tensor ({value.dtype})")
        return value.detach().to("cpu", torch.float64).numpy()
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.number) or np.iscomplexobj(value):
            raise _BadOutput(f"a NumPy array of dtype {value.dtype}")
        return value.astype(np.float64)
    if isinstance(value, bool) or value is None:
        raise _BadOutput(repr(value))
    if isinstance(value, (int, float, np.number)):
        return np.asarray(float(value), dtype=np.float64)
    raise _BadOutput(f"a {type(value).__name__}")


def _convert(value: Any) -> Output:
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            arr = _array(v)
            if arr.size != 1:
                raise _BadOutput(f"a mapping whose entry {key!r} is not a single number")
            out[str(key)] = float(arr.reshape(()))
        return out
    if isinstance(value, (tuple, list)):
        return tuple(_array(v) for v in value)
    return (_array(value),)


def _clone(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Fresh copies of tensor arguments, so a function that edits its inputs cannot hurt the check."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _describe_structure(value: Output) -> str:
    if isinstance(value, dict):
        return "a mapping with keys " + ", ".join(sorted(value)) if value else "an empty mapping"
    if len(value) == 1:
        return f"one value of shape {value[0].shape}"
    return f"{len(value)} values of shapes " + ", ".join(str(v.shape) for v in value)


def _flat(value: Output) -> np.ndarray:
    if isinstance(value, dict):
        return np.array([value[k] for k in sorted(value)], dtype=np.float64)
    return np.concatenate([v.reshape(-1) for v in value]) if value else np.zeros(0)


def _close(a: np.ndarray, b: np.ndarray, check: Check) -> np.ndarray:
    both_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    return both_inf | np.isclose(a, b, rtol=check.rtol, atol=check.atol)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


# ---------------------------------------------------------------------------------------------
# the check itself
# ---------------------------------------------------------------------------------------------


def _fail(check: Check, message: str, **details: Any) -> CheckResult:
    return CheckResult(check.name, False, message, details)


def _structure_problem(got: Output, want: Output) -> str | None:
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"it should return a mapping with keys {', '.join(sorted(want))}"
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if extra:
            parts.append("has keys that do not belong: " + ", ".join(extra))
        return "; ".join(parts) or None
    if isinstance(got, dict):
        return f"it returned a mapping, but the answer is {_describe_structure(want)}"
    if len(got) != len(want):
        return f"it returned {_describe_structure(got)}, but the answer is {_describe_structure(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g.shape != w.shape:
            which = "" if len(want) == 1 else f" (value {i + 1})"
            hint = ""
            if g.size > w.size:
                hint = "; is a sum or mean over the right dimensions missing?"
            elif g.size < w.size:
                hint = "; does it sum or average over a dimension it should keep (the batch)?"
            return f"wrong shape{which}: got {g.shape}, expected {w.shape}{hint}"
    return None


def _constant_relation(diffs: np.ndarray, ratios: np.ndarray) -> str | None:
    if diffs.size == 0:
        return None
    scale = max(1.0, float(np.abs(diffs).max()))
    if np.ptp(diffs) < 1e-6 * scale and abs(float(diffs.mean())) > 1e-6:
        return f"off by a constant: every value is {_fmt(float(diffs.mean()))} away from the answer"
    finite = ratios[np.isfinite(ratios)]
    if finite.size == ratios.size and finite.size and np.ptp(finite) < 1e-6 * max(1, abs(finite.mean())):
        c = float(finite.mean())
        if abs(c + 1.0) < 1e-6:
            return "the sign is flipped: every value is minus the answer"
        hints = {math.log(2): " (ln 2: a result in nats where bits are wanted?)",
                 1 / math.log(2): " (1/ln 2: a result in bits where nats are wanted?)",
                 2.0: " (is a factor ½ missing?)", 0.5: " (is a factor ½ too many?)"}
        hint = next((h for v, h in hints.items() if abs(c - v) < 1e-6 * v), "")
        return f"off by a constant factor: every value is {_fmt(c)} times the answer{hint}"
    return None


def run_check(check: Check, fn: Any) -> CheckResult:
    """Run ``fn`` on every input of ``check``, compare it with the reference, explain a mismatch."""
    if not callable(fn):
        raise InvalidParameterError(
            f"check {check.name!r} needs a function, got {type(fn).__name__}; pass the function "
            "itself (no parentheses)"
        )
    cases = list(check.cases())
    wants: list[Output] = [_convert(check.reference(*_clone(c.args))) for c in cases]
    gots: list[Output] = []
    for case, want in zip(cases, wants, strict=True):
        try:
            raw = fn(*_clone(case.args))
        except Exception as exc:  # the reader's code may raise anything; report it
            return _fail(check, f"raised {type(exc).__name__}: {exc} — on input {case.desc}",
                         case=case.desc)
        try:
            got = _convert(raw)
        except _BadOutput as exc:
            return _fail(check, f"returned {exc}, not numbers, on input {case.desc}",
                         case=case.desc)
        problem = _structure_problem(got, want)
        if problem:
            return _fail(check, f"{problem} — on input {case.desc}", case=case.desc)
        g, w = _flat(got), _flat(want)
        bad = ~np.isfinite(g) & np.isfinite(w)
        if bad.any():
            what = "NaN" if np.isnan(g[bad]).any() else "an infinite value"
            hint = f" {check.nonfinite_hint}" if check.nonfinite_hint else ""
            return _fail(check, f"returned {what} on input {case.desc}, where the answer is "
                         f"finite.{hint}", case=case.desc)
        gots.append(got)

    ok = [bool(_close(_flat(g), _flat(w), check).all()) for g, w in zip(gots, wants, strict=True)]
    if all(ok):
        return CheckResult(check.name, True, f"correct on all {len(cases)} test inputs.")

    for mistake in check.mistakes:
        try:
            outs = [_convert(mistake.wrong(*_clone(c.args))) for c in cases]
        except Exception:  # a mistake that cannot run on some input cannot be what was done
            continue
        same = all(_structure_problem(o, g) is None and bool(_close(_flat(g), _flat(o), check).all())
                   for o, g in zip(outs, gots, strict=True))
        if same:
            return _fail(check, mistake.message, mistake=mistake.message)

    if isinstance(wants[0], dict):
        i = ok.index(False)
        got, want = gots[i], wants[i]
        wrong = [k for k in sorted(want) if not _close(np.array([got[k]]), np.array([want[k]]),
                                                       check).all()]
        k = wrong[0]
        return _fail(check, f"on input {cases[i].desc}: {k} is {_fmt(got[k])}, expected "
                     f"{_fmt(want[k])}", case=cases[i].desc)

    g_all = np.concatenate([_flat(g) for g in gots])
    w_all = np.concatenate([_flat(w) for w in wants])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(np.abs(w_all) > 1e-9, g_all / w_all, np.nan)
    relation = _constant_relation(g_all - w_all, ratios)
    if relation:
        return _fail(check, relation + ".", relation=relation)
    i = ok.index(False)
    g, w = _flat(gots[i]), _flat(wants[i])
    j = int(np.argmax(~_close(g, w, check)))
    where = "" if g.size == 1 else f" (entry {j})"
    return _fail(check, f"wrong on input {cases[i].desc}{where}: got {_fmt(g[j])}, expected "
                 f"{_fmt(w[j])}. It is right on {sum(ok)} of {len(ok)} inputs.",
                 case=cases[i].desc)
