"""Named run profiles.

Every experiment defines a frozen dataclass of settings and a mapping with exactly the three
profiles ``smoke`` (under a minute on a 2-core CPU: CI and the book build), ``cpu`` (the real run
recorded on a 2-core machine, resumable) and ``paper`` (the source document's protocol, for a GPU).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from ibcore.errors import UnknownNameError

PROFILE_NAMES: tuple[str, ...] = ("smoke", "cpu", "paper")

SPEED_DEFAULTS: dict[str, Any] = {"amp": None, "cudnn_benchmark": False}
"""The GPU speed switches some configs carry (``amp``: mixed precision, ``cudnn_benchmark``),
with their defaults (off). See :func:`ibcore.device.autocast` and
:func:`ibcore.device.cudnn_benchmark`."""

T = TypeVar("T")


def select(profiles: Mapping[str, T], name: str) -> T:
    """Return the settings of profile ``name``; an unknown name raises :class:`UnknownNameError`."""
    if name not in profiles:
        raise UnknownNameError(
            f"unknown profile {name!r}; choose one of {', '.join(sorted(profiles))}"
        )
    return profiles[name]


def as_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict of a dataclass config (for result files and checkpoint fingerprints)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"cannot describe config of type {type(config).__name__}")


def identity_dict(config: Any) -> dict[str, Any]:
    """:func:`as_dict` without the speed switches of :data:`SPEED_DEFAULTS` left at their defaults.

    For checkpoint and cache fingerprints: a run with the switches off has the fingerprint it
    had before the switches existed (so its checkpoints stay valid), and turning one on gives a
    new fingerprint (its numbers differ in the last bits).
    """
    out = as_dict(config)
    for key, default in SPEED_DEFAULTS.items():
        if key in out and out[key] == default:
            del out[key]
    return out
