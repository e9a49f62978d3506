"""The results store: every number the book shows comes from a file written here.

A result file lives at ``<root>/<chapter>/<experiment>/<profile>[-seed<N>].json`` and holds four
blocks (see ``shared/conventions.md``): ``provenance`` (profile, device, torch version, git commit
and dirty flag, command, seed, start/end time, seconds, CPU count), ``config`` (the settings the run
used), ``metrics`` (final numbers named with their split and unit) and ``history`` (per-epoch rows).
Files are written atomically, so an interrupted run never leaves a half-written result.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ibcore.atomic import atomic_write_bytes, atomic_write_json
from ibcore.device import device_description
from ibcore.errors import ResultFileError, UnknownNameError

PROFILE_ORDER: tuple[str, ...] = ("paper", "cpu", "smoke")
"""Profiles from most to least authoritative: chapters show the first one recorded."""

REQUIRED_PROVENANCE = ("profile", "device", "torch", "commit", "dirty", "seed", "seconds")

_PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path | None:
    """The checkout that holds this package, or ``None`` for an installed (non-editable) copy."""
    candidate = _PACKAGE_DIR.parent
    return candidate if (candidate / "pyproject.toml").is_file() else None


def default_results_root() -> Path:
    """``$IBCORE_RESULTS`` if set, else ``results/`` of the checkout, else ``./results``."""
    env = os.environ.get("IBCORE_RESULTS")
    if env:
        return Path(env)
    root = repo_root()
    return (root if root is not None else Path.cwd()) / "results"


def git_state(cwd: Path | None = None) -> tuple[str, bool]:
    """Return ``(commit, dirty)`` of the checkout; ``("unknown", True)`` outside git.

    ``dirty`` ignores changes under ``results/`` and ``runs/`` (recorded outputs, not code).
    """
    cwd = cwd or repo_root() or Path.cwd()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", ".", ":(exclude)results", ":(exclude)runs"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True
    return commit, bool(status.strip())


def _invocation() -> str:
    """The command line of this process, with ``python -m ibcore`` spelled as typed."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "__main__.py" and Path(argv[0]).parent.name == "ibcore":
        argv[0:1] = ["python", "-m", "ibcore"]
    return " ".join(shlex.quote(a) for a in argv)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def result_path(
    chapter: str, experiment: str, profile: str, seed: int | None, root: Path | None = None
) -> Path:
    """Where a run's result file goes."""
    for name, value in (("chapter", chapter), ("experiment", experiment), ("profile", profile)):
        if not value or "/" in value or value.startswith("."):
            raise UnknownNameError(f"{name} must be a plain name, got {value!r}")
    root = Path(root) if root is not None else default_results_root()
    stem = profile if seed is None else f"{profile}-seed{seed}"
    return root / chapter / experiment / f"{stem}.json"


