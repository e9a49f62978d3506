r"""Runner of the GMVIB chapter (``gmvib.md``: Zuo, *Deep Gaussian Mixture VIB*).

Three classifiers of :mod:`ibcore.models.gmvib` (Basic, VIB, GMVIB; one encoder trunk and one
decoder for all) are trained on the four Multi-MNIST sets of :mod:`ibcore.data.multimnist`
with the objectives of :mod:`ibcore.objectives.gmvib`. The ``cpu`` trunk is four 3×3
convolutions with group norm and a global max-pool (position-invariant: an item may sit anywhere
in the canvas), then one 256-unit layer; every model trains with Adam under a per-step one-cycle
schedule that decays to near zero. Each dataset has three splits: train, a validation split
composed from training items held out of train (:mod:`ibcore.data.multimnist`), and test.
Every per-epoch number is measured on validation; test is evaluated once, after training.
Experiments (one result file each):

``table1``
    The source's Table 1: every model on every dataset at the source's β, ``replicates``
    training seeds each; exact-set and per-label test accuracy (mean ± sample std over the
    replicates), replicate-paired differences GMVIB − VIB (and each against Basic) with 95 %
    Student-t intervals (``comparison``), the convergence criterion (``convergence``: the last
    epoch's change of validation exact-set accuracy), and per epoch the information-plane
    coordinates on validation: ``I(Z;x) ≤ E[rate]`` (eq. 8) and
    ``I(Z;y) ≥ H(y) − E[−log q(y|z)]`` (eq. 7), nats.
``beta``
    The source's Table 2 and Fig. 4: the ``beta_kinds`` at every β of ``beta_grid``
    (replicate 0), their information-plane trajectories, the direction of the rate during
    training, and for the chapter's β slider the mean mixing weights ``E[e] = α / Σα`` of a few
    test images and a 2-D PCA of the posterior-mean latent.
``items``
    One-item classifiers (Basic, same trunk and training) on :data:`ITEM_DATASETS`, the
    accuracy per item a trunk reaches, against which the per-item accuracy implied by an
    exact-set accuracy (``acc^{1/M}``) is held.

A model is trained once, in the checkpoint folder of the first experiment that uses it (the
β of Table 1 appears in both), with :class:`ibcore.training.Trainer` (exact resume); its
evaluations are cached in ``<key>.eval.json`` next to its checkpoint, so ``--resume`` skips
finished models (a finished model's checkpoint is then deleted: the eval file is its record).
The generated datasets are cached under ``<results root>/../runs/cache/
multimnist`` (never in the data root). Training inputs are the canvases scaled to ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ibcore.atomic import atomic_write_json
from ibcore.checkpoint import fingerprint_of
from ibcore.data.multimnist import (
    ALL_DATASETS,
    MULTI_DATASETS,
    SINGLE_DATASETS,
    label_entropy_nats,
    load_multi,
    multi_hot,
)
from ibcore.device import cudnn_benchmark, isolated_rng
from ibcore.errors import CheckpointError, InvalidParameterError, UnknownNameError
from ibcore.metrics import exact_set_accuracy, per_label_accuracy
from ibcore.models.gmvib import KINDS, BottleneckClassifier
from ibcore.objectives.gmvib import bottleneck_objective
from ibcore.profiles import as_dict
from ibcore.projection import pca_2d
from ibcore.replicates import paired_difference
from ibcore.results import default_results_root
from ibcore.runners.context import RunContext, prepare_run
from ibcore.schedules import Schedule
from ibcore.tasks import Task, run_experiments
from ibcore.training import Trainer
from ibcore.validation import check_int, check_weight

CHAPTER = "gmvib"
EXPERIMENTS = ("table1", "beta", "items")
DATASET_NAMES = tuple(MULTI_DATASETS)
ITEM_DATASETS = tuple(SINGLE_DATASETS)
# "visibly worse": β = 1e-2 below β = 1e-3 by at least this much exact-set accuracy
VISIBLE_DROP = 0.01
# converged: the last epoch moves validation exact-set accuracy by less than this, on average
CONVERGED_CHANGE = 0.005
# the recorded run's accuracy thresholds (mean exact-set accuracy of VIB and of GMVIB): about
# the source's Basic column less what a trunk that never saw an item of the test split loses
ACCURACY_BARS = {"double_mnist": 0.98, "triple_mnist": 0.95, "double_fashion": 0.78,
                 "triple_fashion": 0.62}

__all__ = [
    "CHAPTER",
    "DATASET_NAMES",
    "EXPERIMENTS",
    "PROFILES",
    "GMVIBConfig",
    "ITEM_DATASETS",
    "ModelSpec",
    "beta_at",
    "evaluate_model",
    "experiment_specs",
    "run",
]


@dataclass(frozen=True)
class GMVIBConfig:
    """Settings of both experiments (one profile = one instance)."""

    datasets: tuple[str, ...] = DATASET_NAMES
    train_size: int = 20000
    val_size: int = 3000  # composed from training items held out of train; per-epoch numbers
    test_size: int = 5000  # evaluated once, after training
    data_seed: int = 0
    jitter_x: int = 3
    # models (source §3.2: 256-d latent, K = one component per class, 12 samples)
    latent_dim: int = 256
    components: int = 10
    hidden: tuple[int, ...] = (256,)
    conv_channels: tuple[int, ...] = (32, 64, 128, 128)  # the source gives no architecture
    conv_strides: tuple[int, ...] = (2, 2, 2, 1)
    pool: str = "max"  # global max-pool: the code does not depend on where an item sits
    conv_norm: str = "group"  # normalisation after each convolution (recorded, fingerprinted)
    decoder_hidden: tuple[int, ...] = ()
    train_samples: int = 12
    eval_samples: int = 12
    alpha_prior: float = 1.0
    beta: float = 1e-3
    # training
    batch_size: int = 100
    epochs: int = 5
    lr: float = 3e-3  # Adam; the schedule's peak rate
    schedule_kind: str = "one_cycle"
    warmup_fraction: float = 0.25
    # VIB and GMVIB: β is 0 for this fraction of the steps, then rises linearly to its value
    # over the same number of steps (0: β from the first step; see beta_at). Without it, Adam at
    # the one-cycle peak drove GMVIB's rate down before the code carried any label information,
    # and some seeds never left the label-blind optimum, even when β rose from 0 at once
    beta_warmup_fraction: float = 0.25
    checkpoint_every_steps: int = 100
    replicates: int = 3
    # β ablation and the slider
    beta_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    beta_kinds: tuple[str, ...] = ("gmvib",)  # the source's Table 2 is GMVIB's
    item_datasets: tuple[str, ...] = ("single_fashion",)
    weights_shown: int = 6
    projection_points: int = 300
    # GPU speed switch (off in every profile): cuDNN's algorithm search for the convolutions,
    # faster on a GPU but not bit-reproducible (see ibcore.device.cudnn_benchmark). No autocast:
    # the sampled latents and the KL/Dirichlet rates need float32
    cudnn_benchmark: bool = False

    def __post_init__(self) -> None:
        for ds in self.datasets:
            if ds not in MULTI_DATASETS:
                raise UnknownNameError(
                    f"unknown dataset {ds!r}; choose from {', '.join(MULTI_DATASETS)}"
                )
        for ds in self.item_datasets:
            if ds not in SINGLE_DATASETS:
                raise UnknownNameError(
                    f"unknown one-item dataset {ds!r}; choose from {', '.join(SINGLE_DATASETS)}"
                )
        for name in ("latent_dim", "components", "train_samples", "eval_samples", "epochs",
                     "checkpoint_every_steps", "replicates", "weights_shown"):
            check_int(name, getattr(self, name))
        check_int("train_size", self.train_size, low=2)
        check_int("val_size", self.val_size, low=2)
        check_int("test_size", self.test_size, low=2)
        check_int("projection_points", self.projection_points, low=3, high=self.test_size)
        check_int("batch_size", self.batch_size, low=1, high=self.train_size)
        check_int("data_seed", self.data_seed, low=0)
        check_int("jitter_x", self.jitter_x, low=0)
        check_weight("lr", self.lr, low_inclusive=False)
        check_weight("beta_warmup_fraction", self.beta_warmup_fraction, high=1.0)
        self.schedule  # noqa: B018  (refuses an unknown kind or a bad warm-up fraction)
        check_weight("alpha_prior", self.alpha_prior, low_inclusive=False)
        check_weight("beta", self.beta)
        for b in self.beta_grid:
            check_weight("beta_grid value", b)
        for kind in self.beta_kinds:
            if kind not in KINDS:
                raise UnknownNameError(f"unknown model kind {kind!r}; choose from {KINDS}")
        if self.conv_norm != "group":
            raise UnknownNameError(
                f"conv_norm must be 'group' (the only one built), got {self.conv_norm!r}"
            )
        for h in (*self.hidden, *self.conv_channels, *self.decoder_hidden):
            check_int("layer width", h)
        if len(self.conv_strides) != len(self.conv_channels):
            raise InvalidParameterError(
                f"conv_strides needs one stride per convolution ({len(self.conv_channels)}), "
                f"got {len(self.conv_strides)}"
            )

    @property
    def schedule(self) -> Schedule:
        """The per-step learning-rate schedule every model trains with."""
        return Schedule(self.schedule_kind, peak_lr=self.lr, warmup_fraction=self.warmup_fraction)

    def training_view(self) -> dict[str, Any]:
        """The settings a trained model depends on (its checkpoint fingerprint)."""
        keys = ("train_size", "val_size", "data_seed", "jitter_x", "latent_dim", "components",
                "hidden", "conv_channels", "conv_strides", "pool", "conv_norm",
                "decoder_hidden", "train_samples", "alpha_prior", "batch_size", "epochs", "lr",
                "schedule_kind", "warmup_fraction", "test_size", "eval_samples")
        return {k: getattr(self, k) for k in keys}


_CPU = GMVIBConfig()

PROFILES: dict[str, GMVIBConfig] = {
    "smoke": dataclasses.replace(
        _CPU, train_size=200, val_size=60, test_size=100, latent_dim=16, components=10,
        hidden=(32,), conv_channels=(4, 8), conv_strides=(2, 2), train_samples=2,
        eval_samples=2, batch_size=50, epochs=2, checkpoint_every_steps=1, replicates=2,
        weights_shown=4, projection_points=50,
    ),
    "cpu": dataclasses.replace(_CPU, checkpoint_every_steps=200),
    # the source's protocol: 60k generated images split 80/20 (the validation split carved
    # from the 48k training images), Adam at 1e-4 for 50 epochs, β grid for both bottlenecks
    "paper": dataclasses.replace(
        _CPU, train_size=43200, val_size=4800, test_size=12000, epochs=50, lr=1e-4,
        schedule_kind="constant", beta_warmup_fraction=0.0, beta_kinds=("vib", "gmvib"),
        checkpoint_every_steps=200,
        projection_points=1000,
    ),
}


# ---------------------------------------------------------------------------------------------
# models to train
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One model to train: dataset, kind, β (ignored by Basic) and replicate number."""

    dataset: str
    kind: str
    beta: float
    replicate: int = 0

    @property
    def key(self) -> str:
        b = "" if self.kind == "basic" else f"-b{self.beta:g}"
        return f"{self.dataset}-{self.kind}{b}-r{self.replicate}"


