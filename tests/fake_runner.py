"""A tiny runner for the launcher tests: tasks that succeed, raise, die, wait or depend.

A task's behaviour is read from ``<results_root>/behaviour.json`` (``{"key": "ok" | "raise" |
"die" | "sleep"}``) so that a rerun can change it; every run of a task appends its key to
``<results_root>/ran.txt`` and writes its pid to ``<results_root>/<key>.pid``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ibcore.atomic import atomic_write_json
from ibcore.tasks import Task

CHAPTER = "fake"
EXPERIMENTS = ("good", "bad")
TASKS = {"good": ("a",), "bad": ("b", "c", "d")}


@dataclass
class Ctx:
    root: Path
    resume: bool
    seed: int


def make_context(*, results_root: Path, resume: bool = False, seed: int = 0, **_: Any) -> Ctx:
    return Ctx(Path(results_root), resume, seed)


def plan(ctx: Ctx, experiments: Sequence[str]) -> list[Task]:
    return [Task(k, (e,), None, ("b",) if k == "d" else ()) for e in experiments for k in TASKS[e]]


def run_task(ctx: Ctx, task: Task) -> None:
    out = ctx.root / f"{task.key}.json"
    if ctx.resume and out.exists():
        return
    with open(ctx.root / "ran.txt", "a", encoding="utf-8") as fh:
        fh.write(task.key + "\n")
    (ctx.root / f"{task.key}.pid").write_text(str(os.getpid()))
    behaviour = json.loads((ctx.root / "behaviour.json").read_text()).get(task.key, "ok")
    if behaviour == "raise":
        raise ValueError(f"task {task.key} was told to fail")
    if behaviour == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if behaviour == "sleep":
        time.sleep(120)
    atomic_write_json(out, {"key": task.key, "draw": float(torch.rand(()))})


def assemble(ctx: Ctx, experiment: str) -> Path:
    draws = {k: json.loads((ctx.root / f"{k}.json").read_text())["draw"] for k in TASKS[experiment]}
    path = ctx.root / f"{experiment}.result.json"
    atomic_write_json(path, {"provenance": {}, "metrics": draws})
    return path
