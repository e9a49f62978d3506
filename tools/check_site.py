#!/usr/bin/env python3
"""Check the built book as a reader sees it, in headless Chromium.

Serves a built HTML directory (default ``_build/html``) on 127.0.0.1, opens each page in headless
Chromium through Selenium and checks, per page:

* it loads without severe console errors (JavaScript exceptions, failed local resources);
  failed loads of *external* resources (CDNs) are reported separately and fail the check too,
  because the book must work offline (``--online`` lets the browser reach the network, and
  ``--allow-external`` downgrades those failures to warnings);
* no image is broken, and no ipywidgets view leaked into the static page (it could never update
  without a kernel: tag its cell ``remove-output`` and show a static slider instead);
* every static slider (``div.ibslider`` from :mod:`ibcore.plotting.slider`) reacts to the arrow
  keys and to setting its value: exactly one frame is visible, it is the selected one, and the
  value label follows;
* every ``to_jshtml`` animation advances when its Play button is pressed;
* MathJax typeset every math element and reported no TeX error, and no TeX is left in the visible
  text outside MathJax output (``\\command``, ``$…$``, ``$$``, ``\\(``, ``\\[``);
* no Markdown table syntax (``| --- |``, a line of ``| a | b |`` cells) is left in the visible text;
* no display equation is wider than its container or runs under its equation number, and no
  table is wider than the text column;
* the visible text uses no internal wording (``issue``, ``session``, ``bar`` other than "error
  bar", ``helper``, ``agent``): the book speaks to readers;
* no link points to a placeholder repository (``github.com/OWNER/…``);
* the HTML file is at most ``--max-html-mb`` (3 MB by default).

Screenshots go to ``<site>/../screenshots/<page>-<step>.png`` (``_build/screenshots`` by default).
Prints a short report; exits 0 when every check passes, 1 when one fails, 2 when the check cannot
run (no site, no Chromium). Needs Debian's ``chromium`` and ``chromium-driver`` packages and
nothing else: :mod:`webdriver_client` talks to ChromeDriver with the standard library.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from webdriver_client import KEYS, Driver, WebDriverError  # noqa: E402 - sibling module

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)
# With --offline (the default) every host name except the local server fails to resolve, so the
# check sees what a reader without network access sees, whether or not this machine is online.
OFFLINE_FLAG = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
SKIP_PAGES = {"genindex.html", "search.html", "py-modindex.html"}
# Console errors of the jupyter-book 1.x theme stack that do not affect a reader: reported as
# warnings unless --strict. sphinx-thebe's inline config script is emitted twice, so the second
# `const THEBE_JS_URL` throws; pydata-sphinx-theme logs a console.error on a fresh profile.
KNOWN_HARMLESS = (
    r"Identifier 'THEBE_JS_URL' has already been declared",
    r"Got invalid theme mode",
)
MAX_HTML_MB = 3.0
"""Largest HTML file a page may be (MB, 10**6 bytes): figures inline as base64 count."""

# Visible-text rules. The text is the page's article with code, MathJax output and equation
# numbers removed (see _VISIBLE_TEXT), so anything TeX-like left in it is shown to the reader raw.
RAW_TEX = (
    (re.compile(r"\$\$"), "$$"),
    (re.compile(r"\\[\[\]()]"), r"\( \) \[ \]"),
    (re.compile(r"\\[A-Za-z]{2,}"), r"TeX command"),
    (re.compile(r"\$[^$]{1,300}?\$"), "$…$"),
)
TABLE_SYNTAX = (
    (re.compile(r"\|\s*:?-{3,}:?\s*\|"), "| --- | rule"),
    (re.compile(r"^[ \t]*\|(?:[^|\n]*\|){2,}[ \t]*$", re.MULTILINE), "row of | cells |"),
)
INTERNAL_WORDS = re.compile(
    r"\b(?:issues?|sessions?|helpers?|agents?)\b|(?<!error )(?<!error-)\bbars?\b", re.IGNORECASE
)
PLACEHOLDER_LINK = re.compile(r"github\.com/OWNER\b|/OWNER/|//(?:www\.)?example\.(?:com|org)\b")


@dataclass
class PageReport:
    """What was checked on one page; ``failures`` empty means the page passed."""

    page: str
    shot: str = ""
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)
    """The classes of defect found (``"raw-tex"``, ``"table-syntax"``, …), for tests and CI."""

    def fail(self, msg: str, kind: str = "other") -> None:
        self.failures.append(msg)
        self.kinds.add(kind)

    def note(self, msg: str) -> None:
        self.notes.append(msg)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (a free port) in a daemon thread; yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def make_driver(args: argparse.Namespace, profile_dir: str) -> Driver:
    """A headless Chromium WebDriver session with a fresh profile and browser-console logging."""
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}",
             f"--window-size={args.width},{args.height}"]
    if not args.online:
        flags.append(OFFLINE_FLAG)
    return Driver(args.chromium, args.chromedriver, flags, args.timeout)


def list_pages(site: Path, only: list[str] | None) -> list[str]:
    """Relative paths of the HTML pages to check (index pages and redirects skipped)."""
    if only:
        return only
    pages = []
    for path in sorted(site.rglob("*.html")):
        rel = path.relative_to(site).as_posix()
        if rel.startswith(("_static/", "_sources/", "_images/")) or path.name in SKIP_PAGES:
            continue
        head = path.read_text(encoding="utf-8", errors="replace")[:2000].lower()
        if 'http-equiv="refresh"' in head:
            continue
        pages.append(rel)
    return pages


def shot_name(page: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", page.removesuffix(".html"))


def wait_for(driver: Any, script: str, timeout: float, poll: float = 0.1) -> Any:
    """Evaluate ``script`` (a JS expression) until it is truthy or ``timeout`` s pass."""
    end = time.monotonic() + timeout
    value = None
    while time.monotonic() < end:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        time.sleep(poll)
    return value


def is_external(message: str, base: str) -> bool:
    urls = re.findall(r"https?://[^\s\"')]+", message)
    return any(not u.startswith(base) for u in urls)


def check_console(
    driver: Any, base: str, rep: PageReport, allow_external: bool, strict: bool
) -> None:
    seen: set[str] = set()
    for entry in driver.get_log("browser"):
        msg = entry.get("message", "")
        if entry.get("level") != "SEVERE" or "favicon.ico" in msg or msg in seen:
            continue
        seen.add(msg)
        if not strict and any(re.search(pat, msg) for pat in KNOWN_HARMLESS):
            rep.warnings.append(f"known theme console error: {msg[-90:]}")
        elif is_external(msg, base):
            text = f"external resource failed: {msg[:160]}"
            if allow_external:
                rep.warnings.append(text)
            else:
                rep.fail(text, "console")
        else:
            rep.fail(f"console error: {msg[:200]}", "console")


def check_static(driver: Any, rep: PageReport) -> None:
    """Broken images, leaked widget views, references to other hosts."""
    broken = driver.execute_script(
        "return [...document.images].filter(i => i.complete && i.naturalWidth === 0)"
        ".map(i => (i.id || i.src.slice(0, 60)));"
    )
    if broken:
        rep.fail(f"{len(broken)} broken image(s): {broken[:3]}", "image")
    n_views = driver.execute_script(
        "return document.querySelectorAll("
        "'script[type=\"application/vnd.jupyter.widget-view+json\"], .jupyter-widgets').length;"
    )
    if n_views:
        rep.fail(
            f"{n_views} ipywidgets view(s) on the static page (never live without a kernel); "
            "tag the cell remove-output",
            "widget",
        )
    external = driver.execute_script(
        "return [...document.querySelectorAll('script[src], link[rel=stylesheet][href]')]"
        ".map(e => e.src || e.href).filter(u => /^https?:/.test(u) && "
        "!u.startsWith(location.origin));"
    )
    if external:
        rep.note("loads from other hosts: " + ", ".join(sorted(set(external))))


def center(driver: Any, element: Any) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    time.sleep(0.1)


_SLIDER_STATE = """
const root = arguments[0];
const imgs = [...root.querySelectorAll('.ibslider-frames img')];
const visible = imgs.map((m, k) => [k, getComputedStyle(m).display !== 'none'])
    .filter(p => p[1]).map(p => p[0]);
