r"""Runner of the *entropy-estimator IB* chapter (``entropy_estimator_ib.md``, Kirsch, Lyle & Gal).

Every model shares one deterministic residual encoder (:mod:`ibcore.models.resnet`) with a
``K``-dim latent, one optimiser and one per-step schedule that decays to near zero
(:mod:`ibcore.schedules`; the ``cpu`` profile: SGD with Nesterov momentum and weight decay under
a one-cycle schedule, with pad-and-shift crops and left–right flips). They differ only in the
objective:

* ``ce``: cross-entropy through a linear classifier on the latent (the source's baseline);
* ``ce_dropout``: the same with dropout on the latent before the classifier (the source uses
  DropConnect; we use dropout, the simpler regulariser of the same family);
* ``ib-b<β''>-noise`` / ``ib-b<β''>-nonoise``: eq. 10, :math:`\hat H[Z|Y] + (\beta''-1)\hat
  H[Z]` by the kNN estimator on each batch (:func:`ibcore.objectives.entropy_ib.entropy_ib_loss`),
  with and without zero-entropy noise. No decoder is trained with the encoder.

Every model is trained ``replicates`` times (replicate ``r`` changes the initialisation and the
batch order, not the data split), so differences between models come with replicate-paired 95 %
intervals (:mod:`ibcore.replicates`).

Three splits: a validation split of ``val_subset`` images carved from the training images, the
``train_subset`` training images, and the test split. Everything chosen — each model's decoder,
"the best IB model" — is chosen on validation; the per-epoch learning curves and the
information plane are measured on validation too. The test split is read once per model, after
training, for the numbers reported.

After training, decoders are fitted on the frozen latents of the training images: a per-class
Gaussian mixture (:mod:`ibcore.decoders`) for every model, the ResFC decoder for IB models, and
the CE models keep their own linear head. Noise models are fitted on :math:`f(x) + \epsilon`
(the latent they were trained with) and evaluated on :math:`f(x)` (the noise's mean). Each model
is attacked through every decoder it has (:mod:`ibcore.adversarial`): FGSM over an ε grid and
PGD with a random start at a few ε, on the same test images for every model.

Per epoch, each IB model gets a point of the information plane on a validation subset: the
preserved information :math:`I[X;Z] = H[Z]` by the kNN estimator (eq. 11) and the residual
information :math:`H[Y|Z]`, bounded above by the cross-entropy of a small ResFC fitted for a
few steps on one half of that subset (encoder frozen) and scored on the other half.

Three experiments, one result file each: ``sweep`` (every objective and β''), ``optimizer``
(cross-entropy and the smallest β'' with the other optimiser) and ``epochs`` (the same two
trained longer, from the same initialisation). Each model's training is checkpointed
(``<key>.pt``, exact resume) and its evaluations cached (``<key>.eval.json``), so ``--resume``
skips finished models.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ibcore.adversarial import fgsm_accuracy, pgd_accuracy
from ibcore.atomic import atomic_write_json
from ibcore.checkpoint import fingerprint_of
from ibcore.data import load_tensors, random_shift_flip, subset, to_unit_float
from ibcore.data.vision import DATASETS
from ibcore.decoders import GaussianMixtureDecoder, fit_gaussian_mixture
from ibcore.device import autocast, check_amp, cudnn_benchmark, isolated_rng, seed_everything
from ibcore.errors import (
    CheckpointError,
    InvalidParameterError,
    NonFiniteError,
    ShapeError,
    UnknownNameError,
)
from ibcore.estimators.knn_entropy import (
    add_zero_entropy_noise,
    conditional_knn_entropy,
    knn_entropy,
)
from ibcore.models.init import init_from_generator
from ibcore.models.resnet import ResFC, ResNetEncoder
from ibcore.objectives.entropy_ib import check_beta2, entropy_ib_loss
from ibcore.profiles import as_dict, identity_dict
from ibcore.projection import pca_2d
from ibcore.replicates import aggregate_rows, paired_difference
from ibcore.runners.context import RunContext, prepare_run
from ibcore.schedules import Schedule
from ibcore.tasks import Task, run_experiments
from ibcore.training import Trainer
from ibcore.validation import check_int, check_weight

CHAPTER = "entropy_ib"
EXPERIMENTS = ("sweep", "optimizer", "epochs")
KINDS = ("ce", "ce_dropout", "ib")

__all__ = [
    "CHAPTER",
    "EXPERIMENTS",
    "KINDS",
    "PROFILES",
    "EntropyIBConfig",
    "ModelSpec",
    "build_optimizer",
    "curve_key",
    "decoders_of",
    "encode",
    "experiment_specs",
    "fit_resfc",
    "load_data",
    "model_specs",
    "plane_point",
    "run",
]


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class EntropyIBConfig:
    """Settings of the chapter's experiments (one profile = one instance)."""

    dataset: str = "fashion_mnist"
    train_subset: int | None = 30000
    val_subset: int = 5000  # carved from the training split, disjoint from train_subset
    test_subset: int | None = None
    plane_subset: int = 1000  # validation images of the per-epoch information plane
    epoch_fit_subset: int = 5000  # training images the per-epoch Gaussian mixture is fitted on
    # encoder
    widths: tuple[int, ...] = (16, 32, 64)
    blocks: tuple[int, ...] = (1, 1, 1)
    latent_dim: int = 64
    # training: the same optimiser, schedule and augmentation for every model
    batch_size: int = 128
    epochs: int = 10
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum) | "adam"
    lr: float = 0.1  # the schedule's peak rate
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule_kind: str = "one_cycle"
    warmup_fraction: float = 0.25
    augment_pad: int = 2  # pad-and-shift crops of up to this many pixels (0: none)
    augment_flip: bool = True
    replicates: int = 3
    checkpoint_every_steps: int = 50
    # the ``optimizer`` experiment: cross-entropy and the first β'' with noise trained again with
    # this optimiser (same schedule shape, augmentation and epochs), to see whether the gap
    # between the objectives is the optimiser's
    ablation_optimizer: str = "adam"
    ablation_lr: float = 3e-3
    # the ``epochs`` experiment: cross-entropy and the first β'' with noise trained for
    # ``long_epochs`` (same recipe, the schedule stretched over the longer run), for the first
    # ``long_replicates`` seeds, to measure what training longer would change
    long_epochs: int = 20
    long_replicates: int = 2
    # objectives
    k: int = 1
    betas: tuple[float, ...] = (0.05, 0.2, 0.5)
    nonoise_betas: tuple[float, ...] = (0.2,)
    dropout_baseline: bool = True
    dropout: float = 0.3
    # decoders (source §5: ResFC with 1024 units and 5 blocks)
    gmm_ridge: float = 1e-3
    gmm_shared: bool = False
    resfc_width: int = 256
    resfc_blocks: int = 5
    resfc_steps: int = 400
    resfc_batch_size: int = 128
    resfc_lr: float = 1e-3
    # per-epoch information plane (ResFC fitted on half of the plane subset)
    plane_width: int = 128
    plane_blocks: int = 2
    plane_steps: int = 60
    plane_batch_size: int = 250
    # attacks (source Fig. 1), on the first attack_subset test images, through every decoder
    fgsm_epsilons: tuple[float, ...] = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)
    pgd_epsilons: tuple[float, ...] = (0.01, 0.02)
    pgd_steps: int = 10
    pgd_step_size_factor: float = 2.5  # step size = factor · ε / steps (Madry et al.)
    attack_subset: int = 1000
    pca_points: int = 300
    # GPU speed switches (off in every profile; see ibcore.device): bf16 autocast of the
    # encoder's forward pass in training (the kNN entropies, their search and the losses stay
    # in float32/float64), and cuDNN's algorithm search (not bit-reproducible)
    amp: str | None = None
    cudnn_benchmark: bool = False

    def __post_init__(self) -> None:
        check_amp(self.amp)
        if self.dataset not in DATASETS:
            raise UnknownNameError(
                f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}"
            )
        for name in ("optimizer", "ablation_optimizer"):
            if getattr(self, name) not in OPTIMIZERS:
                raise UnknownNameError(f"unknown {name} {getattr(self, name)!r}; choose one of "
                                       f"{', '.join(OPTIMIZERS)}")
        for name in ("latent_dim", "epochs", "checkpoint_every_steps", "resfc_width",
                     "resfc_steps", "plane_width", "plane_steps", "pca_points", "replicates",
                     "pgd_steps", "long_epochs", "long_replicates"):
            check_int(name, getattr(self, name))
        for name in ("resfc_blocks", "plane_blocks", "augment_pad"):
            check_int(name, getattr(self, name), low=0)
        if self.train_subset is not None:
            check_int("train_subset", self.train_subset, low=2)
        if self.test_subset is not None:
            check_int("test_subset", self.test_subset, low=2)
        for name in ("val_subset", "batch_size", "resfc_batch_size", "plane_batch_size",
                     "plane_subset", "epoch_fit_subset", "attack_subset"):
            check_int(name, getattr(self, name), low=2)
        check_int("k", self.k)
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise InvalidParameterError("widths and blocks need one entry per encoder stage")
        for name in ("lr", "ablation_lr", "resfc_lr", "gmm_ridge", "pgd_step_size_factor"):
            check_weight(name, getattr(self, name), low=0.0, low_inclusive=False)
        check_weight("momentum", self.momentum, low=0.0, high=1.0, high_inclusive=False)
        check_weight("weight_decay", self.weight_decay)
        check_weight("dropout", self.dropout, low=0.0, high=1.0, high_inclusive=False)
        self.schedule  # noqa: B018  (refuses an unknown kind or a bad warm-up fraction)
        if not self.betas:
            raise InvalidParameterError("betas is empty; give at least one β'' in [0, 1)")
        for b in (*self.betas, *self.nonoise_betas):
            check_beta2(b)
        for e in (*self.fgsm_epsilons, *self.pgd_epsilons):
            check_weight("attack ε", e)
        if not self.pgd_epsilons or min(self.pgd_epsilons) <= 0:
            raise InvalidParameterError("pgd_epsilons needs at least one ε > 0 (and no ε = 0)")

    @property
    def schedule(self) -> Schedule:
        """The per-step learning-rate schedule every model trains with."""
        return Schedule(self.schedule_kind, peak_lr=self.lr, warmup_fraction=self.warmup_fraction)

    def optimizer_of(self, spec: ModelSpec) -> tuple[str, float]:
        """The optimiser and peak rate of a model: the profile's, or the ablation's."""
        if spec.optimizer is None:
            return self.optimizer, self.lr
        return spec.optimizer, self.ablation_lr

    def training_view(self) -> dict[str, Any]:
        """The settings a trained encoder depends on (its checkpoint fingerprint)."""
        keys = ("dataset", "train_subset", "val_subset", "plane_subset", "epoch_fit_subset",
                "widths", "blocks", "latent_dim", "batch_size", "epochs", "optimizer", "lr",
                "momentum", "weight_decay", "schedule_kind", "warmup_fraction", "augment_pad",
                "augment_flip", "k", "dropout", "gmm_ridge", "gmm_shared", "plane_width",
                "plane_blocks", "plane_steps", "plane_batch_size", "resfc_lr")
        view = {key: getattr(self, key) for key in keys}
        if self.amp is not None:  # absent when off
            view["amp"] = self.amp
        return view


