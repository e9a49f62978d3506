r"""Code lengths of integer latents: the discretised Gaussian and a learned factorised density.

Rates are in **bits**. A latent ``y`` is an integer-valued tensor stored as floats (the result of
rounding during evaluation). During training the usual proxy is ``ỹ = y + u`` with
``u ~ U(−½, ½)``; every function here then returns the probability mass of the unit bin
``[ỹ − ½, ỹ + ½]``, which is exactly the density of the model convolved with the unit box, the
continuous relaxation used by Ballé et al. (2018) and ``nc_vae.md`` eq. 6.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ibcore.errors import InvalidParameterError, ShapeError
from ibcore.validation import check_finite, check_float, check_int, check_weight

__all__ = ["FactorizedDensity", "discretized_gaussian_probs", "gaussian_bits"]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def _as_float_tensor(name: str, x: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if not torch.is_floating_point(x):
            raise InvalidParameterError(f"{name} must be floating point, got dtype {x.dtype}")
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        x = torch.tensor(float(x), dtype=like.dtype, device=like.device)
    else:
        raise InvalidParameterError(f"{name} must be a tensor or a float, got {type(x).__name__}")
    return check_finite(name, x)


def _check_y(y: torch.Tensor) -> torch.Tensor:
    return check_float("y", y)  # integer latents are passed as floats


def _check_min_prob(min_prob: float) -> float:
    return check_weight(
        "min_prob", min_prob, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
    )


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) = ½ erfc(−x/√2), accurate in the lower tail.

    (``torch.special.ndtr`` loses the lower tail: in float32 it returns 2⁻²⁵ at x = −5.5 instead
    of 1.9e-8, and 0 at x = −10 even in float64.)
    """
    return 0.5 * torch.erfc(-x * _INV_SQRT2)


def discretized_gaussian_probs(
    y: torch.Tensor,
    mean: torch.Tensor | float,
    scale: torch.Tensor | float,
    min_prob: float = 1e-9,
) -> torch.Tensor:
    r"""Mass of the bin ``[y − ½, y + ½]`` under ``N(mean, scale²)``, clamped below at ``min_prob``.

    .. math::
        P(y) = \Phi\!\left(\frac{y + \frac12 - \mu}{\sigma}\right)
             - \Phi\!\left(\frac{y - \frac12 - \mu}{\sigma}\right)

    This is the exact code probability of a quantised Gaussian latent with bin width t = 1.
    ``nc_vae.md`` eq. 7, ``b(z) = −log t + ½ log(2πσ²) + z²/(2σ²)``, is its small-bin
    approximation ``P ≈ t · density`` (for a zero-mean prior); it is good when σ ≫ 1 and
    wrong for small σ, where ``P`` saturates at 1 but ``t · density`` does not.

    The difference is evaluated in the lower tail, ``P(y) = Φ((½ − |y − μ|)/σ) −
    Φ((−½ − |y − μ|)/σ)`` (symmetry of the Gaussian), which avoids the cancellation of two
    numbers close to 1 when ``y`` is far above the mean. ``y``, ``mean`` and ``scale``
    broadcast together. Values below ``min_prob`` are clamped (their gradient is then zero).

    Args:
        y: integer values stored as floats (or ``y + u`` with uniform noise during training).
        mean: μ, tensor or float.
        scale: σ > 0, tensor or float.
        min_prob: lower bound of the returned probabilities, in (0, 1).

    Returns:
        Probabilities of the broadcast shape of ``y``, ``mean`` and ``scale``.
    """
    _check_y(y)
    mean = _as_float_tensor("mean", mean, y)
    scale = _as_float_tensor("scale", scale, y)
    if bool((scale <= 0).any()):
        raise InvalidParameterError("scale must be > 0 everywhere; use softplus(.) + 1e-6 or exp")
    _check_min_prob(min_prob)
    try:
        torch.broadcast_shapes(y.shape, mean.shape, scale.shape)
    except RuntimeError as exc:
        raise ShapeError(
            f"y {tuple(y.shape)}, mean {tuple(mean.shape)} and scale {tuple(scale.shape)} do not "
            "broadcast together"
        ) from exc
    v = -(y - mean).abs()
    upper = _std_normal_cdf((v + 0.5) / scale)
    lower = _std_normal_cdf((v - 0.5) / scale)
    return (upper - lower).clamp_min(min_prob)


def gaussian_bits(
    y: torch.Tensor,
    mean: torch.Tensor | float,
    scale: torch.Tensor | float,
    min_prob: float = 1e-9,
) -> torch.Tensor:
    r"""Total code length ``−Σ log₂ P(y)`` in bits under :func:`discretized_gaussian_probs`.

    An ideal entropy coder (arithmetic / range / ANS) spends this many bits on the whole tensor,
    up to a constant overhead of a few bytes.

    Returns:
        0-dim tensor.
    """
    return -torch.log2(discretized_gaussian_probs(y, mean, scale, min_prob)).sum()


