r"""Runner of the *entropy-estimator IB* chapter (``entropy_estimator_ib.md``, Kirsch, Lyle & Gal).

Every model shares one deterministic residual encoder (:mod:`ibcore.models.resnet`) with a
``K``-dim latent and one training schedule (Adam, learning rate × √0.1 when the training loss
has not improved for ``plateau_patience`` epochs). They differ only in the objective:

* ``ce``: cross-entropy through a linear classifier on the latent (the source's baseline);
* ``ce_dropout``: the same with dropout on the latent before the classifier (the source uses
  DropConnect; we use dropout, the simpler regulariser of the same family);
* ``ib-b<β''>-noise`` / ``ib-b<β''>-nonoise``: eq. 10, :math:`\hat H[Z|Y] + (\beta''-1)\hat
  H[Z]` by the kNN estimator on each batch (:func:`ibcore.objectives.entropy_ib.entropy_ib_loss`),
  with and without zero-entropy noise, for every β'' of the profile. No decoder is trained with
  the encoder.

After training, decoders are fitted on the frozen latents of the training subset: a per-class
Gaussian mixture (:mod:`ibcore.decoders`) and the ResFC decoder. Noise models are fitted on
:math:`f(x) + \epsilon` (the latent they were trained with) and evaluated on :math:`f(x)` (the
noise's mean). FGSM (:mod:`ibcore.adversarial`) attacks CE models through their classifier and
IB models through encoder + Gaussian-mixture decoder.

Per epoch, each IB model gets a point of the information plane on a test subset: the
preserved information :math:`I[X;Z] = H[Z]` by the kNN estimator (eq. 11) and the residual
information :math:`H[Y|Z]`, bounded above by the cross-entropy of a small ResFC fitted for a
few steps on one half of that test subset (encoder frozen) and scored on the other half. The
source fits and scores on the same test set; a held-out half keeps the decoder from lowering
the number by memorising the points it is scored on.

One experiment, ``sweep``, writes one result file. Each model's training is checkpointed
(``<key>.pt``, exact resume) and its evaluations cached (``<key>.eval.json``), so ``--resume``
skips finished models.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ibcore.adversarial import fgsm_accuracy
from ibcore.atomic import atomic_write_json
from ibcore.checkpoint import fingerprint_of
from ibcore.data import load_tensors, subset, to_unit_float
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
from ibcore.runners.context import RunContext, prepare_run
from ibcore.tasks import Task, run_experiments
from ibcore.training import Trainer
from ibcore.validation import check_int, check_weight

CHAPTER = "entropy_ib"
EXPERIMENTS = ("sweep",)
KINDS = ("ce", "ce_dropout", "ib")

__all__ = [
    "CHAPTER",
    "EXPERIMENTS",
    "KINDS",
    "PROFILES",
    "EntropyIBConfig",
    "ModelSpec",
    "encode",
    "fit_resfc",
    "load_data",
    "model_specs",
    "plane_point",
    "run",
]


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntropyIBConfig:
    """Settings of the ``sweep`` experiment (one profile = one instance)."""

    dataset: str = "fashion_mnist"
    train_subset: int | None = 10000
    test_subset: int | None = 2000
    plane_subset: int = 1000
    # encoder
    widths: tuple[int, ...] = (16, 32, 64)
    blocks: tuple[int, ...] = (1, 1, 1)
    latent_dim: int = 64
    # training (source §5: Adam 5e-4, × √0.1 after a 10-epoch plateau, 150 epochs; the cpu
    # profile has 12 epochs, so it doubles the rate and shortens the patience to 3 epochs)
    batch_size: int = 128
    epochs: int = 12
    lr: float = 1e-3
    lr_factor: float = math.sqrt(0.1)
    plateau_patience: int = 3
    checkpoint_every_steps: int = 50
    # objectives
    k: int = 1
    betas: tuple[float, ...] = (0.05, 0.2, 0.5, 0.8)
    dropout: float = 0.3
    # decoders (source §5: ResFC with 1024 units and 5 blocks)
    gmm_ridge: float = 1e-3
    gmm_shared: bool = False
    resfc_width: int = 256
    resfc_blocks: int = 5
    resfc_steps: int = 400
    resfc_batch_size: int = 128
    resfc_lr: float = 1e-3
    # per-epoch information plane (ResFC fitted on the test subset)
    plane_width: int = 128
    plane_blocks: int = 2
    plane_steps: int = 60
    plane_batch_size: int = 250
    # FGSM (source Fig. 1); fgsm_epsilon is the ε of the bar
    fgsm_epsilons: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
    fgsm_epsilon: float = 0.05
    fgsm_subset: int = 1000
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
        for name in ("latent_dim", "epochs", "plateau_patience", "checkpoint_every_steps",
                     "resfc_width", "resfc_steps", "plane_width", "plane_steps", "pca_points"):
            check_int(name, getattr(self, name))
        for name in ("resfc_blocks", "plane_blocks"):
            check_int(name, getattr(self, name), low=0)
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), low=2)
        for name in ("batch_size", "resfc_batch_size", "plane_batch_size", "plane_subset",
                     "fgsm_subset"):
            check_int(name, getattr(self, name), low=2)
        check_int("k", self.k)
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise InvalidParameterError("widths and blocks need one entry per encoder stage")
        for name in ("lr", "resfc_lr", "gmm_ridge"):
            check_weight(name, getattr(self, name), low=0.0, low_inclusive=False)
        check_weight("lr_factor", self.lr_factor, low=0.0, high=1.0, low_inclusive=False,
                     high_inclusive=False)
        check_weight("dropout", self.dropout, low=0.0, high=1.0, high_inclusive=False)
        if not self.betas:
            raise InvalidParameterError("betas is empty; give at least one β'' in [0, 1)")
        for b in self.betas:
            check_beta2(b)
        for e in self.fgsm_epsilons:
            check_weight("FGSM ε", e)
        if self.fgsm_epsilon not in self.fgsm_epsilons:
            raise InvalidParameterError(
                f"fgsm_epsilon {self.fgsm_epsilon} must be one of fgsm_epsilons "
                f"{self.fgsm_epsilons}"
            )

    def training_view(self) -> dict[str, Any]:
        """The settings a trained encoder depends on (its checkpoint fingerprint)."""
        keys = ("dataset", "train_subset", "test_subset", "plane_subset", "widths", "blocks",
                "latent_dim", "batch_size", "epochs", "lr", "lr_factor", "plateau_patience",
                "k", "dropout", "plane_width", "plane_blocks", "plane_steps",
                "plane_batch_size", "resfc_lr")
        view = {key: getattr(self, key) for key in keys}
        if self.amp is not None:  # absent when off: earlier checkpoints keep their fingerprint
            view["amp"] = self.amp
        return view


_CPU = EntropyIBConfig()

PROFILES: dict[str, EntropyIBConfig] = {
    "smoke": dataclasses.replace(
        _CPU,
        train_subset=320,
        test_subset=160,
        plane_subset=120,
        widths=(4, 8),
        blocks=(1, 1),
        latent_dim=8,
        batch_size=64,
        epochs=1,
        betas=(0.2, 0.8),
        resfc_width=32,
        resfc_blocks=1,
        resfc_steps=20,
        resfc_batch_size=64,
        plane_width=16,
        plane_blocks=1,
        plane_steps=10,
        plane_batch_size=60,
        fgsm_epsilons=(0.0, 0.05, 0.1),
        fgsm_epsilon=0.05,
        fgsm_subset=100,
        pca_points=60,
    ),
    "cpu": _CPU,
    "paper": dataclasses.replace(
        _CPU,
        dataset="cifar10",
        train_subset=None,
        test_subset=None,
        plane_subset=10000,
        widths=(64, 128, 256, 512),
        blocks=(2, 2, 2, 2),
        latent_dim=256,
        epochs=150,
        lr=5e-4,
        plateau_patience=10,
        checkpoint_every_steps=200,
        betas=(0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
        resfc_width=1024,
        resfc_blocks=5,
        resfc_steps=20000,
        resfc_batch_size=256,
        plane_width=1024,
        plane_blocks=5,
        plane_steps=2000,
        plane_batch_size=500,
        fgsm_epsilons=(0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
        fgsm_epsilon=0.01,
        fgsm_subset=10000,
        pca_points=500,
    ),
}


# ---------------------------------------------------------------------------------------------
# models to train
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One encoder to train: its objective (``kind``), β'' and whether noise is injected."""

    kind: str
    beta2: float | None = None
    noise: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UnknownNameError(f"unknown model kind {self.kind!r}; choose one of {KINDS}")
        if self.kind == "ib":
            if self.beta2 is None:
                raise InvalidParameterError("an IB model needs beta2 = β'' in [0, 1)")
            check_beta2(self.beta2)
        elif self.beta2 is not None:
            raise InvalidParameterError(f"a {self.kind} model takes no beta2")

    @property
    def key(self) -> str:
        """A file-name-safe identity, e.g. ``ib-b0p2-noise``."""
        if self.kind != "ib":
            return self.kind.replace("_", "-")
        return f"ib-b{self.beta2:g}".replace(".", "p") + ("-noise" if self.noise else "-nonoise")

    @property
    def label(self) -> str:
        if self.kind == "ce":
            return "cross-entropy"
        if self.kind == "ce_dropout":
            return "cross-entropy + dropout"
        return f"IB β''={self.beta2:g}" + ("" if self.noise else " (no noise)")


