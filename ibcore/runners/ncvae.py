r"""Runner of the *NC-VAE* chapter: learned image compression measured with real files.

``rd_sweep``
    A sweep of NC-VAE models (:mod:`ibcore.models.ncvae`) over the rate weight λ of
    ``L = D + λR`` (``nc_vae.md`` eq. 6), trained on random crops of the training photographs
    (``<data>/images/wallpapers/train`` and ``<data>/images/photos``) and tested on two sets
    reported separately: the Kodak images ``kodim02.png`` and ``kodim07.png`` (2 of the 24) and
    the held-out photographs of ``<data>/images/wallpapers/test``; none is ever trained on or
    used for a choice. Every test number comes from a real ``.ibc`` file
    (:mod:`ibcore.codec.bitstream`): its size in bits over the pixel count is the rate,
    ``decode(file)`` the reconstruction. Baselines (JPEG, WebP, JPEG 2000, AVIF where Pillow
    supports them) are coded on the same images over a quality grid
    (:mod:`ibcore.codec.baselines`); Bjøntegaard deltas (:mod:`ibcore.codec.bdmetrics`) compare
    the curves per test set. Also recorded: the model's estimated code length against the file
    size and the header's size, encode and decode times (on the Kodak images), decoder size
    (source Table 2), decoded crops per λ for the chapter's slider, side-by-side crops of every
    codec at our lowest rate, and the checks of :func:`check_bars`.
``noise_ablation``
    The input-noise ablation of source Fig. 4: models at one λ trained with the encoder input
    ``x̃ = x + N(0, s²)`` for ``s ∈ {0, 0.01, 0.1, 0.3}`` (eq. 2), each from the same seeded
    initialisation with the same schedule; rate, PSNR, the smoothness of the reconstruction (its
    gradient energy relative to the original's), statistics of the latent symbols, a decoded crop
    and one latent channel per model, on the Kodak images.

**Trunk (``cpu`` profile).** To fit the CPU budget, one *trunk* model is trained first at the
high-rate end of the sweep (its smallest λ); every sweep model is a copy of it fine-tuned with
its own λ (moving down in rate). The ``paper`` profile trains every model from scratch with the
source's protocol. Every run uses a per-step schedule (:class:`ibcore.schedules.Schedule`,
linear warm-up and cosine decay) except ``paper``, which keeps the source's step decay.

**Training data.** Each step draws fresh 128×128 crops from a generator seeded by
``(seed, model, step)``, so a run killed at any point resumes exactly: uniform positions over
an image pyramid of every training photograph (full resolution and downscaled by √2 steps to ¼,
each scale weighted to get about the same share of crops; :class:`ibcore.data.images.CropSource`)
with random left-right flips. Two training photographs (``validation_images``) are held out:
the per-epoch history (estimated rate and PSNR) is measured on them.

**Tasks.** One task per model (a sweep model after the trunk) and one for the baseline codecs;
each writes ``<key>.eval.json`` (its measurements, fingerprinted) beside its checkpoint, and the
experiments are assembled from those files, so ``--workers 2`` trains the trunk and the
ablation at once.

Checkpoints: ``<results_root>/../runs/ncvae/models/<profile>-seed<N>/``: ``<model>.pt`` (the
trainer's checkpoint, every epoch) and ``<model>.done`` (final weights and history, verified and
fingerprinted) — ``--resume`` continues each model exactly and skips finished ones.

Shipped models: ``python -m ibcore.runners.ncvae export`` copies the finished sweep models of a
run to ``models/ncvae/`` as ``q1.pt`` (lowest rate) … ``qK.pt`` with ``manifest.json`` (SHA-256
of each file, model id, λ, σ); :func:`load_model` loads them (checksum verified), or falls back
to a finished run, or trains the model (load-or-train).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ibcore.atomic import atomic_write_json
from ibcore.checkpoint import fingerprint_of, load_checkpoint, save_checkpoint
from ibcore.codec import baselines as bl
from ibcore.codec.bdmetrics import bd_psnr, bd_rate
from ibcore.codec.bitstream import EncodeResult, decode, encode, encode_detailed, model_id, unpack
from ibcore.codec.zoo import default_models_dir, load_shipped, read_manifest
from ibcore.data.images import CropSource, image_folder, load_image, load_test_set
from ibcore.device import cudnn_benchmark, isolated_rng, resolve_device
from ibcore.errors import (
    DataNotFoundError,
    InvalidParameterError,
    UnknownNameError,
)
from ibcore.models.ncvae import (
    NCVAE,
    NCVAEArch,
    save_model_file,
    state_digest,
)
from ibcore.profiles import select
from ibcore.results import default_results_root, read_artifact
from ibcore.runners.context import RunContext, prepare_run
from ibcore.schedules import Schedule
from ibcore.tasks import Task, run_experiments
from ibcore.training import Trainer
from ibcore.validation import check_int, check_weight

CHAPTER = "ncvae"
EXPERIMENTS = ("rd_sweep", "noise_ablation")
SOURCE_BPPS: tuple[float, ...] = (0.07, 0.10, 0.20, 0.25, 0.30, 0.40)
"""The bit rates of the source's Table 1."""
BAR_BPP_RANGE = (0.10, 0.25)
BAR_JPEG_GAIN_DB = 2.0
BAR_BD_RATE_PERCENT = 0.0
BAR_HIGH_RATE_RANGE = (0.2, 0.4)
BAR_HIGH_RATE_GAIN_DB = 1.5
BAR_RATE_AGREEMENT = 0.01
RATE_CHECK_MIN_BYTES = 4096
BAR_CODEC_SECONDS = 2.0

