r"""Runner of the *NC-VAE* chapter: learned image compression measured with real files.

``rd_sweep``
    A sweep of NC-VAE models (:mod:`ibcore.models.ncvae`) over the rate weight λ of
    ``L = D + λR`` (``nc_vae.md`` eq. 6), trained on random crops of the photographs in
    ``<data>/images/photos`` and tested only on the Kodak images ``kodim02.png`` and
    ``kodim07.png`` (2 of the 24 Kodak images; never trained on). Every test number comes from a
    real ``.ibc`` file (:mod:`ibcore.codec.bitstream`): its size in bits over the pixel count is
    the rate, ``decode(file)`` the reconstruction. Baselines (JPEG, WebP, JPEG 2000, AVIF where
    Pillow supports them) are coded on the same images over a quality grid
    (:mod:`ibcore.codec.baselines`); Bjøntegaard deltas (:mod:`ibcore.codec.bdmetrics`) compare
    the curves. Also recorded: the model's estimated code length against the file size, encode
    and decode times, decoder size (source Table 2), decoded crops per λ for the chapter's
    slider, and side-by-side crops of every codec at our lowest rate.
``noise_ablation``
    The input-noise ablation of source Fig. 4: models at one λ trained with the encoder input
    ``x̃ = x + N(0, s²)`` for ``s ∈ {0, 0.01, 0.1, 0.3}`` (eq. 2); rate, PSNR, the smoothness of
    the reconstruction (its gradient energy relative to the original's), statistics of the
    latent symbols, a decoded crop and one latent channel per model.

**Warm start (``cpu`` profile).** To fit the CPU budget, one *trunk* model is trained first at a
middle λ without input noise; every model of both experiments then starts from the trunk's
weights and is trained for the same number of further steps with its own λ and noise level.
The ``paper`` profile trains every model from scratch with the source's protocol.

**Training data.** Each step draws fresh random crops (uniform over all crop positions of all
images, random left-right flips) from a generator seeded by ``(seed, model, step)``, so a run
killed at any point resumes exactly. The photos are downscaled (Lanczos) so that their short
side is ``train_short_side`` pixels, which brings their scale of detail closer to Kodak's and
averages away their JPEG blocking.

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
from ibcore.codec.bitstream import EncodeResult, decode, encode, encode_detailed, model_id
from ibcore.codec.zoo import default_models_dir, load_shipped, read_manifest
from ibcore.data.images import CropSource, image_folder, load_kodak
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
from ibcore.tasks import Task, run_experiments, written_result
from ibcore.training import Trainer
from ibcore.validation import check_int, check_weight

CHAPTER = "ncvae"
EXPERIMENTS = ("rd_sweep", "noise_ablation")
SOURCE_BPPS: tuple[float, ...] = (0.07, 0.10, 0.20, 0.25, 0.30, 0.40)
"""The bit rates of the source's Table 1."""
BAR_BPP_RANGE = (0.10, 0.25)
BAR_JPEG_GAIN_DB = 2.0
BAR_RATE_AGREEMENT = 0.01
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
    # training data
    train_set: str = "photos"  # "photos" | "clic"
    train_short_side: int | None = 512
    in_memory: bool = True
    crop: int = 96
    batch_size: int = 8
    # schedule: an "epoch" is steps_per_epoch steps (0: the non-overlapping crops of the set)
    steps_per_epoch: int = 50
    epochs: int = 40
    lr: float = 5e-4
    lr_decay: float = 0.5
    lr_decay_every: int = 12
    grad_clip: float = 5.0
    warm_start: bool = True
    trunk_epochs: int = 300
    trunk_lr: float = 2e-3
    trunk_rate_weight: float = 450.0
    # models
    rate_weights: tuple[float, ...] = (5000.0, 1500.0, 450.0, 130.0, 40.0, 12.0)
    sweep_noise_std: float = 0.01
    ablation_rate_weight: float = 450.0
    ablation_noise_stds: tuple[float, ...] = (0.0, 0.01, 0.1, 0.3)
    # evaluation
    test_images: tuple[str, ...] = ("kodim02.png", "kodim07.png")
    crop_image: str = "kodim07.png"
    crop_box: tuple[int, int, int] = (128, 288, 192)  # top, left, size
    baseline_codecs: tuple[str, ...] = ("jpeg", "webp", "jpeg2000", "avif")
    jpeg_qualities: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40)
    webp_qualities: tuple[int, ...] = (0, 2, 5, 10, 15, 20, 30, 40, 50, 60)
    jpeg2000_bpps: tuple[float, ...] = (0.05, 0.07, 0.1, 0.14, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6)
    avif_qualities: tuple[int, ...] = (0, 5, 10, 15, 20, 25, 30, 35, 40, 50)
    history_eval_size: int | None = None  # per-epoch test estimate on central crops of this size
    speed_repeats: int = 3
    bd_method: str = "cubic"
    # GPU speed switch (off in every profile): cuDNN's algorithm search for the fixed-size
    # training crops, faster on a GPU but not bit-reproducible (ibcore.device.cudnn_benchmark).
    # No autocast: the rate is a sum of log-differences of the entropy model's CDFs, which
    # bfloat16 would round away
    cudnn_benchmark: bool = False

    def __post_init__(self) -> None:
        for name in ("channels", "latent", "hyper", "crop", "batch_size", "epochs",
                     "lr_decay_every", "speed_repeats"):
            check_int(name, getattr(self, name), low=1)
        check_int("steps_per_epoch", self.steps_per_epoch, low=0)
        check_int("trunk_epochs", self.trunk_epochs, low=0)
        if self.train_set not in ("photos", "clic"):
            raise UnknownNameError(f"train_set must be 'photos' or 'clic', got {self.train_set!r}")
        if self.train_short_side is not None:
            check_int("train_short_side", self.train_short_side, low=self.crop)
        if self.history_eval_size is not None:
            check_int("history_eval_size", self.history_eval_size, low=32)
        for name in ("lr", "trunk_lr"):
            check_weight(name, getattr(self, name), low=0.0, low_inclusive=False)
        check_weight("lr_decay", self.lr_decay, low=0.0, high=1.0, low_inclusive=False)
        check_weight("grad_clip", self.grad_clip)
        check_weight("trunk_rate_weight", self.trunk_rate_weight)
        if len(self.rate_weights) < 2:
            raise InvalidParameterError("give at least two rate weights (a curve needs 2 points)")
        for lam in (*self.rate_weights, self.ablation_rate_weight):
            check_weight("rate weight", lam, low=0.0, low_inclusive=False)
        for s in (self.sweep_noise_std, *self.ablation_noise_stds):
            check_weight("noise std", s)
        if self.crop_image not in self.test_images:
            raise InvalidParameterError("crop_image must be one of test_images")
        for codec in self.baseline_codecs:
            if codec not in bl.CODECS:
                raise UnknownNameError(f"unknown baseline codec {codec!r}")

    @property
    def arch(self) -> NCVAEArch:
        return NCVAEArch(channels=self.channels, latent=self.latent, hyper=self.hyper)

    def qualities(self, codec: str) -> tuple[float, ...]:
        return {"jpeg": self.jpeg_qualities, "webp": self.webp_qualities,
                "jpeg2000": self.jpeg2000_bpps, "avif": self.avif_qualities}[codec]

    def training_fields(self, trunk: bool = False) -> dict[str, Any]:
        """The settings a trained model depends on (its checkpoint fingerprint).

        The trunk does not depend on the per-model schedule (``epochs``, ``lr``, decay), so that
        changing it keeps a finished trunk.
        """
        keep = ["channels", "latent", "hyper", "train_set", "train_short_side", "crop",
                "batch_size", "steps_per_epoch", "grad_clip", "warm_start", "trunk_epochs",
                "trunk_lr", "trunk_rate_weight"]
        if not trunk:
            keep += ["epochs", "lr", "lr_decay", "lr_decay_every"]
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
        lr=1e-3,
        lr_decay_every=1,
        rate_weights=(300.0, 30.0),
        sweep_noise_std=0.01,
        ablation_rate_weight=300.0,
        ablation_noise_stds=(0.0, 0.01),
        train_short_side=256,
        crop_box=(128, 288, 96),
        history_eval_size=128,
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
        train_set="clic",
        train_short_side=None,
        in_memory=False,
        crop=512,
        batch_size=75,
        steps_per_epoch=0,
        epochs=64,
        lr=1e-4,
        lr_decay=0.9,
        lr_decay_every=2,
        warm_start=False,
        trunk_epochs=0,
        rate_weights=(5000.0, 2500.0, 1200.0, 600.0, 300.0, 150.0, 75.0, 40.0),
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


