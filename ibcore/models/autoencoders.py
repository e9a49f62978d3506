r"""Small autoencoder building blocks: encoders, decoders, a quantizer and discriminators.

Everything the BIB-AE family of ``variational_glasses.md`` needs, in one shared family of
networks so that the models of that chapter differ only in their Lagrangian:

* :class:`GaussianEncoder`: the stochastic encoder :math:`q_\phi(z|x) = \mathcal N(\mu(x),
  \mathrm{diag}\,\sigma^2(x))` of the VAE family (source §4.1), reparametrised as
  :math:`z = \mu(x) + \sigma(x)\odot\epsilon`.
* :class:`DeterministicEncoder`: :math:`z = f_\phi(x)` (plain AE, AAE, compression AE).
* :class:`BernoulliDecoder` and :class:`GaussianDecoder`: the likelihood :math:`p_\theta(x|z)`
  of term C (eq. 28). The Bernoulli decoder gives
  :math:`\log p_\theta(x|z) = \sum_i x_i \log \pi_i + (1 - x_i) \log(1 - \pi_i)`,
  :math:`\pi = \mathrm{sigmoid}(\text{logits})`, in nats per image.
* :func:`quantize`: the scalar quantizer :math:`\hat z = \mathrm{round}(f_\phi(x))` of the
  Shannon rate-distortion AE (eq. 35), or its training proxy, additive uniform noise (Ballé et
  al.). The probability model of the codes, whose code length is the rate, is
  :class:`ibcore.estimators.rate.FactorizedDensity`.
* :class:`Discriminator`: an MLP logit, used on the latent code (adversarial term B) or on the
  image (adversarial term D).

Networks are ``"mlp"`` (flattened images) or ``"conv"`` (two stride-2 4×4 convolutions; the
image side must be divisible by 4). All weights are drawn from an explicit
:class:`torch.Generator` (:func:`init_parameters_`), so a model is a pure function of its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ibcore.errors import InvalidParameterError, ShapeError, UnknownNameError
from ibcore.estimators.kl import kl_diag_gaussian_std_normal
from ibcore.validation import check_int, check_weight

__all__ = [
    "ARCHS",
    "BernoulliDecoder",
    "DeterministicEncoder",
    "Discriminator",
    "GaussianCode",
    "GaussianDecoder",
    "GaussianEncoder",
    "bernoulli_log_prob",
    "check_image_shape",
    "flatten_images",
    "init_parameters_",
    "quantize",
]

ARCHS: tuple[str, ...] = ("mlp", "conv")

LOGVAR_RANGE: tuple[float, float] = (-12.0, 6.0)
"""Encoder log-variances are clamped to this range (σ between 0.0025 and 20)."""

ImageShape = tuple[int, int, int]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def init_parameters_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Draw every Linear/Conv2d/ConvTranspose2d weight and bias from ``U(±1/√fan_in)``.

    ``fan_in = weight.shape[1] · (kernel area)``, PyTorch's own convention, so the result has
    the distribution of PyTorch's default initialisation but is a function of ``generator``.
    Returns ``module`` (modified in place).
    """
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
                w = layer.weight
                fan_in = w.shape[1] * math.prod(w.shape[2:])
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(w, -bound, bound, generator=generator)
                if layer.bias is not None:
                    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return module


def check_image_shape(image_shape: Sequence[int]) -> ImageShape:
    """Return ``image_shape`` as ``(C, H, W)`` of positive integers; raise otherwise."""
    try:
        c, h, w = (int(v) for v in image_shape)
    except (TypeError, ValueError) as exc:
        raise ShapeError(
            f"image_shape must be (channels, height, width), got {image_shape!r}"
        ) from exc
    for name, v in (("channels", c), ("height", h), ("width", w)):
        check_int(f"image_shape {name}", v, low=1)
    return c, h, w


def flatten_images(x: Tensor, image_shape: ImageShape) -> Tensor:
    """``[N, C, H, W]`` (or already flat ``[N, C·H·W]``) images → ``[N, C·H·W]``.

    Any other shape raises :class:`ShapeError` naming the expected image size.
    """
    if not isinstance(x, Tensor):
        raise ShapeError(f"images must be a torch.Tensor, got {type(x).__name__}")
    n_pixels = math.prod(image_shape)
    if x.dim() == 4 and tuple(x.shape[1:]) == tuple(image_shape):
        return x.reshape(x.shape[0], n_pixels)
    if x.dim() == 2 and x.shape[1] == n_pixels:
        return x
    c, h, w = image_shape
    raise ShapeError(
        f"expected images of shape [N, {c}, {h}, {w}] (or flattened [N, {n_pixels}]), got "
        f"{tuple(x.shape)}; resize or pad them (ibcore.data.pad_to_size) to the model's "
        "image_shape, or build the model for this image size"
    )