const input = root.querySelector('input[type=range]');
const shown = visible.length ? imgs[visible[0]] : null;
return {n: imgs.length, visible: visible, value: Number(input.value),
        min: Number(input.min), max: Number(input.max),
        label: root.querySelector('output').textContent,
        labels: JSON.parse(input.dataset.labels),
        width: shown ? shown.getBoundingClientRect().width : 0,
        natural: shown ? shown.naturalWidth : 0};
"""


def check_size(rep: PageReport, tag: str, shown: float, natural: int) -> None:
    """Warn when a frame is shown so small (or drawn so large) that its labels become hard to read."""
    if natural and (shown < 400 or shown < 0.6 * natural):
        rep.warnings.append(
            f"{tag}: {natural} px image shown {shown:.0f} px wide; text shrinks by "
            f"{shown / natural:.0%} (aim for figures ~700 px wide)"
        )


def _slider_ok(state: dict[str, Any], want: int) -> str | None:
    """Why the slider is not showing frame ``want`` correctly, or None."""
    if state["visible"] != [want]:
        return f"visible frame(s) {state['visible']} after selecting {want}"
    if state["label"] != state["labels"][want]:
        return f"label {state['label']!r}, expected {state['labels'][want]!r}"
    if state["natural"] == 0:
        return f"frame {want} did not decode"
    return None


def check_sliders(driver: Any, rep: PageReport, shots: Path) -> None:
    sliders = driver.find_elements("div.ibslider")
    ids = [s.get_attribute("id") for s in sliders]
    if len(set(ids)) != len(ids):
        rep.warnings.append("two sliders share an id (the same slider shown twice?)")
    for k, root in enumerate(sliders):
        center(driver, root)
        st = driver.execute_script(_SLIDER_STATE, root)
        tag = f"slider {k} ({st['n']} frames)"
        if st["n"] < 1 or st["max"] != st["n"] - 1 or st["min"] != 0:
            rep.fail(f"{tag}: range {st['min']}..{st['max']} does not match {st['n']} frames", "slider")
            continue
        why = _slider_ok(st, st["value"])
        if why:
            rep.fail(f"{tag} before moving: {why}", "slider")
            continue
        root.screenshot(str(shots / f"{rep.shot}-slider{k}-start.png"))
        if st["n"] == 1:
            rep.note(f"{tag}: single frame, not moved")
            continue
        start, start_label = st["value"], st["label"]
        # 1) keyboard, as a reader would: focus the range input and press an arrow key.
        inp = root.find_element("input[type=range]")
        driver.execute_script("arguments[0].focus();", inp)
        key, want = ((KEYS["ARROW_RIGHT"], start + 1) if start < st["max"]
                     else (KEYS["ARROW_LEFT"], start - 1))
        inp.send_keys(key)
        st = driver.execute_script(_SLIDER_STATE, root)
        why = _slider_ok(st, want) if st["value"] == want else f"arrow key left value {st['value']}"
        if why:
            rep.fail(f"{tag} after arrow key: {why}", "slider")
            continue
        # 2) programmatic jump to the far end, dispatching the same 'input' event.
        far = st["max"] if start < st["max"] // 2 + 1 else 0
        driver.execute_script(
            "arguments[0].value = arguments[1];"
            "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
            inp,
            far,
        )
        st = driver.execute_script(_SLIDER_STATE, root)
        why = _slider_ok(st, far)
        if why is None and st["label"] == start_label and st["labels"][far] != start_label:
            why = "label did not change"
        if why:
            rep.fail(f"{tag} after setting value {far}: {why}", "slider")
            continue
        root.screenshot(str(shots / f"{rep.shot}-slider{k}-moved.png"))
        check_size(rep, tag, st["width"], st["natural"])
        rep.note(
            f"{tag}: {start_label!r} -> {st['labels'][want]!r} (key) -> {st['label']!r}; "
            f"frame shown {st['width']:.0f} px wide (PNG {st['natural']} px)"
        )


_ANIM_STATE = """
const root = arguments[0];
const img = root.querySelector('img[id^=_anim_img]');
const slider = root.querySelector('input[id^=_anim_slider]');
const id = img.id.slice('_anim_img'.length);
return {ready: typeof window['anim' + id] !== 'undefined', value: Number(slider.value),
        max: Number(slider.max), src: img.src.length > 64 ? img.src.slice(-64) : img.src,
        width: img.getBoundingClientRect().width, natural: img.naturalWidth};
