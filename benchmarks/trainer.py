"""Throughput of :class:`ibcore.training.Trainer` against a bare PyTorch loop, per chapter model.

Usage::

    python benchmarks/trainer.py [--models gmvib,glasses] [--repeats 5] [--no-record]
    python benchmarks/trainer.py --quick --no-record      # a fast look (numbers not meaningful)

For the main model of each chapter, built the way its runner builds it at the ``cpu`` profile
(the runners' own builders and objectives, on seeded synthetic tensors of the shape and dtype
the runner trains on; no dataset is read):

``gmvib``        GMVIB encoder + decoder head (Multi-MNIST 64×64, batch 100, 12 samples)
``entropy_ib``   the ResNet encoder with the kNN-entropy IB objective (β'' = 0.5, with noise)
``ncvae``        the NC-VAE codec on random 128×128 crops (batch 8, gradient clipping)
``infomax``      the DIM(L) encoder with its global and local critics (infoNCE), MI trace
``glasses``      the MLP VAE of the variational-glasses zoo (MNIST, batch 128)

it measures

(a) **Trainer against the bare loop.** One epoch of ``Trainer.fit`` (loss or step function of
    the runner, its ``checkpoint_every_steps``, the checkpoint saved at the end of every epoch,
    finiteness checked at the default frequency, i.e. every step, progress bar off; no
    ``epoch_end_fn``: evaluation is the same work with or without the trainer) against one epoch
    of a hand-written loop over the same modules, optimizers and batches (the same permutation,
    the same indexing of the in-memory tensors): ``zero_grad``/forward/backward/``step`` (or the
    runner's step function, for runners that do their own optimisation), nothing else. The two
    are interleaved (T B, B T, T B, …) so both see the same load, and the median ratio
    ``trainer_time_over_bare_loop`` (and its min/max over repeats) is reported with the seconds
    per step and images per second. The size and save time of one checkpoint (median of 3 saves
    after the epochs) give the share of an epoch spent saving, the ratio without it
    (``trainer_time_over_bare_loop_less_checkpoints``: the Trainer's per-step bookkeeping) and
    the checkpoint interval at which saving would cost 2 % (``steps_per_checkpoint_for_2_percent``).
    **Amortisation of the checkpoint cost**: the benchmark epoch
    is the runner's real epoch (its steps per epoch at the ``cpu`` profile), so the mid-epoch
    saves and the one save per epoch are counted at their real frequency; where an epoch is
    shortened (``--max-epoch-steps``, ``--quick``) the record says so, and the ratio then counts
    the epoch-end save too often (pessimistic).
(b) **Cheap wins**, on the bare loop (images per second): ``channels_last`` memory format
    (modules and input; conv models only), twice the profile's batch, 1 process × 2 threads
    against 2 processes × 1 thread running at once (fresh subprocesses, started together;
    aggregate images/s), and ``torch.compile`` of every module (``nn.Module.compile``, default
    inductor backend, a fresh compile cache) in a subprocess: seconds to the end of the first
    compiled steps and the steady-state seconds per step against the eager loop in the same
    process; compilation that takes longer than ``--compile-timeout`` seconds (default 180) is
    abandoned and recorded as such.
(c) **Cost of an epoch** at each chapter's ``cpu`` profile: steps per epoch × the Trainer's
    seconds per step, plus one call of the runner's per-epoch evaluation (its ``epoch_end_fn``
    work, measured on synthetic inputs of the right size), and the training seconds of one model
    of the profile (× its epochs).

It records the run with :class:`ibcore.results.RunRecorder`
(``results/benchmarks/trainer/cpu-seed0.json``) unless ``--no-record`` is given; ``history``
holds one row per goal (Trainer ≤ 1.05 × bare loop per model) with whether it was met.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ibcore.data import random_shift_flip, to_unit_float
from ibcore.training import Trainer, epoch_permutation

GOAL_TRAINER_OVER_BARE = 1.05
MODELS = ("gmvib", "entropy_ib", "ncvae", "infomax", "glasses")
CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# the cases: each chapter's main model, its optimiser(s), its step and synthetic data
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One chapter model ready to train: what the runner hands to :class:`Trainer`."""

    name: str
    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer | dict[str, torch.optim.Optimizer]
    data: tuple[Tensor, ...]
    batch_size: int
    checkpoint_every_steps: int | None
    images_per_step: int
    loss_fn: Callable[[tuple[Tensor, ...]], Mapping[str, Tensor]] | None = None
    step_fn: Callable[[tuple[Tensor, ...], int], Mapping[str, Tensor | float]] | None = None
    epoch_eval: Callable[[], object] | None = None  # the runner's per-epoch evaluation
    conv: bool = True  # whether channels_last can apply

    @property
    def steps(self) -> int:
        return self.data[0].shape[0] // self.batch_size


