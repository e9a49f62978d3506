"""Tests of ibcore.plotting: static/live β sliders, info-plane animation and figure, style."""

from __future__ import annotations

import base64
import importlib
import json
import re
import struct
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")

import ipywidgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import ibcore.plotting as plotting_pkg  # noqa: E402
import ibcore.plotting.animation as animation_mod  # noqa: E402
import ibcore.plotting.slider as slider_mod  # noqa: E402
import ibcore.plotting.style as style_mod  # noqa: E402
from ibcore.errors import InvalidParameterError, NonFiniteError, ShapeError  # noqa: E402
from ibcore.plotting import (  # noqa: E402
    IB_RC,
    StaticSlider,
    beta_slider,
    ib_style,
    info_plane_animation,
    info_plane_figure,
    live_slider,
    render_frames,
    static_slider,
)
from ibcore.plotting.animation import _build  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _no_open_figures():
    plt.close("all")
    yield
    leaked = plt.get_fignums()
    plt.close("all")
    assert leaked == [], f"figures left open: {leaked}"


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) read from the IHDR chunk, independently of matplotlib."""
    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def tiny_render(value):
    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=40)
    ax.plot([0, 1], [0, float(value)])
    return fig


class TagCollector(HTMLParser):
    """Every start tag as (name, attrs dict), and the text inside <output>/<label>/<p>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: dict[str, list[str]] = {}
        self._open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in ("img", "input"):
            self._open.append(tag)

    def handle_endtag(self, tag):
        if self._open and self._open[-1] == tag:
            self._open.pop()

    def handle_data(self, data):
        if self._open:
            self.text.setdefault(self._open[-1], []).append(data)

    def find(self, name):
        return [a for t, a in self.tags if t == name]


def parse(html: str) -> TagCollector:
    p = TagCollector()
    p.feed(html)
    return p


# --------------------------------------------------------------------------- render_frames


def test_render_frames_gives_png_of_figsize_times_dpi_and_closes_figures():
    frames = render_frames(tiny_render, [1, 2, 3], dpi=50)
    assert len(frames) == 3
    for png in frames:
        assert png_size(png) == (2 * 50, int(1.5 * 50))
    assert frames[0] != frames[2]  # different values draw different lines
    assert plt.get_fignums() == []


def test_render_frames_rejects_non_figure_and_still_closes():
    def bad(v):
        plt.figure()
        return None

    with pytest.raises(InvalidParameterError, match="return fig"):
        render_frames(bad, [1])
    plt.close("all")  # the stray pyplot figure is the caller's; nothing of ours is open
    with pytest.raises(ShapeError):
        render_frames(tiny_render, [])
    with pytest.raises(InvalidParameterError):
        render_frames(tiny_render, [1], dpi=0)


# --------------------------------------------------------------------------- static slider


def fake_png(tag: bytes) -> bytes:
    """Bytes that pass the PNG signature check and identify a frame."""
    return PNG_SIGNATURE + tag


def test_static_slider_html_structure():
    values = [0.001, 0.25, 3.0, 1000.0]
    frames = [fake_png(bytes([k]) * 5) for k in range(4)]
    slider = static_slider(frames, values, label="β", caption="a <caption> & more")
    html = slider._repr_html_()
    p = parse(html)

    imgs = p.find("img")
    assert len(imgs) == 4
    for img, frame in zip(imgs, frames, strict=True):
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        assert base64.b64decode(img["src"][len(prefix):]) == frame
    visible = [k for k, img in enumerate(imgs) if "display:none" not in img["style"]]
    assert visible == [0]

    (rng,) = p.find("input")
    assert rng["type"] == "range"
    assert (rng["min"], rng["max"], rng["step"], rng["value"]) == ("0", "3", "1", "0")
    assert json.loads(rng["data-labels"]) == ["0.001", "0.25", "3", "1e+03"]
    assert "oninput" in rng and "dataset.labels" in rng["oninput"]

    assert "".join(p.text["output"]) == "0.001"
    assert "".join(p.text["label"]) == "β"
    assert "".join(p.text["p"]) == "a <caption> & more"  # escaped in HTML, intact as text
    assert "<caption>" not in html
    (out,) = p.find("output")
    (lab,) = p.find("label")
    assert out["for"] == rng["id"] == lab["for"]