def check_bars(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's bars, evaluated on an ``rd_sweep`` metrics block.

    * ``jpeg_gain``: on each test image, over a grid of rates in :data:`BAR_BPP_RANGE` covered by
      both our curve and JPEG's, ``PSNR_ours − PSNR_jpeg ≥ 2 dB`` everywhere (the smallest gap is
      the value; the bar also needs the whole range to be covered).
    * ``bd_rate_vs_jpeg2000``: reported (negative = we need fewer bits); no threshold.
    * ``rate_agreement``: ``|file bits / estimated bits − 1| ≤ 1 %`` for every model and image.
    * ``codec_seconds``: median encode + decode time of one test image ≤ 2 s.
    """
    bars: dict[str, dict[str, Any]] = {}
    ours = metrics["models"]
    jpeg = metrics["baselines"].get("jpeg")
    lo, hi = BAR_BPP_RANGE
    grid = np.geomspace(lo, hi, 16)
    if jpeg:
        gaps: dict[str, Any] = {}
        worst, covered = math.inf, True
        for image in metrics["test_images"]:
            ob, op = _per_image_curve(list(ours.values()), image)
            jb, jp = _per_image_curve(jpeg, image)
            a = psnr_at(ob, op, grid)
            b = psnr_at(jb, jp, grid)
            diffs = [x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None]
            covered = covered and all(x is not None for x in a)
            gaps[image] = {"min_gap_db": min(diffs) if diffs else None,
                           "mean_gap_db": float(np.mean(diffs)) if diffs else None,
                           "points_compared": len(diffs)}
            if diffs:
                worst = min(worst, min(diffs))
        value = None if math.isinf(worst) else worst
        bars["jpeg_gain"] = {
            "value": value, "target": BAR_JPEG_GAIN_DB, "unit": "dB", "range_bpp": [lo, hi],
            "range_covered": covered, "per_image": gaps,
            "pass": bool(value is not None and value >= BAR_JPEG_GAIN_DB and covered),
        }
    bd = metrics.get("bd", {}).get("jpeg2000")
    if bd is not None:
        bars["bd_rate_vs_jpeg2000"] = {"value": bd.get("bd_rate_percent"), "unit": "%",
                                       "target": None, "pass": None}
    gaps = [abs(v["rate_rel_gap"]) for m in ours.values() for v in m["images"].values()]
    bars["rate_agreement"] = {"value": max(gaps), "target": BAR_RATE_AGREEMENT,
                              "unit": "relative", "pass": max(gaps) <= BAR_RATE_AGREEMENT}
    secs = [v["encode_s"] + v["decode_s"] for m in ours.values() for v in m["images"].values()]
    med = statistics.median(secs)
    bars["codec_seconds"] = {"value": med, "target": BAR_CODEC_SECONDS, "unit": "s",
                             "pass": med <= BAR_CODEC_SECONDS,
                             "note": "median over models and test images (768x512)"}
    return bars


# ---------------------------------------------------------------------------------------------
# context, data, training
# ---------------------------------------------------------------------------------------------


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
    _tests: dict[str, Tensor] | None = None

    def models_dir(self) -> Path:
        return self.runs_dir("models")

    def decoded_cache_dir(self) -> Path:
        """``<results root>/../runs/cache/ncvae-decoded/<train set>``: decoded training images."""
        root = Path(self.results_root) if self.results_root is not None else default_results_root()
        return root.parent / "runs" / "cache" / "ncvae-decoded" / self.config.train_set

    @property
    def source(self) -> CropSource:
        if self._source is None:
            cfg = self.config
            folder = image_folder(cfg.train_set, self.data_root)
            # read from disk (paper profile): each image is decoded once into the cache
            cache = None if cfg.in_memory else self.decoded_cache_dir()
            self._source = CropSource(folder, in_memory=cfg.in_memory,
                                      short_side=cfg.train_short_side,
                                      recursive=cfg.train_set == "clic", cache_dir=cache)
        return self._source

    @property
    def test_images(self) -> dict[str, Tensor]:
        if self._tests is None:
            self._tests = load_kodak(self.data_root, self.config.test_images)
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


def _center_crop(img: Tensor, size: int) -> Tensor:
    h, w = img.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[:, top : top + size, left : left + size].contiguous()


def _to_uint8(x: Tensor) -> Tensor:
    return torch.round(x.clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def _psnr_uint8(a: Tensor, b: Tensor) -> float:
    return bl.psnr(a.permute(1, 2, 0).numpy(), b.permute(1, 2, 0).numpy())


def _estimate_on_tests(model: NCVAE, images: Mapping[str, Tensor], device: torch.device) -> dict[str, float]:
    """Estimated rate (rounded latents, model code length) and PSNR on the test images."""
    bpps, psnrs = [], []
    model.eval()
    with torch.inference_mode():
        for img in images.values():
            x = img[None].to(device=device, dtype=torch.float32) / 255.0
            out = model(x, quantize="round")
            bpps.append(float(out["bits"] / out["pixels"]))
            psnrs.append(_psnr_uint8(img, _to_uint8(out["x_hat"][0]).cpu()))
    model.train()
    return {"test_bpp_estimated": float(np.mean(bpps)), "test_psnr_db": float(np.mean(psnrs))}


def _fingerprint(ctx: _Context, key: str, rate_weight: float, noise_std: float, epochs: int,
                 lr: float, init_name: str | None) -> str:
    return fingerprint_of({"chapter": CHAPTER, "model": key, "seed": ctx.seed,
                           "rate_weight": rate_weight, "noise_std": noise_std, "epochs": epochs,
                           "lr": lr, "init": init_name,
                           "config": ctx.config.training_fields(trunk=key == "trunk")})


def optimisation_step(model: NCVAE, opt: torch.optim.Optimizer, x: Tensor, rate_weight: float,
                      noise_std: float, generator: torch.Generator, grad_clip: float
                      ) -> dict[str, Tensor]:
    """One step on a batch ``x`` in [0, 1]: rate + λ·distortion, back-propagated, the gradient's
    norm clipped to ``grad_clip`` (when > 0), one optimizer step; the detached loss terms."""
    terms = model.loss(x, rate_weight, noise_std=noise_std, generator=generator)
    opt.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return {k: v.detach() for k, v in terms.items()}


def _train(
    ctx: _Context,
    key: str,
    rate_weight: float,
    noise_std: float,
    *,
    epochs: int,
    lr: float,
    init: NCVAE | None,
    init_name: str | None,
) -> _Trained:
    """Train one model (or load it when finished); memoised per run in ``ctx.trained``."""
    if key in ctx.trained:
        return ctx.trained[key]
    cfg = ctx.config
    folder = ctx.models_dir()
    fp = _fingerprint(ctx, key, rate_weight, noise_std, epochs, lr, init_name)
    done = folder / f"{key}.done"
    if ctx.resume and done.exists():
        state = load_checkpoint(done, fingerprint=fp)
        model = _new_model(cfg, 0, ctx.device)
        model.load_state_dict(state["weights"])
        result = _Trained(model, list(state["history"]), float(state["seconds"]),
                          float(state["seconds"]))
        ctx.trained[key] = result
        return result
    model = _new_model(cfg, _seed_of(ctx.seed, key), ctx.device)
    if init is not None:
        model.load_state_dict(init.state_dict())
    spe = _steps_per_epoch(ctx)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # the trunk keeps a constant rate; every model decays it by lr_decay every lr_decay_every epochs
    gamma = 1.0 if key == "trunk" else cfg.lr_decay
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_decay_every, gamma=gamma)
    base = _seed_of(ctx.seed, key, "steps")
    source = ctx.source
    tests = dict(ctx.test_images)
    if cfg.history_eval_size is not None:
        tests = {k: _center_crop(v, cfg.history_eval_size) for k, v in tests.items()}
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
        return optimisation_step(model, opt, x, rate_weight, noise_std, noise_gen, cfg.grad_clip)

    def epoch_end(epoch: int) -> dict[str, float]:
        with isolated_rng(dev):  # deterministic; the training streams stay untouched regardless
            row = _estimate_on_tests(model, tests, dev)
        row.update({"step": epoch * spe, "lr": float(opt.param_groups[0]["lr"])})
        return row

    trainer = Trainer(
        {"model": model}, opt, (torch.arange(spe),), batch_size=1, epochs=epochs,
        seed=_seed_of(ctx.seed, key, "order"), device=torch.device("cpu"), step_fn=step_fn,
        scheduler=sched, checkpoint_path=folder / f"{key}.pt",
        checkpoint_every_steps=max(1, spe // 2) if spe >= 20 else None, fingerprint=fp,
        epoch_end_fn=epoch_end, progress=ctx.progress, desc=key,
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
    ctx.trained[key] = result
    return result


def _trunk(ctx: _Context) -> _Trained | None:
    cfg = ctx.config
    if not cfg.warm_start or cfg.trunk_epochs == 0:
        return None
    return _train(ctx, "trunk", cfg.trunk_rate_weight, 0.0, epochs=cfg.trunk_epochs,
                  lr=cfg.trunk_lr, init=None, init_name=None)


def _model(ctx: _Context, rate_weight: float, noise_std: float) -> _Trained:
    cfg = ctx.config
    trunk = _trunk(ctx)
    return _train(ctx, model_key(rate_weight, noise_std), rate_weight, noise_std,
                  epochs=cfg.epochs, lr=cfg.lr, init=trunk.model if trunk else None,
                  init_name=state_digest(trunk.model) if trunk else None)


# ---------------------------------------------------------------------------------------------
# evaluation with real files
# ---------------------------------------------------------------------------------------------


def _measure(model: NCVAE, images: Mapping[str, Tensor], repeats: int,
             keep: dict[str, EncodeResult] | None = None) -> dict[str, Any]:
    """Encode and decode every test image: real rate, PSNR, estimate gap, timings.

    The detailed encoding of each image is stored in ``keep`` when given.
    """
    out: dict[str, Any] = {}
    for name, img in images.items():
        res = encode_detailed(model, img)
        if keep is not None:
            keep[name] = res
        decoded = decode(model, res.data)
        enc_t, dec_t = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            data = encode(model, img)
            t1 = time.perf_counter()
            decode(model, data)
            dec_t.append(time.perf_counter() - t1)
            enc_t.append(t1 - t0)
        pixels = img.shape[1] * img.shape[2]
        out[name] = {
            "bytes": len(res.data),
            "bpp": 8.0 * len(res.data) / pixels,
            "estimated_bpp": res.estimated_bits / pixels,
            "estimated_bpp_side": res.estimated_bits_side / pixels,
            "rate_rel_gap": 8.0 * len(res.data) / res.estimated_bits - 1.0,
            "psnr_db": _psnr_uint8(img, decoded),
            "roundtrip_exact": bool(torch.equal(decoded, res.reconstruction)),
            "encode_s": statistics.median(enc_t),
            "decode_s": statistics.median(dec_t),
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


def _baselines(cfg: NCVAEConfig, images: Mapping[str, Tensor]) -> dict[str, list[dict[str, Any]]]:
    """Per codec, one entry per quality setting with both images' bpp and PSNR."""
    support = bl.available_codecs()
    out: dict[str, list[dict[str, Any]]] = {}
    arrays = {k: v.permute(1, 2, 0).numpy() for k, v in images.items()}
    for codec in cfg.baseline_codecs:
        if not support[codec]:
            continue
        points = []
        for q in cfg.qualities(codec):
            per = {}
            for name, arr in arrays.items():
                p = bl.rd_curve(arr, codec, [q])[0]
                per[name] = {"bpp": p.bpp, "psnr_db": p.psnr, "bytes": p.bytes}
            points.append({"quality": float(q), "images": per})
        out[codec] = points
    return out


