r"""Runner of the *Deep InfoMax* chapter (``deep_infomax.md``, slides on Hjelm et al.).

Every model shares the DCGAN-style encoder of :mod:`ibcore.models.dcgan` (conv feature map,
1024-unit fc, 64-d Y) and differs only in how it is trained:

* ``DIM(G)`` (α = 1, β = 0) and ``DIM(L)`` (α = 0, β = 1), each with the DV, JSD and InfoNCE
  estimators of :mod:`ibcore.objectives.infomax`; both critics are trained in every DIM model
  (the one with weight 0 only as a monitor, its gradient does not reach the encoder), so global
  and local MI estimates are recorded for all of them;
* ``DIM(L)+prior``: DIM(L) plus prior matching to ``U[0, 1]^64`` with weight γ;
* baselines with the same encoder: random initialisation (untrained), a supervised classifier
  (linear head on Y, cross-entropy), an autoencoder (the mirrored decoder of
  :class:`ibcore.models.dcgan.ConvDecoder`, squared error).

**Protocol.** Every trained encoder runs the same number of Adam steps under a per-step
schedule (linear warm-up, cosine decay to 1/1000 of the peak; :mod:`ibcore.schedules`); at the
end of every epoch a logistic regression on Y, fitted on training images and scored on a
validation split carved from the training data, records the learning curve. The main rows
(DIM(G), DIM(L) with each estimator, the autoencoder, the random encoder) are trained with
``replicates`` seeds. Choices ("the best estimator") are made on the validation split; the test
split is only scored.

Experiments (one result file each):

``probes``
    The source's Tables 1 and 4: linear and 200-unit-MLP probes on the frozen conv, fc and Y
    features of every model, few-label linear probes (:func:`ibcore.probes.few_label_probe`),
    the MINE estimate of I(X;Y) per encoder, per epoch the global and local MI estimates on
    held-out images (the information-plane trajectories), the table over seeds and the
    replicate-paired comparisons of DIM(L) with the autoencoder and DIM(G).
``negatives``
    The source's Figure 9: DIM(L) with JSD and with InfoNCE at several batch sizes, every one
    for the same number of steps (a batch of B gives each positive pair (B − 1)·M² negatives),
    and the same-location ablation of the local negatives (B − 1 per positive); linear probes
    on Y and conv, few-label probes on Y.
``occlusion``
    The source's Table 5 "occlude": DIM(L) with InfoNCE whose global vector is computed from an
    image with one random square blanked (local features from the full image), one model per
    replicate; probes as in ``probes``, paired in the chapter with the plain DIM(L) rows.
``tradeoff``
    The chapter's slider: the local/global weight λ (α = λ, β = 1 − λ; λ = 0 is DIM(L),
    λ = 1 is DIM(G)); probes on Y and a 2-D PCA of Y on held-out images, stored beside the
    result file with its SHA-256.

A model used by several experiments (e.g. DIM(L)-InfoNCE at the main batch size) is trained
once, in the checkpoint folder of the first experiment that uses it; its evaluations are cached
in ``<name>.eval.json`` next to its checkpoint, so ``--resume`` skips finished models and
continues an interrupted one exactly (:class:`ibcore.training.Trainer`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ibcore.atomic import atomic_write_json
from ibcore.checkpoint import fingerprint_of
from ibcore.data import load_tensors, pad_to_size, subset
from ibcore.data.vision import DATASETS
from ibcore.device import autocast, check_amp, cudnn_benchmark, isolated_rng, seed_everything
from ibcore.errors import (
    CheckpointError,
    InvalidParameterError,
    UnknownNameError,
)
from ibcore.models.dcgan import (
    IMAGE_SIZE,
    LOCAL_SIZE,
    Classifier,
    ConvDecoder,
    DCGANEncoder,
    GlobalCritic,
    LocalCritic,
    PriorDiscriminator,
)
from ibcore.objectives.infomax import (
    ESTIMATORS,
    LOCAL_NEGATIVES,
    dim_mi_terms,
    global_mi,
    local_mi,
    local_negatives_per_positive,
    occlude_squares,
    prior_discriminator_loss,
    prior_generator_loss,
    sample_uniform_prior,
)
from ibcore.probes import (
    MineConfig,
    ProbeConfig,
    extract_features,
    few_label_probe,
    mine_estimate,
    standardize,
    train_probe,
)
from ibcore.profiles import as_dict
from ibcore.projection import pca_2d
from ibcore.replicates import aggregate_rows, paired_difference
from ibcore.results import RunRecorder, read_artifact
from ibcore.runners.context import RunContext, prepare_run
from ibcore.schedules import Schedule
from ibcore.tasks import Task, run_experiments
from ibcore.training import Trainer
from ibcore.validation import check_int, check_weight

CHAPTER = "infomax"
EXPERIMENTS = ("probes", "negatives", "tradeoff", "occlusion")
LEVELS = ("conv", "fc", "y")
KINDS = ("dim", "random", "supervised", "autoencoder")

__all__ = [
    "CHAPTER",
    "EXPERIMENTS",
    "KINDS",
    "LEVELS",
    "PROFILES",
    "InfomaxConfig",
    "MITrace",
    "ModelSpec",
    "build_dim_modules",
    "dim_step",
    "experiment_specs",
    "held_out_mi",
    "image_transform",
    "load_data",
    "load_pca_artifact",
    "aggregate_rows",
    "paired_difference",
    "pca_2d",
    "row_name",
    "run",
]


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InfomaxConfig:
    """Settings of the three experiments (one profile = one instance)."""

    dataset: str = "fashion_mnist"
    # a multiple of every batch size of the negatives experiment, so that each trains for
    # exactly the same number of steps
    train_subset: int | None = 20480
    # labelled validation images carved from the training split (disjoint from the encoders'
    # and the probes' training images): every choice ("the best estimator") is made on them
    val_subset: int = 5000
    test_subset: int | None = 5000
    probe_train_subset: int | None = None
    # encoder and critics
    width: int = 32
    fc_dim: int = 1024
    y_dim: int = 64
    critic_hidden: int = 128
    critic_embed: int = 64
    prior_hidden: tuple[int, ...] = (1000, 200)
    # training
    batch_size: int = 64
    epochs: int = 16
    lr: float = 1e-3
    # per-step schedule of every Adam of a model (encoder, critics, prior discriminator):
    # "warmup_cosine" is a linear warm-up to ``lr`` over 5 % of the steps, then a cosine decay
    # to lr / 1000 at the last step (see ibcore.schedules)
    schedule_kind: str = "warmup_cosine"
    checkpoint_every_steps: int = 50
    mi_eval_size: int = 256
    trace_every_steps: int = 50
    # at the end of every epoch: a linear probe on Y fitted on this many training images and
    # scored on the validation images (the learning curve that shows when an encoder has
    # stopped moving); 0 turns it off
    epoch_probe_images: int = 5000
    # models
    estimators: tuple[str, ...] = ESTIMATORS
    prior_estimator: str = "infonce"
    prior_gamma: float = 0.1
    # local negatives of every DIM model but the named ablation (see ibcore.objectives.infomax)
    local_negatives: str = "all_locations"
    # training seeds of the main rows (DIM(G), DIM(L) with every estimator, the autoencoder
    # and the random encoder); the other models are trained once
    replicates: int = 2
    # evaluation
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    mine: MineConfig = field(default_factory=MineConfig)
    # few-label linear probes: labelled training images (class-balanced) and draws of them
    few_label_counts: tuple[int, ...] = (100, 1000)
    few_label_draws: int = 3
    # negatives (source Fig. 9)
    negatives_estimators: tuple[str, ...] = ("jsd", "infonce")
    # each batch size trains for the same number of steps as the main batch size (so a batch
    # of 16 sees a quarter of the images of a batch of 64); ``epochs × b / batch_size`` must be
    # a whole number, and the steps are exactly equal when the training set is a multiple of
    # every batch size (else they differ by the dropped last batches of the epochs)
    negatives_batch_sizes: tuple[int, ...] = (16, 64)
    # the same-location ablation of the local negatives, trained at the main batch size
    negatives_ablation: bool = True
    # local/global trade-off slider
    tradeoff_estimator: str = "infonce"
    tradeoff_lambdas: tuple[float, ...] = (0.0, 0.5, 0.9, 1.0)
    # the source's Table 5 "occlude" (InfoNCE DIM; the global vector from an image with one
    # square of this fraction of its side blanked, the local features from the full image),
    # trained for every replicate of the main rows and paired with DIM(L) of the same replicate
    occlusion_estimator: str = "infonce"
    occlusion_fraction: float = 0.5
    pca_points: int = 500
    # GPU speed switches (off in every profile; see ibcore.device): bf16 autocast of the
    # encoder's and the critics' forward passes in training (the MI bounds, the losses and
    # every evaluation stay in float32/float64), and cuDNN's algorithm search (not
    # bit-reproducible)
    amp: str | None = None
    cudnn_benchmark: bool = False

    def __post_init__(self) -> None:
        check_amp(self.amp)
        if self.dataset not in DATASETS:
            raise UnknownNameError(
                f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}"
            )
        for name in ("width", "fc_dim", "y_dim", "critic_hidden", "critic_embed", "epochs",
                     "checkpoint_every_steps", "pca_points", "replicates", "few_label_draws"):
            check_int(name, getattr(self, name))
        check_int("val_subset", self.val_subset, low=2)
        for name in ("train_subset", "test_subset", "probe_train_subset"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), low=2)
        check_int("batch_size", self.batch_size, low=2)
        check_int("mi_eval_size", self.mi_eval_size, low=2)
        check_int("trace_every_steps", self.trace_every_steps, low=0)
        check_int("epoch_probe_images", self.epoch_probe_images, low=0)
        check_weight("lr", self.lr, low=0.0, low_inclusive=False)
        Schedule(self.schedule_kind, peak_lr=self.lr)  # refuses an unknown kind
        check_weight("prior_gamma", self.prior_gamma)
        check_weight("occlusion_fraction", self.occlusion_fraction, low=0.0, high=1.0,
                     low_inclusive=False)
        for est in (*self.estimators, *self.negatives_estimators, self.prior_estimator,
                    self.tradeoff_estimator, self.occlusion_estimator):
            if est not in ESTIMATORS:
                raise UnknownNameError(
                    f"unknown MI estimator {est!r}; choose one of {', '.join(ESTIMATORS)}"
                )
        for b in self.negatives_batch_sizes:
            check_int("negatives batch size", b, low=2)
            if (self.epochs * b) % self.batch_size:
                raise InvalidParameterError(
                    f"negatives batch size {b}: {self.epochs} epochs × {b} / {self.batch_size} "
                    "is not a whole number of epochs, so it cannot train for the main batch "
                    "size's number of steps")
        if self.local_negatives not in LOCAL_NEGATIVES:
            raise UnknownNameError(f"unknown local negatives {self.local_negatives!r}; choose "
                                   f"one of {', '.join(LOCAL_NEGATIVES)}")
        for n in self.few_label_counts:
            check_int("few-label count", n, low=2)
        for lam in self.tradeoff_lambdas:
            check_weight("tradeoff λ", lam, low=0.0, high=1.0)
        for h in self.prior_hidden:
            check_int("prior_hidden", h)

    def training_view(self) -> dict[str, Any]:
        """The settings a trained encoder depends on (its checkpoint fingerprint)."""
        keys = ("dataset", "train_subset", "val_subset", "test_subset", "width", "fc_dim", "y_dim",
                "critic_hidden", "critic_embed", "prior_hidden", "epochs", "lr", "mi_eval_size",
                "trace_every_steps", "epoch_probe_images")
        view = {k: getattr(self, k) for k in keys}
        view["schedule"] = as_dict(self.schedule)
        if self.amp is not None:  # absent when off
            view["amp"] = self.amp
        return view

    @property
    def schedule(self) -> Schedule:
        """The per-step learning-rate schedule of :attr:`schedule_kind` peaking at :attr:`lr`."""
        return Schedule(self.schedule_kind, peak_lr=self.lr)


_CPU = InfomaxConfig()

PROFILES: dict[str, InfomaxConfig] = {
    "smoke": dataclasses.replace(
        _CPU,
        train_subset=128,
        val_subset=64,
        test_subset=128,
        width=8,
        fc_dim=64,
        critic_hidden=32,
        critic_embed=16,
        prior_hidden=(32,),
        batch_size=32,
        epochs=2,
        mi_eval_size=32,
        trace_every_steps=2,
        epoch_probe_images=64,
        probe=ProbeConfig(epochs=3, mlp_epochs=3, batch_size=128),
        mine=MineConfig(hidden=32, embed=16, steps=20, batch_size=32, eval_batches=2),
        few_label_counts=(30,),
        few_label_draws=2,
        negatives_batch_sizes=(16, 32),
        tradeoff_lambdas=(0.0, 0.5, 1.0),
        pca_points=100,
    ),
    "cpu": _CPU,
    "paper": dataclasses.replace(
        _CPU,
        dataset="cifar10",
        train_subset=None,
        val_subset=5000,
        test_subset=None,
        width=64,
        critic_hidden=512,
        critic_embed=512,
        epochs=200,
        lr=1e-4,
        schedule_kind="constant",  # the source's constant Adam rate
        checkpoint_every_steps=200,
        mi_eval_size=512,
        trace_every_steps=2000,
        probe=ProbeConfig(epochs=1000, mlp_epochs=1000, batch_size=512, lr=1e-3, mlp_lr=1e-3),
        mine=MineConfig(hidden=1024, embed=256, steps=5000, batch_size=256, eval_batches=20),
        negatives_batch_sizes=(8, 16, 32, 64, 128),
        replicates=3,
        tradeoff_lambdas=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
    ),
}


# ---------------------------------------------------------------------------------------------
# models to train
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One encoder to train: its kind, DIM estimator and weights (α, β, γ), batch size, local
    negatives, training epochs and replicate (training seed) number."""

    kind: str
    estimator: str | None = None
    alpha: float = 0.0
    beta: float = 0.0
    gamma: float = 0.0
    batch_size: int = 64
    local_negatives: str = "all_locations"
    epochs: int = 1
    replicate: int = 0
    occlude: float = 0.0  # side of the occluded square as a fraction of the image side

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UnknownNameError(f"unknown model kind {self.kind!r}; choose one of {KINDS}")
        if self.kind == "dim" and self.estimator not in ESTIMATORS:
            raise UnknownNameError(
                f"a DIM model needs an estimator in {ESTIMATORS}, got {self.estimator!r}"
            )
        for name in ("alpha", "beta", "gamma"):
            check_weight(name, getattr(self, name))
        check_int("batch_size", self.batch_size, low=2)
        check_int("epochs", self.epochs)
        check_int("replicate", self.replicate, low=0)
        check_weight("occlude", self.occlude, low=0.0, high=1.0)
        if self.occlude > 0 and self.kind != "dim":
            raise InvalidParameterError("only a DIM model can be trained with occlusion")
        if self.local_negatives not in LOCAL_NEGATIVES:
            raise UnknownNameError(f"unknown local negatives {self.local_negatives!r}; choose "
                                   f"one of {', '.join(LOCAL_NEGATIVES)}")

    @property
    def key(self) -> str:
        """A file-name-safe identity (the same spec in two experiments shares one training)."""
        rep = f"-r{self.replicate}" if self.replicate else ""
        if self.kind != "dim":
            base = f"{self.kind}-bs{self.batch_size}" if self.kind != "random" else "random"
            return base + rep

        def num(v: float) -> str:
            return f"{v:g}".replace(".", "p")

        same = "-sameloc" if self.local_negatives == "same_location" else ""
        occ = f"-occ{num(self.occlude)}" if self.occlude > 0 else ""
        return (f"dim-{self.estimator}-a{num(self.alpha)}-b{num(self.beta)}-g{num(self.gamma)}"
                f"-bs{self.batch_size}-e{self.epochs}{same}{occ}{rep}")

    @property
    def label(self) -> str:
        """How the chapter names the model (the source's row names where they exist)."""
        names = {"random": "Random init", "supervised": "Fully supervised",
                 "autoencoder": "AE"}
        if self.kind != "dim":
            return names[self.kind]
        est = {"dv": "DV", "jsd": "JSD", "infonce": "infoNCE"}[str(self.estimator)]
        if self.alpha > 0 and self.beta == 0:
            base = "DIM(G)"
        elif self.alpha == 0 and self.beta > 0:
            base = "DIM(L)"
        else:
            base = f"DIM(α={self.alpha:g}, β={self.beta:g})"
        prior = f"+prior(γ={self.gamma:g})" if self.gamma > 0 else ""
        same = ", same-location negatives" if self.local_negatives == "same_location" else ""
        occ = ", occlude" if self.occlude > 0 else ""
        return f"{base}{prior} ({est}{same}{occ})"

    @property
    def negatives_per_positive(self) -> int | None:
        """Negative pairs per positive pair of the local term (``None`` without one)."""
        if self.kind != "dim":
            return None
        return local_negatives_per_positive(self.batch_size, LOCAL_SIZE**2, self.local_negatives)


