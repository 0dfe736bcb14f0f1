"""make classroom: the course as an nbgrader course, for teachers who collect and grade notebooks.

Writes build/classroom/, an nbgrader course directory:

    nbgrader_config.py
    source/<notebook>/<notebook>.ipynb    each exercise's solution between nbgrader's BEGIN/END SOLUTION
                                          markers, and its check_... autograder as a locked test cell
                                          worth one point; the <details> solutions are left out
    release/<notebook>/<notebook>.ipynb   the student version, made by `nbgrader generate_assignment`
    instructor-guide.md                   per notebook: what it teaches, run time, expected results,
                                          where learners get stuck, discussion questions, solutions

    python scripts/classroom.py [--out build/classroom] [--no-release]
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = re.compile(r"<details><summary>Solution</summary>\n(.*?)</details>\n*", re.DOTALL)
STUB_LINE = "    raise NotImplementedError  # your code here"
CONFIG = """\
# nbgrader's settings for the DeepLabV3+ course (written by `make classroom`).
c = get_config()  # noqa: F821 - nbgrader provides it
c.CourseDirectory.course_id = "deeplab-course"
c.CourseDirectory.root = {root!r}
# the same stub the course's own notebooks show
c.ClearSolutions.code_stub = {{"python": "# your code here\\nraise NotImplementedError"}}
# notebook 4 trains a model: give every cell the time `make run` gives it
c.ExecutePreprocessor.timeout = 1800
"""


@dataclass
class Exercise:
    number: int
    function: str  # the learner's function, my_...
    checker: str  # its autograder, check_...
    stub_cell: int  # index of the code cell the learner fills in
    statement: str  # the exercise as the learner reads it
    solution: str  # the <details> block's text


def find_exercises(nb) -> list[Exercise]:
    """Each exercise's stub cell (the next code cell after its statement) and its written solution.

    Raises ValueError naming the exercise when its stub does not call exactly one
    ``check_...(my_...)`` or no ``<details>`` solution follows its statement.
    """
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown" or "**Exercise" not in cell.source:
            continue
        number = int(re.search(r"\*\*Exercise (\d+)\.", cell.source).group(1))
        stub = next((j for j in range(i + 1, len(nb.cells)) if nb.cells[j].cell_type == "code"), None)
        calls = re.findall(r"(check_\w+)\((my_\w+)\)", nb.cells[stub].source) if stub is not None else []
        if len(calls) != 1:
            raise ValueError(
                f"Exercise {number}: the code cell after it should call one autograder, check_...(my_...); "
                f"found {len(calls)}. Add the call, e.g. `check_answer(my_answer)`."
            )
        text = "".join(c.source for c in nb.cells[i : stub + 2] if c.cell_type == "markdown")
        solutions = SOLUTION.findall(text[text.index("**Exercise") :])
        if not solutions:
            raise ValueError(
                f"Exercise {number}: no '<details><summary>Solution</summary>' block follows it. "
                "Write the solution there, in a ```python block that defines the my_... function."
            )
        statement = cell.source[cell.source.index("**Exercise") :].split("<details>")[0].strip()
        found.append(Exercise(number, calls[0][1], calls[0][0], stub, statement, solutions[0]))
    return found


def solution_function(solution: str, function: str) -> tuple[list[str], str, list[str]]:
    """``(imports, def line, body lines)`` of ``function`` in the solution's Python block."""
    code = solution[solution.index("```python") + len("```python") : solution.rindex("```")].strip("\n")
    lines = code.splitlines()
    tree = ast.parse(code)
    imports = [ast.get_source_segment(code, n) for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function), None)
    if node is None:
        raise ValueError(f"The solution's code block does not define {function}(); the autograder calls it.")
    header_end = node.body[0].lineno - 1
    while not lines[header_end - 1].rstrip().endswith(":"):  # comments between the signature and the body
        header_end -= 1
    return imports, "\n".join(lines[node.lineno - 1 : header_end]), lines[header_end : node.end_lineno]


def nbgrader_cell(cell, grade_id: str, solution: bool, points: int | None = None):
    meta = {"grade": points is not None, "grade_id": grade_id, "locked": not solution, "schema_version": 3}
    meta["solution"] = solution
    if points is not None:
        meta["points"] = points
    cell.metadata["nbgrader"] = meta
    return cell


