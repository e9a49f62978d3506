"""Tensor-level preprocessing of whole datasets (no per-item PIL path)."""

from __future__ import annotations

import torch
from torch import Tensor

from ibcore.errors import ShapeError


def to_unit_float(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``uint8`` images in ``[0, 255]`` → floats in ``[0, 1]``."""
    if images.dtype != torch.uint8:
        raise ShapeError(f"expected uint8 images, got dtype {images.dtype}")
    return images.to(dtype) / 255.0


def pad_to_size(images: Tensor, size: int, value: float = 0.0) -> Tensor:
    """Zero-pad ``[N, C, H, W]`` images symmetrically to ``size × size`` (e.g. 28 → 32)."""
    if images.dim() != 4:
        raise ShapeError(f"expected [N, C, H, W] images, got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise ShapeError(f"images of size {h}x{w} are larger than the target {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    pad = (left, size - w - left, top, size - h - top)
    return torch.nn.functional.pad(images, pad, value=value)


def subset(images: Tensor, labels: Tensor, n: int | None, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A random subset of ``n`` items (all of them when ``n`` is ``None`` or too large)."""
    if n is None or n >= images.shape[0]:
        return images, labels
    idx = torch.randperm(images.shape[0], generator=generator)[:n]
    return images[idx], labels[idx]