@dataclass(frozen=True)
class Profile:
    """What a chapter's ``cpu`` profile trains: steps per epoch, epochs, models, batch."""

    steps_per_epoch: int
    batch_size: int
    epochs: int
    models: int
    note: str


def _to_cl(x: Tensor, channels_last: bool) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _finish(modules: dict[str, nn.Module], channels_last: bool) -> dict[str, nn.Module]:
    for m in modules.values():
        m.to(CPU)
        if channels_last:
            m.to(memory_format=torch.channels_last)
        m.train()
    return modules


def profile_of(name: str) -> Profile:
    """The ``cpu`` profile's training schedule of chapter ``name``."""
    if name == "gmvib":
        from ibcore.runners import gmvib as r
        c = r.PROFILES["cpu"]
        n_models = len({s for e in r.EXPERIMENTS for s in r.experiment_specs(c, e)})
        return Profile(c.train_size // c.batch_size, c.batch_size, c.epochs, n_models,
                       "Basic, VIB and GMVIB share the trunk; Basic draws no samples")
    if name == "entropy_ib":
        from ibcore.runners import entropy_ib as r
        c = r.PROFILES["cpu"]
        return Profile(int(c.train_subset or 60000) // c.batch_size, c.batch_size, c.epochs,
                       len(r.model_specs(c)), "CE models skip the kNN estimate")
    if name == "ncvae":
        from ibcore.runners import ncvae as r
        c = r.PROFILES["cpu"]
        n_models = len(c.rate_weights)
        return Profile(c.steps_per_epoch, c.batch_size, c.epochs, n_models,
                       f"plus the high-rate trunk ({c.trunk_epochs} epochs) and "
                       f"{len(c.ablation_noise_stds)} ablation models ({c.ablation_epochs} epochs)")
    if name == "infomax":
        from ibcore.runners import infomax as r
        c = r.PROFILES["cpu"]
        n_models = len({s.key for e in r.EXPERIMENTS for s in r.experiment_specs(c, e).values()
                        if s.kind != "random"})
        return Profile(int(c.train_subset or 60000) // c.batch_size, c.batch_size, c.epochs,
                       n_models, "supervised/AE baselines and batch-16 models cost differently")
    if name == "glasses":
        from ibcore.runners import glasses as r
        c = r.PROFILES["cpu"]
        n = int(c.n_train or 60000)
        n_models = sum(len(r.zoo(c, ds)) for ds in r.EXPERIMENTS)
        return Profile(n // c.batch_size, c.batch_size, c.epochs, n_models,
                       "adversarial models take extra discriminator steps")
    raise KeyError(name)


