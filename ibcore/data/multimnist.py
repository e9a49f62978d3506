r"""Multi-MNIST and Multi-Fashion-MNIST: 2 or 3 items with distinct labels on a 64×64 canvas.

In the spirit of the MultiDigitMNIST generator that ``gmvib.md`` (section 3.1) cites: each
image holds ``M`` items (``M = 2``: "Double", ``M = 3``: "Triple") whose classes are ``M``
*distinct* labels out of 10; the target is the set of them, stored multi-hot over the 10
classes. Image ``i`` is made as follows (all draws from one ``torch.Generator``):

1. the label set: a uniformly drawn ``M``-subset of ``{0, …, 9}`` (so ``H(y) = log C(10, M)``
   nats exactly, see :func:`label_entropy_nats`), put in a random left-to-right order;
2. for each label, a uniformly drawn source image of that class;
3. the canvas is cut into ``M`` equal horizontal slots; the 28×28 item is centred in its slot
   with a uniform horizontal jitter of up to ±``jitter_x`` pixels and a uniform vertical
   offset in ``[0, 64 − 28]``; items are combined by a pixel-wise maximum.

With ``M = 2`` the slots are 32 pixels wide and the jitter is also cut to the slot, so the items
never overlap; with ``M = 3`` the slots are ~21 pixels wide, so the 28-pixel boxes of
neighbouring items share a few columns of their (mostly empty) borders; the maximum keeps both
strokes where they touch.

Splits: train images are composed only from torchvision's *training* split and test images only
from its *test* split, so no source item appears on both sides (the cited generator instead
pools all 70k images and splits by label combination). A validation split (``"val"``) is carved
from the training split: a fixed :data:`VAL_ITEMS` of its items (the same whatever the seed and
size) are held out, ``"val"`` images are composed from them only and ``"train"`` images from the
rest, so validation, like test, never shows an item the model was trained on.

:data:`SINGLE_DATASETS` holds the one-item case (``M = 1``, the item anywhere in the canvas the
same way), used to measure how well a trunk classifies a single item.

Generated tensors are cached with :func:`torch.save` under a folder the caller chooses (never
the data root, which may be read-only), keyed by every setting and the seed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ibcore.atomic import atomic_torch_save
from ibcore.checkpoint import fingerprint_of
from ibcore.data.vision import load_tensors
from ibcore.errors import InvalidParameterError, ShapeError, UnknownNameError
from ibcore.validation import check_int

__all__ = [
    "ALL_DATASETS",
    "MULTI_DATASETS",
    "SINGLE_DATASETS",
    "SPLITS",
    "VAL_ITEMS",
    "CANVAS",
    "MultiSpec",
    "compose_multi",
    "label_entropy_nats",
    "load_multi",
    "multi_hot",
]

CANVAS = 64
ITEM = 28
CLASSES = 10


@dataclass(frozen=True)
class MultiSpec:
    """One Multi-X dataset: the torchvision source and the number of items per image."""

    source: str
    items: int
    title: str


MULTI_DATASETS: dict[str, MultiSpec] = {
    "double_mnist": MultiSpec("mnist", 2, "Double-MNIST"),
    "triple_mnist": MultiSpec("mnist", 3, "Triple-MNIST"),
    "double_fashion": MultiSpec("fashion_mnist", 2, "Double-Fashion"),
    "triple_fashion": MultiSpec("fashion_mnist", 3, "Triple-Fashion"),
}
SINGLE_DATASETS: dict[str, MultiSpec] = {
    "single_fashion": MultiSpec("fashion_mnist", 1, "Single-Fashion"),
    "single_mnist": MultiSpec("mnist", 1, "Single-MNIST"),
}
ALL_DATASETS: dict[str, MultiSpec] = {**MULTI_DATASETS, **SINGLE_DATASETS}
SPLITS = ("train", "val", "test")
# training-split items held out for the validation split (of 60,000 in MNIST and Fashion-MNIST)
VAL_ITEMS = 10_000


def label_entropy_nats(items: int, classes: int = CLASSES) -> float:
    """``H(y) = log C(classes, items)``: the entropy of a uniformly drawn label set, in nats."""
    check_int("items", items, low=1, high=classes)
    return math.log(math.comb(classes, items))


def multi_hot(label_sets: Tensor, classes: int = CLASSES) -> Tensor:
    """``[N, M]`` integer labels → ``[N, classes]`` float32 multi-hot targets."""
    if label_sets.dim() != 2:
        raise ShapeError(f"label_sets must have shape [N, M], got {tuple(label_sets.shape)}")
    out = torch.zeros(label_sets.shape[0], classes, dtype=torch.float32)
    out.scatter_(1, label_sets.long(), 1.0)
    return out


def compose_multi(
    images: Tensor,
    labels: Tensor,
    n: int,
    items: int,
    generator: torch.Generator,
    *,
    jitter_x: int = 3,
    canvas: int = CANVAS,
) -> tuple[Tensor, Tensor, Tensor]:
    """Compose ``n`` canvases from single-item ``uint8`` images ``[N, 1, 28, 28]``.

    Returns ``(x, label_sets, source_index)``: ``uint8`` ``[n, 1, canvas, canvas]``, ``int64``
    ``[n, items]`` (left to right) and ``int64`` ``[n, items]`` (rows of ``images`` used).
    """
    check_int("n", n, low=1)
    items = check_int("items", items, low=1, high=CLASSES)
    check_int("jitter_x", jitter_x, low=0)
    check_shape_items(images)
    if labels.shape != images.shape[:1]:
        raise ShapeError(f"labels must have shape [{images.shape[0]}], got {tuple(labels.shape)}")
    if canvas < ITEM or canvas // items < 1:
        raise InvalidParameterError(f"canvas {canvas} is too small for {items} items of {ITEM}px")
    by_class = [torch.nonzero(labels == c).flatten() for c in range(CLASSES)]
    for c, idx in enumerate(by_class):
        if idx.numel() == 0:
            raise InvalidParameterError(f"the source images hold no item of class {c}")
    # 1. label sets: a random M-subset, in random order (first M of a random permutation)
    sets = torch.argsort(torch.rand(n, CLASSES, generator=generator), dim=1)[:, :items]
    # 2. one source image per label
    src = torch.empty(n, items, dtype=torch.int64)
    u = torch.rand(n, items, generator=generator)
    for c in range(CLASSES):
        mask = sets == c
        pool = by_class[c]
        pick = (u[mask] * pool.numel()).long().clamp_(max=pool.numel() - 1)
        src[mask] = pool[pick]
    # 3. positions
    lo, hi = _left_ranges(items, jitter_x, canvas)
    left = lo + (torch.rand(n, items, generator=generator) * (hi - lo + 1)).long()
    top = torch.randint(0, canvas - ITEM + 1, (n, items), generator=generator)
    out = torch.zeros(n, 1, canvas, canvas, dtype=torch.uint8)
    rows = torch.arange(ITEM)
    for j in range(items):
        patch = images[src[:, j], 0]  # [n, 28, 28]
        r = (top[:, j, None] + rows).unsqueeze(-1)  # [n, 28, 1]
        col = (left[:, j, None] + rows).unsqueeze(1)  # [n, 1, 28]
        b = torch.arange(n)[:, None, None]
        view = out[:, 0]
        view[b, r, col] = torch.maximum(view[b, r, col], patch)
    return out, sets, src


def _left_ranges(items: int, jitter_x: int, canvas: int) -> tuple[Tensor, Tensor]:
    """Per slot, the lowest and highest left edge of its item (inclusive), ``[items]`` each.

    The item is centred in its slot, ± ``jitter_x``; when the slot is at least as wide as the
    item, the range is also cut to the slot, so items never overlap.
    """
    slot = canvas / items
    lo, hi = [], []
    for j in range(items):
        c = round((j + 0.5) * slot - ITEM / 2)
        a, b = c - jitter_x, c + jitter_x
        if slot >= ITEM:
            a, b = max(a, math.ceil(j * slot)), min(b, math.floor((j + 1) * slot) - ITEM)
        lo.append(min(max(a, 0), canvas - ITEM))
        hi.append(min(max(b, 0), canvas - ITEM))
    return torch.tensor(lo), torch.tensor(hi)


def check_shape_items(images: Tensor) -> None:
    """Raise :class:`ShapeError` unless ``images`` is ``uint8 [N, 1, 28, 28]``."""
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, ITEM, ITEM):
        raise ShapeError(
            f"source items must have shape [N, 1, {ITEM}, {ITEM}], got {tuple(images.shape)}; "
            "use MNIST or Fashion-MNIST as loaded by ibcore.data.load_tensors"
        )
    if images.dtype != torch.uint8:
        raise ShapeError(f"source items must be uint8, got {images.dtype}")


def load_multi(
    name: str,
    split: str,
    n: int,
    *,
    seed: int,
    cache_dir: str | os.PathLike | None,
    data_root: str | os.PathLike | None = None,
    jitter_x: int = 3,
) -> tuple[Tensor, Tensor]:
    """``(x, label_sets)`` of ``n`` generated images of dataset ``name`` (see :data:`MULTI_DATASETS`).

    ``x`` is ``uint8 [n, 1, 64, 64]``, ``label_sets`` ``int64 [n, M]``. Deterministic in
    ``(name, split, n, seed, jitter_x)``; cached as ``<cache_dir>/<name>-<split>-<key>.pt`` when
    ``cache_dir`` is given. ``split="train"`` composes from torchvision's training split less
    the held-out items (:func:`validation_items`), ``"val"`` from those items only, ``"test"``
    from torchvision's test split only.
    """
    if name not in ALL_DATASETS:
        raise UnknownNameError(
            f"unknown Multi-MNIST dataset {name!r}; choose one of {', '.join(ALL_DATASETS)}"
        )
    if split not in SPLITS:
        raise UnknownNameError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    check_int("n", n, low=1)
    check_int("seed", seed, low=0)
    spec = ALL_DATASETS[name]
    key = fingerprint_of({"name": name, "split": split, "n": n, "seed": seed,
                          "jitter_x": jitter_x, "version": 3})[:16]
    path = Path(cache_dir) / f"{name}-{split}-{key}.pt" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            saved = torch.load(path, weights_only=True)
            return saved["x"], saved["label_sets"]
        except Exception:  # noqa: BLE001 - a truncated cache file is regenerated below
            pass
    images, labels = load_tensors(spec.source, "test" if split == "test" else "train", data_root)
    if split != "test":
        held = validation_items(images.shape[0])
        keep = held if split == "val" else _complement(held, images.shape[0])
        images, labels = images[keep], labels[keep]
    gen = torch.Generator().manual_seed(int(key, 16) % (2**62))
    x, sets, _ = compose_multi(images, labels, n, spec.items, gen, jitter_x=jitter_x)
    if path is not None:
        atomic_torch_save(path, {"x": x, "label_sets": sets})
    return x, sets


def validation_items(n_items: int) -> Tensor:
    """Indices of the training-split items held out for ``"val"`` (sorted, ``int64``).

    :data:`VAL_ITEMS` of ``n_items`` (a sixth when the split has fewer than six times as many),
    drawn by a fixed permutation: the same items for every seed, size and dataset of one source.
    """
    check_int("n_items", n_items, low=2)
    k = min(VAL_ITEMS, n_items // 6) or 1
    perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(20_240_601))
    return perm[:k].sort().values


def _complement(index: Tensor, n: int) -> Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[index] = False
    return torch.nonzero(mask).flatten()
