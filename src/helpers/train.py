"""Compile and fit with the course's defaults: loss, metric, learning-rate schedule, callbacks.

``train(settings)`` is what notebook 04 and ``python -m helpers train`` run. It writes
``model.keras`` (the best epoch by validation mIoU) and ``history.json`` to the
output directory, stops early when validation mIoU stalls, and respects the
optional wall-time cap.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import keras

from helpers import artifacts, data
from helpers.config import Settings
from helpers.model import build_deeplabv3_plus


def make_loss(ignore_index: int | None) -> keras.losses.Loss:
    """Per-pixel cross-entropy on logits; pixels labelled ``ignore_index`` contribute nothing."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore_index)


def make_miou_metric(num_classes: int, ignore_index: int | None) -> keras.metrics.Metric:
    """Keras's streaming mIoU (confusion matrix over the epoch); it argmaxes the scores itself."""
    return keras.metrics.MeanIoU(num_classes, ignore_class=ignore_index, sparse_y_pred=False, name="miou")


def poly_learning_rate(progress: float, base_lr: float, warmup: float = 0.05, power: float = 0.9) -> float:
    """The paper's "poly" schedule with a short linear warm-up; ``progress`` runs from 0 to 1."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return base_lr * (0.1 + 0.9 * progress / warmup)
    return base_lr * (1 - (progress - warmup) / (1 - warmup)) ** power


class PolyLearningRate(keras.callbacks.Callback):
    """Sets the learning rate before every step from the progress of training.

    Progress is steps done over steps planned or, with a wall-time cap, time used
    over time allowed, whichever is further: the schedule always reaches its end.
    """

    def __init__(self, base_lr: float, total_steps: int, time_limit_s: float | None = None) -> None:
        super().__init__()
        self.base_lr, self.total_steps, self.time_limit_s = base_lr, max(total_steps, 1), time_limit_s
        self.step = 0

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_train_batch_begin(self, batch, logs=None):
        progress = self.step / self.total_steps
        if self.time_limit_s:
            progress = max(progress, (time.monotonic() - self.start) / self.time_limit_s)
        self.model.optimizer.learning_rate.assign(poly_learning_rate(progress, self.base_lr))
        self.step += 1


class WallTimeLimit(keras.callbacks.Callback):
    """Stops training (after the current step) once ``minutes`` of wall time have passed."""

    def __init__(self, minutes: float) -> None:
        super().__init__()
        self.seconds = minutes * 60
        self.stopped = False

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() - self.start > self.seconds:
            self.model.stop_training = True
            self.stopped = True


class JsonHistory(keras.callbacks.Callback):
    """Rewrites ``history.json`` after every epoch, so a crash keeps what was learned so far."""

    def __init__(self, path: str | Path, meta: dict | None = None) -> None:
        super().__init__()
        self.path, self.meta = Path(path), meta or {}
        self.history: dict[str, list[float]] = {}

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.history.setdefault("seconds", []).append(round(time.monotonic() - self.start, 2))
        artifacts.write_json(self.path, {"meta": self.meta, "history": self.history})


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves the model, atomically, whenever the monitored value improves."""

    def __init__(self, path: str | Path, monitor: str = "val_miou", mode: str = "max") -> None:
        super().__init__()
        self.path, self.monitor, self.sign = Path(path), monitor, 1 if mode == "max" else -1
        self.best = -math.inf
        self.best_epoch: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and self.sign * float(value) > self.best:
            self.best, self.best_epoch = self.sign * float(value), epoch
            artifacts.save_model(self.model, self.path)


@dataclass
class TrainResult:
    model: keras.Model
    history: dict[str, list[float]]
    model_path: Path
    history_path: Path
    epochs_run: int
    best_epoch: int | None
    stopped_by_time: bool
    seconds: float


