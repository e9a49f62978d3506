"""Initialising a model from an explicit ``torch.Generator``, so that it is a function of its seed."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["init_from_generator"]


def init_from_generator(generator: torch.Generator | None, module: nn.Module) -> None:
    """Re-initialise every conv/linear weight from ``generator`` (PyTorch's default scheme).

    PyTorch's layer constructors draw from the global RNG; drawing again from an explicit
    generator makes a model a pure function of its seed.
    """
    if generator is None:
        return
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
                # PyTorch's default (kaiming_uniform with a=√5): U(±1/√fan_in), with fan_in
                # = weight.size(1) × kernel area (for a transposed conv that is its out-channels)
                fan_in = m.weight.shape[1] * m.weight[0, 0].numel()
                bound = 1.0 / fan_in**0.5
                m.weight.copy_((torch.rand(m.weight.shape, generator=generator) * 2 - 1) * bound)
                if m.bias is not None:
                    m.bias.copy_((torch.rand(m.bias.shape, generator=generator) * 2 - 1) * bound)
