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
