"""DeepLabV3+: a backbone, atrous spatial pyramid pooling (ASPP) and a light decoder.

The model takes RGB images with values 0-255 (the backbone's preprocessing is a
layer inside the model), accepts any height and width, and returns per-pixel
class scores (logits, float32) at the input's resolution. Every resize is done
to the size of a reference tensor, never to a size computed at build time, which
is why the same model works for 256x256, 320x480 and anything else.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator, Sequence

import keras
from keras import layers, ops

BACKBONES = ("resnet50", "mobilenetv2")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")

# Keras's default batch-norm momentum (0.99) lets the running statistics used at
# evaluation lag hundreds of steps behind training; course runs are short.
BN_MOMENTUM = 0.9

# Where each backbone is tapped. "low" is the stride-4 feature map the decoder
# refines with; "high" is the deepest map, fed to ASPP.
TAPS = {
    "resnet50": {"low": "conv2_block3_out", "high": "conv5_block3_out"},
    "mobilenetv2": {"low": "block_3_expand_relu", "high": "block_13_expand_relu"},
}

# Channels of ASPP and the decoder. 256 is the paper's, for ResNet50's 2048-channel features.
# MobileNetV2 (576 channels at its tap) gets a narrower head: at 256 the head costs more than
# the encoder. On CamVid road scenes, 5 minutes from scratch on 2 CPU cores, the 64-channel
# head trained 5 epochs against 3 and scored higher (README, "Quality per minute").
HEAD_CHANNELS = {"resnet50": 256, "mobilenetv2": 64}

IMAGENET_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "mobilenetv2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
}
IMAGENET_URLS = {
    "resnet50": "https://storage.googleapis.com/tensorflow/keras-applications/resnet/",
    "mobilenetv2": "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/",
}


class WeightsUnavailableError(RuntimeError):
    """Pretrained backbone weights could not be downloaded or read."""


def _cpu_has_bfloat16() -> bool:
    """True on x86 CPUs whose flags list native bfloat16 maths (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:  # not Linux: do not guess
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_precision() -> str:
    """The fastest safe precision here: float16 on GPUs with tensor cores, bfloat16 on CPUs with bf16 units.

    On anything else (older GPUs and CPUs, Apple silicon) mixed precision would be
    slower than float32, so float32 it is.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
        return "mixed_float16" if tuple(capability) >= (7, 0) else "float32"
    return "mixed_bfloat16" if _cpu_has_bfloat16() else "float32"


def resolve_precision(precision: str | None) -> str:
    """``"auto"``/``None`` becomes :func:`auto_precision`; anything else must be one of ``PRECISIONS``."""
    precision = (precision or "auto").strip().lower()
    if precision == "auto":
        return auto_precision()
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; use auto or one of {', '.join(PRECISIONS)}.")
    return precision


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build layers under Keras dtype policy ``name``, then restore the previous global policy."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@keras.saving.register_keras_serializable(package="helpers")
class ImagePreprocessing(layers.Layer):
    """Turns 0-255 RGB into what a backbone was trained on.

    ``caffe`` (ResNet50): RGB to BGR, minus the ImageNet channel means.
    ``tf`` (MobileNetV2): scale to [-1, 1].
    """

    CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf"):
            raise ValueError(f"mode must be 'caffe' or 'tf', got {mode!r}")
        self.mode = mode

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        if self.mode == "tf":
            return images / 127.5 - 1.0
        bgr = images[..., ::-1]
        return bgr - ops.cast(ops.convert_to_tensor(self.CAFFE_MEAN_BGR), self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


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
    Same variables, same maths (tested); other backends and layouts use Keras's path.
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


# True while a model for several replicas is built: batch norms then average their
# statistics over the global batch (Keras's synchronised path) instead of per replica.
_SYNCHRONIZED_BN = contextvars.ContextVar("synchronized_bn", default=False)


@contextlib.contextmanager
def _synchronized_batch_norm(on: bool) -> Iterator[None]:
    token = _SYNCHRONIZED_BN.set(on)
    try:
        yield
    finally:
        _SYNCHRONIZED_BN.reset(token)


def batch_norm(name: str) -> layers.Layer:
    """The course's batch norm: fused kernel, momentum for short runs, synchronised across replicas if asked."""
    return FusedBatchNormalization(momentum=BN_MOMENTUM, synchronized=_SYNCHRONIZED_BN.get(), name=name)


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


def _load_backbone(backbone: str, weights: str | None) -> keras.Model:
    """The Keras application model without its classifier, weights loaded, errors explained."""
    constructor = {"resnet50": keras.applications.ResNet50, "mobilenetv2": keras.applications.MobileNetV2}
    if backbone not in constructor:
        raise ValueError(f"backbone={backbone!r} is not supported; use one of {', '.join(BACKBONES)}.")
    kwargs = {"include_top": False, "weights": weights, "input_shape": (None, None, 3)}
    if backbone == "mobilenetv2":
        kwargs["alpha"] = 1.0
    try:
        return constructor[backbone](**kwargs)
    except Exception as err:  # Keras raises a bare Exception when a download fails
        if weights is None:
            raise
        file = IMAGENET_FILES[backbone]
        if weights == "imagenet":
            raise WeightsUnavailableError(
                f"Could not get the ImageNet weights for {backbone} ({type(err).__name__}: {err}). "
                "If this machine is offline, either train from scratch with DEEPLAB_WEIGHTS=none "
                f"(weights=None), or download {IMAGENET_URLS[backbone]}{file} on a machine with internet, "
                "copy it here and set DEEPLAB_WEIGHTS=/path/to/that/file "
                f"(or put it in ~/.keras/models/{file}, where Keras looks first)."
            ) from err
        raise WeightsUnavailableError(
            f"Could not load backbone weights from {weights!r} ({type(err).__name__}: {err}). "
            f"The file must hold {backbone} weights without the classifier, such as Keras's {file}."
        ) from err


def _like_inputs(model: keras.Model, tensor):
    """``tensor`` in the same structure as ``model.input`` (a list or a bare tensor, by Keras version)."""
    return [tensor] if isinstance(model.input, (list, tuple)) else tensor


def _course_layer(layer, config: dict | None = None) -> layers.Layer:
    """A fresh copy of a backbone layer; batch norms become the course's (fused, momentum 0.9)."""
    config = layer.get_config() if config is None else config
    if isinstance(layer, layers.BatchNormalization):
        config = {**config, "momentum": BN_MOMENTUM, "synchronized": _SYNCHRONIZED_BN.get()}
        return FusedBatchNormalization.from_config(config)
    return layer.__class__.from_config(config)


def _dilated_clone(base: keras.Model, inputs, output_stride: int) -> keras.Model:
    """Rebuild a ResNet on ``inputs`` with the last stride(s) replaced by dilation.

    Output stride 32 is the plain network. For 16, conv5 keeps stride 1 and uses
    rate-2 3x3 convs, so ASPP sees stride-16 features from the deepest stage, as the
    paper specifies; for 8, conv4 does the same at rate 2 and conv5 at rate 4.
    Kernel shapes do not change, so the weights are copied over by layer name.
    """
    stages = {32: {}, 16: {"conv5": 2}, 8: {"conv4": 2, "conv5": 4}}
    if output_stride not in stages:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}.")
    rates = stages[output_stride]

    def clone_layer(layer):
        config = layer.get_config()
        stage = layer.name.split("_")[0]
        if stage in rates and isinstance(layer, layers.Conv2D):
            if layer.name.endswith(("block1_0_conv", "block1_1_conv")):
                config["strides"] = (1, 1)
            if layer.name.endswith("_2_conv"):
                config["dilation_rate"] = (rates[stage], rates[stage])
                return AtrousConv2D.from_config(config)
        return _course_layer(layer, config)

    clone = keras.models.clone_model(base, input_tensors=_like_inputs(base, inputs), clone_function=clone_layer)
    for layer in clone.layers:
        if layer.weights:
            layer.set_weights(base.get_layer(layer.name).get_weights())
    return clone


