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
  and by the classifier KL estimator (:func:`ibcore.estimators.divergences.classifier_kl`,
  early-stopped on a validation part) between test codes and prior samples.
* **C** :math:`= \mathbb E_x\mathbb E_{q(z|x)}\log p(x|z)` of the Bernoulli decoder on the
  test set, nats per image (one posterior sample per image).
* **D** :math:`= \mathrm{KL}(p_D(x)\|p_\theta(x))` by the classifier KL estimator between
  test images and decoder means at prior samples, and by the Fréchet distance of Gaussian fits,
  both in a fixed feature space: the top ``pca_dim`` principal components of the training
  images (a fixed linear map, the same for every model; by the data-processing inequality the
  KL of the features is ≤ the KL of the images).

Every divergence estimate is repeated ``estimator_repeats`` times on fresh draws and reported
with a 95 % interval; the estimators are also run on cases with a known answer
(:func:`estimator_checks`). Every model is trained in ``replicates`` replicates (training
seeds); rows are compared by replicate-paired differences with 95 % intervals
(:mod:`ibcore.replicates`), and every expectation of the chapter is judged from them by
:func:`reproduction_checks`, with explanations computed from recorded numbers only.

Training: a validation split (``n_val`` images) is carved from the training images; every
optimizer follows a per-step warm-up + cosine schedule; after every epoch the runner records A
and C on validation images and the *sample score* (the Fréchet distance between generated and
validation images in the principal-component features). Models with an image discriminator
train for ``adv_epochs`` epochs, and :func:`sample_score_settling` says whether their score
stopped moving.

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
The best (model, score) is chosen on a validation pair (validation images against training
images of the other dataset) and judged on the test pair.

Artefacts: one PNG per experiment beside the result file (named in it with its SHA-256):
8 fixed test images, then per model (its first replicate) a row of their reconstructions and a
row of samples.

Checkpoints: ``<results_root>/../runs/glasses/<experiment>/<profile>-seed<N>/``; each model
has its training checkpoint ``<model>.pt`` and, once measured, ``<model>.done`` (verified,
fingerprinted) so ``--resume`` continues a model exactly and skips finished ones; the
estimators' known cases are cached in ``estimator_checks.done``.
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
from ibcore.estimators.divergences import classifier_kl, frechet_distance, mmd2_unbiased
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
from ibcore.replicates import aggregate_rows, mean_interval, paired_difference
from ibcore.results import read_artifact
from ibcore.runners.context import RunContext, prepare_run
from ibcore.schedules import Schedule
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
    "estimator_checks",
    "reproduction_checks",
    "repeated_divergences",
    "row_name",
    "sample_score_settling",
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
    """Training images (a random subset; ``None``: all of them), the validation images
    included."""
    n_val: int = 5000
    """Validation images carved from the training images (never trained on): the per-epoch
    curves and every choice (the novelty score) are made on them, never on the test split."""
    epochs: int = 5
    """Epochs of the models without an image discriminator."""
    adv_epochs: int = 5
    """Epochs of the models with an image discriminator (GAN, VAE/GAN, BIB-AE): trained until
    their per-epoch sample score settles."""
    replicates: int = 1
    """Training seeds of every model (rows are compared by replicate-paired differences)."""
    schedule_kind: str = "warmup_cosine"
    """Per-step learning-rate schedule of every optimizer (peak: its ``lr``/``adv_lr``)."""
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
    dr_steps: int = 1000
    """Most Adam steps of a density-ratio classifier (early stopping on a validation part)."""
    dr_hidden: int = 64
    estimator_repeats: int = 5
    """Repeats of every divergence estimate (fresh splits, samples and initial weights): the
    spread of the repeats gives each estimate its 95 % interval."""
    n_sample_score: int = 2000
    """Generated and validation images of the per-epoch sample score (Fréchet distance in the
    principal-component features)."""
    settle_fraction: float = 0.25
    settle_tolerance: float = 0.10
    """A sample score has settled when it moved by less than this fraction of its final value
    over the last ``settle_fraction`` of the epochs."""
    pca_dim: int = 32
    pca_fit: int = 10000
    roc_points: int = 101

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise UnknownNameError(f"unknown arch {self.arch!r}; choose one of {ARCHS}")
        for name in ("latent_dim", "prior_components", "epochs", "adv_epochs", "batch_size",
                     "checkpoint_every_steps", "n_eval", "n_divergence", "n_trajectory",
                     "n_novelty", "dr_steps", "dr_hidden", "pca_dim", "pca_fit", "roc_points",
                     "n_val", "replicates", "n_sample_score"):
            check_int(name, getattr(self, name), low=1)
        check_int("estimator_repeats", self.estimator_repeats, low=2)
        if self.n_train is not None:
            check_int("n_train", self.n_train, low=self.n_val + 2)
        Schedule(self.schedule_kind)  # refuses an unknown kind
        check_weight("settle_fraction", self.settle_fraction, low=0.0, high=1.0,
                     low_inclusive=False)
        check_weight("settle_tolerance", self.settle_tolerance, low=0.0, low_inclusive=False)
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
    epochs=8,
    adv_epochs=20,
    replicates=2,
    n_divergence=4000,
    fashion_models=("ae", "vae", "beta_vae_0.25", "beta_vae_4", "aae", "gan", "vae_gan",
                    "shannon_ae_1", "bib_ae"),
)

