"""Where a run's products live, written so that an interrupted run never leaves half a file.

``<output_dir>/model.keras``   the trained model (``keras.saving.load_model`` after ``import helpers``)
``<output_dir>/history.json``  per-epoch losses and metrics
``<output_dir>/metrics.json``  evaluation: mIoU, per-class IoU, pixel accuracy, split, number of images
``<output_dir>/resume/``       an unfinished run's last epoch (weights, optimizer, schedule); gone once it finishes
``<output_dir>/tensorboard/``  TensorBoard logs: the curves, and one validation prediction per epoch
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
RESUME_DIR = "resume"
TENSORBOARD_DIR = "tensorboard"


def jsonable(value):
    """``value`` with paths, numpy scalars and non-finite floats made plain JSON."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file beside ``path``, then rename it into place; a failure leaves nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for text (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: dict) -> Path:
    """Atomic JSON write; NaN and numpy scalars become plain JSON values."""
    return atomic_write_text(path, json.dumps(jsonable(data), indent=2) + "\n")


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


class ModelMismatchError(ValueError):
    """A saved model was trained for other classes than the dataset in use."""


def model_card_path(model_path: str | Path) -> Path:
    """``model.json`` beside ``model.keras``: the classes the model was trained on."""
    return Path(model_path).with_suffix(".json")


def save_model(model, path: str | Path, classes: tuple[str, ...] | None = None) -> Path:
    """Save the model for inference, atomically: architecture and weights, no optimizer state.

    Adam keeps two extra copies of every weight, which would triple the file
    (about 480 MB instead of 160 MB for ResNet50 DeepLabV3+). The saved model loads
    uncompiled; call ``compile`` on it to train further. The file is written under a
    temporary name and renamed, so an interrupted save never leaves half a model.
    ``classes`` (the dataset's class names) go to :func:`model_card_path`, so a later
    run on another dataset can refuse the model instead of mislabelling every pixel.
    """
    path = Path(path)
    if classes is not None:
        write_json(model_card_path(path), {"classes": list(classes)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}-partial{path.suffix}")
    try:
        _uncompiled_view(model).save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def same_layers(model, model_class=None):
    """A new functional model (of ``model_class``, default ``keras.Model``) over ``model``'s layers and weights.

    Nothing is copied: the new model is another view of the same graph, never compiled.
    """
    import keras

    def bare(tensors):  # a single input or output as itself, not as a list of one
        return tensors[0] if len(tensors) == 1 else tensors

    return (model_class or keras.Model)(bare(model.inputs), bare(model.outputs), name=model.name)


def _uncompiled_view(model):
    """The same layers and weights as a never-compiled functional model: saving it leaves the optimizer out.

    Keras's ``.keras`` format has no ``include_optimizer`` switch. A model that is not
    functional (a subclass) is returned as it is and saved with its optimizer.
    """
    try:
        return same_layers(model)
    except (AttributeError, TypeError, ValueError):
        return model


def output_paths(output_dir: str | Path) -> dict[str, Path]:
    output_dir = Path(output_dir)
    return {
        "model": output_dir / MODEL_FILE,
        "history": output_dir / HISTORY_FILE,
        "metrics": output_dir / METRICS_FILE,
        "resume": output_dir / RESUME_DIR,
        "tensorboard": output_dir / TENSORBOARD_DIR,
    }


def load_model(path: str | Path, info=None):
    """Load a model saved by the course (its custom layers are registered by ``import helpers``).

    With ``info`` (the dataset's :class:`helpers.data.DatasetInfo`), a model whose number of
    output classes, or whose recorded class names, differ from the dataset's is refused
    with :class:`ModelMismatchError`.
    """
    import keras

    from helpers import model as _model  # noqa: F401 - registers the custom layers

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: train a model first (notebook 04 or `python -m helpers train`)."
        )
    model = keras.saving.load_model(path)
    if info is not None:
        check_model_matches(model, path, info)
    return model


def check_model_matches(model, path: Path, info) -> None:
    """Raise :class:`ModelMismatchError` if ``model`` was not trained for ``info``'s classes."""
    outputs = int(model.output_shape[-1])
    card = model_card_path(path)
    trained_on = tuple(read_json(card)["classes"]) if card.is_file() else None
    if outputs == info.num_classes and trained_on in (None, tuple(info.classes)):
        return
    what = f"the classes {list(trained_on)}" if trained_on else f"{outputs} classes"
    raise ModelMismatchError(
        f"{path} was trained on {what}, but this dataset has {info.num_classes}: {list(info.classes)}. "
        "Train a model on this dataset (notebook 04 or `python -m helpers train`), or set DEEPLAB_OUTPUT_DIR "
        "to the folder of a model trained on it."
    )
