"""Information-plane trajectories: a self-contained HTML animation and its final static frame.

A trajectory is the sequence of points ``(I(Z;X), I(Z;Y))`` measured once per logged epoch of a
run. :func:`info_plane_animation` draws every trajectory growing epoch by epoch on fixed axes,
optionally over a reference curve (e.g. the analytic IB curve), and returns matplotlib's
``FuncAnimation.to_jshtml`` output, post-processed so that it references nothing outside itself
(the Font Awesome stylesheet matplotlib links from a CDN is replaced by Unicode button labels)
and so that its element ids are derived from the content (reproducible rebuilds).
:func:`info_plane_figure` draws the last frame as an ordinary Figure for print/PDF.

Frames follow a common epoch timeline: frame ``k`` shows, for every run, all points logged at an
epoch ``≤ e_k``, where ``e_0 < e_1 < …`` are the distinct logged epochs of all runs, evenly
subsampled to at most ``max_frames`` (the first and the last epoch are always kept).
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import operator
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation
from matplotlib.colors import ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ibcore.errors import InvalidParameterError, NonFiniteError, ShapeError
from ibcore.plotting.frames import ENCODINGS, encode_frame, image_mime
from ibcore.plotting.style import ib_style
from ibcore.validation import check_int, check_weight

_KNOWN_KEYS = ("x", "y", "epoch", "color_value")
_LEGEND_MAX_RUNS = 8

# Font Awesome 4 icon classes used by matplotlib's animation controls → self-contained labels.
_BUTTON_TEXT = {
    "fa fa-minus": "\u2212",
    "fa fa-fast-backward": "|\u25c0\u25c0",
    "fa fa-step-backward": "|\u25c0",
    "fa fa-play fa-flip-horizontal": "\u25c0",
    "fa fa-pause": "\u275a\u275a",
    "fa fa-play": "\u25b6",
    "fa fa-step-forward": "\u25b6|",
    "fa fa-fast-forward": "\u25b6\u25b6|",
    "fa fa-plus": "+",
}


@dataclass(frozen=True)
class _Run:
    label: str
    x: np.ndarray
    y: np.ndarray
    epoch: np.ndarray
    color_value: float | None
    best: int | None


def _as_vector(name: str, seq: Any) -> np.ndarray:
    """``seq`` as a finite 1-D float array with at least one entry."""
    try:
        arr = np.asarray(seq, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"{name} must be a sequence of numbers, got {seq!r}") from exc
    if arr.ndim != 1:
        raise ShapeError(f"{name} must be one-dimensional (one value per epoch), got {arr.shape}")
    if arr.size == 0:
        raise ShapeError(f"{name} is empty; log at least one epoch")
    if not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        raise NonFiniteError(
            f"{name} holds {n_bad} NaN/inf value(s); drop those epochs or fix the estimator"
        )
    return arr


def _validate_runs(
    trajectories: Mapping[str, Mapping[str, Any]],
    mark_best: Callable[[Mapping[str, Any]], int | None] | None,
) -> list[_Run]:
    if not isinstance(trajectories, Mapping):
        raise InvalidParameterError(
            "trajectories must be a mapping label -> {'x': [...], 'y': [...]}, "
            f"got {type(trajectories).__name__}"
        )
    if len(trajectories) == 0:
        raise ShapeError("trajectories is empty; pass at least one run")
    runs = []
    for label, traj in trajectories.items():
        if not isinstance(traj, Mapping) or "x" not in traj or "y" not in traj:
            raise InvalidParameterError(
                f"trajectory {label!r} must be a mapping with keys 'x' and 'y' "
                f"(optional: 'epoch', 'color_value'), got {traj!r:.80}"
            )
        x = _as_vector(f"trajectories[{label!r}]['x']", traj["x"])
        y = _as_vector(f"trajectories[{label!r}]['y']", traj["y"])
        if x.size != y.size:
            raise ShapeError(
                f"trajectory {label!r} has {x.size} x values but {y.size} y values; "
                "log one (x, y) pair per epoch"
            )
        if traj.get("epoch") is None:
            epoch = np.arange(x.size, dtype=float)
        else:
            epoch = _as_vector(f"trajectories[{label!r}]['epoch']", traj["epoch"])
            if epoch.size != x.size:
                raise ShapeError(
                    f"trajectory {label!r} has {epoch.size} epochs for {x.size} points"
                )
            if epoch.size > 1 and not (np.diff(epoch) > 0).all():
                raise InvalidParameterError(
                    f"trajectory {label!r}: 'epoch' must be strictly increasing"
                )
        cv = traj.get("color_value")
        if cv is not None:
            cv = check_weight(f"trajectories[{label!r}]['color_value']", cv, low=-math.inf)
        best = None
        if mark_best is not None:
            raw = mark_best(traj)
            if raw is not None:
                try:
                    idx = operator.index(raw)
                except TypeError as exc:
                    raise InvalidParameterError(
                        f"mark_best must return an epoch index (int) or None, got {raw!r}"
                    ) from exc
                best = check_int(f"mark_best({label!r})", idx, low=0, high=x.size - 1)
        runs.append(_Run(str(label), x, y, epoch, cv, best))
    with_cv = [r.color_value is not None for r in runs]
    if any(with_cv) and not all(with_cv):
        raise InvalidParameterError(
            "give every trajectory a 'color_value' or none of them (it selects the colormap)"
        )
    return runs


def _limits(values: Sequence[np.ndarray], given: tuple[float, float] | None) -> tuple[float, float]:
    """Axis limits covering all ``values`` with a 5 % margin, unless ``given``."""
    if given is not None:
        lo, hi = (check_weight("axis limit", v, low=-math.inf) for v in given)
        if not lo < hi:
            raise InvalidParameterError(f"axis limits must satisfy low < high, got {given!r}")
        return lo, hi
    lo = min(float(v.min()) for v in values)
    hi = max(float(v.max()) for v in values)
    span = hi - lo
    pad = 0.05 * span if span > 0 else max(0.05 * abs(hi), 0.1)
    return lo - pad, hi + pad


def _timeline(runs: list[_Run], max_frames: int) -> np.ndarray:
    """The distinct logged epochs, evenly subsampled to ``≤ max_frames`` (first and last kept)."""
    epochs = np.unique(np.concatenate([r.epoch for r in runs]))
    if epochs.size > max_frames:
        idx = np.unique(np.round(np.linspace(0, epochs.size - 1, max_frames)).astype(int))
        epochs = epochs[idx]
    return epochs


_CORNERS = ((0.98, 0.03, "right", "bottom"), (0.02, 0.03, "left", "bottom"),
            (0.98, 0.97, "right", "top"), (0.02, 0.97, "left", "top"))


def _emptiest_corner(
    runs: Sequence[_Run], xlim: tuple[float, float], ylim: tuple[float, float]
) -> tuple[float, float, str, str]:
    """The axes corner (lower right first on ties) with the fewest trajectory points near it."""
    xs = np.concatenate([(r.x - xlim[0]) / (xlim[1] - xlim[0]) for r in runs])
    ys = np.concatenate([(r.y - ylim[0]) / (ylim[1] - ylim[0]) for r in runs])

    def crowd(corner: tuple[float, float, str, str]) -> int:
        cx, cy = corner[0], corner[1]
        return int(((np.abs(xs - cx) < 0.3) & (np.abs(ys - cy) < 0.15)).sum())

    return min(_CORNERS, key=crowd)


_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _run_styles(n: int) -> list[tuple[str, str]]:
    """(line style, marker) per run: distinct pairs, so runs sharing a colour still differ."""
    return [(_LINESTYLES[(i // 10) % len(_LINESTYLES)], _MARKERS[i % len(_MARKERS)])
            for i in range(n)]


def _fmt_epoch(e: float) -> str:
    """An epoch for the frame counter: an integer as is, a fraction to two decimals (1.92)."""
    return str(int(e)) if float(e).is_integer() else f"{e:.2f}".rstrip("0").rstrip(".")


class _InfoPlane:
    """The figure and artists of an information-plane plot; :meth:`show` sets the epoch cutoff."""

    def __init__(
        self,
        runs: list[_Run],
        *,
        xlabel: str,
        ylabel: str,
        title: str | None,
        reference: tuple[np.ndarray, np.ndarray] | None,
        reference_label: str | None,
        color_label: str,
        xlim: tuple[float, float] | None,
        ylim: tuple[float, float] | None,
        figsize: tuple[float, float],
        dpi: float,
        frame_unit: str = "epoch",
    ) -> None:
        self.runs = runs
        self.frame_unit = frame_unit
        self.fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
        ax = self.fig.add_subplot()
        self.ax = ax
        xs = [r.x for r in runs] + ([reference[0]] if reference is not None else [])
        ys = [r.y for r in runs] + ([reference[1]] if reference is not None else [])
        ax.set_xlim(*_limits(xs, xlim))
        ax.set_ylim(*_limits(ys, ylim))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        self.title = ax.set_title(title, loc="left") if title else None
        # the epoch counter sits inside the axes, clear of a long title, in the corner that the
        # trajectories cross least, on a light box so that it stays readable over a line
        x, y, ha, va = _emptiest_corner(runs, ax.get_xlim(), ax.get_ylim())
        self.epoch_title = ax.text(x, y, "", transform=ax.transAxes, ha=ha, va=va,
                                   bbox={"facecolor": "white", "edgecolor": "none",
                                         "alpha": 0.75, "pad": 1.5})

        handles: list[Any] = []
        if reference is not None:
            (ref,) = ax.plot(
                reference[0], reference[1], color="0.25", linestyle="--", linewidth=1.5,
                label=reference_label or "reference", zorder=1,
            )
            handles.append(ref)

        colors = self._colors(runs, color_label)
        # Without a colour scale, a run is told apart by its colour and, past ten runs, also by
        # its line style and marker, and every run is named in the legend.
        by_name = runs[0].color_value is None
        styles = _run_styles(len(runs)) if by_name else [("-", "o")] * len(runs)
        self.lines, self.heads, self.finals, self.bests = [], [], [], []
        for run, color, (ls, mk) in zip(runs, colors, styles, strict=True):
            (line,) = ax.plot([], [], color=color, linewidth=1.6, alpha=0.85, label=run.label,
                              linestyle=ls, marker=mk, markevery=[-1], markersize=5)
            (head,) = ax.plot([], [], mk, color=color, markersize=5)
            (final,) = ax.plot(
                [run.x[-1]], [run.y[-1]], "o", markersize=10, markerfacecolor="none",
                markeredgecolor=color, markeredgewidth=1.8,
            )
            best = None
            if run.best is not None:
                (best,) = ax.plot(
                    [run.x[run.best]], [run.y[run.best]], "s", markersize=9,
                    markerfacecolor="none", markeredgecolor=color, markeredgewidth=1.8,
                )
            self.lines.append(line)
            self.heads.append(head)
            self.finals.append(final)
            self.bests.append(best)
        if by_name or len(runs) <= _LEGEND_MAX_RUNS:
            handles.extend(self.lines)
        handles.append(
            Line2D([], [], marker="o", linestyle="none", markerfacecolor="none",
                   markeredgecolor="0.2", markersize=9, label=f"final {frame_unit}")
        )
        if any(r.best is not None for r in runs):
            handles.append(
                Line2D([], [], marker="s", linestyle="none", markerfacecolor="none",
                       markeredgecolor="0.2", markersize=8, label=f"best {frame_unit}")
            )
        # Outside the axes, so its position never depends on the frame's data; a long legend
        # gets two columns and a smaller font rather than running off the figure.
        ncol = 2 if len(handles) > 12 else 1
        self.fig.legend(handles=handles, loc="outside right upper", ncols=ncol,
                        fontsize="small" if len(handles) > 8 else None)

    def freeze_layout(self) -> None:
        """Run the constrained layout once (on the current frame), then keep it fixed.

        Frames then share one layout (nothing shifts between frames) and drawing a frame
        skips the layout solver, which is most of its cost.
        """
        self.fig.draw_without_rendering()
        self._fit_title()
        self.fig.set_layout_engine("none")

    def _fit_title(self) -> None:
        """Wrap a title that runs into the legend beside the axes onto lines as wide as the axes."""
        if self.title is None or not self.fig.legends:
            return
        renderer = self.fig._get_renderer()
        box = self.title.get_window_extent(renderer)
        if not box.overlaps(self.fig.legends[0].get_window_extent(renderer)):
            return
        text = self.title.get_text()
        room = self.ax.get_window_extent(renderer).width
        width = max(10, int(len(text) * room / max(box.width, 1.0)) - 1)
        self.title.set_text(textwrap.fill(text, width))
        self.fig.draw_without_rendering()

    def _colors(self, runs: list[_Run], color_label: str) -> list[Any]:
        if runs[0].color_value is None:
            if len(runs) <= 10:
                cycle = mpl.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
                return [cycle[i % len(cycle)] for i in range(len(runs))]
            # tab20 in the order dark 0..9, light 0..9: the first ten stay the strong colours
            tab20 = mpl.colormaps["tab20"].colors
            order = [tab20[2 * i] for i in range(10)] + [tab20[2 * i + 1] for i in range(10)]
            return [order[i % 20] for i in range(len(runs))]
        cvs = np.array([r.color_value for r in runs])
        lo, hi = float(cvs.min()), float(cvs.max())
        if lo > 0 and hi / lo >= 100:
            norm: Normalize = LogNorm(lo, hi)
        else:
            norm = Normalize(lo, hi) if hi > lo else Normalize(lo - 0.5, hi + 0.5)
        # viridis without its palest yellows, which vanish on a white background.
        cmap = ListedColormap(mpl.colormaps["viridis"](np.linspace(0.0, 0.85, 256)))
        mappable = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
        self.fig.colorbar(mappable, ax=self.ax, label=color_label, pad=0.02)
        return [cmap(norm(v)) for v in cvs]

    def show(self, cutoff: float) -> list[Any]:
        """Show every point logged at an epoch ``≤ cutoff``; return the changed artists."""
        for run, line, head, final, best in zip(
            self.runs, self.lines, self.heads, self.finals, self.bests, strict=True
        ):
            m = int(np.searchsorted(run.epoch, cutoff, side="right"))
            line.set_data(run.x[:m], run.y[:m])
            head.set_data(run.x[m - 1 : m], run.y[m - 1 : m])
            final.set_visible(m == run.x.size)
            if best is not None:
                best.set_visible(run.best is not None and run.best < m)
        self.epoch_title.set_text(f"{self.frame_unit} {_fmt_epoch(cutoff)}")
        return [*self.lines, *self.heads, *self.finals, *[b for b in self.bests if b is not None]]


def _build(
    trajectories: Mapping[str, Mapping[str, Any]],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None,
    reference: tuple[Sequence[float], Sequence[float]] | None,
    reference_label: str | None,
    mark_best: Callable[[Mapping[str, Any]], int | None] | None,
    color_label: str,
    xlim: tuple[float, float] | None,
    ylim: tuple[float, float] | None,
    figsize: tuple[float, float],
    dpi: float,
    frame_unit: str = "epoch",
) -> _InfoPlane:
    runs = _validate_runs(trajectories, mark_best)
    ref = None
    if reference is not None:
        try:
            rx, ry = reference
        except (TypeError, ValueError) as exc:
            raise InvalidParameterError(
                "reference must be a pair (x_values, y_values)"
            ) from exc
        ref = (_as_vector("reference x", rx), _as_vector("reference y", ry))
        if ref[0].size != ref[1].size:
            raise ShapeError(
                f"reference has {ref[0].size} x values but {ref[1].size} y values"
            )
    dpi = check_weight("dpi", dpi, low=0.0, low_inclusive=False)
    if not isinstance(frame_unit, str) or not frame_unit.strip():
        raise InvalidParameterError(f"frame_unit must be a non-empty string, got {frame_unit!r}")
    return _InfoPlane(
        runs, xlabel=xlabel, ylabel=ylabel, title=title, reference=ref,
        reference_label=reference_label, color_label=color_label, xlim=xlim, ylim=ylim,
        figsize=figsize, dpi=dpi, frame_unit=frame_unit,
    )


_FRAME = re.compile(r'(frames\[\d+\] = "data:image/)png(;base64,)([^"]*)"')


def _encode_frames(html: str, encoding: str) -> str:
    """Re-encode the PNG frames inlined by ``to_jshtml`` (see :mod:`ibcore.plotting.frames`)."""
    if encoding == "png":
        return html

    def sub(m: re.Match[str]) -> str:
        data = encode_frame(base64.b64decode(m.group(3).replace("\\\n", "")), encoding)
        mime = image_mime(data).split("/")[1]
        return f'{m.group(1)}{mime}{m.group(2)}{base64.b64encode(data).decode("ascii")}"'

    return _FRAME.sub(sub, html)


def _self_contained(html: str) -> str:
    """Drop the CDN stylesheet, label buttons with Unicode, make ids content-derived."""
    html = re.sub(r'<link rel="stylesheet"\s+href="https?://[^"]*"\s*/?>', "", html)
    html = re.sub(
        r'<i class="(fa [^"]*)"></i>',
        lambda m: _BUTTON_TEXT.get(m.group(1), "\u2022"),
        html,
    )
    html = re.sub(
        r'<img id="(_anim_img[0-9a-f]+)">',
        r'<img id="\1" style="max-width:100%;height:auto">',
        html,
    )
    match = re.search(r"_anim_img([0-9a-f]{32})", html)
    if match is not None:
        old = match.group(1)
        new = hashlib.sha256(html.replace(old, "").encode("utf-8")).hexdigest()[:32]
        html = html.replace(old, new)
    return html


def info_plane_animation(
    trajectories: Mapping[str, Mapping[str, Any]],
    *,
    xlabel: str = "I(Z;X) [nats]",
    ylabel: str = "I(Z;Y) [nats]",
    title: str | None = None,
    fps: float = 4,
    reference: tuple[Sequence[float], Sequence[float]] | None = None,
    reference_label: str | None = None,
    mark_best: Callable[[Mapping[str, Any]], int | None] | None = None,
    max_frames: int = 60,
    color_label: str = "β",
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    figsize: tuple[float, float] = (7.2, 4.6),
    dpi: float = 100.0,
    frame_unit: str = "epoch",
    encoding: str = "palette",
) -> Any:
    """Animate information-plane trajectories; return a self-contained ``IPython.display.HTML``.

    ``trajectories`` maps a run label to ``{"x": [...], "y": [...]}`` (one value per logged
    epoch), optionally with ``"epoch"`` (strictly increasing; default ``0, 1, …``) and
    ``"color_value"`` (e.g. the run's β: all runs then take viridis colours and a colorbar
    labelled ``color_label``, log-scaled when the values span ≥ 2 decades). Other keys are
    allowed and passed on, with the whole mapping, to ``mark_best(traj) -> index | None``,
    which selects the epoch marked by a square. ``reference=(xs, ys)`` is drawn dashed.
    ``frame_unit`` names what the ``"epoch"`` values count (``"epoch"``, ``"step"``…) in the
    frame counter and the legend. Axes limits are fixed over the animation; the figure is
    closed before returning. Frames are inlined as 256-colour PNGs (``encoding="palette"``;
    ``"png"`` or lossless ``"webp"`` otherwise, see :mod:`ibcore.plotting.frames`).
    """
    from IPython.display import HTML

    fps = check_weight("fps", fps, low=0.0, low_inclusive=False)
    max_frames = check_int("max_frames", max_frames, low=1)
    if encoding not in ENCODINGS:
        raise InvalidParameterError(f"encoding must be one of {ENCODINGS}, not {encoding!r}")
    with ib_style():
        plane = _build(
            trajectories, xlabel=xlabel, ylabel=ylabel, title=title, reference=reference,
            reference_label=reference_label, mark_best=mark_best, color_label=color_label,
            xlim=xlim, ylim=ylim, figsize=figsize, dpi=dpi, frame_unit=frame_unit,
        )
        cutoffs = _timeline(plane.runs, max_frames)
        fig = plane.fig
        try:
            # Size the embed limit from the fullest (last) frame: base64 is 4/3 of the PNG,
            # doubled for safety, never below matplotlib's default of 20 MB.
            plane.show(float(cutoffs[-1]))
            plane.freeze_layout()
            probe = _png_size(fig)
            limit_mb = max(20.0, 2.0 * cutoffs.size * probe * 4 / 3 / 2**20)
            anim = FuncAnimation(
                fig,
                lambda k: plane.show(float(cutoffs[k])),
                frames=cutoffs.size,
                interval=1000.0 / fps,
                repeat=False,
                blit=False,
            )
            # Frames are saved at savefig.dpi; make that the figure's own dpi.
            with mpl.rc_context({"animation.embed_limit": limit_mb, "savefig.dpi": "figure"}):
                html = anim.to_jshtml(fps=fps, default_mode="once")
        finally:
            plt.close(fig)
    return HTML(_self_contained(_encode_frames(html, encoding)))


def _png_size(fig: Figure) -> int:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return len(buf.getvalue())


def info_plane_figure(
    trajectories: Mapping[str, Mapping[str, Any]],
    *,
    xlabel: str = "I(Z;X) [nats]",
    ylabel: str = "I(Z;Y) [nats]",
    title: str | None = None,
    reference: tuple[Sequence[float], Sequence[float]] | None = None,
    reference_label: str | None = None,
    mark_best: Callable[[Mapping[str, Any]], int | None] | None = None,
    color_label: str = "β",
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    figsize: tuple[float, float] = (7.2, 4.6),
    dpi: float = 100.0,
    frame_unit: str = "epoch",
) -> Figure:
    """The last frame of :func:`info_plane_animation` as a Figure (for print/PDF).

    The Figure is not registered with pyplot, so it is shown only where it is displayed
    (the last expression of a cell, ``display(fig)`` or ``fig.savefig``), never twice.
    """
    with ib_style():
        plane = _build(
            trajectories, xlabel=xlabel, ylabel=ylabel, title=title, reference=reference,
            reference_label=reference_label, mark_best=mark_best, color_label=color_label,
            xlim=xlim, ylim=ylim, figsize=figsize, dpi=dpi, frame_unit=frame_unit,
        )
        plane.show(float(max(float(r.epoch[-1]) for r in plane.runs)))
    return plane.fig