REPLICATED_ROWS: tuple[str, ...] = (
    *(f"dim_g_{e}" for e in ESTIMATORS), *(f"dim_l_{e}" for e in ESTIMATORS), "autoencoder",
    "random")
"""The main rows of the probes table, trained with ``replicates`` seeds; the others once."""


def _spec(cfg: InfomaxConfig, kind: str, estimator: str | None = None, *, alpha: float = 0.0,
          beta: float = 0.0, gamma: float = 0.0, batch_size: int | None = None,
          local_negatives: str | None = None, replicate: int = 0,
          occlude: float = 0.0) -> ModelSpec:
    """A model of the run: the main batch size and the config's negatives unless told; a batch
    of ``b`` trains ``epochs × b / batch_size`` epochs (the main model's number of steps)."""
    b = cfg.batch_size if batch_size is None else batch_size
    if kind == "dim":
        negatives = cfg.local_negatives if local_negatives is None else local_negatives
    else:
        negatives = "all_locations"
    return ModelSpec(kind, estimator, alpha=alpha, beta=beta, gamma=gamma, batch_size=b,
                     local_negatives=negatives, epochs=cfg.epochs * b // cfg.batch_size,
                     replicate=replicate, occlude=occlude)


def _main_specs(cfg: InfomaxConfig) -> dict[str, ModelSpec]:
    rows: dict[str, Callable[[int], ModelSpec]] = {}
    for est in cfg.estimators:
        rows[f"dim_g_{est}"] = lambda r, e=est: _spec(cfg, "dim", e, alpha=1.0, replicate=r)
    for est in cfg.estimators:
        rows[f"dim_l_{est}"] = lambda r, e=est: _spec(cfg, "dim", e, beta=1.0, replicate=r)
    rows["dim_l_prior"] = lambda r: _spec(cfg, "dim", cfg.prior_estimator, beta=1.0,
                                          gamma=cfg.prior_gamma, replicate=r)
    rows["random"] = lambda r: _spec(cfg, "random", replicate=r)
    rows["supervised"] = lambda r: _spec(cfg, "supervised", replicate=r)
    rows["autoencoder"] = lambda r: _spec(cfg, "autoencoder", replicate=r)
    specs: dict[str, ModelSpec] = {}
    for name, make in rows.items():
        specs[name] = make(0)
        if name in REPLICATED_ROWS:
            for r in range(1, cfg.replicates):
                specs[f"{name}_r{r}"] = make(r)
    return specs


