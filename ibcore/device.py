"""Explicit device selection, seeding, RNG isolation and the opt-in GPU speed switches.

Nothing here changes global state behind the caller's back: :func:`seed_everything` is the one
function that seeds the global RNGs, and it says so; :func:`isolated_rng` seeds only inside its
block and restores the CPU and CUDA streams afterwards; :func:`cudnn_benchmark` sets cuDNN's
flag for its block only.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
from collections.abc import Iterator

import numpy as np
import torch

from ibcore.errors import UnknownNameError

DEVICE_CHOICES = ("auto", "cpu", "cuda")
AMP_CHOICES: tuple[str, ...] = ("bf16",)
"""Values of the ``amp`` field of a config (``None`` = full precision, the default). float16 is
not offered: its narrow range needs a gradient scaler, without which small gradients silently
underflow to zero; bfloat16 has float32's range."""
_AMP_DTYPES = {"bf16": torch.bfloat16}


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


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@contextlib.contextmanager
def isolated_rng(device: torch.device | str, seed: int | None = None) -> Iterator[None]:
    """Run a block without disturbing torch's global RNG streams of the CPU and of ``device``.

    On entry the state of the CPU generator (and, for a CUDA ``device``, of that GPU's default
    generator) is saved; with ``seed`` both are seeded with it, so the block's draws are a pure
    function of ``seed``; on exit both states are restored, so a training run's Monte-Carlo
    noise continues as if the block had never run. Unlike ``torch.manual_seed`` this seeds
    nothing outside the block and no other GPU. On the CPU the block draws exactly what it
    drew after ``torch.manual_seed(seed)``.
    """
    device = torch.device(device)
    cpu_state = torch.get_rng_state()
    cuda_index: int | None = None
    cuda_state: torch.Tensor | None = None
    if device.type == "cuda":
        cuda_index = _cuda_index(device)
        cuda_state = torch.cuda.get_rng_state(cuda_index)
    try:
        if seed is not None:
            torch.default_generator.manual_seed(seed)
            if cuda_index is not None:
                torch.cuda.default_generators[cuda_index].manual_seed(seed)
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_index is not None:
            assert cuda_state is not None
            torch.cuda.set_rng_state(cuda_state, cuda_index)


def check_amp(amp: str | None) -> str | None:
    """Return ``amp`` if it is ``None`` or one of :data:`AMP_CHOICES`; raise otherwise."""
    if amp is not None and amp not in AMP_CHOICES:
        raise UnknownNameError(
            f"unknown mixed-precision mode {amp!r}; choose one of {', '.join(AMP_CHOICES)} "
            "or None (full precision)"
        )
    return amp


def autocast(device: torch.device | str, amp: str | None) -> contextlib.AbstractContextManager:
    """Mixed precision for a block on a CUDA ``device``; a no-op for ``amp=None`` or the CPU.

    ``amp="bf16"`` runs matrix products and convolutions in bfloat16 (float32's range, 8 bits
    of mantissa, a relative rounding error of about 2⁻⁸ per product). Reductions, softmax,
    log-sum-exp and the losses stay in float32 under torch's autocast rules, and callers cast
    what leaves the block back to float32. It is off on the CPU so that the CPU profiles keep
    their exact float32 numbers.
    """
    amp = check_amp(amp)
    device = torch.device(device)
    if amp is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=_AMP_DTYPES[amp])


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """Run a block with ``torch.backends.cudnn.benchmark = enabled``; restore the old value after.

    With it on, cuDNN times several convolution algorithms for each new input shape and keeps
    the fastest: faster GPU convolutions for fixed-size batches, but the chosen algorithm (and
    so the last bits of every result) can differ between runs and machines. It therefore
    breaks bit-exact reproducibility and exact resume on a GPU; profiles keep it off by
    default, and it changes nothing on the CPU.
    """
    old = bool(torch.backends.cudnn.benchmark)
    torch.backends.cudnn.benchmark = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old