PROFILES: dict[str, GlassesConfig] = {
    "smoke": dataclasses.replace(
        _CPU,
        hidden=(64, 32),
        disc_hidden=(32,),
        z_disc_hidden=(16,),
        n_train=320,
        n_val=64,
        epochs=1,
        adv_epochs=2,
        batch_size=64,
        checkpoint_every_steps=2,
        betas=(1.0, 2.0),
        compression_betas=(1.0,),
        fashion_models=("vae", "gan"),
        n_eval=256,
        n_divergence=128,
        n_trajectory=64,
        n_novelty=128,
        dr_steps=20,
        dr_hidden=16,
        estimator_repeats=2,
        n_sample_score=64,
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
        adv_epochs=60,
        replicates=3,
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
    """One model to train: its kind (Lagrangian), β (the weight of the likelihood C) and its
    replicate (training seed number; replicate 0 has no suffix, others ``-r<k>``)."""

    kind: str
    beta: float = 1.0
    replicate: int = 0

    def __post_init__(self) -> None:
        check_int("replicate", self.replicate, low=0)

    @property
    def row(self) -> str:
        """The table row the model belongs to (its name without the replicate)."""
        return model_name(self.kind, self.beta)

    @property
    def name(self) -> str:
        return self.row + (f"-r{self.replicate}" if self.replicate else "")

    @property
    def adversarial(self) -> bool:
        """Trained against an image discriminator (its samples are the point of training)."""
        return self.kind in D_KINDS

    @property
    def objective(self) -> str:
        """The key of its Lagrangian in :data:`ibcore.objectives.bibae.MODELS`."""
        if self.kind == "beta_vae" and self.beta == 1.0:
            return "vae"
        return self.kind


def zoo(config: GlassesConfig, dataset: str) -> list[ZooEntry]:
    """The models trained on ``dataset`` at ``config`` (Fashion-MNIST: ``fashion_models``),
    every one in ``config.replicates`` replicates (replicate 0 of every row first)."""
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
    return [dataclasses.replace(e, replicate=r) for r in range(config.replicates)
            for e in entries]


def row_name(name: str) -> str:
    """The table row of a model name (``"vae-r1"`` → ``"vae"``)."""
    base, sep, rep = name.rpartition("-r")
    return base if sep and rep.isdigit() else name


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
    val: Tensor
    test: Tensor
    other_val: Tensor
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


@torch.no_grad()
def _generate(model: Model, n: int, device: torch.device, generator: torch.Generator) -> Tensor:
    """Decoder means at ``n`` prior samples (the compression AE samples its learned prior)."""
    z = _prior_samples(model, n, generator).to(device)
    return torch.cat([model.decoder.mean(z[sl]).cpu() for sl in _chunks(n)])


def _trajectory_point(
    model: Model, data: _Data, config: GlassesConfig, device: torch.device, seed: int
) -> dict[str, float]:
    """The per-epoch numbers, all on validation images (the same draws every epoch): A and C
    on the first ``n_trajectory`` of them, and the sample score ``sample_fd``: the Fréchet
    distance between the principal-component features of ``n_sample_score`` generated images
    and of as many validation images (0 for identical Gaussian fits)."""
    out: dict[str, float] = {}
    gen = torch.Generator().manual_seed(seed)
    if model.encoder is not None:
        a, c, _, _ = _a_and_c(model, data.val[: config.n_trajectory], config, device, gen)
        out.update({"traj_A_nats": float(a.mean()), "traj_C_nats": float(c.mean())})
    n = min(config.n_sample_score, data.val.shape[0])
    fake = _generate(model, n, device, torch.Generator().manual_seed(seed + 1))
    out["sample_fd"] = frechet_distance(data.features(data.val[:n]), data.features(fake))
    return out


def _summary(key: str, values: Sequence[float]) -> dict[str, Any]:
    """``{key: mean, key_ci95: 95 % interval, key_values: the repeats}`` of a repeated estimate."""
    stats = mean_interval(values)
    return {key: stats["mean"], f"{key}_ci95": stats["interval_95"],
            f"{key}_values": stats["values"]}


def repeated_divergences(
    p: Tensor, q: Tensor, config: GlassesConfig, seed: int, *, draw: Callable[
        [Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]] | None = None,
    mmd: bool = False,
) -> dict[str, Any]:
    """Every divergence estimate of P against Q, ``estimator_repeats`` times.

    Repeat ``r`` draws its own generator (seeded ``seed + r``): ``draw(p, q, gen)`` picks that
    repeat's samples (default: the sets as given), then :func:`classifier_kl` splits them and
    initialises its classifier afresh. Returns the mean, 95 % interval and values of the KL
    (``kl_nats``), its Donsker–Varadhan value (``dv_nats``) and the held-out accuracy
    (``accuracy``), and with ``mmd`` the unbiased MMD² (IMQ kernel, ``mmd_bandwidth``).
    """
    kl, dv, acc, mmd2 = [], [], [], []
    for r in range(config.estimator_repeats):
        gen = torch.Generator().manual_seed(seed + r)
        a, b = draw(p, q, gen) if draw is not None else (p, q)
        est = classifier_kl(a, b, hidden=config.dr_hidden, max_steps=config.dr_steps,
                            generator=gen)
        kl.append(est.kl_nats)
        dv.append(est.dv_nats)
        acc.append(est.accuracy)
        if mmd:
            mmd2.append(float(mmd2_unbiased(a, b, kernel="imq", bandwidth=config.mmd_bandwidth)))
    out = {**_summary("kl_nats", kl), **_summary("dv_nats", dv), **_summary("accuracy", acc)}
    if mmd:
        out.update(_summary("mmd2", mmd2))
    return out


def _prefixed(prefix: str, stats: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in stats.items()}


def _measure(
    model: Model, data: _Data, config: GlassesConfig, device: torch.device, seed: int
) -> dict[str, Any]:
    """All four terms of one trained model on the test set, by the chapter's estimators.

    Every divergence (B by MMD² and by the classifier KL, D by the classifier KL and by the
    Fréchet distance, both in the principal-component features) is estimated
    ``estimator_repeats`` times on fresh draws: each repeat takes ``n_divergence`` test codes
    or images at random and as many fresh prior samples or generated images. Keys:
    ``test_<term>_<estimator>`` (the mean of the repeats), ``…_ci95`` and ``…_values``.
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"kind": model.entry.kind, "beta": model.entry.beta,
                           "objective": model.entry.objective, "row": model.entry.row,
                           "replicate": model.entry.replicate}
    n_div = config.n_divergence

    def pick(x: Tensor, g: torch.Generator) -> Tensor:
        return x[torch.randperm(x.shape[0], generator=g)[:n_div]]

    if model.encoder is not None:
        test = data.test[: config.n_eval]
        a, c, z, sq = _a_and_c(model, test, config, device, gen)
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
            # the identity A = ½ E‖f(x)‖² + (d/2)(σ₀² − 1 − ln σ₀²), whatever was learned
            f_sq = torch.cat([_encode_eval(model, test[sl].to(device), config, None,
                                           use_mean=True)[0].pow(2).sum(1).cpu()
                              for sl in _chunks(test.shape[0])])
            s2 = config.det_noise_std ** 2
            out["test_A_code_energy_nats"] = 0.5 * float(f_sq.double().mean())
            out["A_noise_constant_nats"] = 0.5 * model.latent_dim * (s2 - 1.0 - math.log(s2))

        def draw_codes(codes: Tensor, _: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
            chosen = pick(codes, g)
            return chosen, torch.randn(chosen.shape[0], model.latent_dim, generator=g)

        b = repeated_divergences(z, z, config, _stable_seed(seed, "B"), draw=draw_codes,
                                 mmd=True)
        out.update(_prefixed("test_B", b))
    else:
        for key in ("test_A_nats", "test_C_nats", "test_code_sq_norm", "test_B_mmd2",
                    "test_B_kl_nats"):
            out[key] = None
        out["A_convention"] = "no encoder: A, B and C are not defined"

    def draw_images(real: Tensor, _: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        x = pick(real, g)
        fake = _generate(model, x.shape[0], device, g)
        return data.features(x), data.features(fake)

    d = repeated_divergences(data.test, data.test, config, _stable_seed(seed, "D"),
                             draw=draw_images)
    out.update(_prefixed("test_D", d))
    fd = []
    for r in range(config.estimator_repeats):
        g = torch.Generator().manual_seed(_stable_seed(seed, "FD", r))
        real, fake = draw_images(data.test, data.test, g)
        fd.append(frechet_distance(real, fake))
    out.update(_summary("test_D_fd", fd))
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
    """AUROC of every novelty score on the validation pair (in: the validation images, out:
    training images of the other dataset; key ``auroc_<score>_val``, where the best score is
    chosen) and on the test pair (``auroc_<score>``, with its ROC curve ``roc_<score>``)."""
    n = config.n_novelty
    out: dict[str, Any] = {}
    for split, ins, outs in (("val", data.val, data.other_val),
                             ("test", data.test, data.other_test)):
        inside = _novelty_scores(model, ins[:n], config, device)
        outside = _novelty_scores(model, outs[:n], config, device)
        for score in inside:
            values = torch.cat([inside[score], outside[score]]).double()
            labels = np.r_[np.zeros(inside[score].shape[0]), np.ones(outside[score].shape[0])]
            if split == "val":
                out[f"auroc_{score}_val"] = auroc(values, labels)
            else:
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
# reproduction checks
# ---------------------------------------------------------------------------------------------

LN2 = math.log(2.0)
CHANCE_DISC_LOSS = 2.0 * LN2
"""The logistic loss of :func:`_logistic_loss` (a sum of two class means) at chance."""
ZERO_TOLERANCE_NATS = 0.1
"""Our tolerance on a known divergence: the 95 % interval of the estimate must reach the band
true value ± this (an estimator off by more cannot order models a tenth of a nat apart) …"""
PRECISION_NATS = 0.25
"""… and its half-width must be at most this."""
B_SHIFT_NATS = 1.0
"""KL(N(0, I) ‖ N(m, I)) = ‖m‖²/2 of the B estimator's known case."""
NOVELTY_AUROC = 0.9
DISC_CHANCE_MARGIN = 0.05

_VERDICT_HOLDS = {"supported": True, "contradicted": False, "undecided": None}


def _row_values(table: Mapping[str, Any], row: str, key: str) -> list[float] | None:
    stats = table.get(row, {}).get("metrics", {}).get(key)
    return None if stats is None else list(stats["values"])


def _compare(table: Mapping[str, Any], high: str, low: str, key: str) -> dict[str, Any] | None:
    """The paired difference ``high − low`` of metric ``key`` over the replicates both rows
    have (``None`` when a row or the metric is missing)."""
    a, b = _row_values(table, high, key), _row_values(table, low, key)
    if a is None or b is None:
        return None
    n = min(len(a), len(b))
    return {"higher": high, "lower": low, "key": key, **paired_difference(a[:n], b[:n])}


def _judge(comparisons: Sequence[dict[str, Any] | None]) -> tuple[bool | None, str]:
    """Every comparison supported → holds; any contradicted → does not hold; else undecided."""
    if not comparisons or any(c is None for c in comparisons):
        return None, "not measured"
    verdicts = [c["verdict"] for c in comparisons if c is not None]
    if "contradicted" in verdicts:
        return False, "contradicted"
    if all(v == "supported" for v in verdicts):
        return True, "supported"
    return None, "undecided"


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _interval_text(ci: Sequence[float] | None) -> str:
    return "no interval" if ci is None else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _explain_comparison(c: Mapping[str, Any], models: Mapping[str, Any],
                        settling: Mapping[str, Any], history_disc: Mapping[str, float],
                        ) -> list[str]:
    """Sentences computed from the recorded numbers that bear on a comparison that was not
    supported: the interval, the estimators' own intervals, unsettled training, a latent
    discriminator at chance, and the second estimator of the same term."""
    out: list[str] = []
    key, hi, lo = c["key"], c["higher"], c["lower"]
    if c["interval_95"] is None:
        out.append(f"{hi} − {lo}: one replicate only, so the difference "
                   f"({_fmt(c['mean'])}) has no interval")
    elif c["verdict"] == "undecided":
        diffs = c["differences"]
        split = any(d > 0 for d in diffs) and any(d < 0 for d in diffs)
        out.append(f"{hi} − {lo} = {_fmt(c['mean'])} with 95 % interval "
                   f"{_interval_text(c['interval_95'])}, which contains 0 (replicate "
                   f"differences {', '.join(_fmt(d) for d in diffs)}"
                   + ("; they differ in sign)" if split else ")"))
    reps = {m["replicate"]: m for m in models.values() if m.get("row") == hi}
    others = {m["replicate"]: m for m in models.values() if m.get("row") == lo}
    overlap = []
    for r in sorted(set(reps) & set(others)):
        ci_a, ci_b = reps[r].get(f"{key}_ci95"), others[r].get(f"{key}_ci95")
        if ci_a and ci_b and ci_a[0] <= ci_b[1] and ci_b[0] <= ci_a[1]:
            overlap.append(f"replicate {r}: {_interval_text(ci_a)} against "
                           f"{_interval_text(ci_b)}")
    if overlap:
        out.append(f"the estimator's own 95 % intervals of {hi} and {lo} overlap ("
                   + "; ".join(overlap) + ")")
    for row in (hi, lo):
        for r, s in sorted(settling.get(row, {}).items()):
            if not s["settled"]:
                out.append(f"{row}'s sample score moved by {s['relative_change']:.0%} over its "
                           f"last {s['window_epochs']} epochs (replicate {r}): its training had "
                           "not settled")
        if key.startswith("test_B") and row in history_disc:
            loss = history_disc[row]
            if abs(loss - CHANCE_DISC_LOSS) <= DISC_CHANCE_MARGIN * CHANCE_DISC_LOSS:
                out.append(f"{row}'s latent discriminator ended with loss {loss:.3f}, within "
                           f"{DISC_CHANCE_MARGIN:.0%} of 2 ln 2 = {CHANCE_DISC_LOSS:.3f}, the loss "
                           "of a classifier that cannot tell codes from prior samples")
    if key == "test_D_kl_nats":
        fd = {row: mean for row in (hi, lo) for mean in [_mean_of(models, row, "test_D_fd")]
              if mean is not None}
        if len(fd) == 2 and (fd[hi] > fd[lo]) != (c["mean"] > 0):
            out.append(f"the Fréchet distance in the same features orders them the other way "
                       f"({hi}: {_fmt(fd[hi])}, {lo}: {_fmt(fd[lo])})")
    return out


def _mean_of(models: Mapping[str, Any], row: str, key: str) -> float | None:
    vals = [m[key] for m in models.values() if m.get("row") == row
            and isinstance(m.get(key), (int, float))]
    return sum(vals) / len(vals) if vals else None


def sample_score_settling(history: Sequence[Mapping[str, Any]], config: GlassesConfig
                          ) -> dict[str, dict[int, dict[str, Any]]]:
    """Per row of an adversarial model and replicate: has its per-epoch sample score settled?

    With ``T`` epochs and window ``w = max(1, round(settle_fraction · T))`` the relative change
    is ``|s_T − s_{T−w}| / s_T`` of the sample score ``s`` (``sample_fd``); settled when it is
    below ``settle_tolerance``.
    """
    series: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for h in history:
        if h.get("kind") in D_KINDS and h.get("epoch", 0) >= 1 and "sample_fd" in h:
            series.setdefault((h["row"], h["replicate"]), []).append((h["epoch"], h["sample_fd"]))
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for (row, rep), pts in series.items():
        pts.sort()
        scores = [v for _, v in pts]
        w = min(max(1, round(config.settle_fraction * len(scores))), len(scores) - 1)
        if w < 1:
            continue
        final, before = scores[-1], scores[-1 - w]
        change = abs(final - before) / max(abs(final), 1e-12)
        out.setdefault(row, {})[rep] = {
            "final_sample_fd": final, "sample_fd_window_start": before, "window_epochs": w,
            "relative_change": change, "settled": bool(change < config.settle_tolerance)}
    return out


def _last_disc_loss(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean over replicates of each row's last-epoch latent-discriminator loss."""
    last: dict[tuple[str, int], tuple[int, float]] = {}
    for h in history:
        if "train_z_disc_loss" in h:
            k = (h["row"], h["replicate"])
            if k not in last or h["epoch"] > last[k][0]:
                last[k] = (h["epoch"], h["train_z_disc_loss"])
    rows: dict[str, list[float]] = {}
    for (row, _), (_, v) in last.items():
        rows.setdefault(row, []).append(v)
    return {r: sum(v) / len(v) for r, v in rows.items()}


def _known_value_check(name: str, stats: Mapping[str, Any], truth: float) -> dict[str, Any]:
    """Holds when the 95 % interval overlaps ``truth ± ZERO_TOLERANCE_NATS`` and its half-width
    is at most ``PRECISION_NATS``."""
    ci = stats["kl_nats_ci95"]
    holds = None if ci is None else bool(
        ci[0] <= truth + ZERO_TOLERANCE_NATS and ci[1] >= truth - ZERO_TOLERANCE_NATS
        and 0.5 * (ci[1] - ci[0]) <= PRECISION_NATS)
    return {"case": name, "truth_nats": truth, "mean": stats["kl_nats"], "interval_95": ci,
            "holds": holds}


def reproduction_checks(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The chapter's expectations, each judged from the recorded run.

    Every entry: ``check`` (the claim), ``expectation`` (what must be seen for it to hold,
    stated before any number), ``basis`` (where that comes from), ``term``, ``key``, ``holds``
    (True/False/None), ``verdict``, ``comparisons`` (replicate-paired differences with their
    95 % intervals), ``values`` (row means) and ``explanations`` (sentences computed from
    the recorded numbers, for checks that did not hold). A comparison is listed only where
    every model it names was trained on the dataset. Directions follow each Lagrangian: a
    term with a positive coefficient should come out lower than in a model without it (the
    VAE is the reference), one with a negative coefficient higher.
    """
    table = metrics.get("table", {})
    models = metrics.get("models", {})
    settling = metrics.get("sample_score_settling", {})
    disc = metrics.get("latent_disc_last_loss", {})
    sweep = [n for n in metrics.get("beta_sweep", []) if n in table]
    comp = [n for n in metrics.get("compression_sweep", []) if n in table]
    lagr = "the sign of the term in the source's eq. ({})"
    specs: list[tuple[str, str, str, str, list[tuple[str, str]]]] = [
        ("plain AE's C above the VAE's C", "C", "test_C_nats",
         "the AE pays nothing for rate, the VAE pays A for every nat of C (eq. (30))",
         [("ae", "vae")]),
        ("AAE's B below the VAE's B, by MMD²", "B", "test_B_mmd2", lagr.format(32),
         [("vae", "aae")]),
        ("AAE's B below the VAE's B, by density-ratio KL", "B", "test_B_kl_nats",
         lagr.format(32), [("vae", "aae")]),
        ("β-VAE's A rises with β", "A", "test_A_nats",
         "the weight on A relative to C, 1/β, falls (eq. (31))",
         list(zip(sweep[1:], sweep[:-1], strict=False))),
        ("β-VAE's C rises with β", "C", "test_C_nats", "the weight on C rises (eq. (31))",
         list(zip(sweep[1:], sweep[:-1], strict=False))),
        ("InfoVAE's B above the VAE's B, by MMD²", "B", "test_B_mmd2", lagr.format(33),
         [("infovae", "vae")]),
        ("InfoVAE's B above the VAE's B, by density-ratio KL", "B", "test_B_kl_nats",
         lagr.format(33), [("infovae", "vae")]),
        ("BIB-AE's B above the VAE's B, by MMD²", "B", "test_B_mmd2", lagr.format(26),
         [("bib_ae", "vae")]),
        ("BIB-AE's B above the VAE's B, by density-ratio KL", "B", "test_B_kl_nats",
         lagr.format(26), [("bib_ae", "vae")]),
        ("VAE/GAN's D below the VAE's D, by density-ratio KL", "D", "test_D_kl_nats",
         lagr.format(34), [("vae", "vae_gan")]),
        ("VAE/GAN's D below the VAE's D, by Fréchet distance", "D", "test_D_fd",
         lagr.format(34), [("vae", "vae_gan")]),
        ("BIB-AE's D below the VAE's D, by density-ratio KL", "D", "test_D_kl_nats",
         lagr.format(26), [("vae", "bib_ae")]),
        ("GAN's D below the VAE's D, by density-ratio KL", "D", "test_D_kl_nats",
         "D is all the GAN optimises (eq. (24))", [("vae", "gan")]),
        ("GAN's D below the VAE's D, by Fréchet distance", "D", "test_D_fd",
         "D is all the GAN optimises (eq. (24))", [("vae", "gan")]),
        ("compression AE's rate rises with β", "A (rate)", "test_A_nats",
         "the weight on C against the rate rises (eq. (35))",
         list(zip(comp[1:], comp[:-1], strict=False))),
        ("compression AE's C rises with β", "C", "test_C_nats",
         "the weight on C against the rate rises (eq. (35))",
         list(zip(comp[1:], comp[:-1], strict=False))),
    ]
    checks: list[dict[str, Any]] = []
    for text, term, key, basis, pairs in specs:
        if not pairs or any(r not in table for pair in pairs for r in pair):
            continue  # a model of the comparison is not trained on this dataset
        comparisons = [_compare(table, hi, lo, key) for hi, lo in pairs]
        holds, verdict = _judge(comparisons)
        rows = list(dict.fromkeys(r for pair in pairs for r in pair))
        values = {r: table[r]["metrics"][key]["mean"] for r in rows
                  if key in table.get(r, {}).get("metrics", {})}
        explanations: list[str] = []
        if holds is not True:
            for c in comparisons:
                if c is not None and c["verdict"] != "supported":
                    explanations += _explain_comparison(c, models, settling, disc)
        direction = ("lower" if " below " in text else "higher" if " above " in text
                     else "rising at every step of β")
        checks.append({
            "check": text, "term": term, "key": key, "basis": basis,
            "expectation": (f"{direction}, with the 95 % interval of every replicate-paired "
                            "difference on that side of 0"),
            "holds": holds, "verdict": verdict, "comparisons": comparisons, "values": values,
            "explanations": explanations})
    # training of the adversarial models settled
    for row in sorted(settling):
        reps = settling[row]
        holds = all(s["settled"] for s in reps.values())
        checks.append({
            "check": f"{row}'s sample score settled by the end of training", "term": "D",
            "key": "sample_fd", "basis": "our convergence rule for adversarial models",
            "expectation": (f"moved by less than {metrics['settle_tolerance']:.0%} over the last "
                            f"{metrics['settle_fraction']:.0%} of the epochs, in every replicate"),
            "holds": holds, "verdict": "supported" if holds else "contradicted",
            "comparisons": [], "values": {f"{row} (replicate {r})": s["relative_change"]
                                          for r, s in sorted(reps.items())},
            "explanations": []})
    # the estimators on known cases
    for term, cases in metrics.get("estimator_checks", {}).items():
        for case in cases.get("known_values", []):
            checks.append({
                "check": f"{term} estimator on a known case: {case['case']}", "term": term,
                "key": "kl_nats", "basis": "a closed-form value; our tolerances",
                "expectation": (f"95 % interval reaching {case['truth_nats']:.3f} ± "
                                f"{ZERO_TOLERANCE_NATS:g} nats and at most ± "
                                f"{PRECISION_NATS:g} nats wide"),
                "holds": case["holds"], "verdict": "", "comparisons": [],
                "values": {"estimate": case["mean"]}, "explanations": []})
        if "ranking" in cases:
            rk = cases["ranking"]
            checks.append({
                "check": f"{term} estimator ranks " + " < ".join(rk["order"]), "term": term,
                "key": "kl_nats", "basis": "the known order of the cases",
                "expectation": "means in that order, with disjoint 95 % intervals",
                "holds": rk["holds"], "verdict": "", "comparisons": [],
                "values": dict(zip(rk["order"], rk["means"], strict=True)),
                "explanations": []})
    # novelty detection: the score is chosen on the validation pair, judged on the test pair
    nov = metrics.get("novelty_choice")
    if metrics.get("dataset", "mnist") == "mnist" and nov is not None:
        ci = nov["test"]["interval_95"]
        holds = None if ci is None else (True if ci[0] > NOVELTY_AUROC
                                         else False if ci[1] < NOVELTY_AUROC else None)
        checks.append({
            "check": f"novelty detection: the best score has test AUROC above {NOVELTY_AUROC:g}",
            "term": "C, A, D", "key": "auroc",
            "basis": "our expectation of a useful novelty score (the source gives no number)",
            "expectation": (f"the 95 % interval of the test AUROC of the score chosen on the "
                            f"validation pair above {NOVELTY_AUROC:g}"),
            "holds": holds, "verdict": "", "comparisons": [],
            "values": {f"{nov['row']}/{nov['score']}": nov["test"]["mean"]},
            "explanations": ([] if holds is not False and ci is not None else
                             [f"test AUROC {_fmt(nov['test']['mean'])}, 95 % interval "
                              f"{_interval_text(ci)}"])})
    return checks


def _novelty_choice(novelty: Mapping[str, Any], models: Mapping[str, Any]
                    ) -> dict[str, Any] | None:
    """The (row, score) with the highest mean validation AUROC, and its test AUROC over the
    replicates (mean and 95 % interval)."""
    by: dict[tuple[str, str], dict[str, list[float]]] = {}
    for name, scores in novelty.items():
        row = models[name]["row"]
        for k, v in scores.items():
            if k.startswith("auroc_") and k.endswith("_val"):
                score = k[len("auroc_"):-len("_val")]
                d = by.setdefault((row, score), {"val": [], "test": []})
                d["val"].append(v)
                d["test"].append(scores[f"auroc_{score}"])
    if not by:
        return None
    (row, score), d = max(by.items(), key=lambda kv: sum(kv[1]["val"]) / len(kv[1]["val"]))
    return {"row": row, "score": score, "val_mean": sum(d["val"]) / len(d["val"]),
            "test": mean_interval(d["test"]),
            "choice": "the (model, score) with the highest mean validation AUROC"}


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
    """The training subset (its last ``n_val`` images are the validation split), the test
    set, and the other dataset's test set and a random ``n_novelty`` of its training images
    (the novelty pair's validation out-set). Principal components: of training images only."""
    x_train, y_train = load_tensors(dataset, "train")
    x_test, _ = load_tensors(dataset, "test")
    other = OTHER_DATASET[dataset]
    x_other, _ = load_tensors(other, "test")
    x_other_train, y_other_train = load_tensors(other, "train")
    gen = torch.Generator().manual_seed(_stable_seed("subset", dataset, seed))
    x_train, _ = subset(x_train, y_train, config.n_train, gen)
    perm = torch.randperm(x_train.shape[0], generator=gen)
    images = to_unit_float(x_train[perm])
    train, val = images[: -config.n_val], images[-config.n_val:]
    if train.shape[0] < config.batch_size:
        raise InvalidParameterError(
            f"{train.shape[0]} training images after the {config.n_val} validation images are "
            f"carved off: fewer than one batch of {config.batch_size}")
    x_other_val, _ = subset(x_other_train, y_other_train, config.n_novelty, gen)
    mean, comps = _pca(train[: config.pca_fit], config.pca_dim)
    return _Data(train, val, to_unit_float(x_test), to_unit_float(x_other_val),
                 to_unit_float(x_other), mean, comps)


def _schedules(model: Model, config: GlassesConfig) -> dict[str, Schedule]:
    """One per-step schedule per optimizer, peaking at the rate :func:`build_optimizers` gives
    it (the GAN's generator and the image discriminator at ``adv_lr``, the rest at ``lr``)."""
    peaks = {"main": config.adv_lr if model.entry.kind == "gan" else config.lr,
             "x_disc": config.adv_lr, "z_disc": config.lr}
    return {name: Schedule(config.schedule_kind, peak_lr=peaks[name])
            for name in build_optimizers(model, config)}


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
    tags = {"model": name, "row": entry.row, "replicate": entry.replicate, "kind": entry.kind}
    with isolated_rng(ctx.device):
        start = {**tags, "epoch": 0, **_trajectory_point(model, data, cfg, ctx.device,
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
        epochs=cfg.adv_epochs if entry.adversarial else cfg.epochs,
        seed=model_seed,
        schedule=_schedules(model, cfg),
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
        "history": [start] + [{**tags, **row} for row in history],
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


def estimator_checks(data: _Data, config: GlassesConfig, seed: int) -> dict[str, Any]:
    """The B and D estimators on cases whose answer is known, with the same settings and
    repeats as the models' estimates.

    D (principal-component features of test images, ``n_divergence`` per set, disjoint draws):
    data against data (KL = 0); data against a half-and-half mixture of data and uniform-noise
    images (the supports are disjoint, so KL(p ‖ ½p + ½r) = ln 2 exactly); data against noise
    (KL = ∞: the estimate should be the largest). B (codes of dimension ``latent_dim``): N(0, I)
    against N(0, I) (KL = 0, MMD² = 0) and against N(m, I) with ‖m‖²/2 = 1 nat.
    """
    n, d_lat = config.n_divergence, config.latent_dim
    image_shape = data.test.shape[1:]

    def halves(g: torch.Generator) -> tuple[Tensor, Tensor]:
        perm = torch.randperm(data.test.shape[0], generator=g)
        k = min(n, data.test.shape[0] // 2)
        return data.test[perm[:k]], data.test[perm[k:2 * k]]

    def noise(k: int, g: torch.Generator) -> Tensor:
        return torch.rand(k, *image_shape, generator=g)

    def same(_: Tensor, __: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        a, b = halves(g)
        return data.features(a), data.features(b)

    def mixture(_: Tensor, __: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        a, b = halves(g)
        k = b.shape[0] // 2
        mixed = torch.cat([b[:k], noise(b.shape[0] - k, g)])
        return data.features(a), data.features(mixed)

    def pure(_: Tensor, __: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        a, _b = halves(g)
        return data.features(a), data.features(noise(a.shape[0], g))

    shift = torch.zeros(d_lat)
    shift[0] = math.sqrt(2.0 * B_SHIFT_NATS)

    def prior_pair(offset: Tensor) -> Callable[[Tensor, Tensor, torch.Generator],
                                               tuple[Tensor, Tensor]]:
        def draw(_: Tensor, __: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
            return torch.randn(n, d_lat, generator=g), torch.randn(n, d_lat, generator=g) + offset
        return draw

    empty = torch.empty(0)
    d_cases = {
        "data vs data": (same, 0.0),
        "data vs ½ data + ½ noise": (mixture, LN2),
        "data vs noise": (pure, None),
    }
    out: dict[str, Any] = {"D": {"cases": {}, "known_values": []},
                           "B": {"cases": {}, "known_values": []}}
    for k, (case, (draw, truth)) in enumerate(d_cases.items()):
        stats = repeated_divergences(empty, empty, config, _stable_seed(seed, "D-check", k),
                                     draw=draw)
        out["D"]["cases"][case] = {"truth_nats": truth, **stats}
        if truth is not None:
            out["D"]["known_values"].append(_known_value_check(case, stats, truth))
    means = [out["D"]["cases"][c]["kl_nats"] for c in d_cases]
    cis = [out["D"]["cases"][c]["kl_nats_ci95"] for c in d_cases]
    ordered = all(b > a for a, b in zip(means[:-1], means[1:], strict=True))
    disjoint = all(ci_a is not None and ci_b is not None and ci_a[1] < ci_b[0]
                   for ci_a, ci_b in zip(cis[:-1], cis[1:], strict=True))
    out["D"]["ranking"] = {"order": list(d_cases), "means": means,
                           "holds": bool(ordered and disjoint)}
    b_cases = {"N(0, I) vs N(0, I)": (torch.zeros(d_lat), 0.0),
               f"N(0, I) vs N(m, I), ‖m‖²/2 = {B_SHIFT_NATS:g}": (shift, B_SHIFT_NATS)}
    for k, (case, (offset, truth)) in enumerate(b_cases.items()):
        stats = repeated_divergences(empty, empty, config, _stable_seed(seed, "B-check", k),
                                     draw=prior_pair(offset), mmd=True)
        out["B"]["cases"][case] = {"truth_nats": truth, **stats}
        out["B"]["known_values"].append(_known_value_check(case, stats, truth))
    return out


def _estimator_checks_cached(ctx: _Context, experiment: str, data: _Data) -> dict[str, Any]:
    path = ctx.checkpoint_dir(experiment) / "estimator_checks.done"
    fingerprint = ctx.fingerprint(experiment, part="estimator_checks")
    if ctx.resume and path.exists():
        try:
            return load_checkpoint(path, fingerprint=fingerprint)
        except CheckpointError:
            pass
    with isolated_rng(ctx.device):
        result = estimator_checks(data, ctx.config, _stable_seed("estimators", experiment,
                                                                  ctx.seed))
    save_checkpoint(path, result, fingerprint=fingerprint)
    return result


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
            if entry.replicate == 0:  # the pictures of the first replicate
                rows += [_tile_row(result["pictures"][0]), _tile_row(result["pictures"][1])]
                row_names += [f"{entry.row}/recon", f"{entry.row}/samples"]
        test = data.test[: cfg.n_eval].reshape(min(cfg.n_eval, data.test.shape[0]), -1)
        c_max = bernoulli_log_prob(test, torch.logit(test.clamp(1e-6, 1 - 1e-6)))
        rows_0 = [e for e in entries if e.replicate == 0]
        rec.metrics.update({
            "dataset": experiment,
            "novelty_out_dataset": OTHER_DATASET[experiment],
            "models": models,
            "table": aggregate_rows(models),
            "replicates": cfg.replicates,
            "beta_sweep": [e.row for e in rows_0 if e.kind == "beta_vae"],
            "compression_sweep": [e.row for e in rows_0 if e.kind == "shannon_ae"],
            "novelty": novelty,
            "novelty_choice": _novelty_choice(novelty, models),
            "test_C_max_nats": float(c_max.mean()),
            "n_train": int(data.train.shape[0]),
            "n_val": int(data.val.shape[0]),
            "image_rows": row_names,
            "estimator_checks": _estimator_checks_cached(ctx, experiment, data),
            "sample_score_settling": sample_score_settling(rec.history, cfg),
            "settle_fraction": cfg.settle_fraction,
            "settle_tolerance": cfg.settle_tolerance,
            "latent_disc_last_loss": _last_disc_loss(rec.history),
        })
        rec.metrics["checks"] = reproduction_checks(rec.metrics)
        assert rec.path is not None
        rec.save_artifact("images", _png_bytes(np.concatenate(rows, axis=0)), "png")
    return rec.path


def make_context(**run_args: Any) -> _Context:
    """The run's context (the runner protocol of :mod:`ibcore.tasks`)."""
    return prepare_run(_Context, PROFILES, EXPERIMENTS, **run_args)


def plan(ctx: _Context, experiments: Sequence[str]) -> list[Task]:
    """One task per model (and replicate) of each experiment's zoo, the slowest (adversarial)
    models first so that two workers finish together, and one task per experiment for the
    estimators' known cases."""
    tasks = []
    for name in experiments:
        entries = sorted(zoo(ctx.config, name), key=lambda e: not e.adversarial)
        tasks += [Task(f"{name}/{entry.name}", (name,), (name, entry)) for entry in entries]
    tasks += [Task(f"{name}/estimator_checks", (name,), (name, None)) for name in experiments]
    return tasks


def run_task(ctx: _Context, task: Task) -> None:
    experiment, entry = task.spec
    data = ctx.get_data(experiment)
    if entry is None:
        _estimator_checks_cached(ctx, experiment, data)
    else:
        _train_and_measure(ctx, experiment, entry, data)


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
