"""One runner per chapter. Each runner module defines ``CHAPTER``, ``EXPERIMENTS``, a mapping
``PROFILES`` of frozen dataclass settings (``smoke``, ``cpu``, ``paper``), the task protocol of
:mod:`ibcore.tasks` (``make_context``, ``plan``, ``run_task``, ``assemble``) and

``run(profile="smoke", *, device="auto", seed=0, resume=False, results_root=None,
progress=True, experiments=EXPERIMENTS, launcher=None) -> dict[str, Path]`` (experiment name →
result file written), which hands the plan to :func:`ibcore.tasks.run_experiments`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ibcore.errors import UnknownNameError

RUNNERS: dict[str, str] = {
    "foundations": "ibcore.runners.foundations",
    "gmvib": "ibcore.runners.gmvib",
    "glasses": "ibcore.runners.glasses",
    "entropy_ib": "ibcore.runners.entropy_ib",
    "infomax": "ibcore.runners.infomax",
    "ncvae": "ibcore.runners.ncvae",
}


def get_runner(chapter: str) -> ModuleType:
    """Import and return the runner module of ``chapter``."""
    if chapter not in RUNNERS:
        raise UnknownNameError(
            f"unknown chapter {chapter!r}; choose one of {', '.join(sorted(RUNNERS))}"
        )
    return importlib.import_module(RUNNERS[chapter])