def row_name(name: str) -> str:
    """The table row of a model name (``dim_l_jsd_r1`` → ``dim_l_jsd``)."""
    base, _, rep = name.rpartition("_r")
    return base if base and rep.isdigit() else name


def experiment_specs(cfg: InfomaxConfig, experiment: str) -> dict[str, ModelSpec]:
    """``{name: spec}`` of the models an experiment evaluates."""
    if experiment == "probes":
        return _main_specs(cfg)
    if experiment == "negatives":
        specs = {f"dim_l_{est}_b{b}": _spec(cfg, "dim", est, beta=1.0, batch_size=b)
                 for est in cfg.negatives_estimators for b in cfg.negatives_batch_sizes}
        if cfg.negatives_ablation:
            other = next(n for n in LOCAL_NEGATIVES if n != cfg.local_negatives)
            for est in cfg.negatives_estimators:
                if est == "jsd":  # the same number as the source's negatives (module docstring)
                    continue
                specs[f"dim_l_{est}_b{cfg.batch_size}_{other}"] = _spec(
                    cfg, "dim", est, beta=1.0, local_negatives=other)
        return specs
    if experiment == "occlusion":
        est = cfg.occlusion_estimator
        return {f"dim_l_{est}_occlude" + (f"_r{r}" if r else ""): _spec(
            cfg, "dim", est, beta=1.0, occlude=cfg.occlusion_fraction, replicate=r)
            for r in range(cfg.replicates)}
    if experiment == "tradeoff":
        return {f"lambda_{lam:g}": _spec(cfg, "dim", cfg.tradeoff_estimator, alpha=float(lam),
                                         beta=float(1.0 - lam))
                for lam in cfg.tradeoff_lambdas}
    raise UnknownNameError(f"unknown experiment {experiment!r}; choose from {EXPERIMENTS}")


# what each experiment needs from each of its models
def _needs(cfg: InfomaxConfig, experiment: str) -> tuple[str, ...]:
    """What an experiment needs from each of its models (evaluation names)."""
    if experiment == "probes":
        return (*(f"probe/{k}/{lv}" for lv in LEVELS for k in ("linear", "mlp")),
                *(f"few_label/{n}/{lv}" for n in cfg.few_label_counts for lv in LEVELS), "mine")
    if experiment == "negatives":
        return ("probe/linear/y", "probe/linear/conv",
                *(f"few_label/{n}/y" for n in cfg.few_label_counts))
    if experiment == "tradeoff":
        return ("probe/linear/y", "probe/mlp/y", "pca")
    if experiment == "occlusion":
        return tuple(f"probe/{k}/{lv}" for lv in LEVELS for k in ("linear", "mlp"))
    raise UnknownNameError(f"unknown experiment {experiment!r}; choose from {EXPERIMENTS}")


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def image_transform(images: Tensor) -> Tensor:
    """Stored ``uint8`` images → floats in ``[−1, 1]`` (the encoder's input range)."""
    return images.float() / 127.5 - 1.0


