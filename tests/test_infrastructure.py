"""Validation helpers, device choice, profiles, the CLI and the dataset loader."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ibcore.cli import main
from ibcore.data import load_tensors
from ibcore.device import resolve_device, seed_everything
from ibcore.errors import (
    DataNotFoundError,
    InvalidParameterError,
    NonFiniteError,
    ShapeError,
    UnknownNameError,
)
from ibcore.profiles import select
from ibcore.validation import check_finite, check_int, check_shape, check_weight

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize("bad", [-1e-3, math.nan, math.inf, -math.inf, "x", None])
def test_check_weight_rejects(bad) -> None:
    with pytest.raises(InvalidParameterError, match="beta"):
        check_weight("beta", bad)


def test_check_weight_ranges() -> None:
    assert check_weight("beta", 0) == 0.0
    assert check_weight("b", 0.5, high=1, high_inclusive=False) == 0.5
    with pytest.raises(InvalidParameterError, match="< 1"):
        check_weight("b", 1.0, high=1, high_inclusive=False)
    with pytest.raises(InvalidParameterError, match="> 0"):
        check_weight("b", 0.0, low_inclusive=False)


def test_check_int_shape_finite() -> None:
    assert check_int("k", 3) == 3
    for bad in (0, 2.0, True):
        with pytest.raises(InvalidParameterError):
            check_int("k", bad)
    check_shape("z", torch.zeros(3, 2), (None, 2))
    with pytest.raises(ShapeError, match=r"\(\*, 2\), got \(3, 4\)"):
        check_shape("z", torch.zeros(3, 4), (None, 2))
    with pytest.raises(ShapeError):
        check_shape("z", torch.zeros(3), (None, 2))
    with pytest.raises(NonFiniteError, match="1 NaN"):
        check_finite("z", torch.tensor([0.0, math.nan]))


def test_devices_and_seeds() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(UnknownNameError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UnknownNameError, match="no CUDA"):
            resolve_device("cuda")
    g1, g2 = seed_everything(5), seed_everything(5)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_profile_select() -> None:
    assert select({"smoke": 1, "cpu": 2}, "cpu") == 2
    with pytest.raises(UnknownNameError, match="unknown profile 'gpu'"):
        select({"smoke": 1}, "gpu")


def test_cli_rejects_unknown_chapter_and_profile(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["run", "nochapter"])
    with pytest.raises(SystemExit):
        main(["run", "foundations", "--profile", "huge"])


def test_cli_experiment_selects_a_subset(capsys, monkeypatch, tmp_path: Path) -> None:
    import types

    import ibcore.cli as cli

    calls: list[tuple[str, ...]] = []

    def fake_run(profile, *, experiments, **kw):
        calls.append(tuple(experiments))
        return {e: tmp_path / f"{e}.json" for e in experiments}

    fake = types.SimpleNamespace(EXPERIMENTS=("a", "b", "c"), PROFILES={}, run=fake_run)
    monkeypatch.setattr(cli, "get_runner", lambda name: fake)
    assert main(["run", "gmvib", "--experiment", "c", "--experiment", "a",
                 "--experiment", "c"]) == 0
    assert main(["run", "gmvib"]) == 0
    assert calls == [("c", "a"), ("a", "b", "c")]
    assert "c: " in capsys.readouterr().out


def test_cli_unknown_experiment_is_a_clear_error(capsys) -> None:
    assert main(["run", "foundations", "--experiment", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_DATA / "MNIST").is_dir(), reason="shared MNIST copy not present")
def test_mnist_loads_as_tensors() -> None:
    x, y = load_tensors("mnist", "test", SHARED_DATA)
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (10_000,) and torch.equal(y.bincount(), torch.tensor(
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]))  # the official test counts


def test_missing_dataset_says_where_it_goes(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="IBCORE_DATA"):
        load_tensors("fashion_mnist", "train", tmp_path, download=False)
    with pytest.raises(UnknownNameError):
        load_tensors("imagenet", "train", tmp_path)


def write_cifar10_standin(root: Path, n_per_batch: int = 20, seed: int = 0) -> np.ndarray:
    """A tiny CIFAR-10 in the real on-disk layout (python pickles, 3072-byte rows)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    first = None
    for name in names:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        first = data if first is None else first
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": labels}, fh)  # str keys, as in the real files
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"]}
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump(meta, fh)
    return first


def test_cifar10_standin_through_torchvision_reader(tmp_path: Path) -> None:
    first = write_cifar10_standin(tmp_path)
    x, y = load_tensors("cifar10", "train", tmp_path, verify_checksums=False)
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (100,)
    # channel-major rows of 1024 R, then G, then B values, as CIFAR-10 stores them
    assert torch.equal(x[0].reshape(-1), torch.as_tensor(first[0]))
    xt, _ = load_tensors("cifar10", "test", tmp_path, verify_checksums=False)
    assert xt.shape == (20, 3, 32, 32)
    with pytest.raises(DataNotFoundError):  # the real loader checks MD5s: a stand-in fails it
        load_tensors("cifar10", "train", tmp_path, download=False)
