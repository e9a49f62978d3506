"""A small training loop with exact checkpoint/resume.

Each epoch visits the training tensors in an order drawn from a generator seeded by
``(seed, epoch)``, so the order of any epoch can be regenerated after a restart. A checkpoint
holds the modules, the optimizer(s), the scheduler, the global torch RNG state (which the loss
draws its Monte-Carlo noise from), the position inside the epoch, the running sums of the loss
terms and the history. Resuming from it therefore continues bit for bit on the CPU: a run killed
at any point and resumed ends with exactly the numbers of a run that was never stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ibcore.checkpoint import load_checkpoint, save_checkpoint
from ibcore.errors import CheckpointError, NonFiniteError, ShapeError, UnknownNameError
from ibcore.schedules import Schedule, build_scheduler
from ibcore.validation import check_int, check_weight

#: Inside an epoch, a checkpoint is written only if this many seconds passed since the last one.
DEFAULT_CHECKPOINT_MIN_SECONDS = 60.0

LossFn = Callable[[tuple[Tensor, ...]], Mapping[str, Tensor]]
StepFn = Callable[[tuple[Tensor, ...], int], Mapping[str, Tensor | float]]


def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device) -> Tensor:
    """The visiting order of epoch ``epoch`` (1-based), a pure function of ``(n, seed, epoch)``."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).to(device)