def experiment_specs(cfg: GMVIBConfig, experiment: str) -> list[ModelSpec]:
    """The models an experiment evaluates, in order."""
    if experiment == "table1":
        return [ModelSpec(ds, kind, 0.0 if kind == "basic" else cfg.beta, r)
                for ds in cfg.datasets for kind in KINDS for r in range(cfg.replicates)]
    if experiment == "beta":
        return [ModelSpec(ds, kind, float(b), 0)
                for ds in cfg.datasets for kind in cfg.beta_kinds for b in cfg.beta_grid]
    if experiment == "items":
        return [ModelSpec(ds, "basic", 0.0, r)
                for ds in cfg.item_datasets for r in range(cfg.replicates)]
    raise UnknownNameError(f"unknown experiment {experiment!r}; choose from {EXPERIMENTS}")


def beta_at(step: int, total_steps: int, beta: float, warmup_fraction: float) -> float:
    """The weight of the rate at optimisation step ``step`` (0-based) of ``total_steps``.

    With ``W = round(warmup_fraction · total_steps)``: ``0`` for the first ``W`` steps (the code
    learns the label first), then ``β · min(1, (step + 1 − W) / W)``, a linear rise that reaches
    ``β`` at step ``2W − 1`` and stays there (``W = 0``: ``β`` throughout)."""
    w = round(warmup_fraction * total_steps)
    if w <= 0:
        return beta
    return 0.0 if step < w else beta * min(1.0, (step + 1 - w) / w)