@dataclass(frozen=True)
class _Data:
    train_x: Tensor  # uint8 [N, C, 32, 32]
    train_y: Tensor
    val_x: Tensor  # labelled validation images from the training split, not trained on
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    channels: int
    classes: int
    probe_n: int  # the probes and MINE use the first probe_n training images

    @property
    def probe_x(self) -> Tensor:
        return self.train_x[: self.probe_n]

    @property
    def probe_y(self) -> Tensor:
        return self.train_y[: self.probe_n]


def load_data(
    cfg: InfomaxConfig,
    seed: int,
    root: str | Path | None = None,
    *,
    verify_checksums: bool = True,
) -> _Data:
    """The configured dataset as ``uint8 [N, C, 32, 32]`` tensors (zero-padded when smaller).

    The training, validation and test subsets are drawn with a generator seeded by ``seed``, so
    every model of a run sees the same images; the validation images are the last
    ``val_subset`` of one draw from the training split, the training images the ones before.
    ``verify_checksums=False`` is for tests that read a CIFAR-10
    stand-in (see :func:`ibcore.data.load_tensors`).
    """
    info = DATASETS[cfg.dataset]
    kwargs: dict[str, Any] = {"verify_checksums": verify_checksums}
    if root is not None:
        kwargs["root"] = root
    tx, ty = load_tensors(cfg.dataset, "train", **kwargs)
    vx, vy = load_tensors(cfg.dataset, "test", **kwargs)
    gen = torch.Generator().manual_seed(seed * 7919 + 17)
    if cfg.val_subset >= tx.shape[0]:
        raise InvalidParameterError(
            f"val_subset {cfg.val_subset} leaves no training images of {tx.shape[0]}")
    n_fit = None if cfg.train_subset is None else min(cfg.train_subset,
                                                      tx.shape[0] - cfg.val_subset)
    tx, ty = subset(tx, ty, None if n_fit is None else n_fit + cfg.val_subset, gen)
    tx, ty, ax, ay = tx[: -cfg.val_subset], ty[: -cfg.val_subset], tx[-cfg.val_subset :], ty[
        -cfg.val_subset :]
    vx, vy = subset(vx, vy, cfg.test_subset, gen)
    if tx.shape[-1] != IMAGE_SIZE:
        tx, ax, vx = (pad_to_size(tx, IMAGE_SIZE), pad_to_size(ax, IMAGE_SIZE),
                      pad_to_size(vx, IMAGE_SIZE))
    n_probe = tx.shape[0] if cfg.probe_train_subset is None else min(cfg.probe_train_subset,
                                                                       tx.shape[0])
    return _Data(tx.contiguous(), ty, ax.contiguous(), ay, vx.contiguous(), vy, info.channels,
                 info.classes, n_probe)


# ---------------------------------------------------------------------------------------------
# training steps
# ---------------------------------------------------------------------------------------------


def build_dim_modules(
    cfg: InfomaxConfig, channels: int, spec: ModelSpec, generator: torch.Generator
) -> dict[str, nn.Module]:
    """Encoder, global and local critics, and (when γ > 0) the prior discriminator."""
    enc = DCGANEncoder(channels, width=cfg.width, fc_dim=cfg.fc_dim, y_dim=cfg.y_dim,
                       generator=generator)
    modules: dict[str, nn.Module] = {
        "encoder": enc,
        "global_critic": GlobalCritic(enc.local_channels, cfg.y_dim, hidden=cfg.critic_hidden,
                                      embed=cfg.critic_embed, generator=generator),
        "local_critic": LocalCritic(enc.local_channels, cfg.y_dim, hidden=cfg.critic_hidden,
                                    embed=cfg.critic_embed, generator=generator),
    }
    if spec.gamma > 0:
        modules["prior"] = PriorDiscriminator(cfg.y_dim, hidden=cfg.prior_hidden,
                                              generator=generator)
    return modules


def _critic_under(critic: nn.Module, amp: str | None,
                  device: torch.device) -> Callable[[Tensor, Tensor], Tensor]:
    """``critic`` itself, or (with ``amp``) the critic run under autocast with float32 scores."""
    if amp is None:
        return critic

    def scores(local: Tensor, y: Tensor) -> Tensor:
        with autocast(device, amp):
            return critic(local, y).float()

    return scores


def dim_step(
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    images: Tensor,
    spec: ModelSpec,
    *,
    amp: str | None = None,
) -> dict[str, Tensor]:
    """One DIM update on a batch of encoder inputs (floats).

    With γ > 0 the prior discriminator first takes a step on ``−E_V log D − E_P log(1 − D)``
    (codes detached), then the encoder and the MI critics take one step on
    ``−(Î_G + Î_L)`` (encoder gradient ``−(α∇Î_G + β∇Î_L)``) ``+ γ · (−E_P log D(E(x)))``.
    With ``spec.occlude > 0`` the global vector comes from a copy of the batch with one random
    square blanked per image (:func:`ibcore.objectives.infomax.occlude_squares`), the local map
    from the full images. Prior samples and occlusion positions come from torch's global RNG
    (checkpointed by the trainer). ``amp="bf16"``
    runs the encoder and the critics under :func:`ibcore.device.autocast` (on a GPU); their
    outputs are cast back to float32 before the bounds and losses.
    """
    dev = images.device
    with autocast(dev, amp):
        out = modules["encoder"](images)
        if spec.occlude > 0:  # the global vector from an occluded copy, the local map from x
            side = max(1, round(spec.occlude * images.shape[-1]))
            out = dataclasses.replace(out, y=modules["encoder"](occlude_squares(images,
                                                                                 side)).y)
    if amp is not None:
        out = dataclasses.replace(out, local=out.local.float(), y=out.y.float())
    terms: dict[str, Tensor] = {}
    gen_loss: Tensor | None = None
    if spec.gamma > 0:
        prior = modules["prior"]
        v = sample_uniform_prior(images.shape[0], out.y.shape[1], device=images.device)
        d_loss = prior_discriminator_loss(prior(v), prior(out.y.detach()))
        optimizers["prior"].zero_grad(set_to_none=True)
        d_loss.backward()
        optimizers["prior"].step()
        gen_loss = prior_generator_loss(prior(out.y))
        terms["prior_disc_loss"] = d_loss.detach()
        terms["prior_gen_loss"] = gen_loss.detach()
    mi = dim_mi_terms(out.local, out.y, _critic_under(modules["global_critic"], amp, dev),
                      _critic_under(modules["local_critic"], amp, dev), str(spec.estimator),
                      alpha=spec.alpha, beta=spec.beta, local_negatives=spec.local_negatives)
    loss = mi["loss"] if gen_loss is None else mi["loss"] + spec.gamma * gen_loss
    optimizers["main"].zero_grad(set_to_none=True)
    loss.backward()
    optimizers["main"].step()
    terms.update({"loss": loss.detach(), "objective": mi["objective"],
                  "global_mi": mi["global_mi"], "local_mi": mi["local_mi"]})
    return terms


@torch.no_grad()
def epoch_probe(encoder: nn.Module, train_x: Tensor, train_y: Tensor, val_x: Tensor,
                val_y: Tensor, device: torch.device) -> float:
    """Validation accuracy of a logistic regression on Y (standardised; L-BFGS, C = 1) fitted on
    the given training images: a cheap, deterministic learning-curve probe for every epoch."""
    from sklearn.linear_model import LogisticRegression

    kw = {"device": device, "transform": image_transform, "levels": ("y",)}
    tr, va = standardize(extract_features(encoder, train_x, **kw)["y"],
                         extract_features(encoder, val_x, **kw)["y"])
    clf = LogisticRegression(max_iter=300).fit(tr.double().numpy(), train_y.numpy())
    return float((clf.predict(va.double().numpy()) == val_y.numpy()).mean())


