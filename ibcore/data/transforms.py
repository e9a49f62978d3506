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


def random_shift_flip(images: Tensor, pad: int, *, flip: bool = True,
                      generator: torch.Generator | None = None) -> Tensor:
    """The standard small-image augmentation: zero-pad ``[N, C, H, W]`` images by ``pad`` pixels,
    cut a random ``H × W`` window from each (a shift of up to ``pad`` pixels in each direction)
    and, with ``flip``, mirror each left–right with probability ½.

    Shifts and flips are drawn per image from ``generator`` (CPU) or the global generator, so a
    training loop that checkpoints the global RNG resumes with the same augmentations.
    """
    if images.dim() != 4:
        raise ShapeError(f"expected [N, C, H, W] images, got shape {tuple(images.shape)}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ShapeError(f"pad must be an integer >= 0, got {pad!r}")
    n, _, h, w = images.shape
    out = images
    if pad > 0:
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
        rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]  # [N, H, 1]
        cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]  # [N, 1, W]
        batch = torch.arange(n, device=images.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # [N, C, H, W]
    if flip:
        mirrored = torch.rand(n, generator=generator).to(images.device) < 0.5
        out = torch.where(mirrored[:, None, None, None], out.flip(-1), out)
    return out.contiguous()