"""


def check_animations(driver: Any, rep: PageReport, shots: Path) -> None:
    anims = driver.find_elements("div.animation")
    for k, root in enumerate(anims):
        tag = f"animation {k}"
        center(driver, root)
        end = time.monotonic() + 5
        st = driver.execute_script(_ANIM_STATE, root)
        while not st["ready"] and time.monotonic() < end:
            time.sleep(0.1)
            st = driver.execute_script(_ANIM_STATE, root)
        if not st["ready"]:
            rep.fail(f"{tag}: its JavaScript never initialised", "animation")
            continue
        root.screenshot(str(shots / f"{rep.shot}-anim{k}-start.png"))
        first_value, first_src = st["value"], st["src"]
        if st["max"] < 1:
            rep.note(f"{tag}: single frame, not played")
            continue
        play = root.find_element("button[title=Play]")
        play.click()
        end = time.monotonic() + 8
        while time.monotonic() < end:
            st = driver.execute_script(_ANIM_STATE, root)
            if st["value"] >= min(first_value + 2, st["max"]):
                break
            time.sleep(0.1)
        root.find_element("button[title=Pause]").click()
        if st["value"] <= first_value or st["src"] == first_src:
            rep.fail(f"{tag}: Play did not advance the frame (still {st['value']})", "animation")
            continue
        # Jump to the last frame for a screenshot of the complete trajectories.
        root.find_element("button[title='Last frame']").click()
        time.sleep(0.2)
        last = driver.execute_script(_ANIM_STATE, root)
        root.screenshot(str(shots / f"{rep.shot}-anim{k}-last.png"))
        check_size(rep, tag, last["width"], last["natural"])
        rep.note(
            f"{tag}: Play advanced frame {first_value} -> {st['value']} of {st['max']}, "
            f"last frame {last['value']}; shown {st['width']:.0f} px wide (PNG {st['natural']} px)"
        )


_MATH_STATE = """
return {math: document.querySelectorAll('.math').length,
        typeset: document.querySelectorAll('mjx-container').length,
        errors: [...document.querySelectorAll('mjx-merror')]
                .map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 80)),
        mathjax: !!(window.MathJax && window.MathJax.startup)};
