"""Compile and fit with the course's defaults: loss, metric, learning-rate schedule, callbacks.

``train(settings)`` is what notebook 04 and ``python -m helpers train`` run. It writes
``model.keras`` (the best epoch by validation mIoU) and ``history.json`` to the
output directory, stops early when validation mIoU stalls, and respects the
optional wall-time cap.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from helpers import artifacts, data, distribute
from helpers.config import CLASS_WEIGHTINGS, Settings
from helpers.model import build_deeplabv3_plus


def make_loss(ignore_index: int | None, class_weights=None) -> keras.losses.Loss:
    """Per-pixel cross-entropy on logits; pixels labelled ``ignore_index`` contribute nothing.

    ``class_weights`` (one per class) gives :class:`ClassWeightedCrossEntropy`: the weights
    act on the loss only, so the mIoU reported during training stays the plain one.
    """
    if class_weights is not None:
        return ClassWeightedCrossEntropy(class_weights, ignore_index)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore_index)


class ClassWeightedCrossEntropy(keras.losses.Loss):
    """Cross-entropy where a pixel of class ``c`` weighs ``class_weights[c]``: the weighted mean over the batch.

    Written here because Keras's ``class_weight`` argument to ``fit`` does not take
    per-pixel targets, and ``sample_weight`` would also weight the training metrics.
    """

    def __init__(self, class_weights, ignore_index: int | None = None, name: str = "weighted_cross_entropy"):
        super().__init__(name=name, reduction="sum")
        self.class_weights = [float(w) for w in class_weights]
        self.ignore_index = ignore_index

    def call(self, y_true, y_pred):
        table = tf.constant(self.class_weights, tf.float32)
        y_true = tf.cast(y_true, tf.int32)
        valid = (y_true >= 0) & (y_true < len(self.class_weights))
        if self.ignore_index is not None:
            valid &= y_true != self.ignore_index
        safe = tf.where(valid, y_true, 0)
        weights = tf.where(valid, tf.gather(table, safe), 0.0)
        losses = keras.losses.sparse_categorical_crossentropy(safe, tf.cast(y_pred, tf.float32), from_logits=True)
        return weights * losses / tf.maximum(tf.reduce_sum(weights), 1e-12)

    def get_config(self) -> dict:
        return {"class_weights": self.class_weights, "ignore_index": self.ignore_index, "name": self.name}


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
    """Sets the learning rate before every step from the optimizer's step count over the steps planned.

    Without a time cap the plan is ``epochs x steps per epoch``. With one, the plan is
    re-estimated before every step from the measured time per step (validation
    included): steps done plus the steps the remaining time allows. So warm-up and
    decay happen in steps on every machine, fast or slow, and the decay still ends
    when the time does. The step count is the optimizer's, which a resumed run restores.
    """

    def __init__(self, base_lr: float, total_steps: int, clock: TrainingClock | None = None) -> None:
        super().__init__()
        self.base_lr, self.total_steps, self.clock = base_lr, max(total_steps, 1), clock
        self.calls = 0  # steps seen by this process
        self.reference: tuple[int, float] = (0, 0.0)  # (step, seconds) where this process started measuring

    def planned_steps(self, step: int) -> int:
        """The step count the schedule runs to, as estimated before ``step``."""
        self.calls += 1
        if self.clock is None or not self.clock.limit_s:
            return self.total_steps
        now = self.clock.elapsed()
        if self.calls <= 2 or step <= self.reference[0]:  # the first step traces the graph: measure from the second
            self.reference = (step, now) if self.calls <= 2 else self.reference
            return self.total_steps
        seconds_per_step = (now - self.reference[1]) / (step - self.reference[0])
        closing = getattr(self.clock, "closing_s", 0.0)  # the last validation and save come out of the cap too
        remaining = max(self.clock.limit_s - now - closing, 0.0) / max(seconds_per_step, 1e-9)
        return int(min(self.total_steps, step + 1 + remaining))

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        lr = poly_learning_rate(step / self.planned_steps(step), self.base_lr)
        self.model.optimizer.learning_rate.assign(lr)


class TrainingClock(keras.callbacks.Callback):
    """Training wall time, summed over resumed runs, and the optional cap on it.

    A capped run uses the whole cap: it stops after the step where the time left would
    no longer cover another step plus the epoch's closing work (validation and saving,
    measured on the epoch before). The last epoch may so be shorter than the others;
    Keras still validates it and the checkpoint still sees it. An epoch is not started
    when it could train for less time than its closing work would take.
    """

    def __init__(self, minutes: float | None = None) -> None:
        super().__init__()
        self.limit_s = minutes * 60 if minutes else None
        self.before = 0.0  # seconds used by earlier (interrupted) runs
        self.start = time.monotonic()
        self.stopped = False
        self.step_s = 0.0  # the last training step's duration
        self.closing_s = 0.0  # from an epoch's last step to the next epoch's start: validation, saving
        self._last_step_end: float | None = None

    def elapsed(self) -> float:
        return self.before + time.monotonic() - self.start

    def _over(self, seconds_needed: float) -> bool:
        return bool(self.limit_s) and self.elapsed() + seconds_needed > self.limit_s

    def on_epoch_begin(self, epoch, logs=None):
        if self._last_step_end is not None:
            self.closing_s = self.elapsed() - self._last_step_end

    def on_train_batch_begin(self, batch, logs=None):
        self._step_start = self.elapsed()

    def on_train_batch_end(self, batch, logs=None):
        self._last_step_end = self.elapsed()
        self.step_s = self._last_step_end - getattr(self, "_step_start", self._last_step_end)
        if self._over(self.step_s + self.closing_s):
            self.model.stop_training = self.stopped = True

    def on_epoch_end(self, epoch, logs=None):
        if self._last_step_end is not None:  # validation has run: a first measure of the closing work
            self.closing_s = max(self.closing_s, self.elapsed() - self._last_step_end)
        worth_starting = max(self.closing_s, self.step_s)  # train at least as long as the closing takes
        if self._over(self.closing_s + worth_starting):
            self.model.stop_training = self.stopped = True

    def get_state(self) -> dict:
        return {"elapsed": self.elapsed()}

    def set_state(self, state: dict) -> None:
        self.before = float(state["elapsed"])


class JsonHistory(keras.callbacks.Callback):
    """Rewrites ``history.json`` after every epoch, so a crash keeps what was learned so far."""

    def __init__(self, path: str | Path, meta: dict | None = None, clock: TrainingClock | None = None) -> None:
        super().__init__()
        self.path, self.meta, self.clock = Path(path), meta or {}, clock or TrainingClock()
        self.history: dict[str, list[float]] = {}

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.history.setdefault("seconds", []).append(round(self.clock.elapsed(), 2))
        artifacts.write_json(self.path, {"meta": self.meta, "history": self.history})

    def get_state(self) -> dict:
        return {"history": self.history}

    def set_state(self, state: dict) -> None:
        self.history = {k: list(v) for k, v in state["history"].items()}


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves the model, atomically, whenever the monitored value improves; stops after ``patience`` flat epochs."""

    def __init__(self, path: str | Path, monitor: str = "val_miou", patience: int | None = None, classes=None) -> None:
        super().__init__()
        self.path, self.monitor, self.patience, self.classes = Path(path), monitor, patience, classes
        self.best = -math.inf
        self.best_epoch: int | None = None
        self.wait = 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value, loss = logs.get(self.monitor), logs.get("loss", 0.0)
        if value is None or not math.isfinite(float(value)) or not math.isfinite(float(loss)):
            return  # nothing to compare, or the weights have diverged
        if float(value) > self.best:
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            artifacts.save_model(self.model, self.path, self.classes)
        else:
            self.wait += 1
            if self.patience and self.wait >= self.patience:
                self.model.stop_training = True

    def get_state(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def set_state(self, state: dict) -> None:
        self.best, self.best_epoch, self.wait = float(state["best"]), state["best_epoch"], int(state["wait"])


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message lists the usual causes."""


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first step whose loss is NaN or infinite, before anything is saved from it."""

    def __init__(self) -> None:
        super().__init__()
        self.problem: str | None = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.problem is None:
            self.problem = f"the training loss became {float(loss)} at step {batch + 1} of an epoch"
            self.model.stop_training = True


class ResumableState(keras.callbacks.Callback):
    """After every epoch, saves what an interrupted run needs to continue exactly where it stopped.

    ``<output_dir>/resume/``: ``epoch-NNNN.weights.h5`` (model *and* optimizer
    variables) and ``state.json`` (epochs done, the callbacks' state, the random
    generators' state, and the settings it belongs to). The weights file is complete
    before ``state.json`` names it, and ``state.json`` is replaced atomically, so a
    ``kill -9`` at any moment leaves the previous epoch's pair intact.
    """

    def __init__(self, directory: Path, fingerprint: dict, parts: dict, guard: DivergenceGuard) -> None:
        super().__init__()
        self.directory, self.fingerprint, self.parts, self.guard = Path(directory), fingerprint, parts, guard

    @property
    def state_path(self) -> Path:
        return self.directory / "state.json"

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.problem is not None:
            return  # never save weights that have gone to NaN
        self.directory.mkdir(parents=True, exist_ok=True)
        weights = self.directory / f"epoch-{epoch + 1:04d}.weights.h5"
        partial = self.directory / f".partial-{epoch + 1:04d}.weights.h5"
        self.model.save_weights(partial)
        os.replace(partial, weights)
        state = {
            "fingerprint": self.fingerprint,
            "epochs_done": epoch + 1,
            "weights": weights.name,
            "parts": {name: part.get_state() for name, part in self.parts.items()},
            "random_state": [v.numpy().tolist() for v in _random_state_variables(self.model)],
        }
        artifacts.write_json(self.state_path, state)
        for old in self.directory.glob("epoch-*.weights.h5"):
            if old != weights:
                old.unlink()

    def load(self, model: keras.Model) -> int:
        """Restore a matching earlier run into ``model`` and the callbacks; returns the epochs already done."""
        if not self.state_path.is_file():
            return 0
        try:
            state = artifacts.read_json(self.state_path)
        except ValueError:
            print(f"Ignoring an unreadable resume state in {self.directory}; starting from scratch.")
            return 0
        if state.get("fingerprint") != self.fingerprint:
            before = state.get("fingerprint") or {}
            changed = sorted(k for k in {**self.fingerprint, **before} if before.get(k) != self.fingerprint.get(k))
            print(
                f"An unfinished run in {self.directory.parent} used other settings ({', '.join(changed)}), "
                "so this run starts from scratch and replaces it."
            )
            self.clear()
            return 0
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self.directory / state["weights"])
        for variable, value in zip(_random_state_variables(model), state["random_state"]):
            variable.assign(value)
        for name, part in self.parts.items():
            part.set_state(state["parts"][name])
        print(f"Resuming the interrupted run from {self.directory}: {state['epochs_done']} epoch(s) already done.")
        return int(state["epochs_done"])

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _random_state_variables(model: keras.Model) -> list:
    """The seed-generator states (dropout's randomness): variables that are not weights."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


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


def compile_model(
    model: keras.Model,
    info: data.DatasetInfo,
    learning_rate: float = 1e-3,
    jit_compile: bool = False,
    class_weights=None,
) -> keras.Model:
    """Adam, cross-entropy with the ignore index (and optional class weights), streaming mIoU; XLA if asked.

    With a ``mixed_float16`` model Keras wraps the optimiser in loss scaling by itself.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=make_loss(info.ignore_index, class_weights),
        metrics=[make_miou_metric(info.num_classes, info.ignore_index)],
        jit_compile=jit_compile,
    )
    return model


