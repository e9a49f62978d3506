r"""Basic, VIB and GMVIB encoder–decoder classifiers of the GMVIB chapter (``gmvib.md`` §2.2).

All three share one trunk and one decoder (an MLP with ``decoder_hidden`` ReLU layers, then a
linear map to one logit per class); they differ only in the head between them. The trunk is
optionally a stack of ``conv_channels`` convolutions (3×3, strides ``conv_strides``, group norm,
ReLU) on the square image, then an MLP (``hidden`` ReLU layers) on what they give: flattened
(``pool="flatten"``) or max-pooled over all positions (``pool="max"``, one value per channel,
so the code does not depend on where in the canvas an item sits); with ``conv_channels = ()``
it is the MLP alone on the flattened image. The source gives no
architecture; the chapter says which one each profile uses. The heads:

* ``basic``: a deterministic latent ``z = W h`` of ``latent_dim`` units (no bottleneck);
* ``vib``: one Gaussian ``p(z|x) = N(μ(x), diag σ²(x))`` (Alemi et al.), sampled by the
  location–scale reparameterisation ``z = μ + σ ⊙ ε``, ``ε ~ N(0, I)``;
* ``gmvib``: ``K`` Gaussians ``p(z_k|x) = N(μ_k(x), diag σ_k²(x))`` and mixing weights
  ``e ~ Dir(α(x))`` with ``α = softplus(·) + α_min``; the latent is ``z = Σ_k e_k z_k``
  (the source's combination below eq. 4). ``e`` is drawn with
  :meth:`torch.distributions.Dirichlet.rsample`, which differentiates through the Gamma
  sampler by *implicit* reparameterisation (the Dirichlet has no location–scale form).

Monte-Carlo noise is drawn from torch's global RNG (``Dirichlet.rsample`` takes no generator;
the trainer checkpoints that RNG, so resumed runs repeat the same noise). Parameters are
initialised from the ``generator`` given to the constructor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ibcore.errors import InvalidParameterError, ShapeError, UnknownNameError
from ibcore.models.init import init_from_generator
from ibcore.validation import check_int, check_weight

__all__ = ["KINDS", "BottleneckClassifier", "BottleneckOutput", "mix_components"]

KINDS = ("basic", "vib", "gmvib")


@dataclass
class BottleneckOutput:
    """What a forward pass returns (``S`` = Monte-Carlo samples; ``S = 1`` for ``basic``).

    ``logits`` ``[S, B, C]``; ``z`` ``[S, B, D]``; ``mu``/``logvar`` ``[B, K, D]`` (``K = 1`` for
    VIB, ``None`` for Basic); ``alpha`` ``[B, K]`` and ``e`` ``[S, B, K]`` for GMVIB only.
    """

    logits: Tensor
    z: Tensor
    mu: Tensor | None = None
    logvar: Tensor | None = None
    alpha: Tensor | None = None
    e: Tensor | None = None


def mix_components(z_k: Tensor, e: Tensor) -> Tensor:
    """``z = Σ_k e_k z_k``: ``z_k`` ``[S, B, K, D]`` and ``e`` ``[S, B, K]`` → ``[S, B, D]``."""
    if z_k.dim() != 4 or e.shape != z_k.shape[:3]:
        raise ShapeError(
            f"z_k must be [S, B, K, D] and e [S, B, K]; got {tuple(z_k.shape)} and "
            f"{tuple(e.shape)}"
        )
    return torch.einsum("sbk,sbkd->sbd", e, z_k)


def _linear(n_in: int, n_out: int, generator: torch.Generator | None) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    bound = 1.0 / n_in**0.5  # PyTorch's default uniform init, drawn from ``generator``
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def _mlp(sizes: Sequence[int], generator: torch.Generator | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [_linear(a, b, generator), nn.ReLU()]
    return nn.Sequential(*layers)


POOLS = ("flatten", "max")


def _conv_stack(channels: Sequence[int], strides: Sequence[int],
                generator: torch.Generator | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out, stride in zip([1, *channels], channels, strides, strict=False):
        # group norm, not batch norm: it has no running statistics, so a model evaluated after
        # a few epochs computes exactly what it was trained to (batch norm's lagging running
        # statistics made the test accuracy of short runs jump between epochs)
        layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
                   nn.GroupNorm(math.gcd(8, c_out), c_out), nn.ReLU()]
    stack = nn.Sequential(*layers)
    init_from_generator(generator, stack)
    return stack


class BottleneckClassifier(nn.Module):
    """One of the three models: ``kind`` ∈ :data:`KINDS` (see the module docstring).

    Args:
        kind: ``"basic"``, ``"vib"`` or ``"gmvib"``.
        in_dim: input size (``64 · 64 = 4096`` for the Multi-MNIST canvases).
        classes: number of logits (10).
        latent_dim: ``D`` (256 in the source).
        components: ``K`` (GMVIB only; 10 in the source, one per class).
        hidden: widths of the trunk's MLP layers.
        conv_channels: output channels of the convolutions before the MLP (``()``: none); the
            input is then a square single-channel image of ``in_dim`` pixels whose side is
            divisible by the product of the strides.
        conv_strides: one stride per convolution (default: 2 for each).
        pool: ``"flatten"`` (every position of the last feature map feeds the MLP) or ``"max"``
            (global max-pooling: one value per channel, position-invariant).
        decoder_hidden: decoder widths before the output layer (``()`` = a linear decoder).
        alpha_min: added to ``softplus`` so every Dirichlet concentration is positive.
        generator: draws the initial parameters.
    """

    def __init__(
        self,
        kind: str,
        in_dim: int,
        classes: int = 10,
        *,
        latent_dim: int = 256,
        components: int = 10,
        hidden: Sequence[int] = (1024, 1024),
        conv_channels: Sequence[int] = (),
        conv_strides: Sequence[int] | None = None,
        pool: str = "flatten",
        decoder_hidden: Sequence[int] = (),
        alpha_min: float = 1e-3,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise UnknownNameError(f"unknown model kind {kind!r}; choose one of {KINDS}")
        self.kind = kind
        self.in_dim = check_int("in_dim", in_dim)
        self.classes = check_int("classes", classes)
        self.latent_dim = check_int("latent_dim", latent_dim)
        self.components = check_int("components (K)", components) if kind == "gmvib" else 1
        self.alpha_min = check_weight("alpha_min", alpha_min, low_inclusive=False)
        hidden = [check_int("hidden width", h) for h in hidden]
        decoder_hidden = [check_int("decoder width", h) for h in decoder_hidden]
        convs = [check_int("conv channels", c) for c in conv_channels]
        strides = [2] * len(convs) if conv_strides is None else [
            check_int("conv stride", s) for s in conv_strides]
        if len(strides) != len(convs):
            raise InvalidParameterError(
                f"conv_strides needs one stride per convolution ({len(convs)}), got {len(strides)}"
            )
        if pool not in POOLS:
            raise UnknownNameError(f"unknown pool {pool!r}; choose one of {POOLS}")
        self.side = math.isqrt(in_dim)
        shrink = math.prod(strides)
        if convs and (self.side**2 != in_dim or self.side % shrink):
            raise InvalidParameterError(
                f"conv_channels needs a square image whose side is divisible by "
                f"{shrink}; in_dim = {in_dim} is not"
            )
        self.features = _conv_stack(convs, strides, generator)
        if convs and pool == "max":
            self.features.append(nn.AdaptiveMaxPool2d(1))
            flat = convs[-1]
        else:
            flat = convs[-1] * (self.side // shrink) ** 2 if convs else in_dim
        self.trunk = _mlp([flat, *hidden], generator)
        width = hidden[-1] if hidden else flat
        k, d = self.components, latent_dim
        head_out = {"basic": d, "vib": 2 * d, "gmvib": 2 * k * d + k}[kind]
        self.head = _linear(width, head_out, generator)
        self.decoder = nn.Sequential(
            _mlp([latent_dim, *decoder_hidden], generator),
            _linear(decoder_hidden[-1] if decoder_hidden else latent_dim, classes, generator),
        )

    def encode(self, x: Tensor) -> dict[str, Tensor]:
        """The encoder's distribution parameters (``mu``, ``logvar``, ``alpha``) or ``z``."""
        if x.dim() < 2 or x[0].numel() != self.in_dim:
            raise ShapeError(
                f"expected a batch of inputs with {self.in_dim} values each, got shape "
                f"{tuple(x.shape)}; images must be 64×64 (use ibcore.data.multimnist)"
            )
        if len(self.features):
            x = self.features(x.reshape(x.shape[0], 1, self.side, self.side))
        h = self.head(self.trunk(x.reshape(x.shape[0], -1)))
        b, k, d = x.shape[0], self.components, self.latent_dim
        if self.kind == "basic":
            return {"z": h}
        mu = h[:, : k * d].reshape(b, k, d)
        logvar = h[:, k * d : 2 * k * d].reshape(b, k, d)
        out = {"mu": mu, "logvar": logvar}
        if self.kind == "gmvib":
            out["alpha"] = F.softplus(h[:, 2 * k * d :]) + self.alpha_min
        return out

    def forward(self, x: Tensor, samples: int = 1) -> BottleneckOutput:
        """Encode, draw ``samples`` latents (reparameterised), decode each to logits."""
        samples = check_int("samples", samples)
        enc = self.encode(x)
        if self.kind == "basic":
            z = enc["z"].unsqueeze(0)
            return BottleneckOutput(logits=self.decoder(z), z=z)
        mu, logvar = enc["mu"], enc["logvar"]
        eps = torch.randn((samples, *mu.shape), dtype=mu.dtype, device=mu.device)
        z_k = mu + (0.5 * logvar).exp() * eps  # [S, B, K, D]
        if self.kind == "vib":
            z = z_k[:, :, 0]
            return BottleneckOutput(logits=self.decoder(z), z=z, mu=mu, logvar=logvar)
        alpha = enc["alpha"]
        e = torch.distributions.Dirichlet(alpha).rsample((samples,))  # [S, B, K]
        z = mix_components(z_k, e)
        return BottleneckOutput(logits=self.decoder(z), z=z, mu=mu, logvar=logvar, alpha=alpha,
                                e=e)
