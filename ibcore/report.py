"""Tables for the book's Reproducibility page: every recorded run and the package versions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from ibcore.errors import InvalidParameterError, ResultFileError
from ibcore.results import (
    ResultRecord,
    load_best,
    load_result,
    missing_note,
    provenance_note,
)

PACKAGES: tuple[str, ...] = (
    "torch", "torchvision", "numpy", "scipy", "scikit-learn", "matplotlib", "ipywidgets",
    "constriction", "jupyter-book", "myst-nb", "sphinx", "papermill",
)


def shown_record(
    chapter: str,
    experiment: str,
    written: Mapping[str, Path] | None = None,
    root: Path | None = None,
) -> tuple[ResultRecord, str | None]:
    """The run a chapter shows for ``experiment``, and a warning when it is only a smoke run.

    The best recorded run under ``root`` (``paper`` > ``cpu``) is shown with no warning. With none,
    the recorded smoke run, else the run just written (``written[experiment]``) is shown together
    with :func:`~ibcore.results.missing_note`. No run at all raises ``ResultFileError``.
    """
    best = load_best(chapter, experiment, root)
    if best is not None and best.profile != "smoke":
        return best, None
    if best is None:
        if written is None or experiment not in written:
            raise ResultFileError(
                f"no run of {chapter}/{experiment} is recorded; run "
                f"`python -m ibcore run {chapter} --profile smoke` first"
            )
        best = load_result(written[experiment])
    return best, missing_note(chapter, experiment, "cpu")


def source_note(record: ResultRecord, warning: str | None = None) -> str:
    """The Markdown line under a table or figure: the run's provenance.

    With a ``warning`` (from :func:`shown_record`: no ``cpu`` or ``paper`` run is recorded), the
    line starts by saying that the numbers are smoke numbers; the warning itself is shown once
    by the chapter, not under every figure.
    """
    text = provenance_note(record)
    if warning:
        text = (
            "**Smoke run: these numbers only show that the code runs** (no `cpu` or `paper` run "
            "is recorded). " + text
        )
    return text


def markdown_table(
    rows: Iterable[Any],
    columns: Sequence[tuple[str, Callable[[Any], str]]],
    align: str = "right",
) -> str:
    """A Markdown table; ``columns`` is a list of ``(header, function of a row -> cell text)``.

    ``align`` (``"left"`` or ``"right"``) aligns every column.
    """
    if align not in ("left", "right"):
        raise InvalidParameterError(f"align must be 'left' or 'right', not {align!r}")
    mark = "---:" if align == "right" else "---"
    head = "| " + " | ".join(h for h, _ in columns) + " |"
    rule = "| " + " | ".join(mark for _ in columns) + " |"
    body = ["| " + " | ".join(f(r) for _, f in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def key_metrics(record: ResultRecord, limit: int = 2) -> str:
    """The first ``limit`` scalar metrics of a run, as ``name = value`` pairs."""
    pairs = [(k, v) for k, v in record.metrics.items() if isinstance(v, (int, float))]
    return "; ".join(f"`{k}` = {_fmt(v)}" for k, v in pairs[:limit]) or "—"


def runs_table_markdown(records: Iterable[ResultRecord], chapters: Sequence[str] = ()) -> str:
    """A Markdown table with one row per recorded run (chapter, experiment, profile, provenance)."""
    header = (
        "| chapter | experiment | profile | seed | device | seconds | commit | key metrics |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    rows = []
    for r in records:
        p = r.provenance
        chapter = r.path.parent.parent.name
        shown = f"{{doc}}`{chapter}`" if chapter in chapters else chapter
        commit = f"`{str(p['commit'])[:10]}`" + (" (dirty)" if p.get("dirty") else "")
        rows.append(
            f"| {shown} | {r.path.parent.name} | {p['profile']} | {p['seed']} | {p['device']} | "
            f"{float(p['seconds']):.1f} | {commit} | {key_metrics(r)} |"
        )
    if not rows:
        return "*No run is recorded yet.*"
    return header + "\n".join(rows)


def versions_table_markdown(packages: Sequence[str] = PACKAGES) -> str:
    """A Markdown table of the installed versions of ``packages``."""
    lines = ["| package | version |", "| --- | --- |"]
    for name in packages:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "not installed"
        lines.append(f"| {name} | {version} |")
    return "\n".join(lines)
