"""The notebooks follow the course's structure and its output policy (stored and normalised)."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers.course import NOTEBOOKS, colab_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import classroom  # noqa: E402


def load(name):
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def sources(nb, kind=None):
    return [c.source for c in nb.cells if kind is None or c.cell_type == kind]


def test_the_series_is_complete_and_ordered():
    found = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert found == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_opening_has_badge_objectives_prerequisites_and_run_time(name):
    first = load(name).cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert colab_url(name) in first.source
    for words in ("You will learn", "Prerequisites", "Run time", "smoke", "full"):
        assert words in first.source


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_setup_cell_installs_only_on_colab_and_never_tensorflow(name):
    setup = load(name).cells[1].source
    assert 'if "google.colab" in sys.modules:' in setup and "%pip install" in setup
    install_lines = [line for line in setup.splitlines() if "pip install" in line]
    for line in install_lines:
        for package in ("tensorflow", "keras", "ipywidgets"):
            assert package not in line.split("@")[0], f"{name} reinstalls {package} on Colab"
    assert all("!pip" not in s for s in sources(load(name)))
    assert "course.setup()" in load(name).cells[2].source


def test_importing_helpers_shows_no_native_tensorflow_notices():
    """The setup cell imports helpers first, so TensorFlow's C++ start-up lines never show as red stderr."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", "import helpers"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "absl::InitializeLog" not in done.stderr and "oneDNN custom operations" not in done.stderr, done.stderr


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_setup_cell_starts_tensorflow_through_helpers(name):
    setup = load(name).cells[1].source
    assert "\nimport helpers" in setup and setup.index("import helpers") < setup.index("import tensorflow")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_teaching_structure(name):
    nb = load(name)
    markdown = "\n".join(sources(nb, "markdown"))
    for heading in ("## Common pitfalls", "## Exercises", "## Summary", "## References"):
        assert heading in markdown, f"{name} lacks {heading}"
    assert markdown.count("<details><summary>Solution</summary>") >= 3
    assert "arXiv:1802.02611" in markdown, f"{name} does not cite DeepLab v3+"  # every lesson builds on it
    index = NOTEBOOKS.index(name)
    if index + 1 < len(NOTEBOOKS):
        assert f"({NOTEBOOKS[index + 1]}.ipynb)" in markdown


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_widget_explorer_has_a_static_twin(name):
    code = sources(load(name), "code")
    widget_cells = [i for i, s in enumerate(code) if "interactive_output" in s]
    assert widget_cells, f"{name} has no ipywidgets explorer"
    for i in widget_cells:
        assert code[i].startswith("# NBVAL_IGNORE_OUTPUT")
        assert "if course.live_frontend():" in code[i], f"{name}: explorer built even when headless"
        function = code[i].split("interactive_output(")[1].split(",")[0].strip()
        before = "\n".join(code[:i])
        assert f"{function}(" in before.replace(f"def {function}(", ""), f"{name}: {function} is never drawn statically"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_output_policy_checked_cells_only(name):
    nb = load(name)
    checked = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if cell.source.startswith("# NBVAL_CHECK_OUTPUT"):
            checked += 1
            assert cell.outputs, f"{name}: a checked cell has no stored output"
            assert isinstance(cell.execution_count, int)
            for out in cell.outputs:
                assert out.output_type in ("stream", "execute_result")
                assert out.output_type != "stream" or out.name == "stdout"
        else:
            assert not cell.outputs and cell.execution_count is None, f"{name}: output stored in an unchecked cell"
        assert not cell.metadata
    assert checked >= 3
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_notebooks_are_normalised():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "normalize_notebooks.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout


def test_live_frontend_is_off_when_headless(monkeypatch):
    from helpers import course

    monkeypatch.setenv("DEEPLAB_HEADLESS", "1")
    assert course.live_frontend() is False
    monkeypatch.delenv("DEEPLAB_HEADLESS")
    assert course.live_frontend() is False  # plain Python, no kernel: nobody to show widgets to


def test_missing_ipywidgets_gives_one_sentence_and_no_explorer(monkeypatch, capsys):
    from helpers import course

    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import now raises ImportError
    assert course.optional_widgets() is None
    out = capsys.readouterr().out
    assert "ipywidgets is not installed" in out and out.count("\n") == 1
    monkeypatch.delenv("DEEPLAB_HEADLESS", raising=False)
    monkeypatch.setattr(course.importlib.util, "find_spec", lambda name: None)
    assert course.live_frontend() is False


def test_hardware_note_warns_when_the_full_profile_meets_a_cpu(monkeypatch):
    import tensorflow as tf

    from helpers import course
    from helpers.config import load_settings

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    smoke = course.hardware_note(load_settings({"DEEPLAB_PRECISION": "float32"}))
    assert "no GPU" in smoke and "float32" in smoke and "slow" not in smoke
    full = course.hardware_note(load_settings({"DEEPLAB_PROFILE": "full"}))
    assert "sized for a GPU" in full and "DEEPLAB_PROFILE=smoke" in full


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_exercise_has_an_autograder_that_its_solution_passes(name, capsys):
    import math

    import numpy as np
    import tensorflow as tf

    from helpers import exercises, metrics

    found = classroom.find_exercises(load(name))  # raises, naming the exercise, if one lacks either
    assert len(found) >= 3, f"{name} has {len(found)} exercises"
    for exercise in found:
        imports, header, body = classroom.solution_function(exercise.solution, exercise.function)
        namespace = {"np": np, "tf": tf, "math": math, "metrics": metrics}
        exec("\n".join([*imports, header, *body]), namespace)
        passed = getattr(exercises, exercise.checker)(namespace[exercise.function])
        assert passed is True, f"{name}, Exercise {exercise.number}: " + capsys.readouterr().out


def test_a_malformed_exercise_is_named():
    def notebook(*cells):
        return nbformat.v4.new_notebook(cells=list(cells))

    statement = nbformat.v4.new_markdown_cell("**Exercise 2.** Do it.")
    solution = nbformat.v4.new_markdown_cell(
        "<details><summary>Solution</summary>\n\n```python\ndef my_it():\n    return 1\n```\n</details>\n"
    )
    with pytest.raises(ValueError, match="Exercise 2: the code cell after it should call one autograder"):
        classroom.find_exercises(notebook(statement, nbformat.v4.new_code_cell("my_it()"), solution))
    with pytest.raises(ValueError, match="Exercise 2: no '<details>"):
        classroom.find_exercises(notebook(statement, nbformat.v4.new_code_cell("check_it(my_it)")))
    (found,) = classroom.find_exercises(notebook(statement, nbformat.v4.new_code_cell("check_it(my_it)"), solution))
    assert (found.number, found.function, found.checker) == (2, "my_it", "check_it")
    with pytest.raises(ValueError, match="does not define my_other"):
        classroom.solution_function(found.solution, "my_other")
