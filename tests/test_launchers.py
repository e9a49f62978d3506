"""Experiments as task lists: every launcher gives the same result files; failures, resume and
interruption behave as documented (``ibcore.tasks``, ``ibcore.launchers``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from ibcore.errors import IBCoreError
from ibcore.launchers import InProcessLauncher, LocalPoolLauncher, RayLauncher, SlurmLauncher
from ibcore.tasks import Task, TaskFailedError, order_tasks, run_experiments

FAKE = "fake_runner"  # tests/fake_runner.py, importable because pytest puts tests/ on sys.path


def _strip_timing(obj: Any) -> Any:
    """``obj`` without wall-clock fields (they differ between any two runs)."""
    if isinstance(obj, dict):
        return {k: _strip_timing(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [_strip_timing(v) for v in obj]
    return obj


def _run_fake(root: Path, behaviour: dict[str, str], launcher: Any, resume: bool = False
              ) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "behaviour.json").write_text(json.dumps(behaviour))
    return run_experiments(FAKE, launcher=launcher, results_root=root, resume=resume,
                           experiments=("good", "bad"), progress=False)


# ------------------------------------------------------------------ the same numbers everywhere

@pytest.fixture(scope="module")
def gmvib_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The GMVIB `beta` smoke grid run by each of the four launchers."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("submitit")
    from ibcore.runners import gmvib

    launchers = {
        "in-process": InProcessLauncher(),
        "local-2": LocalPoolLauncher(2, threads=1),
        "ray": RayLauncher(cpus_per_task=1),
        "submitit-local": None,
    }
    out = {}
    for name, launcher in launchers.items():
        root = tmp_path_factory.mktemp(name) / "results"
        if launcher is None:
            launcher = SlurmLauncher(root.parent / "submitit", local=True, max_in_flight=2,
                                     tasks_per_job=6)
        if name == "ray":
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        # every worker computes with one thread; so does this process while it runs the tasks
        # itself (a convolution's gradient is summed in a thread-count-dependent order, so
        # results are bit-identical only at equal thread counts)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            path = gmvib.run("smoke", experiments=("beta",), results_root=root, progress=False,
                             launcher=launcher)["beta"]
        finally:
            torch.set_num_threads(threads)
            if name == "ray":
                ray.shutdown()
        out[name] = json.loads(path.read_text(encoding="utf-8"))
    return out


def test_every_launcher_gives_the_same_result_file(gmvib_runs: dict[str, dict[str, Any]]) -> None:
    reference = gmvib_runs["in-process"]
    assert reference["metrics"]["settings"], "the grid trained no model"
    for name, result in gmvib_runs.items():
        assert _strip_timing(result["metrics"]) == _strip_timing(reference["metrics"]), name
        assert _strip_timing(result["history"]) == _strip_timing(reference["history"]), name
        assert result["config"] == reference["config"], name


def test_provenance_says_how_the_tasks_ran(gmvib_runs: dict[str, dict[str, Any]]) -> None:
    from ibcore.runners import gmvib

    n_models = len(gmvib.experiment_specs(gmvib.PROFILES["smoke"], "beta"))
    launched = {name: r["provenance"]["launcher"] for name, r in gmvib_runs.items()}
    assert launched == {"in-process": "in-process", "local-2": "local", "ray": "ray",
                        "submitit-local": "slurm-local"}
    assert gmvib_runs["local-2"]["provenance"]["workers"] == 2
    for r in gmvib_runs.values():
        assert r["provenance"]["tasks"] == n_models and r["provenance"]["wall_seconds"] > 0
        # the compute seconds of the models are counted in the assembled file
        assert r["provenance"]["seconds"] >= sum(
            s["train_seconds"] for s in r["metrics"]["settings"])


# ------------------------------------------------------------------ failures and resume

@pytest.mark.parametrize("launcher", ["in-process", "local-2"])
def test_failed_tasks_are_reported_and_the_rest_goes_on(tmp_path: Path, launcher: str) -> None:
    make = {"in-process": InProcessLauncher, "local-2": lambda: LocalPoolLauncher(2, threads=1)}
    behaviour = {"b": "raise", "c": "ok" if launcher == "in-process" else "die"}
    with pytest.raises(TaskFailedError) as info:
        _run_fake(tmp_path, behaviour, make[launcher]())
    failed = {f.key: f.error for f in info.value.failures}
    assert set(failed) == ({"b", "d"} if launcher == "in-process" else {"b", "c", "d"})
    assert "told to fail" in failed["b"]
    assert "not started" in failed["d"] and "b" in failed["d"]
    if launcher == "local-2":
        assert "died" in failed["c"]
    assert "b" in str(info.value) and "--resume" in str(info.value)
    assert set(info.value.written) == {"good"}  # the experiment whose tasks all succeeded
    ran = (tmp_path / "ran.txt").read_text().split()
    assert "d" not in ran and "a" in ran

    # a rerun with --resume redoes only what is missing
    (tmp_path / "ran.txt").unlink()
    written = _run_fake(tmp_path, {}, make[launcher](), resume=True)
    assert set(written) == {"good", "bad"}
    rerun = set((tmp_path / "ran.txt").read_text().split())
    assert rerun == ({"b", "d"} if launcher == "in-process" else {"b", "c", "d"})


def test_order_does_not_change_a_task_result(tmp_path: Path) -> None:
    a = _run_fake(tmp_path / "one", {}, InProcessLauncher())
    b = _run_fake(tmp_path / "two", {}, LocalPoolLauncher(2, threads=1))
    for exp in ("good", "bad"):
        assert json.loads(a[exp].read_text())["metrics"] == json.loads(b[exp].read_text())["metrics"]


def test_sigterm_stops_the_workers_and_leaves_them_resumable(tmp_path: Path) -> None:
    root = tmp_path / "results"
    root.mkdir()
    (root / "behaviour.json").write_text(json.dumps({"a": "sleep", "b": "sleep"}))
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from ibcore.launchers import LocalPoolLauncher\n"
        "from ibcore.tasks import run_experiments\n"
        "run_experiments('fake_runner', launcher=LocalPoolLauncher(2, threads=1), "
        f"results_root={str(root)!r}, experiments=('good', 'bad'), progress=False)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((root / "a.pid").exists() and (root / "b.pid").exists()):
        assert time.time() < deadline and parent.poll() is None, parent.stderr.read()
        time.sleep(0.2)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) != 0
    for key in ("a", "b"):
        pid = int((root / f"{key}.pid").read_text())
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"worker {pid} of task {key} still runs after the parent was stopped")
    # nothing was assembled; a resumed run (tasks now quick) completes everything
    assert not (root / "good.result.json").exists()
    (root / "behaviour.json").write_text("{}")
    written = run_experiments(FAKE, launcher=InProcessLauncher(), results_root=root, resume=True,
                              experiments=("good", "bad"), progress=False)
    assert set(written) == {"good", "bad"}


# ------------------------------------------------------------------ planning

def test_order_tasks_drops_duplicates_and_respects_after() -> None:
    tasks = [Task("b", ("x",), after=("a",)), Task("a", ("x",)), Task("b", ("y",), after=("a",))]
    assert [t.key for t in order_tasks(tasks)] == ["a", "b"]
    with pytest.raises(IBCoreError, match="does not contain"):
        order_tasks([Task("a", ("x",), after=("zz",))])
    with pytest.raises(IBCoreError, match="circular"):
        order_tasks([Task("a", ("x",), after=("b",)), Task("b", ("x",), after=("a",))])


def test_cli_workers_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    from ibcore.cli import main

    assert main(["run", "gmvib", "--workers", "0"]) == 2
    assert "workers must be ≥ 1" in capsys.readouterr().err
