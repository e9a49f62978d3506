r"""Runner of the *variational glasses* chapter: one model zoo, every model measured on A, B, C, D.

``variational_glasses.md`` has no experiment. This runner makes its claims measurable: it trains
every special case of the BIB-AE Lagrangian (eq. 26-36) with one shared family of networks
(:mod:`ibcore.models.autoencoders`), each with the objective :mod:`ibcore.objectives.bibae`
assembles for it, and then measures **all four terms for every model with the same
estimators**, whatever the model optimised:

* **A** :math:`= \mathbb E_x \mathrm{KL}(q(z|x)\|\mathcal N(0,I))` in closed form for Gaussian
  encoders. A deterministic encoder has A = ∞; the chapter's convention measures it (for A, B
  and C alike) as the Gaussian encoder :math:`\mathcal N(f(x), \sigma_0^2 I)` (σ₀ =
  ``det_noise_std``) and stores :math:`\mathbb E\|f(x)\|^2` so any other σ₀ can be read off.
  For the quantized compression AE, A is its rate :math:`\mathbb E[-\log P(\hat z)]` under its
  own learned prior (the KL of a point mass on an integer code to a discrete prior).
* **B** :math:`= \mathrm{KL}(q(z)\|p(z))` by the unbiased MMD² (IMQ kernel, fixed bandwidth)
  and by the density-ratio KL estimator between test codes and prior samples.
* **C** :math:`= \mathbb E_x\mathbb E_{q(z|x)}\log p(x|z)` of the Bernoulli decoder on the
  test set, nats per image (one posterior sample per image).
* **D** :math:`= \mathrm{KL}(p_D(x)\|p_\theta(x))` by the density-ratio KL estimator between
  test images and decoder means at prior samples, in a fixed feature space: the top
  ``pca_dim`` principal components of the training images (a fixed linear map, the same for
  every model; by the data-processing inequality the KL of the features is ≤ the KL of the
  images).

Models (``kind``): ``ae`` (−C), ``beta_vae`` (A − βC; β = 1 is the VAE), ``aae`` (B − βC),
``infovae`` (A − B − βC, the source's signs), ``gan`` (D), ``vae_gan`` (A − βC + βD),
``shannon_ae`` (quantized latent: rate − βC) and ``bib_ae`` (A − B − βC + βD). During training
the KL terms without a closed form are replaced by stand-ins (:func:`training_forward`): B by
the mean logit of a latent discriminator (a KL estimate in nats, the unit of A) where it enters
with −1, by ``aae_lambda_mmd``·MMD² in the AAE; D by ``lambda_d`` times the non-saturating
adversarial loss of an image discriminator. The stand-ins are not the measured terms, which is
why every term is estimated afresh after training.

Novelty detection (source §4.3): every model scores the test set of its training data (in)
against the test set of the other dataset (out) by its per-image C (reconstruction
log-likelihood at the posterior mean), its per-image A (Gaussian encoders) and, for models
with an image discriminator, by its logit (a D-style score); AUROC and ROC curves per score.

Artefacts: one PNG per experiment beside the result file (named in it with its SHA-256):
8 fixed test images, then per model a row of their reconstructions and a row of samples.

Checkpoints: ``<results_root>/../runs/glasses/<experiment>/<profile>-seed<N>/``; each model
has its training checkpoint ``<model>.pt`` and, once measured, ``<model>.done`` (verified,
fingerprinted) so ``--resume`` continues a model exactly and skips finished ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ibcore.checkpoint import load_checkpoint, save_checkpoint
from ibcore.data import load_tensors, subset, to_unit_float
from ibcore.device import isolated_rng
from ibcore.errors import CheckpointError, InvalidParameterError, UnknownNameError
from ibcore.estimators.divergences import density_ratio_kl, mmd2_unbiased
from ibcore.estimators.rate import FactorizedDensity
from ibcore.metrics import auroc, roc_curve_on_grid
from ibcore.models.autoencoders import (
    ARCHS,
    BernoulliDecoder,
    DeterministicEncoder,
    Discriminator,
    GaussianCode,
    GaussianEncoder,
    bernoulli_log_prob,
    quantize,
)
from ibcore.objectives.bibae import lagrangian
from ibcore.results import read_artifact
from ibcore.runners.context import RunContext, prepare_run
from ibcore.tasks import Task, run_experiments
from ibcore.training import Trainer
from ibcore.validation import check_int, check_weight

CHAPTER = "glasses"
EXPERIMENTS = ("mnist", "fashion_mnist")
KINDS = ("ae", "beta_vae", "aae", "infovae", "gan", "vae_gan", "shannon_ae", "bib_ae")
"""Model kinds the runner trains (keys of :data:`ibcore.objectives.bibae.MODELS`, with
``beta_vae`` at β = 1 being the VAE)."""

GAUSSIAN_KINDS = ("beta_vae", "infovae", "vae_gan", "bib_ae")
DETERMINISTIC_KINDS = ("ae", "aae")
B_KINDS = ("aae", "infovae", "bib_ae")
D_KINDS = ("gan", "vae_gan", "bib_ae")
OTHER_DATASET = {"mnist": "fashion_mnist", "fashion_mnist": "mnist"}
N_FIXED_IMAGES = 8

__all__ = [
    "CHAPTER",
    "EXPERIMENTS",
    "KINDS",
    "PROFILES",
    "GlassesConfig",
    "ZooEntry",
    "build_model",
    "build_optimizers",
    "check_bars",
    "code_length_nats",
    "load_images_artifact",
    "model_name",
    "run",
    "sample_codes",
    "training_forward",
    "training_terms",
    "zoo",
]


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlassesConfig:
    """Settings of both experiments (one profile = one instance)."""

    # networks (shared by every model)
    arch: str = "mlp"
    hidden: tuple[int, ...] = (512, 256)
    channels: tuple[int, int] = (32, 64)
    latent_dim: int = 16
    disc_hidden: tuple[int, ...] = (256,)
    # training
    n_train: int | None = None
    """Training images (a random subset; ``None``: all of them)."""
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    adv_lr: float = 2e-4
    checkpoint_every_steps: int = 100
    # the zoo
    betas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    compression_betas: tuple[float, ...] = (0.5, 1.0, 2.0)
    aae_lambda_mmd: float = 1000.0
    lambda_d: float = 1.0
    r1_gamma: float = 10.0
    z_disc_hidden: tuple[int, ...] = (64, 64)
    prior_components: int = 3
    fashion_models: tuple[str, ...] | None = None
    """Model names trained on Fashion-MNIST (``None``: the whole zoo)."""
    # measurement
    det_noise_std: float = 0.1
    mmd_bandwidth: float = 1.0
    n_eval: int = 10000
    n_divergence: int = 2000
    n_trajectory: int = 1000
    n_novelty: int = 2000
    dr_steps: int = 500
    dr_hidden: int = 64
    pca_dim: int = 32
    pca_fit: int = 10000
    roc_points: int = 101

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise UnknownNameError(f"unknown arch {self.arch!r}; choose one of {ARCHS}")
        for name in ("latent_dim", "prior_components", "epochs", "batch_size", "checkpoint_every_steps", "n_eval",
                     "n_divergence", "n_trajectory", "n_novelty", "dr_steps", "dr_hidden",
                     "pca_dim", "pca_fit", "roc_points"):
            check_int(name, getattr(self, name), low=1)
        if self.n_train is not None:
            check_int("n_train", self.n_train, low=2)
        if self.n_divergence < 8:
            raise InvalidParameterError("n_divergence must be ≥ 8 (the estimators split it)")
        for name in ("lr", "adv_lr", "det_noise_std", "mmd_bandwidth"):
            check_weight(name, getattr(self, name), low=0.0, low_inclusive=False)
        for name in ("aae_lambda_mmd", "lambda_d", "r1_gamma"):
            check_weight(name, getattr(self, name))
        if not self.betas or not self.compression_betas:
            raise InvalidParameterError("give at least one β for the β-VAE and the compression AE")
        for beta in (*self.betas, *self.compression_betas):
            check_weight("beta", beta, low=0.0, low_inclusive=False)


_CPU = GlassesConfig(
    fashion_models=("ae", "vae", "beta_vae_0.25", "beta_vae_4", "aae", "vae_gan",
                    "shannon_ae_1", "bib_ae"),
)

PROFILES: dict[str, GlassesConfig] = {
    "smoke": dataclasses.replace(
        _CPU,
        hidden=(64, 32),
        disc_hidden=(32,),
        z_disc_hidden=(16,),
        n_train=256,
        epochs=1,
        batch_size=64,
        checkpoint_every_steps=2,
        betas=(1.0, 2.0),
        compression_betas=(1.0,),
        fashion_models=("vae", "gan"),
        n_eval=256,
        n_divergence=128,
        n_trajectory=64,
        n_novelty=128,
        dr_steps=10,
        dr_hidden=16,
        pca_dim=8,
        pca_fit=256,
        roc_points=21,
    ),
    "cpu": _CPU,
    "paper": dataclasses.replace(
        _CPU,
        arch="conv",
        hidden=(1024,),
        channels=(64, 128),
        disc_hidden=(512, 256),
        n_train=None,
        epochs=30,
        betas=(0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
        compression_betas=(0.25, 0.5, 1.0, 2.0, 4.0),
        fashion_models=None,
        n_divergence=5000,
        n_novelty=10000,
        dr_steps=2000,
        dr_hidden=128,
        pca_fit=60000,
        roc_points=201,
    ),
}


# ---------------------------------------------------------------------------------------------
# the zoo
# ---------------------------------------------------------------------------------------------


def model_name(kind: str, beta: float = 1.0) -> str:
    """``"ae"``, ``"vae"`` (β-VAE at β = 1), ``"beta_vae_0.25"``, ``"shannon_ae_2"`` …"""
    if kind not in KINDS:
        raise UnknownNameError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "beta_vae":
        return "vae" if beta == 1.0 else f"beta_vae_{beta:g}"
    if kind == "shannon_ae":
        return f"shannon_ae_{beta:g}"
    return kind


@dataclass(frozen=True)
class ZooEntry:
    """One model to train: its kind (Lagrangian) and β (the weight of the likelihood C)."""

    kind: str
    beta: float = 1.0

    @property
    def name(self) -> str:
        return model_name(self.kind, self.beta)

    @property
    def objective(self) -> str:
        """The key of its Lagrangian in :data:`ibcore.objectives.bibae.MODELS`."""
        if self.kind == "beta_vae" and self.beta == 1.0:
            return "vae"
        return self.kind


def zoo(config: GlassesConfig, dataset: str) -> list[ZooEntry]:
    """The models trained on ``dataset`` at ``config`` (Fashion-MNIST: ``fashion_models``)."""
    entries = [ZooEntry("ae")]
    entries += [ZooEntry("beta_vae", float(b)) for b in sorted(config.betas)]
    entries += [ZooEntry("aae"), ZooEntry("infovae"), ZooEntry("gan"), ZooEntry("vae_gan")]
    entries += [ZooEntry("shannon_ae", float(b)) for b in sorted(config.compression_betas)]
    entries += [ZooEntry("bib_ae")]
    if dataset == "fashion_mnist" and config.fashion_models is not None:
        names = {e.name for e in entries}
        unknown = sorted(set(config.fashion_models) - names)
        if unknown:
            raise UnknownNameError(
                f"fashion_models names {', '.join(unknown)}, which are not in the zoo "
                f"({', '.join(sorted(names))})"
            )
        entries = [e for e in entries if e.name in config.fashion_models]
    return entries


@dataclass
class Model:
    """The networks of one zoo entry (``None`` where the kind has no such part)."""

    entry: ZooEntry
    encoder: GaussianEncoder | DeterministicEncoder | None
    decoder: BernoulliDecoder
    prior: FactorizedDensity | None
    x_disc: Discriminator | None
    z_disc: Discriminator | None

    def modules(self) -> dict[str, nn.Module]:
        parts = {"encoder": self.encoder, "decoder": self.decoder, "prior": self.prior,
                 "x_disc": self.x_disc, "z_disc": self.z_disc}
        return {k: v for k, v in parts.items() if v is not None}

    def generator_parameters(self) -> list[nn.Parameter]:
        """Everything but the discriminators: what the Lagrangian is minimised over."""
        return [p for k, m in self.modules().items() if not k.endswith("_disc")
                for p in m.parameters()]

    @property
    def latent_dim(self) -> int:
        return self.decoder.latent_dim


def build_model(
    entry: ZooEntry,
    config: GlassesConfig,
    image_shape: tuple[int, int, int],
    generator: torch.Generator,
) -> Model:
    """The networks of ``entry`` with weights drawn from ``generator``."""
    net = {"image_shape": image_shape, "latent_dim": config.latent_dim, "hidden": config.hidden,
           "arch": config.arch, "channels": config.channels, "generator": generator}
    encoder: GaussianEncoder | DeterministicEncoder | None = None
    if entry.kind in GAUSSIAN_KINDS:
        encoder = GaussianEncoder(**net)
    elif entry.kind in (*DETERMINISTIC_KINDS, "shannon_ae"):
        encoder = DeterministicEncoder(**net)
    decoder = BernoulliDecoder(**net)
    prior = None
    if entry.kind == "shannon_ae":
        prior = FactorizedDensity(config.latent_dim, config.prior_components)
    x_disc = z_disc = None
    if entry.kind in D_KINDS:
        x_disc = Discriminator(math.prod(image_shape), config.disc_hidden, generator=generator)
    if entry.kind in B_KINDS and entry.kind != "aae":
        z_disc = Discriminator(config.latent_dim, config.z_disc_hidden, generator=generator)
    return Model(entry, encoder, decoder, prior, x_disc, z_disc)


# ---------------------------------------------------------------------------------------------
# training objectives
# ---------------------------------------------------------------------------------------------


MMD_PRIOR_FACTOR = 4
"""The AAE's MMD compares a batch of codes with this many times as many prior samples."""


