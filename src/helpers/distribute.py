"""One switch for multi-device training: ``DEEPLAB_STRATEGY`` picks a ``tf.distribute`` strategy.

- ``default``: one device (whatever TensorFlow picks: a GPU if there is one).
- ``mirrored``: every GPU of this machine (or every logical CPU device), one model copy each,
  gradients summed across them after every step.
- ``tpu``: a Colab TPU runtime.
- ``multiworker``: several machines, each described by the ``TF_CONFIG`` environment variable.

``DEEPLAB_BATCH_SIZE`` is the **global** batch: each of ``n`` replicas sees ``batch / n`` images
per step. With more than one replica the batch norms are synchronised, so their statistics are
computed over the global batch, as on one device.
"""

from __future__ import annotations

import functools
import json
import os

import keras
import tensorflow as tf

from helpers.artifacts import same_layers
from helpers.config import STRATEGIES


class StrategyError(RuntimeError):
    """The requested strategy cannot run here; the message says why and what to do."""


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy called ``name`` (see the module docstring).

    Made once per process and then reused: two ``MirroredStrategy`` objects number their
    collective operations from the same start, so a model trained under a second one (with
    synchronised batch norm) clashes with the first ("Shape mismatch in the collective instance").
    """
    name = (name or "default").strip().lower()
    if name == "default":
        return tf.distribute.get_strategy()
    return _strategy_once(name)


@functools.cache
def _strategy_once(name: str) -> tf.distribute.Strategy:
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.NotFoundError) as err:
            raise StrategyError(
                f"No TPU found ({err}). On Colab choose Runtime > Change runtime type > TPU, or use "
                "DEEPLAB_STRATEGY=default."
            ) from err
        return tf.distribute.TPUStrategy(resolver)
    if name == "multiworker":
        config = os.environ.get("TF_CONFIG")
        if not config:
            raise StrategyError(
                "DEEPLAB_STRATEGY=multiworker needs TF_CONFIG on every machine, for example "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}} '
                "(index 1 on the second machine). See notebook 07."
            )
        try:
            json.loads(config)
        except ValueError as err:
            raise StrategyError(f"TF_CONFIG is not valid JSON ({err}): {config!r}") from err
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise StrategyError(f"DEEPLAB_STRATEGY={name!r} is not a strategy; use one of {', '.join(STRATEGIES)}.")


# The first Keras release that trains under MultiWorkerMirroredStrategy without MultiWorkerModel.
# None: not yet (tested up to Keras 3.15). tests/test_distribute.py fails once plain Keras works.
KERAS_FIXED_IN: tuple[int, int] | None = None


def needs_multi_worker_model() -> bool:
    """True for the Keras versions in which ``fit`` fails under ``MultiWorkerMirroredStrategy``."""
    import keras

    version = tuple(int(part) for part in keras.version().split(".")[:2])
    return KERAS_FIXED_IN is None or version < KERAS_FIXED_IN


class MultiWorkerModel(keras.Model):
    """A functional model whose ``fit`` works under ``MultiWorkerMirroredStrategy`` in Keras 3.

    Works around two Keras bugs (tensorflow/tensorflow#72388; seen in Keras 3.13 to 3.15):

    1. Before the first step Keras builds the model symbolically from one batch that it
       first averages across all workers with an eager collective, which fails ("Attempt to
       convert a value (PerReplica...) to a Tensor"). The build only needs the batch's shapes
       and dtypes, which this worker's own shard has: this class builds from that.
    2. It averages each step's logs across workers with ``reduce("MEAN", axis=0)``, which
       fails for scalars such as the loss ("Invalid reduction dimension 0"). This class's
       train and test steps return each log as a vector of one, which that reduction
       averages back to a scalar.

    Same layers, same weights: :func:`for_multi_worker` wraps a built model.
    """

    def train_step(self, data):
        return keras.tree.map_structure(_as_vector, super().train_step(data))

    def test_step(self, data):
        return keras.tree.map_structure(_as_vector, super().test_step(data))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):  # overrides Keras's (bug 1)
        if iterator is None or self._distribute_strategy is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        strategy = self.distribute_strategy

        def local(value):
            distributed = isinstance(value, tf.distribute.DistributedValues)
            return strategy.experimental_local_results(value)[0] if distributed else value

        for _, _, batches in iterator:
            return super()._maybe_symbolic_build(data_batch=keras.tree.map_structure(local, next(batches)))


def _as_vector(value):
    return tf.reshape(value, [1]) if tf.is_tensor(value) and value.shape.rank == 0 else value


def for_multi_worker(model: keras.Model) -> keras.Model:
    """``model`` (functional) as a :class:`MultiWorkerModel` sharing its layers, where this Keras needs it."""
    if not needs_multi_worker_model():
        return model
    return same_layers(model, MultiWorkerModel)


def split_cpu(devices: int = 2) -> list:
    """Split the CPU into ``devices`` logical devices, so ``mirrored`` can be tried without GPUs.

    Must run before TensorFlow touches a device (first thing in a fresh process or kernel).
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    return tf.config.list_logical_devices("CPU")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one worker that writes files (always true unless multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type in ("chief", None) or (resolver.task_type == "worker" and resolver.task_id == 0)
