"""An experiment as a list of independent tasks plus one assembly step, run by any launcher.

Every chapter runner exposes four functions (the runner protocol):

``make_context(*, profile, experiments, device, seed, resume, results_root, progress, **extra)``
    validates the arguments and returns the runner's context (as ``run`` did before);
``plan(ctx, experiments) -> list[Task]``
    the units of work of the chosen experiments: usually one model each (its key, its
    checkpoint, its cached evaluation file), each task listed once even if two experiments
    share it, with ``after`` naming the tasks it needs first (e.g. a fine-tune after its trunk);
``run_task(ctx, task)``
    trains (or resumes) and evaluates that one unit and writes its evaluation file;
``assemble(ctx, experiment) -> Path``
    reads the evaluation files of the experiment's tasks and writes its result file.

:func:`run_experiments` runs the tasks with a launcher (in this process, in local worker
processes, on a Ray cluster or through Slurm, see :mod:`ibcore.launchers`) and then assembles
every experiment in this process from a fresh context that reads the evaluation files, so the
result file does not depend on which launcher ran the tasks or in which order. Each task starts
from global RNGs seeded by :func:`task_seed` (a function of chapter, run seed and task key only),
and each assembly from :func:`task_seed` of the experiment, for the same reason.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ibcore.atomic import atomic_write_json
from ibcore.device import seed_everything
from ibcore.errors import IBCoreError


@dataclass(frozen=True)
class Task:
    """One unit of work of a chapter's experiments (picklable: it travels to worker processes)."""

    key: str
    experiments: tuple[str, ...]
    spec: Any = None
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskFailure:
    """A task that raised, or whose worker died, or that could not start (a prerequisite failed)."""

    key: str
    error: str


class TaskFailedError(IBCoreError):
    """Some tasks failed; the experiments that needed them were not assembled."""

    def __init__(self, failures: Sequence[TaskFailure], written: Mapping[str, Path]) -> None:
        self.failures = list(failures)
        self.written = dict(written)
        by_error: dict[str, list[str]] = {}
        for f in self.failures:
            last = f.error.strip().splitlines()[-1] if f.error.strip() else "unknown error"
            by_error.setdefault(last, []).append(f.key)
        lines = [f"{len(self.failures)} task(s) failed:"]
        for error, keys in by_error.items():
            shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
            lines.append(f"  {shown}: {error}")
        if self.written:
            lines.append("experiments assembled anyway: " + ", ".join(self.written))
        lines.append("rerun with --resume to redo only what is missing")
        super().__init__("\n".join(lines))


class Runner(Protocol):
    CHAPTER: str
    EXPERIMENTS: tuple[str, ...]

    def make_context(self, **run_args: Any) -> Any: ...
    def plan(self, ctx: Any, experiments: Sequence[str]) -> list[Task]: ...
    def run_task(self, ctx: Any, task: Task) -> None: ...
    def assemble(self, ctx: Any, experiment: str) -> Path: ...


@dataclass(frozen=True)
class RunRequest:
    """What a worker needs to rebuild the runner's context: the chapter and ``run``'s arguments."""

    chapter: str
    run_args: dict[str, Any] = field(default_factory=dict)

    def runner(self) -> Runner:
        return runner_module(self.chapter)

    def context(self, **override: Any) -> Any:
        return self.runner().make_context(**{**self.run_args, **override})


def runner_module(chapter: str) -> Runner:
    """The runner of ``chapter`` (a name of :data:`ibcore.runners.RUNNERS`, or a module path)."""
    from ibcore.runners import RUNNERS, get_runner

    if chapter in RUNNERS:
        return get_runner(chapter)  # type: ignore[return-value]
    return importlib.import_module(chapter)  # type: ignore[return-value]