def test_static_slider_is_self_contained():
    html = beta_slider(tiny_render, [0.5, 1.0]).to_html()
    assert not re.search(r"https?://", html)
    assert "<link" not in html and "<script" not in html  # no external (or any) script tag
    assert "src=" in html and all(
        s.startswith("data:") for s in re.findall(r'src="([^"]*)"', html)
    )


def test_static_slider_ids_deterministic_and_unique():
    f = [fake_png(b"a"), fake_png(b"b")]
    a1 = static_slider(f, [1, 2]).to_html()
    a2 = static_slider(list(f), [1, 2]).to_html()
    b = static_slider([fake_png(b"a"), fake_png(b"c")], [1, 2]).to_html()
    c = static_slider(f, [1, 3]).to_html()
    assert a1 == a2

    def ids(html):
        return [a["id"] for _, a in parse(html).tags if "id" in a]

    for h in (a1, b, c):
        assert len(ids(h)) == len(set(ids(h)))
    assert not set(ids(a1)) & set(ids(b))
    assert not set(ids(a1)) & set(ids(c))


def test_static_slider_initial_and_format_fallback():
    s = static_slider([fake_png(b"1"), fake_png(b"2")], ["relu", "tanh"], initial=1, label="act")
    p = parse(s.to_html())
    (rng,) = p.find("input")
    assert rng["value"] == "1"
    assert "".join(p.text["output"]) == "tanh"
    assert [("display:none" in i["style"]) for i in p.find("img")] == [True, False]
    assert "2 frames" in repr(s) and len(repr(s)) < 100  # short text/plain in the notebook


def test_static_slider_accepts_figures_and_closes_them():
    figs = [tiny_render(v) for v in (1, 2)]
    s = static_slider(figs, [1, 2], dpi=30)
    assert len(s) == 2
    assert png_size(s.frames[0]) == (60, 45)
    assert plt.get_fignums() == []


@pytest.mark.parametrize(
    ("frames", "values", "kwargs", "error"),
    [
        ([], [], {}, ShapeError),
        ([PNG_SIGNATURE], [1, 2], {}, ShapeError),
        ([PNG_SIGNATURE, PNG_SIGNATURE], [1], {}, ShapeError),
        (["not a frame"], [1], {}, InvalidParameterError),
        ([b"GIF89a..."], [1], {}, InvalidParameterError),
        ([PNG_SIGNATURE], [1], {"initial": 1}, InvalidParameterError),
        ([PNG_SIGNATURE], [1], {"label": ""}, InvalidParameterError),
    ],
)
def test_static_slider_validation(frames, values, kwargs, error):
    with pytest.raises(error):
        static_slider(frames, values, **kwargs)


def test_static_slider_dataclass_validates_direct_construction():
    with pytest.raises(ShapeError):
        StaticSlider((PNG_SIGNATURE,), ("1", "2"))


# --------------------------------------------------------------------------- live slider


def recording_render(calls):
    def render(v):
        calls.append(v)
        return tiny_render(1.0)

    return render


def test_live_slider_grid_calls_render_on_change():
    calls: list = []
    w = live_slider(recording_render(calls), [0.1, 1.0, 10.0], label="β")
    assert isinstance(w, ipywidgets.interactive)
    (slider,) = [c for c in w.children if isinstance(c, ipywidgets.SelectionSlider)]
    assert slider.description == "β"
    assert [v for _, v in slider.options] == [0.1, 1.0, 10.0]
    assert calls == [0.1]  # the initial render
    slider.value = 10.0
    assert calls == [0.1, 10.0]
    assert plt.get_fignums() == []


