"""Low-dimensional views of learned representations for the chapters' figures."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ibcore.errors import ShapeError
from ibcore.validation import check_float

__all__ = ["pca_2d"]


def pca_2d(y: Tensor) -> np.ndarray:
    """Coordinates of the rows of ``y`` on its first two principal axes (float32 ``[n, 2]``).

    Each axis's sign is fixed so that its largest-magnitude loading is positive.
    """
    check_float("y", y)
    if y.dim() != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise ShapeError(
            f"y must be [n >= 2, d >= 2] (one representation per row), got {tuple(y.shape)}"
        )
    y = y.double()
    centered = y - y.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    axes = vh[:2]
    idx = axes.abs().argmax(1)
    signs = torch.sign(axes[torch.arange(2), idx])
    signs[signs == 0] = 1.0
    return (centered @ (axes * signs[:, None]).T).float().numpy()