__all__ = [
    "BAR_BPP_RANGE",
    "CHAPTER",
    "EXPERIMENTS",
    "PROFILES",
    "SOURCE_BPPS",
    "NCVAEConfig",
    "check_bars",
    "export_models",
    "gradient_energy_ratio",
    "load_model",
    "main",
    "model_key",
    "psnr_at",
    "read_artifact",
    "read_png_artifact",
    "run",
    "shipped_names",
]


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NCVAEConfig:
    """Settings of both experiments (one profile = one instance)."""

    # architecture (nc_vae.md Figure 1; C is not given by the source)
    channels: int = 64
    latent: int = 64
    hyper: int = 32
    # training data: the images of these sets (ibcore.data.images.image_folder), less the
    # validation images, at every scale of train_scales (multi-scale crops, in memory)
    train_sets: tuple[str, ...] = ("wallpapers-train", "photos")
    validation_images: tuple[str, ...] = ("opencv-doc-building.png",
                                          "palapeli-data-castle-maintenon.png")
    train_scales: tuple[float, ...] = (1.0, 0.707, 0.5, 0.354, 0.25)
    train_short_side: int | None = None
    in_memory: bool = True
    crop: int = 128
    batch_size: int = 8
    # schedule: an "epoch" is steps_per_epoch steps (0: the non-overlapping crops of the set).
    # schedule "warmup_cosine": per step, linear warm-up then cosine decay to
    # final_lr_fraction · peak (ibcore.schedules); "step": × lr_decay every lr_decay_every epochs
    schedule: str = "warmup_cosine"
    warmup_fraction: float = 0.02
    final_lr_fraction: float = 0.01
    lr_decay: float = 0.5
    lr_decay_every: int = 12
    steps_per_epoch: int = 400
    grad_clip: float = 5.0
    # the trunk: one model trained at the high-rate end (the smallest rate weight); every sweep
    # model is fine-tuned from it for `epochs` epochs at peak rate `lr`
    warm_start: bool = True
    trunk_epochs: int = 50
    trunk_lr: float = 1.5e-3
    epochs: int = 8
    lr: float = 5e-4
    # models
    rate_weights: tuple[float, ...] = (3000.0, 1000.0, 350.0, 120.0, 40.0, 12.0)
    sweep_noise_std: float = 0.01
    # noise ablation: one model per σ, each from the same initialisation with the same schedule
    ablation_rate_weight: float = 350.0
    ablation_noise_stds: tuple[float, ...] = (0.0, 0.01, 0.1, 0.3)
    ablation_epochs: int = 12
    ablation_lr: float = 1.5e-3
    # evaluation: test sets {label: (image set, file names or () for the whole folder)}
    test_sets: tuple[tuple[str, str, tuple[str, ...]], ...] = (
        ("kodak", "kodak", ("kodim02.png", "kodim07.png")),
        ("wallpapers", "wallpapers-test", ()),
    )
    speed_set: str = "kodak"  # encode/decode times are measured on this set's images
    crop_image: str = "kodim07.png"
    crop_box: tuple[int, int, int] = (128, 288, 192)  # top, left, size
    baseline_codecs: tuple[str, ...] = ("jpeg", "webp", "jpeg2000", "avif")
    jpeg_qualities: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50)
    webp_qualities: tuple[int, ...] = (0, 2, 5, 10, 15, 20, 30, 40, 50, 60, 70)
    jpeg2000_bpps: tuple[float, ...] = (0.05, 0.07, 0.1, 0.14, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8)
    avif_qualities: tuple[int, ...] = (0, 5, 10, 15, 20, 25, 30, 35, 40, 50, 60)
    speed_repeats: int = 3
    bd_method: str = "cubic"
    # GPU speed switch (off in every profile): cuDNN's algorithm search for the fixed-size
    # training crops, faster on a GPU but not bit-reproducible (ibcore.device.cudnn_benchmark).
    # No autocast: the rate is a sum of log-differences of the entropy model's CDFs, which
    # bfloat16 would round away
    cudnn_benchmark: bool = False

    def __post_init__(self) -> None:
        for name in ("channels", "latent", "hyper", "crop", "batch_size", "epochs",
                     "lr_decay_every", "speed_repeats", "ablation_epochs"):
            check_int(name, getattr(self, name), low=1)
        check_int("steps_per_epoch", self.steps_per_epoch, low=0)
        check_int("trunk_epochs", self.trunk_epochs, low=0)
        for name in self.train_sets:
            if name not in ("photos", "wallpapers-train", "clic"):
                raise UnknownNameError(
                    f"train set must be 'photos', 'wallpapers-train' or 'clic', got {name!r}")
        if not self.train_sets:
            raise InvalidParameterError("give at least one training image set")
        if self.schedule not in ("warmup_cosine", "step"):
            raise UnknownNameError(f"schedule must be 'warmup_cosine' or 'step', got {self.schedule!r}")
        if not self.train_scales or self.train_scales[0] != 1.0 or any(
                not 0 < x <= 1 for x in self.train_scales):
            raise InvalidParameterError(
                f"train_scales must start with 1.0 and lie in (0, 1], got {self.train_scales}")
        if self.train_short_side is not None:
            check_int("train_short_side", self.train_short_side, low=self.crop)
        for name in ("lr", "trunk_lr", "ablation_lr"):
            check_weight(name, getattr(self, name), low=0.0, low_inclusive=False)
        check_weight("lr_decay", self.lr_decay, low=0.0, high=1.0, low_inclusive=False)
        check_weight("warmup_fraction", self.warmup_fraction, low=0.0, high=1.0, high_inclusive=False)
        check_weight("final_lr_fraction", self.final_lr_fraction, low=0.0, high=1.0)
        check_weight("grad_clip", self.grad_clip)
        if len(self.rate_weights) < 2:
            raise InvalidParameterError("give at least two rate weights (a curve needs 2 points)")
        for lam in (*self.rate_weights, self.ablation_rate_weight):
            check_weight("rate weight", lam, low=0.0, low_inclusive=False)
        for s in (self.sweep_noise_std, *self.ablation_noise_stds):
            check_weight("noise std", s)
        labels = [t[0] for t in self.test_sets]
        if not labels or len(set(labels)) != len(labels):
            raise InvalidParameterError(f"test set labels must be distinct and non-empty: {labels}")
        if self.speed_set not in labels:
            raise InvalidParameterError(f"speed_set {self.speed_set!r} is not a test set ({labels})")
        first = self.test_sets[0]
        if self.crop_image not in first[2]:
            raise InvalidParameterError("crop_image must be one of the first test set's images")
        for codec in self.baseline_codecs:
            if codec not in bl.CODECS:
                raise UnknownNameError(f"unknown baseline codec {codec!r}")

    @property
    def arch(self) -> NCVAEArch:
        return NCVAEArch(channels=self.channels, latent=self.latent, hyper=self.hyper)

    @property
    def trunk_rate_weight(self) -> float:
        """The trunk is trained at the high-rate end of the sweep: its smallest rate weight."""
        return min(self.rate_weights)

    def qualities(self, codec: str) -> tuple[float, ...]:
        return {"jpeg": self.jpeg_qualities, "webp": self.webp_qualities,
                "jpeg2000": self.jpeg2000_bpps, "avif": self.avif_qualities}[codec]

    def data_fields(self) -> dict[str, Any]:
        """The settings every trained model depends on (data, architecture, batch)."""
        keep = ["channels", "latent", "hyper", "train_sets", "validation_images", "train_scales",
                "train_short_side", "crop", "batch_size", "steps_per_epoch", "grad_clip",
                "schedule", "warmup_fraction", "final_lr_fraction"]
        if self.schedule == "step":
            keep += ["lr_decay", "lr_decay_every"]
        return {k: getattr(self, k) for k in keep}


_CPU = NCVAEConfig()

PROFILES: dict[str, NCVAEConfig] = {
    "smoke": dataclasses.replace(
        _CPU,
        channels=16,
        latent=16,
        hyper=8,
        crop=64,
        batch_size=2,
        steps_per_epoch=3,
        epochs=2,
        trunk_epochs=1,
        ablation_epochs=1,
        lr=1e-3,
        train_sets=("wallpapers-train",),
        train_short_side=256,
        train_scales=(1.0, 0.5),
        rate_weights=(300.0, 30.0),
        sweep_noise_std=0.01,
        ablation_rate_weight=300.0,
        ablation_noise_stds=(0.0, 0.01),
        test_sets=(("kodak", "kodak", ("kodim02.png", "kodim07.png")),
                   ("wallpapers", "wallpapers-test", ("opencv-doc-leuvena.png",))),
        crop_box=(128, 288, 96),
        baseline_codecs=("jpeg", "webp", "jpeg2000"),
        jpeg_qualities=(2, 10, 40, 80),
        webp_qualities=(5, 50),
        jpeg2000_bpps=(0.1, 0.5, 2.0),
        speed_repeats=1,
    ),
    "cpu": _CPU,
    "paper": dataclasses.replace(
        _CPU,
        channels=192,
        latent=192,
        hyper=128,
        train_sets=("clic",),
        validation_images=(),
        train_scales=(1.0,),
        in_memory=False,
        crop=512,
        batch_size=75,
        steps_per_epoch=0,
        schedule="step",
        epochs=64,
        lr=1e-4,
        lr_decay=0.9,
        lr_decay_every=2,
        warm_start=False,
        trunk_epochs=0,
        ablation_epochs=64,
        ablation_lr=1e-4,
        rate_weights=(5000.0, 2500.0, 1200.0, 600.0, 300.0, 150.0, 75.0, 40.0),
        ablation_rate_weight=300.0,
        speed_repeats=5,
    ),
}


