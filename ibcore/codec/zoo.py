"""The shipped NC-VAE models: find and load them by name or by the id written into a file.

A models folder (default ``models/ncvae`` of the checkout, :func:`default_models_dir`) holds
model files (:func:`ibcore.models.ncvae.save_model_file`) and ``manifest.json``::

    {"format": 1, "models": {"q1": {"file": "q1.pt", "sha256": "…", "model_id": "94f147bc", …}}}

Every load checks the file's SHA-256 against the manifest. Training and exporting models is the
experiment runner's job (``ibcore.runners.ncvae``), which builds on this module; this module
never imports the runner, so the codec's command line loads no training code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ibcore.device import resolve_device
from ibcore.errors import CheckpointError, DataNotFoundError, UnknownNameError
from ibcore.models.ncvae import NCVAE, load_model_file
from ibcore.results import repo_root

__all__ = [
    "TRAIN_HINT",
    "default_models_dir",
    "find_model_by_id",
    "load_shipped",
    "read_manifest",
]

TRAIN_HINT = (
    "train and export the models with `python -m ibcore run ncvae --profile cpu --resume` "
    "then `python -m ibcore.runners.ncvae export --profile cpu`"
)
"""How to produce the shipped models (quoted by the errors below)."""


def default_models_dir() -> Path:
    """``models/ncvae`` of the checkout (or of the current folder for an installed package)."""
    root = repo_root()
    return (root if root is not None else Path.cwd()) / "models" / "ncvae"


def read_manifest(models_dir: Path) -> dict[str, Any]:
    """The ``models`` entries of ``models_dir/manifest.json`` (name → entry); ``{}`` if absent."""
    path = Path(models_dir) / "manifest.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return dict(data["models"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a valid model manifest ({exc}); restore it") from exc


def _load_entry(models_dir: Path, entry: dict[str, Any], device: str) -> NCVAE:
    try:
        file, sha = entry["file"], entry["sha256"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{models_dir / 'manifest.json'} has an invalid entry ({exc})") from exc
    return load_model_file(models_dir / file, sha256=sha, device=resolve_device(device))[0]


def load_shipped(name: str, *, models_dir: Path | None = None, device: str = "cpu") -> NCVAE:
    """A model given as the path of a model file (``….pt``) or as a shipped name (``q1`` …).

    A shipped model's SHA-256 is checked against the manifest. A name that is not in the
    manifest raises :class:`UnknownNameError` (listing the shipped names), or
    :class:`DataNotFoundError` when the folder ships no models at all.
    """
    path = Path(name)
    if path.suffix == ".pt" or path.is_file():
        if not path.is_file():
            raise DataNotFoundError(f"no model file at {path}")
        return load_model_file(path, device=resolve_device(device))[0]
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    manifest = read_manifest(models_dir)
    if name in manifest:
        return _load_entry(models_dir, manifest[name], device)
    if not manifest:
        raise DataNotFoundError(f"no shipped models in {models_dir} (no manifest.json); {TRAIN_HINT}")
    raise UnknownNameError(f"unknown model {name!r}; choose one of {', '.join(sorted(manifest))} "
                           "or give the path of a model file")


def find_model_by_id(model_id_hex: str, models_dir: Path | None = None,
                     device: str = "cpu") -> NCVAE:
    """The shipped model whose id (first 4 bytes of its weights' SHA-256) is ``model_id_hex``."""
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    for entry in read_manifest(models_dir).values():
        if entry.get("model_id") == model_id_hex:
            return _load_entry(models_dir, entry, device)
    raise DataNotFoundError(
        f"no shipped model in {models_dir} has id {model_id_hex}; pass the model that encoded "
        "the file with --model"
    )