def _history_rows(name: str, trained: _Trained, extra: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"model": name, **extra, **row} for row in trained.history]


def _run_rd_sweep(ctx: _Context) -> Path:
    cfg = ctx.config
    images = ctx.test_images
    with ctx.recorder("rd_sweep") as rec:
        trunk = _trunk(ctx)
        if trunk is not None:
            rec.history.extend(_history_rows("trunk", trunk, {"rate_weight": cfg.trunk_rate_weight,
                                                               "noise_std": 0.0}))
            rec.add_elapsed(trunk.earlier_seconds)
        models: dict[str, Any] = {}
        for lam in cfg.rate_weights:
            trained = _model(ctx, lam, cfg.sweep_noise_std)
            rec.add_elapsed(trained.earlier_seconds)
            key = model_key(lam, cfg.sweep_noise_std)
            rec.history.extend(_history_rows(key, trained, {"rate_weight": lam,
                                                             "noise_std": cfg.sweep_noise_std}))
            measured = _measure(trained.model, images, cfg.speed_repeats)
            models[key] = {"rate_weight": lam, "noise_std": cfg.sweep_noise_std,
                           "train_seconds": trained.seconds, "model_id": model_id(trained.model).hex(),
                           "images": measured,
                           "test_bpp": float(np.mean([v["bpp"] for v in measured.values()])),
                           "test_psnr_db": float(np.mean([v["psnr_db"] for v in measured.values()]))}
        base = _baselines(cfg, images)
        ours = _mean_curve(list(models.values()))
        bd = {codec: _bd(_mean_curve(points), ours, cfg.bd_method) for codec, points in base.items()}
        table: dict[str, list[float | None]] = {}
        for label, points in [("ncvae", list(models.values())), *base.items()]:
            per_image = [psnr_at(*_per_image_curve(points, im), SOURCE_BPPS) for im in images]
            table[label] = [None if any(v[k] is None for v in per_image)
                            else float(np.mean([v[k] for v in per_image]))
                            for k in range(len(SOURCE_BPPS))]
        any_model = next(iter(ctx.trained.values())).model
        by_rate = sorted(models, key=lambda k: models[k]["test_bpp"])
        closest = min(models, key=lambda k: abs(models[k]["test_bpp"] - 0.15))
        cm = models[closest]
        complexity = {
            "model": closest, "test_bpp": cm["test_bpp"], "test_psnr_db": cm["test_psnr_db"],
            "file_bytes": int(np.mean([v["bytes"] for v in cm["images"].values()])),
            "decode_ms": 1000 * float(np.mean([v["decode_s"] for v in cm["images"].values()])),
            "encode_ms": 1000 * float(np.mean([v["encode_s"] for v in cm["images"].values()])),
            "decoder_params": any_model.decoder_parameters(),
            "decoder_bytes_float32": 4 * any_model.decoder_parameters(),
            "model_params": any_model.encoder_parameters(),
            "torch_threads": torch.get_num_threads(),
        }
        # decoded crops per λ (slider) and every codec at our lowest rate (side by side)
        crop_img = images[cfg.crop_image]
        rec.save_artifact("crop-original", _png(_crop(crop_img, cfg.crop_box)), "png")
        for key in by_rate:
            decoded = decode(ctx.trained[key].model, encode(ctx.trained[key].model, crop_img))
            rec.save_artifact(f"crop-{key}", _png(_crop(decoded, cfg.crop_box)), "png")
        lowest = models[by_rate[0]]["images"][cfg.crop_image]["bpp"]
        side_by_side: dict[str, Any] = {"ncvae": {"model": by_rate[0], "bpp": lowest,
                                                  "psnr_db": models[by_rate[0]]["images"][cfg.crop_image]["psnr_db"]}}
        arr = crop_img.permute(1, 2, 0).numpy()
        for codec in base:
            point, data = bl.encode_at_bpp(arr, codec, lowest)
            rec_img = torch.from_numpy(bl.decode_image(data)).permute(2, 0, 1)
            rec.save_artifact(f"crop-{codec}", _png(_crop(rec_img, cfg.crop_box)), "png")
            side_by_side[codec] = point.as_dict()
        rec.metrics.update({
            "test_images": list(images),
            "source_bpps": list(SOURCE_BPPS),
            "models": models,
            "models_by_rate": by_rate,
            "baselines": base,
            "baselines_available": bl.available_codecs(),
            "curve_ncvae": {"bpp": ours[0], "psnr_db": ours[1]},
            "bd": bd,
            "table_psnr_db": table,
            "complexity": complexity,
            "crop": {"image": cfg.crop_image, "box": list(cfg.crop_box),
                     "lowest_rate_side_by_side": side_by_side},
            "trunk": None if trunk is None else {"rate_weight": cfg.trunk_rate_weight,
                                                 "epochs": cfg.trunk_epochs,
                                                 "train_seconds": trunk.seconds},
            "steps_per_epoch": _steps_per_epoch(ctx),
        })
        rec.metrics["bars"] = check_bars(rec.metrics)
    assert rec.path is not None
    return rec.path


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