"""


def check_math(driver: Any, rep: PageReport, timeout: float) -> None:
    """MathJax loaded and typeset the page's math without a TeX error."""
    has_math = driver.execute_script("return document.querySelectorAll('.math').length > 0;")
    if not has_math:
        return
    # MathJax 3 exposes startup.promise once loaded; wait for it to settle.
    wait_for(driver, "window.MathJax && window.MathJax.startup && window.MathJax.startup.promise",
             timeout)
    try:
        driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "if (window.MathJax && MathJax.startup && MathJax.startup.promise)"
            "  MathJax.startup.promise.then(() => done(true), () => done(false));"
            "else done(false);"
        )
    except WebDriverError:  # a script timeout is reported below as unrendered math
        pass
    st = driver.execute_script(_MATH_STATE)
    if not st["mathjax"]:
        rep.fail(
            f"MathJax did not load ({st['math']} math element(s) left as raw TeX); "
            "serve MathJax from _static (see tools/README.md)",
            "mathjax",
        )
    elif st["errors"]:
        rep.fail(f"{len(st['errors'])} TeX error(s) in MathJax output: {st['errors'][:3]}",
                 "raw-tex")
    else:
        rep.note(f"math: {st['typeset']} formula(s) typeset by MathJax")


# The text a reader sees in the article: code, MathJax output (and its assistive MathML),
# equation numbers and permalink marks removed; block elements end a line.
_VISIBLE_TEXT = r"""
const root = document.querySelector('article.bd-article') || document.querySelector('main')
             || document.body;
const clone = root.cloneNode(true);
clone.querySelectorAll('pre, code, kbd, samp, script, style, textarea, mjx-container, '
                       + '.highlight, .cell_input, .eqno, .headerlink, .MathJax_Preview')
     .forEach(e => e.remove());
clone.querySelectorAll('p, li, div, td, th, tr, dt, dd, h1, h2, h3, h4, h5, h6, br, caption, '
                       + 'figcaption, blockquote, section')
     .forEach(e => e.append('\n'));
return clone.textContent;
"""


