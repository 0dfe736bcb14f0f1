"""The encoders: Keras's ImageNet classifiers, cut where DeepLabV3+ taps them.

The paper keeps the deepest features at output stride 16 by replacing the last stride
with dilation (atrous convolution). A Keras application has its strides fixed, so the
backbone is rebuilt layer by layer with those strides and rates changed; kernel shapes
do not change, so the ImageNet weights copy over unchanged. Each rebuilt batch norm
becomes the course's (:func:`helpers.kernels.batch_norm`).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from helpers.config import BACKBONES
from helpers.kernels import BN_MOMENTUM, AtrousConv2D, FusedBatchNormalization

# Where each backbone is tapped. "low" is the stride-4 feature map the decoder
# refines with; "high" is the deepest map, fed to ASPP; "fine" is a stride-2 map for
# the optional second decoder step (``fine_level_channels`` in helpers.model).
TAPS = {
    "resnet50": {"fine": "conv1_relu", "low": "conv2_block3_out", "high": "conv5_block3_out"},
    "mobilenetv2": {"fine": "block_1_expand_relu", "low": "block_3_expand_relu", "high": "block_13_expand_relu"},
}

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


def load_backbone(backbone: str, weights: str | None) -> keras.Model:
    """The Keras application model without its classifier, weights loaded, errors explained."""
    constructor = {"resnet50": keras.applications.ResNet50, "mobilenetv2": keras.applications.MobileNetV2}
    if backbone not in constructor:
        raise ValueError(f"backbone={backbone!r} is not supported; use one of {', '.join(BACKBONES)}.")
    try:
        return constructor[backbone](include_top=False, weights=weights, input_shape=(None, None, 3))
    except Exception as err:  # Keras raises a bare Exception when a download fails
        if weights is None:
            raise
        raise _weights_error(backbone, weights, err) from err


def _weights_error(backbone: str, weights: str, err: Exception) -> WeightsUnavailableError:
    file = IMAGENET_FILES[backbone]
    if weights == "imagenet":
        return WeightsUnavailableError(
            f"Could not get the ImageNet weights for {backbone} ({type(err).__name__}: {err}). "
            "If this machine is offline, either train from scratch with DEEPLAB_WEIGHTS=none "
            f"(weights=None), or download {IMAGENET_URLS[backbone]}{file} on a machine with internet, "
            "copy it here and set DEEPLAB_WEIGHTS=/path/to/that/file "
            f"(or put it in ~/.keras/models/{file}, where Keras looks first)."
        )
    return WeightsUnavailableError(
        f"Could not load backbone weights from {weights!r} ({type(err).__name__}: {err}). "
        f"The file must hold {backbone} weights without the classifier, such as Keras's {file}."
    )


def _course_layer(layer, config: dict) -> layers.Layer:
    """A fresh layer from ``config``; batch norms become the course's (fused, momentum for short runs)."""
    if isinstance(layer, layers.BatchNormalization):
        return FusedBatchNormalization.from_config({**config, "momentum": BN_MOMENTUM})
    if type(layer) is layers.Conv2D and tuple(config["dilation_rate"]) != (1, 1):
        return AtrousConv2D.from_config(config)
    return layer.__class__.from_config(config)


def _rebuild(base: keras.Model, inputs, change=None) -> keras.Model:
    """``base`` rebuilt on ``inputs`` with its weights; ``change(layer, config)`` may edit each layer's config."""

    def clone_layer(layer):
        config = layer.get_config()
        if change is not None:
            config = change(layer, config) or config
        return _course_layer(layer, config)

    # the input is a list or a bare tensor depending on the Keras version
    structured = [inputs] if isinstance(base.input, (list, tuple)) else inputs
    clone = keras.models.clone_model(base, input_tensors=structured, clone_function=clone_layer)
    clone.set_weights(base.get_weights())
    return clone


def atrous_resnet(base: keras.Model, inputs, output_stride: int) -> keras.Model:
    """ResNet50 rebuilt on ``inputs`` with its last stride(s) replaced by dilation.

    Output stride 32 is the plain network. For 16, conv5 keeps stride 1 and uses
    rate-2 3x3 convs, so ASPP sees stride-16 features from the deepest stage, as the
    paper specifies; for 8, conv4 does the same at rate 2 and conv5 at rate 4.
    """
    stages = {32: {}, 16: {"conv5": 2}, 8: {"conv4": 2, "conv5": 4}}
    if output_stride not in stages:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}.")
    rates = stages[output_stride]

    def change(layer, config):
        stage = layer.name.split("_")[0]
        if stage in rates and isinstance(layer, layers.Conv2D):
            if layer.name.endswith(("block1_0_conv", "block1_1_conv")):
                config["strides"] = (1, 1)
            if layer.name.endswith("_2_conv"):
                config["dilation_rate"] = (rates[stage], rates[stage])
        return config

    return _rebuild(base, inputs, change)


def atrous_mobilenet(base: keras.Model, inputs) -> keras.Model:
    """The whole MobileNetV2 rebuilt on ``inputs``, its last stride replaced by dilation (output stride 16).

    Block 13's depthwise conv keeps stride 1 (its padding becomes symmetric so the map keeps
    its size) and blocks 14-16 use rate-2 depthwise convs, as DeepLab does for this encoder.
    """

    def change(layer, config):
        if layer.name == "block_13_pad":
            config["padding"] = ((1, 1), (1, 1))
        if layer.name == "block_13_depthwise":
            config["strides"] = (1, 1)
        if layer.name in ("block_14_depthwise", "block_15_depthwise", "block_16_depthwise"):
            config["dilation_rate"] = (2, 2)
        return config

    return _rebuild(base, inputs, change)


def build_encoder(
    inputs,
    backbone: str = "resnet50",
    weights: str | None = "imagenet",
    output_stride: int = 16,
    whole_encoder: bool = False,
    fine: bool = False,
):
    """Preprocess ``inputs`` (0-255 RGB) and run the backbone; returns ``(low_level, high_level)``.

    With ``fine=True`` it returns ``(fine_level, low_level, high_level)``, the first at stride 2.

    MobileNetV2 is tapped at block 13 (stride 16) by default, dropping its last stages;
    ``whole_encoder=True`` keeps them, with an atrous last stage (measured slower per
    minute on CamVid: README, "Quality per minute").
    """
    base = load_backbone(backbone, weights)
    mode = "caffe" if backbone == "resnet50" else "tf"
    x = ImagePreprocessing(mode, dtype="float32", name="preprocessing")(inputs)
    taps = dict(TAPS[backbone])
    if backbone == "resnet50":
        net = atrous_resnet(base, x, output_stride)
    elif output_stride != 16:
        raise ValueError("The mobilenetv2 backbone is tapped at output stride 16 only.")
    elif whole_encoder:
        net, taps["high"] = atrous_mobilenet(base, x), "block_16_project_BN"
    else:
        net = _rebuild(base, x)
    names = ("fine", "low", "high") if fine else ("low", "high")
    return tuple(net.get_layer(taps[name]).output for name in names)