def test_live_slider_continuous_log_and_linear():
    calls: list = []
    w = live_slider(recording_render(calls), continuous=(1e-3, 1e2))
    (slider,) = [c for c in w.children if isinstance(c, ipywidgets.FloatLogSlider)]
    assert (slider.min, slider.max, slider.base) == pytest.approx((-3.0, 2.0, 10))
    slider.value = 2.0
    assert calls[-1] == pytest.approx(2.0)

    calls.clear()
    w = live_slider(recording_render(calls), continuous=(-1.0, 3.0), log=False)
    (slider,) = [c for c in w.children if isinstance(c, ipywidgets.FloatSlider)]
    assert (slider.min, slider.max) == (-1.0, 3.0)
    assert calls == [pytest.approx(1.0)]
    slider.value = 2.5
    assert calls[-1] == pytest.approx(2.5)


def test_live_slider_render_returning_none_is_allowed():
    calls: list = []
    w = live_slider(lambda v: calls.append(v), [1, 2])
    w.children[0].value = 2
    assert calls == [1, 2]


@pytest.mark.parametrize(
    ("values", "kwargs"),
    [
        (None, {}),
        ([1, 2], {"continuous": (1.0, 2.0)}),
        ([], {}),
        (None, {"continuous": (0.0, 1.0)}),  # log slider needs low > 0
        (None, {"continuous": (2.0, 1.0), "log": False}),
        (None, {"continuous": (1.0,)}),
        (None, {"continuous": (1.0, float("nan"))}),
    ],
)
def test_live_slider_validation(values, kwargs):
    with pytest.raises((InvalidParameterError, ShapeError)):
        live_slider(tiny_render, values, **kwargs)


# --------------------------------------------------------------------------- info plane

SMALL = {"figsize": (3.0, 2.0), "dpi": 40}


def two_runs():
    return {
        "a": {"x": [0.0, 1.0, 2.0, 3.0], "y": [0.0, 0.5, 0.7, 0.8], "epoch": [0, 1, 2, 3]},
        "b": {"x": [0.5, 1.5, 4.0], "y": [0.1, 0.3, 0.9], "epoch": [0, 2, 4]},
    }


def frame_count(html: str) -> int:
    return len(re.findall(r'frames\[\d+\] = "data:image/png;base64,', html))


def test_animation_has_one_frame_per_distinct_epoch_and_is_self_contained():
    before = matplotlib.rcParams["animation.embed_limit"]
    html = info_plane_animation(two_runs(), fps=5, **SMALL).data
    assert frame_count(html) == 5  # epochs {0, 1, 2, 3, 4}
    assert "new Array(5)" in html
    assert not re.search(r"https?://", html)
    assert "<link" not in html and "fa fa-" not in html
    assert 'title="Play"' in html and 'type="range"' in html
    assert matplotlib.rcParams["animation.embed_limit"] == before
    assert plt.get_fignums() == []


def test_animation_max_frames_and_determinism():
    runs = {"r": {"x": np.linspace(0, 1, 20), "y": np.linspace(0, 2, 20)}}
    h1 = info_plane_animation(runs, max_frames=3, **SMALL).data
    h2 = info_plane_animation(runs, max_frames=3, **SMALL).data
    assert frame_count(h1) == 3
    assert h1 == h2  # ids come from the content, not uuid4
    frames = re.findall(r'frames\[\d+\] = "data:image/png;base64,([^"]*)"', h1)
    decoded = [base64.b64decode(f.replace("\\\n", "")) for f in frames]
    assert all(png_size(d) == (120, 80) for d in decoded)
    assert decoded[0] != decoded[-1]  # the trajectory grows


