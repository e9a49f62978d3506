"""Reader-facing tables and summaries of ibcore.report: pipes in cells, reproduction checks."""

from __future__ import annotations

import pytest

from ibcore.errors import InvalidParameterError
from ibcore.report import (
    ReproductionCheck,
    checks_summary,
    checks_table,
    markdown_table,
    table_cell,
)


def _cells(row: str) -> list[str]:
    """Split a Markdown table row the way GFM does: on pipes not escaped by a backslash."""
    import re

    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def test_pipes_in_cells_cannot_shift_a_row() -> None:
    text = markdown_table(
        [{"m": "IB", "h": 0.87}],
        [("model", lambda r: r["m"]), ("H[Y|Z] bound", lambda r: f"{r['h']:.3f}"),
         ("$H(Y|Z)$ and $\\|x\\|$", lambda r: "a | b")],
    )
    head, rule, row = text.splitlines()
    assert len(_cells(head)) == len(_cells(rule)) == len(_cells(row)) == 3
    assert "H[Y\\|Z]" in head and "$H(Y\\vert Z)$" in head and "\\Vert x\\Vert" in head
    assert _cells(row)[2] == "a \\| b"


def test_table_cell_rejects_what_would_break_the_table() -> None:
    with pytest.raises(InvalidParameterError):
        table_cell("two\nlines")
    with pytest.raises(InvalidParameterError):
        table_cell("an unbalanced $x")
    assert table_cell("already \\| escaped") == "already \\| escaped"


def _checks() -> list[ReproductionCheck]:
    return [
        ReproductionCheck("VIB on Double-MNIST", "0.7860", "≥ 0.98", "the source's Table 1",
                          False, "Stopped after 5 epochs."),
        ReproductionCheck("FGSM: IB above cross-entropy", "14.2 % vs 7.4 %", "above",
                          "the source's Fig. 1", True),
        ReproductionCheck("InfoVAE's B above the VAE's", "—", "above",
                          "our reading of eq. (33)", None, "InfoVAE was not trained."),
    ]


def test_checks_table_and_summary_list_both_outcomes_with_numbers() -> None:
    checks = _checks()
    table = checks_table(checks)
    assert table.count("\n") == 1 + len(checks)
    assert "**does not hold**" in table and "not decided" in table
    summary = checks_summary(checks)
    assert "**Reproduced** (1 of 3 reproduction checks)" in summary
    assert "**Not reproduced** (1 of 3 reproduction checks)" in summary
    assert "0.7860. Threshold ≥ 0.98, from the source's Table 1. Stopped" in summary
    assert "Not decided by this run" in summary and "InfoVAE was not trained." in summary
    only_good = checks_summary(checks[1:2])
    assert "**Not reproduced** (0 of 1 reproduction checks):\n\n* none" in only_good
    assert "Not decided" not in only_good


def test_bad_checks_raise() -> None:
    with pytest.raises(InvalidParameterError):
        ReproductionCheck("", "1", "≥ 0", "x", True)
    with pytest.raises(InvalidParameterError):
        ReproductionCheck("c", "1", "≥ 0", "x", "yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError):
        checks_table([])
    with pytest.raises(InvalidParameterError):
        checks_summary([])


def test_paired_difference_text_gives_seeds_interval_and_verdict() -> None:
    from ibcore import report
    from ibcore.replicates import paired_difference

    text = report.paired_difference_text(paired_difference([3.0, 4.0, 5.0], [1.0, 1.5, 2.0]))
    assert text.startswith("per seed +2.0, +2.5, +3.0; paired 95 % interval [+")
    assert text.endswith("points: supported")
    one = report.paired_difference_text(paired_difference([1.0], [2.0]), unit="nats")
    assert one == "one seed (-1.0): no interval"
    assert "undecided" in report.paired_difference_text(paired_difference([1.0, -1.0],
                                                                           [0.0, 0.0]))