def _run_noise_ablation(ctx: _Context) -> Path:
    cfg = ctx.config
    images = ctx.test_images
    lam = cfg.ablation_rate_weight
    with ctx.recorder("noise_ablation") as rec:
        trunk = _trunk(ctx)
        if trunk is not None:
            rec.add_elapsed(trunk.earlier_seconds)
        crop_img = images[cfg.crop_image]
        rec.save_artifact("crop-original", _png(_crop(crop_img, cfg.crop_box)), "png")
        rows: dict[str, Any] = {}
        for s in cfg.ablation_noise_stds:
            trained = _model(ctx, lam, s)
            rec.add_elapsed(trained.earlier_seconds)
            key = model_key(lam, s)
            rec.history.extend(_history_rows(key, trained, {"rate_weight": lam, "noise_std": s}))
            coded: dict[str, EncodeResult] = {}
            measured = _measure(trained.model, images, 1, coded)
            smooth, ent, zeros = {}, {}, {}
            for name, img in images.items():
                res = coded[name]
                smooth[name] = gradient_energy_ratio(res.reconstruction, img)
                ent[name] = _symbol_entropy_bits(res.y_hat)
                zeros[name] = float((res.y_hat == 0).to(torch.float64).mean())
                if name == cfg.crop_image:
                    rec.save_artifact(f"crop-{key}", _png(_crop(res.reconstruction, cfg.crop_box)), "png")
                    energy = res.y_hat.to(torch.float64).pow(2).mean(dim=(1, 2))
                    channel = int(torch.argmax(energy))
                    rec.save_artifact(f"latent-{key}", _latent_png(res.y_hat, channel), "png")
            for name in images:
                measured[name].update({"gradient_energy_ratio": smooth[name],
                                       "symbol_entropy_bits": ent[name],
                                       "zero_fraction": zeros[name]})
            rows[key] = {"noise_std": s, "rate_weight": lam, "train_seconds": trained.seconds,
                         "images": measured,
                         "test_bpp": float(np.mean([v["bpp"] for v in measured.values()])),
                         "test_psnr_db": float(np.mean([v["psnr_db"] for v in measured.values()])),
                         "test_gradient_energy_ratio": float(np.mean(list(smooth.values())))}
        rec.metrics.update({"test_images": list(images), "rate_weight": lam, "models": rows,
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
    """One task for all the chosen experiments: they share models and run in one process."""
    return [Task("all", tuple(experiments))]


def run_task(ctx: _Context, task: Task) -> None:
    with cudnn_benchmark(ctx.config.cudnn_benchmark):
        for experiment in task.experiments:
            _EXPERIMENT_FNS[experiment](ctx)


def assemble(ctx: _Context, experiment: str) -> Path:
    """The result file its task wrote."""
    return written_result(ctx.recorder(experiment))


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
    """A finished model of the run in ``ctx`` (its ``.done`` file), or ``None``."""
    cfg = ctx.config
    trunk_digest = None
    if cfg.warm_start and cfg.trunk_epochs > 0:
        trunk = _finished_key(ctx, "trunk", cfg.trunk_rate_weight, 0.0, cfg.trunk_epochs,
                              cfg.trunk_lr, None)
        if trunk is None:
            return None
        trunk_digest = state_digest(trunk.model)
    return _finished_key(ctx, model_key(lam, s), lam, s, cfg.epochs, cfg.lr, trunk_digest)


def _finished_key(ctx: _Context, key: str, lam: float, s: float, epochs: int, lr: float,
                  init_name: str | None) -> _Trained | None:
    done = ctx.models_dir() / f"{key}.done"
    if not done.exists():
        return None
    fp = _fingerprint(ctx, key, lam, s, epochs, lr, init_name)
    state = load_checkpoint(done, fingerprint=fp)
    model = _new_model(ctx.config, 0, ctx.device)
    model.load_state_dict(state["weights"])
    model.eval()
    return _Trained(model, list(state["history"]), float(state["seconds"]), float(state["seconds"]))


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
    return _model(ctx, lam, s).model


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