def model_key(rate_weight: float, noise_std: float) -> str:
    """The name of a model in checkpoints and results, e.g. ``lam300-sigma0.01``."""
    return f"lam{rate_weight:g}-sigma{noise_std:g}"


def shipped_names(config: NCVAEConfig) -> dict[str, tuple[float, float]]:
    """``{"q1": (λ, σ), …}``: the sweep models by increasing rate (decreasing λ)."""
    lams = sorted(config.rate_weights, reverse=True)
    return {f"q{i + 1}": (lam, config.sweep_noise_std) for i, lam in enumerate(lams)}


# ---------------------------------------------------------------------------------------------
# measurements (pure functions, tested)
# ---------------------------------------------------------------------------------------------


def psnr_at(bpps: Sequence[float], psnrs: Sequence[float], targets: Sequence[float]) -> list[float | None]:
    """PSNR of a curve at each target rate: linear interpolation in ``log bpp``.

    ``None`` where the target lies outside the curve's rate range (no extrapolation).
    """
    b = np.asarray(bpps, dtype=float)
    p = np.asarray(psnrs, dtype=float)
    order = np.argsort(b)
    lb, p = np.log(b[order]), p[order]
    out: list[float | None] = []
    for t in targets:
        lt = math.log(float(t))
        if lb.size == 0 or lt < lb[0] - 1e-12 or lt > lb[-1] + 1e-12:
            out.append(None)
        else:
            out.append(float(np.interp(lt, lb, p)))
    return out


def gradient_energy_ratio(reconstruction: Tensor, original: Tensor) -> float:
    """``Σ|∇x̂|² / Σ|∇x|²`` over horizontal and vertical neighbour differences (uint8 images).

    Below 1: the reconstruction is smoother than the original (the effect source Fig. 4 shows
    for growing input noise).
    """
    def energy(x: Tensor) -> float:
        x = x.to(torch.float64)
        return float((x[..., 1:, :] - x[..., :-1, :]).pow(2).sum()
                     + (x[..., :, 1:] - x[..., :, :-1]).pow(2).sum())

    return energy(reconstruction) / energy(original)


def _mean_curve(points: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[float]]:
    """Mean bpp and mean PSNR over images of each setting (``points[k]["images"]``)."""
    bpp = [float(np.mean([v["bpp"] for v in p["images"].values()])) for p in points]
    psnr = [float(np.mean([v["psnr_db"] for v in p["images"].values()])) for p in points]
    order = np.argsort(bpp)
    return [bpp[i] for i in order], [psnr[i] for i in order]


def _per_image_curve(points: Sequence[Mapping[str, Any]], image: str) -> tuple[list[float], list[float]]:
    pairs = sorted((p["images"][image]["bpp"], p["images"][image]["psnr_db"]) for p in points)
    return [a for a, _ in pairs], [b for _, b in pairs]


