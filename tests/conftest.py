import fcntl
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

# A short run of the course's training that many tests share (made once per `make test`, see `course_run`).
COURSE_RUN = {
    "DEEPLAB_IMAGE_SIZE": "48",
    "DEEPLAB_BATCH_SIZE": "4",
    "DEEPLAB_EPOCHS": "4",
    "DEEPLAB_TRAIN_MINUTES": "none",
    "DEEPLAB_BACKBONE": "mobilenetv2",
    "DEEPLAB_PRECISION": "float32",
}


def pytest_collection_modifyitems(items):
    """Tests marked slow or long first: two test processes then finish at about the same time."""
    items.sort(key=lambda item: not any(item.get_closest_marker(mark) for mark in ("slow", "long")))


def made_once(tmp_path_factory, name: str, make) -> Path:
    """The folder ``name``, filled by ``make(folder)`` once for all test processes (pytest-xdist workers).

    The first process to ask makes it while the others wait for the lock; they then read it.
    """
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # the workers' own folders share this parent
    folder, made = root / name, root / f"{name}.made"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not made.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed attempt left
            make(folder)
            made.touch()
    return folder


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """A small synthetic dataset shared by the tests that only read it."""
    from helpers import synthetic

    return made_once(tmp_path_factory, "synthetic", lambda folder: synthetic.generate_dataset(folder, 12, 4, 4, seed=7))


def course_run_settings(data_dir: Path, output_dir: Path, **extra):
    """The settings of :data:`COURSE_RUN` on ``data_dir``, writing to ``output_dir``."""
    from helpers.config import load_settings

    return load_settings(
        {**COURSE_RUN, "DEEPLAB_DATA_DIR": str(data_dir), "DEEPLAB_OUTPUT_DIR": str(output_dir), **extra}
    )


@pytest.fixture(scope="session")
def course_run(synthetic_dir, tmp_path_factory):
    """The settings of one finished course run on ``synthetic_dir``, trained once for all test processes.

    Read its outputs; write elsewhere (``dataclasses.replace(course_run, output_dir=...)``).
    """
    from helpers import train

    def run(folder: Path) -> None:
        train.train(course_run_settings(synthetic_dir, folder), verbose=0)

    return course_run_settings(synthetic_dir, made_once(tmp_path_factory, "course-run", run))


@pytest.fixture(scope="session")
def course_model(course_run):
    """The trained model of :func:`course_run`, loaded once per test process."""
    from helpers import artifacts

    return artifacts.load_model(course_run.output_dir / "model.keras")


@pytest.fixture
def clean_env(monkeypatch):
    """No DEEPLAB_* variables from the developer's shell leak into a test."""
    for key in list(os.environ):
        if key.startswith("DEEPLAB_"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture
def tiny_model():
    """A factory of one-convolution segmenters: for tests of the training loop, not of DeepLabV3+.

    Traced in a fraction of a second, where the course's model takes many seconds.
    """
    import keras

    def make(num_classes: int) -> keras.Model:
        inputs = keras.Input((None, None, 3))
        scaled = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
        return keras.Model(inputs, keras.layers.Conv2D(num_classes, 3, padding="same", name="logits")(scaled))

    return make