def _excerpt(text: str, m: re.Match[str], width: int = 40) -> str:
    lo, hi = max(0, m.start() - width), min(len(text), m.end() + width)
    return " ".join(text[lo:hi].split())


def find_raw_tex(text: str) -> list[str]:
    """TeX left in visible text: ``$$``, ``\\(``/``\\[``, ``\\command``, ``$…$`` (with context)."""
    return [f"{name}: …{_excerpt(text, m)}…" for pat, name in RAW_TEX for m in pat.finditer(text)]


def find_table_syntax(text: str) -> list[str]:
    """Markdown table syntax left in visible text: a ``| --- |`` rule or a row of pipe cells."""
    return [f"{name}: …{_excerpt(text, m)}…"
            for pat, name in TABLE_SYNTAX for m in pat.finditer(text)]


def find_internal_words(text: str) -> list[str]:
    """Internal wording in book text (``issue``, ``session``, ``bar`` …; "error bar" is fine)."""
    return [f"{m.group(0)!r}: …{_excerpt(text, m)}…" for m in INTERNAL_WORDS.finditer(text)]


def _report_found(rep: PageReport, kind: str, what: str, found: list[str]) -> None:
    if found:
        shown = "; ".join(found[:3]) + (f"; and {len(found) - 3} more" if len(found) > 3 else "")
        rep.fail(f"{what} ({len(found)}): {shown}", kind)


def check_text(driver: Any, rep: PageReport) -> None:
    """Raw TeX, Markdown table syntax and internal wording in the visible article text."""
    text = driver.execute_script(_VISIBLE_TEXT) or ""
    _report_found(rep, "raw-tex", "TeX left in the visible text", find_raw_tex(text))
    _report_found(rep, "table-syntax", "Markdown table syntax in the visible text",
                  find_table_syntax(text))
    _report_found(rep, "internal-wording", "internal wording in the book text",
                  find_internal_words(text))


