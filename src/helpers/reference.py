"""The reference tutorial's code, kept so its mistakes can be shown, measured and tested.

Its model wires ASPP to ``conv5_block3_2_relu`` (stride 32) and takes "low-level"
features from ``conv4_block6_2_relu`` (stride 16). Upsampling the ASPP output x4
gives 4x the stride-32 size, which is twice the stride-16 size, so the
Concatenate fails to build. :data:`REFERENCE_TAPS` reproduces that;
:data:`CORRECTED_TAPS` (stride 16 for ASPP, stride 4 for the decoder) is the
smallest change that builds and gives full-resolution output.
Its pipeline divides by 255 and never shuffles; its mIoU is a per-batch mean.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

REFERENCE_TAPS = ("conv4_block6_2_relu", "conv5_block3_2_relu")  # (low-level, high-level), as published
CORRECTED_TAPS = ("conv2_block3_2_relu", "conv4_block6_2_relu")  # stride 4 and stride 16


def reference_aspp(inputs, out_channels: int = 256):
    """The reference ASPP, including its static-size image-pooling upsample."""
    shape = inputs.shape
    branches = []
    for rate, kernel in ((1, 1), (6, 3), (12, 3), (18, 3)):
        y = layers.Conv2D(out_channels, kernel, dilation_rate=rate, padding="same", use_bias=False)(inputs)
        y = layers.BatchNormalization()(y)
        branches.append(layers.Activation("relu")(y))
    y5 = layers.GlobalAveragePooling2D()(inputs)
    y5 = layers.Reshape((1, 1, shape[-1]))(y5)
    y5 = layers.Conv2D(out_channels, 1, padding="same", use_bias=False)(y5)
    y5 = layers.BatchNormalization()(y5)
    y5 = layers.Activation("relu")(y5)
    y5 = layers.UpSampling2D(size=(shape[1], shape[2]), interpolation="bilinear")(y5)
    y = layers.Concatenate()([*branches, y5])
    y = layers.Conv2D(out_channels, 1, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    return layers.Activation("relu")(y)


def build_reference_model(
    input_shape=(256, 256, 3), num_classes: int = 5, weights: str | None = None, taps=REFERENCE_TAPS
) -> keras.Model:
    """The reference DeepLabV3Plus; with the default ``taps`` it raises ``ValueError`` while building."""
    base = keras.applications.ResNet50(weights=weights, include_top=False, input_shape=input_shape)
    low = base.get_layer(taps[0]).output
    high = base.get_layer(taps[1]).output
    x = reference_aspp(high)
    x = layers.UpSampling2D(size=(4, 4), interpolation="bilinear")(x)
    low = layers.Conv2D(48, 1, padding="same", use_bias=False)(low)
    low = layers.BatchNormalization()(low)
    low = layers.Activation("relu")(low)
    x = layers.Concatenate()([x, low])
    for _ in range(2):
        x = layers.Conv2D(256, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
    x = layers.UpSampling2D(size=(4, 4), interpolation="bilinear")(x)
    outputs = layers.Conv2D(num_classes, 1, padding="same", activation="softmax")(x)
    return keras.Model(inputs=base.input, outputs=outputs)


def reference_load_image_mask(image_path, mask_path, image_size: int = 256):
    """The reference loader: image /255, nearest-neighbour mask, shape ``(S, S, 1)``."""
    image = tf.io.decode_png(tf.io.read_file(image_path), channels=3)
    image = tf.image.resize(image, (image_size, image_size))
    image = tf.cast(image, tf.float32) / 255.0
    mask = tf.io.decode_png(tf.io.read_file(mask_path), channels=1)
    mask = tf.image.resize(mask, (image_size, image_size), method="nearest")
    return image, tf.cast(mask, tf.int32)


def reference_data_generator(image_paths, mask_paths, batch_size: int = 16, image_size: int = 256):
    """The reference pipeline: no shuffle, no augmentation, no cache."""
    dataset = tf.data.Dataset.from_tensor_slices((image_paths, mask_paths))
    dataset = dataset.map(lambda i, m: reference_load_image_mask(i, m, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
