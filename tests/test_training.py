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
from ibcore.training import Trainer, epoch_permutation

WORKER = Path(__file__).with_name("resume_worker.py")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run that was never interrupted."""
    folder = tmp_path_factory.mktemp("ref")
    ref = _run(str(folder / "ref.ckpt"), str(folder / "ref.pt"))
    assert ref.returncode == 0, ref.stderr
    return folder / "ref.pt"


# 5: mid-epoch, one step after a mid-epoch checkpoint; 12: first step of epoch 3
@pytest.mark.parametrize("kill_at", [5, 12])
def test_sigkill_then_resume_is_bit_exact(
    tmp_path: Path, reference_run: Path, kill_at: int
) -> None:
    killed = _run(str(tmp_path / "run.ckpt"), str(tmp_path / "run.pt"), "--kill-at", str(kill_at))
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "run.pt").exists()
    resumed = _run(str(tmp_path / "run.ckpt"), str(tmp_path / "run.pt"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(reference_run, weights_only=True)
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

    return Trainer({"m": model}, torch.optim.SGD(model.parameters(), lr=0.1), (x,),
                   loss_fn=loss_fn, batch_size=4, epochs=2, seed=0, device=torch.device("cpu"),
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
