"""Command line: ``python -m ibcore run <chapter> --profile cpu [--device auto] [--seed N] [--resume]``.

``--experiment NAME`` (repeatable) runs only the named experiments of the chapter (default: all,
see ``python -m ibcore list``). Two processes may run different experiments of one chapter at
the same time only if they train no model in common.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ibcore.device import DEVICE_CHOICES
from ibcore.errors import IBCoreError
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
        written = runner.run(
            args.profile,
            device=args.device,
            seed=args.seed,
            resume=args.resume,
            results_root=args.results_root,
            progress=not args.no_progress,
            experiments=experiments,
        )
    except IBCoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for experiment, path in written.items():
        print(f"{experiment}: {path}")
    return 0
