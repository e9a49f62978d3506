"""Datasets as in-memory tensors (see :mod:`ibcore.data.vision`)."""

from ibcore.data.vision import DATASETS, data_root, load_tensors

__all__ = ["DATASETS", "data_root", "load_tensors"]