def task_seed(chapter: str, seed: int, key: str) -> int:
    """The seed of the global RNGs at the start of task ``key`` (or of assembling experiment
    ``key``): a pure function of the chapter, the run's seed and the key."""
    digest = hashlib.sha256(f"{chapter}/{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def run_one(request: RunRequest, ctx: Any, task: Task) -> float:
    """Run ``task`` in ``ctx`` from its own RNG seed; return the seconds it took."""
    t0 = time.perf_counter()
    seed_everything(task_seed(request.chapter, int(request.run_args.get("seed", 0)), task.key))
    request.runner().run_task(ctx, task)
    return time.perf_counter() - t0


def execute_tasks(request: RunRequest, tasks: Sequence[Task], threads: int | None = None
                  ) -> list[dict[str, Any]]:
    """Entry point of a remote worker (a Ray task or a Slurm job): run ``tasks`` one after another
    from one fresh context. ``threads`` sets torch's intra-op thread count first.

    A task's exception does not stop the others: its entry is ``{"key": ..., "error": traceback}``
    instead of ``{"key": ..., "seconds": ...}``.
    """
    import traceback

    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    ctx = request.context(progress=False)
    out: list[dict[str, Any]] = []
    for task in tasks:
        try:
            out.append({"key": task.key, "seconds": run_one(request, ctx, task)})
        except Exception:  # noqa: BLE001 - reported with the task's key by the launcher
            out.append({"key": task.key, "error": traceback.format_exc()})
    return out


def order_tasks(tasks: Sequence[Task]) -> list[Task]:
    """``tasks`` with duplicates (same key) dropped, checked for unknown or circular ``after``."""
    unique: dict[str, Task] = {}
    for t in tasks:
        unique.setdefault(t.key, t)
    for t in unique.values():
        missing = [k for k in t.after if k not in unique]
        if missing:
            raise IBCoreError(f"task {t.key} needs {missing}, which the plan does not contain")
    done: set[str] = set()
    ordered: list[Task] = []
    pending = list(unique.values())
    while pending:
        ready = [t for t in pending if all(k in done for k in t.after)]
        if not ready:
            raise IBCoreError(f"circular task dependencies among {[t.key for t in pending]}")
        for t in ready:
            ordered.append(t)
            done.add(t.key)
        pending = [t for t in pending if t.key not in done]
    return ordered


def written_result(recorder: Any) -> Path:
    """The file a :class:`ibcore.results.RunRecorder` wrote (for runners whose task writes it)."""
    path = Path(recorder.path)
    if not path.exists():
        raise IBCoreError(f"the task of this experiment did not write {path}")
    return path


def _annotate(path: Path, launch: Mapping[str, Any]) -> None:
    """Add how the tasks were launched to a result file's provenance (atomically)."""
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    payload["provenance"].update(launch)
    atomic_write_json(path, payload)


def run_experiments(chapter: str, *, launcher: Any = None, **run_args: Any) -> dict[str, Path]:
    """Plan, run (with ``launcher``; default: in this process) and assemble ``chapter``'s
    experiments; return ``{experiment: result file}``.

    Experiments whose tasks all succeeded are assembled even when others failed; then a
    :class:`TaskFailedError` lists the failed tasks with their errors.
    """
    from ibcore.launchers import InProcessLauncher

    launcher = launcher if launcher is not None else InProcessLauncher()
    module = runner_module(chapter)
    experiments = tuple(run_args.pop("experiments", module.EXPERIMENTS))
    request = RunRequest(chapter, {**run_args, "experiments": experiments})
    t0 = time.perf_counter()
    ctx = request.context()
    tasks = order_tasks(module.plan(ctx, experiments))
    failures = launcher.execute(request, tasks, ctx=ctx)
    failed = {f.key for f in failures}
    assembly = request.context(resume=True, progress=False)
    written: dict[str, Path] = {}
    for experiment in experiments:
        if any(experiment in t.experiments and t.key in failed for t in tasks):
            continue
        seed_everything(task_seed(chapter, int(run_args.get("seed", 0)), f"assemble/{experiment}"))
        written[experiment] = module.assemble(assembly, experiment)
    wall = time.perf_counter() - t0
    for path in written.values():
        _annotate(path, {**launcher.describe(), "tasks": len(tasks), "wall_seconds": round(wall, 3)})
    if failures:
        raise TaskFailedError(failures, written)
    return written
