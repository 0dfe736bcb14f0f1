"""Compile and fit with the course's defaults: loss, metric, learning-rate schedule, callbacks.

``train(settings)`` is what notebook 04 and ``python -m helpers train`` run. It writes
``model.keras`` (the best epoch by validation mIoU), ``history.json`` and TensorBoard logs
(``tensorboard/``) to the output directory, stops early when validation mIoU stalls, and
respects the optional wall-time cap.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from helpers import artifacts, data, distribute
from helpers.callbacks import (
    BestModelCheckpoint,
    DivergenceGuard,
    JsonHistory,
    PolyLearningRate,
    PredictionImages,
    ResumableState,
    TrainingClock,
    TrainingDiverged,
    tensorboard_logs,
)
from helpers.config import CLASS_WEIGHTINGS, Settings
from helpers.losses import CrossEntropyPlusLovasz
from helpers.model import build_deeplabv3_plus


def make_loss(ignore_index: int | None, class_weights=None, lovasz: bool = False) -> keras.losses.Loss:
    """Per-pixel cross-entropy on logits; pixels labelled ``ignore_index`` contribute nothing.

    ``class_weights`` (one per class) gives :class:`ClassWeightedCrossEntropy`: the weights
    act on the loss only, so the mIoU reported during training stays the plain one.
    ``lovasz=True`` adds the Lovász-softmax term (:mod:`helpers.losses`).
    """
    if class_weights is not None:
        loss = ClassWeightedCrossEntropy(class_weights, ignore_index)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore_index)
    return CrossEntropyPlusLovasz(loss, ignore_index, pixel_fraction=1 / 16) if lovasz else loss


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
    lovasz: bool = False,
) -> keras.Model:
    """Adam, cross-entropy with the ignore index (and optional class weights), streaming mIoU; XLA if asked.

    With a ``mixed_float16`` model Keras wraps the optimiser in loss scaling by itself.
    The optimiser's variables are made here: made inside the first training step (Keras's
    default without a distribution strategy), they make TensorFlow trace that step twice.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=make_loss(info.ignore_index, class_weights, lovasz),
        metrics=[make_miou_metric(info.num_classes, info.ignore_index)],
        jit_compile=jit_compile,
    )
    model.optimizer.build(model.trainable_variables)
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
    lovasz: bool = False,
    scale_range: tuple[float, float] = data.TRAIN_SCALES,
) -> TrainResult:
    """Train on ``settings.data_dir`` and write ``model.keras`` and ``history.json``.

    ``class_weighting``: ``"sqrt-median"`` (the square root of median-frequency weights: rare
    classes count more, measured to pay on real data), ``"median"`` (the full weights) or ``"none"``.
    ``learning_rate``: the peak of the poly schedule; ``None`` means :func:`default_learning_rate`.
    ``scale_range``: the training zooms, relative to ``settings.image_size`` (:func:`helpers.data.augment_pair`).
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
    strategy = make_strategy_for(settings)
    custom_model = model is not None
    with strategy.scope():
        if model is None:
            model = build_model(settings, info.num_classes, synchronized_bn=strategy.num_replicas_in_sync > 1)
        if settings.strategy == "multiworker":
            model = distribute.for_multi_worker(model)
        weights = class_weights(report, info, class_weighting)
        compile_model(model, info, learning_rate, settings.xla, weights, lovasz)

    # with several workers only the chief writes the real files; the others write to a scratch folder
    output_dir = settings.output_dir if distribute.is_chief(strategy) else Path(tempfile.mkdtemp(prefix="worker-"))
    paths = artifacts.output_paths(output_dir)
    num_train = report.splits["train"].pairs
    steps = data.steps_per_epoch(num_train, settings.batch_size)
    meta = {
        "settings": settings.as_dict(),
        "class_weighting": class_weighting,
        "lovasz": lovasz,
        "scale_range": list(scale_range),
        "learning_rate": learning_rate,
    }
    # a resumed run must be the same run: same settings, data size and model
    fingerprint = {**meta, "patience": patience, "num_train": num_train, "params": model.count_params()}
    run = RunCallbacks.create(paths, meta, fingerprint, clock, learning_rate, steps * settings.epochs, patience, info)
    first_epoch = 0
    if resume and not custom_model:
        with strategy.scope():
            first_epoch = run.state.load(model)
    elif not resume:
        run.state.clear()
    if first_epoch == 0:  # a new run: its TensorBoard logs replace the last run's in this folder
        shutil.rmtree(paths["tensorboard"], ignore_errors=True)

    train_ds, val_ds = training_datasets(settings, data_dir, info, first_epoch, scale_range)
    if settings.strategy != "multiworker":  # there each worker would predict its own image, out of step
        run.watch(val_ds, info)
    start = time.monotonic()
    if first_epoch < settings.epochs and not (clock.limit_s and clock.before >= clock.limit_s):
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=settings.epochs,
            initial_epoch=first_epoch,
            steps_per_epoch=steps,
            callbacks=run.in_order(),
            verbose=verbose,
            shuffle=False,  # the stream shuffles, reproducibly, by epoch
        )
    return finish(run, model, info, paths, time.monotonic() - start, settings, learning_rate)


def class_weights(report, info: data.DatasetInfo, weighting: str):
    """One loss weight per class from the pixel counts ``check-data`` made, or ``None`` for ``"none"``."""
    if weighting == "none":
        return None
    counts = report.splits["train"].label_counts[: info.num_classes]
    return data.median_frequency_weights(counts, power=CLASS_WEIGHTINGS[weighting])


def make_strategy_for(settings: Settings):
    """``settings.strategy``'s ``tf.distribute`` strategy; the global batch must split evenly over its replicas."""
    strategy = distribute.make_strategy(settings.strategy)
    replicas = strategy.num_replicas_in_sync
    if settings.batch_size % replicas:
        raise ValueError(
            f"DEEPLAB_BATCH_SIZE={settings.batch_size} is the global batch and must split evenly over "
            f"{replicas} replicas: use a multiple of {replicas}."
        )
    return strategy