def _owner(cfg: GMVIBConfig, spec: ModelSpec) -> str:
    for exp in EXPERIMENTS:
        if spec in experiment_specs(cfg, exp):
            return exp
    raise UnknownNameError(f"no experiment uses the model {spec.key}")


# ---------------------------------------------------------------------------------------------
# data and evaluation
# ---------------------------------------------------------------------------------------------


@dataclass
class _Data:
    train_x: Tensor  # uint8 [N, 1, 64, 64]
    train_y: Tensor  # float multi-hot [N, 10]
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    test_sets: Tensor  # int64 [N, M]
    items: int
    h_y: float


def _inputs(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).float() / 255.0


@torch.no_grad()
def evaluate_model(
    model: BottleneckClassifier,
    x: Tensor,
    y: Tensor,
    *,
    samples: int,
    beta: float,
    alpha_prior: float,
    h_y: float,
    seed: int,
    device: torch.device,
    batch_size: int = 500,
    split: str = "test",
) -> dict[str, float]:
    """Metrics of ``model`` on ``uint8`` images ``x`` and multi-hot labels ``y`` of ``split``
    (the keys' prefix: ``"test"`` or ``"val"``).

    Scores are the sigmoid probabilities averaged over ``samples`` encoder draws; the
    prediction is the top-``M`` classes. The Monte-Carlo noise comes from the global RNGs of the
    CPU and of ``device`` seeded with ``seed`` inside :func:`ibcore.device.isolated_rng`, which
    restores both afterwards: the training noise (CPU or CUDA) is left untouched. Rates and
    cross-entropies are means over the images, in nats (summed on ``device``, one host sync).
    """
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # Σ n·ce, Σ n·rate
    scores = []
    with isolated_rng(device, seed):
        for i in range(0, x.shape[0], batch_size):
            xb = _inputs(x[i : i + batch_size]).to(device)
            yb = y[i : i + batch_size].to(device)
            out = model(xb, samples=samples)
            terms = bottleneck_objective(model.kind, out, yb, beta, alpha_prior)
            n = xb.shape[0]
            sums[0] += terms["ce"].detach().double() * n
            if "rate" in terms:
                sums[1] += terms["rate"].detach().double() * n
            scores.append(torch.sigmoid(out.logits).mean(0).cpu())
    s = torch.cat(scores)
    ce, rate = (float(v) / x.shape[0] for v in sums.cpu())
    row = {
        "exact_set_accuracy": exact_set_accuracy(s, y),
        "per_label_accuracy": per_label_accuracy(s, y),
        "ce_nats": ce,
        "I_zy_lower_nats": h_y - ce,
    }
    if model.kind != "basic":
        row["rate_nats"] = rate
        row["I_zx_upper_nats"] = rate
    return {f"{split}_{k}": v for k, v in row.items()}