def default_learning_rate(settings: Settings) -> float:
    """Peak learning rate for Adam: 4e-3 from scratch, 1e-3 when fine-tuning pretrained weights.

    Chosen by measurement: on the built-in data, a 3-minute from-scratch CPU run
    (MobileNetV2, 256x256) reached test mIoU 0.73 at 1e-3, 0.80 at 2e-3 and 0.81 at
    4e-3. Pretrained features are easy to wreck with large steps, so 1e-3 for them.
    """
    return 4e-3 if settings.backbone_weights is None else 1e-3


def build_model(settings: Settings, num_classes: int, synchronized_bn: bool = False, **options) -> keras.Model:
    """The DeepLabV3+ the settings describe: backbone, weights, separable convs, output stride, precision.

    ``options`` go to :func:`helpers.model.build_deeplabv3_plus` (for example ``decoder_filters``).
    """
    return build_deeplabv3_plus(
        num_classes,
        backbone=settings.backbone,
        weights=settings.backbone_weights,
        output_stride=settings.output_stride,
        separable=settings.separable,
        precision=settings.precision,
        synchronized_bn=synchronized_bn,
        **options,
    )


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
    class_weighting: str = "sqrt-median",
    learning_rate: float | None = None,
    patience: int | None = 10,
    verbose: int | str = "auto",
    resume: bool = True,
) -> TrainResult:
    """Train on ``settings.data_dir`` and write ``model.keras`` and ``history.json``.

    ``class_weighting``: ``"sqrt-median"`` (the square root of median-frequency weights: rare
    classes count more, measured to pay on real data), ``"median"`` (the full weights) or ``"none"``.
    ``learning_rate``: the peak of the poly schedule; ``None`` means :func:`default_learning_rate`.
    With ``resume=True`` an interrupted run with the same settings continues from
    its last completed epoch (see :class:`ResumableState`); a finished run clears
    its resume state. A NaN or infinite loss raises :class:`TrainingDiverged`.
    """
    if class_weighting not in CLASS_WEIGHTINGS:
        raise ValueError(f"class_weighting must be one of {', '.join(CLASS_WEIGHTINGS)}, got {class_weighting!r}.")
    clock = TrainingClock(settings.train_minutes)  # the time cap counts from here
    learning_rate = default_learning_rate(settings) if learning_rate is None else learning_rate
    keras.utils.set_random_seed(settings.seed)
    data_dir = data.ensure_data(settings)
    report = require_clean_data(data_dir)
    info = data.read_dataset_info(data_dir)
    weights = None
    if class_weighting != "none":  # the check has already counted every mask's pixels
        counts = report.splits["train"].label_counts[: info.num_classes]
        weights = data.median_frequency_weights(counts, power=CLASS_WEIGHTINGS[class_weighting])
    num_train = report.splits["train"].pairs
    steps = data.steps_per_epoch(num_train, settings.batch_size)
    strategy = distribute.make_strategy(settings.strategy)
    replicas = strategy.num_replicas_in_sync
    if settings.batch_size % replicas:
        raise ValueError(
            f"DEEPLAB_BATCH_SIZE={settings.batch_size} is the global batch and must split evenly over "
            f"{replicas} replicas: use a multiple of {replicas}."
        )
    custom_model = model is not None
    with strategy.scope():
        if model is None:
            model = build_model(settings, info.num_classes, synchronized_bn=replicas > 1)
        compile_model(model, info, learning_rate, jit_compile=settings.xla, class_weights=weights)

    # with several workers only the chief writes the real files; the others write to a scratch folder
    output_dir = settings.output_dir if distribute.is_chief(strategy) else Path(tempfile.mkdtemp(prefix="worker-"))
    paths = artifacts.output_paths(output_dir)
    meta = {"settings": settings.as_dict(), "class_weighting": class_weighting, "learning_rate": learning_rate}
    schedule = PolyLearningRate(learning_rate, steps * settings.epochs, clock)
    history_cb = JsonHistory(paths["history"], meta, clock)
    checkpoint = BestModelCheckpoint(paths["model"], patience=patience, classes=info.classes)
    guard = DivergenceGuard()
    parts = {"clock": clock, "history": history_cb, "checkpoint": checkpoint}
    # a resumed run must be the same run: same settings, data size and model
    fingerprint = {**meta, "patience": patience, "num_train": num_train, "params": model.count_params()}
    state = ResumableState(paths["resume"], artifacts.jsonable(fingerprint), parts, guard)
    first_epoch = 0
    if resume and not custom_model:
        with strategy.scope():
            first_epoch = state.load(model)
    elif not resume:
        state.clear()

    train_ds = data.make_dataset(
        data_dir,
        "train",
        settings.image_size,
        settings.batch_size,
        True,
        settings.seed,
        info,
        first_epoch=first_epoch,
    )
    val_ds = data.make_dataset(data_dir, "val", settings.image_size, settings.batch_size, False, settings.seed, info)
    if settings.strategy == "multiworker":  # every worker reads the file list; each takes its share of the batches
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_ds, val_ds = train_ds.with_options(options), val_ds.with_options(options)
    # order matters at each epoch's end: the guard first, the resume state last (it saves everyone's state)
    callbacks = [guard, clock, schedule, history_cb, checkpoint, state]
    start = time.monotonic()
    if first_epoch < settings.epochs and not (clock.limit_s and clock.before >= clock.limit_s):
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=settings.epochs,
            initial_epoch=first_epoch,
            steps_per_epoch=steps,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # the stream shuffles, reproducibly, by epoch
        )
    seconds = time.monotonic() - start
    if guard.problem is not None:
        raise TrainingDiverged(divergence_message(guard.problem, settings, learning_rate, paths, checkpoint))
    if checkpoint.best_epoch is None or not paths["model"].is_file():  # no validated epoch: keep what we have
        artifacts.save_model(model, paths["model"], info.classes)
    state.clear()  # finished (epochs, time cap or early stop): nothing to resume
    best = artifacts.load_model(paths["model"], info)
    return TrainResult(
        model=best,
        history=history_cb.history,
        model_path=paths["model"],
        history_path=paths["history"],
        epochs_run=len(history_cb.history.get("loss", [])),
        best_epoch=checkpoint.best_epoch,
        stopped_by_time=clock.stopped,
        seconds=seconds,
    )