class Trainer:
    """Train ``modules`` on in-memory tensors ``data`` for ``epochs`` epochs.

    Give either ``loss_fn`` (a batch → dict of scalar loss terms with key ``"loss"``; the trainer
    zeroes gradients, checks every term is finite, back-propagates ``"loss"`` and steps the single
    ``optimizer``) or ``step_fn`` (a batch and global step → dict of terms; it does its own
    optimisation, e.g. alternating GAN updates with several optimizers).

    ``epoch_end_fn(epoch)`` returns extra per-epoch numbers (test metrics, information-plane
    coordinates); they are stored in the history row of that epoch.

    Learning-rate schedules, two kinds (give at most one):

    * ``schedule``: a per-step :class:`ibcore.schedules.Schedule` (or a mapping optimizer name →
      ``Schedule`` for a ``step_fn`` with several optimizers). The trainer builds the scheduler
      for ``epochs × steps_per_epoch`` steps and steps it after every optimisation step.
    * ``scheduler``: a PyTorch scheduler stepped once per epoch, after ``epoch_end_fn``; with
      ``scheduler_metric`` it is given that entry of the row (for ``ReduceLROnPlateau``).

    Every history row records the rate used at the first and the last step of the epoch
    (``lr_start``/``lr_end``; ``lr_start_<name>``/``lr_end_<name>`` with several optimizers).

    Checkpoints: at the end of every epoch, and inside an epoch every ``checkpoint_every_steps``
    steps provided ``checkpoint_min_seconds`` (default :data:`DEFAULT_CHECKPOINT_MIN_SECONDS`,
    60 s) have passed since the last save (a
    save of a large model costs up to a second; this bounds its share of the time to about 1 %
    while an interruption loses at most a minute or so of work). When a save happens never
    changes the numbers: a resumed run continues bit for bit from any of them.

    Loss terms are summed on the training device (in float64, the same additions a Python float
    sum would do) and read back once per epoch; their finiteness is checked every
    ``finite_check_every`` steps (default: every step, so a NaN stops the run before the next
    update; a larger value saves one host synchronisation per step on a GPU, and the error still
    names the first non-finite term and its step).
    """

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        optimizer: torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer],
        data: tuple[Tensor, ...],
        *,
        batch_size: int,
        epochs: int,
        seed: int,
        device: torch.device,
        loss_fn: LossFn | None = None,
        step_fn: StepFn | None = None,
        scheduler: Any | None = None,
        scheduler_metric: str | None = None,
        schedule: Schedule | Mapping[str, Schedule] | None = None,
        finite_check_every: int = 1,
        checkpoint_path: Path | None = None,
        checkpoint_every_steps: int | None = None,
        checkpoint_min_seconds: float | None = None,
        fingerprint: str = "",
        epoch_end_fn: Callable[[int], Mapping[str, float]] | None = None,
        progress: bool = True,
        desc: str = "",
        drop_last: bool = True,
    ) -> None:
        if (loss_fn is None) == (step_fn is None):
            raise TypeError("give exactly one of loss_fn and step_fn")
        optimizers = dict(optimizer) if isinstance(optimizer, Mapping) else {"main": optimizer}
        if loss_fn is not None and len(optimizers) != 1:
            raise TypeError("loss_fn needs exactly one optimizer; use step_fn for several")
        if not data:
            raise ShapeError("data must hold at least one tensor")
        n = data[0].shape[0]
        if any(t.shape[0] != n for t in data):
            raise ShapeError(f"data tensors disagree in length: {[t.shape[0] for t in data]}")
        self.modules = dict(modules)
        self.optimizers = optimizers
        self.data = data
        self.n = n
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.epochs = check_int("epochs", epochs, low=0)
        self.seed = seed
        self.device = device
        self.loss_fn = loss_fn
        self.step_fn = step_fn
        self.scheduler = scheduler
        self.scheduler_metric = scheduler_metric
        self.finite_check_every = check_int("finite_check_every", finite_check_every, low=1)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.checkpoint_every_steps = checkpoint_every_steps
        self.checkpoint_min_seconds = check_weight(
            "checkpoint_min_seconds", DEFAULT_CHECKPOINT_MIN_SECONDS
            if checkpoint_min_seconds is None else checkpoint_min_seconds)
        self._last_save = time.perf_counter()
        self.saves = 0  # checkpoints written by this Trainer object (benchmarks count them)
        self.fingerprint = fingerprint
        self.epoch_end_fn = epoch_end_fn
        self.progress = progress
        self.desc = desc
        self.drop_last = drop_last
        if drop_last and n < batch_size:
            raise ShapeError(f"batch_size {batch_size} exceeds the {n} training samples")
        self.steps_per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
        self.total_steps = self.epochs * self.steps_per_epoch
        if schedule is not None and scheduler is not None:
            raise TypeError("give at most one of schedule (per step) and scheduler (per epoch)")
        self.step_schedulers: dict[str, Any] = {}
        if schedule is not None:
            specs = dict(schedule) if isinstance(schedule, Mapping) else {
                name: schedule for name in optimizers}
            unknown = sorted(set(specs) - set(optimizers))
            if unknown:
                raise UnknownNameError(
                    f"schedule names unknown optimizer(s) {unknown}; the optimizers are "
                    f"{sorted(optimizers)}")
            self.step_schedulers = {
                name: build_scheduler(spec, optimizers[name], max(self.total_steps, 1))
                for name, spec in specs.items()}
        self._pending: list[tuple[int, int, dict[str, Tensor | float]]] = []
        self._lr_start: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        self.elapsed_seconds = 0.0
        self._epoch = 1  # next epoch to run (1-based)
        self._step_in_epoch = 0
        self._sums: dict[str, float] = {}
        self.global_step = 0

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "step_schedulers": {k: s.state_dict() for k, s in self.step_schedulers.items()},
            "lr_start": dict(self._lr_start),
            "torch_rng": torch.get_rng_state(),
            "epoch": self._epoch,
            "step_in_epoch": self._step_in_epoch,
            "global_step": self.global_step,
            "sums": {k: float(v) for k, v in self._sums.items()},
            "history": list(self.history),
            "elapsed_seconds": self.elapsed_seconds,
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        saved = state.get("step_schedulers", {})
        for k, sched in self.step_schedulers.items():
            if k not in saved:
                raise CheckpointError(
                    f"the checkpoint holds no per-step schedule for optimizer {k!r}; it was written "
                    "by a run without one: delete it to start afresh, or run without --resume")
            sched.load_state_dict(saved[k])
        self._lr_start = dict(state.get("lr_start", {}))
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self._epoch = int(state["epoch"])
        self._step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self._sums = dict(state["sums"])
        self.history = list(state["history"])
        self.elapsed_seconds = float(state["elapsed_seconds"])

    def save(self) -> None:
        if self.checkpoint_path is not None:
            save_checkpoint(self.checkpoint_path, self.state_dict(), fingerprint=self.fingerprint)
            self.saves += 1
        self._last_save = time.perf_counter()

    # ----------------------------------------------------------------- training
    def _batches(self, epoch: int) -> list[Tensor]:
        perm = epoch_permutation(self.n, self.seed, epoch, torch.device("cpu"))
        stop = self.steps_per_epoch * self.batch_size if self.drop_last else self.n
        return [perm[i : i + self.batch_size] for i in range(0, stop, self.batch_size)]

    def _standard_step(self, batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        assert self.loss_fn is not None
        (opt,) = self.optimizers.values()
        opt.zero_grad(set_to_none=True)
        terms = dict(self.loss_fn(batch))
        if "loss" not in terms:
            raise KeyError("loss_fn must return a dict with a 'loss' entry")
        if self.finite_check_every == 1:
            self._check_finite(terms, self._epoch, self._step_in_epoch + 1, self.global_step + 1)
        terms["loss"].backward()
        opt.step()
        return terms

    def _check_finite(self, terms: Mapping[str, Tensor | float], epoch: int, step: int,
                      global_step: int) -> None:
        for name, value in terms.items():
            v = float(value.detach()) if isinstance(value, Tensor) else float(value)
            if not math.isfinite(v):
                raise NonFiniteError(
                    f"loss term {name!r} is {v} at epoch {epoch}, step {step} "
                    f"(global step {global_step}) of {self.desc or 'training'}; "
                    "lower the learning rate or check the inputs and the weights of the objective"
                )

    def _check_pending(self) -> None:
        """Check the terms of the steps since the last check (one host read for all of them)."""
        if not self._pending:
            return
        tensors = [v.detach().reshape(()).to(torch.float64) for *_, terms in self._pending
                   for v in terms.values() if isinstance(v, Tensor)]
        floats = [float(v) for *_, terms in self._pending for v in terms.values()
                  if not isinstance(v, Tensor)]
        ok = all(math.isfinite(v) for v in floats)
        if tensors:
            ok = ok and bool(torch.isfinite(torch.stack(tensors)).all())
        if not ok:
            for epoch, step, terms in self._pending:
                self._check_finite(terms, epoch, step, (epoch - 1) * self.steps_per_epoch + step)
        self._pending = []

    def _accumulate(self, terms: Mapping[str, Tensor | float]) -> None:
        for name, value in terms.items():
            v = value.detach().reshape(()).to(torch.float64) if isinstance(value, Tensor) \
                else float(value)
            self._sums[name] = self._sums[name] + v if name in self._sums else v

    def _current_lrs(self) -> dict[str, float]:
        return {name: float(opt.param_groups[0]["lr"]) for name, opt in self.optimizers.items()}

    def _lr_columns(self, lr_end: Mapping[str, float]) -> dict[str, float]:
        if len(self.optimizers) == 1:
            (name,) = self.optimizers
            return {"lr_start": self._lr_start.get(name, lr_end[name]), "lr_end": lr_end[name]}
        row: dict[str, float] = {}
        for name in self.optimizers:
            row[f"lr_start_{name}"] = self._lr_start.get(name, lr_end[name])
            row[f"lr_end_{name}"] = lr_end[name]
        return row

    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Run the remaining epochs and return the history (one dict per epoch)."""
        if resume and self.checkpoint_path is not None and self.checkpoint_path.exists():
            self.load_state_dict(load_checkpoint(self.checkpoint_path, fingerprint=self.fingerprint))
        t0 = time.perf_counter()
        base_elapsed = self.elapsed_seconds
        total = self.total_steps
        done = (self._epoch - 1) * self.steps_per_epoch + self._step_in_epoch
        bar = tqdm(total=total, initial=min(done, total), desc=self.desc, disable=not self.progress,
                   leave=False, mininterval=2.0)
        lr_used = self._current_lrs()
        try:
            while self._epoch <= self.epochs:
                for m in self.modules.values():
                    m.train()
                batches = self._batches(self._epoch)
                for idx in batches[self._step_in_epoch :]:
                    batch = tuple(t[idx].to(self.device, non_blocking=True) for t in self.data)
                    lr_used = self._current_lrs()
                    if self._step_in_epoch == 0:
                        self._lr_start = dict(lr_used)
                    if self.step_fn is not None:
                        terms = dict(self.step_fn(batch, self.global_step))
                        if self.finite_check_every == 1:
                            self._check_finite(terms, self._epoch, self._step_in_epoch + 1,
                                               self.global_step + 1)
                    else:
                        terms = self._standard_step(batch)
                    for sched in self.step_schedulers.values():
                        sched.step()
                    self._accumulate(terms)
                    self._step_in_epoch += 1
                    self.global_step += 1
                    if self.finite_check_every > 1:
                        self._pending.append((self._epoch, self._step_in_epoch, {
                            k: v.detach() if isinstance(v, Tensor) else v
                            for k, v in terms.items()}))
                        if len(self._pending) >= self.finite_check_every:
                            self._check_pending()
                    bar.update(1)
                    if (
                        self.checkpoint_every_steps
                        and self._step_in_epoch % self.checkpoint_every_steps == 0
                        and self._step_in_epoch < len(batches)
                        and time.perf_counter() - self._last_save >= self.checkpoint_min_seconds
                    ):
                        self._check_pending()
                        self.elapsed_seconds = base_elapsed + time.perf_counter() - t0
                        self.save()
                self._check_pending()
                row: dict[str, Any] = {"epoch": self._epoch}
                row.update({f"train_{k}": float(s) / len(batches) for k, s in self._sums.items()})
                row.update(self._lr_columns(lr_used))
                if self.epoch_end_fn is not None:
                    for m in self.modules.values():
                        m.eval()
                    row.update(dict(self.epoch_end_fn(self._epoch)))
                if self.scheduler is not None:
                    if self.scheduler_metric is not None:
                        self.scheduler.step(row[self.scheduler_metric])
                    else:
                        self.scheduler.step()
                self.history.append(row)
                self._epoch += 1
                self._step_in_epoch = 0
                self._sums = {}
                self.elapsed_seconds = base_elapsed + time.perf_counter() - t0
                self.save()
        finally:
            bar.close()
        self.elapsed_seconds = base_elapsed + time.perf_counter() - t0
        return self.history
