"""Count a model's floating-point operations from its TensorFlow graph, not by guessing."""

from __future__ import annotations

import keras
import tensorflow as tf

from helpers.kernels import native_atrous_for_inspection


def count_flops(model: keras.Model, input_shape: tuple[int, ...], training: bool = False) -> int:
    """FLOPs of one forward pass on one input of ``input_shape`` (without the batch axis).

    Uses TensorFlow's profiler on the traced graph; one multiply-add counts as 2 FLOPs.
    Atrous convs are counted as the native dilated op, whichever path this machine
    would run them on, so the count is the model's own.
    """
    spec = tf.TensorSpec((1, *input_shape), tf.float32)
    with native_atrous_for_inspection():
        concrete = tf.function(lambda x: model(x, training=training)).get_concrete_function(spec)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    verbosity = tf.compat.v1.logging.get_verbosity()
    tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)  # the v1 profiler's deprecation notes
    try:
        info = tf.compat.v1.profiler.profile(
            graph=concrete.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options
        )
    finally:
        tf.compat.v1.logging.set_verbosity(verbosity)
    return int(info.total_float_ops)