@dataclass
class RunCallbacks:
    """The callbacks of one run, by role."""

    guard: DivergenceGuard
    clock: TrainingClock
    schedule: PolyLearningRate
    history: JsonHistory
    checkpoint: BestModelCheckpoint
    state: ResumableState
    tensorboard: keras.callbacks.TensorBoard
    images: PredictionImages | None = None

    @classmethod
    def create(cls, paths, meta, fingerprint, clock, learning_rate, total_steps, patience, info) -> RunCallbacks:
        guard = DivergenceGuard()
        history = JsonHistory(paths["history"], meta, clock)
        checkpoint = BestModelCheckpoint(paths["model"], patience=patience, classes=info.classes)
        parts = {"clock": clock, "history": history, "checkpoint": checkpoint}
        state = ResumableState(paths["resume"], artifacts.jsonable(fingerprint), parts, guard)
        schedule = PolyLearningRate(learning_rate, total_steps, clock)
        return cls(guard, clock, schedule, history, checkpoint, state, tensorboard_logs(paths["tensorboard"]))

    def watch(self, val_ds: tf.data.Dataset, info: data.DatasetInfo) -> None:
        """Show the prediction on the first validation image in TensorBoard after every epoch."""
        from helpers import viz  # matplotlib, only when training

        images, masks = next(iter(val_ds.take(1)))
        palette = viz.make_palette(info.classes)
        self.images = PredictionImages(self.tensorboard.log_dir, images[0].numpy(), masks[0].numpy(), palette)

    def in_order(self) -> list[keras.callbacks.Callback]:
        """At each epoch's end the guard goes first and the resume state last (it saves everyone's state)."""
        logs = [self.tensorboard] + ([self.images] if self.images else [])
        return [self.guard, self.clock, self.schedule, self.history, *logs, self.checkpoint, self.state]


def training_datasets(settings: Settings, data_dir: Path, info, first_epoch=0, scale_range=data.TRAIN_SCALES):
    """The training stream (from ``first_epoch`` on, zooms in ``scale_range``) and the validation batches."""
    size, batch, seed = settings.image_size, settings.batch_size, settings.seed
    train_ds = data.make_dataset(
        data_dir, "train", size, batch, True, seed, info, first_epoch=first_epoch, scale_range=scale_range
    )
    val_ds = data.make_dataset(data_dir, "val", size, batch, False, seed, info)
    if settings.strategy == "multiworker":  # every worker reads the file list; each takes its share of the batches
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_ds, val_ds = train_ds.with_options(options), val_ds.with_options(options)
    return train_ds, val_ds


def finish(run: RunCallbacks, model, info, paths: dict, seconds: float, settings, learning_rate) -> TrainResult:
    """After ``fit``: raise if the loss diverged, make sure a model is saved, clear the resume state."""
    if run.guard.problem is not None:
        raise TrainingDiverged(divergence_message(run.guard.problem, settings, learning_rate, paths, run.checkpoint))
    if run.checkpoint.best_epoch is None or not paths["model"].is_file():  # no validated epoch: keep what we have
        artifacts.save_model(model, paths["model"], info.classes)
    run.state.clear()  # finished (epochs, time cap or early stop): nothing to resume
    return TrainResult(
        model=artifacts.load_model(paths["model"], info),
        history=run.history.history,
        model_path=paths["model"],
        history_path=paths["history"],
        epochs_run=len(run.history.history.get("loss", [])),
        best_epoch=run.checkpoint.best_epoch,
        stopped_by_time=run.clock.stopped,
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