def _bd(anchor: tuple[list[float], list[float]], test: tuple[list[float], list[float]],
        method: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, fn in (("bd_psnr_db", bd_psnr), ("bd_rate_percent", bd_rate)):
        try:
            out[name] = fn(anchor[0], anchor[1], test[0], test[1], method=method)
        except (InvalidParameterError, ValueError) as exc:
            out[name] = None
            out[f"{name}_note"] = str(exc)
    return out


def _gain(bpps: Sequence[float], psnrs: Sequence[float], lo: float, hi: float) -> float | None:
    """``PSNR(hi) − PSNR(lo)`` on a curve (:func:`psnr_at`); ``None`` if it does not span both."""
    a, b = psnr_at(bpps, psnrs, (lo, hi))
    return None if a is None or b is None else b - a


def check_bars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The reproduction checks, evaluated on an ``rd_sweep`` metrics block.

    Per test set (``metrics["test_sets"]``):

    * ``bd_rate_vs_jpeg2000``: the Bjøntegaard rate difference of our mean curve against
      JPEG 2000's; passes at ``≤ 0 %`` (parity or better).
    * ``jpeg_gain``: on each image, the mean of ``PSNR_ours − PSNR_jpeg`` over the points of a
      log-spaced grid of rates in :data:`BAR_BPP_RANGE` that JPEG's curve reaches (its lowest
      quality can lie above 0.10 bpp); passes when every image's mean gap is ``≥ 2 dB`` and our
      curve covers the whole range on every image.
    * ``high_rate_gain``: ``PSNR(0.4 bpp) − PSNR(0.2 bpp)`` of the mean curve ``≥ 1.5 dB``
      (fails when the curve does not reach 0.4 bpp).

    Over all sets: ``rate_agreement`` (``|file bits / estimated bits − 1| ≤ 1 %`` for every file
    over :data:`RATE_CHECK_MIN_BYTES`; smaller files are reported with their header share) and
    ``codec_seconds`` (median encode + decode time on the speed set's images ``≤ 2 s``).
    """
    bars: dict[str, Any] = {}
    lo, hi = BAR_BPP_RANGE
    grid = np.geomspace(lo, hi, 16)
    models = metrics["models"]
    for label, images in metrics["test_sets"].items():
        ours = [m["sets"][label] for m in models.values()]
        base = metrics["baselines"][label]
        out: dict[str, Any] = {}
        bd = metrics["bd"][label].get("jpeg2000")
        if bd is not None:
            v = bd.get("bd_rate_percent")
            out["bd_rate_vs_jpeg2000"] = {"value": v, "target": BAR_BD_RATE_PERCENT, "unit": "%",
                                          "pass": bool(v is not None and v <= BAR_BD_RATE_PERCENT)}
        jpeg = base.get("jpeg")
        if jpeg:
            gaps: dict[str, Any] = {}
            ok = True
            for image in images:
                ob, op = _per_image_curve(ours, image)
                jb, jp = _per_image_curve(jpeg, image)
                a = psnr_at(ob, op, grid)
                b = psnr_at(jb, jp, grid)
                diffs = [x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None]
                covered = all(x is not None for x in a)  # ours; JPEG may start above 0.10 bpp
                mean = float(np.mean(diffs)) if diffs else None
                gaps[image] = {"mean_gap_db": mean, "min_gap_db": min(diffs) if diffs else None,
                               "points_compared": len(diffs), "range_covered": covered,
                               "our_bpp_range": [min(ob), max(ob)]}
                ok = ok and covered and mean is not None and mean >= BAR_JPEG_GAIN_DB
            means = [g["mean_gap_db"] for g in gaps.values() if g["mean_gap_db"] is not None]
            out["jpeg_gain"] = {"value": min(means) if means else None, "target": BAR_JPEG_GAIN_DB,
                                "unit": "dB", "range_bpp": [lo, hi], "per_image": gaps,
                                "pass": bool(ok)}
        cb, cp = _mean_curve(ours)
        g_lo, g_hi = BAR_HIGH_RATE_RANGE
        gain = _gain(cb, cp, g_lo, g_hi)
        out["high_rate_gain"] = {"value": gain, "target": BAR_HIGH_RATE_GAIN_DB, "unit": "dB",
                                 "range_bpp": [g_lo, g_hi], "curve_max_bpp": max(cb),
                                 "pass": bool(gain is not None and gain >= BAR_HIGH_RATE_GAIN_DB)}
        bars[label] = out
    files = [v for m in models.values() for st in m["sets"].values() for v in st["images"].values()]
    big = [abs(v["rate_rel_gap"]) for v in files if v["bytes"] > RATE_CHECK_MIN_BYTES]
    small = [v for v in files if v["bytes"] <= RATE_CHECK_MIN_BYTES]
    bars["rate_agreement"] = {
        "value": max(big) if big else None, "target": BAR_RATE_AGREEMENT, "unit": "relative",
        "min_bytes": RATE_CHECK_MIN_BYTES, "files_checked": len(big),
        "pass": bool(big) and max(big) <= BAR_RATE_AGREEMENT,
        "small_files": {
            "count": len(small),
            "max_abs_gap": max((abs(v["rate_rel_gap"]) for v in small), default=None),
            "max_header_share": max((v["header_bytes"] / v["bytes"] for v in small), default=None),
            "header_bytes": sorted({v["header_bytes"] for v in files}),
        },
    }
    speed = metrics["speed_set"]
    secs = [v["encode_s"] + v["decode_s"] for m in models.values()
            for v in m["sets"][speed]["images"].values()]
    med = statistics.median(secs)
    bars["codec_seconds"] = {"value": med, "target": BAR_CODEC_SECONDS, "unit": "s",
                             "pass": med <= BAR_CODEC_SECONDS, "set": speed,
                             "note": f"median encode + decode over models and the {speed} images"}
    return bars


# ---------------------------------------------------------------------------------------------
# context, data, training
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One trained model: its key, rate weight, noise level and how it is trained.

    ``role``: ``"trunk"`` (from scratch at the high-rate end), ``"sweep"`` (fine-tuned from the
    trunk, or from scratch without warm start) or ``"ablation"`` (from scratch).
    """

    key: str
    role: str
    rate_weight: float
    noise_std: float
    epochs: int
    lr: float


@dataclass
class _Trained:
    model: NCVAE
    history: list[dict[str, Any]]
    seconds: float
    earlier_seconds: float


@dataclass
class _Context(RunContext):
    chapter: ClassVar[str] = CHAPTER

    data_root: Path | None = None
    trained: dict[str, _Trained] = field(default_factory=dict)
    _source: CropSource | None = None
    _tests: dict[str, dict[str, Tensor]] | None = None
    _validation: dict[str, Tensor] | None = None

    def models_dir(self) -> Path:
        return self.runs_dir("models")

    def decoded_cache_dir(self) -> Path:
        """``<results root>/../runs/cache/ncvae-decoded/<train sets>``: decoded training images."""
        root = Path(self.results_root) if self.results_root is not None else default_results_root()
        return root.parent / "runs" / "cache" / "ncvae-decoded" / "+".join(self.config.train_sets)

    @property
    def source(self) -> CropSource:
        if self._source is None:
            cfg = self.config
            folders = [image_folder(name, self.data_root) for name in cfg.train_sets]
            # read from disk (paper profile): each image is decoded once into the cache
            cache = None if cfg.in_memory else self.decoded_cache_dir()
            self._source = CropSource(folders, in_memory=cfg.in_memory,
                                      short_side=cfg.train_short_side,
                                      recursive="clic" in cfg.train_sets, cache_dir=cache,
                                      exclude=cfg.validation_images, scales=cfg.train_scales,
                                      min_size=cfg.crop)
        return self._source

    @property
    def validation_images(self) -> dict[str, Tensor]:
        """The held-out training images (full resolution) the per-epoch curves are measured on."""
        if self._validation is None:
            cfg = self.config
            found: dict[str, Tensor] = {}
            for name in cfg.train_sets:
                folder = image_folder(name, self.data_root)
                for image in cfg.validation_images:
                    if (folder / image).is_file():
                        found[image] = load_image(folder / image)
            missing = [n for n in cfg.validation_images if n not in found]
            if missing:
                raise DataNotFoundError(f"validation images {missing} are in none of the training "
                                        f"folders {list(cfg.train_sets)}")
            self._validation = {n: found[n] for n in cfg.validation_images}
        return self._validation

    @property
    def test_images(self) -> dict[str, dict[str, Tensor]]:
        """``{test set label: {file name: image}}``."""
        if self._tests is None:
            self._tests = {label: load_test_set(folder, self.data_root, names or None)
                           for label, folder, names in self.config.test_sets}
        return self._tests


def _seed_of(*parts: Any) -> int:
    return zlib.crc32(json.dumps(parts, default=str).encode()) & 0x7FFFFFFF


def _new_model(cfg: NCVAEConfig, init_seed: int, device: torch.device) -> NCVAE:
    # the initial weights are drawn on the CPU from the seeded global RNG, which (CPU and
    # ``device``) is restored afterwards
    with isolated_rng(device, init_seed):
        return NCVAE(cfg.arch, device=device)


class _Prefetcher:
    """Batches of a pure function ``draw(step)``, the next one prepared in a background thread.

    :meth:`get` returns ``draw(step)``; when enabled it then starts ``draw(step + 1)`` in one
    worker thread, so reading the next crops overlaps the current training step. Because a
    batch depends on its step alone, prefetching changes no number; a call for another step
    (after a resume) is drawn directly.
    """

    def __init__(self, draw: Callable[[int], Any], *, enabled: bool) -> None:
        self.draw = draw
        self.pool = ThreadPoolExecutor(max_workers=1) if enabled else None
        self.pending: tuple[int, Future] | None = None

    def get(self, step: int) -> Any:
        if self.pending is not None and self.pending[0] == step:
            value = self.pending[1].result()
        else:
            if self.pending is not None:
                self.pending[1].cancel()
            value = self.draw(step)
        self.pending = None
        if self.pool is not None:
            self.pending = (step + 1, self.pool.submit(self.draw, step + 1))
        return value

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.pending = None


def _steps_per_epoch(ctx: _Context) -> int:
    cfg = ctx.config
    if cfg.steps_per_epoch > 0:
        return cfg.steps_per_epoch
    return max(1, math.ceil(ctx.source.patches_per_epoch(cfg.crop) / cfg.batch_size))


def _to_uint8(x: Tensor) -> Tensor:
    return torch.round(x.clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def _psnr_uint8(a: Tensor, b: Tensor) -> float:
    return bl.psnr(a.permute(1, 2, 0).numpy(), b.permute(1, 2, 0).numpy())


def _estimate(model: NCVAE, images: Mapping[str, Tensor], device: torch.device) -> dict[str, float]:
    """Estimated rate (rounded latents, model code length) and PSNR, averaged over ``images``."""
    bpps, psnrs = [], []
    model.eval()
    with torch.inference_mode():
        for img in images.values():
            x = img[None].to(device=device, dtype=torch.float32) / 255.0
            out = model(x, quantize="round")
            bpps.append(float(out["bits"] / out["pixels"]))
            psnrs.append(_psnr_uint8(img, _to_uint8(out["x_hat"][0]).cpu()))
    model.train()
    return {"val_bpp_estimated": float(np.mean(bpps)), "val_psnr_db": float(np.mean(psnrs))}


def model_specs(cfg: NCVAEConfig, experiment: str) -> list[ModelSpec]:
    """The models ``experiment`` needs, in training order (the trunk first)."""
    if experiment == "rd_sweep":
        out = []
        if cfg.warm_start and cfg.trunk_epochs > 0:
            out.append(ModelSpec("trunk", "trunk", cfg.trunk_rate_weight, cfg.sweep_noise_std,
                                 cfg.trunk_epochs, cfg.trunk_lr))
        out += [ModelSpec(model_key(lam, cfg.sweep_noise_std), "sweep", lam, cfg.sweep_noise_std,
                          cfg.epochs, cfg.lr) for lam in cfg.rate_weights]
        return out
    if experiment == "noise_ablation":
        return [ModelSpec(f"scratch-{model_key(cfg.ablation_rate_weight, s)}", "ablation",
                          cfg.ablation_rate_weight, s, cfg.ablation_epochs, cfg.ablation_lr)
                for s in cfg.ablation_noise_stds]
    raise UnknownNameError(f"unknown experiment {experiment!r}; choose one of {', '.join(EXPERIMENTS)}")


def _trunk_spec(cfg: NCVAEConfig) -> ModelSpec | None:
    specs = [m for m in model_specs(cfg, "rd_sweep") if m.role == "trunk"]
    return specs[0] if specs else None


def _fingerprint(ctx: _Context, spec: ModelSpec, init_name: str | None) -> str:
    return fingerprint_of({"chapter": CHAPTER, "seed": ctx.seed, "spec": dataclasses.asdict(spec),
                           "init": init_name, "config": ctx.config.data_fields()})


def optimisation_step(model: NCVAE, opt: torch.optim.Optimizer, x: Tensor, rate_weight: float,
                      noise_std: float, generator: torch.Generator, grad_clip: float
                      ) -> dict[str, Tensor]:
    """One step on a batch ``x`` in [0, 1]: distortion + λ·rate, back-propagated, the gradient's
    norm clipped to ``grad_clip`` (when > 0), one optimizer step; the detached loss terms."""
    terms = model.loss(x, rate_weight, noise_std=noise_std, generator=generator)
    opt.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return {k: v.detach() for k, v in terms.items()}


def _init_of(ctx: _Context, spec: ModelSpec) -> tuple[NCVAE | None, str | None]:
    """The weights ``spec`` starts from: the trunk's for a warm-started sweep model, else none
    (the seeded random initialisation)."""
    if spec.role != "sweep":
        return None, None
    trunk_spec = _trunk_spec(ctx.config)
    if trunk_spec is None:
        return None, None
    trunk = _train(ctx, trunk_spec, reuse_finished=True)
    return trunk.model, state_digest(trunk.model)


def _init_seed(ctx: _Context, spec: ModelSpec) -> int:
    # every from-scratch model of the ablation starts from the same weights
    return _seed_of(ctx.seed, "ablation-init" if spec.role == "ablation" else spec.key)


def _train(ctx: _Context, spec: ModelSpec, *, reuse_finished: bool = False) -> _Trained:
    """Train one model (or load it when finished); memoised per run in ``ctx.trained``.

    A finished model (its ``.done`` file) is loaded with ``--resume``, or always with
    ``reuse_finished`` (a prerequisite another task of this run trained, such as the trunk).
    """
    if spec.key in ctx.trained:
        return ctx.trained[spec.key]
    cfg = ctx.config
    init, init_name = _init_of(ctx, spec)
    folder = ctx.models_dir()
    fp = _fingerprint(ctx, spec, init_name)
    done = folder / f"{spec.key}.done"
    if (ctx.resume or reuse_finished) and done.exists():
        state = load_checkpoint(done, fingerprint=fp)
        model = _new_model(cfg, 0, ctx.device)
        model.load_state_dict(state["weights"])
        model.eval()
        result = _Trained(model, list(state["history"]), float(state["seconds"]),
                          float(state["seconds"]))
        ctx.trained[spec.key] = result
        return result
    model = _new_model(cfg, _init_seed(ctx, spec), ctx.device)
    if init is not None:
        model.load_state_dict(init.state_dict())
    spe = _steps_per_epoch(ctx)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    if cfg.schedule == "step":
        scheduler: Any = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_decay_every,
                                                         gamma=cfg.lr_decay)
        schedule = None
    else:
        scheduler = None
        schedule = Schedule("warmup_cosine", peak_lr=spec.lr, warmup_fraction=cfg.warmup_fraction,
                            final_lr_fraction=cfg.final_lr_fraction)
    base = _seed_of(ctx.seed, spec.key, "steps")
    source = ctx.source
    validation = ctx.validation_images
    dev = ctx.device

    def draw(global_step: int) -> tuple[Tensor, torch.Generator]:
        """The crops of ``global_step`` (a pure function of it) and the generator after them."""
        gen = torch.Generator().manual_seed(base + global_step)
        crops = source.sample(cfg.crop, cfg.batch_size, gen)
        return (crops.pin_memory() if dev.type == "cuda" else crops), gen

    # from disk (paper profile), the next step's crops are read while this step trains
    batches = _Prefetcher(draw, enabled=not cfg.in_memory)

    def step_fn(batch: tuple[Tensor, ...], global_step: int) -> dict[str, Tensor | float]:
        crops, gen = batches.get(global_step)
        x = crops.to(dev, non_blocking=True).to(torch.float32) / 255.0
        noise_gen = gen if dev.type == "cpu" else torch.Generator(dev).manual_seed(base + global_step)
        return optimisation_step(model, opt, x, spec.rate_weight, spec.noise_std, noise_gen,
                                 cfg.grad_clip)

    def epoch_end(epoch: int) -> dict[str, float]:
        row: dict[str, float] = {"step": epoch * spe}
        if validation:
            with isolated_rng(dev):  # deterministic; the training streams stay untouched
                row.update(_estimate(model, validation, dev))
        return row

    trainer = Trainer(
        {"model": model}, opt, (torch.arange(spe),), batch_size=1, epochs=spec.epochs,
        seed=_seed_of(ctx.seed, spec.key, "order"), device=torch.device("cpu"), step_fn=step_fn,
        scheduler=scheduler, schedule=schedule, checkpoint_path=folder / f"{spec.key}.pt",
        checkpoint_every_steps=max(1, spe // 2) if spe >= 20 else None, fingerprint=fp,
        epoch_end_fn=epoch_end, progress=ctx.progress, desc=spec.key,
    )
    t0 = time.perf_counter()
    try:
        history = trainer.fit(resume=ctx.resume)
    finally:
        batches.close()
    earlier = max(0.0, trainer.elapsed_seconds - (time.perf_counter() - t0))
    save_checkpoint(done, {"weights": model.state_dict(), "history": history,
                           "seconds": trainer.elapsed_seconds}, fingerprint=fp)
    model.eval()
    result = _Trained(model, history, trainer.elapsed_seconds, earlier)
    ctx.trained[spec.key] = result
    return result


# ---------------------------------------------------------------------------------------------
# evaluation with real files
# ---------------------------------------------------------------------------------------------


def _measure(model: NCVAE, images: Mapping[str, Tensor], repeats: int,
             keep: dict[str, EncodeResult] | None = None) -> dict[str, Any]:
    """Encode and decode every test image: real rate, PSNR, estimate gap, header, timings.

    Timings are medians over ``repeats`` further encode + decode round trips (none: ``None``).
    The detailed encoding of each image is stored in ``keep`` when given.
    """
    out: dict[str, Any] = {}
    for name, img in images.items():
        t0 = time.perf_counter()
        res = encode_detailed(model, img)
        t1 = time.perf_counter()
        if keep is not None:
            keep[name] = res
        decoded = decode(model, res.data)
        t2 = time.perf_counter()
        enc_t, dec_t = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            data = encode(model, img)
            t1 = time.perf_counter()
            decode(model, data)
            t2 = time.perf_counter()
            enc_t.append(t1 - t0)
            dec_t.append(t2 - t1)
        _, words = unpack(res.data)
        pixels = img.shape[1] * img.shape[2]
        out[name] = {
            "bytes": len(res.data),
            "header_bytes": len(res.data) - 4 * len(words),
            "bpp": 8.0 * len(res.data) / pixels,
            "estimated_bpp": res.estimated_bits / pixels,
            "estimated_bpp_side": res.estimated_bits_side / pixels,
            "rate_rel_gap": 8.0 * len(res.data) / res.estimated_bits - 1.0,
            "psnr_db": _psnr_uint8(img, decoded),
            "roundtrip_exact": bool(torch.equal(decoded, res.reconstruction)),
            "encode_s": statistics.median(enc_t) if enc_t else None,
            "decode_s": statistics.median(dec_t) if dec_t else None,
            "pixels": int(pixels),
            "file_sha256": hashlib.sha256(res.data).hexdigest(),
        }
    return out


def _png(image: Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _crop(img: Tensor, box: tuple[int, int, int]) -> Tensor:
    top, left, size = box
    return img[:, top : top + size, left : left + size].contiguous()


def _latent_png(y_hat: Tensor, channel: int) -> bytes:
    """One latent channel as an 8-bit PNG: value v → clip(128 + 32 v, 0, 255)."""
    v = (128 + 32 * y_hat[channel].to(torch.float64)).clamp(0, 255).round().to(torch.uint8)
    buf = io.BytesIO()
    Image.fromarray(v.numpy(), mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _symbol_entropy_bits(y_hat: Tensor) -> float:
    _, counts = torch.unique(y_hat.to(torch.int64), return_counts=True)
    p = counts.to(torch.float64) / counts.sum()
    return float(-(p * torch.log2(p)).sum())


def _set_summary(measured: Mapping[str, Any]) -> dict[str, Any]:
    return {"images": dict(measured),
            "test_bpp": float(np.mean([v["bpp"] for v in measured.values()])),
            "test_psnr_db": float(np.mean([v["psnr_db"] for v in measured.values()]))}


def _cached(ctx: _Context, key: str, fingerprint: str, compute: Callable[[], dict[str, Any]]
            ) -> dict[str, Any]:
    """``compute()``, cached in ``<models dir>/<key>.eval.json`` under ``fingerprint``."""
    path = ctx.models_dir() / f"{key}.eval.json"
    if ctx.resume and path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("fingerprint") == fingerprint:
            return saved["evals"]
    evals = compute()
    atomic_write_json(path, {"fingerprint": fingerprint, "evals": evals})
    return evals


def _evaluated(ctx: _Context, spec: ModelSpec) -> dict[str, Any]:
    """Train (or load) ``spec`` and measure it with real files on every test set (cached)."""
    cfg = ctx.config
    trained = _train(ctx, spec)
    fp = fingerprint_of({"model": state_digest(trained.model), "role": spec.role,
                         "tests": [list(t[:2]) + list(t[2]) for t in cfg.test_sets],
                         "speed": [cfg.speed_set, cfg.speed_repeats]})

    def compute() -> dict[str, Any]:
        tests = ctx.test_images
        sets = {}
        labels = [cfg.speed_set] if spec.role == "ablation" else list(tests)
        for label in labels:
            repeats = cfg.speed_repeats if label == cfg.speed_set else 0
            sets[label] = _set_summary(_measure(trained.model, tests[label], repeats))
        return {"key": spec.key, "role": spec.role, "rate_weight": spec.rate_weight,
                "noise_std": spec.noise_std, "train_seconds": trained.seconds,
                "model_id": model_id(trained.model).hex(), "sets": sets}

    if spec.role == "trunk":
        return {"key": spec.key, "train_seconds": trained.seconds}
    return _cached(ctx, spec.key, fp, compute)


def _baselines(ctx: _Context) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per test set and codec, one entry per quality setting with every image's bpp and PSNR
    (cached)."""
    cfg = ctx.config
    support = bl.available_codecs()
    fp = fingerprint_of({"tests": [list(t[:2]) + list(t[2]) for t in cfg.test_sets],
                         "codecs": {c: list(cfg.qualities(c)) for c in cfg.baseline_codecs},
                         "support": support})

    def compute() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for label, images in ctx.test_images.items():
            arrays = {k: v.permute(1, 2, 0).numpy() for k, v in images.items()}
            out[label] = {}
            for codec in cfg.baseline_codecs:
                if not support[codec]:
                    continue
                points = []
                for q in cfg.qualities(codec):
                    per = {}
                    for name, arr in arrays.items():
                        pt = bl.rd_curve(arr, codec, [q])[0]
                        per[name] = {"bpp": pt.bpp, "psnr_db": pt.psnr, "bytes": pt.bytes}
                    points.append({"quality": float(q), "images": per})
                out[label][codec] = points
        return out

    return _cached(ctx, "baselines", fp, compute)


def _history_rows(spec: ModelSpec, trained: _Trained) -> list[dict[str, Any]]:
    return [{"model": spec.key, "role": spec.role, "rate_weight": spec.rate_weight,
             "noise_std": spec.noise_std, **row} for row in trained.history]


def _run_rd_sweep(ctx: _Context) -> Path:
    cfg = ctx.config
    tests = ctx.test_images
    with ctx.recorder("rd_sweep") as rec:
        models: dict[str, Any] = {}
        trunk = None
        for spec in model_specs(cfg, "rd_sweep"):
            trained = _train(ctx, spec)
            rec.add_elapsed(trained.seconds)
            rec.history.extend(_history_rows(spec, trained))
            if spec.role == "trunk":
                trunk = {"rate_weight": spec.rate_weight, "noise_std": spec.noise_std,
                         "epochs": spec.epochs, "peak_lr": spec.lr,
                         "train_seconds": trained.seconds}
                continue
            ev = _evaluated(ctx, spec)
            models[spec.key] = {k: ev[k] for k in ("rate_weight", "noise_std", "train_seconds",
                                                   "model_id", "sets")}
        base = _baselines(ctx)
        first = cfg.test_sets[0][0]
        curves, bd, table = {}, {}, {}
        for label, images in tests.items():
            ours = _mean_curve([m["sets"][label] for m in models.values()])
            curves[label] = {"bpp": ours[0], "psnr_db": ours[1]}
            bd[label] = {codec: _bd(_mean_curve(points), ours, cfg.bd_method)
                         for codec, points in base[label].items()}
            table[label] = {}
            for name, points in [("ncvae", [m["sets"][label] for m in models.values()]),
                                 *base[label].items()]:
                per_image = [psnr_at(*_per_image_curve(points, im), SOURCE_BPPS) for im in images]
                table[label][name] = [None if any(v[k] is None for v in per_image)
                                      else float(np.mean([v[k] for v in per_image]))
                                      for k in range(len(SOURCE_BPPS))]
        by_rate = sorted(models, key=lambda k: models[k]["sets"][first]["test_bpp"])
        closest = min(models, key=lambda k: abs(models[k]["sets"][first]["test_bpp"] - 0.15))
        cm = models[closest]["sets"][cfg.speed_set]
        any_model = ctx.trained[closest].model
        complexity = {
            "model": closest, "set": cfg.speed_set, "test_bpp": cm["test_bpp"],
            "test_psnr_db": cm["test_psnr_db"],
            "file_bytes": int(np.mean([v["bytes"] for v in cm["images"].values()])),
            "decode_ms": 1000 * float(np.mean([v["decode_s"] for v in cm["images"].values()])),
            "encode_ms": 1000 * float(np.mean([v["encode_s"] for v in cm["images"].values()])),
            "decoder_params": any_model.decoder_parameters(),
            "decoder_bytes_float32": 4 * any_model.decoder_parameters(),
            "model_params": any_model.encoder_parameters(),
            "torch_threads": torch.get_num_threads(),
        }
        # decoded crops per λ (slider) and every codec at our lowest rate (side by side)
        crop_img = tests[first][cfg.crop_image]
        rec.save_artifact("crop-original", _png(_crop(crop_img, cfg.crop_box)), "png")
        for key in by_rate:
            model = ctx.trained[key].model
            rec.save_artifact(f"crop-{key}", _png(_crop(decode(model, encode(model, crop_img)),
                                                         cfg.crop_box)), "png")
        low = models[by_rate[0]]["sets"][first]["images"][cfg.crop_image]
        side_by_side: dict[str, Any] = {"ncvae": {"model": by_rate[0], "bpp": low["bpp"],
                                                  "psnr_db": low["psnr_db"]}}
        arr = crop_img.permute(1, 2, 0).numpy()
        for codec in base[first]:
            point, data = bl.encode_at_bpp(arr, codec, low["bpp"])
            rec_img = torch.from_numpy(bl.decode_image(data)).permute(2, 0, 1)
            rec.save_artifact(f"crop-{codec}", _png(_crop(rec_img, cfg.crop_box)), "png")
            side_by_side[codec] = point.as_dict()
        rec.metrics.update({
            "test_sets": {label: list(images) for label, images in tests.items()},
            "test_set_pixels": {label: {n: int(v.shape[1] * v.shape[2]) for n, v in images.items()}
                                for label, images in tests.items()},
            "speed_set": cfg.speed_set,
            "source_bpps": list(SOURCE_BPPS),
            "models": models,
            "models_by_rate": by_rate,
            "baselines": base,
            "baselines_available": bl.available_codecs(),
            "curve_ncvae": curves,
            "bd": bd,
            "table_psnr_db": table,
            "complexity": complexity,
            "crop": {"image": cfg.crop_image, "set": first, "box": list(cfg.crop_box),
                     "lowest_rate_side_by_side": side_by_side},
            "trunk": trunk,
            "steps_per_epoch": _steps_per_epoch(ctx),
            "training_images": {"files": [str(p.name) for p in ctx.source.paths],
                                "levels": len(ctx.source.levels),
                                "validation": list(cfg.validation_images)},
        })
        rec.metrics["bars"] = check_bars(rec.metrics)
    assert rec.path is not None
    return rec.path


def _run_noise_ablation(ctx: _Context) -> Path:
    cfg = ctx.config
    images = ctx.test_images[cfg.speed_set]
    lam = cfg.ablation_rate_weight
    with ctx.recorder("noise_ablation") as rec:
        crop_img = ctx.test_images[cfg.test_sets[0][0]][cfg.crop_image]
        rec.save_artifact("crop-original", _png(_crop(crop_img, cfg.crop_box)), "png")
        rows: dict[str, Any] = {}
        for spec in model_specs(cfg, "noise_ablation"):
            trained = _train(ctx, spec)
            rec.add_elapsed(trained.seconds)
            rec.history.extend(_history_rows(spec, trained))
            measured = dict(_evaluated(ctx, spec)["sets"][cfg.speed_set]["images"])
            for name, img in images.items():
                res = encode_detailed(trained.model, img)
                measured[name] = {**measured[name],
                                  "gradient_energy_ratio": gradient_energy_ratio(res.reconstruction, img),
                                  "symbol_entropy_bits": _symbol_entropy_bits(res.y_hat),
                                  "zero_fraction": float((res.y_hat == 0).to(torch.float64).mean())}
                if name == cfg.crop_image:
                    rec.save_artifact(f"crop-{spec.key}", _png(_crop(res.reconstruction, cfg.crop_box)), "png")
                    energy = res.y_hat.to(torch.float64).pow(2).mean(dim=(1, 2))
                    channel = int(torch.argmax(energy))
                    rec.save_artifact(f"latent-{spec.key}", _latent_png(res.y_hat, channel), "png")
            rows[spec.key] = {
                "noise_std": spec.noise_std, "rate_weight": lam, "train_seconds": trained.seconds,
                "images": measured,
                "test_bpp": float(np.mean([v["bpp"] for v in measured.values()])),
                "test_psnr_db": float(np.mean([v["psnr_db"] for v in measured.values()])),
                "test_gradient_energy_ratio": float(np.mean(
                    [v["gradient_energy_ratio"] for v in measured.values()])),
            }
        rec.metrics.update({"test_images": list(images), "set": cfg.speed_set, "rate_weight": lam,
                            "models": rows, "epochs": cfg.ablation_epochs,
                            "peak_lr": cfg.ablation_lr, "init": "one seeded initialisation for every σ",
                            "crop": {"image": cfg.crop_image, "box": list(cfg.crop_box)},
                            "latent_png_mapping": "value v -> clip(128 + 32 v, 0, 255)"})
    assert rec.path is not None
    return rec.path


_EXPERIMENT_FNS: dict[str, Callable[[_Context], Path]] = {
    "rd_sweep": _run_rd_sweep,
    "noise_ablation": _run_noise_ablation,
}


def make_context(**run_args: Any) -> _Context:
    """The run's context (the runner protocol of :mod:`ibcore.tasks`)."""
    return prepare_run(_Context, PROFILES, EXPERIMENTS, **run_args)


def plan(ctx: _Context, experiments: Sequence[str]) -> list[Task]:
    """One task per model (a sweep model after the trunk), then one for the baseline codecs.

    The trunk and the ablation models come first, so that with two workers the ablation trains
    while the trunk does; the sweep's fine-tunes follow the trunk.
    """
    cfg = ctx.config
    tasks: list[Task] = []
    trunk = _trunk_spec(cfg) if "rd_sweep" in experiments else None
    if trunk is not None:
        tasks.append(Task(trunk.key, ("rd_sweep",), trunk))
    if "noise_ablation" in experiments:
        tasks += [Task(s.key, ("noise_ablation",), s) for s in model_specs(cfg, "noise_ablation")]
    if "rd_sweep" in experiments:
        after = (trunk.key,) if trunk is not None else ()
        tasks += [Task(s.key, ("rd_sweep",), s, after)
                  for s in model_specs(cfg, "rd_sweep") if s.role == "sweep"]
        tasks.append(Task("baselines", ("rd_sweep",), None))
    return tasks


def run_task(ctx: _Context, task: Task) -> None:
    with cudnn_benchmark(ctx.config.cudnn_benchmark):
        if task.spec is None:
            _baselines(ctx)
        else:
            _evaluated(ctx, task.spec)


def assemble(ctx: _Context, experiment: str) -> Path:
    """Write ``experiment``'s result file from the tasks' models and evaluation files."""
    with cudnn_benchmark(ctx.config.cudnn_benchmark):
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
    data_root: Path | None = None,
    launcher: Any = None,
) -> dict[str, Path]:
    """Run the chapter's experiments at ``profile``; return ``{experiment: result file}``.

    ``data_root`` overrides :func:`ibcore.data.data_root` (the folder holding ``images/``).
    ``launcher`` (see :mod:`ibcore.launchers`) says where they run; default: here.
    """
    return run_experiments(CHAPTER, launcher=launcher, profile=profile, device=device, seed=seed,
                           resume=resume, results_root=results_root, progress=progress,
                           experiments=experiments, data_root=Path(data_root) if data_root is not None else None)


def read_png_artifact(result_path: Path, name: str) -> np.ndarray:
    """A PNG artefact (see :func:`read_artifact`) as a ``uint8`` array ``[H, W(, 3)]``."""
    with Image.open(io.BytesIO(read_artifact(result_path, name))) as im:
        return np.array(im)


# ---------------------------------------------------------------------------------------------
# shipped models: export, load-or-train
# ---------------------------------------------------------------------------------------------


def export_models(
    profile: str = "cpu",
    *,
    seed: int = 0,
    results_root: Path | None = None,
    dest: Path | None = None,
) -> Path:
    """Copy the finished sweep models of a run to ``dest`` (``models/ncvae``) with a manifest."""
    cfg = select(PROFILES, profile)
    dest = Path(dest) if dest is not None else default_models_dir()
    ctx = _Context(profile, cfg, torch.device("cpu"), seed, True,
                   Path(results_root) if results_root is not None else None, False)
    entries: dict[str, Any] = {}
    for name, (lam, s) in shipped_names(cfg).items():
        trained = _finished(ctx, lam, s)
        if trained is None:
            raise DataNotFoundError(
                f"model {model_key(lam, s)} of the {profile} run is not finished; run "
                f"`python -m ibcore run {CHAPTER} --profile {profile} --resume` first"
            )
        meta = {"name": name, "rate_weight": lam, "noise_std": s, "profile": profile,
                "seed": seed, "key": model_key(lam, s)}
        sha = save_model_file(trained.model, dest / f"{name}.pt", meta)
        entries[name] = {**meta, "file": f"{name}.pt", "sha256": sha,
                         "model_id": model_id(trained.model).hex(), "arch": cfg.arch.as_dict()}
    path = dest / "manifest.json"
    atomic_write_json(path, {"format": 1, "chapter": CHAPTER, "models": entries})
    return path


def _finished(ctx: _Context, lam: float, s: float) -> _Trained | None:
    """The finished sweep model ``(λ, σ)`` of the run in ``ctx`` (its ``.done`` file), or ``None``."""
    spec = next((m for m in model_specs(ctx.config, "rd_sweep")
                 if m.role == "sweep" and m.rate_weight == lam and m.noise_std == s), None)
    if spec is None:
        return None
    trunk = _trunk_spec(ctx.config)
    if trunk is not None and not (ctx.models_dir() / f"{trunk.key}.done").exists():
        return None
    if not (ctx.models_dir() / f"{spec.key}.done").exists():
        return None
    return _train(ctx, spec, reuse_finished=True)


def load_model(
    name: str,
    *,
    models_dir: Path | None = None,
    profile: str = "cpu",
    seed: int = 0,
    results_root: Path | None = None,
    train_if_missing: bool = False,
    device: str = "cpu",
    progress: bool = False,
) -> NCVAE:
    """Load-or-train the model ``name``: a shipped name (``q1`` … ``qK``) or a model file path.

    Order: (1) a path to a ``.pt`` model file; (2) ``models_dir/manifest.json`` (default
    ``models/ncvae``), the file's SHA-256 checked against the manifest; (3) the finished model
    of the ``profile`` run under ``results_root/../runs``; (4) with ``train_if_missing``, train
    it now (trunk and model, resumable); otherwise :class:`DataNotFoundError` says how to get it.
    """
    dev = resolve_device(device)
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    manifest = read_manifest(models_dir)
    path = Path(name)
    if path.suffix == ".pt" or path.is_file() or name in manifest:
        return load_shipped(name, models_dir=models_dir, device=device)
    cfg = select(PROFILES, profile)
    names = shipped_names(cfg)
    if name not in names:
        known = sorted(set(manifest) | set(names))
        raise UnknownNameError(f"unknown model {name!r}; choose one of {', '.join(known)} "
                               "or give the path of a model file")
    lam, s = names[name]
    ctx = _Context(profile, cfg, dev, seed, True,
                   Path(results_root) if results_root is not None else None, progress)
    found = _finished(ctx, lam, s)
    if found is not None:
        return found.model
    if not train_if_missing:
        raise DataNotFoundError(
            f"model {name!r} is neither shipped in {models_dir} nor trained; train it with "
            f"`python -m ibcore run {CHAPTER} --profile {profile} --resume` (or pass "
            "train_if_missing=True / --train)"
        )
    spec = next(m for m in model_specs(cfg, "rd_sweep")
                if m.role == "sweep" and m.rate_weight == lam and m.noise_std == s)
    return _train(ctx, spec).model


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ibcore.runners.ncvae export [--profile cpu] [--seed 0] [--dest models/ncvae]``."""
    parser = argparse.ArgumentParser(prog="python -m ibcore.runners.ncvae")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="copy a finished run's sweep models to models/ncvae")
    exp.add_argument("--profile", default="cpu")
    exp.add_argument("--seed", type=int, default=0)
    exp.add_argument("--results-root", type=Path, default=None)
    exp.add_argument("--dest", type=Path, default=None)
    args = parser.parse_args(argv)
    from ibcore.errors import IBCoreError

    try:
        path = export_models(args.profile, seed=args.seed, results_root=args.results_root,
                             dest=args.dest)
    except IBCoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    for name, entry in read_manifest(path.parent).items():
        print(f"  {name}: {entry['file']} sha256 {entry['sha256'][:16]}… λ={entry['rate_weight']:g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
