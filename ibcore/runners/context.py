"""What every chapter runner carries through its experiments, written once.

A runner subclasses :class:`RunContext` (adding its own cached data as fields with defaults),
sets ``chapter``, and builds it with :func:`prepare_run`, which checks the profile, the
experiment names and the seed, resolves the device and seeds the global RNGs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from ibcore.checkpoint import fingerprint_of
from ibcore.device import resolve_device, seed_everything
from ibcore.errors import UnknownNameError
from ibcore.profiles import as_dict, identity_dict, select
from ibcore.results import RunRecorder, default_results_root
from ibcore.validation import check_int


@dataclass
class RunContext:
    """Settings of one ``run(...)`` call, shared by the experiments it runs."""

    chapter: ClassVar[str] = ""

    profile: str
    config: Any
    device: torch.device
    seed: int
    resume: bool
    results_root: Path | None
    progress: bool

    def runs_dir(self, *parts: str) -> Path:
        """``<results root>/../runs/<chapter>/<parts…>/<profile>-seed<N>`` (checkpoints, models)."""
        root = Path(self.results_root) if self.results_root is not None else default_results_root()
        return root.parent.joinpath("runs", self.chapter, *parts, f"{self.profile}-seed{self.seed}")

    def checkpoint_dir(self, experiment: str) -> Path:
        return self.runs_dir(experiment)

    def fingerprint(self, experiment: str, **extra: Any) -> str:
        return fingerprint_of({"chapter": self.chapter, "experiment": experiment,
                               "seed": self.seed, "config": identity_dict(self.config),
                               **extra})

    def recorder(self, experiment: str) -> RunRecorder:
        return RunRecorder(chapter=self.chapter, experiment=experiment, profile=self.profile,
                           seed=self.seed, device=self.device, config=as_dict(self.config),
                           root=self.results_root)


C = TypeVar("C", bound=RunContext)


def prepare_run(
    context_cls: type[C],
    profiles: Mapping[str, Any],
    known_experiments: Sequence[str],
    *,
    profile: str,
    experiments: Sequence[str],
    device: str,
    seed: int,
    resume: bool,
    results_root: Path | None,
    progress: bool,
    **extra: Any,
) -> C:
    """Validate the arguments of a runner's ``run`` and build its context."""
    config = select(profiles, profile)
    for name in experiments:
        if name not in known_experiments:
            raise UnknownNameError(
                f"unknown experiment {name!r}; choose from {', '.join(known_experiments)}"
            )
    seed = check_int("seed", seed, low=0)
    dev = resolve_device(device)
    seed_everything(seed)
    root = Path(results_root) if results_root is not None else None
    return context_cls(profile, config, dev, seed, resume, root, progress, **extra)