def model_specs(cfg: EntropyIBConfig) -> dict[str, ModelSpec]:
    """``{key: spec}``: the two baselines, then every β'' with and without noise."""
    specs = [ModelSpec("ce"), ModelSpec("ce_dropout")]
    specs += [ModelSpec("ib", float(b), noise) for noise in (True, False) for b in cfg.betas]
    return {s.key: s for s in specs}


# ---------------------------------------------------------------------------------------------
# data and small helpers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Data:
    train_x: Tensor  # uint8 [N, C, H, W]
    train_y: Tensor
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
    """The configured dataset as ``uint8 [N, C, H, W]`` tensors, subsets drawn from ``seed``.

    ``verify_checksums=False`` is for tests that read a CIFAR-10 stand-in
    (see :func:`ibcore.data.load_tensors`).
    """
    info = DATASETS[cfg.dataset]
    kwargs: dict[str, Any] = {"verify_checksums": verify_checksums}
    if root is not None:
        kwargs["root"] = root
    tx, ty = load_tensors(cfg.dataset, "train", **kwargs)
    vx, vy = load_tensors(cfg.dataset, "test", **kwargs)
    gen = torch.Generator().manual_seed(seed * 7919 + 29)
    tx, ty = subset(tx, ty, cfg.train_subset, gen)
    vx, vy = subset(vx, vy, cfg.test_subset, gen)
    return _Data(tx.contiguous(), ty, vx.contiguous(), vy, info.channels, info.classes)


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
    """One information-plane point of test latents ``z`` (already noised if the model uses noise).

    Preserved information ``I[X;Z] = H[Z]``: the kNN estimate (eq. 11, nats) on all of ``z``;
    also ``H[Z|Y]``. Residual information ``H[Y|Z]``: a small ResFC is fitted on the first half
    of ``(z, y)`` and its cross-entropy measured on the second half — an upper bound on
    ``H[Y|Z]`` (in expectation) that a decoder cannot lower by memorising the points it is
    scored on. (The source fits and scores on the same test set.)
    """
    n = z.shape[0]
    if n < 4:
        raise ShapeError(f"the information plane needs at least 4 test points, got {n}")
    half = n // 2
    model, _ = fit_resfc(z[:half], y[:half], classes, width=cfg.plane_width,
                         blocks=cfg.plane_blocks, steps=cfg.plane_steps,
                         batch_size=cfg.plane_batch_size, lr=cfg.resfc_lr, generator=generator,
                         device=device)
    with torch.no_grad():
        ce = float(F.cross_entropy(model(z[half:].to(device)), y[half:].to(device)))
    zd = z.double()
    return {"test_h_z_nats": float(knn_entropy(zd, k=cfg.k)),
            "test_h_z_given_y_nats": float(conditional_knn_entropy(zd, y, k=cfg.k)),
            "test_h_y_given_z_bound_nats": ce}


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
        return int(fingerprint_of({"seed": self.seed, "model": spec.key})[:8], 16)


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