_CPU = EntropyIBConfig()

PROFILES: dict[str, EntropyIBConfig] = {
    "smoke": dataclasses.replace(
        _CPU,
        train_subset=320,
        val_subset=120,
        test_subset=160,
        plane_subset=120,
        epoch_fit_subset=320,
        widths=(4, 8),
        blocks=(1, 1),
        latent_dim=8,
        batch_size=64,
        epochs=2,
        lr=0.05,
        betas=(0.2, 0.8),
        nonoise_betas=(0.2,),
        dropout_baseline=False,
        replicates=2,
        long_epochs=3,
        long_replicates=1,
        resfc_width=32,
        resfc_blocks=1,
        resfc_steps=20,
        resfc_batch_size=64,
        plane_width=16,
        plane_blocks=1,
        plane_steps=10,
        plane_batch_size=60,
        fgsm_epsilons=(0.0, 0.05, 0.1),
        pgd_epsilons=(0.05,),
        pgd_steps=2,
        attack_subset=100,
        pca_points=60,
    ),
    "cpu": _CPU,
    # The source's §5 protocol on CIFAR-10: ResNet18-sized encoder, K = 256, Adam at 5e-4 for
    # 150 epochs, ResFC 1024 × 5. The source lowers the rate by √0.1 after 10-epoch plateaus;
    # here the same peak rate decays by a cosine per step, as in every profile.
    "paper": dataclasses.replace(
        _CPU,
        dataset="cifar10",
        train_subset=45000,
        val_subset=5000,
        test_subset=None,
        plane_subset=5000,
        widths=(64, 128, 256, 512),
        blocks=(2, 2, 2, 2),
        latent_dim=256,
        epochs=150,
        optimizer="adam",
        lr=5e-4,
        weight_decay=0.0,
        ablation_optimizer="sgd",  # the other optimiser: SGD with Nesterov momentum
        ablation_lr=0.1,
        schedule_kind="warmup_cosine",
        warmup_fraction=0.02,
        augment_pad=4,
        replicates=2,
        checkpoint_every_steps=200,
        betas=(0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
        nonoise_betas=(0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
        resfc_width=1024,
        resfc_blocks=5,
        resfc_steps=20000,
        resfc_batch_size=256,
        plane_width=1024,
        plane_blocks=5,
        plane_steps=2000,
        plane_batch_size=500,
        fgsm_epsilons=(0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
        pgd_epsilons=(0.002, 0.01),
        pgd_steps=20,
        attack_subset=10000,
        pca_points=500,
    ),
}


# ---------------------------------------------------------------------------------------------
# models to train
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One encoder to train: its objective (``kind``), β'', whether noise is injected, and its
    replicate (training seed) number."""

    kind: str
    beta2: float | None = None
    noise: bool = True
    replicate: int = 0
    optimizer: str | None = None  # None: the profile's optimiser
    epochs: int | None = None  # None: the profile's epochs

    def __post_init__(self) -> None:
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise UnknownNameError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        if self.kind not in KINDS:
            raise UnknownNameError(f"unknown model kind {self.kind!r}; choose one of {KINDS}")
        if self.kind == "ib":
            if self.beta2 is None:
                raise InvalidParameterError("an IB model needs beta2 = β'' in [0, 1)")
            check_beta2(self.beta2)
        elif self.beta2 is not None:
            raise InvalidParameterError(f"a {self.kind} model takes no beta2")
        check_int("replicate", self.replicate, low=0)
        if self.epochs is not None:
            check_int("epochs", self.epochs)

    @property
    def row(self) -> str:
        """The table row the model belongs to (its key without the replicate), e.g.
        ``ib-b0p2-noise``."""
        opt = f"-{self.optimizer}" if self.optimizer else ""
        opt += f"-e{self.epochs}" if self.epochs else ""
        if self.kind != "ib":
            return self.kind.replace("_", "-") + opt
        return (f"ib-b{self.beta2:g}".replace(".", "p") + ("-noise" if self.noise else "-nonoise")
                + opt)

    @property
    def key(self) -> str:
        """A file-name-safe identity: the row, then ``-r<n>`` for replicates after the first."""
        return self.row + (f"-r{self.replicate}" if self.replicate else "")

    @property
    def seed_key(self) -> str:
        """The key the model's seed is drawn from: a longer run of a model starts from the same
        initialisation and batch order as the model itself, so the two pair by seed."""
        return dataclasses.replace(self, epochs=None).key

    @property
    def label(self) -> str:
        opt = {None: "", "adam": ", Adam", "sgd": ", SGD"}[self.optimizer]
        opt += f", {self.epochs} epochs" if self.epochs else ""
        if self.kind == "ce":
            return "cross-entropy" + (f" ({opt[2:]})" if opt else "")
        if self.kind == "ce_dropout":
            return "cross-entropy + dropout" + (f" ({opt[2:]})" if opt else "")
        notes = ("" if self.noise else "no noise") + opt
        return f"IB β''={self.beta2:g}" + (f" ({notes.lstrip(', ')})" if notes else "")


def model_specs(cfg: EntropyIBConfig) -> dict[str, ModelSpec]:
    """``{key: spec}``: for every replicate, the baselines, every β'' with noise and every
    no-noise β''."""
    specs = []
    for r in range(cfg.replicates):
        specs.append(ModelSpec("ce", replicate=r))
        if cfg.dropout_baseline:
            specs.append(ModelSpec("ce_dropout", replicate=r))
        specs += [ModelSpec("ib", float(b), True, r) for b in cfg.betas]
        specs += [ModelSpec("ib", float(b), False, r) for b in cfg.nonoise_betas]
    return {s.key: s for s in specs}


def experiment_specs(cfg: EntropyIBConfig, experiment: str) -> dict[str, ModelSpec]:
    """``{key: spec}`` of an experiment: ``sweep`` (:func:`model_specs`); ``optimizer``
    (cross-entropy and the first β'' with noise, trained with the ablation's optimiser);
    ``epochs`` (the same two, trained ``long_epochs`` for the first ``long_replicates`` seeds)."""
    if experiment == "sweep":
        return model_specs(cfg)
    if experiment == "optimizer":
        extra: dict[str, Any] = {"optimizer": cfg.ablation_optimizer}
        replicates = cfg.replicates
    elif experiment == "epochs":
        extra = {"epochs": cfg.long_epochs}
        replicates = min(cfg.long_replicates, cfg.replicates)
    else:
        raise UnknownNameError(f"unknown experiment {experiment!r}; choose from {EXPERIMENTS}")
    specs = []
    for r in range(replicates):
        specs.append(ModelSpec("ce", replicate=r, **extra))
        specs.append(ModelSpec("ib", float(cfg.betas[0]), True, r, **extra))
    return {s.key: s for s in specs}


def decoders_of(spec: ModelSpec) -> tuple[str, ...]:
    """The decoders a model is evaluated and attacked through: its own linear head and a
    Gaussian mixture on its features (CE models); the Gaussian mixture and the ResFC (IB)."""
    return ("head", "gmm") if spec.kind != "ib" else ("gmm", "resfc")


# ---------------------------------------------------------------------------------------------
# data and small helpers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Data:
    train_x: Tensor  # uint8 [N, C, H, W]
    train_y: Tensor
    val_x: Tensor  # carved from the training split
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    channels: int
    classes: int


def load_data(
    cfg: EntropyIBConfig,
    seed: int,
    root: str | Path | None = None,
    *,
    verify_checksums: bool = True,
) -> _Data:
    """The configured dataset as ``uint8 [N, C, H, W]`` tensors: a validation split of
    ``val_subset`` images and a disjoint training subset, both drawn from the training split by
    ``seed``, and the test split (or a subset of it).

    ``verify_checksums=False`` is for tests that read a CIFAR-10 stand-in
    (see :func:`ibcore.data.load_tensors`).
    """
    info = DATASETS[cfg.dataset]
    kwargs: dict[str, Any] = {"verify_checksums": verify_checksums}
    if root is not None:
        kwargs["root"] = root
    tx, ty = load_tensors(cfg.dataset, "train", **kwargs)
    ex, ey = load_tensors(cfg.dataset, "test", **kwargs)
    gen = torch.Generator().manual_seed(seed * 7919 + 29)
    n = tx.shape[0]
    if cfg.val_subset >= n:
        raise InvalidParameterError(
            f"val_subset={cfg.val_subset} leaves no training images out of {n}"
        )
    perm = torch.randperm(n, generator=gen)
    val_idx = perm[: cfg.val_subset]
    rest = perm[cfg.val_subset :]
    train_idx = rest if cfg.train_subset is None else rest[: cfg.train_subset]
    ex, ey = subset(ex, ey, cfg.test_subset, gen)
    return _Data(tx[train_idx].contiguous(), ty[train_idx], tx[val_idx].contiguous(),
                 ty[val_idx], ex.contiguous(), ey, info.channels, info.classes)


@torch.no_grad()
def encode(encoder: nn.Module, images: Tensor, *, device: torch.device,
           batch_size: int = 500) -> Tensor:
    """Latents ``f(x)`` (float32, CPU) of stored ``uint8`` images; the caller sets eval mode."""
    parts = [encoder(to_unit_float(images[i : i + batch_size].to(device))).float().cpu()
             for i in range(0, images.shape[0], batch_size)]
    return torch.cat(parts)


def fit_resfc(
    z: Tensor,
    y: Tensor,
    classes: int,
    *,
    width: int,
    blocks: int,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[ResFC, float]:
    """Fit a :class:`~ibcore.models.resnet.ResFC` to ``(z, y)`` with Adam for ``steps`` steps.

    Batches are drawn with replacement from ``generator``. Returns the model (eval mode) and
    its mean cross-entropy on all of ``(z, y)`` in nats — an upper bound on
    :math:`H[Y|Z]` of that sample when ``(z, y)`` is the evaluation set itself.
    """
    if z.dim() != 2 or y.shape != (z.shape[0],):
        raise ShapeError(f"z must be [N, K] and y [N], got {tuple(z.shape)}, {tuple(y.shape)}")
    model = ResFC(z.shape[1], classes, width=width, blocks=blocks, generator=generator).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    zz, yy = z.to(device), y.to(device)
    b = min(batch_size, z.shape[0])
    model.train()
    for _ in range(check_int("steps", steps)):
        idx = torch.randint(0, z.shape[0], (b,), generator=generator).to(device)
        loss = F.cross_entropy(model(zz[idx]), yy[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        ce = float(F.cross_entropy(model(zz), yy))
    return model, ce


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(1).cpu() == y).float().mean())


def plane_point(
    z: Tensor, y: Tensor, cfg: EntropyIBConfig, classes: int, generator: torch.Generator,
    device: torch.device,
) -> dict[str, float]:
    """One information-plane point of held-out latents ``z`` (already noised if the model uses
    noise), in nats.

    Preserved information ``I[X;Z] = H[Z]``: the kNN estimate (eq. 11) on all of ``z``
    (``h_z_nats``); also ``H[Z|Y]`` (``h_z_given_y_nats``). Residual information ``H[Y|Z]``: a
    small ResFC is fitted on the first half of ``(z, y)`` and its cross-entropy measured on the
    second half (``h_y_given_z_bound_nats``) — an upper bound on ``H[Y|Z]`` (in expectation)
    that a decoder cannot lower by memorising the points it is scored on. (The source fits and
    scores on the same test set.)
    """
    n = z.shape[0]
    if n < 4:
        raise ShapeError(f"the information plane needs at least 4 points, got {n}")
    half = n // 2
    model, _ = fit_resfc(z[:half], y[:half], classes, width=cfg.plane_width,
                         blocks=cfg.plane_blocks, steps=cfg.plane_steps,
                         batch_size=cfg.plane_batch_size, lr=cfg.resfc_lr, generator=generator,
                         device=device)
    with torch.no_grad():
        ce = float(F.cross_entropy(model(z[half:].to(device)), y[half:].to(device)))
    zd = z.double()
    return {"h_z_nats": float(knn_entropy(zd, k=cfg.k)),
            "h_z_given_y_nats": float(conditional_knn_entropy(zd, y, k=cfg.k)),
            "h_y_given_z_bound_nats": ce}


# ---------------------------------------------------------------------------------------------
# the runs
# ---------------------------------------------------------------------------------------------


@dataclass
class _Context(RunContext):
    chapter: ClassVar[str] = CHAPTER

    data: _Data | None = None
    data_root: Path | None = None
    verify_checksums: bool = True
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get_data(self) -> _Data:
        if self.data is None:
            self.data = load_data(self.config, self.seed, self.data_root,
                                  verify_checksums=self.verify_checksums)
        return self.data

    def model_seed(self, spec: ModelSpec) -> int:
        return int(fingerprint_of({"seed": self.seed, "model": spec.seed_key})[:8], 16)


def _generator(seed: int, *salt: int) -> torch.Generator:
    value = seed
    for s in salt:
        value = (value * 1_000_003 + s) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


def _build(cfg: EntropyIBConfig, data: _Data, spec: ModelSpec, gen: torch.Generator
           ) -> dict[str, nn.Module]:
    enc = ResNetEncoder(data.channels, latent_dim=cfg.latent_dim, widths=cfg.widths,
                        blocks=cfg.blocks, generator=gen)
    modules: dict[str, nn.Module] = {"encoder": enc}
    if spec.kind != "ib":
        p = cfg.dropout if spec.kind == "ce_dropout" else 0.0
        head = nn.Linear(cfg.latent_dim, data.classes)
        init_from_generator(gen, head)
        modules["head"] = nn.Sequential(nn.Dropout(p), head)
    return modules


def build_optimizer(cfg: EntropyIBConfig, params: list[nn.Parameter],
                    spec: ModelSpec | None = None) -> torch.optim.Optimizer:
    """The optimiser of a model (the profile's, or the ablation's for a spec that names one)
    over ``params``; its rate is then set per step by the schedule."""
    name, lr = (cfg.optimizer, cfg.lr) if spec is None else cfg.optimizer_of(spec)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=True,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def _fit_gmm(cfg: EntropyIBConfig, spec: ModelSpec, z: Tensor, y: Tensor, classes: int,
             gen: torch.Generator) -> GaussianMixtureDecoder:
    """The Gaussian-mixture decoder of training latents ``z`` (noised for a noise model)."""
    fit_z = add_zero_entropy_noise(z, gen) if spec.kind == "ib" and spec.noise else z
    return fit_gaussian_mixture(fit_z, y, classes, ridge=cfg.gmm_ridge, shared=cfg.gmm_shared)


def _train(ctx: _Context, spec: ModelSpec, folder: Path) -> tuple[dict[str, nn.Module], dict]:
    """Train one encoder (resuming its checkpoint when asked); return modules and evals."""
    cfg, data, dev = ctx.config, ctx.get_data(), ctx.device
    seed = ctx.model_seed(spec)
    modules = {k: m.to(dev) for k, m in _build(cfg, data, spec, torch.Generator()
                                                .manual_seed(seed)).items()}
    params = [p for m in modules.values() for p in m.parameters()]
    opt = build_optimizer(cfg, params, spec)
    enc = modules["encoder"]
    plane_y = data.val_y[: cfg.plane_subset]
    fit_x = data.train_x[: cfg.epoch_fit_subset]
    fit_y = data.train_y[: cfg.epoch_fit_subset]

    def step_fn(batch: tuple[Tensor, ...], step: int) -> dict[str, Tensor]:
        x, y = to_unit_float(batch[0]), batch[1]
        if cfg.augment_pad or cfg.augment_flip:  # drawn from the checkpointed global RNG
            x = random_shift_flip(x, cfg.augment_pad, flip=cfg.augment_flip)
        with autocast(dev, cfg.amp):
            z_hat = enc(x)
            logits_amp = modules["head"](z_hat) if spec.kind != "ib" else None
        z_hat = z_hat.float()  # the kNN estimator and its exact search stay in full precision
        if spec.kind == "ib":
            terms = entropy_ib_loss(z_hat, y, float(spec.beta2), noise=spec.noise, k=cfg.k,
                                    small_classes="skip")
            loss = terms["loss"]
            out = {"loss": loss.detach(), "h_z_nats": terms["h_z"],
                   "h_z_given_y_nats": terms["h_z_given_y"],
                   "skipped_classes": terms["skipped_classes"]}
        else:
            assert logits_amp is not None
            logits = logits_amp.float()
            loss = F.cross_entropy(logits, y)
            out = {"loss": loss.detach(),
                   "accuracy": (logits.argmax(1) == y).float().mean().detach()}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return out

    def epoch_end(epoch: int) -> dict[str, float]:
        for m in modules.values():
            m.eval()
        try:
            with isolated_rng(dev):  # the training noise continues as if this had not run
                return _epoch_row(epoch)
        finally:
            for m in modules.values():
                m.train()

    def _epoch_row(epoch: int) -> dict[str, float]:
        """The learning curve on validation: the model's accuracy (its head for CE; a Gaussian
        mixture fitted on ``epoch_fit_subset`` training latents for IB) and, for IB, a point of
        the information plane."""
        row: dict[str, float] = {"lr": float(opt.param_groups[0]["lr"])}
        z_val = encode(enc, data.val_x, device=dev)
        if spec.kind != "ib":
            with torch.no_grad():
                row["val_accuracy_head"] = _accuracy(modules["head"](z_val.to(dev)), data.val_y)
            return row
        gen = _generator(seed, epoch, 1)
        gmm = _fit_gmm(cfg, spec, encode(enc, fit_x, device=dev), fit_y, data.classes, gen)
        row["val_accuracy_gmm"] = _accuracy(gmm.log_posterior(z_val), data.val_y)
        z = z_val[: cfg.plane_subset]
        if spec.noise:
            z = add_zero_entropy_noise(z, gen)
        row.update({f"val_{k}": v for k, v in plane_point(z, plane_y, cfg, data.classes, gen,
                                                          dev).items()})
        return row

    seed_everything(seed % (2**31))  # training noise and augmentation: global RNG (checkpointed)
    trainer = Trainer(
        modules, opt, (data.train_x, data.train_y), batch_size=cfg.batch_size,
        epochs=spec.epochs or cfg.epochs, seed=seed % 1_000_000, device=dev, step_fn=step_fn,
        schedule=dataclasses.replace(cfg.schedule, peak_lr=cfg.optimizer_of(spec)[1]),
        checkpoint_path=folder / f"{spec.key}.pt",
        checkpoint_every_steps=cfg.checkpoint_every_steps,
        fingerprint=fingerprint_of({"chapter": CHAPTER, "seed": ctx.seed, "spec": as_dict(spec),
                                    "train": cfg.training_view()}),
        epoch_end_fn=epoch_end, progress=ctx.progress, desc=f"{CHAPTER} {spec.label}",
    )
    diverged: dict[str, Any] | None = None
    try:
        history = trainer.fit(resume=ctx.resume)
    except NonFiniteError as exc:
        # Without the zero-entropy noise nothing stops the objective from collapsing points of
        # a class onto each other: the kNN estimate is then -inf. That is the ablation's
        # finding, not a crash: the model keeps the weights of its last finite step and the
        # record says when training stopped.
        if spec.kind != "ib" or spec.noise:
            raise
        history = trainer.history
        diverged = {"epoch": len(history) + 1, "step": trainer.global_step, "reason": str(exc)}
    for m in modules.values():
        m.eval()
    return modules, {"history": [dict(r) for r in history],
                     "train_seconds": trainer.elapsed_seconds, "diverged": diverged}


def _entropy_or_none(fn: Any, *args: Any, **kwargs: Any) -> float | None:
    """``float(fn(...))``, or ``None`` when the kNN estimate is -inf (duplicate latents)."""
    try:
        return float(fn(*args, **kwargs))
    except NonFiniteError:
        return None


def _decode(decoder: Any, z: Tensor) -> Tensor:
    """Logits of latents ``z``: the Gaussian mixture's log-posteriors, or a network's output."""
    if isinstance(decoder, GaussianMixtureDecoder):
        return decoder.log_posterior(z)
    return decoder(z)


class _IBClassifier(nn.Module):
    """Encoder followed by a decoder of its latents: the classifier an attack differentiates."""

    def __init__(self, encoder: nn.Module, decoder: Any) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: Tensor) -> Tensor:
        return _decode(self.decoder, self.encoder(x))


def _evaluate(ctx: _Context, spec: ModelSpec, modules: dict[str, nn.Module]) -> dict[str, Any]:
    """Decoders (validation and test accuracy), attacks through every decoder, final test
    entropies and the 2-D projection."""
    cfg, data, dev = ctx.config, ctx.get_data(), ctx.device
    seed = ctx.model_seed(spec)
    enc = modules["encoder"]
    z_train = encode(enc, data.train_x, device=dev)
    z_val = encode(enc, data.val_x, device=dev)
    z_test = encode(enc, data.test_x, device=dev)
    gen = _generator(seed, 0, 2)
    decoders: dict[str, Any] = {
        "gmm": _fit_gmm(cfg, spec, z_train, data.train_y, data.classes, gen).to(dev)}
    out: dict[str, Any] = {}
    if spec.kind == "ib":
        fit_z = add_zero_entropy_noise(z_train, gen) if spec.noise else z_train
        resfc, ce = fit_resfc(fit_z, data.train_y, data.classes, width=cfg.resfc_width,
                              blocks=cfg.resfc_blocks, steps=cfg.resfc_steps,
                              batch_size=cfg.resfc_batch_size, lr=cfg.resfc_lr,
                              generator=gen, device=dev)
        decoders["resfc"] = resfc
        out["train_ce_resfc_nats"] = ce
    else:
        decoders["head"] = modules["head"]
    n_attack = min(cfg.attack_subset, data.test_x.shape[0])
    attack_gen = _generator(seed, 0, 3)
    for name in decoders_of(spec):
        dec = decoders[name]
        with torch.no_grad():
            out[f"val_accuracy_{name}"] = _accuracy(_decode(dec, z_val.to(dev)),
                                                    data.val_y)
            out[f"test_accuracy_{name}"] = _accuracy(_decode(dec, z_test.to(dev)),
                                                     data.test_y)
        attacked = _IBClassifier(enc, dec)
        xs, ys = data.test_x[:n_attack], data.test_y[:n_attack]
        out[f"test_fgsm_accuracy_{name}"] = fgsm_accuracy(
            attacked, xs, ys, cfg.fgsm_epsilons, device=dev, transform=to_unit_float)
        out[f"test_pgd_accuracy_{name}"] = pgd_accuracy(
            attacked, xs, ys, cfg.pgd_epsilons, steps=cfg.pgd_steps,
            step_size_factor=cfg.pgd_step_size_factor, device=dev, transform=to_unit_float,
            generator=attack_gen)
    zt = add_zero_entropy_noise(z_test, gen) if spec.kind == "ib" and spec.noise else z_test
    # None: -inf, the latent of a model without noise has collapsed onto duplicate points
    out["test_h_z_nats"] = _entropy_or_none(knn_entropy, zt.double(), k=cfg.k)
    out["test_h_z_given_y_nats"] = _entropy_or_none(conditional_knn_entropy, zt.double(),
                                                    data.test_y, k=cfg.k)
    coords = pca_2d(z_test[: cfg.pca_points])
    out["pca"] = {"coords": [[round(float(a), 4), round(float(b), 4)] for a, b in coords],
                  "labels": data.test_y[: cfg.pca_points].tolist()}
    return out


def _model_evals(ctx: _Context, spec: ModelSpec) -> dict[str, Any]:
    """Train and evaluate one model, or read its cached evaluations (``--resume``)."""
    folder = ctx.checkpoint_dir("sweep")
    path = folder / f"{spec.key}.eval.json"
    fp = fingerprint_of({"chapter": CHAPTER, "seed": ctx.seed, "spec": as_dict(spec),
                         "config": identity_dict(ctx.config)})
    if ctx.resume and path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("fingerprint") != fp:
            raise CheckpointError(
                f"{path} belongs to a different configuration; delete it or run without --resume"
            )
        return saved["evals"]
    modules, evals = _train(ctx, spec, folder)
    t0 = time.perf_counter()
    with isolated_rng(ctx.device):  # evaluation draws only from its own generators
        evals.update(_evaluate(ctx, spec, modules))
    evals["eval_seconds"] = time.perf_counter() - t0
    atomic_write_json(path, {"fingerprint": fp, "model": spec.key, "evals": evals})
    evals["_fresh"] = True
    return evals


def _row(spec: ModelSpec, ev: dict[str, Any], cfg: EntropyIBConfig) -> dict[str, Any]:
    """One model's record: every decoder's validation and test accuracy and attack curves, the
    decoder chosen on validation and the numbers through it, entropies and convergence."""
    row: dict[str, Any] = {"label": spec.label, "row": spec.row, "replicate": spec.replicate,
                           "kind": spec.kind, "beta2": spec.beta2,
                           "noise": spec.noise if spec.kind == "ib" else None,
                           "train_seconds": ev["train_seconds"],
                           "eval_seconds": ev["eval_seconds"],
                           "diverged": ev.get("diverged")}
    decs = decoders_of(spec)
    for name in decs:
        for key in (f"val_accuracy_{name}", f"test_accuracy_{name}",
                    f"test_fgsm_accuracy_{name}", f"test_pgd_accuracy_{name}"):
            row[key] = ev[key]
    for key in ("train_ce_resfc_nats", "test_h_z_nats", "test_h_z_given_y_nats"):
        if key in ev:
            row[key] = ev[key]
    chosen = max(decs, key=lambda d: ev[f"val_accuracy_{d}"])  # first listed on a tie
    row["decoder"] = chosen
    row["val_accuracy"] = ev[f"val_accuracy_{chosen}"]
    row["test_accuracy"] = ev[f"test_accuracy_{chosen}"]
    row["test_fgsm_accuracy"] = ev[f"test_fgsm_accuracy_{chosen}"]
    row["test_pgd_accuracy"] = ev[f"test_pgd_accuracy_{chosen}"]
    hist = ev["history"]
    curve = [h[curve_key(spec)] for h in hist if curve_key(spec) in h]
    row["epochs_trained"] = len(hist)
    if len(curve) >= 2:
        row["val_accuracy_last_epoch_change_points"] = 100 * abs(curve[-1] - curve[-2])
    if spec.kind == "ib" and hist:
        row["skipped_classes_total"] = sum(h.get("train_skipped_classes", 0.0) for h in hist)
    return row


def curve_key(spec: ModelSpec) -> str:
    """The history entry of a model's per-epoch validation accuracy (its learning curve)."""
    return "val_accuracy_head" if spec.kind != "ib" else "val_accuracy_gmm"


def _by_row(rows: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows.values():
        groups.setdefault(r["row"], []).append(r)
    return {k: sorted(v, key=lambda r: r["replicate"]) for k, v in groups.items()}


def _points(rows: list[dict[str, Any]], key: str, index: int | None = None) -> list[float]:
    return [100 * (r[key] if index is None else r[key][index]) for r in rows]


def _comparison(rows: dict[str, dict[str, Any]], cfg: EntropyIBConfig,
                classes: int) -> dict[str, Any]:
    """Best IB model against cross-entropy, in points (%), with replicate-paired differences.

    "Best" is the IB row with the highest mean validation accuracy (through each replicate's
    decoder chosen on validation). Attacks compare the best IB model with CE through every pair
    of their decoders; an advantage "survives" an attack at ε when every pairing's 95 %
    interval lies above 0.
    """
    groups = _by_row(rows)
    ib = {k: g for k, g in groups.items() if g[0]["kind"] == "ib"}
    if "ce" not in groups or not ib:
        return {}
    ce = groups["ce"]
    val_mean = {k: sum(r["val_accuracy"] for r in g) / len(g) for k, g in ib.items()}
    best = max(ib, key=lambda k: val_mean[k])
    bi = ib[best]
    if [r["replicate"] for r in bi] != [r["replicate"] for r in ce]:
        return {}
    out: dict[str, Any] = {
        "seeds": [r["replicate"] for r in ce],
        "chance_accuracy": 1.0 / classes,
        "best_ib_row": best,
        "best_ib_label": bi[0]["label"],
        "val_accuracy_mean_by_ib_row": val_mean,
        "best_ib_decoders": [r["decoder"] for r in bi],
        "ce_decoders": [r["decoder"] for r in ce],
        "test_accuracy_best_ib_minus_ce_points": paired_difference(
            _points(bi, "test_accuracy"), _points(ce, "test_accuracy")),
        "test_accuracy_ce_gmm_minus_ce_head_points": paired_difference(
            _points(ce, "test_accuracy_gmm"), _points(ce, "test_accuracy_head")),
    }
    for attack, epsilons in (("fgsm", cfg.fgsm_epsilons), ("pgd", cfg.pgd_epsilons)):
        per_eps = []
        for i, eps in enumerate(epsilons):
            if eps == 0:
                continue
            pairs = {}
            for di in decoders_of(ModelSpec("ib", bi[0]["beta2"], bool(bi[0]["noise"]))):
                for dc in decoders_of(ModelSpec("ce")):
                    pairs[f"ib_{di}_minus_ce_{dc}"] = paired_difference(
                        _points(bi, f"test_{attack}_accuracy_{di}", i),
                        _points(ce, f"test_{attack}_accuracy_{dc}", i))
            chosen = paired_difference(_points(bi, f"test_{attack}_accuracy", i),
                                       _points(ce, f"test_{attack}_accuracy", i))
            ce_worst = min(sum(_points(ce, f"test_{attack}_accuracy_{dc}", i)) / len(ce)
                           for dc in decoders_of(ModelSpec("ce")))
            per_eps.append({
                "epsilon": eps,
                "ce_worst_decoder_accuracy_points": ce_worst,
                "best_ib_minus_ce_chosen_decoders_points": chosen,
                "pairs": pairs,
                "advantage_survives_every_pairing": all(p["verdict"] == "supported"
                                                        for p in pairs.values()),
                "ib_rows_above_ce": sorted(
                    k for k, g in ib.items()
                    if sum(_points(g, f"test_{attack}_accuracy", i)) / len(g)
                    > sum(_points(ce, f"test_{attack}_accuracy", i)) / len(ce)),
            })
        out[attack] = per_eps
    return out


def _convergence(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How much the last epoch moved each model's validation accuracy (points)."""
    changes = {k: r["val_accuracy_last_epoch_change_points"] for k, r in rows.items()
               if "val_accuracy_last_epoch_change_points" in r and not r.get("diverged")}
    if not changes:
        return {}
    worst = max(changes, key=lambda k: changes[k])
    return {"val_accuracy_last_epoch_change_points_mean": sum(changes.values()) / len(changes),
            "val_accuracy_last_epoch_change_points_max": changes[worst],
            "val_accuracy_last_epoch_change_points_max_model": worst,
            "models": len(changes)}


def _collect(ctx: _Context, specs: dict[str, ModelSpec], rec: Any
             ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every model's evaluations (training it when needed) and its row; their histories go to
    the recorder, and the seconds of models trained by earlier processes to its elapsed time."""
    rows: dict[str, dict[str, Any]] = {}
    evals: dict[str, dict[str, Any]] = {}
    earlier = 0.0
    for key, spec in specs.items():
        ev = _model_evals(ctx, spec)
        if not ev.pop("_fresh", False):
            earlier += ev["train_seconds"] + ev["eval_seconds"]
        evals[key] = ev
        rows[key] = _row(spec, ev, ctx.config)
        for h in ev["history"]:
            rec.history.append({"model": key, "row": spec.row, "replicate": spec.replicate, **h})
    if earlier > 1.0:
        rec.add_elapsed(earlier)
    return rows, evals


def _run_sweep(ctx: _Context) -> Path:
    cfg = ctx.config
    specs = model_specs(cfg)
    with ctx.recorder("sweep") as rec:
        data = ctx.get_data()
        rows, evals = _collect(ctx, specs, rec)
        pca = {key: ev["pca"] for key, ev in evals.items()}
        planes = {key: {name: [h[name] for h in evals[key]["history"]] for name in (
                      "epoch", "val_h_z_nats", "val_h_y_given_z_bound_nats")}
                  for key, spec in specs.items() if spec.kind == "ib"}
        rec.metrics.update({
            "dataset": cfg.dataset,
            "n_train": int(data.train_x.shape[0]),
            "n_val": int(data.val_x.shape[0]),
            "n_test": int(data.test_x.shape[0]),
            "n_plane": int(min(cfg.plane_subset, data.val_x.shape[0])),
            "n_attack": int(min(cfg.attack_subset, data.test_x.shape[0])),
            "seeds": list(range(cfg.replicates)),
            "encoder_parameters": sum(p.numel() for p in ResNetEncoder(
                data.channels, latent_dim=cfg.latent_dim, widths=cfg.widths,
                blocks=cfg.blocks).parameters()),
            "fgsm_epsilons": list(cfg.fgsm_epsilons),
            "pgd_epsilons": list(cfg.pgd_epsilons),
            "pgd_steps": cfg.pgd_steps,
            "models": rows,
            "table": aggregate_rows(rows),
            "planes": planes,
            "pca": pca,
            "convergence": _convergence(rows),
            "comparison": _comparison(rows, cfg, data.classes),
        })
    assert rec.path is not None
    return rec.path


def _run_variant(ctx: _Context, experiment: str) -> Path:
    """The ``optimizer`` or ``epochs`` experiment: its models' rows, seed means and the IB − CE
    difference under the variant (the chapter pairs them with the sweep's rows by seed)."""
    cfg = ctx.config
    specs = experiment_specs(cfg, experiment)
    with ctx.recorder(experiment) as rec:
        data = ctx.get_data()
        rows, _ = _collect(ctx, specs, rec)
        groups = _by_row(rows)
        first = next(iter(specs.values()))
        ib_row = next(s.row for s in specs.values() if s.kind == "ib")
        ce_row = next(s.row for s in specs.values() if s.kind == "ce")
        rec.metrics.update({
            "dataset": cfg.dataset,
            "optimizer": cfg.optimizer_of(first)[0],
            "peak_lr": cfg.optimizer_of(first)[1],
            "epochs": first.epochs or cfg.epochs,
            "n_train": int(data.train_x.shape[0]),
            "n_val": int(data.val_x.shape[0]),
            "n_test": int(data.test_x.shape[0]),
            "seeds": sorted({s.replicate for s in specs.values()}),
            "models": rows,
            "table": aggregate_rows(rows),
            "convergence": _convergence(rows),
            "test_accuracy_ib_minus_ce_points": paired_difference(
                _points(groups[ib_row], "test_accuracy"), _points(groups[ce_row], "test_accuracy")),
            "val_accuracy_ib_minus_ce_points": paired_difference(
                _points(groups[ib_row], "val_accuracy"), _points(groups[ce_row], "val_accuracy")),
        })
    assert rec.path is not None
    return rec.path


def make_context(**run_args: Any) -> _Context:
    """The run's context (the runner protocol of :mod:`ibcore.tasks`)."""
    return prepare_run(_Context, PROFILES, EXPERIMENTS, **run_args)


def plan(ctx: _Context, experiments: Sequence[str]) -> list[Task]:
    """One task per model of the experiments asked for."""
    users: dict[str, tuple[ModelSpec, list[str]]] = {}
    for name in experiments:
        for spec in experiment_specs(ctx.config, name).values():
            users.setdefault(spec.key, (spec, []))[1].append(name)
    return [Task(key, tuple(names), spec) for key, (spec, names) in users.items()]


def run_task(ctx: _Context, task: Task) -> None:
    with cudnn_benchmark(ctx.config.cudnn_benchmark):
        _model_evals(ctx, task.spec)


def assemble(ctx: _Context, experiment: str) -> Path:
    return _run_sweep(ctx) if experiment == "sweep" else _run_variant(ctx, experiment)


def run(
    profile: str = "smoke",
    *,
    device: str = "auto",
    seed: int = 0,
    resume: bool = False,
    results_root: Path | None = None,
    progress: bool = True,
    experiments: Sequence[str] = EXPERIMENTS,
    data_root: Path | None = None,
    verify_checksums: bool = True,
    launcher: Any = None,
) -> dict[str, Path]:
    """Run the chapter's experiments at ``profile``; return ``{experiment: result file}``.

    ``data_root`` / ``verify_checksums=False`` let tests run on a CIFAR-10 stand-in;
    ``launcher`` (see :mod:`ibcore.launchers`) runs the models; default: one after another here.
    """
    return run_experiments(CHAPTER, launcher=launcher, profile=profile, device=device, seed=seed,
                           resume=resume, results_root=results_root, progress=progress,
                           experiments=experiments, data_root=data_root,
                           verify_checksums=verify_checksums)
