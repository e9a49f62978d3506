"""Plotting helpers every chapter uses: β sliders (static and live) and info-plane animations.

Importing this package changes no matplotlib setting; apply the book style explicitly with
:func:`ib_style` (a ``with`` block) or :func:`apply_ib_style`.
"""

from ibcore.plotting.animation import info_plane_animation, info_plane_figure
from ibcore.plotting.slider import (
    StaticSlider,
    beta_slider,
    live_slider,
    render_frames,
    static_slider,
)
from ibcore.plotting.style import IB_RC, apply_ib_style, ib_style

__all__ = [
    "IB_RC",
    "StaticSlider",
    "apply_ib_style",
    "beta_slider",
    "ib_style",
    "info_plane_animation",
    "info_plane_figure",
    "live_slider",
    "render_frames",
    "static_slider",
]
