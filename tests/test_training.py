"""The training loop: exact resume after SIGKILL, NaN detection, input checks."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ibcore.errors import CheckpointError, NonFiniteError, ShapeError
from ibcore.schedules import Schedule, build_scheduler
from ibcore.training import Trainer, epoch_permutation

WORKER = Path(__file__).with_name("resume_worker.py")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True)


SCHEDULES = ("none", "warmup_cosine", "one_cycle")


def _schedule_args(schedule: str) -> tuple[str, ...]:
    return () if schedule == "none" else ("--schedule", schedule)


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Runs that were never interrupted, one per schedule."""
    out = {}
    for schedule in SCHEDULES:
        folder = tmp_path_factory.mktemp(f"ref-{schedule}")
        ref = _run(str(folder / "ref.ckpt"), str(folder / "ref.pt"), *_schedule_args(schedule))
        assert ref.returncode == 0, ref.stderr
        out[schedule] = folder / "ref.pt"
    return out


# 5: mid-epoch, one step after a mid-epoch checkpoint; 12: first step of epoch 3
@pytest.mark.parametrize(("kill_at", "schedule"), [
    (5, "none"), (12, "none"), (5, "warmup_cosine"), (12, "one_cycle")])
def test_sigkill_then_resume_is_bit_exact(
    tmp_path: Path, reference_runs: dict[str, Path], kill_at: int, schedule: str
) -> None:
    extra = _schedule_args(schedule)
    killed = _run(str(tmp_path / "run.ckpt"), str(tmp_path / "run.pt"), "--kill-at", str(kill_at),
                  *extra)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "run.pt").exists()
    resumed = _run(str(tmp_path / "run.ckpt"), str(tmp_path / "run.pt"), "--resume", *extra)
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(reference_runs[schedule], weights_only=True)
    b = torch.load(tmp_path / "run.pt", weights_only=True)
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    assert a["history"] == b["history"]  # losses and the epoch-end random draws, bit for bit


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    hist = _tiny_trainer(tmp_path, checkpoint_path=tmp_path / "absent.ckpt").fit(resume=True)
    assert len(hist) == 2 and (tmp_path / "absent.ckpt").exists()


def _tiny_trainer(tmp_path: Path, loss_value: float | None = None, **kw) -> Trainer:
    model = nn.Linear(2, 1)
    x = torch.randn(8, 2)

    def loss_fn(batch):
        (xb,) = batch
        out = model(xb).pow(2).mean()
        if loss_value is not None:
            out = out * 0 + loss_value
        return {"loss": out, "rate": out.detach() * 2}

    kw.setdefault("epochs", 2)
    return Trainer({"m": model}, torch.optim.SGD(model.parameters(), lr=0.1), (x,),
                   loss_fn=loss_fn, batch_size=4, seed=0, device=torch.device("cpu"),
                   progress=False, desc="tiny", **kw)


def test_nan_loss_names_the_term_and_step(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteError, match=r"'loss' is nan at epoch 1, step 1"):
        _tiny_trainer(tmp_path, loss_value=math.nan).fit()


def test_history_has_train_means(tmp_path: Path) -> None:
    hist = _tiny_trainer(tmp_path).fit()
    assert [row["epoch"] for row in hist] == [1, 2]
    assert hist[0]["train_rate"] == pytest.approx(2 * hist[0]["train_loss"])


def test_corrupted_checkpoint_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.ckpt"
    _tiny_trainer(tmp_path, checkpoint_path=ckpt, fingerprint="a").fit()
    raw = bytearray(ckpt.read_bytes())
    raw[-10] ^= 0xFF
    ckpt.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        _tiny_trainer(tmp_path, checkpoint_path=ckpt, fingerprint="a").fit(resume=True)


def test_checkpoint_of_other_config_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.ckpt"
    _tiny_trainer(tmp_path, checkpoint_path=ckpt, fingerprint="a").fit()
    with pytest.raises(CheckpointError, match="different run"):
        _tiny_trainer(tmp_path, checkpoint_path=ckpt, fingerprint="b").fit(resume=True)


def test_bad_data_shapes() -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ShapeError, match="disagree"):
        Trainer({"m": model}, opt, (torch.zeros(4, 2), torch.zeros(5)), loss_fn=lambda b: {},
                batch_size=2, epochs=1, seed=0, device=torch.device("cpu"))
    with pytest.raises(ShapeError, match="exceeds"):
        Trainer({"m": model}, opt, (torch.zeros(4, 2),), loss_fn=lambda b: {},
                batch_size=8, epochs=1, seed=0, device=torch.device("cpu"))


def test_epoch_permutation_is_deterministic_and_differs_by_epoch() -> None:
    a = epoch_permutation(50, seed=1, epoch=1, device=torch.device("cpu"))
    assert torch.equal(a, epoch_permutation(50, seed=1, epoch=1, device=torch.device("cpu")))
    assert not torch.equal(a, epoch_permutation(50, seed=1, epoch=2, device=torch.device("cpu")))
    assert sorted(a.tolist()) == list(range(50))