def test_info_plane_figure_draws_inputs_markers_and_fixed_limits():
    runs = two_runs()
    ref = ([0.0, 5.0], [0.0, 1.2])
    fig = info_plane_figure(
        runs, reference=ref, reference_label="IB curve", title="T",
        mark_best=lambda t: int(np.argmax(t["y"])) - 1, **SMALL,
    )
    assert isinstance(fig, Figure) and plt.get_fignums() == []
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.lines}
    for name, t in runs.items():
        np.testing.assert_allclose(lines[name].get_xydata(), np.c_[t["x"], t["y"]])
    np.testing.assert_allclose(lines["IB curve"].get_xydata(), np.c_[ref])
    pts = {
        (round(float(ln.get_xdata()[0]), 6), round(float(ln.get_ydata()[0]), 6), ln.get_marker())
        for ln in ax.lines
        if ln.get_visible() and ln.get_marker() in ("o", "s") and len(ln.get_xdata()) == 1
    }
    # final epoch circles and best (argmax - 1) squares, from the inputs directly
    assert {(3.0, 0.8, "o"), (4.0, 0.9, "o"), (2.0, 0.7, "s"), (1.5, 0.3, "s")} <= pts
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    assert x0 < 0.0 and x1 > 5.0 and y0 < 0.0 and y1 > 1.2
    assert ax.get_xlabel() == "I(Z;X) [nats]" and ax.get_ylabel() == "I(Z;Y) [nats]"
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"IB curve", "a", "b", "final epoch", "best epoch"} <= set(legend_texts)


def test_frames_follow_common_epoch_timeline():
    plane = _build(
        two_runs(), xlabel="x", ylabel="y", title=None, reference=None, reference_label=None,
        mark_best=None, color_label="β", xlim=None, ylim=None, figsize=(2, 2), dpi=30,
    )
    plane.show(2.0)
    a, b = plane.lines
    assert len(a.get_xdata()) == 3  # epochs 0, 1, 2
    assert len(b.get_xdata()) == 2  # epochs 0, 2
    assert not plane.finals[0].get_visible()
    plane.show(3.0)
    assert plane.finals[0].get_visible() and not plane.finals[1].get_visible()
    np.testing.assert_allclose(plane.heads[1].get_xydata(), [[1.5, 0.3]])


def test_frame_unit_names_the_counter_and_the_legend():
    plane = _build(
        two_runs(), xlabel="x", ylabel="y", title=None, reference=None, reference_label=None,
        mark_best=lambda t: 0, color_label="β", xlim=None, ylim=None, figsize=(2, 2), dpi=30,
        frame_unit="step",
    )
    plane.show(2.0)
    assert plane.epoch_title.get_text() == "step 2"
    legend = {t.get_text() for t in plane.fig.legends[0].get_texts()}
    assert {"final step", "best step"} <= legend and "final epoch" not in legend
    with pytest.raises(InvalidParameterError, match="frame_unit"):
        _build(two_runs(), xlabel="x", ylabel="y", title=None, reference=None,
               reference_label=None, mark_best=None, color_label="β", xlim=None, ylim=None,
               figsize=(2, 2), dpi=30, frame_unit=" ")


def test_color_values_give_log_colorbar_over_two_decades():
    def runs(betas):
        return {f"β={b}": {"x": [0.0, b], "y": [0.0, 1.0], "color_value": b} for b in betas}

    fig = info_plane_figure(runs((0.01, 0.1, 10.0)), **SMALL)
    assert len(fig.axes) == 2  # plot + colorbar
    assert fig.axes[1].get_yscale() == "log"
    colors = [ln.get_color() for ln in fig.axes[0].lines if ln.get_label().startswith("β=")]
    assert len({tuple(np.round(c, 4)) for c in colors}) == 3
    fig = info_plane_figure(runs((1.0, 2.0, 5.0)), **SMALL)
    assert fig.axes[1].get_yscale() == "linear"