def compile_model(model: keras.Model, info: data.DatasetInfo, learning_rate: float = 1e-3) -> keras.Model:
    """Adam, cross-entropy with the ignore index, streaming mIoU."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=make_loss(info.ignore_index),
        metrics=[make_miou_metric(info.num_classes, info.ignore_index)],
    )
    return model


def require_clean_data(data_dir: Path):
    """Refuse to train on a dataset that fails ``check-data``: better now than an hour in. Returns the report."""
    from helpers.check import check_dataset

    report = check_dataset(data_dir)
    if not report.ok:
        shown = "\n".join(f"  - {p}" for p in report.problems[:10])
        more = f"\n  ... and {len(report.problems) - 10} more" if len(report.problems) > 10 else ""
        raise data.DatasetError(
            f"{data_dir} fails the data check, so training did not start:\n{shown}{more}\n"
            f"Fix these, then run `python -m helpers check-data {data_dir}` to confirm."
        )
    return report


def train(
    settings: Settings,
    model: keras.Model | None = None,
    class_weighting: str = "none",
    learning_rate: float = 1e-3,
    patience: int | None = 10,
    verbose: int | str = "auto",
) -> TrainResult:
    """Train on ``settings.data_dir`` and write ``model.keras`` and ``history.json``.

    ``class_weighting``: ``"none"`` or ``"median"`` (median-frequency per-pixel weights).
    """
    keras.utils.set_random_seed(settings.seed)
    data_dir = data.ensure_data(settings)
    report = require_clean_data(data_dir)
    info = data.read_dataset_info(data_dir)
    weights = None
    if class_weighting == "median":  # the check has already counted every mask's pixels
        weights = data.median_frequency_weights(report.splits["train"].label_counts[: info.num_classes])
    elif class_weighting != "none":
        raise ValueError(f"class_weighting must be 'none' or 'median', got {class_weighting!r}.")
    train_ds = data.make_dataset(
        data_dir, "train", settings.image_size, settings.batch_size, True, settings.seed, info, class_weights=weights
    )
    val_ds = data.make_dataset(data_dir, "val", settings.image_size, settings.batch_size, False, settings.seed, info)
    if model is None:
        model = build_deeplabv3_plus(info.num_classes, backbone=settings.backbone, weights=settings.backbone_weights)
    compile_model(model, info, learning_rate)

    paths = artifacts.output_paths(settings.output_dir)
    steps = int(train_ds.cardinality()) * settings.epochs
    time_limit = settings.train_minutes * 60 if settings.train_minutes else None
    history_cb = JsonHistory(paths["history"], {"settings": settings.as_dict(), "class_weighting": class_weighting})
    checkpoint = BestModelCheckpoint(paths["model"])
    callbacks = [PolyLearningRate(learning_rate, steps, time_limit), history_cb, checkpoint]
    if patience:
        callbacks.append(
            keras.callbacks.EarlyStopping("val_miou", mode="max", patience=patience, restore_best_weights=True)
        )
    limit = WallTimeLimit(settings.train_minutes) if settings.train_minutes else None
    if limit:
        callbacks.append(limit)

    start = time.monotonic()
    model.fit(
        train_ds, validation_data=val_ds, epochs=settings.epochs, callbacks=callbacks, verbose=verbose, shuffle=False
    )
    seconds = time.monotonic() - start
    if checkpoint.best_epoch is None:  # no epoch finished with a validation score: keep what we have
        artifacts.save_model(model, paths["model"])
    best = artifacts.load_model(paths["model"])
    return TrainResult(
        model=best,
        history=history_cb.history,
        model_path=paths["model"],
        history_path=paths["history"],
        epochs_run=len(history_cb.history.get("loss", [])),
        best_epoch=checkpoint.best_epoch,
        stopped_by_time=bool(limit and limit.stopped),
        seconds=seconds,
    )


def load_or_train(settings: Settings, quick_minutes: float = 2.0) -> keras.Model:
    """The trained model from the output directory or, if there is none, a quick one trained now.

    Lets every notebook run on its own: it says what it is doing instead of failing.
    """
    path = artifacts.output_paths(settings.output_dir)["model"]
    if path.is_file():
        print(f"Loaded the trained model from {path}.")
        return artifacts.load_model(path)
    print(
        f"No trained model at {path} (notebook 04 makes one). "
        f"Training a quick one now, capped at {quick_minutes:g} minutes, so this notebook can run on its own."
    )
    minutes = min(quick_minutes, settings.train_minutes or quick_minutes)
    quick = dataclasses.replace(settings, train_minutes=minutes)
    return train(quick, verbose=0).model