def test_per_step_schedule_decays_and_is_in_the_history(tmp_path: Path) -> None:
    spec = Schedule("warmup_cosine", peak_lr=0.1, warmup_fraction=0.25, final_lr_fraction=1e-3)
    trainer = _tiny_trainer(tmp_path, schedule=spec, epochs=4)
    hist = trainer.fit()
    total = trainer.total_steps
    assert total == 8
    # epoch 1 starts at the warm-up's first rate, the last epoch ends at the floor
    assert hist[0]["lr_start"] == pytest.approx(0.1 * spec.initial_lr_fraction)
    assert hist[-1]["lr_end"] == pytest.approx(spec.lr_at(total - 1, total))
    assert hist[-1]["lr_end"] == pytest.approx(0.1 * 1e-3)
    assert max(r["lr_end"] for r in hist) <= 0.1 + 1e-12
    assert hist[-1]["lr_end"] < hist[1]["lr_start"]


def test_warmup_cosine_closed_form() -> None:
    spec = Schedule("warmup_cosine", peak_lr=2.0, warmup_fraction=0.1, final_lr_fraction=0.0,
                    initial_lr_fraction=0.5)
    total = 101
    assert spec.lr_at(0, total) == pytest.approx(1.0)
    assert spec.lr_at(10, total) == pytest.approx(2.0)  # warm-up over round(0.1 * 101) = 10 steps
    assert spec.lr_at(55, total) == pytest.approx(1.0)  # half-way down the cosine
    assert spec.lr_at(100, total) == pytest.approx(0.0, abs=1e-12)
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=123.0)
    sched = build_scheduler(spec, opt, total)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([spec.lr_at(t, total) for t in range(total)])


def test_one_cycle_starts_low_peaks_and_ends_near_zero() -> None:
    spec = Schedule("one_cycle", peak_lr=3e-3, warmup_fraction=0.3)
    model = nn.Linear(1, 1)
    opt = torch.optim.Adam(model.parameters())
    sched = build_scheduler(spec, opt, 100)
    seen = []
    for _ in range(100):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(3e-3 * spec.initial_lr_fraction)
    assert max(seen) == pytest.approx(3e-3, rel=1e-3)
    assert 25 <= seen.index(max(seen)) <= 32
    assert seen[-1] < 1e-6


@pytest.mark.parametrize("bad", [
    dict(kind="linear"), dict(peak_lr=0.0), dict(peak_lr=math.nan), dict(warmup_fraction=1.0),
    dict(final_lr_fraction=-0.1), dict(initial_lr_fraction=0.0),
])
def test_bad_schedule_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        Schedule(**bad)


def test_schedule_and_epoch_scheduler_are_exclusive(tmp_path: Path) -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="at most one"):
        Trainer({"m": model}, opt, (torch.zeros(4, 2),), loss_fn=lambda b: {}, batch_size=2,
                epochs=1, seed=0, device=torch.device("cpu"), schedule=Schedule(),
                scheduler=torch.optim.lr_scheduler.StepLR(opt, 1))
    with pytest.raises(ValueError, match="unknown optimizer"):
        Trainer({"m": model}, opt, (torch.zeros(4, 2),), loss_fn=lambda b: {}, batch_size=2,
                epochs=1, seed=0, device=torch.device("cpu"), schedule={"other": Schedule()})


@pytest.mark.parametrize("every", [1, 3])
def test_nan_is_caught_with_sparse_checks_and_names_its_step(tmp_path: Path, every: int) -> None:
    model = nn.Linear(2, 1)
    x = torch.randn(16, 2)
    calls = {"n": 0}

    def loss_fn(batch):
        calls["n"] += 1
        out = model(batch[0]).pow(2).mean()
        return {"loss": out * (math.nan if calls["n"] == 2 else 1.0)}

    trainer = Trainer({"m": model}, torch.optim.SGD(model.parameters(), lr=0.1), (x,),
                      loss_fn=loss_fn, batch_size=4, epochs=2, seed=0,
                      device=torch.device("cpu"), progress=False, finite_check_every=every)
    with pytest.raises(NonFiniteError, match=r"'loss' is nan at epoch 1, step 2 \(global step 2\)"):
        trainer.fit()
    assert calls["n"] == (2 if every == 1 else 3)


def test_sparse_checks_give_the_same_history(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a = _tiny_trainer(tmp_path).fit()
    torch.manual_seed(0)
    b = _tiny_trainer(tmp_path, finite_check_every=5).fit()
    assert a == b


@pytest.mark.parametrize(("min_seconds", "saves"), [(0.0, 2 + 2), (1e9, 2)])
def test_mid_epoch_saves_wait_for_the_minimum_interval(tmp_path: Path, min_seconds: float,
                                                       saves: int) -> None:
    # 2 epochs of 2 steps, a mid-epoch save after every step: 2 end-of-epoch saves always,
    # plus one mid-epoch save per epoch unless the minimum interval has not passed
    trainer = _tiny_trainer(tmp_path, checkpoint_path=tmp_path / "c.ckpt",
                            checkpoint_every_steps=1, checkpoint_min_seconds=min_seconds)
    count = {"n": 0}
    original = trainer.save

    def counting_save() -> None:
        count["n"] += 1
        original()

    trainer.save = counting_save  # type: ignore[method-assign]
    trainer.fit()
    assert count["n"] == saves