@pytest.mark.parametrize(
    ("trajectories", "kwargs", "error"),
    [
        ({}, {}, ShapeError),
        ([1, 2], {}, InvalidParameterError),
        ({"a": {"x": [1.0, 2.0]}}, {}, InvalidParameterError),
        ({"a": {"x": [1.0, 2.0], "y": [1.0]}}, {}, ShapeError),
        ({"a": {"x": [], "y": []}}, {}, ShapeError),
        ({"a": {"x": [1.0, float("nan")], "y": [1.0, 2.0]}}, {}, NonFiniteError),
        ({"a": {"x": [1.0, 2.0], "y": [1.0, float("inf")]}}, {}, NonFiniteError),
        ({"a": {"x": [[1.0, 2.0]], "y": [[1.0, 2.0]]}}, {}, ShapeError),
        ({"a": {"x": [1.0, 2.0], "y": [1.0, 2.0], "epoch": [3, 3]}}, {}, InvalidParameterError),
        ({"a": {"x": [1.0, 2.0], "y": [1.0, 2.0], "epoch": [1]}}, {}, ShapeError),
        (
            {"a": {"x": [1.0], "y": [1.0], "color_value": 1.0}, "b": {"x": [1.0], "y": [1.0]}},
            {},
            InvalidParameterError,
        ),
        ({"a": {"x": [1.0], "y": [1.0]}}, {"mark_best": lambda t: 5}, InvalidParameterError),
        ({"a": {"x": [1.0], "y": [1.0]}}, {"mark_best": lambda t: 0.5}, InvalidParameterError),
        ({"a": {"x": [1.0], "y": [1.0]}}, {"reference": ([0.0, 1.0], [0.0])}, ShapeError),
        ({"a": {"x": [1.0], "y": [1.0]}}, {"max_frames": 0}, InvalidParameterError),
        ({"a": {"x": [1.0], "y": [1.0]}}, {"fps": 0}, InvalidParameterError),
    ],
)
def test_animation_validation(trajectories, kwargs, error):
    with pytest.raises(error):
        info_plane_animation(trajectories, **kwargs)
    assert plt.get_fignums() == []


def test_info_plane_figure_validation():
    with pytest.raises(NonFiniteError):
        info_plane_figure({"a": {"x": [float("nan")], "y": [0.0]}})
    with pytest.raises(InvalidParameterError):
        info_plane_figure({"a": {"x": [0.0, 1.0], "y": [0.0, 1.0]}}, xlim=(1.0, 0.0))


# --------------------------------------------------------------------------- style


def test_style_is_scoped_and_not_applied_on_import():
    before = matplotlib.rcParams["font.size"]
    with ib_style():
        assert matplotlib.rcParams["font.size"] == IB_RC["font.size"]
    assert matplotlib.rcParams["font.size"] == before
    # Re-running the modules' top-level code (what an import does) leaves rcParams alone.
    snapshot = dict(matplotlib.rcParams)
    for mod in (style_mod, slider_mod, animation_mod, plotting_pkg):
        importlib.reload(mod)
    changed = [k for k, v in matplotlib.rcParams.items() if snapshot[k] != v]
    assert changed == []


def test_live_slider_is_a_note_in_headless_builds(monkeypatch) -> None:
    import matplotlib.pyplot as plt

    from ibcore.plotting import live_slider

    monkeypatch.setenv("IBBOOK_STATIC", "1")
    out = live_slider(lambda b: plt.figure(), continuous=(1.0, 10.0))
    assert "run this notebook in Jupyter" in out.data
    assert not plt.get_fignums()


def test_epoch_counter_avoids_the_corner_the_trajectories_cross() -> None:
    from ibcore.plotting.animation import _emptiest_corner, _Run

    def run(x, y):
        x, y = np.asarray(x, float), np.asarray(y, float)
        return _Run(label="r", x=x, y=y, epoch=np.arange(1.0, len(x) + 1), best=None,
                    color_value=None)

    # points crowd the lower right: the counter moves to the lower left
    crowded = run([0.9, 0.95, 1.0, 0.92], [0.0, 0.05, 0.02, 0.1])
    assert _emptiest_corner([crowded], (0.0, 1.0), (0.0, 1.0))[:2] == (0.02, 0.03)
    # nothing near any corner: it stays in the lower right
    centre = run([0.5, 0.55], [0.5, 0.45])
    assert _emptiest_corner([centre], (0.0, 1.0), (0.0, 1.0))[:2] == (0.98, 0.03)


# --- frame encodings (page weight) -----------------------------------------------------------


def _line_plot_png() -> bytes:
    fig = Figure(figsize=(4, 3), dpi=60)
    ax = fig.add_subplot()
    for k in range(5):
        ax.plot(np.linspace(0, 1, 50), np.sin(np.linspace(0, 6, 50) + k), label=f"run {k}")
    ax.legend()
    ax.set_title("a plot with text")
    return slider_mod._figure_to_png(fig, 60, "png")


