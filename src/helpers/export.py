"""Ship a trained model: a SavedModel that maps uint8 images of any size to masks, and TensorFlow Lite.

The SavedModel needs neither Keras nor this package to run: TensorFlow Serving,
``tf.saved_model.load`` in any TensorFlow program, or a conversion to TF.js can use it.
TensorFlow Lite runs on phones and small boards; ``quantize=True`` stores the weights
in 8 bits (dynamic-range quantisation): about a quarter of the size, and at run time TensorFlow Lite
quantises the activations on the fly so that most layers run int8 kernels.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from helpers import artifacts
from helpers.logs import native_stderr_hidden


def as_float32(model: keras.Model) -> keras.Model:
    """A float32 copy of a (possibly mixed-precision) model, with the same weights.

    Exporters and TensorFlow Lite do not all handle bfloat16; the weights are float32 anyway.
    """
    if all(layer.compute_dtype == "float32" for layer in model.layers):
        return model

    def float32_layer(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=float32_layer)
    copy.set_weights(model.get_weights())
    return copy


def export_saved_model(model: keras.Model, directory: str | Path) -> Path:
    """Write a SavedModel whose ``serving_default`` takes ``uint8 (N, H, W, 3)`` and returns ``mask`` and ``scores``.

    ``mask`` is ``uint8 (N, H, W)``: the class index per pixel at the input's own size.
    The folder is written beside its final name and renamed, so a failed export leaves nothing.
    """
    directory = Path(directory)
    model = as_float32(model)
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images):
        scores = model(tf.cast(images, tf.float32), training=False)
        return {"mask": tf.cast(tf.argmax(scores, axis=-1), tf.uint8), "scores": scores}

    archive.add_endpoint("serving_default", serve, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    partial = directory.with_name(f".{directory.name}-partial")
    shutil.rmtree(partial, ignore_errors=True)
    archive.write_out(str(partial), verbose=False)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(partial, directory)
    return directory


def export_tflite(saved_model: str | Path, path: str | Path, quantize: bool = False) -> Path:
    """Convert an exported SavedModel to a ``.tflite`` file (optionally with 8-bit weights)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic range: int8 weights
    return artifacts.atomic_write_bytes(path, converter.convert())


def tflite_interpreter(path: str | Path):
    """A TensorFlow Lite interpreter: LiteRT's (``ai_edge_litert``) if installed, else TensorFlow's own.

    TensorFlow's ``tf.lite.Interpreter`` still works but warns that it will move to LiteRT.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            return tf.lite.Interpreter(model_path=str(path))
    return Interpreter(model_path=str(path))


def tflite_outputs(path: str | Path, image: np.ndarray) -> dict[str, np.ndarray]:
    """``mask`` (H, W) and ``scores`` (H, W, classes) for one uint8 (H, W, 3) image, from a ``.tflite`` file."""
    with native_stderr_hidden():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = tflite_interpreter(path)
        runner = interpreter.get_signature_runner("serving_default")
        (name,) = runner.get_input_details()  # the runner resizes the input to this image's shape
        outputs = runner(**{name: np.asarray(image, np.uint8)[None]})
    return {key: value[0] for key, value in outputs.items()}


def tflite_predict(path: str | Path, image: np.ndarray) -> np.ndarray:
    """Mask ``(H, W)`` for one uint8 ``(H, W, 3)`` image with a ``.tflite`` file from :func:`export_tflite`."""
    return tflite_outputs(path, image)["mask"]