def _mmd_to_prior(z: Tensor, config: GlassesConfig) -> Tensor:
    """MMD² between a batch of codes and ``MMD_PRIOR_FACTOR`` times as many N(0, I) samples
    (global RNG): the extra prior samples lower the variance of the estimate for free."""
    prior = torch.randn(MMD_PRIOR_FACTOR * z.shape[0], z.shape[1], device=z.device, dtype=z.dtype)
    return mmd2_unbiased(z, prior, kernel="imq", bandwidth=config.mmd_bandwidth)


def training_forward(
    model: Model, x: Tensor, config: GlassesConfig, fake_logits: Tensor | None = None
) -> tuple[dict[str, Tensor], Tensor | None]:
    """The terms of ``model``'s Lagrangian on batch ``x``, their sum ``"loss"``, and the codes.

    * A: the closed-form KL of the Gaussian encoder (batch mean); R (compression AE): the code
      length −log P(z + u) of the noisy codes under the learned density, nats.
    * C: ``log p(x|z)`` at one reparametrised / noisy / deterministic code, nats.
    * B, InfoVAE and BIB-AE (where it enters with −1): ``mean T_z(z)``, the logit of the
      latent discriminator, which a logistic classifier of codes (label 1) vs prior samples
      (label 0) drives to ``log q(z)/p(z)``: its mean is a KL estimate in nats, the unit of A,
      so that A − B stays an estimate of I(X;Z) (eq. 27), and its pathwise gradient is the
      gradient of ``KL(q(z)‖p(z))``. AAE (+1): ``aae_lambda_mmd · MMD²`` against prior
      samples (IMQ kernel), the MMD form the source allows for (32).
    * D: ``λ_D · mean softplus(−T_x(fake))``, the non-saturating adversarial loss, given the
      image discriminator's logits on generated images (``fake_logits``).

    Noise comes from the global torch RNG, which :class:`ibcore.training.Trainer` checkpoints.
    """
    entry, enc, dec = model.entry, model.encoder, model.decoder
    terms: dict[str, Tensor] = {}
    z: Tensor | None
    if entry.kind in GAUSSIAN_KINDS:
        assert isinstance(enc, GaussianEncoder)
        code = enc(x)
        z = code.rsample()
        terms["A"] = code.kl_standard_normal().mean()
    elif entry.kind == "shannon_ae":
        assert isinstance(enc, DeterministicEncoder) and model.prior is not None
        z = quantize(enc(x), noisy=True)
        terms["R"] = code_length_nats(model.prior, z).mean()
    elif entry.kind in DETERMINISTIC_KINDS:
        assert enc is not None
        z = enc(x)
    else:
        z = None
    if z is not None:
        terms["C"] = dec.log_prob(x, z).mean()
    if entry.kind in B_KINDS:
        assert z is not None
        if model.z_disc is not None:
            terms["B"] = model.z_disc(z).mean()
        else:
            terms["B"] = config.aae_lambda_mmd * _mmd_to_prior(z, config)
    if entry.kind in D_KINDS:
        if fake_logits is None:
            raise InvalidParameterError(f"{entry.name} needs the discriminator's fake_logits")
        terms["D"] = config.lambda_d * F.softplus(-fake_logits).mean()
    terms["loss"] = lagrangian(entry.objective, dict(terms), entry.beta)
    return terms, z