def test_encode_frame_palette_is_smaller_same_size_and_close():
    from io import BytesIO

    from PIL import Image

    from ibcore.plotting.frames import encode_frame, image_mime

    png = _line_plot_png()
    small = encode_frame(png, "palette")
    assert image_mime(small) == "image/png" and len(small) < len(png)
    assert png_size(small) == png_size(png) == (240, 180)
    a = np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=float)
    b = np.asarray(Image.open(BytesIO(small)).convert("RGB"), dtype=float)
    assert np.abs(a - b).mean() < 2.0  # a palette of 256 colours keeps a plot's look


def test_encode_frame_webp_is_lossless_and_bad_input_raises():
    from io import BytesIO

    from PIL import Image

    from ibcore.plotting.frames import encode_frame, image_mime

    png = _line_plot_png()
    webp = encode_frame(png, "webp")
    assert image_mime(webp) == "image/webp"
    a = np.asarray(Image.open(BytesIO(png)).convert("RGB"))
    b = np.asarray(Image.open(BytesIO(webp)).convert("RGB"))
    assert np.array_equal(a, b)
    with pytest.raises(InvalidParameterError):
        encode_frame(png, "gif")
    with pytest.raises(InvalidParameterError):
        encode_frame(b"not an image", "palette")
    with pytest.raises(InvalidParameterError):
        image_mime(b"GIF89a....")


def test_slider_and_animation_inline_the_chosen_encoding():
    def render(v):
        fig = Figure(figsize=(2, 1.5), dpi=40)
        fig.add_subplot().plot([0, 1], [0, v])
        return fig

    html = beta_slider(render, [1, 2], encoding="webp").to_html()
    assert html.count("data:image/webp;base64,") == 2
    assert beta_slider(render, [1, 2]).to_html().count("data:image/png;base64,") == 2
    with pytest.raises(InvalidParameterError):
        beta_slider(render, [1, 2], encoding="jpeg2000")
    anim = info_plane_animation(two_runs(), encoding="webp", **SMALL).data
    assert len(re.findall(r'frames\[\d+\] = "data:image/webp;base64,', anim)) == 5
    with pytest.raises(InvalidParameterError):
        info_plane_animation(two_runs(), encoding="bmp", **SMALL)


def test_many_runs_without_colour_scale_get_distinct_styles_and_a_legend():
    runs = {f"model {k}": {"x": [0.0, 1.0 + k], "y": [0.0, 0.5 + 0.1 * k]} for k in range(13)}
    plane = _build(runs, xlabel="x", ylabel="y", title="t", reference=None, reference_label=None,
                   mark_best=None, color_label="β", xlim=None, ylim=None, figsize=(6, 4),
                   dpi=40, frame_unit="epoch")
    looks = {(str(ln.get_color()), ln.get_linestyle(), ln.get_marker()) for ln in plane.lines}
    assert len(looks) == 13  # no two runs look alike
    assert len({str(ln.get_color()) for ln in plane.lines}) == 13  # tab20: 13 distinct colours
    legend = [t.get_text() for t in plane.fig.legends[0].get_texts()]
    assert all(f"model {k}" in legend for k in range(13))
    plt.close(plane.fig)


def test_fractional_epochs_are_shown_to_two_decimals():
    assert animation_mod._fmt_epoch(1.923077) == "1.92"
    assert animation_mod._fmt_epoch(3.0) == "3"
    assert animation_mod._fmt_epoch(2.5) == "2.5"


def test_a_long_title_is_wrapped_clear_of_the_legend():
    plane = _build(two_runs(), xlabel="x", ylabel="y", title="a long title " * 4, reference=None,
                   reference_label=None, mark_best=None, color_label="β", xlim=None, ylim=None,
                   figsize=(5, 3.5), dpi=60, frame_unit="epoch")
    plane.freeze_layout()
    renderer = plane.fig._get_renderer()
    title = plane.title.get_window_extent(renderer)
    assert "\n" in plane.title.get_text()
    assert not title.overlaps(plane.fig.legends[0].get_window_extent(renderer))
    plt.close(plane.fig)
