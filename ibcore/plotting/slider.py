"""β sliders that work both on the static website (no kernel) and live in Jupyter.

Two kinds of slider share one calling convention, a ``render(value) -> Figure`` callback:

* :func:`beta_slider` / :func:`static_slider` precompute one image (a 256-colour PNG unless
  told otherwise) per value of a recorded grid and return a :class:`StaticSlider`, whose HTML is self-contained: the frames are inlined as
  base64 ``data:`` URLs, the control is an ``<input type="range">`` and a few lines of inline
  JavaScript (an ``oninput`` attribute) show the selected frame and update the value label.
  No external script or stylesheet is referenced, so it works offline and without a kernel.
  Element ids are derived from a hash of the content, so rebuilding the book reproduces the
  same HTML byte for byte.
* :func:`live_slider` returns an ``ipywidgets`` interactive widget that calls ``render`` on
  every change; it needs a running kernel. In the book its cell carries the ``remove-output``
  tag, so the static site shows the precomputed slider instead.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ibcore.errors import InvalidParameterError, ShapeError
from ibcore.plotting.frames import ENCODINGS, PNG_SIGNATURE, encode_frame, image_mime
from ibcore.validation import check_weight

_PNG_SIGNATURE = PNG_SIGNATURE
_WEBP_TAG = b"WEBP"


def _figure_to_png(fig: Figure, dpi: float, encoding: str = "png") -> bytes:
    """Bytes of ``fig`` at ``dpi`` in ``encoding`` (no tight bbox: every frame has one size)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return encode_frame(buf.getvalue(), encoding)


def _check_encoding(encoding: str) -> str:
    if encoding not in ENCODINGS:
        raise InvalidParameterError(f"encoding must be one of {ENCODINGS}, not {encoding!r}")
    return encoding


def _close(fig: Any) -> None:
    if isinstance(fig, Figure):
        plt.close(fig)


def render_frames(
    render: Callable[[Any], Figure],
    values: Sequence,
    *,
    dpi: float = 100.0,
    encoding: str = "palette",
) -> list[bytes]:
    """Call ``render(v)`` for each ``v`` in ``values`` and return the image bytes of each figure.

    ``encoding`` is ``"palette"`` (a 256-colour PNG, for plots; the default), ``"webp"``
    (lossless, for frames that show photographs or reconstructions) or ``"png"`` (exact RGBA);
    see :mod:`ibcore.plotting.frames`.

    Every figure is closed after it is saved (also when saving fails), so no stray static copy
    is displayed by the notebook afterwards. Frames are saved without ``bbox_inches="tight"``
    so they all have the same pixel size (``figsize × dpi``); use a constrained layout in
    ``render`` to keep labels inside the canvas.
    """
    dpi = check_weight("dpi", dpi, low=0.0, low_inclusive=False)
    _check_encoding(encoding)
    values = list(values)
    if not values:
        raise ShapeError("values is empty; pass at least one value to render")
    frames: list[bytes] = []
    for v in values:
        fig = render(v)
        try:
            if not isinstance(fig, Figure):
                raise InvalidParameterError(
                    f"render({v!r}) returned {type(fig).__name__}, expected a "
                    "matplotlib.figure.Figure; end render with `return fig`"
                )
            frames.append(_figure_to_png(fig, dpi, encoding))
        finally:
            _close(fig)
    return frames


def _is_image(data: bytes) -> bool:
    try:
        image_mime(data)
    except InvalidParameterError:
        return False
    return True


def _format_value(fmt: str, v: Any) -> str:
    """``fmt.format(v)``; values the format does not fit (e.g. strings) fall back to ``str(v)``."""
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


