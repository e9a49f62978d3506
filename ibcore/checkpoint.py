"""Checkpoints that are verified before they are trusted.

File layout: an 8-byte magic ``b"IBCKPT01"``, the 32-byte SHA-256 of the payload, then the payload
(a ``torch.save`` archive). :func:`load_checkpoint` checks the magic, the checksum and the run
fingerprint (chapter, experiment, configuration) before unpickling anything with
``weights_only=True``, so a truncated, corrupted or foreign file raises :class:`CheckpointError`
instead of resuming into a silently wrong state.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from ibcore.atomic import atomic_write_bytes
from ibcore.errors import CheckpointError

MAGIC = b"IBCKPT01"
FORMAT_VERSION = 1


def fingerprint_of(obj: Any) -> str:
    """A stable short hash of a JSON-able description of a run (config, chapter, experiment)."""
    import json

    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], *, fingerprint: str) -> Path:
    """Atomically write ``state`` (tensors, numbers, strings, nested dicts/lists) to ``path``."""
    buffer = io.BytesIO()
    torch.save({"version": FORMAT_VERSION, "fingerprint": fingerprint, "state": state}, buffer)
    payload = buffer.getvalue()
    return atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).digest() + payload)


def load_checkpoint(path: str | os.PathLike, *, fingerprint: str) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` for the same run fingerprint."""
    path = Path(path)
    hint = f"delete {path} to start the run afresh, or run without --resume"
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(f"no checkpoint at {path}") from exc
    if len(raw) < len(MAGIC) + 32 or raw[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path} is not an ibcore checkpoint (bad header); {hint}")
    digest, payload = raw[len(MAGIC) : len(MAGIC) + 32], raw[len(MAGIC) + 32 :]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path} is corrupted or truncated (checksum mismatch); {hint}")
    try:
        blob = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"{path} could not be read ({exc}); {hint}") from exc
    if blob.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {blob.get('version')}; {hint}")
    if blob.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{path} belongs to a different run (fingerprint {blob.get('fingerprint')} ≠ "
            f"{fingerprint}: the configuration changed); {hint}"
        )
    return blob["state"]