_LAYOUT = r"""
const article = document.querySelector('article.bd-article') || document.querySelector('main')
                || document.body;
const column = article.getBoundingClientRect();
const out = {wide_math: [], under_number: [], wide_tables: [], n_display: 0};
const label = e => (e.closest('[id]') ? '#' + e.closest('[id]').id : '')
                   + ' ' + (e.textContent || '').replace(/\s+/g, ' ').trim().slice(0, 50);
for (const c of document.querySelectorAll('mjx-container[display="true"]')) {
  out.n_display += 1;
  const math = c.querySelector('mjx-math') || c;
  const box = c.parentElement.getBoundingClientRect();
  const m = math.getBoundingClientRect();
  const room = Math.min(box.right, column.right) - Math.max(box.left, column.left);
  if (m.width > room + 1 || m.width > c.clientWidth + 1) {
    out.wide_math.push(`${label(c.parentElement)} (${Math.round(m.width)} px in ${Math.round(room)} px)`);
  }
  const eqno = c.parentElement.querySelector('.eqno');
  if (eqno) {
    const n = eqno.getBoundingClientRect();
    const visibleRight = Math.min(m.right, c.getBoundingClientRect().right);
    const overlaps = n.width > 0 && n.left < m.right - 1 && n.right > m.left + 1
                     && n.top < m.bottom && n.bottom > m.top;
    if (overlaps || m.right > visibleRight + 1) {
      out.under_number.push(`${eqno.textContent.trim()} ${label(c.parentElement)}`);
    }
  }
}
for (const t of article.querySelectorAll('table')) {
  const w = t.getBoundingClientRect().width;
  if (t.scrollWidth > column.width + 1 || w > column.width + 1) {
    out.wide_tables.push(`${label(t)} (${Math.round(Math.max(w, t.scrollWidth))} px in ${Math.round(column.width)} px)`);
  }
}
return out;
"""


def check_layout(driver: Any, rep: PageReport) -> None:
    """Display math wider than its container or under its number; tables wider than the text."""
    st = driver.execute_script(_LAYOUT)
    _report_found(rep, "wide-math", "display math wider than its container", st["wide_math"])
    _report_found(rep, "wide-math", "display math running under its equation number",
                  st["under_number"])
    _report_found(rep, "wide-table", "table wider than the text column", st["wide_tables"])


_LINKS = """
return [...document.querySelectorAll('a[href], link[href], [data-url], form[action]')]
  .map(e => e.getAttribute('href') || e.getAttribute('data-url') || e.getAttribute('action'));
"""


def check_links(driver: Any, rep: PageReport) -> None:
    """No link (launch, repository or any other button) points to a placeholder repository."""
    bad = sorted({h for h in driver.execute_script(_LINKS) if h and PLACEHOLDER_LINK.search(h)})
    _report_found(rep, "placeholder-link", "links to a placeholder repository", bad)


def check_weight(site: Path, page: str, rep: PageReport, max_mb: float) -> None:
    """The HTML file (with every inline figure and frame) is at most ``max_mb`` MB."""
    path = site / page
    if not path.is_file():
        return
    size = path.stat().st_size / 1e6
    if size > max_mb:
        rep.fail(f"HTML is {size:.2f} MB (at most {max_mb:g} MB; put figures and frames in "
                 "smaller or separate image files)", "page-weight")
    else:
        rep.note(f"HTML {size:.2f} MB")


def full_page_screenshot(driver: Any, path: Path, width: int, tile: int = 8000,
                         max_height: int = 80000) -> list[Path]:
    """The whole page (up to ``max_height`` CSS px) at the window's width, via DevTools.

    Long pages are saved in tiles of ``tile`` px: ``<name>.png``, ``<name>2.png``, …
    """
    import base64

    height = min(
        int(driver.execute_script("return document.documentElement.scrollHeight;")), max_height
    )
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    paths = []
    try:
        for k, top in enumerate(range(0, height, tile)):
            clip = {"x": 0, "y": top, "width": width, "height": min(tile, height - top),
                    "scale": 1}
            shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "clip": clip, "captureBeyondViewport": True})
            out = path if k == 0 else path.with_name(f"{path.stem}{k + 1}{path.suffix}")
            out.write_bytes(base64.b64decode(shot["data"]))
            paths.append(out)
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return paths