@torch.no_grad()
def _latent_summary(model: BottleneckClassifier, x: Tensor, sets: Tensor, n_points: int,
                    n_weights: int, device: torch.device) -> dict[str, Any]:
    """Posterior-mean latents (2-D PCA) and, for GMVIB, the mean weights ``α / Σα``."""
    model.eval()
    enc = model.encode(_inputs(x[:n_points]).to(device))
    if model.kind == "basic":
        z = enc["z"]
    elif model.kind == "vib":
        z = enc["mu"][:, 0]
    else:
        w = enc["alpha"] / enc["alpha"].sum(1, keepdim=True)
        z = torch.einsum("bk,bkd->bd", w, enc["mu"])  # E[Σ e_k z_k], e ⟂ z_k given x
    out: dict[str, Any] = {
        "projection": {"coords": pca_2d(z.cpu()).tolist(),
                       "label_sets": sets[:n_points].tolist()},
    }
    if model.kind == "gmvib":
        alpha = enc["alpha"][:n_weights].cpu()
        out["weights"] = {"e_mean": (alpha / alpha.sum(1, keepdim=True)).tolist(),
                          "alpha_sum": alpha.sum(1).tolist(),
                          "label_sets": sets[:n_weights].tolist()}
    return out


# ---------------------------------------------------------------------------------------------
# the runs
# ---------------------------------------------------------------------------------------------