def _atrous_mobilenet_clone(base: keras.Model, inputs) -> keras.Model:
    """Rebuild MobileNetV2 on ``inputs`` with its last stride replaced by dilation (output stride 16).

    Block 13's depthwise conv keeps stride 1 (its padding becomes symmetric so the map keeps
    its size) and blocks 14-16 use rate-2 depthwise convs, as DeepLab does for this encoder.
    """

    def clone_layer(layer):
        config = layer.get_config()
        if layer.name == "block_13_pad":
            config["padding"] = ((1, 1), (1, 1))
        if layer.name == "block_13_depthwise":
            config["strides"] = (1, 1)
        if layer.name in ("block_14_depthwise", "block_15_depthwise", "block_16_depthwise"):
            config["dilation_rate"] = (2, 2)
        return _course_layer(layer, config)

    clone = keras.models.clone_model(base, input_tensors=_like_inputs(base, inputs), clone_function=clone_layer)
    clone.set_weights(base.get_weights())
    return clone


def build_encoder(
    inputs,
    backbone: str = "resnet50",
    weights: str | None = "imagenet",
    output_stride: int = 16,
    whole_encoder: bool = False,
):
    """Preprocess ``inputs`` (0-255 RGB) and run the backbone; returns ``(low_level, high_level)``."""
    base = _load_backbone(backbone, weights)
    mode = "caffe" if backbone == "resnet50" else "tf"
    x = ImagePreprocessing(mode, dtype="float32", name="preprocessing")(inputs)
    taps = dict(TAPS[backbone])
    if backbone == "resnet50":
        net = _dilated_clone(base, x, output_stride)
    else:
        if output_stride != 16:
            raise ValueError("The mobilenetv2 backbone is tapped at output stride 16 only.")
        if whole_encoder:
            net, taps["high"] = _atrous_mobilenet_clone(base, x), "block_16_project_BN"
        else:
            net = keras.models.clone_model(base, input_tensors=_like_inputs(base, x), clone_function=_course_layer)
            net.set_weights(base.get_weights())
    return net.get_layer(taps["low"]).output, net.get_layer(taps["high"]).output


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
    name: str = "deeplabv3_plus",
) -> keras.Model:
    """DeepLabV3+ for ``num_classes`` classes; returns float32 logits shaped like the input.

    ``weights``: ``"imagenet"``, ``None`` (random) or a path to backbone weights.
    ``aspp_rates`` defaults to the paper's (6, 12, 18) at output stride 16, doubled at 8.
    ``decoder_filters`` (channels of ASPP and the decoder) defaults to ``HEAD_CHANNELS[backbone]``.
    ``separable=True`` uses atrous depthwise-separable convs in ASPP and decoder.
    ``precision``: ``"float32"``, ``"mixed_bfloat16"``, ``"mixed_float16"`` or ``"auto"``
    (see :func:`auto_precision`). Mixed precision computes in 16 bits and keeps the
    weights, batch-norm statistics, preprocessing, logits and outputs in float32.
    ``synchronized_bn=True`` (for several replicas) computes batch statistics over the global batch.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    if weights == "none":
        weights = None
    if decoder_filters is None:
        decoder_filters = HEAD_CHANNELS.get(backbone, 256)
    if aspp_rates is None:
        aspp_rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
    # every layer built below follows this dtype policy and batch-norm synchronisation
    with dtype_policy(resolve_precision(precision)), _synchronized_batch_norm(synchronized_bn):
        inputs = keras.Input(shape=input_shape, name="image")
        low, high = build_encoder(inputs, backbone, weights, output_stride, whole_encoder)

        x = aspp(high, decoder_filters, aspp_rates, separable, dropout)
        low = conv_bn_relu(low, low_level_channels, 1, name="decoder_low_level")
        x = ResizeLike(name="decoder_upsample")([x, low])
        x = layers.Concatenate(name="decoder_concat")([x, low])
        x = conv_bn_relu(x, decoder_filters, 3, separable=separable, name="decoder_conv1")
        x = conv_bn_relu(x, decoder_filters, 3, separable=separable, name="decoder_conv2")
        # The class scores are cheap to compute and sensitive to rounding: float32 from here on.
        x = layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
        x = ResizeLike(dtype="float32", name="upsample_to_input")([x, inputs])
        outputs = layers.Activation("linear", dtype="float32", name="scores")(x)
        return keras.Model(inputs, outputs, name=name)
