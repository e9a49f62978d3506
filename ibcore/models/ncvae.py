r"""The NC-VAE image codec (``nc_vae.md``, Figure 1) with a decodable prior on the latent.

**Transforms.** The analysis transform ``g_a`` is four Enc-Blocks (3×3 convolution, stride 2,
then GDN; the last block has no GDN, so the latent is unbounded) and maps an RGB image
``x ∈ [0, 1]^{3×H×W}`` to ``y ∈ ℝ^{M×H/16×W/16}``. The synthesis transform ``g_s`` mirrors it
with transposed 3×3 convolutions and IGDN (no IGDN after the last one).

**Quantisation.** Training uses the proxy ``ỹ = y + u``, ``u ~ U(−½, ½)`` (eq. 6); coding uses
``ŷ = round(y)``.

**The RDO module: what it reads.** ``nc_vae.md`` (§3.2) gives the prior
``p(ŷ) = Π_i N(μ_i, σ_i²) * U(−½, ½)`` (evaluated at integers: eq. 7's discretised Gaussian) by
"two linear convolutional layers" for the mean and the variance, but does not say what those
layers read. They cannot read ``y`` itself: the decoder does not have ``y`` before it has
decoded it, so a prior computed from ``y`` would understate the rate and the file could not be
decoded. We choose a **small hyperprior whose side information is coded and counted**:

* an encoder-only hyper-analysis ``h_a`` (3×3 conv, ReLU, 3×3 conv with stride 2) computes
  ``h = h_a(y)`` at 1/32 of the image resolution, quantised to ``ĥ = round(h)`` and coded first
  under a learned per-channel density :class:`ibcore.estimators.rate.FactorizedDensity`;
* the **RDO module** is exactly two linear (transposed, stride 2) 3×3 convolutions reading the
  decoded ``ĥ``: ``μ = conv_μ(ĥ)``, ``σ = σ_min + softplus(conv_σ(ĥ))``.

The decoder decodes ``ĥ``, runs the RDO module, then decodes ``ŷ`` under
``N(μ, σ²)`` integrated over unit bins. The rate is every bit of both streams:

.. math::
    R = \underbrace{-\sum_i \log_2 P_{N(\mu_i,\sigma_i^2)}(\hat y_i)}_{\text{main}}
      \;+\; \underbrace{-\sum_j \log_2 P_{\mathrm{fact}}(\hat h_j)}_{\text{side}},

and the training loss is ``L = D + λ R`` (eq. 6 with the rate weight λ), ``D`` the mean squared
error on the 8-bit scale (``255² · MSE`` of ``[0, 1]`` images) and ``R`` in bits per pixel.

**Input noise** (eq. 2-3): the encoder sees ``x̃ = x + N(0, s²)`` during training (``s`` on the
``[0, 1]`` scale, ``noise_std``); the distortion is measured against the clean ``x``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ibcore.checkpoint import load_checkpoint, save_checkpoint
from ibcore.errors import CheckpointError, InvalidParameterError, ShapeError
from ibcore.estimators.rate import FactorizedDensity, gaussian_bits
from ibcore.models.gdn import GDN, IGDN
from ibcore.validation import check_finite, check_int, check_weight

__all__ = [
    "NCVAE",
    "AnalysisTransform",
    "HyperAnalysis",
    "NCVAEArch",
    "RDOModule",
    "SynthesisTransform",
    "file_sha256",
    "load_model_file",
    "pad_to_multiple",
    "save_model_file",
    "state_digest",
]

DOWNSAMPLING = 32
"""Total stride from the image to ``ĥ`` (16 to ``y``, 2 more to ``ĥ``): inputs are padded to it."""


@dataclass(frozen=True)
class NCVAEArch:
    """Architecture of an :class:`NCVAE`: the numbers that fix the shapes of its weights.

    Attributes:
        channels: C, the width of the Enc-/Dec-Blocks (``nc_vae.md`` Figure 1).
        latent: M, channels of the latent ``y``.
        hyper: channels of the side information ``h``.
        scale_min: σ_min, lower bound of the prior scales (keeps rates finite).
        hyper_components: mixture components of the factorised density of ``ĥ``.
    """

    channels: int = 64
    latent: int = 64
    hyper: int = 32
    scale_min: float = 0.11
    hyper_components: int = 3

    def __post_init__(self) -> None:
        for name in ("channels", "latent", "hyper", "hyper_components"):
            check_int(name, getattr(self, name), low=1)
        check_weight("scale_min", self.scale_min, low=0.0, low_inclusive=False)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _conv(cin: int, cout: int, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1)


def _deconv(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, kernel_size=3, stride=2, padding=1, output_padding=1)


class AnalysisTransform(nn.Sequential):
    """``g_a``: 4 Enc-Blocks, ``[B, 3, H, W] → [B, M, H/16, W/16]``."""

    def __init__(self, channels: int, latent: int) -> None:
        super().__init__(
            _conv(3, channels), GDN(channels),
            _conv(channels, channels), GDN(channels),
            _conv(channels, channels), GDN(channels),
            _conv(channels, latent),
        )


class SynthesisTransform(nn.Sequential):
    """``g_s``: 4 Dec-Blocks, ``[B, M, h, w] → [B, 3, 16h, 16w]``."""

    def __init__(self, channels: int, latent: int) -> None:
        super().__init__(
            _deconv(latent, channels), IGDN(channels),
            _deconv(channels, channels), IGDN(channels),
            _deconv(channels, channels), IGDN(channels),
            _deconv(channels, 3),
        )


class HyperAnalysis(nn.Sequential):
    """``h_a`` (encoder side only): ``[B, M, h, w] → [B, H, h/2, w/2]``.

    The last convolution starts with weights scaled by ``init_gain`` and a zero bias, so at
    initialisation ``h ≈ 0``: the side information is almost free and the prior is the
    per-channel Gaussian given by the RDO module's biases. Training then buys side information
    only where it pays for itself in the rate of ``ŷ``.
    """

    def __init__(self, latent: int, hyper: int, init_gain: float = 0.1) -> None:
        super().__init__(_conv(latent, hyper, stride=1), nn.ReLU(), _conv(hyper, hyper))
        with torch.no_grad():
            self[-1].weight.mul_(init_gain)
            self[-1].bias.zero_()


class RDOModule(nn.Module):
    """The two linear convolutions giving the prior's mean and scale from the decoded ``ĥ``.

    ``μ = conv_μ(ĥ)`` and ``σ = σ_min + softplus(conv_σ(ĥ))``, each a transposed 3×3
    convolution with stride 2, ``[B, H, h, w] → [B, M, 2h, 2w]``.
    """

    def __init__(self, hyper: int, latent: int, scale_min: float) -> None:
        super().__init__()
        self.scale_min = check_weight("scale_min", scale_min, low=0.0, low_inclusive=False)
        self.mean = _deconv(hyper, latent)
        self.scale = _deconv(hyper, latent)

    def forward(self, h_hat: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean(h_hat), self.scale_min + F.softplus(self.scale(h_hat))


def pad_to_multiple(x: Tensor, multiple: int = DOWNSAMPLING) -> Tensor:
    """Replicate-pad ``[B, C, H, W]`` at the bottom and right to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def _uniform_like(t: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(t.shape, generator=generator, dtype=t.dtype, device=t.device) - 0.5


class NCVAE(nn.Module):
    """Transforms, hyperprior and RDO module of the codec (see the module docstring)."""

    def __init__(
        self,
        arch: NCVAEArch | None = None,
        *,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch or NCVAEArch()
        a = self.arch
        self.g_a = AnalysisTransform(a.channels, a.latent)
        self.g_s = SynthesisTransform(a.channels, a.latent)
        self.h_a = HyperAnalysis(a.latent, a.hyper)
        self.rdo = RDOModule(a.hyper, a.latent, a.scale_min)
        self.side_density = FactorizedDensity(a.hyper, a.hyper_components, init_scale=10.0)
        # channels-last convolutions are 2-4x faster on the CPU (oneDNN) for these shapes
        self.to(device=device, memory_format=torch.channels_last)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def check_images(x: Tensor) -> Tensor:
        """``x`` must be finite floats of shape ``[B, 3, H, W]``, H and W ≥ 1."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeError(f"images must have shape [B, 3, H, W] (RGB in [0, 1]), got {shape}")
        if not torch.is_floating_point(x):
            raise InvalidParameterError(
                f"images must be floats in [0, 1], got dtype {x.dtype}; use to_unit_float"
            )
        return check_finite("images", x)

    # ------------------------------------------------------------------ parts
    def prior(self, h_hat: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of the Gaussian prior of ``ŷ`` from the decoded side info ``ĥ``."""
        return self.rdo(h_hat.contiguous(memory_format=torch.channels_last))

    def analyse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, h)`` of images ``x`` whose sizes are multiples of :data:`DOWNSAMPLING`."""
        y = self.g_a(x.contiguous(memory_format=torch.channels_last))
        return y, self.h_a(y)

    def synthesise(self, y_hat: Tensor) -> Tensor:
        """``x̂ = g_s(ŷ)`` (not clamped)."""
        return self.g_s(y_hat.contiguous(memory_format=torch.channels_last))

    # ------------------------------------------------------------------ training / estimate
    def forward(
        self,
        x: Tensor,
        *,
        noise_std: float = 0.0,
        quantize: str = "noise",
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Reconstruction and code lengths of ``x`` (``[B, 3, H, W]`` in ``[0, 1]``).

        ``quantize="noise"`` is the training proxy (uniform noise on ``y`` and ``h``, drawn from
        ``generator``); ``"round"`` is what the codec does. ``noise_std`` > 0 adds input noise
        ``N(0, noise_std²)`` (eq. 2) to the encoder's input only. Images are padded to a multiple
        of 32 and the reconstruction is cropped back.

        Returns a dict with ``x_hat`` (cropped, not clamped), ``bits_main``, ``bits_side``
        (0-dim tensors summed over the batch), ``bits`` (their sum) and ``pixels`` (B·H·W).
        """
        self.check_images(x)
        noise_std = check_weight("noise_std", noise_std)
        if quantize not in ("noise", "round"):
            raise InvalidParameterError(f"quantize must be 'noise' or 'round', got {quantize!r}")
        b, _, height, width = x.shape
        x_in = x
        if noise_std > 0:
            x_in = x + noise_std * torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                               device=x.device)
        y, h = self.analyse(pad_to_multiple(x_in))
        if quantize == "noise":
            y_q = y + _uniform_like(y, generator)
            h_q = h + _uniform_like(h, generator)
        else:
            y_q, h_q = torch.round(y), torch.round(h)
        mean, scale = self.prior(h_q)
        bits_main = gaussian_bits(y_q, mean, scale)
        bits_side = self.side_density.bits(h_q)
        x_hat = self.synthesise(y_q)[..., :height, :width]
        return {
            "x_hat": x_hat,
            "bits_main": bits_main,
            "bits_side": bits_side,
            "bits": bits_main + bits_side,
            "pixels": torch.tensor(float(b * height * width), device=x.device),
        }

    def loss(
        self,
        x: Tensor,
        rate_weight: float,
        *,
        noise_std: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        r"""``L = D + λ R`` (eq. 6) with ``D = 255² · MSE`` and ``R`` in bits per pixel.

        Returns ``loss``, ``distortion`` (MSE on the 8-bit scale), ``bpp``, ``bpp_main`` and
        ``bpp_side`` (all 0-dim tensors).
        """
        lam = check_weight("rate_weight", rate_weight)
        out = self.forward(x, noise_std=noise_std, quantize="noise", generator=generator)
        distortion = (255.0**2) * torch.mean((out["x_hat"] - x) ** 2)
        bpp = out["bits"] / out["pixels"]
        return {
            "loss": distortion + lam * bpp,
            "distortion": distortion,
            "bpp": bpp,
            "bpp_main": out["bits_main"] / out["pixels"],
            "bpp_side": out["bits_side"] / out["pixels"],
        }

    # ------------------------------------------------------------------ sizes
    def decoder_parameters(self) -> int:
        """Number of parameters the decoder needs: ``g_s``, the RDO module, the side density."""
        return sum(p.numel() for m in (self.g_s, self.rdo, self.side_density)
                   for p in m.parameters())

    def encoder_parameters(self) -> int:
        """Number of parameters of ``g_a``, ``h_a`` plus everything the decoder needs."""
        return sum(p.numel() for p in self.parameters())


def state_digest(model: nn.Module) -> str:
    """SHA-256 (hex) of a model's weights: names, dtypes, shapes and bytes in sorted key order.

    Independent of how the weights were serialised, so it identifies a trained model inside a
    bitstream's header.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(name.encode("utf-8") + b"\0" + str(t.dtype).encode() + b"\0")
        h.update(",".join(map(str, t.shape)).encode() + b"\0")
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()



MODEL_FINGERPRINT = "ibcore-ncvae-model-v1"
"""Fingerprint of a model file written by :func:`save_model_file` (a verified checkpoint)."""


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_model_file(model: NCVAE, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> str:
    """Write a trained model (architecture, weights, ``meta``) to ``path``; return its SHA-256.

    The file is an :mod:`ibcore.checkpoint` file (magic, checksum, fingerprint
    :data:`MODEL_FINGERPRINT`), so :func:`load_model_file` rejects a corrupted or foreign file.
    """
    state = {
        "arch": model.arch.as_dict(),
        "weights": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
        "model_id": state_digest(model),
        "meta": dict(meta or {}),
    }
    save_checkpoint(path, state, fingerprint=MODEL_FINGERPRINT)
    return file_sha256(path)


def load_model_file(
    path: str | os.PathLike,
    *,
    sha256: str | None = None,
    device: torch.device | str = "cpu",
) -> tuple[NCVAE, dict[str, Any]]:
    """Load a model written by :func:`save_model_file`; return ``(model in eval mode, meta)``.

    With ``sha256`` the file's bytes must have that SHA-256 (the checksum a manifest lists);
    the weights must also reproduce the ``model_id`` stored with them. Any mismatch raises
    :class:`CheckpointError`.
    """
    path = Path(path)
    if sha256 is not None:
        if not path.is_file():
            raise CheckpointError(f"no model file at {path}")
        actual = file_sha256(path)
        if actual != sha256:
            raise CheckpointError(
                f"{path} has SHA-256 {actual[:16]}…, not the listed {sha256[:16]}…: the file is "
                "corrupted or was replaced; restore it (git checkout) or re-export the models"
            )
    state = load_checkpoint(path, fingerprint=MODEL_FINGERPRINT)
    try:
        model = NCVAE(NCVAEArch(**state["arch"]))
        model.load_state_dict(state["weights"])
    except (KeyError, TypeError, RuntimeError, InvalidParameterError) as exc:
        raise CheckpointError(f"{path} does not hold NC-VAE weights ({exc})") from exc
    if state_digest(model) != state.get("model_id"):
        raise CheckpointError(f"{path}: the weights do not match their stored model id")
    model.to(device)
    model.eval()
    return model, dict(state.get("meta", {}))