@dataclass
class _Context(RunContext):
    chapter: ClassVar[str] = CHAPTER

    data: dict[str, _Data] = field(default_factory=dict)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    earlier_seconds: float = 0.0

    def cache_dir(self) -> Path:
        root = Path(self.results_root) if self.results_root is not None else default_results_root()
        return root.parent / "runs" / "cache" / "multimnist"

    def get_data(self, name: str) -> _Data:
        if name not in self.data:
            cfg = self.config
            kw = {"seed": cfg.data_seed, "cache_dir": self.cache_dir(), "jitter_x": cfg.jitter_x}
            tr_x, tr_s = load_multi(name, "train", cfg.train_size, **kw)
            va_x, va_s = load_multi(name, "val", cfg.val_size, **kw)
            te_x, te_s = load_multi(name, "test", cfg.test_size, **kw)
            items = ALL_DATASETS[name].items
            self.data[name] = _Data(tr_x, multi_hot(tr_s), va_x, multi_hot(va_s), te_x,
                                    multi_hot(te_s), te_s, items, label_entropy_nats(items))
        return self.data[name]

    def model_seed(self, spec: ModelSpec) -> int:
        return int(fingerprint_of({"seed": self.seed, "model": spec.key})[:8], 16)


def _train_and_evaluate(ctx: _Context, spec: ModelSpec) -> dict[str, Any]:
    """Train ``spec`` (or resume it) and evaluate it; cached in ``<key>.eval.json``."""
    if spec.key in ctx.done:
        return ctx.done[spec.key]
    cfg = ctx.config
    folder = ctx.checkpoint_dir(_owner(cfg, spec))
    ckpt, eval_path = folder / f"{spec.key}.pt", folder / f"{spec.key}.eval.json"
    view = cfg.training_view()
    if spec.kind != "basic" and cfg.beta_warmup_fraction > 0:  # Basic has no β to warm up
        view["beta_warmup_fraction"] = cfg.beta_warmup_fraction
    fingerprint = fingerprint_of({"chapter": CHAPTER, "seed": ctx.seed, "spec": as_dict(spec),
                                  "train": view,
                                  "summary": [cfg.weights_shown, cfg.projection_points]})
    if ctx.resume and eval_path.exists():
        saved = json.loads(eval_path.read_text(encoding="utf-8"))
        if saved.get("fingerprint") != fingerprint:
            raise CheckpointError(
                f"{eval_path} belongs to a different configuration; delete it or run without "
                "--resume"
            )
        ctx.done[spec.key] = saved["evals"]
        ctx.earlier_seconds += float(saved["evals"].get("seconds", 0.0))
        return saved["evals"]
    t0 = time.perf_counter()
    data = ctx.get_data(spec.dataset)
    dev = ctx.device
    mseed = ctx.model_seed(spec)
    gen = torch.Generator().manual_seed(mseed)
    model = BottleneckClassifier(
        spec.kind, data.train_x[0].numel(), data.train_y.shape[1], latent_dim=cfg.latent_dim,
        components=cfg.components, hidden=cfg.hidden, conv_channels=cfg.conv_channels,
        conv_strides=cfg.conv_strides, pool=cfg.pool, decoder_hidden=cfg.decoder_hidden,
        generator=gen,
    ).to(dev)
    torch.manual_seed(mseed)  # the MC noise: a function of (seed, spec) alone
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    eval_x, eval_y = data.val_x, data.val_y
    eval_kw = {"samples": cfg.eval_samples, "beta": spec.beta, "alpha_prior": cfg.alpha_prior,
               "h_y": data.h_y, "seed": mseed + 1, "device": dev, "split": "val"}

    def loss_fn(batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        out = model(_inputs(batch[0]), samples=cfg.train_samples)
        beta = spec.beta
        if spec.kind != "basic":  # the trainer's step counter is checkpointed: resume-exact
            beta = beta_at(trainer.global_step, trainer.total_steps, spec.beta,
                           cfg.beta_warmup_fraction)
        terms = bottleneck_objective(spec.kind, out, batch[1], beta, cfg.alpha_prior)
        if spec.kind != "basic":
            terms["beta"] = torch.tensor(beta)  # its epoch mean lands in the history
        return terms

    def epoch_end(epoch: int) -> dict[str, float]:
        return evaluate_model(model, eval_x, eval_y, **eval_kw)

    start = {"epoch": 0, **evaluate_model(model, eval_x, eval_y, **eval_kw)}
    trainer = Trainer(
        {"model": model}, opt, (data.train_x, data.train_y), batch_size=cfg.batch_size,
        epochs=cfg.epochs, seed=mseed % 1_000_000, device=dev, loss_fn=loss_fn,
        schedule=cfg.schedule, checkpoint_path=ckpt, checkpoint_every_steps=cfg.checkpoint_every_steps,
        fingerprint=fingerprint, epoch_end_fn=epoch_end, progress=ctx.progress,
        desc=f"{CHAPTER} {spec.key}",
    )
    t_fit = time.perf_counter()
    history = trainer.fit(resume=ctx.resume)
    earlier = max(0.0, trainer.elapsed_seconds - (time.perf_counter() - t_fit))
    ctx.earlier_seconds += earlier
    # the test split, read once: nothing is chosen from these numbers
    final = evaluate_model(model, data.test_x, data.test_y,
                           **{**eval_kw, "seed": mseed + 2, "split": "test"})
    if history:  # the last epoch's validation numbers beside the test numbers
        final.update({k: v for k, v in history[-1].items() if k.startswith("val_")})
    evals: dict[str, Any] = {
        "model_seed": mseed,
        "final": final,
        "history": [start, *[dict(r) for r in history]],
        "train_seconds": trainer.elapsed_seconds,
        **_latent_summary(model, data.test_x, data.test_sets, cfg.projection_points,
                          cfg.weights_shown, dev),
    }
    evals["seconds"] = time.perf_counter() - t0 + earlier
    atomic_write_json(eval_path, {"fingerprint": fingerprint, "model": spec.key, "evals": evals})
    # the eval file marks the model finished; its checkpoint (weights + Adam state, ~126 MB for
    # a GMVIB) is no longer needed by --resume
    ckpt.unlink(missing_ok=True)
    ctx.done[spec.key] = evals
    return evals


def _row(spec: ModelSpec, ev: dict[str, Any], cfg: GMVIBConfig) -> dict[str, Any]:
    return {"key": spec.key, "dataset": spec.dataset, "kind": spec.kind, "beta": spec.beta,
            "replicate": spec.replicate, "model_seed": ev["model_seed"], "epochs": cfg.epochs,
            "train_seconds": ev["train_seconds"], **ev["final"]}


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": list(values)}


def _table1_bars(summary: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The recorded run's thresholds on Table 1 (exact-set accuracy means over the replicates)."""
    def acc(ds: str, kind: str) -> float | None:
        s = summary.get(ds, {}).get(kind)
        return None if s is None else s["test_exact_set_accuracy"]["mean"]

    bars: dict[str, Any] = {}
    for ds, bar in ACCURACY_BARS.items():
        for kind in ("vib", "gmvib"):
            a = acc(ds, kind)
            if a is not None:
                bars[f"{ds}_{kind}_ge_{bar}"] = a >= bar
                bars[f"{ds}_{kind}_minus_bar"] = a - bar
    for ds in ("double_fashion", "triple_fashion"):
        for kind in ("vib", "gmvib"):
            a, b = acc(ds, kind), acc(ds, "basic")
            if a is not None and b is not None:
                bars[f"{ds}_{kind}_above_basic"] = a > b
                bars[f"{ds}_{kind}_minus_basic"] = a - b
        a, b = acc(ds, "gmvib"), acc(ds, "vib")
        if a is not None and b is not None:
            bars[f"{ds}_gmvib_minus_vib"] = a - b
            bars[f"{ds}_gmvib_above_vib"] = a > b
    return bars


def _comparison(rows: Sequence[dict[str, Any]], datasets: Sequence[str]) -> dict[str, Any]:
    """Replicate-paired differences of exact-set accuracy in points (%), per dataset: GMVIB − VIB
    (the source's central claim), VIB − Basic and GMVIB − Basic, on test and on validation."""
    def points(ds: str, kind: str, key: str) -> list[float]:
        sel = sorted((r for r in rows if r["dataset"] == ds and r["kind"] == kind),
                     key=lambda r: r["replicate"])
        return [100.0 * r[key] for r in sel]

    out: dict[str, Any] = {}
    for ds in datasets:
        for a, b in (("gmvib", "vib"), ("vib", "basic"), ("gmvib", "basic")):
            for split in ("test", "val"):
                pa = points(ds, a, f"{split}_exact_set_accuracy")
                pb = points(ds, b, f"{split}_exact_set_accuracy")
                if pa and len(pa) == len(pb):
                    out.setdefault(ds, {})[f"{split}_{a}_minus_{b}_points"] = \
                        paired_difference(pa, pb)
    return out


def _convergence(history: Sequence[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """The last epoch's change of validation exact-set accuracy, per model and on average."""
    per_model: dict[str, float] = {}
    for key in dict.fromkeys(h["model"] for h in history):
        acc = [h["val_exact_set_accuracy"] for h in history if h["model"] == key]
        if len(acc) >= 2:
            per_model[key] = acc[-1] - acc[-2]
    changes = list(per_model.values())
    mean_abs = statistics.fmean(abs(c) for c in changes) if changes else None
    return {"metric": "val_exact_set_accuracy", "threshold": threshold,
            "last_epoch_change": per_model, "mean_abs_last_epoch_change": mean_abs,
            "max_abs_last_epoch_change": max((abs(c) for c in changes), default=None),
            "met": mean_abs is not None and mean_abs < threshold}


def _collect(ctx: _Context, rec: Any, experiment: str, tags: Sequence[str]
             ) -> list[tuple[ModelSpec, dict[str, Any], dict[str, Any]]]:
    """Train (or load) every model of ``experiment``; return ``(spec, evals, row)`` per model and
    append its history to ``rec``, each row tagged with the model key, dataset, kind and the
    spec fields named in ``tags``."""
    out = []
    for spec in experiment_specs(ctx.config, experiment):
        ev = _train_and_evaluate(ctx, spec)
        out.append((spec, ev, _row(spec, ev, ctx.config)))
        tag = {"model": spec.key, "dataset": spec.dataset, "kind": spec.kind,
               **{t: getattr(spec, t) for t in tags}}
        rec.history.extend({**tag, **h} for h in ev["history"])
    return out


def _run_table1(ctx: _Context) -> Path:
    cfg = ctx.config
    with ctx.recorder("table1") as rec:
        rows = [row for _, _, row in _collect(ctx, rec, "table1", ("beta", "replicate"))]
        summary: dict[str, dict[str, dict[str, Any]]] = {}
        for ds in cfg.datasets:
            for kind in KINDS:
                sel = [r for r in rows if r["dataset"] == ds and r["kind"] == kind]
                summary.setdefault(ds, {})[kind] = {
                    m: _mean_std([r[m] for r in sel])
                    for m in ("test_exact_set_accuracy", "test_per_label_accuracy",
                              "val_exact_set_accuracy")
                }
        rec.metrics.update({
            "datasets": list(cfg.datasets),
            "n_train": cfg.train_size, "n_val": cfg.val_size, "n_test": cfg.test_size,
            "H_y_nats": {ds: label_entropy_nats(MULTI_DATASETS[ds].items) for ds in cfg.datasets},
            "chance_exact_set_accuracy": {
                ds: 1.0 / math.comb(10, MULTI_DATASETS[ds].items) for ds in cfg.datasets},
            "models": rows,
            "summary": summary,
            "std": "sample standard deviation over the replicates (n − 1)",
            "comparison": _comparison(rows, cfg.datasets),
            "comparison_pairing": "replicates paired by number (same data, seeds differ by model)",
            "convergence": _convergence(rec.history, CONVERGED_CHANGE),
            "accuracy_bars": dict(ACCURACY_BARS),
            "bars": _table1_bars(summary),
        })
        rec.metrics["bars"]["converged"] = rec.metrics["convergence"]["met"]
        rec.add_elapsed(ctx.earlier_seconds)
        ctx.earlier_seconds = 0.0
    assert rec.path is not None
    return rec.path


def _run_beta(ctx: _Context) -> Path:
    cfg = ctx.config
    with ctx.recorder("beta") as rec:
        settings = []
        for _, ev, row in _collect(ctx, rec, "beta", ("beta",)):
            row["projection"] = ev["projection"]
            if "weights" in ev:
                row["weights"] = ev["weights"]
            settings.append(row)
        bars: dict[str, Any] = {}
        best: dict[str, dict[str, Any]] = {}
        for ds in cfg.datasets:
            acc = {s["beta"]: s["test_exact_set_accuracy"] for s in settings
                   if s["dataset"] == ds and s["kind"] == "gmvib"}
            val = {s["beta"]: s["val_exact_set_accuracy"] for s in settings
                   if s["dataset"] == ds and s["kind"] == "gmvib"}
            if acc:
                best[ds] = {"val": max(val, key=val.__getitem__),
                            "test": max(acc, key=acc.__getitem__)}
            if 1e-2 in acc and 1e-3 in acc and MULTI_DATASETS[ds].items == 3:
                drop = acc[1e-3] - acc[1e-2]
                bars[f"{ds}_gmvib_drop_1e-3_to_1e-2"] = drop
                bars[f"{ds}_gmvib_1e-2_visibly_worse"] = drop >= VISIBLE_DROP
        rec.metrics.update({
            "datasets": list(cfg.datasets), "beta_grid": list(cfg.beta_grid),
            "kinds": list(cfg.beta_kinds), "visible_drop": VISIBLE_DROP,
            "H_y_nats": {ds: label_entropy_nats(MULTI_DATASETS[ds].items) for ds in cfg.datasets},
            "settings": settings, "bars": bars,
            "best_beta": best,
            "rate_direction": _rate_direction(rec.history),
        })
        rec.add_elapsed(ctx.earlier_seconds)
        ctx.earlier_seconds = 0.0
    assert rec.path is not None
    return rec.path


def _rate_direction(history: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model, the validation rate (``I(Z;x)`` upper bound, nats) after the first epoch
    trained at the full β (``from_epoch``; epochs of the β warm-up are left out, their rate is
    not priced in full) and after the last, the epoch of its highest value over the whole run,
    and whether it fell between the two."""
    out: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys(h["model"] for h in history):
        rows = [h for h in history if h["model"] == key and h["epoch"] >= 1
                and "val_rate_nats" in h]
        if len(rows) < 2:
            continue
        full = max(h.get("train_beta", 0.0) for h in rows)
        priced = [h for h in rows if "train_beta" not in h or h["train_beta"] >= 0.999 * full]
        if len(priced) < 2:
            continue
        rates = [h["val_rate_nats"] for h in rows]
        out[key] = {"from_epoch": priced[0]["epoch"], "first_epoch": priced[0]["val_rate_nats"],
                    "last_epoch": priced[-1]["val_rate_nats"],
                    "peak_epoch": rows[rates.index(max(rates))]["epoch"],
                    "falls": priced[-1]["val_rate_nats"] < priced[0]["val_rate_nats"]}
    return out


def _run_items(ctx: _Context) -> Path:
    cfg = ctx.config
    with ctx.recorder("items") as rec:
        rows = [row for _, _, row in _collect(ctx, rec, "items", ("replicate",))]
        rec.metrics.update({
            "datasets": list(cfg.item_datasets),
            "n_train": cfg.train_size, "n_val": cfg.val_size, "n_test": cfg.test_size,
            "models": rows,
            "per_item_accuracy": {
                ds: _mean_std([r["test_exact_set_accuracy"] for r in rows if r["dataset"] == ds])
                for ds in cfg.item_datasets},
            "convergence": _convergence(rec.history, CONVERGED_CHANGE),
        })
        rec.add_elapsed(ctx.earlier_seconds)
        ctx.earlier_seconds = 0.0
    assert rec.path is not None
    return rec.path


def make_context(**run_args: Any) -> _Context:
    """The run's context (the runner protocol of :mod:`ibcore.tasks`)."""
    return prepare_run(_Context, PROFILES, EXPERIMENTS, **run_args)


def plan(ctx: _Context, experiments: Sequence[str]) -> list[Task]:
    """One task per model; a model two experiments share is listed once."""
    users: dict[ModelSpec, list[str]] = {}
    for name in experiments:
        for spec in experiment_specs(ctx.config, name):
            users.setdefault(spec, []).append(name)
    return [Task(spec.key, tuple(names), spec) for spec, names in users.items()]


def run_task(ctx: _Context, task: Task) -> None:
    with cudnn_benchmark(ctx.config.cudnn_benchmark):
        _train_and_evaluate(ctx, task.spec)


def assemble(ctx: _Context, experiment: str) -> Path:
    return {"table1": _run_table1, "beta": _run_beta, "items": _run_items}[experiment](ctx)


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

    ``launcher`` (see :mod:`ibcore.launchers`) runs the models; default: one after another here.
    """
    return run_experiments(CHAPTER, launcher=launcher, profile=profile, device=device, seed=seed,
                           resume=resume, results_root=results_root, progress=progress,
                           experiments=experiments)
