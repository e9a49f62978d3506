"""Every notebook of the book executes end to end at the smoke profile (papermill)."""

from __future__ import annotations

from pathlib import Path

import papermill as pm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_notebooks() -> list[Path]:
    """The .ipynb files that _toc.yml puts in the book."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def add(entries: list[dict]) -> None:  # chapters and their sections (the exercise pages)
        for entry in entries:
            files.append(entry["file"])
            add(entry.get("sections", []))

    for part in toc.get("parts", []):
        add(part.get("chapters", []))
    return [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").exists()]


NOTEBOOKS = toc_notebooks()


def test_toc_lists_notebooks() -> None:
    assert len(NOTEBOOKS) >= 2


@pytest.mark.notebook
@pytest.mark.parametrize(
    "notebook", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT / "book").with_suffix("").as_posix()
)
def test_notebook_runs_at_smoke_profile(
    notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IBBOOK_STATIC", "1")  # headless: live widgets become a note
    params = {}
    source = notebook.read_text()
    if '"parameters"' in source:  # chapters take the profile; static pages take nothing
        params = {"profile": "smoke"}
    pm.execute_notebook(
        str(notebook),
        str(tmp_path / notebook.name),
        parameters=params,
        cwd=str(notebook.parent),
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=300,
    )


def test_notebooks_are_stored_without_outputs() -> None:
    import json

    for nb_path in NOTEBOOKS:
        nb = json.loads(nb_path.read_text())
        dirty = [i for i, c in enumerate(nb["cells"]) if c.get("outputs") or c.get("execution_count")]
        assert not dirty, f"{nb_path.name}: cells {dirty} hold outputs; clear them before committing"