@dataclass
class RunRecorder:
    """Context manager that records one run and writes its result file on a clean exit.

    >>> with RunRecorder(chapter="foundations", experiment="demo", profile="smoke", seed=0,
    ...                  device=torch.device("cpu"), config={"beta": 1.0}) as rec:  # doctest: +SKIP
    ...     rec.metrics["test_accuracy"] = 0.9
    ...     rec.history.append({"epoch": 1, "train_loss": 0.3})

    ``seconds`` is the wall time inside the ``with`` block plus :meth:`add_elapsed` (a resumed run
    adds the seconds its checkpoint had already spent, so the record states the whole cost).
    If the block raises, nothing is written.
    """

    chapter: str
    experiment: str
    profile: str
    seed: int | None
    device: torch.device
    config: dict[str, Any]
    root: Path | None = None
    command: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)
    path: Path | None = None
    _started: str = ""
    _t0: float = 0.0
    _extra_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.path = result_path(self.chapter, self.experiment, self.profile, self.seed, self.root)

    def __enter__(self) -> RunRecorder:
        self._started = _now()
        self._t0 = time.perf_counter()
        return self

    def add_elapsed(self, seconds: float) -> None:
        """Count ``seconds`` spent before this process (e.g. by an interrupted earlier attempt)."""
        self._extra_seconds += float(seconds)

    def save_artifact(self, name: str, payload: bytes, ext: str, what: str | None = None) -> Path:
        """Write ``payload`` beside the result file as ``<stem>.<name>.<ext>`` (atomically).

        The file is named in the result's ``artifacts`` with its SHA-256, which
        :func:`read_artifact` checks when a chapter reads it back.
        """
        assert self.path is not None
        target = self.path.with_name(f"{self.path.stem}.{name}.{ext}")
        atomic_write_bytes(target, payload)
        entry = {"file": target.name, "sha256": hashlib.sha256(payload).hexdigest()}
        if what:
            entry["what"] = what
        self.artifacts[name] = entry
        return target

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            return
        seconds = time.perf_counter() - self._t0 + self._extra_seconds
        commit, dirty = git_state()
        provenance = {
            "profile": self.profile,
            "device": device_description(self.device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "commit": commit,
            "dirty": dirty,
            "command": self.command or _invocation(),
            "seed": self.seed,
            "started": self._started,
            "ended": _now(),
            "seconds": round(seconds, 3),
            "cpu_count": os.cpu_count(),
        }
        payload = {
            "provenance": provenance,
            "config": self.config,
            "metrics": self.metrics,
            "history": self.history,
        }
        if self.artifacts:
            payload["artifacts"] = self.artifacts
        assert self.path is not None
        try:
            atomic_write_json(self.path, payload)
        except ValueError as exc:  # NaN/inf are not JSON: a result must not hide them
            raise ResultFileError(
                f"cannot record {self.path}: a metric or history value is NaN/inf ({exc})"
            ) from exc


@dataclass(frozen=True)
class ResultRecord:
    """One recorded run, as read back from its file."""

    path: Path
    provenance: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def profile(self) -> str:
        return str(self.provenance["profile"])

    @property
    def seed(self) -> int | None:
        return self.provenance.get("seed")


def load_result(path: str | os.PathLike) -> ResultRecord:
    """Read and validate a result file; a corrupted or incomplete one raises :class:`ResultFileError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ResultFileError(f"no result file at {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultFileError(
            f"{path} is not valid JSON ({exc}); it is corrupted: delete it and re-run the experiment"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("provenance"), dict):
        raise ResultFileError(f"{path} has no provenance block; it is not an ibcore result file")
    missing = [k for k in REQUIRED_PROVENANCE if k not in data["provenance"]]
    if missing:
        raise ResultFileError(f"{path}: provenance lacks {', '.join(missing)}")
    return ResultRecord(
        path=path,
        provenance=data["provenance"],
        config=data.get("config", {}),
        metrics=data.get("metrics", {}),
        history=data.get("history", []),
    )


def read_artifact(result_path: str | os.PathLike, artifact: str | Mapping[str, str]) -> bytes:
    """The bytes of an artefact beside a result file, after checking its SHA-256.

    ``artifact`` is the artefact's name in the result's ``artifacts`` block, or that block's
    entry itself. A missing, unreadable or altered file raises :class:`ResultFileError`.
    """
    result_path = Path(result_path)
    try:
        if isinstance(artifact, str):
            data = json.loads(result_path.read_text(encoding="utf-8"))
            entry = data["artifacts"][artifact]
        else:
            entry = artifact
        name = entry.get("file") or entry["path"]  # "path": the key of early infomax records
        raw = (result_path.parent / name).read_bytes()
        digest = entry["sha256"]
    except (OSError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ResultFileError(
            f"artefact {artifact!r} of {result_path} is missing or unreadable ({exc}); re-run "
            "the experiment"
        ) from exc
    if hashlib.sha256(raw).hexdigest() != digest:
        raise ResultFileError(
            f"{name} does not match the checksum recorded in {result_path}; it was altered or "
            "corrupted: re-run the experiment"
        )
    return raw


def _seed_of(p: Path) -> int:
    _, _, tail = p.stem.partition("-seed")
    return int(tail) if tail.isdigit() else -1


def find_results(
    chapter: str, experiment: str, profile: str, root: Path | None = None
) -> list[ResultRecord]:
    """All recorded runs (one per seed) of one experiment at one profile, sorted by seed."""
    folder = result_path(chapter, experiment, profile, None, root).parent
    if not folder.is_dir():
        return []
    paths = [p for p in folder.glob(f"{profile}*.json") if p.stem == profile or
             p.stem.startswith(f"{profile}-seed")]
    return [load_result(p) for p in sorted(paths, key=_seed_of)]


def load_best(
    chapter: str,
    experiment: str,
    root: Path | None = None,
    profiles: Sequence[str] = PROFILE_ORDER,
) -> ResultRecord | None:
    """The most authoritative recorded run (``paper`` > ``cpu`` > ``smoke``; lowest seed), or ``None``."""
    for profile in profiles:
        found = find_results(chapter, experiment, profile, root)
        if found:
            return found[0]
    return None


def iter_all_results(root: Path | None = None) -> Iterator[ResultRecord]:
    """Every result file under ``root`` (for the book's Reproducibility page)."""
    root = Path(root) if root is not None else default_results_root()
    for path in sorted(root.glob("*/*/*.json")):
        yield load_result(path)


def provenance_note(record: ResultRecord) -> str:
    """One line of Markdown stating where a table's or figure's numbers come from."""
    p = record.provenance
    commit = str(p.get("commit", "unknown"))[:10]
    dirty = " (**uncommitted code: re-run before citing**)" if p.get("dirty") else ""
    when = str(p.get("ended", ""))[:10]
    try:
        shown = record.path.relative_to(default_results_root().parent)
    except ValueError:
        shown = record.path
    return (
        f"Source: recorded run, profile `{p['profile']}`, device {p['device']}, seed {p['seed']}, "
        f"{float(p['seconds']):.0f} s, commit `{commit}`{dirty}, {when}; file `{shown}`."
    )


def missing_note(chapter: str, experiment: str, profile: str = "cpu") -> str:
    """What a chapter says when no run of ``profile`` is recorded."""
    return (
        f"**No `{profile}` run of `{chapter}/{experiment}` is recorded yet.** Numbers shown here come "
        f"from whatever run is recorded, labelled with its profile; to make the `{profile}` run, use "
        f"`python -m ibcore run {chapter} --profile {profile}`."
    )
