"""The Trainer benchmark runs end to end in its quickest mode (no timing is checked here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_trainer", ROOT / "benchmarks" /
                                                  "trainer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_of_the_glasses_model(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load_benchmark()
    threads = torch.get_num_threads()
    try:
        bench.main(["--quick", "--no-record", "--models", "glasses", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "glasses" in out
    assert "goal glasses: Trainer <= 1.05x bare loop" in out
    assert "in_process" in out and "batch_x2" in out


def test_same_batches_and_work_in_both_loops() -> None:
    """The bare loop and the Trainer see the same batches: equal weights after one epoch."""
    bench = _load_benchmark()
    a = bench.build_case("glasses", steps=3)
    b = bench.build_case("glasses", steps=3)
    torch.manual_seed(1)
    bench.bare_epoch(a)
    torch.manual_seed(1)
    bench.trainer_epoch(b, None)
    for (name, pa), (_, pb) in zip(a.modules["encoder"].named_parameters(),
                                   b.modules["encoder"].named_parameters(), strict=True):
        assert torch.equal(pa, pb), name


def test_unknown_model_is_refused() -> None:
    bench = _load_benchmark()
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--no-record", "--models", "nope"])


def test_saves_are_counted_as_the_trainer_writes_them(tmp_path: Path) -> None:
    """Mid-epoch saves wait for ``checkpoint_min_seconds``: a short epoch writes only its end save."""
    bench = _load_benchmark()
    case = bench.build_case("glasses", steps=4)
    case = bench.dataclasses.replace(case, checkpoint_every_steps=1)
    _, saves = bench.trainer_epoch(case, tmp_path / "c.pt")
    assert saves == 1  # four steps take far less than the default 60 s between mid-epoch saves


def test_update_keeps_the_other_models_with_their_provenance(tmp_path: Path) -> None:
    import json

    bench = _load_benchmark()
    old = {"provenance": {"commit": "a" * 40, "started": "t0"},
           "config": {"repeats": 3},
           "metrics": {"gmvib": {"trainer_time_over_bare_loop": 0.9},
                       "infomax": {"trainer_time_over_bare_loop": 1.09}},
           "history": [{"model": "gmvib", "met": True}, {"model": "infomax", "met": False}]}
    path = tmp_path / "cpu-seed0.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    earlier = bench._earlier_entries(path, ["infomax"])
    metrics, history, config = bench._merge(
        earlier, {"infomax": {"trainer_time_over_bare_loop": 1.01}},
        [{"model": "infomax", "met": True}], {"repeats": 7})
    assert list(metrics) == ["gmvib", "infomax"]
    assert metrics["gmvib"]["measured_by"]["provenance"]["commit"] == "a" * 40
    assert metrics["infomax"]["trainer_time_over_bare_loop"] == 1.01
    assert metrics["infomax"]["measured_by"] == "this file's provenance"
    assert [r["model"] for r in history] == ["gmvib", "infomax"] and history[1]["met"]
    assert config["models_measured_by_this_run"] == ["infomax"]
    with pytest.raises(SystemExit, match="no record"):
        bench._earlier_entries(tmp_path / "missing.json", ["infomax"])
