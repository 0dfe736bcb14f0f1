"""make site: the course as a static website, built with Jupyter Book 2 (mystmd) from executed notebooks.

    python scripts/course_site.py [--notebooks build/notebooks] [--out build/site] [--content-only]

Writes a Jupyter Book project to build/site/: ``myst.yml`` (the table of contents in course
order), ``index.md`` (the README's introduction and setup) and the executed notebooks, each with
its figures and a line of links (open in Colab, download the notebook). Then it builds:

- the HTML site in build/site/_build/html (``jupyter-book build --html``). Jupyter Book fetches
  its HTML theme from api.mystmd.org while building, so this step needs the internet;
- with ``--content-only``, every page's content with its figures (build/site/_build/site:
  ``content/*.json`` and ``public/``), which needs no network. CI builds and checks this part.

Run ``make run`` first: the site shows the notebooks as that run executed them.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from helpers.course import COURSE_REPO, NOTEBOOKS, colab_url  # noqa: E402

THEME_HINT = (
    "Jupyter Book downloads its HTML theme from api.mystmd.org while it builds, and that failed (no internet?). "
    "The pages' content, figures included, is built in {content}; run `make site` again with internet "
    "access for the HTML."
)


def download_url(name: str) -> str:
    """The notebook's file on GitHub, for the "download" link."""
    return f"https://raw.githubusercontent.com/{COURSE_REPO}/main/notebooks/{name}.ipynb"


def with_links(nb, name: str):
    """The executed notebook with a line of links under its title, and without the Colab badge
    markdown image (the link line replaces it, and the site needs no remote image)."""
    first = nb.cells[0]
    first.source = re.sub(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)\n*", "", first.source)
    links = f"[Open in Colab]({colab_url(name)}) · [Download the notebook]({download_url(name)})"
    title, _, rest = first.source.partition("\n")
    first.source = f"{title}\n\n{links}\n{rest}"
    return nb


def index_page() -> str:
    """The README's introduction, notebook table and setup sections, with links that work on the site."""
    readme = (ROOT / "README.md").read_text()
    keep = ["## The two commands", "## Open it in JupyterLab", "## Open it in Colab", "## In a classroom"]
    sections = re.split(r"(?m)^(?=## )", readme)
    page = sections[0] + "".join(s for s in sections[1:] if s.splitlines()[0] in keep)
    return re.sub(r"\(notebooks/(\d\d_\w+)\.ipynb\)", r"(\1.ipynb)", page)


def write_project(notebooks: Path, out: Path) -> None:
    missing = [name for name in NOTEBOOKS if not (notebooks / f"{name}.ipynb").exists()]
    if missing:
        raise SystemExit(f"{notebooks} lacks the executed notebooks {missing}: run `make run` first.")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "index.md").write_text(index_page())
    toc = "\n".join(f"    - file: {name}.ipynb" for name in NOTEBOOKS)
    (out / "myst.yml").write_text(
        "version: 1\nproject:\n  title: DeepLabV3+ in Keras\n"
        f"  github: https://github.com/{COURSE_REPO}\n"
        "  toc:\n    - file: index.md\n" + toc + "\nsite:\n  template: book-theme\n"
    )
    for name in NOTEBOOKS:
        nb = nbformat.read(notebooks / f"{name}.ipynb", as_version=4)
        nbformat.write(with_links(nb, name), out / f"{name}.ipynb")


def _nodes(tree, kind: str) -> list[dict]:
    if isinstance(tree, dict):
        return ([tree] if tree.get("type") == kind else []) + [n for v in tree.values() for n in _nodes(v, kind)]
    if isinstance(tree, list):
        return [n for v in tree for n in _nodes(v, kind)]
    return []


def check_content(out: Path) -> list[str]:
    """Problems with the built content: a missing page, figure, image file or link; empty if none."""
    site = out / "_build" / "site"
    pages = {
        json.loads(p.read_text())["location"]: json.loads(p.read_text()) for p in (site / "content").glob("*.json")
    }
    problems = [] if "/index.md" in pages else ["no index page"]
    for name in NOTEBOOKS:
        page = pages.get(f"/{name}.ipynb")
        if page is None:
            problems.append(f"no page for {name}")
            continue
        nb = nbformat.read(out / f"{name}.ipynb", as_version=4)
        figures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        shown = [o["jupyter_data"]["data"]["image/png"]["path"] for o in _nodes(page["mdast"], "output")
                 if "image/png" in o.get("jupyter_data", {}).get("data", {})]  # fmt: skip
        if len(shown) != figures:
            problems.append(f"{name}: {len(shown)} figures on the page, {figures} in the notebook")
        problems += [
            f"{name}: {path} is not in the site" for path in shown if not (site / "public" / path.lstrip("/")).exists()
        ]
        text = json.dumps(page["mdast"])
        problems += [
            f"{name}: no {what} link"
            for what, url in (("Colab", colab_url(name)), ("download", download_url(name)))
            if url not in text
        ]
    return problems


def build(out: Path, content_only: bool) -> int:
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    command = [str(jupyter_book), "build", "--site" if content_only else "--html", "--ci"]
    result = subprocess.run(command, cwd=out, capture_output=True, text=True)
    content = out / "_build" / "site" / "content"
    pages = sorted(p.stem for p in content.glob("*.json")) if content.exists() else []
    if content_only and pages:
        problems = check_content(out)
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"Site content: {len(pages)} pages in {content.parent}, {'checked' if not problems else 'with problems'}")
        return 1 if problems else 0
    if result.returncode == 0 and not content_only:
        print(f"Site: {out / '_build' / 'html' / 'index.html'}")
        return 0
    sys.stdout.write(result.stdout[-3000:])
    sys.stderr.write(result.stderr[-3000:])
    if "api.mystmd.org" in result.stdout + result.stderr and len(pages) == len(NOTEBOOKS) + 1:
        print(THEME_HINT.format(content=content.parent), file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebooks", default=str(ROOT / "build" / "notebooks"), help="executed notebooks")
    parser.add_argument("--out", default=str(ROOT / "build" / "site"))
    parser.add_argument("--content-only", action="store_true", help="build the pages' content, not the HTML")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    write_project(Path(args.notebooks).resolve(), out)
    return build(out, args.content_only)


if __name__ == "__main__":
    sys.exit(main())