def build_case(name: str, *, steps: int, batch_size: int | None = None,
               channels_last: bool = False, seed: int = 0) -> Case:
    """Build chapter ``name``'s main model at its ``cpu`` profile on ``steps`` batches of data."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    return _BUILDERS[name](steps, batch_size, channels_last, gen)


def _gmvib(steps: int, batch: int | None, cl: bool, gen: torch.Generator) -> Case:
    from ibcore.models.gmvib import BottleneckClassifier
    from ibcore.objectives.gmvib import bottleneck_objective
    from ibcore.runners import gmvib as r

    cfg = r.PROFILES["cpu"]
    b = batch or cfg.batch_size
    n = steps * b
    x = torch.randint(0, 256, (n, 1, 64, 64), dtype=torch.uint8, generator=gen)
    y = torch.zeros(n, 10)
    y.scatter_(1, torch.randint(0, 10, (n, 2), generator=gen), 1.0)  # two digits per canvas
    model = BottleneckClassifier("gmvib", 64 * 64, 10, latent_dim=cfg.latent_dim,
                                 components=cfg.components, hidden=cfg.hidden,
                                 conv_channels=cfg.conv_channels,
                                 conv_strides=cfg.conv_strides, pool=cfg.pool,
                                 decoder_hidden=cfg.decoder_hidden, generator=gen)
    modules = _finish({"model": model}, cl)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def inputs(images: Tensor) -> Tensor:
        # the runner's _inputs (flat floats in [0, 1]); the model reshapes to [B, 1, 64, 64]
        return r._inputs(images)

    def loss_fn(batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        out = model(inputs(batch[0]), samples=cfg.train_samples)
        return bottleneck_objective("gmvib", out, batch[1], cfg.beta, cfg.alpha_prior)

    ex, ey = x[: cfg.val_size], y[: cfg.val_size]  # the per-epoch evaluation on validation

    def epoch_eval() -> object:
        return r.evaluate_model(model, ex, ey, samples=cfg.eval_samples, beta=cfg.beta,
                                alpha_prior=cfg.alpha_prior, h_y=1.0, seed=1, device=CPU,
                                split="val")

    return Case("gmvib", modules, opt, (x, y), b, cfg.checkpoint_every_steps, b,
                loss_fn=loss_fn, epoch_eval=epoch_eval)


def _entropy_ib(steps: int, batch: int | None, cl: bool, gen: torch.Generator) -> Case:
    from ibcore.estimators.knn_entropy import add_zero_entropy_noise
    from ibcore.objectives.entropy_ib import entropy_ib_loss
    from ibcore.runners import entropy_ib as r

    cfg = r.PROFILES["cpu"]
    b = batch or cfg.batch_size
    n = steps * b
    spec = r.ModelSpec("ib", 0.5, True)
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    shapes = types.SimpleNamespace(channels=1, classes=10)
    modules = _finish(r._build(cfg, shapes, spec, gen), cl)  # type: ignore[arg-type]
    enc = modules["encoder"]
    params = [p for m in modules.values() for p in m.parameters()]
    opt = r.build_optimizer(cfg, params)

    def step_fn(batch: tuple[Tensor, ...], step: int) -> dict[str, Tensor]:
        # the runner's step for an IB model (ibcore.runners.entropy_ib._train)
        x = random_shift_flip(to_unit_float(batch[0]), cfg.augment_pad, flip=cfg.augment_flip)
        xb, yb = _to_cl(x, cl), batch[1]
        terms = entropy_ib_loss(enc(xb), yb, float(spec.beta2), noise=spec.noise, k=cfg.k,
                                small_classes="skip")
        loss = terms["loss"]
        out = {"loss": loss.detach(), "h_z_nats": terms["h_z"],
               "h_z_given_y_nats": terms["h_z_given_y"],
               "skipped_classes": terms["skipped_classes"]}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return out

    px, py = x[: cfg.plane_subset], y[: cfg.plane_subset]

    def epoch_eval() -> object:
        enc.eval()
        g = torch.Generator().manual_seed(1)
        z = add_zero_entropy_noise(r.encode(enc, px, device=CPU), g)
        out = r.plane_point(z, py, cfg, 10, g, CPU)
        enc.train()
        return out

    return Case("entropy_ib", modules, opt, (x, y), b, cfg.checkpoint_every_steps, b,
                step_fn=step_fn, epoch_eval=epoch_eval)


def _ncvae(steps: int, batch: int | None, cl: bool, gen: torch.Generator) -> Case:
    from ibcore.data.images import random_crops
    from ibcore.models.ncvae import NCVAE
    from ibcore.runners import ncvae as r

    cfg = r.PROFILES["cpu"]
    b = batch or cfg.batch_size
    # training photographs held in memory (CropSource(in_memory=True)); two validation images
    images = [torch.randint(0, 256, (3, 1024, 1536), dtype=torch.uint8, generator=gen)
              for _ in range(4)]
    validation = {k: torch.randint(0, 256, (3, 600, 868), dtype=torch.uint8, generator=gen)
                  for k in cfg.validation_images}
    model = NCVAE(cfg.arch, device=CPU)
    modules = _finish({"model": model}, cl)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rate_weight, noise_std = cfg.rate_weights[len(cfg.rate_weights) // 2], cfg.sweep_noise_std

    def step_fn(batch: tuple[Tensor, ...], global_step: int) -> dict[str, Tensor | float]:
        # the runner's step (ibcore.runners.ncvae.optimisation_step) on fresh crops from a per-step
        # generator
        g = torch.Generator().manual_seed(12345 + global_step)
        xb = random_crops(images, cfg.crop, b, g).to(CPU, torch.float32) / 255.0
        return r.optimisation_step(model, opt, _to_cl(xb, cl), rate_weight, noise_std, g,
                                   cfg.grad_clip)

    def epoch_eval() -> object:
        return r._estimate(model, validation, CPU)

    spe = steps
    return Case("ncvae", modules, opt, (torch.arange(steps),), 1,
                max(1, spe // 2) if spe >= 20 else None, b, step_fn=step_fn,
                epoch_eval=epoch_eval)


def _infomax(steps: int, batch: int | None, cl: bool, gen: torch.Generator) -> Case:
    from ibcore.runners import infomax as r

    cfg = r.PROFILES["cpu"]
    b = batch or cfg.batch_size
    n = steps * b
    spec = r.ModelSpec("dim", "infonce", alpha=0.0, beta=1.0, batch_size=b)
    x = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    modules = r.build_dim_modules(cfg, 1, spec, gen)
    trace = r.MITrace(4096)
    modules["trace"] = trace
    modules = _finish(modules, cl)
    main_params = [p for k, m in modules.items() if k not in ("prior", "trace")
                   for p in m.parameters()]
    optimizers = {"main": r._adam(main_params, cfg.lr)}
    eval_images = _to_cl(r.image_transform(x[: cfg.mi_eval_size]), cl)

    def step_fn(batch: tuple[Tensor, ...], step: int) -> dict[str, Tensor]:
        # the runner's step for a DIM model (ibcore.runners.infomax._Model.ensure_trained)
        terms = r.dim_step(modules, optimizers, _to_cl(r.image_transform(batch[0]), cl), spec)
        if cfg.trace_every_steps > 0 and (step + 1) % cfg.trace_every_steps == 0:
            for m in modules.values():
                m.eval()
            if int(trace.count) >= trace.rows.shape[0]:
                trace.count.zero_()
            trace.add(step + 1, r.held_out_mi(modules, eval_images, r._TRACE_ESTIMATORS))
            for m in modules.values():
                m.train()
        return terms

    def epoch_eval() -> object:
        for m in modules.values():
            m.eval()
        out = r.held_out_mi(modules, eval_images)
        for m in modules.values():
            m.train()
        return out

    return Case("infomax", modules, optimizers, (x, y), b, cfg.checkpoint_every_steps, b,
                step_fn=step_fn, epoch_eval=epoch_eval)


def _glasses(steps: int, batch: int | None, cl: bool, gen: torch.Generator) -> Case:
    from ibcore.runners import glasses as r

    cfg = r.PROFILES["cpu"]
    b = batch or cfg.batch_size
    n = steps * b
    x = torch.rand(n, 1, 28, 28, generator=gen)  # the runner trains on floats in [0, 1]
    model = r.build_model(r.ZooEntry("beta_vae", 1.0), cfg, (1, 28, 28), gen)
    modules = _finish(model.modules(), cl)
    optimizers = r.build_optimizers(model, cfg)
    mean, comps = r._pca(x[: cfg.pca_fit], cfg.pca_dim)
    held = x[: cfg.n_trajectory]
    data = r._Data(train=x, val=held, test=held, other_val=held, other_test=held,
                   pca_mean=mean, pca_components=comps)

    def epoch_eval() -> object:
        for m in modules.values():
            m.eval()
        out = r._trajectory_point(model, data, cfg, CPU, 1)
        for m in modules.values():
            m.train()
        return out

    return Case("glasses", modules, optimizers["main"], (x,), b, cfg.checkpoint_every_steps, b,
                loss_fn=r._loss_fn(model, cfg), epoch_eval=epoch_eval, conv=cfg.arch != "mlp")


_BUILDERS: dict[str, Callable[[int, int | None, bool, torch.Generator], Case]] = {
    "gmvib": _gmvib, "entropy_ib": _entropy_ib, "ncvae": _ncvae, "infomax": _infomax,
    "glasses": _glasses,
}


# ---------------------------------------------------------------------------------------------
# the two loops
# ---------------------------------------------------------------------------------------------

SEED = 7


def bare_epoch(case: Case, steps: int | None = None, start_step: int = 0) -> float:
    """Seconds of one epoch (or its first ``steps`` batches) of the hand-written loop."""
    perm = epoch_permutation(case.data[0].shape[0], SEED, 1, CPU)
    n = case.steps if steps is None else steps
    b = case.batch_size
    t0 = time.perf_counter()
    if case.loss_fn is not None:
        (opt,) = (case.optimizer.values() if isinstance(case.optimizer, dict)
                  else [case.optimizer])
        for i in range(n):
            batch = tuple(t[perm[i * b : (i + 1) * b]] for t in case.data)
            opt.zero_grad(set_to_none=True)
            case.loss_fn(batch)["loss"].backward()
            opt.step()
    else:
        assert case.step_fn is not None
        for i in range(n):
            batch = tuple(t[perm[i * b : (i + 1) * b]] for t in case.data)
            case.step_fn(batch, start_step + i)
    return time.perf_counter() - t0


def trainer_epoch(case: Case, checkpoint: Path | None) -> tuple[float, int]:
    """Seconds of one epoch of ``Trainer.fit`` (mid-epoch and epoch-end checkpoints included)
    and the number of checkpoints it wrote (mid-epoch saves wait for the Trainer's
    ``checkpoint_min_seconds``, so fewer than the step interval alone would give)."""
    trainer = Trainer(case.modules, case.optimizer, case.data, batch_size=case.batch_size,
                      epochs=1, seed=SEED, device=CPU, loss_fn=case.loss_fn,
                      step_fn=case.step_fn, checkpoint_path=checkpoint,
                      checkpoint_every_steps=case.checkpoint_every_steps,
                      fingerprint="benchmark", progress=False, desc=case.name)
    t0 = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - t0, trainer.saves


def compare(case: Case, repeats: int, workdir: Path) -> dict[str, Any]:
    """Interleaved Trainer and bare epochs; medians, ratio and its spread."""
    ckpt = workdir / f"{case.name}.pt"
    bare_epoch(case, steps=min(3, case.steps))  # warm-up: allocator, thread pool, Adam state
    trainer_s: list[float] = []
    bare_s: list[float] = []
    saves_done: list[int] = []
    for rep in range(repeats):
        order = ("trainer", "bare") if rep % 2 == 0 else ("bare", "trainer")
        for which in order:
            if which == "trainer":
                seconds, saves = trainer_epoch(case, ckpt)
                trainer_s.append(seconds)
                saves_done.append(saves)
            else:
                bare_s.append(bare_epoch(case))
        print(f"  {case.name}: repeat {rep + 1}/{repeats} trainer {trainer_s[-1]:.2f} s, "
              f"bare {bare_s[-1]:.2f} s", file=sys.stderr)
    trainer_save = Trainer(case.modules, case.optimizer, case.data, batch_size=case.batch_size,
                           epochs=1, seed=SEED, device=CPU, loss_fn=case.loss_fn,
                           step_fn=case.step_fn, checkpoint_path=ckpt, fingerprint="benchmark",
                           progress=False)
    saves = []
    for _ in range(3):
        t0 = time.perf_counter()
        trainer_save.save()
        saves.append(time.perf_counter() - t0)
    ratios = [t / b for t, b in zip(trainer_s, bare_s, strict=True)]
    med_t, med_b = statistics.median(trainer_s), statistics.median(bare_s)
    steps = case.steps
    # the saves the Trainer really wrote (the step interval, thinned by its minimum time
    # between mid-epoch saves, plus the one at the end of the epoch)
    saves_per_epoch = statistics.median(saves_done)
    save_s = statistics.median(saves)
    # the Trainer's own per-step bookkeeping: its epoch less the measured cost of its saves
    less_ckpt = [(t - n * save_s) / b for t, n, b in zip(trainer_s, saves_done, bare_s,
                                                          strict=True)]
    return {
        "steps_per_benchmark_epoch": steps,
        "checkpoint_every_steps": case.checkpoint_every_steps,
        "checkpoints_per_epoch": saves_per_epoch,
        "checkpoint_bytes": ckpt.stat().st_size,
        "checkpoint_save_seconds": save_s,
        "trainer_seconds_per_step": med_t / steps,
        "bare_seconds_per_step": med_b / steps,
        "trainer_time_over_bare_loop": statistics.median(ratios),
        "trainer_time_over_bare_loop_ratio_of_medians": med_t / med_b,
        "trainer_time_over_bare_loop_min": min(ratios),
        "trainer_time_over_bare_loop_max": max(ratios),
        "checkpoint_share_of_trainer_epoch": saves_per_epoch * save_s / med_t,
        "trainer_time_over_bare_loop_less_checkpoints": statistics.median(less_ckpt),
        # the checkpoint interval at which saving costs 2 % of the bare loop's time
        "steps_per_checkpoint_for_2_percent": math.ceil(save_s / (0.02 * med_b / steps)),
        "trainer_images_per_second": case.images_per_step * steps / med_t,
        "bare_images_per_second": case.images_per_step * steps / med_b,
        "raw_trainer_seconds": trainer_s,
        "raw_bare_seconds": bare_s,
        "raw_checkpoints_per_trainer_epoch": saves_done,
    }


def eval_seconds(case: Case, repeats: int = 2) -> float:
    """Median seconds of the runner's per-epoch evaluation (the work of its ``epoch_end_fn``)."""
    assert case.epoch_eval is not None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        case.epoch_eval()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------
