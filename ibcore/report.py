"""What a chapter shows of its recorded runs: provenance lines, Markdown tables, reproduction
checks and the summary computed from them, and the Reproducibility page's tables."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
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


_DOLLAR = re.compile(r"(?<!\\)\$")


def table_cell(text: str) -> str:
    """``text`` made safe for one cell of a Markdown table: no ``|`` can split the cell.

    Outside math a ``|`` becomes ``\\|`` (shown as ``|``); inside ``$…$`` a ``\\|`` becomes
    ``\\Vert`` and a ``|`` becomes ``\\vert`` (the same symbols, without the character that the
    table syntax splits on). A newline, which would end the row, raises ``InvalidParameterError``.
    """
    if "\n" in text:
        raise InvalidParameterError(f"a table cell cannot hold a newline: {text!r}")
    parts = _DOLLAR.split(text)
    if len(parts) % 2 == 0:
        raise InvalidParameterError(f"unbalanced $ in a table cell: {text!r}")
    out = []
    for k, part in enumerate(parts):
        if k % 2:  # math
            part = part.replace("\\|", "\\Vert ").replace("|", "\\vert ")
        else:
            part = re.sub(r"(?<!\\)\|", r"\\|", part)
        out.append(part)
    return "$".join(out)


def markdown_table(
    rows: Iterable[Any],
    columns: Sequence[tuple[str, Callable[[Any], str]]],
    align: str = "right",
) -> str:
    """A Markdown table; ``columns`` is a list of ``(header, function of a row -> cell text)``.

    ``align`` (``"left"`` or ``"right"``) aligns every column. Every header and cell goes
    through :func:`table_cell`, so a ``|`` in a value (``H[Y|Z]``) cannot shift a row.
    """
    if align not in ("left", "right"):
        raise InvalidParameterError(f"align must be 'left' or 'right', not {align!r}")
    mark = "---:" if align == "right" else "---"
    head = "| " + " | ".join(table_cell(h) for h, _ in columns) + " |"
    rule = "| " + " | ".join(mark for _ in columns) + " |"
    body = ["| " + " | ".join(table_cell(f(r)) for _, f in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


@dataclass(frozen=True)
class ReproductionCheck:
    """One reproduction check shown to readers: a claim, our number and its threshold.

    ``claim`` says what is checked, ``measured`` is our value as shown, ``threshold`` the
    condition it must meet (``"≥ 0.98"``) and ``basis`` where that threshold comes from — the
    source (``"the source's Table 1"``) or our own expectation, said as such. ``holds`` is
    ``True``/``False``, or ``None`` when the run cannot decide it (``note`` then says why);
    ``note`` may also carry a caveat the reader needs (one seed, counts at chance, …).
    """

    claim: str
    measured: str
    threshold: str
    basis: str
    holds: bool | None
    note: str = ""

    def __post_init__(self) -> None:
        for name in ("claim", "measured", "threshold", "basis"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise InvalidParameterError(f"a reproduction check needs a non-empty {name}")
        if self.holds not in (True, False, None):
            raise InvalidParameterError(f"holds must be True, False or None, not {self.holds!r}")


def paired_difference_text(d: Mapping[str, Any], unit: str = "points") -> str:
    """Words for a replicate-paired difference of :func:`ibcore.replicates.paired_difference`:
    the per-seed differences, the 95 % interval and its verdict on "greater than 0"."""
    seeds = ", ".join(f"{v:+.1f}" for v in d["differences"])
    if d.get("interval_95") is None:
        return f"one seed ({seeds}): no interval"
    lo, hi = d["interval_95"]
    return f"per seed {seeds}; paired 95 % interval [{lo:+.1f}, {hi:+.1f}] {unit}: {d['verdict']}"


_VERDICT = {True: "holds", False: "**does not hold**", None: "not decided"}


def checks_table(checks: Sequence[ReproductionCheck]) -> str:
    """The Markdown table of a chapter's reproduction checks (one row each)."""
    if not checks:
        raise InvalidParameterError("no reproduction check to show")
    return markdown_table(checks, [
        ("reproduction check", lambda c: c.claim),
        ("ours", lambda c: c.measured),
        ("threshold", lambda c: c.threshold),
        ("threshold from", lambda c: c.basis),
        ("result", lambda c: _VERDICT[c.holds]),
    ], align="left")


def _check_line(c: ReproductionCheck) -> str:
    note = f" {c.note}" if c.note else ""
    return f"* {c.claim}: {c.measured}. Threshold {c.threshold}, from {c.basis}.{note}"


def checks_summary(checks: Sequence[ReproductionCheck]) -> str:
    """Markdown for a chapter summary: what reproduced and what did not, with the numbers.

    Computed from the same checks the chapter's tables show, so the summary changes with the
    recorded runs. Checks that could not be decided are listed too.
    """
    if not checks:
        raise InvalidParameterError("no reproduction check to summarise")
    groups = [
        ("Reproduced", [c for c in checks if c.holds is True]),
        ("Not reproduced", [c for c in checks if c.holds is False]),
        ("Not decided by this run", [c for c in checks if c.holds is None]),
    ]
    out = []
    for title, group in groups:
        if group or title != "Not decided by this run":
            body = "\n".join(_check_line(c) for c in group) if group else "* none"
            out.append(f"**{title}** ({len(group)} of {len(checks)} reproduction checks):\n\n"
                       + body)
    return "\n\n".join(out)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def key_metrics(record: ResultRecord, limit: int = 2) -> str:
    """The first ``limit`` scalar metrics of a run, as ``name = value`` pairs."""
    pairs = [(k, v) for k, v in record.metrics.items() if isinstance(v, (int, float))]
    return "; ".join(f"`{k}` = {_fmt(v)}" for k, v in pairs[:limit]) or "—"


def runs_table_markdown(records: Iterable[ResultRecord], chapters: Sequence[str] = ()) -> str:
    """A Markdown table with one row per recorded run (chapter, experiment, profile, provenance).

    The commit is shortened to 7 hex digits so that the table fits the text column; the full
    provenance and every metric are in each result file.
    """
    header = (
        "| chapter | experiment | profile | seed | device | seconds | commit |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
    )
    rows = []
    for r in records:
        p = r.provenance
        chapter = r.path.parent.parent.name
        shown = f"{{doc}}`{chapter}`" if chapter in chapters else chapter
        commit = f"`{str(p['commit'])[:7]}`" + (" (dirty)" if p.get("dirty") else "")
        rows.append(
            f"| {shown} | {r.path.parent.name} | {p['profile']} | {p['seed']} | {p['device']} | "
            f"{float(p['seconds']):.1f} | {commit} |"
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