def _train(ctx: _Context, spec: ModelSpec, folder: Path) -> tuple[dict[str, nn.Module], dict]:
    """Train one encoder (resuming its checkpoint when asked); return modules and evals."""
    cfg, data, dev = ctx.config, ctx.get_data(), ctx.device
    seed = ctx.model_seed(spec)
    modules = {k: m.to(dev) for k, m in _build(cfg, data, spec, torch.Generator()
                                                .manual_seed(seed)).items()}
    params = [p for m in modules.values() for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.lr_factor,
                                                       patience=cfg.plateau_patience)
    enc = modules["encoder"]
    plane_x = data.test_x[: cfg.plane_subset]
    plane_y = data.test_y[: cfg.plane_subset]

    def step_fn(batch: tuple[Tensor, ...], step: int) -> dict[str, Tensor]:
        x, y = to_unit_float(batch[0]), batch[1]
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
        with isolated_rng(dev):  # the training noise continues as if this had not run
            return _epoch_row(epoch)

    def _epoch_row(epoch: int) -> dict[str, float]:
        row: dict[str, float] = {"lr": float(opt.param_groups[0]["lr"])}
        if spec.kind != "ib":
            with torch.no_grad():
                z = encode(enc, data.test_x, device=dev)
                row["test_accuracy_head"] = _accuracy(modules["head"](z.to(dev)), data.test_y)
            return row
        gen = _generator(seed, epoch, 1)
        z = encode(enc, plane_x, device=dev)
        if spec.noise:
            z = add_zero_entropy_noise(z, gen)
        row.update(plane_point(z, plane_y, cfg, data.classes, gen, dev))
        return row

    seed_everything(seed % (2**31))  # the training noise comes from the global RNG (checkpointed)
    trainer = Trainer(
        modules, opt, (data.train_x, data.train_y), batch_size=cfg.batch_size,
        epochs=cfg.epochs, seed=seed % 1_000_000, device=dev, step_fn=step_fn,
        scheduler=sched, scheduler_metric="train_loss",
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


def _evaluate(ctx: _Context, spec: ModelSpec, modules: dict[str, nn.Module]) -> dict[str, Any]:
    """Decoders, test accuracies, FGSM curve, final entropies and the 2-D projection."""
    cfg, data, dev = ctx.config, ctx.get_data(), ctx.device
    seed = ctx.model_seed(spec)
    enc = modules["encoder"]
    z_train = encode(enc, data.train_x, device=dev)
    z_test = encode(enc, data.test_x, device=dev)
    gen = _generator(seed, 0, 2)
    fit_z = add_zero_entropy_noise(z_train, gen) if spec.kind == "ib" and spec.noise else z_train
    gmm = fit_gaussian_mixture(fit_z, data.train_y, data.classes, ridge=cfg.gmm_ridge,
                               shared=cfg.gmm_shared)
    out: dict[str, Any] = {"test_accuracy_gmm": _accuracy(gmm.log_posterior(z_test),
                                                          data.test_y)}
    if spec.kind == "ib":
        resfc, ce = fit_resfc(fit_z, data.train_y, data.classes, width=cfg.resfc_width,
                              blocks=cfg.resfc_blocks, steps=cfg.resfc_steps,
                              batch_size=cfg.resfc_batch_size, lr=cfg.resfc_lr,
                              generator=gen, device=dev)
        with torch.no_grad():
            out["test_accuracy_resfc"] = _accuracy(resfc(z_test.to(dev)), data.test_y)
        out["train_ce_resfc_nats"] = ce
        attacked = _IBClassifier(enc, gmm.to(dev))  # decodes on the encoder's device
    else:
        with torch.no_grad():
            out["test_accuracy_head"] = _accuracy(modules["head"](z_test.to(dev)), data.test_y)
        attacked = nn.Sequential(enc, modules["head"])
    n = min(cfg.fgsm_subset, data.test_x.shape[0])
    out["fgsm_accuracy"] = fgsm_accuracy(attacked, data.test_x[:n], data.test_y[:n],
                                         cfg.fgsm_epsilons, device=dev,
                                         transform=to_unit_float)
    zt = add_zero_entropy_noise(z_test, gen) if spec.kind == "ib" and spec.noise else z_test
    # None: -inf, the latent of a model without noise has collapsed onto duplicate points
    out["test_h_z_nats"] = _entropy_or_none(knn_entropy, zt.double(), k=cfg.k)
    out["test_h_z_given_y_nats"] = _entropy_or_none(conditional_knn_entropy, zt.double(),
                                                    data.test_y, k=cfg.k)
    coords = pca_2d(z_test[: cfg.pca_points])
    out["pca"] = {"coords": [[round(float(a), 4), round(float(b), 4)] for a, b in coords],
                  "labels": data.test_y[: cfg.pca_points].tolist()}
    return out


class _IBClassifier(nn.Module):
    """Encoder followed by the Gaussian-mixture decoder (log-posteriors as logits)."""

    def __init__(self, encoder: nn.Module, gmm: GaussianMixtureDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.gmm = gmm

    def forward(self, x: Tensor) -> Tensor:
        return self.gmm.log_posterior(self.encoder(x))


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
    row: dict[str, Any] = {"label": spec.label, "kind": spec.kind, "beta2": spec.beta2,
                           "noise": spec.noise if spec.kind == "ib" else None,
                           "train_seconds": ev["train_seconds"],
                           "eval_seconds": ev["eval_seconds"],
                           "diverged": ev.get("diverged")}
    for key in ("test_accuracy_head", "test_accuracy_gmm", "test_accuracy_resfc",
                "train_ce_resfc_nats", "test_h_z_nats", "test_h_z_given_y_nats"):
        if key in ev:
            row[key] = ev[key]
    # the model's accuracy: its own classifier (CE), else the better of its two decoders (IB)
    row["test_accuracy"] = (ev["test_accuracy_head"] if spec.kind != "ib" else
                            max(ev["test_accuracy_gmm"], ev["test_accuracy_resfc"]))
    row["test_fgsm_accuracy"] = ev["fgsm_accuracy"]
    row["test_fgsm_accuracy_at_bar_epsilon"] = ev["fgsm_accuracy"][
        list(cfg.fgsm_epsilons).index(cfg.fgsm_epsilon)]
    hist = ev["history"]
    if spec.kind == "ib" and hist:
        res = [h["test_h_y_given_z_bound_nats"] for h in hist]
        row["best_epoch"] = hist[res.index(min(res))]["epoch"]
        row["skipped_classes_total"] = sum(h.get("train_skipped_classes", 0.0) for h in hist)
    return row


def _bars(rows: dict[str, dict[str, Any]], cfg: EntropyIBConfig) -> dict[str, Any]:
    """The issue's bars (accuracy points = percentage points) from the recorded numbers."""
    ib = {k: r for k, r in rows.items() if r["kind"] == "ib"}
    if "ce" not in rows or not ib:
        return {}
    best = max(ib, key=lambda k: ib[k]["test_accuracy"])
    ce = rows["ce"]
    margin = 100 * (ib[best]["test_accuracy"] - ce["test_accuracy"])
    fgsm_best = ib[best]["test_fgsm_accuracy_at_bar_epsilon"]
    fgsm_ce = ce["test_fgsm_accuracy_at_bar_epsilon"]
    above = sorted(k for k, r in ib.items()
                   if r["test_fgsm_accuracy_at_bar_epsilon"] > fgsm_ce)
    noise = [k for k, r in ib.items() if r["noise"]]
    nonoise = [k for k, r in ib.items() if not r["noise"]]
    return {
        "best_ib_model": best,
        "best_ib_decoder": "gmm" if ib[best]["test_accuracy"] == ib[best].get(
            "test_accuracy_gmm") else "resfc",
        "best_ib_test_accuracy": ib[best]["test_accuracy"],
        "ce_test_accuracy": ce["test_accuracy"],
        "margin_best_ib_minus_ce_points": margin,
        "bar_accuracy_within_1_point_met": margin >= -1.0,
        "fgsm_epsilon": cfg.fgsm_epsilon,
        "fgsm_best_ib_accuracy": fgsm_best,
        "fgsm_ce_accuracy": fgsm_ce,
        "bar_fgsm_above_ce_met": fgsm_best > fgsm_ce,
        "ib_models_above_ce_at_fgsm_epsilon": above,
        "noise_trajectories": len(noise),
        "nonoise_trajectories": len(nonoise),
        "bar_both_trajectories_met": bool(noise) and bool(nonoise),
    }


def _run_sweep(ctx: _Context) -> Path:
    cfg = ctx.config
    with ctx.recorder("sweep") as rec:
        data = ctx.get_data()
        rows: dict[str, dict[str, Any]] = {}
        planes: dict[str, dict[str, list[float]]] = {}
        pca: dict[str, Any] = {}
        earlier = 0.0
        for key, spec in model_specs(cfg).items():
            ev = _model_evals(ctx, spec)
            if not ev.pop("_fresh", False):
                earlier += ev["train_seconds"] + ev["eval_seconds"]
            rows[key] = _row(spec, ev, cfg)
            pca[key] = ev["pca"]
            for h in ev["history"]:
                rec.history.append({"model": key, **h})
            if spec.kind == "ib":
                hist = ev["history"]
                planes[key] = {
                    "epoch": [h["epoch"] for h in hist],
                    "test_h_z_nats": [h["test_h_z_nats"] for h in hist],
                    "test_h_y_given_z_bound_nats": [h["test_h_y_given_z_bound_nats"]
                                                    for h in hist],
                }
        if earlier > 1.0:
            rec.add_elapsed(earlier)
        rec.metrics.update({
            "dataset": cfg.dataset,
            "n_train": int(data.train_x.shape[0]),
            "n_test": int(data.test_x.shape[0]),
            "n_plane": int(min(cfg.plane_subset, data.test_x.shape[0])),
            "n_fgsm": int(min(cfg.fgsm_subset, data.test_x.shape[0])),
            "encoder_parameters": sum(p.numel() for p in ResNetEncoder(
                data.channels, latent_dim=cfg.latent_dim, widths=cfg.widths,
                blocks=cfg.blocks).parameters()),
            "fgsm_epsilons": list(cfg.fgsm_epsilons),
            "models": rows,
            "planes": planes,
            "pca": pca,
            "bars": _bars(rows, cfg),
        })
    assert rec.path is not None
    return rec.path


def make_context(**run_args: Any) -> _Context:
    """The run's context (the runner protocol of :mod:`ibcore.tasks`)."""
    return prepare_run(_Context, PROFILES, EXPERIMENTS, **run_args)


def plan(ctx: _Context, experiments: Sequence[str]) -> list[Task]:
    """One task per model of the sweep."""
    return [Task(key, tuple(experiments), spec) for key, spec in model_specs(ctx.config).items()]


def run_task(ctx: _Context, task: Task) -> None:
    with cudnn_benchmark(ctx.config.cudnn_benchmark):
        _model_evals(ctx, task.spec)


def assemble(ctx: _Context, experiment: str) -> Path:
    return _run_sweep(ctx)


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