def _logistic_bin_mass(y: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mass of ``[y − ½, y + ½]`` under Logistic(loc, scale), evaluated without cancellation.

    ``σ(b) − σ(a)`` for ``a < b``; above the location both sigmoids are close to 1, so the
    equivalent ``σ(−a) − σ(−b)`` is used there instead.
    """
    a = (y - 0.5 - loc) / scale
    b = (y + 0.5 - loc) / scale
    above = (a + b) > 0
    return torch.where(
        above, torch.sigmoid(-a) - torch.sigmoid(-b), torch.sigmoid(b) - torch.sigmoid(a)
    )


class FactorizedDensity(nn.Module):
    r"""A learned, per-channel density for integer latents: a mixture of logistics.

    Channel ``c`` has the cumulative distribution function

    .. math::
        F_c(v) = \sum_{m=1}^{M} \pi_{c,m}\, \mathrm{sigmoid}\!\left(\frac{v - \mu_{c,m}}{s_{c,m}}\right),
        \qquad \pi_{c,\cdot} = \mathrm{softmax}(w_{c,\cdot}),\; s_{c,m} = e^{\rho_{c,m}},

    which is monotone by construction, and the integer ``y`` has probability
    ``P_c(y) = F_c(y + ½) − F_c(y − ½)``. We chose a logistic mixture over Ballé et al.'s (2018)
    non-parametric cumulative (a small monotone MLP per channel) because it has three
    interpretable parameters per component, an exact closed-form CDF, and it fits the unimodal
    or few-mode latent marginals of the book's models well with M = 3-5; its limitation is
    multimodality beyond M modes. "Factorised" means the channels are independent and every
    spatial position of a channel shares the same density.

    Layout: ``y`` has the channel in dimension 1, ``[B, C, ...]`` (``[N, C]`` for vector
    latents, ``[B, C, H, W]`` for feature maps).

    Args:
        channels: number of channels C.
        components: mixture components M per channel.
        init_scale: initial spread: the M locations start evenly spaced on
            ``[−init_scale/2, init_scale/2]`` with scale ``init_scale / (2M)``, equal weights.
            Initialisation is deterministic (no random numbers).
        min_prob: lower bound of the probabilities (keeps the rate finite).
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        channels: int,
        components: int = 3,
        *,
        init_scale: float = 10.0,
        min_prob: float = 1e-9,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_int("channels", channels, low=1)
        self.components = check_int("components", components, low=1)
        init_scale = check_weight("init_scale", init_scale, low=0.0, low_inclusive=False)
        self.min_prob = _check_min_prob(min_prob)
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        if components == 1:
            locs = torch.zeros(1, **factory)
        else:
            locs = torch.linspace(-init_scale / 2, init_scale / 2, components, **factory)
        self.logits = nn.Parameter(torch.zeros(channels, components, **factory))
        self.locs = nn.Parameter(locs.expand(channels, components).clone())
        log_s = math.log(init_scale / (2 * components))
        self.log_scales = nn.Parameter(torch.full((channels, components), log_s, **factory))

    def _check_input(self, y: torch.Tensor) -> torch.Tensor:
        _check_y(y)
        if y.dim() < 2 or y.shape[1] != self.channels:
            raise ShapeError(
                f"y must have shape [B, C={self.channels}, ...] (channels in dimension 1), got "
                f"{tuple(y.shape)}"
            )
        return y

    def _mass(self, y_last: torch.Tensor) -> torch.Tensor:
        """Bin masses for ``y_last`` with the channel in the last dimension: ``[..., C]``."""
        weights = torch.softmax(self.logits, dim=-1)
        comp = _logistic_bin_mass(y_last.unsqueeze(-1), self.locs, self.log_scales.exp())
        return (weights * comp).sum(dim=-1)

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """Probability of each element of ``y`` (``[B, C, ...]``), clamped at ``min_prob``."""
        self._check_input(y)
        y_last = y.movedim(1, -1).to(self.logits.dtype)
        return self._mass(y_last).movedim(-1, 1).clamp_min(self.min_prob)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`likelihood`."""
        return self.likelihood(y)

    def bits(self, y: torch.Tensor) -> torch.Tensor:
        """Total code length ``−Σ log₂ P(y)`` of the whole tensor, in bits (0-dim tensor)."""
        return -torch.log2(self.likelihood(y)).sum()

    def pmf_table(self, low: int, high: int, *, normalize: bool = True) -> torch.Tensor:
        """Integer pmf per channel for an entropy coder: shape ``[C, high − low + 1]``.

        Column ``k`` is the probability of the integer ``low + k`` (symbol ``y − low`` for a
        categorical coder such as ``constriction.stream.model.Categorical``). With
        ``normalize=True`` the mass outside ``[low, high]`` is redistributed proportionally so
        each row sums to 1; choose the range wide enough that this mass is negligible (it is
        ``1 − row sum`` with ``normalize=False``). Values are not clamped at ``min_prob``.
        """
        check_int("low", low, low=-(2**31))
        check_int("high", high, low=low + 1)
        ints = torch.arange(low, high + 1, dtype=self.logits.dtype, device=self.logits.device)
        table = self._mass(ints[:, None].expand(-1, self.channels)).T
        if normalize:
            table = table / table.sum(dim=-1, keepdim=True)
        return table.contiguous()