def check_page(
    driver: Any, base: str, site: Path, page: str, shots: Path, args: argparse.Namespace
) -> PageReport:
    rep = PageReport(page, shot=shot_name(page))
    check_weight(site, page, rep, args.max_html_mb)
    try:
        driver.get(base + page)
    except WebDriverError as exc:
        rep.fail(f"did not load: {str(exc)[:160]}", "load")
        return rep
    wait_for(driver, "document.readyState === 'complete'", args.timeout)
    time.sleep(0.3)
    check_math(driver, rep, args.math_timeout)
    driver.save_screenshot(str(shots / f"{rep.shot}-page.png"))
    full_page_screenshot(driver, shots / f"{rep.shot}-full.png", args.width)
    check_text(driver, rep)
    check_layout(driver, rep)
    check_links(driver, rep)
    check_static(driver, rep)
    check_sliders(driver, rep, shots)
    check_animations(driver, rep, shots)
    check_console(driver, base, rep, args.allow_external, args.strict)
    return rep


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("site", nargs="?", default="_build/html", type=Path,
                   help="built HTML directory (default: _build/html)")
    p.add_argument("--page", action="append", dest="pages",
                   help="check only this page (path relative to the site; repeatable)")
    p.add_argument("--screenshots", type=Path, default=None,
                   help="screenshot directory (default: <site>/../screenshots)")
    p.add_argument("--online", action="store_true",
                   help="let the browser reach the network (default: offline)")
    p.add_argument("--allow-external", action="store_true",
                   help="report failed external resources as warnings, not failures")
    p.add_argument("--strict", action="store_true",
                   help="also fail on the known, harmless theme console errors")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    p.add_argument("--chromedriver",
                   default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=30.0, help="page load timeout (s)")
    p.add_argument("--math-timeout", type=float, default=10.0,
                   help="how long to wait for MathJax (s)")
    p.add_argument("--max-html-mb", type=float, default=MAX_HTML_MB,
                   help=f"largest HTML file a page may be, in MB (default: {MAX_HTML_MB:g})")
    return p.parse_args(argv)


def check_site(site: Path, args: argparse.Namespace) -> list[PageReport]:
    """Open every page of the built ``site`` in headless Chromium; one report per page."""
    shots = (args.screenshots or site.parent / "screenshots").resolve()
    shots.mkdir(parents=True, exist_ok=True)
    pages = list_pages(site, args.pages)
    reports: list[PageReport] = []
    profile = tempfile.mkdtemp(prefix="check_site_profile_")
    try:
        with serve(site) as base, make_driver(args, profile) as driver:
            for page in pages:
                reports.append(check_page(driver, base, site, page, shots, args))
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return reports


def cannot_run(site: Path, args: argparse.Namespace) -> str | None:
    """Why the check cannot run here (no built site, no Chromium), or ``None``."""
    if not (site / "index.html").is_file() and not list(site.glob("*.html")):
        return f"no built site in {site} (run `jupyter-book build` first)"
    for exe in (args.chromium, args.chromedriver):
        if not Path(exe).is_file():
            return f"{exe} not found; apt-get install chromium chromium-driver"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    site: Path = args.site.resolve()
    why = cannot_run(site, args)
    if why:
        print(f"check_site: {why}")
        return 2
    t0 = time.monotonic()
    try:
        reports = check_site(site, args)
    except WebDriverError as exc:
        print(f"check_site: the browser could not be driven: {exc}")
        return 2
    n_fail = 0
    for rep in reports:
        status = "FAIL" if rep.failures else "ok"
        n_fail += bool(rep.failures)
        print(f"[{status}] {rep.page}")
        for line in rep.failures:
            print(f"    FAIL  {line}")
        for line in rep.warnings:
            print(f"    warn  {line}")
        for line in rep.notes:
            print(f"    {line}")
    mode = "online" if args.online else "offline"
    shots = (args.screenshots or site.parent / "screenshots").resolve()
    print(
        f"check_site: {len(reports) - n_fail} of {len(reports)} page(s) passed ({mode}), "
        f"{time.monotonic() - t0:.1f} s; screenshots in {shots}"
    )
    print(json.dumps({"pages": len(reports), "failed": n_fail}))
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