def source_version(nb, name: str):
    """The nbgrader source notebook: solutions in marked regions, autograders as graded test cells."""
    nb = copy.deepcopy(nb)
    exercises = find_exercises(nb)
    for exercise in reversed(exercises):  # from the end, so inserting cells keeps earlier indices valid
        cell = nb.cells[exercise.stub_cell]
        imports, header, body = solution_function(exercise.solution, exercise.function)
        lines = cell.source.splitlines()
        start = next(k for k, line in enumerate(lines) if line.startswith(f"def {exercise.function}("))
        call = next(k for k, line in enumerate(lines) if line.startswith(f"{exercise.checker}("))
        missing = [line for line in imports if line not in cell.source]
        region = ["    ### BEGIN SOLUTION", *body, "    ### END SOLUTION"]
        cell.source = "\n".join([*missing, *lines[:start], header, *region, *lines[start + 2 : call]]).rstrip()
        nbgrader_cell(cell, f"{name}_exercise{exercise.number}", solution=True)
        test = nbformat.v4.new_code_cell(
            f'assert {exercise.checker}({exercise.function}), "{exercise.function} does not pass yet: see above."'
        )
        nb.cells.insert(exercise.stub_cell + 1, nbgrader_cell(test, f"{name}_exercise{exercise.number}_test", False, 1))
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = SOLUTION.sub("", cell.source).rstrip()
    nb.cells = [c for c in nb.cells if c.source.strip()]
    return nb


def objectives(nb) -> list[str]:
    text = nb.cells[0].source
    block = text[text.index("## Learning objectives") :].split("\n\n")[1]
    return [line[2:] for line in block.splitlines() if line.startswith("- ")]


def pitfalls(nb) -> list[str]:
    text = next(c.source for c in nb.cells if c.source.startswith("## Common pitfalls"))
    return re.findall(r"^- \*\*(.+?)\*\*", text, re.MULTILINE)


def run_time(name: str, runs: list[dict]) -> str:
    """The notebook's measured execution times, one per recorded run, or "not measured"."""
    found = [
        f"{run['seconds'][name]} s with {Path(run['dataset']).name} data ({run['machine']}, {run['date']})"
        for run in runs
        if name in run.get("seconds", {})
    ]
    return "; ".join(found) or "not measured (run `make run` before `make classroom`)"


def estimate(nb) -> str:
    found = re.search(r"\*\*Run time:\*\* (.+)", nb.cells[0].source)
    return found.group(1) if found else "none given."


def guide_section(nb, name: str, runs: list[dict], results: dict) -> str:
    title = nb.cells[0].source.splitlines()[0].lstrip("# ")
    cpu = run_time(name, runs)
    out = [f"## {title}", "", "**What it teaches.** Learners will:", ""]
    out += [f"- {line}" for line in objectives(nb)]
    out += [
        "",
        f"**Run time.** Measured on a CPU: {cpu}. GPU: not measured (the machines this kit is built on",
        f"have none). The notebook's own estimate: {estimate(nb)}",
        "",
        f"**Expected results.** {results.get(name, EXPECTED[name])}",
        "",
        "**Where learners get stuck** (the notebook's pitfalls, in its words):",
        "",
    ]
    out += [f"- {p}" for p in pitfalls(nb)]
    out += ["", "**Exercises and discussion.** Each exercise is autograded (one point). The solutions below also"]
    out += ["hold the discussion points for its open part: use them as discussion questions in class.", ""]
    for exercise in find_exercises(nb):
        out += [f"### Exercise {exercise.number} (`{exercise.function}`, graded by `{exercise.checker}`)", ""]
        out += [exercise.statement, "", "Solution:", "", exercise.solution.strip(), ""]
    return "\n".join(out)