@torch.no_grad()
def held_out_mi(
    modules: dict[str, nn.Module], images: Tensor, estimators: Sequence[str] = ESTIMATORS
) -> dict[str, float]:
    """Bounds of the global and local critics' scores on held-out images.

    Global: the chosen bounds of the ``[n, n]`` scores; local: the bounds with the source's
    negatives (every other image at every location) for every model, so that the numbers of
    models trained with other negatives stay comparable. InfoNCE and DV are in nats (global
    InfoNCE ≤ log n, local InfoNCE ≤ log(1 + (n − 1)M²)).
    """
    out = modules["encoder"](images)
    gs = modules["global_critic"](out.local, out.y).double()
    ls = modules["local_critic"](out.local, out.y).double()
    row: dict[str, float] = {}
    for est in estimators:
        row[f"test_global_{est}"] = float(global_mi(gs, est))
        row[f"test_local_{est}"] = float(local_mi(ls, est))
    return row


_TRACE_ESTIMATORS = ("infonce",)
_TRACE_KEYS = tuple(f"test_{part}_{est}" for est in _TRACE_ESTIMATORS
                    for part in ("global", "local"))


class MITrace(nn.Module):
    """Held-out InfoNCE estimates (global, local) logged every few steps, kept in buffers.

    Registered with the trainer's modules, the buffers are saved in every checkpoint and restored
    on resume, so a trajectory logged more often than once per epoch survives an interruption.
    Row ``k`` holds the global step and the values of :data:`_TRACE_KEYS`.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.register_buffer("rows", torch.zeros(check_int("capacity", capacity),
                                                 1 + len(_TRACE_KEYS), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def add(self, step: int, values: dict[str, float]) -> None:
        k = int(self.count)
        if k >= self.rows.shape[0]:
            raise InvalidParameterError("MITrace is full; raise its capacity")
        self.rows[k, 0] = float(step)
        self.rows[k, 1:] = torch.tensor([values[key] for key in _TRACE_KEYS], dtype=torch.float64)
        self.count += 1

    def to_rows(self, steps_per_epoch: int) -> list[dict[str, float]]:
        out = []
        for row in self.rows[: int(self.count)].tolist():
            out.append({"step": int(row[0]), "epoch": row[0] / steps_per_epoch,
                        **dict(zip(_TRACE_KEYS, row[1:], strict=True))})
        return out


# ---------------------------------------------------------------------------------------------
# the runs
# ---------------------------------------------------------------------------------------------


@dataclass
class _Context(RunContext):
    chapter: ClassVar[str] = CHAPTER

    data: _Data | None = None
    features: dict[str, dict[str, dict[str, Tensor]]] = field(default_factory=dict)
    models: dict[str, _Model] = field(default_factory=dict)

    def get_data(self) -> _Data:
        if self.data is None:
            self.data = load_data(self.config, self.seed)
        return self.data

    def train_fingerprint(self, spec: ModelSpec) -> str:
        spec_view = {k: v for k, v in as_dict(spec).items() if not (k == "occlude" and v == 0)}
        return fingerprint_of({"chapter": CHAPTER, "seed": self.seed, "spec": spec_view,
                               "train": self.config.training_view()})

    def model_seed(self, spec: ModelSpec) -> int:
        return int(fingerprint_of({"seed": self.seed, "model": spec.key})[:8], 16)

    def model(self, spec: ModelSpec) -> _Model:
        """The one :class:`_Model` of ``spec`` in this run (shared by the experiments)."""
        if spec.key not in self.models:
            self.models[spec.key] = _Model(self, spec)
        return self.models[spec.key]


def _owner(cfg: InfomaxConfig, spec: ModelSpec) -> str:
    for exp in EXPERIMENTS:
        if spec in experiment_specs(cfg, exp).values():
            return exp
    raise UnknownNameError(f"no experiment uses the model {spec.key}")


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel (one pass over all parameters: fewer small ops on a CPU)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


class _Model:
    """A trained (or loaded) encoder with its cached evaluations."""

    def __init__(self, ctx: _Context, spec: ModelSpec) -> None:
        self.ctx, self.spec = ctx, spec
        folder = ctx.checkpoint_dir(_owner(ctx.config, spec))
        self.ckpt = folder / f"{spec.key}.pt"
        self.eval_path = folder / f"{spec.key}.eval.json"
        self.fingerprint = ctx.train_fingerprint(spec)
        self.eval_fingerprint = fingerprint_of({
            "train": self.fingerprint, "probe": as_dict(ctx.config.probe),
            "mine": as_dict(ctx.config.mine), "pca_points": ctx.config.pca_points,
            "probe_train_subset": ctx.config.probe_train_subset,
            "few_label": [list(ctx.config.few_label_counts), ctx.config.few_label_draws]})
        self.modules: dict[str, nn.Module] | None = None
        self.evals: dict[str, Any] = {}
        if ctx.resume and self.eval_path.exists():
            saved = json.loads(self.eval_path.read_text(encoding="utf-8"))
            if saved.get("fingerprint") != self.eval_fingerprint:
                raise CheckpointError(
                    f"{self.eval_path} belongs to a different configuration; delete it or run "
                    "without --resume"
                )
            self.evals = saved["evals"]
        # seconds spent on this model by earlier (interrupted) processes, credited once to the
        # result file of the experiment that uses it first in this process
        self.earlier_seconds = float(self.evals.get("train_seconds", 0.0)) + sum(
            float(v.get("seconds", 0.0)) for v in self.evals.values() if isinstance(v, dict))

    def take_earlier_seconds(self) -> float:
        """Return the not-yet-credited earlier seconds and mark them as credited."""
        value, self.earlier_seconds = self.earlier_seconds, 0.0
        return value

    def _save_evals(self) -> None:
        atomic_write_json(self.eval_path, {"fingerprint": self.eval_fingerprint,
                                           "model": self.spec.key, "evals": self.evals})

    # ------------------------------------------------------------------ training
    def ensure_trained(self) -> None:
        """Train (or restore from a finished checkpoint) the encoder and record its history."""
        if self.modules is not None:
            return
        ctx, cfg, spec = self.ctx, self.ctx.config, self.spec
        data = ctx.get_data()
        gen = torch.Generator().manual_seed(ctx.model_seed(spec))
        dev = ctx.device
        eval_images = image_transform(data.test_x[: cfg.mi_eval_size]).to(dev)
        if spec.kind == "random":
            enc = DCGANEncoder(data.channels, width=cfg.width, fc_dim=cfg.fc_dim,
                               y_dim=cfg.y_dim, generator=gen).to(dev)
            self.modules = {"encoder": enc}
            self.evals.setdefault("history", [])
            self.evals.setdefault("train_seconds", 0.0)
            return
        if spec.kind == "dim":
            modules = build_dim_modules(cfg, data.channels, spec, gen)
        elif spec.kind == "supervised":
            enc = DCGANEncoder(data.channels, width=cfg.width, fc_dim=cfg.fc_dim,
                               y_dim=cfg.y_dim, generator=gen)
            modules = {"classifier": Classifier(enc, data.classes, generator=gen)}
        else:
            modules = {
                "encoder": DCGANEncoder(data.channels, width=cfg.width, fc_dim=cfg.fc_dim,
                                        y_dim=cfg.y_dim, generator=gen),
                "decoder": ConvDecoder(data.channels, width=cfg.width, fc_dim=cfg.fc_dim,
                                       y_dim=cfg.y_dim, generator=gen),
            }
        steps_per_epoch = data.train_x.shape[0] // spec.batch_size
        trace: MITrace | None = None
        if spec.kind == "dim" and cfg.trace_every_steps > 0:
            trace = MITrace(spec.epochs * steps_per_epoch // cfg.trace_every_steps + 1)
            modules["trace"] = trace
        for m in modules.values():
            m.to(dev)
        # The prior samples of dim_step come from torch's global RNG, which the trainer
        # checkpoints; seeding it here makes each model a function of (seed, spec) alone,
        # whatever was trained before it in this process.
        seed_everything(ctx.model_seed(spec))
        encoder = (modules["classifier"].encoder if spec.kind == "supervised"
                   else modules["encoder"])
        n_probe = min(cfg.epoch_probe_images, data.probe_n)

        def probe_row() -> dict[str, float]:
            if n_probe < 2:
                return {}
            return {"val_epoch_probe_linear_y": epoch_probe(
                encoder, data.train_x[:n_probe], data.train_y[:n_probe], data.val_x, data.val_y,
                dev)}

        for m in modules.values():
            m.eval()
        start_row: dict[str, Any] = {"epoch": 0, **probe_row()}
        if spec.kind == "dim":
            start_row.update(held_out_mi(modules, eval_images))
        history_start: list[dict[str, Any]] = [start_row]
        optimizers: dict[str, torch.optim.Optimizer] = {}
        if spec.kind == "dim":
            main_params = [p for k, m in modules.items() if k not in ("prior", "trace")
                           for p in m.parameters()]
            optimizers["main"] = _adam(main_params, cfg.lr)
            if "prior" in modules:
                optimizers["prior"] = _adam(list(modules["prior"].parameters()), cfg.lr)
        else:
            optimizers["main"] = _adam([p for m in modules.values() for p in m.parameters()],
                                       cfg.lr)

        def step_fn(batch: tuple[Tensor, ...], step: int) -> dict[str, Tensor]:
            x = image_transform(batch[0])
            if spec.kind == "dim":
                terms = dim_step(modules, optimizers, x, spec, amp=cfg.amp)
                if trace is not None and (step + 1) % cfg.trace_every_steps == 0:
                    for m in modules.values():
                        m.eval()
                    with isolated_rng(dev):
                        trace.add(step + 1, held_out_mi(modules, eval_images, _TRACE_ESTIMATORS))
                    for m in modules.values():
                        m.train()
                return terms
            if spec.kind == "supervised":
                with autocast(dev, cfg.amp):
                    logits = modules["classifier"](x).float()
                loss = F.cross_entropy(logits, batch[1])
                terms = {"loss": loss,
                         "accuracy": (logits.argmax(1) == batch[1]).float().mean().detach()}
            else:
                with autocast(dev, cfg.amp):
                    recon = modules["decoder"](modules["encoder"](x).y).float()
                loss = F.mse_loss(recon, x)
                terms = {"loss": loss}
            optimizers["main"].zero_grad(set_to_none=True)
            loss.backward()
            optimizers["main"].step()
            return {k: v.detach() for k, v in terms.items()}

        def epoch_end(epoch: int) -> dict[str, float]:
            with isolated_rng(dev):  # the training noise continues as if this had not run
                row = probe_row()
                if spec.kind == "dim":
                    row.update(held_out_mi(modules, eval_images))
            return row

        trainer = Trainer(
            modules,
            optimizers,
            (data.train_x, data.train_y),
            batch_size=spec.batch_size,
            epochs=spec.epochs,
            seed=ctx.model_seed(spec) % 1_000_000,
            schedule=cfg.schedule,
            device=dev,
            step_fn=step_fn,
            checkpoint_path=self.ckpt,
            checkpoint_every_steps=cfg.checkpoint_every_steps,
            fingerprint=self.fingerprint,
            epoch_end_fn=epoch_end,
            progress=ctx.progress,
            desc=f"{CHAPTER} {spec.label} (batch {spec.batch_size})",
        )
        t_fit = time.perf_counter()
        history = trainer.fit(resume=ctx.resume)
        if "train_seconds" not in self.evals:  # resumed from a mid-training checkpoint
            self.earlier_seconds += max(0.0, trainer.elapsed_seconds
                                        - (time.perf_counter() - t_fit))
        for m in modules.values():
            m.eval()
        if spec.kind == "supervised":
            clf = modules["classifier"]
            modules = {"encoder": clf.encoder, "classifier": clf}
        modules.pop("trace", None)
        self.modules = modules
        self.evals["history"] = history_start + [dict(r) for r in history]
        if trace is not None:
            start = {"step": 0, "epoch": 0.0, **{k: history_start[0][k] for k in _TRACE_KEYS}}
            self.evals["trace"] = [start, *trace.to_rows(steps_per_epoch)]
        self.evals["train_seconds"] = trainer.elapsed_seconds
        self._save_evals()

    # ------------------------------------------------------------------ evaluation
    def _features(self) -> dict[str, dict[str, Tensor]]:
        ctx = self.ctx
        if self.spec.key not in ctx.features:
            self.ensure_trained()
            assert self.modules is not None
            data = ctx.get_data()
            enc = self.modules["encoder"]
            enc.eval()
            kw = {"device": ctx.device, "transform": image_transform}
            ctx.features = {}  # keep one model's features in memory at a time
            ctx.features[self.spec.key] = {
                "train": extract_features(enc, data.probe_x, **kw),
                "val": extract_features(enc, data.val_x, **kw),
                "test": extract_features(enc, data.test_x, **kw),
            }
        return ctx.features[self.spec.key]

    def evaluate(self, needs: Sequence[str]) -> dict[str, Any]:
        """Compute (or read from the cache) the evaluations in ``needs``; return all of them."""
        ctx = self.ctx
        missing = [n for n in needs if n not in self.evals]
        if "history" not in self.evals:
            self.ensure_trained()
        for name in missing:
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(ctx.model_seed(self.spec) + len(name) * 31
                                                + sum(map(ord, name)))
            feats = self._features()
            with isolated_rng(ctx.device):  # draws only from ``gen``; training RNG untouched
                self.evals[name] = self._evaluation(name, feats, gen)
            self.evals[name]["seconds"] = time.perf_counter() - t0
            self._save_evals()
        return self._baseline_evals()

    def _evaluation(self, name: str, feats: dict[str, dict[str, Tensor]],
                    gen: torch.Generator) -> dict[str, Any]:
        """One named evaluation (``probe/<kind>/<level>``, ``mine`` or ``pca``) of the features."""
        ctx, cfg = self.ctx, self.ctx.config
        data = ctx.get_data()
        if name.startswith("probe/"):
            _, kind, level = name.split("/")
            tr, va, te = standardize(feats["train"][level], feats["val"][level],
                                     feats["test"][level])
            res = train_probe(kind, tr, data.probe_y, te, data.test_y,
                              classes=data.classes, config=cfg.probe, generator=gen,
                              device=ctx.device, val=(va, data.val_y))
            return {"train_accuracy": res.train_accuracy, "val_accuracy": res.val_accuracy,
                    "test_accuracy": res.test_accuracy, "final_train_loss": res.train_loss[-1]}
        if name.startswith("few_label/"):
            _, n, level = name.split("/")
            tr, va, te = standardize(feats["train"][level], feats["val"][level],
                                     feats["test"][level])
            few = few_label_probe(tr, data.probe_y, te, data.test_y, labels=int(n),
                                  classes=data.classes, draws=cfg.few_label_draws, generator=gen,
                                  val=(va, data.val_y))
            return {"val_accuracy": few.val_accuracy, "test_accuracy": few.test_accuracy,
                    "test_accuracy_std": few.test_accuracy_std,
                    "test_accuracies": few.test_accuracies, "chosen_c": few.chosen_c}
        if name == "mine":
            res_m = mine_estimate(image_transform(data.probe_x), feats["train"]["y"],
                                  image_transform(data.test_x), feats["test"]["y"],
                                  config=cfg.mine, generator=gen, device=ctx.device)
            return {"test_I_xy_nats": res_m.estimate, "test_I_xy_std_nats": res_m.std,
                    "train_bound_trace": res_m.train_bound}
        if name == "pca":
            coords = pca_2d(feats["test"]["y"][: cfg.pca_points])
            return {"coords": coords.tolist(), "labels": data.test_y[: cfg.pca_points].tolist()}
        raise UnknownNameError(f"unknown evaluation {name!r}")

    def _baseline_evals(self) -> dict[str, Any]:
        """Add the supervised model's test accuracy / the autoencoder's test MSE; return all."""
        ctx = self.ctx
        if self.spec.kind == "supervised" and "supervised_test_accuracy" not in self.evals:
            self.ensure_trained()
            assert self.modules is not None
            clf = self.modules["classifier"]
            data = ctx.get_data()
            with torch.no_grad():
                logits = torch.cat([clf(image_transform(data.test_x[i : i + 500].to(ctx.device)))
                                    for i in range(0, data.test_x.shape[0], 500)])
                acc = float((logits.argmax(1).cpu() == data.test_y).float().mean())
            self.evals["supervised_test_accuracy"] = acc
            self._save_evals()
        if self.spec.kind == "autoencoder" and "test_mse" not in self.evals:
            self.ensure_trained()
            assert self.modules is not None
            data = ctx.get_data()
            with torch.no_grad():
                err = 0.0
                for i in range(0, data.test_x.shape[0], 500):
                    x = image_transform(data.test_x[i : i + 500].to(ctx.device))
                    rec = self.modules["decoder"](self.modules["encoder"](x).y)
                    err += float(((rec - x) ** 2).sum())
            self.evals["test_mse"] = err / data.test_x.numel()
            self._save_evals()
        return self.evals


def _model_row(name: str, spec: ModelSpec, evals: dict[str, Any], needs: Sequence[str],
               n_train: int) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "row": row_name(name), "label": spec.label,
                           "key": spec.key, "kind": spec.kind, "estimator": spec.estimator,
                           "alpha": spec.alpha, "beta": spec.beta, "gamma": spec.gamma,
                           "batch_size": spec.batch_size, "epochs": spec.epochs,
                           "steps": spec.epochs * (n_train // spec.batch_size),
                           "replicate": spec.replicate,
                           "local_negatives": spec.local_negatives if spec.kind == "dim" else None,
                           "local_negatives_per_positive": spec.negatives_per_positive,
                           "train_seconds": evals.get("train_seconds", 0.0)}
    for need in needs:
        if need.startswith("probe/"):
            _, kind, level = need.split("/")
            row[f"test_accuracy_{kind}_{level}"] = evals[need]["test_accuracy"]
            row[f"val_accuracy_{kind}_{level}"] = evals[need]["val_accuracy"]
            row[f"train_accuracy_{kind}_{level}"] = evals[need]["train_accuracy"]
        elif need.startswith("few_label/"):
            _, n, level = need.split("/")
            row[f"test_accuracy_few_label_{n}_linear_{level}"] = evals[need]["test_accuracy"]
            row[f"val_accuracy_few_label_{n}_linear_{level}"] = evals[need]["val_accuracy"]
            row[f"test_accuracy_few_label_{n}_linear_{level}_std_over_draws"] = evals[need][
                "test_accuracy_std"]
        elif need == "mine":
            row["test_mine_I_xy_nats"] = evals["mine"]["test_I_xy_nats"]
            row["test_mine_I_xy_std_nats"] = evals["mine"]["test_I_xy_std_nats"]
    if "supervised_test_accuracy" in evals:
        row["test_accuracy_supervised"] = evals["supervised_test_accuracy"]
    if "test_mse" in evals:
        row["test_reconstruction_mse"] = evals["test_mse"]
    hist = evals.get("history", [])
    if hist and "test_local_infonce" in hist[-1]:
        for est in ESTIMATORS:
            row[f"test_global_{est}"] = hist[-1][f"test_global_{est}"]
            row[f"test_local_{est}"] = hist[-1][f"test_local_{est}"]
    return row


def _evaluate_all(ctx: _Context, experiment: str, rec: RunRecorder
                  ) -> dict[str, tuple[ModelSpec, dict[str, Any]]]:
    out = {}
    earlier = 0.0
    for name, spec in experiment_specs(ctx.config, experiment).items():
        model = ctx.model(spec)
        evals = model.evaluate(_needs(ctx.config, experiment))
        earlier += model.take_earlier_seconds()
        out[name] = (spec, evals)
    if earlier > 1.0:
        rec.add_elapsed(earlier)
    return out


BAR_OVER_AUTOENCODER_POINTS = 2.0
BAR_OVER_DIM_G_POINTS = 3.0


def _bars(models: dict[str, dict[str, Any]], estimators: Sequence[str],
          few_label_counts: Sequence[int]) -> dict[str, Any]:
    """Best DIM(L) against the autoencoder and the best DIM(G) on the linear probe on Y, per
    label setting. "Best" is chosen on the validation split (mean over replicates); margins are
    in points (%) of mean test accuracy, with replicate-paired differences and 95 % intervals."""
    table = aggregate_rows(models)
    settings = {"full_label": "accuracy_linear_y",
                **{f"few_label_{n}": f"accuracy_few_label_{n}_linear_y" for n in few_label_counts}}
    out: dict[str, Any] = {"bar_over_autoencoder_points": BAR_OVER_AUTOENCODER_POINTS,
                           "bar_over_best_dim_g_points": BAR_OVER_DIM_G_POINTS,
                           "choice": "estimator with the highest mean validation accuracy"}
    any_met = False
    for setting, metric in settings.items():
        def mean(row: str, split: str, metric: str = metric) -> float | None:
            stats = table.get(row, {}).get("metrics", {}).get(f"{split}_{metric}")
            return None if stats is None else stats["mean"]

        def values(row: str, metric: str = metric) -> list[float]:
            return table[row]["metrics"][f"test_{metric}"]["values"]

        dim_l = [e for e in estimators if mean(f"dim_l_{e}", "val") is not None]
        dim_g = [e for e in estimators if mean(f"dim_g_{e}", "val") is not None]
        if not dim_l or not dim_g or mean("autoencoder", "test") is None:
            continue
        best_l = max(dim_l, key=lambda e: mean(f"dim_l_{e}", "val"))
        best_g = max(dim_g, key=lambda e: mean(f"dim_g_{e}", "val"))
        l_row, g_row = f"dim_l_{best_l}", f"dim_g_{best_g}"
        m_ae = 100 * (mean(l_row, "test") - mean("autoencoder", "test"))
        m_g = 100 * (mean(l_row, "test") - mean(g_row, "test"))
        n = min(len(values(l_row)), len(values("autoencoder")), len(values(g_row)))
        met = m_ae >= BAR_OVER_AUTOENCODER_POINTS and m_g >= BAR_OVER_DIM_G_POINTS
        any_met = any_met or met
        order = sorted(dim_l, key=lambda e: -mean(f"dim_l_{e}", "test"))
        out[setting] = {
            "metric": f"test_{metric}",
            "best_dim_l_estimator": best_l,
            "best_dim_g_estimator": best_g,
            "best_dim_l_test_mean": mean(l_row, "test"),
            "best_dim_g_test_mean": mean(g_row, "test"),
            "autoencoder_test_mean": mean("autoencoder", "test"),
            "random_test_mean": mean("random", "test"),
            "margin_over_autoencoder_points": m_ae,
            "margin_over_best_dim_g_points": m_g,
            "paired_dim_l_minus_autoencoder_points": paired_difference(
                [100 * v for v in values(l_row)[:n]], [100 * v for v in values("autoencoder")[:n]]),
            "paired_dim_l_minus_dim_g_points": paired_difference(
                [100 * v for v in values(l_row)[:n]], [100 * v for v in values(g_row)[:n]]),
            "bar_over_autoencoder_met": m_ae >= BAR_OVER_AUTOENCODER_POINTS,
            "bar_over_dim_g_met": m_g >= BAR_OVER_DIM_G_POINTS,
            "bars_met": met,
            "dim_l_estimator_order_test": order,
        }
    out["bars_met_in_some_setting"] = any_met
    out["source_order_table1"] = [e for e in ("infonce", "jsd", "dv") if e in estimators]
    return out


def _run_probes(ctx: _Context) -> Path:
    with ctx.recorder("probes") as rec:
        models = _evaluate_all(ctx, "probes", rec)
        data = ctx.get_data()
        n_fit = int(data.train_x.shape[0])
        rows = {name: _model_row(name, spec, ev, _needs(ctx.config, "probes"), n_fit)
                for name, (spec, ev) in models.items()}
        for name, (spec, ev) in models.items():
            for h in ev.get("history", []):
                rec.history.append({"model": name, "label": spec.label, **h})
        traces = {name: ev["trace"] for name, (_, ev) in models.items() if "trace" in ev}
        negatives = [r["local_negatives_per_positive"] for r in rows.values()
                     if r["local_negatives_per_positive"] is not None]
        rec.metrics.update({
            "dataset": ctx.config.dataset,
            "n_train": n_fit,
            "n_probe_train": int(data.probe_n),
            "n_val": int(data.val_x.shape[0]),
            "n_test": int(data.test_x.shape[0]),
            "seeds": sorted({r["replicate"] for r in rows.values()}),
            "local_negatives": ctx.config.local_negatives,
            "min_local_negatives_per_positive": min(negatives) if negatives else None,
            "batch_size": ctx.config.batch_size,
            "mi_eval_size": ctx.config.mi_eval_size,
            "log_mi_eval_size_nats": math.log(ctx.config.mi_eval_size),
            "models": rows,
            "table": aggregate_rows(rows),
            "traces": traces,
            "bars": _bars(rows, ctx.config.estimators, ctx.config.few_label_counts),
        })
    assert rec.path is not None
    return rec.path


def _runs_with_history(ctx: _Context, experiment: str, rec: RunRecorder,
                       history_extra: Callable[[ModelSpec], dict[str, Any]]
                       ) -> list[dict[str, Any]]:
    """Evaluate an experiment's models, add their per-epoch rows (with ``history_extra`` of
    their spec) to the history and return one result row per model."""
    models = _evaluate_all(ctx, experiment, rec)
    n_fit = int(ctx.get_data().train_x.shape[0])
    for name, (spec, ev) in models.items():
        for h in ev.get("history", []):
            rec.history.append({"model": name, "label": spec.label, **history_extra(spec), **h})
    return [_model_row(name, spec, ev, _needs(ctx.config, experiment), n_fit)
            for name, (spec, ev) in models.items()]


def _run_negatives(ctx: _Context) -> Path:
    with ctx.recorder("negatives") as rec:
        runs = _runs_with_history(ctx, "negatives", rec,
                                  lambda spec: {"batch_size": spec.batch_size})
        rec.metrics.update({"dataset": ctx.config.dataset, "runs": runs})
    assert rec.path is not None
    return rec.path


def _fmt(v: float) -> str:
    return f"{v:g}".replace(".", "p")


def _run_tradeoff(ctx: _Context) -> Path:
    with ctx.recorder("tradeoff") as rec:
        models = _evaluate_all(ctx, "tradeoff", rec)
        assert rec.path is not None
        settings = []
        for (name, (spec, ev)), lam in zip(models.items(), ctx.config.tradeoff_lambdas,
                                           strict=True):
            row = _model_row(name, spec, ev, _needs(ctx.config, "tradeoff"),
                             int(ctx.get_data().train_x.shape[0]))
            coords = np.asarray(ev["pca"]["coords"], dtype=np.float32)
            labels = np.asarray(ev["pca"]["labels"], dtype=np.int16)
            buf = io.BytesIO()
            np.savez(buf, coords=coords, labels=labels)
            payload = buf.getvalue()
            rec.save_artifact(f"pca_lambda_{lam:g}", payload, "npz", what="2-D PCA of test Y")
            settings.append({"lambda": float(lam), "pca_artifact": f"pca_lambda_{lam:g}", **row})
            for h in ev.get("history", []):
                rec.history.append({"model": name, "lambda": float(lam), **h})
        rec.metrics.update({"dataset": ctx.config.dataset, "settings": settings})
    return rec.path


def _run_occlusion(ctx: _Context) -> Path:
    with ctx.recorder("occlusion") as rec:
        runs = _runs_with_history(ctx, "occlusion", rec, lambda spec: {})
        rec.metrics.update({
            "dataset": ctx.config.dataset, "runs": runs,
            "occlusion_fraction": ctx.config.occlusion_fraction,
            "paired_with": "the probes experiment's DIM(L) rows of the same estimator and "
                           "replicate (same data, same seed of the run)"})
    assert rec.path is not None
    return rec.path


_EXPERIMENT_FNS: dict[str, Callable[[_Context], Path]] = {
    "probes": _run_probes,
    "negatives": _run_negatives,
    "tradeoff": _run_tradeoff,
    "occlusion": _run_occlusion,
}


def make_context(**run_args: Any) -> _Context:
    """The run's context (the runner protocol of :mod:`ibcore.tasks`)."""
    return prepare_run(_Context, PROFILES, EXPERIMENTS, **run_args)


