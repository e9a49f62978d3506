"""Subprocess used by test_training.py: trains a tiny stochastic model, optionally SIGKILLs itself.

Usage: python resume_worker.py CKPT OUT.pt [--kill-at STEP] [--resume] [--schedule KIND]
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import torch
from torch import nn

from ibcore.schedules import Schedule
from ibcore.training import Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-at", type=int, default=-1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--schedule", default=None, help="a per-step schedule kind")
    args = parser.parse_args()

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(96, 5, generator=gen)
    y = (x[:, :1] > 0).long().squeeze(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_fn(batch):
        xb, yb = batch
        # Monte-Carlo noise from the global RNG: resume must restore its state exactly.
        logits = model(xb + 0.1 * torch.randn_like(xb))
        ce = nn.functional.cross_entropy(logits, yb)
        return {"loss": ce, "ce": ce}

    def epoch_end(epoch: int) -> dict[str, float]:
        return {"test_noise_draw": float(torch.rand(()))}

    trainer = Trainer({"model": model}, opt, (x, y), loss_fn=loss_fn, batch_size=16, epochs=4,
                      seed=3, device=torch.device("cpu"), checkpoint_path=args.ckpt,
                      checkpoint_every_steps=2, checkpoint_min_seconds=0.0,
                      fingerprint="worker", epoch_end_fn=epoch_end,
                      progress=False,
                      schedule=Schedule(args.schedule, peak_lr=3e-2, warmup_fraction=0.25)
                      if args.schedule else None)
    if args.kill_at >= 0:
        original = trainer._standard_step

        def killing_step(batch):
            if trainer.global_step == args.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(batch)

        trainer._standard_step = killing_step  # type: ignore[method-assign]
    history = trainer.fit(resume=args.resume)
    torch.save({"params": model.state_dict(), "history": history}, args.out)


if __name__ == "__main__":
    main()
