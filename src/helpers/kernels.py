"""Speed kernels: the same maths as Keras's ``Conv2D`` and ``BatchNormalization``, computed faster.

Neither changes a number the model computes (tests compare each with an independent
reference); they change how TensorFlow computes it. Both apply on the TensorFlow backend
only and fall back to Keras's own path elsewhere. What they buy on a CPU is measured by
``make bench`` (README, "Speed": the rows with Keras's batch norm and without the fused path).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import keras
from keras import layers, ops

# Keras's default batch-norm momentum (0.99) lets the running statistics used at
# evaluation lag hundreds of steps behind training; course runs are short.
BN_MOMENTUM = 0.9


@functools.cache
def native_dilated_conv_trains() -> bool:
    """Can this TensorFlow differentiate a dilated conv as one native op, on its default device?

    cuDNN (GPUs) and oneDNN (which TensorFlow turns on for CPUs with AVX-512 VNNI,
    bfloat16 or AMX instructions, Intel or AMD) can. TensorFlow's own CPU kernels,
    used on older CPUs, compute the forward pass but refuse the backward one ("do
    not yet support dilation rates larger than 1"). Found out once per process with
    a tiny gradient.
    """
    import numpy as np
    import tensorflow as tf

    # A graph and session of its own: asked from inside a traced function or a graph,
    # an eager probe would only build symbolic ops and never run the kernel.
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (1, 8, 8, 1))
        kernel = tf.compat.v1.placeholder(tf.float32, (3, 3, 1, 1))
        y = tf.nn.conv2d(x, kernel, strides=1, padding="SAME", dilations=2)
        gradients = tf.gradients(y, [x, kernel])
    with tf.compat.v1.Session(graph=graph) as session:
        try:
            session.run(gradients, {x: np.zeros((1, 8, 8, 1)), kernel: np.zeros((3, 3, 1, 1))})
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
            return False
    return True


# True while a graph is traced only to be inspected, never run (``helpers.flops``): dilated
# convs are then traced as the one native op on every machine, so counts do not depend on it.
_TRACE_NATIVE_ATROUS = contextvars.ContextVar("trace_native_atrous", default=False)


@contextlib.contextmanager
def native_atrous_for_inspection() -> Iterator[None]:
    """Trace ``AtrousConv2D`` as the native dilated op even where it cannot be trained (for FLOP counts)."""
    token = _TRACE_NATIVE_ATROUS.set(True)
    try:
        yield
    finally:
        _TRACE_NATIVE_ATROUS.reset(token)


@keras.saving.register_keras_serializable(package="helpers")
class AtrousConv2D(layers.Conv2D):
    """A ``Conv2D`` whose dilated (atrous) case runs as one native convolution where it can.

    TensorFlow's generic path computes a dilated conv by "space to batch": it pads
    the map to a multiple of the rate and splits it into rate x rate sub-images.
    On the small maps DeepLab feeds to ASPP (8x8 at rate 18, say) that is mostly
    padding, and training gets many times slower. ``tf.nn.conv2d`` with
    ``dilations`` gives the same numbers in one oneDNN/cuDNN call. Where that call
    cannot be trained (see :func:`native_dilated_conv_trains`), and for other
    backends and undilated convs, Keras's own path is used: same numbers, slower.
    """

    def convolution_op(self, inputs, kernel):
        dilated = tuple(self.dilation_rate) != (1, 1)
        if (
            dilated
            and keras.backend.backend() == "tensorflow"
            and self.data_format == "channels_last"
            and (_TRACE_NATIVE_ATROUS.get() or native_dilated_conv_trains())
        ):
            import tensorflow as tf

            return tf.nn.conv2d(
                inputs, kernel, strides=list(self.strides), padding=self.padding.upper(), dilations=self.dilation_rate
            )
        return super().convolution_op(inputs, kernel)


@keras.saving.register_keras_serializable(package="helpers")
class FusedBatchNormalization(layers.BatchNormalization):
    """``BatchNormalization`` computed by TensorFlow's fused kernel: one op forward, one backward.

    Keras 3 normalises with separate mean, variance, subtract, scale and cast ops,
    each a full pass over the feature map. On a CPU the fused kernel is about twice
    as fast (2.6x in bfloat16), and DeepLab has a batch norm after every conv.
    Same variables, same maths (tested); other backends and layouts, and synchronised
    batch norms, use Keras's path.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and self.scale
            and self.center
            and not getattr(self, "renorm", False)  # Keras < 3.14 has no renorm
            and not getattr(self, "synchronized", False)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        gamma, beta = tf.cast(self.gamma, "float32"), tf.cast(self.beta, "float32")
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
            )
            # The kernel returns the unbiased (n - 1) variance; Keras tracks the biased one.
            count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], "float32")
            variance = tf.math.multiply_no_nan(variance, (count - 1) / count)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1 - self.momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs,
                gamma,
                beta,
                mean=tf.cast(self.moving_mean, "float32"),
                variance=tf.cast(self.moving_variance, "float32"),
                epsilon=self.epsilon,
                data_format="NHWC",
                is_training=False,
            )
        return ops.cast(outputs, self.compute_dtype)


def batch_norm(name: str, **config) -> FusedBatchNormalization:
    """The course's batch norm: the fused kernel, with momentum for short runs."""
    return FusedBatchNormalization(**{"momentum": BN_MOMENTUM, **config, "name": name})


def with_keras_batch_norm(model: keras.Model) -> keras.Model:
    """A copy of ``model`` (same weights) whose fused batch norms are Keras's own: what fusing buys, measured."""
    return _replace_batch_norms(model, lambda config: layers.BatchNormalization.from_config(config))


def with_synchronized_batch_norm(model: keras.Model) -> keras.Model:
    """A copy of ``model`` (same weights) whose batch norms average their statistics over all replicas."""
    return _replace_batch_norms(model, lambda config: batch_norm(**{**config, "synchronized": True}))


def _replace_batch_norms(model: keras.Model, make) -> keras.Model:
    def clone(layer):
        config = layer.get_config()
        return make(config) if isinstance(layer, layers.BatchNormalization) else layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