# cheap wins
# ---------------------------------------------------------------------------------------------


def variants_in_process(name: str, steps: int, repeats: int, profile_batch: int,
                        conv: bool) -> dict[str, Any]:
    """Bare-loop images/s of the profile's case, ``channels_last`` and twice the batch.

    The variants are separate models timed in turn, repeat by repeat (interleaved).
    """
    variants: dict[str, dict[str, Any]] = {"default": {}}
    if conv:
        variants["channels_last"] = {"channels_last": True}
    variants["batch_x2"] = {"batch_size": 2 * profile_batch}
    cases = {k: build_case(name, steps=steps, **kw) for k, kw in variants.items()}
    for c in cases.values():
        bare_epoch(c, steps=min(2, steps))
    secs: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for k, c in cases.items():
            secs[k].append(bare_epoch(c, steps=steps))
    out: dict[str, Any] = {}
    base = statistics.median(secs["default"])
    for k, c in cases.items():
        med = statistics.median(secs[k])
        out[k] = {"batch_size": c.images_per_step, "seconds_per_step": med / steps,
                  "images_per_second": c.images_per_step * steps / med,
                  "speedup_images_per_second": (c.images_per_step / cases["default"]
                                                .images_per_step) * base / med,
                  "raw_seconds": secs[k]}
    return out


