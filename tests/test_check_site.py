"""The site checker (tools/check_site.py) catches every defect class it claims to.

Small hand-made HTML pages, one per defect class, are opened in headless Chromium by the real
checker; each must fail with its class, and a clean page (with the same characters inside code,
where they are fine) must pass. The text rules are also tested directly. The browser tests need
Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); without them they skip.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))
import check_site  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_BROWSER = Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()

PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title>
<style>body {{ margin: 0; }} article {{ width: 700px; }} .eqbox {{ position: relative; }}
.eqno {{ position: absolute; right: 0; top: 0; }}</style></head>
<body><main><article class="bd-article">{body}</article></main></body></html>
"""

CLEAN = r"""
<h1>Clean</h1>
<p>Text with error bars, a table and a code block, nothing raw.</p>
<table><tr><th>β</th><th>rate</th></tr><tr><td>1</td><td>0.5</td></tr></table>
<pre>cost = $x$ + \mathbb  # | --- | inside code is fine
| a | b | c |</pre>
<p>Inline <code>$HOME</code> and <code>\alpha</code> in code.</p>
<div><mjx-container display="true" style="display: block"><mjx-math
  style="display: inline-block; width: 300px">x</mjx-math></mjx-container></div>
<a href="https://github.com/someone/ibbook">a real repository</a>
"""

DEFECTS = {
    "raw-tex": r"<p>the expected distortion $\mathbb{E}_\xi\bigl[-\log q(y)\bigr]$ is</p>",
    "raw-tex-dollars": r"<p>a formula $x + y$ left as text</p>",
    "table-syntax": "<p>| β | H[Y | Z] |\n| --- | --- |\n| 1 | 0.5 |</p>",
    "table-rows": "<p>| a | b | c |\n| 1 | 2 | 3 |</p>",
    "wide-math": """<div><mjx-container display="true" style="display: block; overflow-x: auto">
        <mjx-math style="display: inline-block; width: 2400px">x</mjx-math></mjx-container></div>""",
    "wide-math-number": """<div class="eqbox"><span class="eqno">(30)</span>
        <mjx-container display="true" style="display: block"><mjx-math
        style="display: inline-block; width: 690px">x</mjx-math></mjx-container></div>""",
    "wide-table": '<table style="width: 1500px"><tr><td>wide</td></tr></table>',
    "internal-wording": "<p>The reproduction met bar 0.98 this session.</p>",
    "placeholder-link": '<a href="https://github.com/OWNER/ibbook">repository</a>',
    "page-weight": "<p>heavy</p><!-- " + "x" * 3_100_000 + " -->",
}
KIND = {
    "raw-tex": "raw-tex",
    "raw-tex-dollars": "raw-tex",
    "table-syntax": "table-syntax",
    "table-rows": "table-syntax",
    "wide-math": "wide-math",
    "wide-math-number": "wide-math",
    "wide-table": "wide-table",
    "internal-wording": "internal-wording",
    "placeholder-link": "placeholder-link",
    "page-weight": "page-weight",
}


def test_text_rules_find_each_defect() -> None:
    assert check_site.find_raw_tex(r"shows $\mathbb{E}\xi\bigl[ raw")
    assert check_site.find_raw_tex("a $x$ b")
    assert check_site.find_raw_tex("a $$ x $$ b")
    assert check_site.find_raw_tex(r"a \( x \) b")
    assert check_site.find_table_syntax("| a | b |\n| --- | ---: |")
    assert check_site.find_table_syntax("text\n| 1 | 2 | 3 |\nmore")
    assert check_site.find_internal_words("The issue's bars")
    assert check_site.find_internal_words("this session ran the smoke profile")
    assert check_site.find_internal_words("bar 0.98: not met")


def test_text_rules_pass_clean_prose() -> None:
    prose = ("The rate drops with β (error bars: one standard deviation); the price is 5 $ "
             "and a pipe | alone is fine. Barely, embargo and sidebar are words.")
    assert check_site.find_raw_tex(prose) == []
    assert check_site.find_table_syntax(prose) == []
    assert check_site.find_internal_words(prose) == []


def test_placeholder_pattern() -> None:
    assert check_site.PLACEHOLDER_LINK.search(
        "https://colab.research.google.com/github/OWNER/ibbook/blob/main/book/x.ipynb")
    assert not check_site.PLACEHOLDER_LINK.search("https://github.com/ibbook-org/ibbook")


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, check_site.PageReport]:
    if not HAVE_BROWSER:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install them)")
    site = tmp_path_factory.mktemp("site")
    (site / "index.html").write_text(PAGE.format(body=CLEAN), encoding="utf-8")
    for name, body in DEFECTS.items():
        (site / f"{name}.html").write_text(PAGE.format(body=body), encoding="utf-8")
    args = check_site.parse_args(
        [str(site), "--screenshots", str(site.parent / "shots"), "--chromium", CHROMIUM,
         "--chromedriver", CHROMEDRIVER, "--timeout", "20"])
    return {r.page: r for r in check_site.check_site(site, args)}


def test_clean_page_passes(reports: dict[str, check_site.PageReport]) -> None:
    rep = reports["index.html"]
    assert rep.failures == [], rep.failures


@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_each_defect_is_caught(reports: dict[str, check_site.PageReport], name: str) -> None:
    rep = reports[f"{name}.html"]
    assert KIND[name] in rep.kinds, (rep.kinds, rep.failures)


def test_cannot_run_without_site(tmp_path: Path) -> None:
    args = check_site.parse_args([str(tmp_path)])
    assert "no built site" in (check_site.cannot_run(tmp_path, args) or "")
    assert check_site.main([str(tmp_path)]) == 2
