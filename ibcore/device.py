"""Explicit device selection and seeding.

Nothing here changes global state behind the caller's back: :func:`seed_everything` is the one
function that seeds the global RNGs, and it says so.
"""

from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

from ibcore.errors import UnknownNameError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a :class:`torch.device`.

    ``"auto"`` picks CUDA when a GPU is visible and the CPU otherwise. Asking for ``"cuda"`` on a
    machine without one is an error rather than a silent fall-back to the CPU.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    name = str(spec).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UnknownNameError(
                f"device {spec!r} was requested but no CUDA GPU is visible; use --device cpu or auto"
            )
        return torch.device(name)
    raise UnknownNameError(f"unknown device {spec!r}; choose one of {', '.join(DEVICE_CHOICES)}")


def device_description(device: torch.device) -> str:
    """A human-readable name for provenance, e.g. ``"cpu (2 cores, x86_64)"`` or the GPU's name."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda: {torch.cuda.get_device_name(index)}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"cpu ({cores} cores, {platform.machine()})"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global RNGs with ``seed``; return a fresh generator.

    The returned :class:`torch.Generator` (seeded with ``seed``) is what ``ibcore`` code passes
    around explicitly; the global seeding only covers third-party code that draws from globals.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
