"""Results store: atomic writes, provenance fields, the best-run loader, corrupted files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from ibcore.atomic import atomic_write_json, atomic_write_text
from ibcore.errors import ResultFileError, UnknownNameError
from ibcore.results import (
    REQUIRED_PROVENANCE,
    RunRecorder,
    find_results,
    load_best,
    load_result,
    missing_note,
    provenance_note,
    result_path,
)

CPU = torch.device("cpu")


def _record(root: Path, profile: str, seed: int | None, value: float) -> Path:
    with RunRecorder(chapter="ch", experiment="exp", profile=profile, seed=seed, device=CPU,
                     config={"beta": 0.1}, root=root, command="pytest") as rec:
        rec.metrics["test_accuracy"] = value
        rec.history.append({"epoch": 1, "train_loss": 1.0})
    assert rec.path is not None
    return rec.path


def test_recorder_writes_provenance(tmp_path: Path) -> None:
    path = _record(tmp_path, "cpu", 3, 0.9)
    assert path == tmp_path / "ch" / "exp" / "cpu-seed3.json"
    data = json.loads(path.read_text())
    for key in (*REQUIRED_PROVENANCE, "command", "started", "ended", "cpu_count", "python"):
        assert key in data["provenance"], key
    prov = data["provenance"]
    assert prov["profile"] == "cpu" and prov["seed"] == 3 and prov["command"] == "pytest"
    assert prov["device"].startswith("cpu (") and prov["torch"] == torch.__version__
    assert len(prov["commit"]) == 40 or prov["commit"] == "unknown"
    assert isinstance(prov["dirty"], bool) and prov["seconds"] >= 0
    assert data["config"] == {"beta": 0.1} and data["metrics"] == {"test_accuracy": 0.9}


def test_recorder_writes_nothing_when_the_run_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with RunRecorder(chapter="ch", experiment="exp", profile="cpu", seed=0, device=CPU,
                         config={}, root=tmp_path):
            raise RuntimeError("boom")
    assert not (tmp_path / "ch").exists()


def test_recorder_refuses_nan_metrics(tmp_path: Path) -> None:
    with pytest.raises(ResultFileError, match="NaN"):
        with RunRecorder(chapter="ch", experiment="exp", profile="cpu", seed=0, device=CPU,
                         config={}, root=tmp_path) as rec:
            rec.metrics["test_loss"] = math.nan
    assert not list(tmp_path.rglob("*.json"))


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "r.json"
    atomic_write_json(target, {"old": 1})

    def failing_replace(src, dst):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # temp file cleaned up


def test_load_best_prefers_paper_then_cpu_then_smoke(tmp_path: Path) -> None:
    assert load_best("ch", "exp", root=tmp_path) is None
    _record(tmp_path, "smoke", 0, 0.1)
    assert load_best("ch", "exp", root=tmp_path).profile == "smoke"
    _record(tmp_path, "cpu", 1, 0.5)
    _record(tmp_path, "cpu", 0, 0.6)
    best = load_best("ch", "exp", root=tmp_path)
    assert best.profile == "cpu" and best.seed == 0 and best.metrics["test_accuracy"] == 0.6
    assert [r.seed for r in find_results("ch", "exp", "cpu", root=tmp_path)] == [0, 1]
    _record(tmp_path, "paper", None, 0.99)
    assert load_best("ch", "exp", root=tmp_path).profile == "paper"


def test_corrupted_and_foreign_result_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"provenance": {"profile": "cpu"')
    with pytest.raises(ResultFileError, match="corrupted"):
        load_result(bad)
    bad.write_text('{"metrics": {}}')
    with pytest.raises(ResultFileError, match="no provenance"):
        load_result(bad)
    bad.write_text('{"provenance": {"profile": "cpu"}}')
    with pytest.raises(ResultFileError, match="lacks"):
        load_result(bad)
    with pytest.raises(ResultFileError, match="no result file"):
        load_result(tmp_path / "absent.json")


def test_notes_mention_profile_and_command(tmp_path: Path) -> None:
    rec = load_result(_record(tmp_path, "cpu", 0, 0.5))
    note = provenance_note(rec)
    assert "`cpu`" in note and "seed 0," in note and "cpu (" in note
    assert "python -m ibcore run ch --profile cpu" in missing_note("ch", "exp")


def test_result_path_rejects_bad_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError):
        result_path("../etc", "exp", "cpu", 0, tmp_path)


def test_shown_record_prefers_recorded_cpu_and_flags_smoke(tmp_path: Path) -> None:
    from ibcore.report import shown_record, source_note

    scratch = tmp_path / "scratch"
    written = {"exp": _record(scratch, "smoke", 0, 0.1)}
    record, warning = shown_record("ch", "exp", written, root=tmp_path / "results")
    assert record.profile == "smoke" and warning is not None and "ch/exp" in warning
    assert source_note(record, warning).startswith("**Smoke run")
    _record(tmp_path / "results", "cpu", 0, 0.9)
    record, warning = shown_record("ch", "exp", written, root=tmp_path / "results")
    assert (record.profile, record.metrics["test_accuracy"], warning) == ("cpu", 0.9, None)
    assert not source_note(record, warning).startswith("**Smoke run")
    with pytest.raises(ResultFileError, match="no run of ch/other"):
        shown_record("ch", "other", written, root=tmp_path / "results")


def test_markdown_table_layout_and_bad_alignment() -> None:
    from ibcore.errors import InvalidParameterError
    from ibcore.report import markdown_table

    text = markdown_table([(1, "a"), (2, "b")], [("n", lambda r: str(r[0])), ("s", lambda r: r[1])])
    assert text.splitlines() == ["| n | s |", "| ---: | ---: |", "| 1 | a |", "| 2 | b |"]
    left = markdown_table([], [("n", str)], align="left")
    assert left.splitlines() == ["| n |", "| --- |"]
    with pytest.raises(InvalidParameterError, match="align"):
        markdown_table([], [("n", str)], align="centre")


def test_artifacts_are_written_beside_the_result_and_checked_on_read(tmp_path: Path) -> None:
    from ibcore.results import read_artifact

    with RunRecorder(chapter="ch", experiment="exp", profile="cpu", seed=0, device=CPU,
                     config={}, root=tmp_path, command="pytest") as rec:
        written = rec.save_artifact("frames", b"\x89PNG fake", "png", what="a test payload")
    assert written == tmp_path / "ch" / "exp" / "cpu-seed0.frames.png"
    assert read_artifact(rec.path, "frames") == b"\x89PNG fake"
    entry = json.loads(rec.path.read_text())["artifacts"]["frames"]
    assert read_artifact(rec.path, entry) == b"\x89PNG fake"
    assert read_artifact(rec.path, {**entry, "path": entry.pop("file")}) == b"\x89PNG fake"
    written.write_bytes(b"\x89PNG altered")
    with pytest.raises(ResultFileError, match="checksum"):
        read_artifact(rec.path, "frames")
    written.unlink()
    with pytest.raises(ResultFileError, match="missing"):
        read_artifact(rec.path, "frames")
    with pytest.raises(ResultFileError, match="missing"):
        read_artifact(rec.path, "no-such-artefact")


def test_check_float_names_the_problem() -> None:
    from ibcore.errors import InvalidParameterError, NonFiniteError, ShapeError
    from ibcore.validation import check_float

    x = torch.ones(3)
    assert check_float("x", x) is x
    with pytest.raises(InvalidParameterError, match=r"x must be a floating-point tensor.*int64"):
        check_float("x", torch.ones(3, dtype=torch.int64))
    with pytest.raises(ShapeError, match="torch.Tensor"):
        check_float("x", [1.0, 2.0])
    with pytest.raises(NonFiniteError, match="1 NaN/inf"):
        check_float("x", torch.tensor([1.0, float("nan")]))