def _child_cmd(args: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", *args]


def _spawn(args: list[str], threads: int, extra_env: dict[str, str] | None = None
           ) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.update(extra_env or {})
    # its own session: a child abandoned mid-compilation is killed with its compile workers
    return subprocess.Popen(_child_cmd([*args, "--threads", str(threads)]), env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)


def _lines(proc: subprocess.Popen) -> queue.Queue:
    """A queue fed with the JSON lines the child prints (``None`` at its end)."""
    q: queue.Queue = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                q.put(json.loads(line))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _wait_for(q: queue.Queue, key: str, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = q.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if msg is None:
            return None
        if key in msg:
            return msg


def threads_comparison(name: str, steps: int, rounds: int) -> dict[str, Any]:
    """Aggregate bare-loop images/s: 1 process × 2 threads against 2 processes × 1 thread.

    Each child builds the model, warms up, reports ``ready`` and waits; the parent starts all
    children of a configuration at once (one line on their stdin), so they run concurrently.
    """
    def run_config(n_proc: int, threads: int) -> float:
        procs = [_spawn(["--model", name, "--steps", str(steps)], threads)
                 for _ in range(n_proc)]
        queues = [_lines(p) for p in procs]
        for q in queues:
            if _wait_for(q, "ready", 600) is None:
                raise RuntimeError(f"a {name} child failed to start")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [_wait_for(q, "seconds", 900) for q in queues]
        for p in procs:
            p.wait()
        if any(r is None for r in results):
            raise RuntimeError(f"a {name} child failed")
        return sum(r["images"] / r["seconds"] for r in results)  # type: ignore[index]

    one_by_two, two_by_one = [], []
    for _ in range(rounds):
        one_by_two.append(run_config(1, 2))
        two_by_one.append(run_config(2, 1))
    a, b = statistics.median(one_by_two), statistics.median(two_by_one)
    return {"one_process_two_threads_images_per_second": a,
            "two_processes_one_thread_images_per_second": b,
            "two_processes_over_one_process": b / a,
            "raw_one_process_two_threads": one_by_two,
            "raw_two_processes_one_thread": two_by_one}


def compile_comparison(name: str, steps: int, timeout: float, threads: int) -> dict[str, Any]:
    """``torch.compile`` in a fresh child (``threads`` threads, an empty inductor cache)."""
    with tempfile.TemporaryDirectory(prefix="ibbench-inductor-") as cache:
        proc = _spawn(["--model", name, "--steps", str(steps), "--compile"], threads,
                      {"TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": cache})
        q = _lines(proc)
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        eager = _wait_for(q, "eager_seconds_per_step", 900)
        compiled = _wait_for(q, "compile_seconds", timeout) if eager is not None else None
        if compiled is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"skipped": f"compilation did not finish within {timeout:g} s"
                    if eager is not None else "the eager loop failed"}
        final = _wait_for(q, "compiled_seconds_per_step", 900)
        proc.wait()
    if final is None:
        return {"skipped": "the compiled loop failed", **eager, **compiled}
    out = {**eager, **compiled, **final}
    out["compiled_over_eager"] = final["compiled_seconds_per_step"] / eager[
        "eager_seconds_per_step"]
    return out


def child(args: argparse.Namespace) -> None:
    """A subprocess that times the bare loop (``--compile``: eager, then compiled)."""
    torch.set_num_threads(args.threads)
    case = build_case(args.model, steps=args.steps + 3)
    bare_epoch(case, steps=3)
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    if not args.compile:
        t = bare_epoch(case, steps=args.steps)
        print(json.dumps({"seconds": t, "images": case.images_per_step * args.steps}),
              flush=True)
        return
    eager = bare_epoch(case, steps=args.steps) / args.steps
    print(json.dumps({"eager_seconds_per_step": eager}), flush=True)
    for m in case.modules.values():
        m.compile()
    t0 = time.perf_counter()
    bare_epoch(case, steps=3)  # compiles forward and backward (and any recompilation)
    print(json.dumps({"compile_seconds": time.perf_counter() - t0,
                      "compile_note": "seconds of the first 3 compiled steps"}), flush=True)
    t = bare_epoch(case, steps=args.steps) / args.steps
    print(json.dumps({"compiled_seconds_per_step": t}), flush=True)


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> tuple[dict, list[dict], dict]:
    load_start = os.getloadavg()[0]
    if load_start > 0.5:
        print(f"warning: the 1-minute load average is {load_start:.2f}; timings taken on a busy "
              "machine are not comparable", file=sys.stderr)
    torch.set_num_threads(args.threads)
    metrics: dict[str, Any] = {}
    goals: list[dict[str, Any]] = []
    shortened: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="ibbench-trainer-") as tmp:
        for name in args.models:
            print(f"{name}:", file=sys.stderr)
            prof = profile_of(name)
            steps = prof.steps_per_epoch
            if args.max_epoch_steps and steps > args.max_epoch_steps:
                steps = args.max_epoch_steps
                shortened[name] = steps
            case = build_case(name, steps=steps)
            m: dict[str, Any] = {"profile": dataclasses.asdict(prof)}
            m.update(compare(case, args.repeats, Path(tmp)))
            m["epoch_eval_seconds"] = eval_seconds(case, 1 if args.quick else 2)
            epoch_s = prof.steps_per_epoch * m["trainer_seconds_per_step"] + m[
                "epoch_eval_seconds"]
            m["cpu_profile_seconds_per_epoch"] = epoch_s
            m["cpu_profile_seconds_per_model"] = prof.epochs * epoch_s
            del case
            wins: dict[str, Any] = {}
            if not args.skip_wins:
                wins["in_process"] = variants_in_process(
                    name, args.win_steps, args.win_repeats, prof.batch_size,
                    conv=name != "glasses")
                if not args.skip_threads:
                    wins["threads"] = threads_comparison(name, args.win_steps, args.win_rounds)
                if not args.skip_compile:
                    wins["compile"] = compile_comparison(name, args.win_steps,
                                                         args.compile_timeout, args.threads)
            m["wins"] = wins
            metrics[name] = m
            ratio = m["trainer_time_over_bare_loop"]
            goals.append({"goal": f"Trainer <= {GOAL_TRAINER_OVER_BARE}x bare loop",
                          "model": name, "value": ratio,
                          "met": ratio <= GOAL_TRAINER_OVER_BARE})
    config = {
        "models": list(args.models), "repeats": args.repeats, "quick": args.quick,
        "torch_threads": args.threads, "win_steps": args.win_steps,
        "win_repeats": args.win_repeats, "win_rounds": args.win_rounds,
        "compile_timeout_seconds": args.compile_timeout,
        "shortened_epochs": shortened,
        "epoch": ("the runner's real steps per epoch at the cpu profile (checkpoints at their "
                  "real frequency)" if not shortened else
                  "shortened for the models in shortened_epochs: the epoch-end save is counted "
                  "more often than in a real run"),
        "finite_check_every": "default (1)",
        "timing": "median wall seconds over repeats, Trainer and bare loop interleaved",
        "data": "seeded synthetic tensors of the runners' shapes and dtypes",
        "machine": platform.processor() or platform.machine(),
        "load_average_1min_start": load_start,
        "load_average_1min_end": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }
    return metrics, goals, config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=lambda s: [m for m in s.split(",") if m],
                        default=list(MODELS), help=f"comma-separated, from {','.join(MODELS)}")
    parser.add_argument("--repeats", type=int, default=3, help="Trainer/bare pairs (default 3)")
    parser.add_argument("--max-epoch-steps", type=int, default=0,
                        help="shorten longer epochs to this many steps (default 0: real epochs)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--win-steps", type=int, default=10,
                        help="steps per timing of the cheap wins (default 10)")
    parser.add_argument("--win-repeats", type=int, default=3,
                        help="repeats of the in-process variants (default 3)")
    parser.add_argument("--win-rounds", type=int, default=1,
                        help="rounds of the thread comparison (default 1)")
    parser.add_argument("--compile-timeout", type=float, default=180.0,
                        help="give up a torch.compile after this many seconds (default 180)")
    parser.add_argument("--skip-wins", action="store_true", help="only Trainer vs bare loop")
    parser.add_argument("--skip-threads", action="store_true", help="no thread comparison")
    parser.add_argument("--skip-compile", action="store_true", help="no torch.compile")
    parser.add_argument("--quick", action="store_true",
                        help="a fast look: 1 repeat, 4-step epochs, 2-step in-process wins, no threads or compile")
    parser.add_argument("--no-record", action="store_true", help="print only, write no file")
    parser.add_argument("--update", action="store_true",
                        help="re-measure only --models and keep the other models' entries of the "
                             "existing record (each entry names the run that measured it)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="gmvib", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown or not args.models:
        parser.error(f"unknown model(s) {unknown}; choose from {','.join(MODELS)}")
    if args.quick:
        args.repeats, args.max_epoch_steps = 1, 4
        args.win_steps, args.win_repeats, args.win_rounds = 2, 1, 1
        args.skip_compile = args.skip_threads = True
    for name in ("repeats", "threads", "win_steps", "win_repeats", "win_rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    if args.no_record:
        metrics, history, config = run(args)
    else:
        from ibcore.results import RunRecorder

        with RunRecorder(chapter="benchmarks", experiment="trainer", profile="cpu", seed=0,
                         device=CPU, config={}) as rec:
            assert rec.path is not None
            earlier = _earlier_entries(rec.path, args.models) if args.update else None
            metrics, history, config = run(args)
            if earlier is not None:
                metrics, history, config = _merge(earlier, metrics, history, config)
            rec.config.update(config)
            rec.metrics.update(metrics)
            rec.history.extend(history)
        print(f"recorded {rec.path}", file=sys.stderr)
    report(metrics, history)


def _earlier_entries(path: Path, remeasured: list[str]) -> dict[str, Any]:
    """The entries of the existing record at ``path`` for the models not re-measured now.

    Each kept model entry carries ``measured_by``: the provenance and config of the run that
    measured it (an entry already merged once keeps its own).
    """
    if not path.exists():
        raise SystemExit(f"--update: there is no record at {path} to update; run without --update")
    old = json.loads(path.read_text(encoding="utf-8"))
    by = {"provenance": old["provenance"],
          "config": {k: v for k, v in old["config"].items() if k != "earlier_runs"}}
    kept = {name: {**entry, "measured_by": entry.get("measured_by", by)}
            for name, entry in old["metrics"].items() if name not in remeasured}
    rows = [r for r in old["history"] if r.get("model") not in remeasured]
    return {"metrics": kept, "history": rows}


def _merge(earlier: Mapping[str, Any], metrics: dict[str, Any], history: list[dict[str, Any]],
           config: dict[str, Any]) -> tuple[dict, list[dict], dict]:
    """This run's models (measured by this file's provenance) with the earlier entries."""
    merged = {**earlier["metrics"], **{k: {**v, "measured_by": "this file's provenance"}
                                       for k, v in metrics.items()}}
    order = [m for m in MODELS if m in merged]
    config = {**config, "models_measured_by_this_run": list(metrics),
              "models": order,
              "models_from_earlier_runs": sorted(earlier["metrics"])}
    return ({m: merged[m] for m in order},
            sorted([*earlier["history"], *history], key=lambda r: order.index(r["model"])),
            config)


def report(metrics: Mapping[str, Any], history: list[dict[str, Any]]) -> None:
    """A short table of the main numbers."""
    print(f"{'model':12s} {'T/bare':>7s} {'range':>13s} {'-ckpt':>6s} {'s/step':>8s} {'img/s':>8s} "
          f"{'save s':>6s} {'ckpt%':>6s} {'s/epoch':>8s} {'eval s':>7s}")
    for name, m in metrics.items():
        print(f"{name:12s} {m['trainer_time_over_bare_loop']:7.3f} "
              f"{m['trainer_time_over_bare_loop_min']:6.3f}-{m['trainer_time_over_bare_loop_max']:.3f} "
              f"{m['trainer_time_over_bare_loop_less_checkpoints']:6.3f} "
              f"{m['trainer_seconds_per_step']:8.4f} {m['trainer_images_per_second']:8.1f} "
              f"{m['checkpoint_save_seconds']:6.3f} "
              f"{100 * m['checkpoint_share_of_trainer_epoch']:6.2f} "
              f"{m['cpu_profile_seconds_per_epoch']:8.1f} {m['epoch_eval_seconds']:7.2f}")
        for group, res in m["wins"].items():
            print(f"  {group}: {json.dumps(_short(res))}")
    for row in history:
        print(f"goal {row['model']}: {row['goal']}  value {row['value']:.3f}  met: {row['met']}")


def _short(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _short(v) for k, v in obj.items() if not k.startswith("raw")}
    if isinstance(obj, float):
        return float(f"{obj:.4g}") if math.isfinite(obj) else obj
    return obj


if __name__ == "__main__":
    main()
