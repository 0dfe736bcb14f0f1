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

import json
import os

import tensorflow as tf

from helpers.config import STRATEGIES


class StrategyError(RuntimeError):
    """The requested strategy cannot run here; the message says why and what to do."""


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy called ``name`` (see the module docstring)."""
    name = (name or "default").strip().lower()
    if name == "default":
        return tf.distribute.get_strategy()
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
        _patch_keras_for_multi_worker()
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise StrategyError(f"DEEPLAB_STRATEGY={name!r} is not a strategy; use one of {', '.join(STRATEGIES)}.")


def _patch_keras_for_multi_worker() -> None:
    """Work around two Keras 3 bugs with ``MultiWorkerMirroredStrategy`` (seen in Keras 3.13 to 3.15).

    1. Before the first step Keras builds the model symbolically from one batch that it
       first averages across all workers with an eager collective, which fails ("Attempt to
       convert a value (PerReplica...) to a Tensor"). The build only needs the batch's shapes
       and dtypes, which this worker's own shard has.
    2. It averages each step's logs across workers with ``reduce("MEAN", axis=0)``, which
       fails for scalars such as the loss ("Invalid reduction dimension 0"). Scalars are
       averaged with ``axis=None``.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer

    cls = keras_tf_trainer.TensorFlowTrainer
    if getattr(cls, "_helpers_multi_worker_patch", False):
        return
    original_build, original_reduce = cls._maybe_symbolic_build, keras_tf_trainer.reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None or iterator is None:
            return original_build(self, iterator=iterator, data_batch=data_batch)
        strategy = self.distribute_strategy

        def local(value):
            distributed = isinstance(value, tf.distribute.DistributedValues)
            return strategy.experimental_local_results(value)[0] if distributed else value

        for _, _, it in iterator:
            batch = tree.map_structure(local, next(it))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=batch)

    def reduce_per_replica(values, strategy, reduction):
        multi_worker = keras_tf_trainer._collective_all_reduce_multi_worker(strategy)
        if not multi_worker or reduction not in ("auto", "mean"):
            return original_reduce(values, strategy, reduction)

        def mean(value):
            rank = strategy.experimental_local_results(value)[0].shape.rank
            return strategy.reduce("MEAN", value, axis=0 if rank else None)

        return tree.map_structure(mean, values)

    cls._maybe_symbolic_build = maybe_symbolic_build
    keras_tf_trainer.reduce_per_replica = reduce_per_replica
    cls._helpers_multi_worker_patch = True


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
