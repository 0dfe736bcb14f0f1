"""Apply the course's notebook output policy ("stored and normalised").

Cells marked ``# NBVAL_CHECK_OUTPUT`` keep their text output (stdout and plain-text
results; it is what nbval compares). Every other cell is stored without output.
Execution counts are renumbered, cell metadata is dropped, and the kernelspec is python3.

    python scripts/normalize_notebooks.py                  # normalise notebooks/ in place
    python scripts/normalize_notebooks.py --from build/notebooks   # take checked outputs from executed copies
    python scripts/normalize_notebooks.py --check          # exit 1 if anything would change
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CHECK = "# NBVAL_CHECK_OUTPUT"


def text_outputs(outputs: list) -> list:
    """Stdout merged into one stream, plus plain-text results; no stderr, images or widgets."""
    kept, stdout = [], []
    for out in outputs:
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            stdout.append(out["text"])
        elif out.get("output_type") == "execute_result" and "text/plain" in out.get("data", {}):
            kept.append(nbformat.v4.new_output("execute_result", data={"text/plain": out["data"]["text/plain"]}))
    if stdout:
        kept.insert(0, nbformat.v4.new_output("stream", name="stdout", text="".join(stdout)))
    return kept


def normalise(nb, executed=None):
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    source_of = {}
    if executed is not None:
        done = [c for c in executed.cells if c.cell_type == "code"]
        if len(done) != len(code_cells):
            raise SystemExit("the executed copy has a different number of code cells; execute it again")
        source_of = {id(c): d for c, d in zip(code_cells, done)}
    count = 0
    for cell in nb.cells:
        cell.metadata = {}
        if cell.cell_type != "code":
            continue
        if cell.source.lstrip().startswith(CHECK):
            count += 1
            cell.execution_count = count
            outputs = source_of[id(cell)].outputs if id(cell) in source_of else cell.outputs
            cell.outputs = text_outputs(outputs)
            for out in cell.outputs:
                if out.output_type == "execute_result":
                    out.execution_count = count
        else:
            cell.execution_count = None
            cell.outputs = []
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
        "accelerator": "GPU",
    }
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", help="folder of executed copies to take checked outputs from")
    parser.add_argument("--check", action="store_true", help="only report notebooks that are not normalised")
    args = parser.parse_args()
    dirty = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        before = path.read_text()
        nb = nbformat.reads(before, as_version=4)
        executed = None
        if args.source:
            executed = nbformat.read(Path(args.source) / path.name, as_version=4)
        after = nbformat.writes(normalise(nb, executed)) + "\n"
        if after != before:
            dirty.append(path.name)
            if not args.check:
                path.write_text(after)
    if args.check and dirty:
        print("not normalised:", ", ".join(dirty), "- run: python scripts/normalize_notebooks.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
