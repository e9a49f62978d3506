"""Datasets as in-memory tensors (see :mod:`ibcore.data.vision`) and whole-tensor transforms."""

from ibcore.data.multimnist import load_multi as load_multi
from ibcore.data.transforms import pad_to_size, random_shift_flip, subset, to_unit_float
from ibcore.data.vision import DATASETS, data_root, load_tensors

__all__ = ["DATASETS", "data_root", "load_tensors", "pad_to_size", "random_shift_flip", "subset", "to_unit_float"]
