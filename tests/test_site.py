"""make site: Jupyter Book 2 builds a page per notebook, in course order, with every figure and the links."""

import base64
import io
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from helpers.course import NOTEBOOKS, colab_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import course_site  # noqa: E402

JUPYTER_BOOK = Path(sys.executable).parent / "jupyter-book"
pytestmark = pytest.mark.skipif(
    not JUPYTER_BOOK.exists() or not shutil.which("node"), reason="needs jupyter-book and node"
)


def png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def executed_notebook(name: str, figures: int):
    badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(name)})"
    cells = [nbformat.v4.new_markdown_cell(f"# {name}\n\n{badge}\n\nSome prose.")]
    for k in range(figures):
        cell = nbformat.v4.new_code_cell(f"plot({k})")
        cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": png(), "text/plain": "<Figure>"})]
        cells.append(cell)
    return nbformat.v4.new_notebook(cells=cells)


def test_site_content_has_every_page_figure_and_link(tmp_path):
    executed = tmp_path / "executed"
    executed.mkdir()
    for k, name in enumerate(NOTEBOOKS):
        nbformat.write(executed_notebook(name, figures=k % 3 + 1), executed / f"{name}.ipynb")
    out = tmp_path / "site"
    script = ROOT / "scripts" / "course_site.py"
    command = [sys.executable, str(script), "--notebooks", str(executed), "--out", str(out), "--content-only"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert course_site.check_content(out) == []
    toc = (out / "myst.yml").read_text()
    assert [line.split("file: ")[1] for line in toc.splitlines() if "file: " in line] == [
        "index.md",
        *(f"{name}.ipynb" for name in NOTEBOOKS),
    ]
    assert "## The two commands" in (out / "index.md").read_text()

    for picture in (out / "_build" / "site" / "public").glob("*.png"):
        picture.unlink()  # a figure the page shows but the site lacks is reported
    assert any("is not in the site" in problem for problem in course_site.check_content(out))


def test_missing_executed_notebooks_are_named(tmp_path):
    with pytest.raises(SystemExit, match="run `make run` first"):
        course_site.write_project(tmp_path, tmp_path / "site")
