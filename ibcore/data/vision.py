"""torchvision's real datasets, loaded once into memory tensors.

The files are found (or, on a machine with internet access, downloaded) by torchvision's own
classes with ``download=True``; we then take their decoded arrays directly instead of going
through the per-item PIL path, which is far too slow on a 2-core machine.

The data folder is, in order: the ``root`` argument, ``$IBCORE_DATA``, ``./data``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor

from ibcore.errors import DataNotFoundError, UnknownNameError


@dataclass(frozen=True)
class DatasetInfo:
    """What a chapter needs to know about a dataset."""

    torchvision_class: str
    folder: str
    channels: int
    size: int
    classes: int


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("MNIST", "MNIST", 1, 28, 10),
    "fashion_mnist": DatasetInfo("FashionMNIST", "FashionMNIST", 1, 28, 10),
    "cifar10": DatasetInfo("CIFAR10", "cifar-10-batches-py", 3, 32, 10),
}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder that holds the datasets: ``root``, else ``$IBCORE_DATA``, else ``./data``."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("IBCORE_DATA", "data"))


class _CIFAR10NoChecksum(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR-10 reader with its MD5 check turned off (for test stand-ins only)."""

    def _check_integrity(self) -> bool:  # torchvision's private hook
        return True

    def _load_meta(self) -> None:  # the same read as torchvision's, minus its MD5 check
        import pickle

        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as fh:
            meta = pickle.load(fh, encoding="latin1")
        self.classes = meta[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


def load_tensors(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    *,
    download: bool = True,
    verify_checksums: bool = True,
) -> tuple[Tensor, Tensor]:
    """Return ``(images, labels)``: ``uint8`` images of shape ``[N, C, H, W]`` and ``int64`` labels.

    ``name`` is one of :data:`DATASETS`; ``split`` is ``"train"`` or ``"test"``. A dataset that is
    neither on disk nor downloadable raises :class:`DataNotFoundError` saying where the files go.
    ``verify_checksums=False`` skips torchvision's MD5 check of CIFAR-10's files; it exists so that
    tests can read a small stand-in written in CIFAR-10's on-disk format.
    """
    if name not in DATASETS:
        raise UnknownNameError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise UnknownNameError(f"split must be 'train' or 'test', got {split!r}")
    info = DATASETS[name]
    folder = data_root(root)
    cls = getattr(torchvision.datasets, info.torchvision_class)
    if name == "cifar10" and not verify_checksums:
        cls = _CIFAR10NoChecksum
        download = False
    try:
        ds = cls(str(folder), train=(split == "train"), download=download)
    except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError/URLError/OSError
        raise DataNotFoundError(
            f"{info.torchvision_class} ({split}) is not under {folder.resolve()}/{info.folder} and "
            f"could not be downloaded ({type(exc).__name__}: {exc}). On a machine with internet "
            "access torchvision downloads it there automatically; offline, copy the dataset files "
            "into that folder in torchvision's layout, or point IBCORE_DATA (or root=) at a folder "
            "that has them."
        ) from exc
    data = ds.data
    images = torch.as_tensor(np.asarray(data)) if not isinstance(data, Tensor) else data
    if images.dim() == 3:  # [N, H, W] grey images
        images = images.unsqueeze(1)
    elif images.dim() == 4 and images.shape[-1] in (1, 3):  # [N, H, W, C] from CIFAR
        images = images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return images.contiguous(), labels
