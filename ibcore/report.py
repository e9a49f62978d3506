"""Tables for the book's Reproducibility page: every recorded run and the package versions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import metadata

from ibcore.results import ResultRecord

PACKAGES: tuple[str, ...] = (
    "torch", "torchvision", "numpy", "scipy", "scikit-learn", "matplotlib", "ipywidgets",
    "constriction", "jupyter-book", "myst-nb", "sphinx", "papermill",
)


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