def plan(ctx: _Context, experiments: Sequence[str]) -> list[Task]:
    """One task per encoder; an encoder several experiments share is listed once and evaluated
    for what all of them need."""
    users: dict[str, tuple[ModelSpec, list[str]]] = {}
    for name in experiments:
        for spec in experiment_specs(ctx.config, name).values():
            users.setdefault(spec.key, (spec, []))[1].append(name)
    return [Task(key, tuple(names), spec) for key, (spec, names) in users.items()]


def run_task(ctx: _Context, task: Task) -> None:
    needs = list(dict.fromkeys(n for e in task.experiments for n in _needs(ctx.config, e)))
    with cudnn_benchmark(ctx.config.cudnn_benchmark):
        ctx.model(task.spec).evaluate(needs)


def assemble(ctx: _Context, experiment: str) -> Path:
    return _EXPERIMENT_FNS[experiment](ctx)


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

    ``experiments`` selects a subset (default: all of :data:`EXPERIMENTS`); ``launcher`` (see
    :mod:`ibcore.launchers`) runs the encoders; default: one after another here.
    """
    return run_experiments(CHAPTER, launcher=launcher, profile=profile, device=device, seed=seed,
                           resume=resume, results_root=results_root, progress=progress,
                           experiments=experiments)


def load_pca_artifact(result_path: Path, artifact: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a PCA artefact named in a result file, checking its SHA-256 first."""
    with np.load(io.BytesIO(read_artifact(result_path, artifact))) as npz:
        return npz["coords"], npz["labels"]
