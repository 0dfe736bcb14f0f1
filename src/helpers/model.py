"""DeepLabV3+ (Chen et al., 2018, figure 2): an encoder, atrous spatial pyramid pooling, a decoder.

    image -> encoder -> high-level features (stride 16) -> ASPP ----------> upsample x4 -+
                     -> low-level features (stride 4)  -> 1x1 conv (48 channels) -------+-> concat
    concat -> two 3x3 convs -> 1x1 conv to class scores -> upsample x4 -> logits

The model takes RGB images with values 0-255 (the backbone's preprocessing is a
layer inside the model), accepts any height and width, and returns per-pixel
class scores (logits, float32) at the input's resolution. Every resize is done
to the size of a reference tensor, never to a size computed at build time, which
is why the same model works for 256x256, 320x480 and anything else.

The machinery lives in its own modules: the encoders in :mod:`helpers.backbones`, faster
kernels for the same maths in :mod:`helpers.kernels`, number formats in :mod:`helpers.precision`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

from helpers.backbones import build_encoder
from helpers.kernels import AtrousConv2D, batch_norm, with_synchronized_batch_norm
from helpers.precision import dtype_policy, resolve_precision

# Channels of ASPP and the decoder. 256 is the paper's, for ResNet50's 2048-channel features.
# MobileNetV2 (576 channels at its tap) gets a narrower head: at 256 the head costs more than
# the encoder. On CamVid road scenes, 5 minutes from scratch on 2 CPU cores, the 64-channel
# head trained 5 epochs against 3 and scored higher (README, "Quality per minute").
HEAD_CHANNELS = {"resnet50": 256, "mobilenetv2": 64}


@keras.saving.register_keras_serializable(package="helpers")
class ResizeLike(layers.Layer):
    """Resize the first input to the height and width of the second, at run time."""

    def __init__(self, interpolation: str = "bilinear", **kwargs):
        super().__init__(**kwargs)
        self.interpolation = interpolation

    def call(self, inputs):
        x, reference = inputs
        if keras.backend.backend() == "tensorflow":
            # tf.shape stays a tensor when the size is only known at run time; Keras's
            # ops.image.resize checks the size with Python ``if``s and fails in that case.
            import tensorflow as tf

            out = tf.image.resize(x, tf.shape(reference)[1:3], method=self.interpolation)
        else:
            out = ops.image.resize(x, ops.shape(reference)[1:3], interpolation=self.interpolation)
        return ops.cast(out, x.dtype)

    def compute_output_shape(self, input_shape):
        x_shape, ref_shape = input_shape
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation}


def conv_bn_relu(
    x, filters: int, kernel_size: int = 1, dilation_rate: int = 1, separable: bool = False, name: str = "conv"
):
    """Conv (or atrous depthwise-separable conv) + batch norm + ReLU.

    The separable form is the paper's: a depthwise 3x3 (possibly atrous) with its
    own BN + ReLU, then a 1x1 pointwise conv with BN + ReLU.
    """
    if separable and kernel_size > 1:
        x = layers.DepthwiseConv2D(
            kernel_size, padding="same", dilation_rate=dilation_rate, use_bias=False, name=f"{name}_depthwise"
        )(x)
        x = batch_norm(f"{name}_depthwise_bn")(x)
        x = layers.Activation("relu", name=f"{name}_depthwise_relu")(x)
        kernel_size, dilation_rate = 1, 1
    x = AtrousConv2D(
        filters,
        kernel_size,
        padding="same",
        dilation_rate=dilation_rate,
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )(x)
    x = batch_norm(f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def aspp(
    x,
    filters: int = 256,
    rates: Sequence[int] = (6, 12, 18),
    separable: bool = False,
    dropout: float = 0.1,
    name: str = "aspp",
):
    """Atrous spatial pyramid pooling: five parallel views of the same feature map.

    One 1x1 conv, one 3x3 conv per atrous rate, and an image-level branch
    (global average pool, 1x1 conv, broadcast back). They are concatenated and
    projected to ``filters`` channels.
    """
    branches = [conv_bn_relu(x, filters, 1, name=f"{name}_1x1")]
    for rate in rates:
        branches.append(conv_bn_relu(x, filters, 3, rate, separable, name=f"{name}_rate{rate}"))
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    pooled = conv_bn_relu(pooled, filters, 1, name=f"{name}_pool_conv")
    branches.append(ResizeLike(name=f"{name}_pool_resize")([pooled, x]))
    y = layers.Concatenate(name=f"{name}_concat")(branches)
    y = conv_bn_relu(y, filters, 1, name=f"{name}_project")
    if dropout:
        y = layers.Dropout(dropout, name=f"{name}_dropout")(y)
    return y


def decoder(
    high, low, filters: int, low_level_channels: int = 48, separable: bool = False, convs: int = 2, name="decoder"
):
    """Upsample ``high`` to the finer map ``low``, concatenate a thin 1x1 projection of ``low``, then ``convs`` 3x3s.

    DeepLabV3+ takes one such step, from ASPP's output to the stride-4 map; the optional
    second step (``fine_level_channels`` in :func:`build_deeplabv3_plus`) is the same
    function one stride finer, named ``"refine"``.
    """
    low = conv_bn_relu(low, low_level_channels, 1, name=f"{name}_low_level")
    x = ResizeLike(name=f"{name}_upsample")([high, low])
    x = layers.Concatenate(name=f"{name}_concat")([x, low])
    for i in range(1, convs + 1):
        x = conv_bn_relu(x, filters, 3, separable=separable, name=f"{name}_conv{i}")
    return x


def build_deeplabv3_plus(
    num_classes: int,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    backbone: str = "resnet50",
    weights: str | None = "imagenet",
    output_stride: int = 16,
    separable: bool = False,
    aspp_rates: Sequence[int] | None = None,
    low_level_channels: int = 48,
    decoder_filters: int | None = None,
    dropout: float = 0.1,
    precision: str = "float32",
    synchronized_bn: bool = False,
    whole_encoder: bool = False,
    fine_level_channels: int = 0,
    name: str = "deeplabv3_plus",
) -> keras.Model:
    """DeepLabV3+ for ``num_classes`` classes; returns float32 logits shaped like the input.

    ``weights``: ``"imagenet"``, ``None`` (random) or a path to backbone weights.
    ``aspp_rates`` defaults to the paper's (6, 12, 18) at output stride 16, doubled at 8.
    ``decoder_filters`` (channels of ASPP and the decoder) defaults to ``HEAD_CHANNELS[backbone]``.
    ``separable=True`` uses atrous depthwise-separable convs in ASPP and decoder.
    ``precision``: ``"float32"``, ``"mixed_bfloat16"``, ``"mixed_float16"`` or ``"auto"``
    (see :func:`helpers.precision.auto_precision`: on a CPU with bf16 units, bfloat16 for ResNet50 only).
    Mixed precision computes in 16 bits and keeps the weights, batch-norm statistics, preprocessing,
    logits and outputs in float32.
    ``synchronized_bn=True`` (for several replicas) computes batch statistics over the global batch.
    ``whole_encoder=True`` keeps all of MobileNetV2 (see :func:`helpers.backbones.build_encoder`).
    ``fine_level_channels > 0`` adds a second :func:`decoder` step at stride 2 with one 3x3 conv at half
    the head's channels, for thin objects (measured: no gain on CamVid, README "Quality per minute").
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    weights = None if weights == "none" else weights
    filters = HEAD_CHANNELS.get(backbone, 256) if decoder_filters is None else decoder_filters
    rates = tuple(r * 16 // output_stride for r in (6, 12, 18)) if aspp_rates is None else aspp_rates
    with dtype_policy(resolve_precision(precision, backbone)):  # every layer built here computes in this precision
        inputs = keras.Input(shape=input_shape, name="image")
        if fine_level_channels:
            fine, low, high = build_encoder(inputs, backbone, weights, output_stride, whole_encoder, fine=True)
        else:
            low, high = build_encoder(inputs, backbone, weights, output_stride, whole_encoder)
        x = aspp(high, filters, rates, separable, dropout)
        x = decoder(x, low, filters, low_level_channels, separable)
        if fine_level_channels:
            x = decoder(x, fine, max(filters // 2, 1), fine_level_channels, separable, convs=1, name="refine")
        # The class scores are cheap to compute and sensitive to rounding: float32 from here on.
        x = layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
        x = ResizeLike(dtype="float32", name="upsample_to_input")([x, inputs])
        outputs = layers.Activation("linear", dtype="float32", name="scores")(x)
        model = keras.Model(inputs, outputs, name=name)
        return with_synchronized_batch_norm(model) if synchronized_bn else model
