r"""Generalized divisive normalization (GDN) and its approximate inverse (IGDN).

For a feature map ``x`` with channels ``i = 1..C`` (Ballé, Laparra & Simoncelli 2016/2017),

.. math::
    \mathrm{GDN}(x)_i = \frac{x_i}{\sqrt{\beta_i + \sum_j \gamma_{ij}\, x_j^2}}, \qquad
    \mathrm{IGDN}(x)_i = x_i \sqrt{\beta_i + \sum_j \gamma_{ij}\, x_j^2},

applied at every spatial position, with ``β_i > 0`` and ``γ_ij ≥ 0``. The NC-VAE's Enc-Blocks
use GDN and its Dec-Blocks IGDN (``nc_vae.md``, Figure 1).

**Parametrisation.** ``β`` and ``γ`` are stored as ``b = sqrt(β + ε²)`` and
``g = sqrt(γ + ε²)`` and recovered as ``max(b, b_min)² − ε²`` (likewise for γ), with
``ε = 2⁻¹⁸``; the lower bound keeps ``β ≥ β_min`` and ``γ ≥ 0`` and the square root evens out the
gradient scale near zero (the reparametrisation of Ballé et al.). The bound uses a
straight-through maximum so that a parameter stuck at the bound still receives gradient
pushing it back up.

**At initialisation** ``β = 1`` and ``γ = γ₀ I`` (``γ₀ = 0.1``), so each channel is normalised by
itself only: ``GDN(x) = x / sqrt(1 + γ₀ x²)``, a strictly increasing map of ℝ onto
``(−γ₀^{-1/2}, γ₀^{-1/2})`` whose exact inverse is ``u / sqrt(1 − γ₀ u²)``. IGDN is only the
first-order inverse: ``IGDN(GDN(x)) = x sqrt(1 + 2a) / (1 + a)`` with ``a = γ₀ x²``, i.e.
``x (1 − a²/2 + O(a³))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ibcore.errors import ShapeError
from ibcore.validation import check_int, check_weight

__all__ = ["GDN", "IGDN"]

_PEDESTAL = 2.0**-36  # ε² of the reparametrisation


class _LowerBound(torch.autograd.Function):
    """``max(x, bound)`` whose gradient also flows where ``x < bound`` if it points upwards."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        pass_through = (x >= ctx.bound) | (grad < 0)
        return grad * pass_through.to(grad.dtype), None


class GDN(nn.Module):
    """Generalized divisive normalization over the channels of ``[B, C, H, W]`` tensors.

    Args:
        channels: number of channels C.
        inverse: ``True`` gives IGDN (multiply instead of divide).
        beta_min: lower bound of every ``β_i`` (keeps the denominator away from zero).
        gamma_init: the diagonal ``γ₀`` of ``γ`` at initialisation (off-diagonal entries 0).
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        channels: int,
        *,
        inverse: bool = False,
        beta_min: float = 1e-6,
        gamma_init: float = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_int("channels", channels, low=1)
        self.inverse = bool(inverse)
        self.beta_min = check_weight("beta_min", beta_min, low=0.0, low_inclusive=False)
        gamma_init = check_weight("gamma_init", gamma_init, low=0.0)
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self.beta_param = nn.Parameter(torch.sqrt(torch.ones(channels, **factory) + _PEDESTAL))
        gamma = gamma_init * torch.eye(channels, **factory)
        self.gamma_param = nn.Parameter(torch.sqrt(gamma + _PEDESTAL))

    @property
    def beta(self) -> Tensor:
        """``β`` (shape ``[C]``), every entry ≥ ``beta_min``."""
        bound = (self.beta_min + _PEDESTAL) ** 0.5
        return _LowerBound.apply(self.beta_param, bound) ** 2 - _PEDESTAL

    @property
    def gamma(self) -> Tensor:
        """``γ`` (shape ``[C, C]``, row i = the weights of channel i's denominator), ≥ 0."""
        return _LowerBound.apply(self.gamma_param, _PEDESTAL**0.5) ** 2 - _PEDESTAL

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeError(
                f"{type(self).__name__} expects [B, {self.channels}, H, W] tensors, got {shape}"
            )
        c = self.channels
        norm = F.conv2d(x * x, self.gamma.view(c, c, 1, 1), self.beta)
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)

    def extra_repr(self) -> str:
        return f"{self.channels}, inverse={self.inverse}"


class IGDN(GDN):
    """Inverse GDN: ``x_i · sqrt(β_i + Σ_j γ_ij x_j²)`` (see :class:`GDN`)."""

    def __init__(self, channels: int, **kwargs) -> None:
        kwargs.pop("inverse", None)
        super().__init__(channels, inverse=True, **kwargs)
