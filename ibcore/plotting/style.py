"""A small, consistent matplotlib look for the book's figures.

Nothing here runs on import: the style is applied only where a caller asks for it, either
for one block (``with ib_style(): ...``) or, in a notebook's first cell, for the whole
session (``apply_ib_style()``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from types import MappingProxyType
from typing import Any

import matplotlib as mpl

#: rcParams of the book style: figures 7 in × 4.5 in at 100 dpi (≈ 700 px wide on the web),
#: fonts large enough to stay legible when a browser scales the image down, light grid.
IB_RC: Mapping[str, Any] = MappingProxyType(
    {
        "figure.figsize": (7.0, 4.5),
        "figure.dpi": 100,
        "savefig.dpi": 100,
        "font.size": 11,
        "axes.titlesize": 12,
        "axes.labelsize": 11,
        "legend.fontsize": 9,
        "xtick.labelsize": 10,
        "ytick.labelsize": 10,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "lines.linewidth": 1.8,
        "image.cmap": "viridis",
    }
)


def ib_style() -> AbstractContextManager[None]:
    """Return a context manager that applies :data:`IB_RC` inside a ``with`` block only."""
    return mpl.rc_context(dict(IB_RC))


def apply_ib_style() -> None:
    """Apply :data:`IB_RC` to the global rcParams (call it explicitly, e.g. in a first cell)."""
    mpl.rcParams.update(dict(IB_RC))