def divergence_message(problem: str, settings: Settings, learning_rate: float, paths: dict, checkpoint) -> str:
    """What went wrong, the usual causes with their fixes, and what was kept."""
    kept = (
        f"The last good model (epoch {checkpoint.best_epoch + 1}) is kept at {paths['model']}, and the state "
        f"of the last completed epoch in {paths['resume']}."
        if checkpoint.best_epoch is not None
        else "No epoch finished before it happened, so no model was saved."
    )
    return (
        f"Training stopped: {problem}. The usual causes:\n"
        f"  - the learning rate is too high (it was {learning_rate:g}): try {learning_rate / 10:g};\n"
        f"  - labels outside 0..num_classes-1 that are not the ignore index: run "
        f"`python -m helpers check-data {settings.data_dir}`;\n"
        f"  - mixed_float16 without loss scaling (DEEPLAB_PRECISION={settings.precision}): compile through "
        "helpers.train.compile_model, which scales the loss, or use float32 / mixed_bfloat16.\n" + kept
    )


def load_or_train(settings: Settings, quick_minutes: float = 2.0) -> keras.Model:
    """The trained model from the output directory or, if there is none, a quick one trained now.

    Lets every notebook run on its own: it says what it is doing instead of failing.
    """
    path = artifacts.output_paths(settings.output_dir)["model"]
    if path.is_file():
        print(f"Loaded the trained model from {path}.")
        return artifacts.load_model(path, data.read_dataset_info(data.ensure_data(settings)))
    print(
        f"No trained model at {path} (notebook 04 makes one). "
        f"Training a quick one now, capped at {quick_minutes:g} minutes, so this notebook can run on its own."
    )
    minutes = min(quick_minutes, settings.train_minutes or quick_minutes)
    quick = dataclasses.replace(settings, train_minutes=minutes)
    return train(quick, verbose=0).model
