"""The callbacks ``train()`` passes to ``fit``, and why each is the course's own.

Keras has a callback for most of these jobs; each one here does something Keras's does not
(its docstring says what), and the tests compare it with Keras's piece where one exists.
Order matters at an epoch's end: the guard first, the resume state last.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from helpers import artifacts


def poly_learning_rate(progress: float, base_lr: float, warmup: float = 0.05, power: float = 0.9) -> float:
    """The paper's "poly" schedule with a short linear warm-up; ``progress`` runs from 0 to 1."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return base_lr * (0.1 + 0.9 * progress / warmup)
    return base_lr * (1 - (progress - warmup) / (1 - warmup)) ** power


class PolyLearningRate(keras.callbacks.Callback):
    """Sets the learning rate before every step from the optimizer's step count over the steps planned.

    Not a ``keras.optimizers.schedules.LearningRateSchedule``: such a schedule must know its
    total steps when it is built, and under a time cap that total is only known as the run
    measures its own speed.

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
    """Training wall time, summed over resumed runs, and the optional cap on it (Keras has no time cap).

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
    """Rewrites ``history.json`` after every epoch, so a crash keeps what was learned so far.

    Keras's ``CSVLogger`` logs the same numbers (tested) but appends to a file that a crash can
    leave half-written, carries no settings, and does not resume with the run; the notebooks
    read the run's settings from this file beside its curves.
    """

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


def tensorboard_logs(log_dir: str | Path) -> keras.callbacks.TensorBoard:
    """Keras's own TensorBoard callback: the curves of every epoch, for ``%tensorboard --logdir``."""
    return keras.callbacks.TensorBoard(str(log_dir), write_graph=False, update_freq="epoch", profile_batch=0)


class PredictionImages(keras.callbacks.Callback):
    """Logs one validation image, its true mask and the model's mask to TensorBoard after every epoch.

    Keras's ``TensorBoard`` callback logs numbers and weights; a segmentation mask is best judged
    by eye, so this one shows how the prediction on the same image changes as training goes on.
    """

    TAG = "validation image | truth | prediction"

    def __init__(self, log_dir: str | Path, image, mask, palette) -> None:
        super().__init__()
        self.log_dir, self.palette = Path(log_dir) / "images", palette
        self.image = np.asarray(image, np.float32)
        self.mask = np.asarray(mask)
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        scores = self.model.predict_on_batch(self.image[None])[0]
        predicted = np.argmax(scores, axis=-1)
        strip = np.concatenate(
            [np.clip(self.image, 0, 255).astype(np.uint8), self.palette[self.mask], self.palette[predicted]], axis=1
        )
        with self._writer.as_default():
            tf.summary.image(self.TAG, strip[None], step=epoch + 1)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_prediction_images(log_dir: str | Path) -> list[tuple[int, np.ndarray]]:
    """``(epoch, strip)`` for every strip :class:`PredictionImages` wrote under ``log_dir``, in epoch order.

    A strip is the validation image, its true mask and the prediction side by side (uint8 RGB).
    A resumed run's later write of an epoch replaces the earlier one.
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    strips: dict[int, np.ndarray] = {}
    for path in sorted(Path(log_dir, "images").glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == PredictionImages.TAG:  # the tensor holds width, height and the PNG
                    strips[event.step] = tf.io.decode_png(value.tensor.string_val[2]).numpy()
    return sorted(strips.items())


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves the model, atomically, whenever the monitored value improves; stops after ``patience`` flat epochs.

    It saves at the epochs Keras's ``ModelCheckpoint(save_best_only=True)`` would (tested), but
    through :func:`helpers.artifacts.save_model`: written under a temporary name and renamed,
    without the optimizer, with the class names beside it, and never from a diverged epoch.
    Its best value and patience count resume with the run.
    """

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


class DivergenceGuard(keras.callbacks.TerminateOnNaN):
    """Keras's ``TerminateOnNaN``, which also remembers what went wrong.

    ``train()`` turns that record into :class:`TrainingDiverged`, an error naming the usual
    causes, and the checkpoint and resume state refuse to save from the diverged epoch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.problem: str | None = None

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.problem is None:
            self.problem = f"the training loss became {float(loss)} at step {batch + 1} of an epoch"
        super().on_batch_end(batch, logs)


class ResumableState(keras.callbacks.Callback):
    """After every epoch, saves what an interrupted run needs to continue exactly where it stopped.

    ``<output_dir>/resume/``: ``epoch-NNNN.weights.h5`` (model *and* optimizer
    variables) and ``state.json`` (epochs done, the callbacks' state, the random
    generators' state, and the settings it belongs to). Keras's ``BackupAndRestore``
    restores weights, optimizer and epoch, but not the other callbacks' state (the clock,
    the history, the best score) nor dropout's random state, so a resumed run would not
    end where an uninterrupted one does; nor does it notice that the settings changed. The weights file is complete
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