@dataclass(frozen=True, repr=False)
class StaticSlider:
    """A self-contained HTML slider over precomputed PNG frames (see the module docstring).

    Build it with :func:`static_slider` or :func:`beta_slider`, which validate the inputs.
    """

    frames: tuple[bytes, ...]
    value_labels: tuple[str, ...]
    label: str = "β"
    caption: str | None = None
    initial: int = 0

    def __post_init__(self) -> None:
        n = len(self.frames)
        if n == 0 or len(self.value_labels) != n:
            raise ShapeError(
                f"a StaticSlider needs one value label per frame and at least one frame, got "
                f"{n} frames and {len(self.value_labels)} labels"
            )
        if not 0 <= self.initial < n:
            raise InvalidParameterError(f"initial must be in [0, {n - 1}], got {self.initial}")

    @property
    def uid(self) -> str:
        """Deterministic id prefix: the first 12 hex digits of a SHA-256 of the content."""
        h = hashlib.sha256()
        for part in (self.label, self.caption or "", str(self.initial), *self.value_labels):
            h.update(part.encode("utf-8") + b"\0")
        for frame in self.frames:
            h.update(hashlib.sha256(frame).digest())
        return "ibslider-" + h.hexdigest()[:12]

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        # Kept short: the notebook stores this as the text/plain output next to the HTML.
        first, last = self.value_labels[0], self.value_labels[-1]
        return f"StaticSlider({self.label}: {len(self)} frames, {first} … {last})"

    def to_html(self) -> str:
        """The slider's HTML: frames, range input, value label and optional caption."""
        uid = self.uid
        esc = html.escape
        name = esc(self.label)
        n = len(self.frames)
        i0 = self.initial
        imgs = []
        for k, (frame, text) in enumerate(zip(self.frames, self.value_labels, strict=True)):
            data = base64.b64encode(frame).decode("ascii")
            hidden = "" if k == i0 else "display:none;"
            mime = "image/webp" if frame[8:12] == _WEBP_TAG else "image/png"
            imgs.append(
                f'<img id="{uid}-f{k}" src="data:{mime};base64,{data}" '
                f'alt="{name} = {esc(text)}" style="{hidden}max-width:100%;height:auto">'
            )
        labels_json = esc(json.dumps(list(self.value_labels), ensure_ascii=False), quote=True)
        # Scoped to the enclosing .ibslider, so two copies of one slider on a page both work.
        js = (
            "var r=this.closest('.ibslider'),i=+this.value,L=JSON.parse(this.dataset.labels);"
            "r.querySelectorAll('.ibslider-frames img').forEach(function(m,k){"
            "m.style.display=k===i?'':'none';});"
            "r.querySelector('output').textContent=L[i];"
            "this.setAttribute('aria-valuetext',this.dataset.name+' = '+L[i]);"
        )
        caption = (
            f'<p class="ibslider-caption" style="margin:.25em 0 0;font-size:90%">'
            f"{esc(self.caption)}</p>"
            if self.caption
            else ""
        )
        return (
            f'<div class="ibslider" id="{uid}" style="max-width:100%;margin:.5em 0">'
            f'<div class="ibslider-frames">{"".join(imgs)}</div>'
            '<div class="ibslider-controls" '
            'style="display:flex;align-items:center;gap:.75em;max-width:700px">'
            f'<label for="{uid}-input" style="font-weight:bold">{name}</label>'
            f'<input type="range" id="{uid}-input" min="0" max="{n - 1}" step="1" '
            f'value="{i0}" style="flex:1" aria-valuetext="{name} = {esc(self.value_labels[i0])}" '
            f'data-name="{name}" data-labels="{labels_json}" oninput="{esc(js, quote=True)}">'
            f'<output id="{uid}-value" for="{uid}-input" '
            f'style="min-width:4em;font-family:monospace">{esc(self.value_labels[i0])}</output>'
            f"</div>{caption}</div>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()


def static_slider(
    frames: Sequence[bytes | Figure],
    values: Sequence,
    *,
    label: str = "β",
    fmt: str = "{:.3g}",
    caption: str | None = None,
    initial: int = 0,
    dpi: float = 100.0,
    encoding: str = "palette",
) -> StaticSlider:
    """Build a :class:`StaticSlider` from one frame (PNG or WebP bytes, or a Figure) per value.

    ``values[k]`` is shown as ``fmt.format(values[k])`` (``str`` when the format does not apply)
    while frame ``k`` is visible; ``initial`` is the index shown first. Figures are rendered at
    ``dpi`` in ``encoding`` (see :func:`render_frames`) and closed; bytes are used as given.
    """
    frames = list(frames)
    values = list(values)
    dpi = check_weight("dpi", dpi, low=0.0, low_inclusive=False)
    _check_encoding(encoding)
    if not values:
        raise ShapeError("values is empty; pass at least one value (and one frame per value)")
    if len(frames) != len(values):
        raise ShapeError(
            f"got {len(frames)} frames for {len(values)} values; pass exactly one frame per value"
        )
    if isinstance(initial, bool) or not isinstance(initial, int) or not 0 <= initial < len(values):
        raise InvalidParameterError(
            f"initial must be an index in [0, {len(values) - 1}], got {initial!r}"
        )
    if not isinstance(label, str) or not label:
        raise InvalidParameterError(f"label must be a non-empty string, got {label!r}")
    pngs: list[bytes] = []
    for k, frame in enumerate(frames):
        if isinstance(frame, Figure):
            try:
                pngs.append(_figure_to_png(frame, dpi, encoding))
            finally:
                _close(frame)
        elif isinstance(frame, bytes | bytearray) and _is_image(bytes(frame)):
            pngs.append(bytes(frame))
        else:
            for rest in frames[k:]:
                _close(rest)
            raise InvalidParameterError(
                f"frame {k} is {type(frame).__name__}, not PNG/WebP bytes or a Figure; "
                "use render_frames(render, values) to make frames"
            )
    labels = tuple(_format_value(fmt, v) for v in values)
    return StaticSlider(tuple(pngs), labels, label=label, caption=caption, initial=initial)


def beta_slider(
    render: Callable[[Any], Figure],
    values: Sequence,
    *,
    label: str = "β",
    fmt: str = "{:.3g}",
    caption: str | None = None,
    initial: int = 0,
    dpi: float = 100.0,
    encoding: str = "palette",
) -> StaticSlider:
    """``static_slider(render_frames(render, values), values, ...)``: the static β slider.

    ``encoding="webp"`` (lossless) for frames that show photographs; see :func:`render_frames`.
    """
    return static_slider(
        render_frames(render, values, dpi=dpi, encoding=encoding),
        values,
        label=label,
        fmt=fmt,
        caption=caption,
        initial=initial,
    )


def live_slider(
    render: Callable[[Any], Figure | None],
    values: Sequence | None = None,
    *,
    continuous: tuple[float, float] | None = None,
    log: bool = True,
    label: str = "β",
    fmt: str = "{:.3g}",
    steps: int = 200,
    continuous_update: bool = False,
) -> Any:
    """An ``ipywidgets.interactive`` widget calling ``render(value)`` whenever the slider moves.

    Give exactly one of ``values`` (a recorded grid → ``SelectionSlider``) or
    ``continuous=(low, high)`` (any value in the range → ``FloatLogSlider`` when ``log``, else
    ``FloatSlider``, with ``steps`` steps). ``render`` may return a Figure (displayed, then
    closed) or draw with pyplot and return ``None``. Needs a running kernel to update; on the
    static site, tag the cell ``remove-output`` and show a :func:`beta_slider` instead.

    When the environment variable ``IBBOOK_STATIC`` is ``1`` (set by ``make book`` and by the
    notebook tests, which execute chapters headless), no widget is created and a short note is
    returned instead: under nbclient a widget cell intermittently stalled until the cell timeout,
    and a headless run has no one to move the slider anyway. The arguments are still validated.
    """
    import ipywidgets as widgets
    from IPython.display import HTML, display

    if (values is None) == (continuous is None):
        raise InvalidParameterError(
            "give exactly one of values= (a recorded grid) or continuous=(low, high)"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidParameterError(f"steps must be a positive integer, got {steps!r}")
    style = {"description_width": "initial"}
    layout = widgets.Layout(width="min(700px, 100%)")
    if values is not None:
        grid = list(values)
        if not grid:
            raise ShapeError("values is empty; pass at least one value")
        slider = widgets.SelectionSlider(
            options=[(_format_value(fmt, v), v) for v in grid],
            value=grid[0],
            description=label,
            continuous_update=continuous_update,
            style=style,
            layout=layout,
        )
    else:
        try:
            low, high = continuous  # type: ignore[misc]
        except (TypeError, ValueError) as exc:
            raise InvalidParameterError(
                f"continuous must be a pair (low, high), got {continuous!r}"
            ) from exc
        low = check_weight("continuous[0]", low, low=-math.inf)
        high = check_weight("continuous[1]", high, low=-math.inf)
        if not low < high:
            raise InvalidParameterError(f"continuous must satisfy low < high, got {continuous!r}")
        if log:
            if low <= 0:
                raise InvalidParameterError(
                    f"a log slider needs 0 < low, got low={low}; pass log=False for a linear one"
                )
            lo, hi = math.log10(low), math.log10(high)
            slider = widgets.FloatLogSlider(
                value=10 ** ((lo + hi) / 2),
                base=10,
                min=lo,
                max=hi,
                step=(hi - lo) / steps,
                description=label,
                readout_format=".3g",
                continuous_update=continuous_update,
                style=style,
                layout=layout,
            )
        else:
            slider = widgets.FloatSlider(
                value=(low + high) / 2,
                min=low,
                max=high,
                step=(high - low) / steps,
                description=label,
                readout_format=".3g",
                continuous_update=continuous_update,
                style=style,
                layout=layout,
            )

    def _show(value: Any) -> None:
        fig = render(value)
        if isinstance(fig, Figure):
            display(fig)
            plt.close(fig)

    if os.environ.get("IBBOOK_STATIC") == "1":
        slider.close()
        return HTML("<p><em>(Live slider: run this notebook in Jupyter to use it.)</em></p>")
    return widgets.interactive(_show, value=slider)