# what each notebook shows when it works, on any dataset (measured figures replace 04's and 05's)
EXPECTED = {
    "01_data_pipeline": "Each split's images beside their masks, the labels bilinear resizing invents at "
    "every edge, augmented pairs that stay aligned, and the pipeline's speed with and without "
    "caching on the learner's own machine.",
    "02_aspp_walkthrough": "The hand-written atrous conv matches Keras's at every rate shown; the table of "
    "taps shows how many of each rate's taps land on the map; weights and FLOPs counted by hand match "
    "Keras's and the graph's.",
    "03_model": "The reference tutorial's taps fail to build with a shape error; the notebook's model "
    "and the helpers' have the same wiring; the diagram shows the stride-4 and stride-16 taps; "
    "inputs of any size give scores of that size.",
    "04_training": "Loss falls and validation mIoU rises over the run; the best epoch is saved.",
    "05_evaluation": "The streaming mIoU at native resolution, per-class IoU and the confusion matrix; "
    "the per-batch mean differs from the streaming one.",
    "06_prediction_visualisation": "Predictions at each image's own size, overlays with a legend, error "
    "maps, the worst images checked for shifted labels, and class-index PNGs written.",
    "07_scaling_up": "The strategy for the machine at hand; the SavedModel and TensorFlow Lite exports, "
    "each with its largest score error and share of pixels labelled differently from the Keras model.",
}


def measured_results(output_dir: Path) -> dict[str, str]:
    """What the last `make run` measured, phrased for the guide; empty when nothing was run."""
    results = {}
    history, metrics = output_dir / "history.json", output_dir / "metrics.json"
    if history.exists():
        val = json.loads(history.read_text()).get("val_miou", [])
        if val:
            results["04_training"] = (
                f"Validation mIoU climbs over the run; the last `make run` reached {max(val):.3f} at best "
                f"after {len(val)} epochs on the built-in data (CPU, smoke profile)."
            )
    if metrics.exists():
        miou = json.loads(metrics.read_text()).get("miou")
        if miou is not None:
            results["05_evaluation"] = (
                f"The streaming mIoU at native resolution was {miou:.3f} in the last `make run`; the per-batch "
                "figure differs from it, and the notebook says in which direction for the run at hand."
            )
    return results


def nbgrader_env() -> dict[str, str]:
    """This environment, with its scripts on the PATH: nbgrader runs `alembic` by name."""
    scripts = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "build" / "classroom"))
    parser.add_argument("--no-release", action="store_true", help="write the source version only")
    parser.add_argument("--notebooks", nargs="*", help="names of the notebooks to include (default: all)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    (out / "source").mkdir(parents=True, exist_ok=True)
    (out / "nbgrader_config.py").write_text(CONFIG.format(root=str(out)))
    # run times written by `make run` (built-in data) and `make run-real` (real data), where they ran
    times_files = [
        ROOT / "build" / "notebooks" / "run-times.json",
        ROOT / "build" / "real" / "notebooks" / "run-times.json",
    ]
    runs = [json.loads(f.read_text()) for f in times_files if f.exists()]
    results = measured_results(ROOT / "build" / "output")
    sections = []
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        if args.notebooks and path.stem not in args.notebooks:
            continue
        nb = nbformat.read(path, as_version=4)
        folder = out / "source" / path.stem
        folder.mkdir(exist_ok=True)
        nbformat.write(source_version(nb, path.stem), folder / path.name)
        sections.append(guide_section(nb, path.stem, runs, results))
        if not args.no_release:
            subprocess.run(
                [sys.executable, "-m", "nbgrader", "generate_assignment", path.stem, "--force"],
                cwd=out,
                check=True,
                env=nbgrader_env(),
            )
    (out / "instructor-guide.md").write_text(GUIDE_HEAD + "\n\n".join(sections) + "\n")
    print(f"nbgrader course in {out}: source/, release/ and instructor-guide.md")
    return 0


GUIDE_HEAD = """# Instructor guide

`make classroom` made this folder: an nbgrader course directory with one assignment per notebook.

- `source/` holds the instructor's version: every exercise's solution sits between
  `### BEGIN SOLUTION` and `### END SOLUTION`, and the course's own autograder (`check_...`)
  runs in a locked test cell worth one point.
- `release/` is what students get (`nbgrader generate_assignment`): the solutions are replaced by
  `raise NotImplementedError`, and the notebook keeps its explanations, figures code and explorers.
- To grade: collect the students' notebooks into `submitted/<student>/<notebook>/` (or use
  nbgrader's exchange on JupyterHub), then run `nbgrader autograde <notebook>` in this folder and
  `nbgrader export` for a CSV of the marks. Students need the course installed (`pip install -e .`
  or the Colab install line) and the built-in data, which the notebooks make on first use.

"""


if __name__ == "__main__":
    sys.exit(main())
