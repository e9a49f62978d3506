"""Command line: ``python -m ibcore run <chapter> --profile cpu [--device auto] [--seed N] [--resume]``.

``--experiment NAME`` (repeatable) runs only the named experiments of the chapter (default: all,
see ``python -m ibcore list``).

The models of the chosen experiments are independent tasks (:mod:`ibcore.tasks`):
``--workers N`` trains them on N local processes, ``--launcher ray`` on a Ray cluster
(``--ray-address``), ``--launcher slurm`` as Slurm jobs (``--partition``, ``--time-minutes``,
``--gpus-per-task``). Whichever runs them, the result files hold the same numbers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ibcore.device import DEVICE_CHOICES
from ibcore.errors import IBCoreError
from ibcore.launchers import LAUNCHERS, make_launcher
from ibcore.profiles import PROFILE_NAMES
from ibcore.runners import RUNNERS, get_runner


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ibcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a chapter's experiments and record their results")
    run.add_argument("chapter", choices=sorted(RUNNERS))
    run.add_argument("--profile", default="smoke", choices=PROFILE_NAMES)
    run.add_argument("--device", default="auto",
                     help=f"one of {', '.join(DEVICE_CHOICES)} or cuda:N (default: auto)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--resume", action="store_true",
                     help="continue from the last checkpoint of the same run, if there is one")
    run.add_argument("--results-root", type=Path, default=None,
                     help="where result files go (default: results/ of the checkout)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--experiment", action="append", dest="experiments", metavar="NAME",
                     help="run only this experiment (repeatable; default: all of the chapter's)")
    run.add_argument("--workers", type=int, default=1,
                     help="local worker processes for the models (default 1: one after another)")
    run.add_argument("--launcher", choices=LAUNCHERS, default=None,
                     help="where the models train: local (default), ray or slurm")
    run.add_argument("--ray-address", default=None,
                     help="address of a running Ray cluster (default: start a local Ray)")
    run.add_argument("--slurm-folder", type=Path, default=None,
                     help="submitit's folder for job scripts and logs (default runs/slurm)")
    run.add_argument("--partition", default=None, help="Slurm partition")
    run.add_argument("--time-minutes", type=int, default=240, help="Slurm time limit per model")
    run.add_argument("--gpus-per-task", type=int, default=0, help="GPUs per model (Ray, Slurm)")
    run.add_argument("--tasks-per-job", type=int, default=1,
                     help="models packed into one Slurm job (default 1)")
    run.add_argument("--cpus-per-task", type=int, default=1, help="CPUs per model (Ray, Slurm)")
    sub.add_parser("list", help="list chapters, their experiments and profiles")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            for chapter in sorted(RUNNERS):
                runner = get_runner(chapter)
                print(f"{chapter}: experiments {', '.join(runner.EXPERIMENTS)}; "
                      f"profiles {', '.join(runner.PROFILES)}")
            return 0
        runner = get_runner(args.chapter)
        experiments = tuple(dict.fromkeys(args.experiments or runner.EXPERIMENTS))
        launcher = make_launcher(args.launcher, workers=args.workers,
                                 ray_address=args.ray_address, slurm_folder=args.slurm_folder,
                                 partition=args.partition, time_minutes=args.time_minutes,
                                 gpus_per_task=args.gpus_per_task, cpus_per_task=args.cpus_per_task,
                                 tasks_per_job=args.tasks_per_job)
        written = runner.run(
            args.profile,
            device=args.device,
            seed=args.seed,
            resume=args.resume,
            results_root=args.results_root,
            progress=not args.no_progress,
            experiments=experiments,
            launcher=launcher,
        )
    except IBCoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for experiment, path in written.items():
        print(f"{experiment}: {path}")
    return 0
