"""make classroom: nbgrader itself generates the student version and autogrades solved and unsolved copies."""

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers.course import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import classroom  # noqa: E402

pytest.importorskip("nbgrader")
NAME = "02_aspp_walkthrough"  # a notebook that runs in well under a minute


def grading_cells(nb, kind):
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get(kind)]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_source_version_marks_every_solution_and_grades_every_exercise(name):
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    source = classroom.source_version(nb, name)
    solutions, tests = grading_cells(source, "solution"), grading_cells(source, "grade")
    assert len(solutions) == len(tests) == len(classroom.find_exercises(nb)) >= 3
    for solution, test in zip(solutions, tests):
        assert "### BEGIN SOLUTION" in solution.source and "raise NotImplementedError" not in solution.source
        assert test.source.startswith("assert check_") and test.metadata["nbgrader"]["points"] == 1
    assert not any("<summary>Solution</summary>" in c.source for c in source.cells)
    assert len({c.metadata["nbgrader"]["grade_id"] for c in solutions + tests}) == 2 * len(tests)


@pytest.mark.slow
def test_nbgrader_releases_and_autogrades(tmp_path):
    env = {**classroom.nbgrader_env(), "DEEPLAB_HEADLESS": "1"}
    course = tmp_path / "classroom"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "classroom.py"), "--out", str(course), "--notebooks", NAME],
        check=True,
        env=env,
    )
    release = nbformat.read(course / "release" / NAME / f"{NAME}.ipynb", as_version=4)
    text = "\n".join(c.source for c in release.cells)
    assert "BEGIN SOLUTION" not in text and "(kernel_size - 1) * rate + 1" not in text
    assert text.count("raise NotImplementedError") == 3
    assert "<summary>Solution</summary>" not in text
    assert (course / "instructor-guide.md").read_text().count("### Exercise") == 3

    for student, folder in (("solved", "source"), ("unsolved", "release")):
        target = course / "submitted" / student / NAME
        target.mkdir(parents=True)
        shutil.copy(course / folder / NAME / f"{NAME}.ipynb", target)
    subprocess.run([sys.executable, "-m", "nbgrader", "autograde", NAME, "--force"], cwd=course, check=True, env=env)

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        solved = gradebook.find_submission(NAME, "solved")
        unsolved = gradebook.find_submission(NAME, "unsolved")
        assert solved.max_score == 3
        assert solved.score == 3
        assert unsolved.score == 0
