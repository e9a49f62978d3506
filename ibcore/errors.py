"""Exception types raised by ``ibcore``.

One type per kind of bad input, each a subclass of both :class:`IBCoreError` and the
built-in exception a Python user would expect, so ``except ValueError`` keeps working.
Every message says what was wrong and what to do about it.
"""

from __future__ import annotations


class IBCoreError(Exception):
    """Base class of every error ``ibcore`` raises on purpose."""


class InvalidParameterError(IBCoreError, ValueError):
    """A scalar setting is out of range: a negative, NaN or infinite β, ``k >= N``, ``K < 1``…"""


class ShapeError(IBCoreError, ValueError):
    """A tensor has the wrong number of dimensions or the wrong size along one of them."""


class NonFiniteError(IBCoreError, FloatingPointError):
    """A NaN or infinite value in an input, or in a loss term during training."""


class UnknownNameError(IBCoreError, ValueError):
    """An unknown chapter, experiment, profile or option name."""


class DataNotFoundError(IBCoreError, FileNotFoundError):
    """A dataset is not on disk and could not be downloaded."""


class CheckpointError(IBCoreError):
    """A checkpoint is corrupted, truncated, or was written by an incompatible run."""


class ResultFileError(IBCoreError):
    """A result file is missing, corrupted, or lacks its provenance."""