def training_terms(
    model: Model, x: Tensor, config: GlassesConfig, fake_logits: Tensor | None = None
) -> dict[str, Tensor]:
    """The terms of :func:`training_forward` without the codes."""
    return training_forward(model, x, config, fake_logits)[0]


def _loss_fn(model: Model, config: GlassesConfig) -> Callable[[tuple[Tensor, ...]], dict]:
    def loss_fn(batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        return training_terms(model, batch[0], config)

    return loss_fn


def build_optimizers(model: Model, config: GlassesConfig) -> dict[str, torch.optim.Optimizer]:
    """Adam for the encoder/decoder (``"main"``) and one per discriminator.

    Every encoder/decoder uses Adam at ``lr`` with the default moments, so that models differ
    only in their Lagrangian; the pure GAN's generator uses the usual GAN setting (``adv_lr``,
    β₁ = 0.5). Discriminators use β₁ = 0.5: the image one at ``adv_lr``, the latent one at
    ``lr`` (it must track the moving aggregate of the codes).
    """
    if model.entry.kind == "gan":
        main = torch.optim.Adam(model.generator_parameters(), lr=config.adv_lr,
                                betas=(0.5, 0.999), foreach=True)
    else:
        main = torch.optim.Adam(model.generator_parameters(), lr=config.lr, foreach=True)
    opts: dict[str, torch.optim.Optimizer] = {"main": main}
    if model.x_disc is not None:
        opts["x_disc"] = torch.optim.Adam(model.x_disc.parameters(), lr=config.adv_lr,
                                          betas=(0.5, 0.999), foreach=True)
    if model.z_disc is not None:
        opts["z_disc"] = torch.optim.Adam(model.z_disc.parameters(), lr=config.lr,
                                          betas=(0.5, 0.999), foreach=True)
    return opts


def _logistic_loss(disc: Discriminator, positive: Tensor, negative: Tensor) -> Tensor:
    """Class-balanced logistic loss; its minimiser is the logit ``log p_pos / p_neg``."""
    return F.softplus(-disc(positive)).mean() + F.softplus(disc(negative)).mean()


def _r1_penalty(disc: Discriminator, real: Tensor, gamma: float) -> Tensor:
    """``γ/2 · E‖∇ₓ T(x)‖²`` on data (Mescheder et al. 2018): keeps the image discriminator
    smooth on the data, which prevents the generator from collapsing to a single image."""
    (grad,) = torch.autograd.grad(disc(real).sum(), real, create_graph=True)
    return 0.5 * gamma * grad.pow(2).reshape(real.shape[0], -1).sum(dim=1).mean()


def _adversarial_step_fn(
    model: Model, config: GlassesConfig, optimizers: Mapping[str, torch.optim.Optimizer]
) -> Callable[[tuple[Tensor, ...], int], dict[str, Tensor | float]]:
    """One update of the encoder/decoder on the model's Lagrangian (with the discriminators
    as they are), then one update of each discriminator: the image discriminator on data vs
    decoder means at prior samples (plus the R1 penalty, weight ``r1_gamma``), the latent one
    on codes vs prior samples."""
    opt_main = optimizers["main"]

    def step_fn(batch: tuple[Tensor, ...], global_step: int) -> dict[str, Tensor | float]:
        x = batch[0]
        fake = fake_logits = None
        if model.x_disc is not None:
            fake = model.decoder.mean(torch.randn(x.shape[0], model.latent_dim, device=x.device))
            fake_logits = model.x_disc(fake)
        opt_main.zero_grad(set_to_none=True)
        terms, z = training_forward(model, x, config, fake_logits)
        terms["loss"].backward()
        opt_main.step()
        out: dict[str, Tensor | float] = {k: v.detach() for k, v in terms.items()}
        if model.x_disc is not None:
            assert fake is not None
            optimizers["x_disc"].zero_grad(set_to_none=True)
            real = x.detach().requires_grad_(config.r1_gamma > 0)
            loss = _logistic_loss(model.x_disc, real, fake.detach())
            if config.r1_gamma > 0:
                loss = loss + _r1_penalty(model.x_disc, real, config.r1_gamma)
            loss.backward()
            optimizers["x_disc"].step()
            out["x_disc_loss"] = loss.detach()
        if model.z_disc is not None:
            assert z is not None
            codes = z.detach()
            optimizers["z_disc"].zero_grad(set_to_none=True)
            loss = _logistic_loss(model.z_disc, codes, torch.randn_like(codes))
            loss.backward()
            optimizers["z_disc"].step()
            out["z_disc_loss"] = loss.detach()
        return out

    return step_fn


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Data:
    """Tensors of one experiment (floats in [0, 1], ``[N, 1, 28, 28]``, on the CPU)."""

    train: Tensor
    test: Tensor
    other_test: Tensor
    pca_mean: Tensor
    pca_components: Tensor

    def features(self, images: Tensor) -> Tensor:
        flat = images.reshape(images.shape[0], -1).to(self.pca_mean.dtype)
        return (flat - self.pca_mean) @ self.pca_components


def _pca(images: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Mean and top-``k`` principal directions (``[D, k]``) of flattened images (float64)."""
    flat = images.reshape(images.shape[0], -1).double()
    mean = flat.mean(dim=0)
    cov = (flat - mean).T @ (flat - mean) / max(flat.shape[0] - 1, 1)
    _, vecs = torch.linalg.eigh(cov)
    comps = vecs[:, -k:].flip(1)
    # a deterministic sign per component: its largest-magnitude entry is positive
    signs = torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
    return mean.float(), (comps * signs).float()


def _chunks(n: int, size: int = 1000) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def _encode_eval(
    model: Model, x: Tensor, config: GlassesConfig, generator: torch.Generator | None,
    *, use_mean: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(z, A_per_image)`` for evaluation under the chapter's conventions (see module doc).

    Gaussian encoders: one sample of q(z|x) (or its mean with ``use_mean``) and the closed-form
    KL; deterministic encoders: measured as the Gaussian encoder N(f(x), σ₀² I), a sample
    f(x) + σ₀ε (or f(x) with ``use_mean``) and its KL; the compression AE: ẑ = round(f(x))
    and its code length −log P(ẑ).
    """
    enc = model.encoder
    if isinstance(enc, GaussianEncoder):
        code = enc(x)
        z = code.mu if use_mean else code.rsample(generator)
        return z, code.kl_standard_normal()
    assert isinstance(enc, DeterministicEncoder)
    f = enc(x)
    if model.prior is not None:
        z_hat = quantize(f, noisy=False)
        return z_hat, code_length_nats(model.prior, z_hat)
    # the noise convention: measured as the Gaussian encoder N(f(x), σ₀² I)
    code = GaussianCode(f, torch.full_like(f, 2.0 * math.log(config.det_noise_std)))
    return (f if use_mean else code.rsample(generator)), code.kl_standard_normal()


def code_length_nats(density: FactorizedDensity, z_hat: Tensor) -> Tensor:
    """``−Σ_i log P_i(ẑ_i)`` per code, shape ``[N]``: the rate of eq. (35) in nats."""
    return -density.likelihood(z_hat).log().sum(dim=1)


@torch.no_grad()
def sample_codes(density: FactorizedDensity, n: int, generator: torch.Generator) -> Tensor:
    """``n`` integer codes drawn from ``density`` (independent coordinates), ``[n, C]``.

    Each coordinate is drawn from its integer pmf on a range that covers every mixture
    component by ±30 scales (the mass outside is below 1e-13 and is renormalised away).
    """
    reach = 30.0 * density.log_scales.exp()
    low = math.floor(float((density.locs - reach).min()))
    high = math.ceil(float((density.locs + reach).max()))
    pmf = density.pmf_table(low, max(high, low + 1)).detach().double().cpu()
    idx = torch.multinomial(pmf, n, replacement=True, generator=generator)  # [C, n]
    return (idx.T.to(torch.float32) + low).to(density.locs.device)


@torch.no_grad()
def _prior_samples(model: Model, n: int, generator: torch.Generator) -> Tensor:
    if model.prior is not None:
        return sample_codes(model.prior, n, generator)
    return torch.randn(n, model.latent_dim, generator=generator)


@torch.no_grad()
def _a_and_c(
    model: Model, images: Tensor, config: GlassesConfig, device: torch.device,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-image A and C, the codes and ``‖f(x)‖²``-type code norms, on ``images``."""
    a_all, c_all, z_all = [], [], []
    for sl in _chunks(images.shape[0]):
        x = images[sl].to(device)
        z, a = _encode_eval(model, x, config, generator)
        a_all.append(a.cpu())
        c_all.append(model.decoder.log_prob(x, z).cpu())
        z_all.append(z.cpu())
    z = torch.cat(z_all)
    return torch.cat(a_all), torch.cat(c_all), z, z.pow(2).sum(dim=1)


def _trajectory_point(
    model: Model, data: _Data, config: GlassesConfig, device: torch.device, seed: int
) -> dict[str, float]:
    """A and C on the fixed trajectory subset of the test set (same draw every epoch)."""
    if model.encoder is None:
        return {}
    gen = torch.Generator().manual_seed(seed)
    a, c, _, _ = _a_and_c(model, data.test[: config.n_trajectory], config, device, gen)
    return {"traj_A_nats": float(a.mean()), "traj_C_nats": float(c.mean())}


def _measure(
    model: Model, data: _Data, config: GlassesConfig, device: torch.device, seed: int
) -> dict[str, Any]:
    """All four terms of one trained model on the test set, by the chapter's estimators."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"kind": model.entry.kind, "beta": model.entry.beta,
                           "objective": model.entry.objective}
    n_div = config.n_divergence
    if model.encoder is not None:
        a, c, z, sq = _a_and_c(model, data.test[: config.n_eval], config, device, gen)
        out["test_A_nats"] = float(a.mean())
        out["test_C_nats"] = float(c.mean())
        out["test_code_sq_norm"] = float(sq.mean())
        if isinstance(model.encoder, GaussianEncoder):
            out["A_convention"] = "closed-form KL of the Gaussian encoder to N(0, I)"
        elif model.prior is not None:
            out["A_convention"] = "rate −log P(ẑ) under the model's own learned prior"
        else:
            out["A_convention"] = (
                f"KL of N(f(x), σ₀² I) to N(0, I), σ₀ = {config.det_noise_std:g}"
            )
        codes = z[:n_div]
        prior = torch.randn(codes.shape[0], model.latent_dim, generator=gen)
        out["test_B_mmd2"] = float(mmd2_unbiased(codes, prior, kernel="imq",
                                                 bandwidth=config.mmd_bandwidth))
        out["test_B_kl_nats"] = density_ratio_kl(
            codes, prior, hidden=config.dr_hidden, steps=config.dr_steps, generator=gen)
    else:
        for key in ("test_A_nats", "test_C_nats", "test_code_sq_norm", "test_B_mmd2",
                    "test_B_kl_nats"):
            out[key] = None
        out["A_convention"] = "no encoder: A, B and C are not defined"
    z_gen = _prior_samples(model, n_div, gen).to(device)
    with torch.no_grad():
        fake = torch.cat([model.decoder.mean(z_gen[sl]).cpu() for sl in _chunks(n_div)])
    real = data.test[:n_div]
    out["test_D_kl_nats"] = density_ratio_kl(
        data.features(real), data.features(fake), hidden=config.dr_hidden,
        steps=config.dr_steps, generator=gen)
    return out


@torch.no_grad()
def _novelty_scores(
    model: Model, images: Tensor, config: GlassesConfig, device: torch.device
) -> dict[str, Tensor]:
    """Per-image novelty scores (higher = more novel): −C at the posterior mean, A, −T(x)."""
    scores: dict[str, list[Tensor]] = {"C": [], "A": [], "D": []}
    for sl in _chunks(images.shape[0]):
        x = images[sl].to(device)
        if model.encoder is not None:
            z, a = _encode_eval(model, x, config, None, use_mean=True)
            scores["C"].append(-model.decoder.log_prob(x, z).cpu())
            if isinstance(model.encoder, GaussianEncoder):
                scores["A"].append(a.cpu())
        if model.x_disc is not None:
            scores["D"].append(-model.x_disc(x).cpu())
    return {k: torch.cat(v) for k, v in scores.items() if v}


def _novelty(
    model: Model, data: _Data, config: GlassesConfig, device: torch.device
) -> dict[str, Any]:
    n = config.n_novelty
    inside = _novelty_scores(model, data.test[:n], config, device)
    outside = _novelty_scores(model, data.other_test[:n], config, device)
    out: dict[str, Any] = {}
    for score in inside:
        values = torch.cat([inside[score], outside[score]]).double()
        labels = np.r_[np.zeros(inside[score].shape[0]), np.ones(outside[score].shape[0])]
        out[f"auroc_{score}"] = auroc(values, labels)
        out[f"roc_{score}"] = roc_curve_on_grid(values, labels, config.roc_points)
    return out


@torch.no_grad()
def _pictures(
    model: Model, fixed: Tensor, config: GlassesConfig, device: torch.device, seed: int
) -> Tensor:
    """uint8 ``[2, 8, H, W]``: reconstructions of the fixed images (zeros without an encoder)
    and decoder means at 8 fixed prior samples."""
    x = fixed.to(device)
    if model.encoder is not None:
        z, _ = _encode_eval(model, x, config, None, use_mean=True)
        recon = model.decoder.mean(z).cpu()
    else:
        recon = torch.zeros_like(fixed)
    gen = torch.Generator().manual_seed(seed)
    samples = model.decoder.mean(_prior_samples(model, fixed.shape[0], gen).to(device)).cpu()
    pics = torch.stack([recon[:, 0], samples[:, 0]])
    return (pics.clamp(0, 1) * 255).round().to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# bars of the issue
# ---------------------------------------------------------------------------------------------


def _values(models: Mapping[str, Any], names: Sequence[str], key: str) -> dict[str, Any]:
    return {n: models.get(n, {}).get(key) for n in names}


def _below(models: Mapping[str, Any], low: str, high: str, key: str) -> tuple[bool | None, dict]:
    vals = _values(models, (low, high), key)
    if any(v is None for v in vals.values()):
        return None, vals
    return bool(vals[low] < vals[high]), vals


def _increasing(models: Mapping[str, Any], names: Sequence[str], key: str
                ) -> tuple[bool | None, dict]:
    vals = _values(models, [n for n in names if n in models], key)
    seq = list(vals.values())
    if len(seq) < 2 or any(v is None for v in seq):
        return None, vals
    return bool(all(b > a for a, b in zip(seq[:-1], seq[1:], strict=True))), vals


def check_bars(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's bars: ``{"bar", "term", "key", "holds" (True/False/None), "values"}``.

    Directions follow each Lagrangian: a term with a positive coefficient should come out
    lower than in a model without it (the VAE is the reference), one with a negative
    coefficient higher; along the β-VAE sweep A and C should both rise with β (the weight of
    C; the relative weight of A, 1/β, falls). ``holds`` is ``None`` where a model is missing.
    ``values`` holds the numbers compared (metric ``key`` of each model). The novelty bar
    (best AUROC above 0.9) is the issue's bar for models trained on MNIST (in) scoring
    Fashion-MNIST (out); for other datasets it is reported as not measured.
    """
    models = metrics.get("models", {})
    sweep = [n for n in metrics.get("beta_sweep", []) if n in models]
    comp = [n for n in metrics.get("compression_sweep", []) if n in models]
    specs: list[tuple[str, str, str, Callable[[], tuple[bool | None, dict]]]] = [
        ("VAE's A below the plain AE's A (the AE has no A term)", "A", "test_A_nats",
         lambda: _below(models, "vae", "ae", "test_A_nats")),
        ("AAE's B below the VAE's B, by MMD² (+B in (32))", "B", "test_B_mmd2",
         lambda: _below(models, "aae", "vae", "test_B_mmd2")),
        ("AAE's B below the VAE's B, by density-ratio KL", "B", "test_B_kl_nats",
         lambda: _below(models, "aae", "vae", "test_B_kl_nats")),
        ("β-VAE's A rises with β (weight on A relative to C, 1/β, falls)", "A", "test_A_nats",
         lambda: _increasing(models, sweep, "test_A_nats")),
        ("β-VAE's C rises with β", "C", "test_C_nats",
         lambda: _increasing(models, sweep, "test_C_nats")),
        ("InfoVAE's B above the VAE's B, by MMD² (−B in (33))", "B", "test_B_mmd2",
         lambda: _below(models, "vae", "infovae", "test_B_mmd2")),
        ("InfoVAE's B above the VAE's B, by density-ratio KL", "B", "test_B_kl_nats",
         lambda: _below(models, "vae", "infovae", "test_B_kl_nats")),
        ("BIB-AE's B above the VAE's B, by MMD² (−B in (26))", "B", "test_B_mmd2",
         lambda: _below(models, "vae", "bib_ae", "test_B_mmd2")),
        ("VAE/GAN's D below the VAE's D (+βD in (34))", "D", "test_D_kl_nats",
         lambda: _below(models, "vae_gan", "vae", "test_D_kl_nats")),
        ("BIB-AE's D below the VAE's D (+βD in (26))", "D", "test_D_kl_nats",
         lambda: _below(models, "bib_ae", "vae", "test_D_kl_nats")),
        ("GAN's D below the VAE's D (D is all the GAN optimises)", "D", "test_D_kl_nats",
         lambda: _below(models, "gan", "vae", "test_D_kl_nats")),
        ("compression AE's rate rises with β", "A (rate)", "test_A_nats",
         lambda: _increasing(models, comp, "test_A_nats")),
        ("compression AE's C rises with β", "C", "test_C_nats",
         lambda: _increasing(models, comp, "test_C_nats")),
    ]
    bars = []
    for text, term, key, fn in specs:
        holds, vals = fn()
        bars.append({"bar": text, "term": term, "key": key, "holds": holds, "values": vals})
    novelty = metrics.get("novelty", {}) if metrics.get("dataset", "mnist") == "mnist" else {}
    scores = {f"{m}/{k[len('auroc_'):]}": v for m, d in novelty.items() for k, v in d.items()
              if k.startswith("auroc_")}
    best = max(scores, key=scores.__getitem__) if scores else None
    bars.append({"bar": "novelty detection: best AUROC above 0.9", "term": "C, D",
                 "key": "auroc", "holds": None if best is None else bool(scores[best] > 0.9),
                 "values": {} if best is None else {best: scores[best]}})
    return bars


# ---------------------------------------------------------------------------------------------
# the runs
# ---------------------------------------------------------------------------------------------


def _stable_seed(*parts: Any) -> int:
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


@dataclass
class _Context(RunContext):
    chapter: ClassVar[str] = CHAPTER

    data: dict[str, _Data] = field(default_factory=dict)

    def get_data(self, dataset: str) -> _Data:
        if dataset not in self.data:
            self.data[dataset] = _load_data(dataset, self.config, self.seed)
        return self.data[dataset]


def _load_data(dataset: str, config: GlassesConfig, seed: int) -> _Data:
    x_train, y_train = load_tensors(dataset, "train")
    x_test, _ = load_tensors(dataset, "test")
    x_other, _ = load_tensors(OTHER_DATASET[dataset], "test")
    gen = torch.Generator().manual_seed(_stable_seed("subset", dataset, seed))
    x_train, _ = subset(x_train, y_train, config.n_train, gen)
    train = to_unit_float(x_train)
    mean, comps = _pca(train[: config.pca_fit], config.pca_dim)
    return _Data(train, to_unit_float(x_test), to_unit_float(x_other), mean, comps)


def _train_and_measure(
    ctx: _Context, experiment: str, entry: ZooEntry, data: _Data
) -> dict[str, Any]:
    """Train one model (resuming if asked), measure it, and cache the result in ``.done``."""
    cfg, name = ctx.config, entry.name
    ckpt_dir = ctx.checkpoint_dir(experiment)
    fingerprint = ctx.fingerprint(experiment, model=name)
    done_path = ckpt_dir / f"{name}.done"
    if ctx.resume and done_path.exists():
        try:
            return load_checkpoint(done_path, fingerprint=fingerprint)
        except CheckpointError:
            pass  # a stale or damaged cache: train again (from the checkpoint if it is good)
    model_seed = _stable_seed(experiment, name, ctx.seed)
    model = build_model(entry, cfg, tuple(data.train.shape[1:]),  # type: ignore[arg-type]
                        torch.Generator().manual_seed(model_seed))
    for module in model.modules().values():
        module.to(ctx.device)
    traj_seed = _stable_seed("trajectory", experiment, ctx.seed)
    for module in model.modules().values():
        module.eval()
    start = {"model": name, "epoch": 0, **_trajectory_point(model, data, cfg, ctx.device,
                                                            traj_seed)}
    optimizers = build_optimizers(model, cfg)
    fns: dict[str, Any]
    if len(optimizers) > 1:
        fns = {"step_fn": _adversarial_step_fn(model, cfg, optimizers)}
    else:
        fns = {"loss_fn": _loss_fn(model, cfg)}

    def epoch_end(epoch: int) -> dict[str, float]:
        with isolated_rng(ctx.device):  # draws from its own generator; training RNG untouched
            return _trajectory_point(model, data, cfg, ctx.device, traj_seed)

    torch.manual_seed(model_seed)  # the global RNG the losses draw from; resume restores it
    trainer = Trainer(
        model.modules(),
        optimizers if len(optimizers) > 1 else optimizers["main"],
        (data.train,),
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        seed=model_seed,
        device=ctx.device,
        checkpoint_path=ckpt_dir / f"{name}.pt",
        checkpoint_every_steps=cfg.checkpoint_every_steps,
        fingerprint=fingerprint,
        epoch_end_fn=epoch_end,
        progress=ctx.progress,
        desc=f"{experiment}/{name}",
        **fns,
    )
    history = trainer.fit(resume=ctx.resume)
    train_seconds = trainer.elapsed_seconds
    for module in model.modules().values():
        module.eval()
    t0 = time.perf_counter()
    with isolated_rng(ctx.device):  # the measurements draw from their own generators
        measured = _measure(model, data, cfg, ctx.device,
                            _stable_seed("measure", experiment, name, ctx.seed))
        novelty = _novelty(model, data, cfg, ctx.device)
        pictures = _pictures(model, data.test[:N_FIXED_IMAGES], cfg, ctx.device,
                             _stable_seed("pictures", experiment, ctx.seed))
    measured["train_seconds"] = train_seconds
    measured["measure_seconds"] = time.perf_counter() - t0
    result = {
        "history": [start] + [{"model": name, **row} for row in history],
        "measured": measured,
        "novelty": novelty,
        "pictures": pictures,
    }
    save_checkpoint(done_path, result, fingerprint=fingerprint)
    return {**result, "_fresh": True}


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _tile_row(tiles: Tensor) -> np.ndarray:
    """``[8, H, W]`` uint8 → one ``[H, 8·W]`` row."""
    return torch.cat(list(tiles), dim=1).numpy()


def load_images_artifact(result_path: Path, metrics: Mapping[str, Any],
                         artifact: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Read the PNG named in a result file, check its SHA-256, split it into named rows.

    Returns ``{row name: uint8 [8, H, W]}`` with rows ``"originals"``, ``"<model>/recon"`` and
    ``"<model>/samples"`` (names from ``metrics["image_rows"]``).
    """
    from PIL import Image

    raw = read_artifact(result_path, artifact)
    image = np.asarray(Image.open(io.BytesIO(raw)))
    rows = list(metrics["image_rows"])
    h = image.shape[0] // len(rows)
    w = image.shape[1] // N_FIXED_IMAGES
    return {name: image[i * h:(i + 1) * h].reshape(h, N_FIXED_IMAGES, w).transpose(1, 0, 2)
            for i, name in enumerate(rows)}


def _run_experiment(ctx: _Context, experiment: str) -> Path:
    cfg = ctx.config
    data = ctx.get_data(experiment)
    entries = zoo(cfg, experiment)
    with ctx.recorder(experiment) as rec:
        models: dict[str, Any] = {}
        novelty: dict[str, Any] = {}
        fixed = (data.test[:N_FIXED_IMAGES, 0] * 255).round().to(torch.uint8)
        rows, row_names = [_tile_row(fixed)], ["originals"]
        for entry in entries:
            result = _train_and_measure(ctx, experiment, entry, data)
            if not result.pop("_fresh", False):  # trained earlier (another process, or resumed)
                rec.add_elapsed(result["measured"]["train_seconds"]
                                + result["measured"]["measure_seconds"])
            rec.history.extend(result["history"])
            models[entry.name] = result["measured"]
            novelty[entry.name] = result["novelty"]
            rows += [_tile_row(result["pictures"][0]), _tile_row(result["pictures"][1])]
            row_names += [f"{entry.name}/recon", f"{entry.name}/samples"]
        test = data.test[: cfg.n_eval].reshape(min(cfg.n_eval, data.test.shape[0]), -1)
        c_max = bernoulli_log_prob(test, torch.logit(test.clamp(1e-6, 1 - 1e-6)))
        rec.metrics.update({
            "dataset": experiment,
            "novelty_out_dataset": OTHER_DATASET[experiment],
            "models": models,
            "beta_sweep": [e.name for e in entries if e.kind == "beta_vae"],
            "compression_sweep": [e.name for e in entries if e.kind == "shannon_ae"],
            "novelty": novelty,
            "test_C_max_nats": float(c_max.mean()),
            "n_train": int(data.train.shape[0]),
            "image_rows": row_names,
        })
        rec.metrics["bars"] = check_bars(rec.metrics)
        assert rec.path is not None
        rec.save_artifact("images", _png_bytes(np.concatenate(rows, axis=0)), "png")
    return rec.path


def make_context(**run_args: Any) -> _Context:
    """The run's context (the runner protocol of :mod:`ibcore.tasks`)."""
    return prepare_run(_Context, PROFILES, EXPERIMENTS, **run_args)


def plan(ctx: _Context, experiments: Sequence[str]) -> list[Task]:
    """One task per model of each experiment's zoo."""
    return [Task(f"{name}/{entry.name}", (name,), (name, entry))
            for name in experiments for entry in zoo(ctx.config, name)]


def run_task(ctx: _Context, task: Task) -> None:
    experiment, entry = task.spec
    _train_and_measure(ctx, experiment, entry, ctx.get_data(experiment))


def assemble(ctx: _Context, experiment: str) -> Path:
    return _run_experiment(ctx, experiment)


def run(
    profile: str = "smoke",
    *,
    device: str = "auto",
    seed: int = 0,
    resume: bool = False,
    results_root: Path | None = None,
    progress: bool = True,
    experiments: Sequence[str] = EXPERIMENTS,
    launcher: Any = None,
) -> dict[str, Path]:
    """Run the chapter's experiments at ``profile``; return ``{experiment: result file}``.

    ``experiments`` selects a subset (default: both datasets); ``launcher`` (see
    :mod:`ibcore.launchers`) runs the models; default: one after another here.
    """
    return run_experiments(CHAPTER, launcher=launcher, profile=profile, device=device, seed=seed,
                           resume=resume, results_root=results_root, progress=progress,
                           experiments=experiments)