def _check_arch(arch: str, image_shape: ImageShape) -> str:
    if arch not in ARCHS:
        raise UnknownNameError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if arch == "conv" and (image_shape[1] % 4 or image_shape[2] % 4):
        raise ShapeError(
            f"the conv architecture halves the image twice, so height and width must be "
            f"divisible by 4; got {image_shape[1]}x{image_shape[2]} (pad with "
            "ibcore.data.pad_to_size or use arch='mlp')"
        )
    return arch


def _check_sizes(name: str, sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(sizes)
    if not sizes:
        raise InvalidParameterError(f"{name} must list at least one layer width")
    return tuple(check_int(f"{name}[{i}]", s, low=1) for i, s in enumerate(sizes))


def _check_channels(channels: Sequence[int]) -> tuple[int, int]:
    sizes = _check_sizes("channels", channels)
    if len(sizes) != 2:
        raise InvalidParameterError(
            f"channels must give the widths of the two convolutions, got {tuple(channels)}"
        )
    return sizes[0], sizes[1]


def _mlp(sizes: Sequence[int], negative_slope: float = 0.0) -> nn.Sequential:
    """Linear layers of the given widths with (leaky) ReLUs between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(negative_slope) if negative_slope else nn.ReLU())
    return nn.Sequential(*layers)


class _ImageToVector(nn.Module):
    """Images → vectors of size ``dim_out``: an MLP on pixels, or two convolutions then an MLP."""

    def __init__(
        self,
        image_shape: ImageShape,
        hidden: tuple[int, ...],
        dim_out: int,
        arch: str,
        channels: tuple[int, int],
    ) -> None:
        super().__init__()
        self.image_shape = image_shape
        self.arch = arch
        c, h, w = image_shape
        if arch == "mlp":
            self.features: nn.Module = nn.Identity()
            self.head = _mlp([c * h * w, *hidden, dim_out])
        else:
            c1, c2 = channels
            self.features = nn.Sequential(
                nn.Conv2d(c, c1, 4, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(),
                nn.Flatten(),
            )
            self.head = _mlp([c2 * (h // 4) * (w // 4), hidden[-1], dim_out])

    def forward(self, x: Tensor) -> Tensor:
        flat = flatten_images(x, self.image_shape)
        if self.arch == "mlp":
            return self.head(flat)
        return self.head(self.features(flat.reshape(-1, *self.image_shape)))


class _VectorToImage(nn.Module):
    """Vectors of size ``dim_in`` → ``[N, C, H, W]`` maps (mirror of :class:`_ImageToVector`)."""

    def __init__(
        self,
        dim_in: int,
        image_shape: ImageShape,
        hidden: tuple[int, ...],
        arch: str,
        channels: tuple[int, int],
    ) -> None:
        super().__init__()
        self.image_shape = image_shape
        c, h, w = image_shape
        if arch == "mlp":
            self.net = nn.Sequential(
                _mlp([dim_in, *reversed(hidden), c * h * w]), nn.Unflatten(1, image_shape)
            )
        else:
            c1, c2 = channels
            self.net = nn.Sequential(
                nn.Linear(dim_in, hidden[-1]), nn.ReLU(),
                nn.Linear(hidden[-1], c2 * (h // 4) * (w // 4)), nn.ReLU(),
                nn.Unflatten(1, (c2, h // 4, w // 4)),
                nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.ReLU(),
                nn.ConvTranspose2d(c1, c, 4, stride=2, padding=1),
            )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def _check_codes(z: Tensor, latent_dim: int) -> Tensor:
    if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != latent_dim:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ShapeError(f"latent codes must have shape [N, {latent_dim}], got {shape}")
    return z


# ---------------------------------------------------------------------------------------------
# encoders
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GaussianCode:
    r"""The output of a :class:`GaussianEncoder`: ``q(z|x) = N(mu, diag exp(logvar))``."""

    mu: Tensor
    logvar: Tensor

    @property
    def std(self) -> Tensor:
        return (0.5 * self.logvar).exp()

    def rsample(self, generator: torch.Generator | None = None) -> Tensor:
        r"""A reparametrised sample :math:`\mu + \sigma \odot \epsilon`, differentiable in μ, σ.

        ``generator=None`` draws ε from the global torch RNG (the one :class:`ibcore.training.
        Trainer` checkpoints); pass a generator for a reproducible evaluation draw.
        """
        eps = torch.randn(self.mu.shape, generator=generator, dtype=self.mu.dtype,
                          device="cpu" if generator is not None else self.mu.device)
        return self.mu + self.std * eps.to(self.mu.device)

    def kl_standard_normal(self) -> Tensor:
        r"""Term A per sample, :math:`\mathrm{KL}(q(z|x)\,\|\,\mathcal N(0, I))`, shape ``[N]`` (nats)."""
        return kl_diag_gaussian_std_normal(self.mu, self.logvar)


class GaussianEncoder(nn.Module):
    """``x → GaussianCode(mu, logvar)`` with ``latent_dim`` coordinates."""

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 16,
        hidden: Sequence[int] = (512, 256),
        *,
        arch: str = "mlp",
        channels: tuple[int, int] = (32, 64),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        self.latent_dim = check_int("latent_dim", latent_dim, low=1)
        arch = _check_arch(arch, self.image_shape)
        hidden = _check_sizes("hidden", hidden)
        self.body = _ImageToVector(self.image_shape, hidden, 2 * self.latent_dim, arch,
                                   _check_channels(channels))
        init_parameters_(self, generator if generator is not None else torch.Generator())

    def forward(self, x: Tensor) -> GaussianCode:
        mu, raw = self.body(x).chunk(2, dim=1)
        return GaussianCode(mu, raw.clamp(*LOGVAR_RANGE))


class DeterministicEncoder(nn.Module):
    """``x → z = f(x)`` with ``latent_dim`` coordinates."""

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 16,
        hidden: Sequence[int] = (512, 256),
        *,
        arch: str = "mlp",
        channels: tuple[int, int] = (32, 64),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        self.latent_dim = check_int("latent_dim", latent_dim, low=1)
        arch = _check_arch(arch, self.image_shape)
        hidden = _check_sizes("hidden", hidden)
        self.body = _ImageToVector(self.image_shape, hidden, self.latent_dim, arch,
                                   _check_channels(channels))
        init_parameters_(self, generator if generator is not None else torch.Generator())

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


# ---------------------------------------------------------------------------------------------
# decoders
# ---------------------------------------------------------------------------------------------


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    r"""``log p(x|z)`` of independent Bernoulli pixels, summed per image: shape ``[N]`` (nats).

    .. math:: \sum_i x_i \log \mathrm{sigmoid}(\ell_i) + (1 - x_i)\log \mathrm{sigmoid}(-\ell_i)

    ``x`` holds intensities in ``[0, 1]`` (grey levels are allowed: then this is the negative
    binary cross-entropy, whose maximum over the logits is ``−Σ_i H_b(x_i)``, not 0).
    """
    if not isinstance(x, Tensor) or not isinstance(logits, Tensor):
        raise ShapeError("x and logits must be torch.Tensors")
    if x.shape != logits.shape:
        raise ShapeError(
            f"x and logits must have the same shape, got {tuple(x.shape)} and {tuple(logits.shape)}"
        )
    if x.dim() < 2:
        raise ShapeError(f"x must have a batch dimension and pixels, got shape {tuple(x.shape)}")
    if bool((x < 0).any()) or bool((x > 1).any()):
        raise InvalidParameterError(
            "Bernoulli targets must lie in [0, 1]; scale uint8 images with "
            "ibcore.data.to_unit_float"
        )
    nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return -nll.reshape(x.shape[0], -1).sum(dim=1)


class BernoulliDecoder(nn.Module):
    """``z → logits [N, C, H, W]`` of independent Bernoulli pixels."""

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 16,
        hidden: Sequence[int] = (512, 256),
        *,
        arch: str = "mlp",
        channels: tuple[int, int] = (32, 64),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        self.latent_dim = check_int("latent_dim", latent_dim, low=1)
        arch = _check_arch(arch, self.image_shape)
        hidden = _check_sizes("hidden", hidden)
        self.body = _VectorToImage(self.latent_dim, self.image_shape, hidden, arch,
                                   _check_channels(channels))
        init_parameters_(self, generator if generator is not None else torch.Generator())

    def forward(self, z: Tensor) -> Tensor:
        return self.body(_check_codes(z, self.latent_dim))

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """Term C per image, ``log p(x|z)`` in nats, shape ``[N]``."""
        logits = self(z)
        return bernoulli_log_prob(x.reshape(logits.shape), logits)

    def mean(self, z: Tensor) -> Tensor:
        """The decoder's mean image ``sigmoid(logits)`` (what we show as a sample of ``p_θ(x)``)."""
        return torch.sigmoid(self(z))


class GaussianDecoder(nn.Module):
    r"""``z → mean [N, C, H, W]`` with one shared scale σ: ``p(x|z) = N(g(z), σ² I)``.

    ``log p(x|z) = −‖x − g(z)‖² / (2σ²) − n log σ − (n/2) log 2π``. With ``learn_scale`` the
    log σ is a trained parameter (initialised at ``log_scale``), else it is fixed.
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 16,
        hidden: Sequence[int] = (512, 256),
        *,
        arch: str = "mlp",
        channels: tuple[int, int] = (32, 64),
        log_scale: float = 0.0,
        learn_scale: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        self.latent_dim = check_int("latent_dim", latent_dim, low=1)
        arch = _check_arch(arch, self.image_shape)
        hidden = _check_sizes("hidden", hidden)
        self.body = _VectorToImage(self.latent_dim, self.image_shape, hidden, arch,
                                   _check_channels(channels))
        init_parameters_(self, generator if generator is not None else torch.Generator())
        value = torch.tensor(check_weight("log_scale", log_scale, low=-math.inf))
        if learn_scale:
            self.log_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_scale", value)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(_check_codes(z, self.latent_dim))

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """Term C per image, ``log N(x; g(z), σ² I)`` in nats, shape ``[N]``."""
        mean = self(z)
        x = x.reshape(mean.shape)
        n = math.prod(mean.shape[1:])
        sq = (x - mean).pow(2).reshape(x.shape[0], -1).sum(dim=1)
        return (-0.5 * sq * torch.exp(-2.0 * self.log_scale) - n * self.log_scale
                - 0.5 * n * math.log(2.0 * math.pi))

    def mean(self, z: Tensor) -> Tensor:
        return self(z)


# ---------------------------------------------------------------------------------------------
# quantized latent
# ---------------------------------------------------------------------------------------------


def quantize(z: Tensor, *, noisy: bool, generator: torch.Generator | None = None) -> Tensor:
    r"""The scalar quantizer ``round(z)``, or its training proxy ``z + u``, ``u ~ U(−½, ½)``.

    The additive-noise proxy (Ballé et al. 2018) keeps gradients; the density of ``z + u`` is
    the probability mass of the quantization cell around it, so a bin-mass model of the codes
    (:class:`ibcore.estimators.rate.FactorizedDensity`) gives the training rate on noisy codes
    and the true code length on rounded ones.
    ``generator=None`` draws u from the global torch RNG.
    """
    if not noisy:
        return torch.round(z)
    u = torch.rand(z.shape, generator=generator, dtype=z.dtype,
                   device="cpu" if generator is not None else z.device)
    return z + (u.to(z.device) - 0.5)


# ---------------------------------------------------------------------------------------------
# discriminators
# ---------------------------------------------------------------------------------------------


class Discriminator(nn.Module):
    """An MLP logit ``T(v)`` on vectors of size ``dim_in`` (latent codes, or flattened images).

    LeakyReLU(0.2) hidden layers; the output has shape ``[N]``. Trained as a logistic
    classifier its logit estimates a log density ratio, which is how terms B and D are
    estimated adversarially (source, remark after eq. 18).
    """

    def __init__(
        self,
        dim_in: int,
        hidden: Sequence[int] = (256,),
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.dim_in = check_int("dim_in", dim_in, low=1)
        hidden = _check_sizes("hidden", hidden)
        self.net = _mlp([self.dim_in, *hidden, 1], negative_slope=0.2)
        init_parameters_(self, generator if generator is not None else torch.Generator())

    def forward(self, v: Tensor) -> Tensor:
        if not isinstance(v, Tensor) or v.dim() < 2 or math.prod(v.shape[1:]) != self.dim_in:
            shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ShapeError(
                f"the discriminator takes [N, ...] inputs with {self.dim_in} values per item, "
                f"got {shape}"
            )
        return self.net(v.reshape(v.shape[0], -1)).squeeze(1)
