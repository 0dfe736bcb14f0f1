import keras
import numpy as np
import pytest

import helpers  # noqa: F401 - registers the custom layers
from helpers import reference
from helpers.backbones import TAPS, ImagePreprocessing, WeightsUnavailableError, build_encoder
from helpers.model import aspp, build_deeplabv3_plus


@pytest.fixture(scope="module")
def resnet_model():
    return build_deeplabv3_plus(5, backbone="resnet50", weights=None)


@pytest.mark.parametrize("height, width", [(256, 256), (320, 480), (512, 512)])
def test_resnet50_model_builds_for_fixed_shapes_and_outputs_input_size(height, width):
    model = build_deeplabv3_plus(5, input_shape=(height, width, 3), backbone="resnet50", weights=None)
    assert model.output_shape == (None, height, width, 5)
    out = model.predict_on_batch(np.zeros((1, height, width, 3), np.float32))
    assert out.shape == (1, height, width, 5) and out.dtype == np.float32


def test_one_training_step_runs_and_changes_the_weights():
    model = build_deeplabv3_plus(3, input_shape=(64, 64, 3), backbone="resnet50", weights=None)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss, run_eagerly=True)  # one step: tracing would cost more
    before = model.get_layer("logits").get_weights()[0].copy()
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, (2, 64, 64))
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert not np.allclose(before, model.get_layer("logits").get_weights()[0])


@pytest.mark.parametrize("height, width", [(256, 256), (240, 320), (320, 480), (96, 160)])
def test_one_dynamic_model_serves_any_size(resnet_model, height, width):
    out = resnet_model.predict_on_batch(np.zeros((1, height, width, 3), np.float32))
    assert out.shape == (1, height, width, 5)


def test_taps_have_the_paper_strides():
    inputs = keras.Input((256, 320, 3))
    low, high = build_encoder(inputs, "resnet50", None, output_stride=16)
    assert tuple(low.shape[1:3]) == (64, 80)  # stride 4
    assert tuple(high.shape[1:]) == (16, 20, 2048)  # conv5, dilated: stride 16
    _, high8 = build_encoder(keras.Input((256, 320, 3)), "resnet50", None, output_stride=8)
    assert tuple(high8.shape[1:3]) == (32, 40)


def test_mobilenetv2_backbone(tmp_path):
    model = build_deeplabv3_plus(4, backbone="mobilenetv2", weights=None)
    assert model.predict_on_batch(np.zeros((2, 128, 192, 3), np.float32)).shape == (2, 128, 192, 4)
    # its ASPP and decoder are 64 channels wide unless asked otherwise; ResNet50's keep the paper's 256
    assert model.get_layer("aspp_project").filters == model.get_layer("decoder_conv2").filters == 64
    wide = build_deeplabv3_plus(4, backbone="mobilenetv2", weights=None, decoder_filters=128)
    assert wide.get_layer("aspp_project").filters == 128


def test_the_whole_mobilenetv2_encoder_keeps_output_stride_16_with_dilation():
    low, high = build_encoder(keras.Input((128, 192, 3)), "mobilenetv2", None, whole_encoder=True)
    assert tuple(low.shape[1:3]) == (32, 48)  # stride 4
    assert tuple(high.shape[1:]) == (8, 12, 320)  # block 16's output, at stride 16 instead of 32
    model = build_deeplabv3_plus(3, backbone="mobilenetv2", weights=None, whole_encoder=True)
    assert model.get_layer("block_13_depthwise").strides == (1, 1)
    assert model.get_layer("block_15_depthwise").dilation_rate == (2, 2)
    assert model.predict_on_batch(np.zeros((1, 96, 160, 3), np.float32)).shape == (1, 96, 160, 3)


@pytest.mark.parametrize("backbone, fine_channels", [("mobilenetv2", 96), ("resnet50", 64)])
def test_the_optional_stride_2_decoder_step_taps_the_stride_2_map(backbone, fine_channels):
    fine, low, high = build_encoder(keras.Input((128, 192, 3)), backbone, None, fine=True)
    assert tuple(fine.shape[1:]) == (64, 96, fine_channels)  # stride 2
    assert tuple(low.shape[1:3]) == (32, 48)
    model = build_deeplabv3_plus(5, backbone=backbone, weights=None, separable=True, fine_level_channels=16)
    assert model.get_layer("refine_low_level").input.name == model.get_layer(TAPS[backbone]["fine"]).output.name
    assert model.get_layer("refine_low_level").filters == 16
    head = model.get_layer("decoder_conv2").filters
    assert model.get_layer("refine_conv1").filters == head // 2
    assert model.get_layer("logits").input.shape[1:3] == (None, None)
    out = keras.Model(model.input, model.get_layer("refine_conv1_relu").output)(np.zeros((1, 96, 160, 3), np.float32))
    assert tuple(out.shape) == (1, 48, 80, head // 2)  # the logits now come from stride 2
    assert model.predict_on_batch(np.zeros((1, 96, 160, 3), np.float32)).shape == (1, 96, 160, 5)
    plain = build_deeplabv3_plus(5, backbone=backbone, weights=None, separable=True)
    assert not any(layer.name.startswith("refine") for layer in plain.layers)


def test_aspp_has_five_branches_of_256_channels():
    features = keras.Input((16, 16, 64))
    out = aspp(features, 256, (6, 12, 18))
    model = keras.Model(features, out)
    concat = model.get_layer("aspp_concat")
    assert len(concat.input) == 5
    assert all(tuple(t.shape[1:]) == (16, 16, 256) for t in concat.input)
    assert tuple(out.shape[1:]) == (16, 16, 256)


def test_preprocessing_matches_keras_applications():
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    caffe = ImagePreprocessing("caffe")(x)
    np.testing.assert_allclose(caffe, keras.applications.resnet50.preprocess_input(x.copy()), atol=1e-4)
    tf_mode = ImagePreprocessing("tf")(x)
    np.testing.assert_allclose(tf_mode, keras.applications.mobilenet_v2.preprocess_input(x.copy()), atol=1e-5)


def test_saved_model_reloads_with_the_same_outputs(tmp_path):
    model = build_deeplabv3_plus(3, backbone="mobilenetv2", weights=None)
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 96, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(model.predict_on_batch(x), again.predict_on_batch(x), atol=1e-5)


def test_seed_tutorial_taps_fail_to_build():
    with pytest.raises(ValueError) as info:
        reference.build_reference_model((256, 256, 3), 5, weights=None, taps=reference.REFERENCE_TAPS)
    message = str(info.value)
    assert "Concatenate" in message or "concatenat" in message.lower()
    assert "32" in message and "16" in message  # 8x8 conv5 map upsampled x4 vs 16x16 conv4 map


def test_corrected_reference_builds_at_full_resolution():
    model = reference.build_reference_model((256, 256, 3), 5, weights=None, taps=reference.CORRECTED_TAPS)
    assert model.output_shape == (None, 256, 256, 5)


def test_offline_imagenet_download_fails_with_advice(monkeypatch):
    from keras.src.applications import resnet

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(resnet.file_utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        build_deeplabv3_plus(5, weights="imagenet")
    assert "DEEPLAB_WEIGHTS=none" in str(info.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in str(info.value)


def test_unreadable_weights_file_is_named(tmp_path):
    bad = tmp_path / "weights.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(WeightsUnavailableError, match="weights.h5"):
        build_deeplabv3_plus(5, weights=str(bad))


def test_weights_file_loads_into_the_dilated_encoder_by_layer_name(tmp_path):
    # A weights file in the layout of Keras's ImageNet file: a plain ResNet50 without top.
    plain = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    rng = np.random.default_rng(0)
    layer = plain.get_layer("conv5_block2_2_conv")
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])
    # Keras's ImageNet files are legacy HDF5, weights grouped by layer name; write one the same way.
    h5py = pytest.importorskip("h5py")
    from keras.src.legacy.saving import legacy_h5_format

    path = tmp_path / "resnet50_notop.h5"
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, plain)
    model = build_deeplabv3_plus(5, weights=str(path))
    np.testing.assert_array_equal(
        model.get_layer("conv5_block2_2_conv").get_weights()[0], plain.get_layer("conv5_block2_2_conv").get_weights()[0]
    )
    assert model.get_layer("conv5_block2_2_conv").dilation_rate == (2, 2)


def test_num_classes_must_be_at_least_two():
    with pytest.raises(ValueError, match="num_classes"):
        build_deeplabv3_plus(1, weights=None)


def test_native_dilated_conv_probe_tells_the_truth():
    import tensorflow as tf

    from helpers.kernels import native_dilated_conv_trains

    x, kernel = tf.ones((1, 9, 9, 2)), tf.ones((3, 3, 2, 3))
    try:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.conv2d(x, kernel, strides=1, padding="SAME", dilations=3)
        tape.gradient(y, x)
        works = True
    except tf.errors.InvalidArgumentError:
        works = False
    assert native_dilated_conv_trains() is works
    # the same answer when first asked while a graph or a tf.function is being built (as count_flops does)
    native_dilated_conv_trains.cache_clear()
    with tf.Graph().as_default():
        assert native_dilated_conv_trains() is works
    native_dilated_conv_trains.cache_clear()
    answers = []
    tf.function(lambda: answers.append(native_dilated_conv_trains()) or tf.constant(0))()
    assert answers == [works]


def explicitly_dilated(kernel, rate: int):
    """A 3x3 kernel spread out by hand: taps ``rate`` apart, zeros between (the definition of atrous)."""
    import tensorflow as tf

    size = 2 * rate + 1
    taps = [[i * rate, j * rate] for i in range(3) for j in range(3)]
    return tf.scatter_nd(taps, tf.reshape(kernel, (9, *kernel.shape[2:])), (size, size, *kernel.shape[2:]))


@pytest.mark.parametrize("native", [True, False], ids=["native", "fallback"])
@pytest.mark.parametrize("rate, size", [(2, 16), (6, 8), (18, 8)])
def test_atrous_conv_matches_an_explicitly_dilated_kernel_in_value_and_gradient(rate, size, native, monkeypatch):
    import tensorflow as tf

    from helpers import kernels
    from helpers.kernels import AtrousConv2D

    trains = kernels.native_dilated_conv_trains()  # without oneDNN/cuDNN the native op runs forward only
    monkeypatch.setattr(kernels, "native_dilated_conv_trains", lambda: native)
    rng = np.random.default_rng(rate)
    x = tf.constant(rng.normal(size=(2, size, size, 8)).astype(np.float32))
    layer = AtrousConv2D(4, 3, dilation_rate=rate, padding="same", use_bias=False)
    layer.build(x.shape)
    results = []
    for conv in (layer, lambda x: tf.nn.conv2d(x, explicitly_dilated(layer.kernel, rate), 1, "SAME")):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = conv(x)
            loss = tf.reduce_sum(y * y)
        gradients = tape.gradient(loss, [x, layer.kernel]) if trains or not native else []
        results.append((y, *gradients))
    assert results[0][0].shape == (2, size, size, 4)
    for ours, by_hand in zip(*results):
        np.testing.assert_allclose(ours.numpy(), by_hand.numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shape", [(4, 6, 5, 3), (3, 1, 1, 7)])  # a feature map, and ASPP's pooled 1x1 branch
def test_fused_batch_norm_matches_keras(shape):
    import tensorflow as tf

    from helpers.kernels import FusedBatchNormalization

    rng = np.random.default_rng(len(shape))
    x = tf.constant(rng.normal(1.0, 3.0, size=shape).astype(np.float32))
    ours, plain = FusedBatchNormalization(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
    for layer in (ours, plain):
        layer.build(shape)
    plain.set_weights([rng.uniform(0.5, 1.5, size=w.shape).astype(np.float32) for w in plain.get_weights()])
    ours.set_weights(plain.get_weights())
    start = plain.get_weights()
    results = []
    for layer in (ours, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y**3)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        # one training call moved the running statistics; inference then uses them
        results.append((y, *grads, *layer.get_weights(), layer(x, training=False)))
    for a, b in zip(*results):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    # by hand: the running variance moves 10% of the way to the biased batch variance, as in Keras
    batch_var = np.var(x.numpy().reshape(-1, shape[-1]), axis=0)
    np.testing.assert_allclose(ours.moving_variance.numpy(), 0.9 * start[3] + 0.1 * batch_var, rtol=1e-4)


def test_separable_model_has_the_parameter_count_computed_by_hand():
    dense = build_deeplabv3_plus(5, backbone="resnet50", weights=None)
    separable = build_deeplabv3_plus(5, backbone="resnet50", weights=None, separable=True)

    def saved(c_in, c_out):  # a 3x3 conv replaced by depthwise 3x3 + its batch norm (4 per channel) + pointwise 1x1
        return 9 * c_in * c_out - (9 * c_in + 4 * c_in + c_in * c_out)

    # three ASPP rates on conv5's 2048 channels, then the decoder: 256 + 48 channels in, then 256
    expected = 3 * saved(2048, 256) + saved(256 + 48, 256) + saved(256, 256)
    assert dense.count_params() - separable.count_params() == expected
    depthwise = separable.get_layer("aspp_rate12_depthwise")
    assert depthwise.dilation_rate == (12, 12) and depthwise.count_params() == 9 * 2048


def test_mixed_precision_computes_in_bfloat16_and_answers_in_float32(tmp_path):
    from helpers import artifacts

    before = keras.config.dtype_policy().name
    model = build_deeplabv3_plus(3, backbone="mobilenetv2", weights=None, separable=True, precision="mixed_bfloat16")
    assert keras.config.dtype_policy().name == before  # the global policy is restored
    assert model.get_layer("aspp_project").compute_dtype == "bfloat16"
    assert model.get_layer("aspp_project").variable_dtype == "float32"  # weights stay float32
    assert model.get_layer("logits").compute_dtype == "float32"
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss, run_eagerly=True)  # one step: tracing would cost more
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, (2, 64, 64))
    assert np.isfinite(model.train_on_batch(x, y))
    model.run_eagerly = False  # predict in a graph, as the reloaded model below does
    out = model.predict_on_batch(x)
    assert out.dtype == np.float32 and out.shape == (2, 64, 64, 3)
    artifacts.save_model(model, tmp_path / "model.keras")
    again = artifacts.load_model(tmp_path / "model.keras")
    assert again.get_layer("aspp_project").compute_dtype == "bfloat16"
    np.testing.assert_allclose(again.predict_on_batch(x), out, atol=1e-5)


def test_precision_auto_follows_the_hardware_and_the_backbone_and_bad_names_are_refused(monkeypatch):
    from helpers import precision

    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: True)
    expected_gpu = "mixed_float16" if __import__("tensorflow").config.list_physical_devices("GPU") else None
    assert precision.resolve_precision("auto", "resnet50") == (expected_gpu or "mixed_bfloat16")
    assert precision.resolve_precision("auto", "mobilenetv2") == (expected_gpu or "float32")  # depthwise: no gain
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: False)
    assert precision.resolve_precision(None, "resnet50") == (expected_gpu or "float32")
    assert precision.resolve_precision("Float32", "resnet50") == "float32"
    assert precision.resolve_precision("mixed_bfloat16", "mobilenetv2") == "mixed_bfloat16"  # asked for: kept
    with pytest.raises(ValueError, match="precision='fp8'"):
        precision.resolve_precision("fp8", "mobilenetv2")


@pytest.mark.parametrize(("backbone", "dtype"), [("resnet50", "bfloat16"), ("mobilenetv2", "float32")])
def test_a_model_built_with_auto_precision_computes_in_what_auto_picks_for_its_backbone(monkeypatch, backbone, dtype):
    from helpers import precision

    if __import__("tensorflow").config.list_physical_devices("GPU"):
        pytest.skip("on a GPU auto picks by the GPU, not the backbone")
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: True)  # a CPU with bfloat16 units
    model = build_deeplabv3_plus(3, (64, 64, 3), backbone=backbone, weights=None, precision="auto")
    assert model.get_layer("aspp_project").compute_dtype == dtype
    assert model.output.dtype == "float32"


@pytest.mark.parametrize("rate", [1, 6])
def test_flops_are_counted_by_hand_whichever_atrous_path_this_machine_runs(rate):
    from helpers.flops import count_flops
    from helpers.kernels import AtrousConv2D

    h, w, c_in, c_out = 16, 12, 8, 4
    model = keras.Sequential(
        [keras.Input((h, w, c_in)), AtrousConv2D(c_out, 3, dilation_rate=rate, padding="same", use_bias=False)]
    )
    # one multiply-add per kernel tap, input channel, output channel and output pixel; 2 FLOPs each
    assert count_flops(model, (h, w, c_in)) == 2 * h * w * 3 * 3 * c_in * c_out


def test_batch_norm_swaps_keep_the_weights_and_the_answers():
    from helpers.kernels import FusedBatchNormalization, with_keras_batch_norm, with_synchronized_batch_norm

    model = build_deeplabv3_plus(3, backbone="mobilenetv2", weights=None, separable=True)
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    expected = model.predict_on_batch(x)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is FusedBatchNormalization and not layer.synchronized for layer in norms)
    synced = with_synchronized_batch_norm(model)
    plain = with_keras_batch_norm(model)
    for copy, kind, synchronized in (
        (synced, FusedBatchNormalization, True),
        (plain, keras.layers.BatchNormalization, False),
    ):
        copied = [layer for layer in copy.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert len(copied) == len(norms)
        assert all(type(layer) is kind and layer.synchronized is synchronized for layer in copied)
        np.testing.assert_allclose(copy.predict_on_batch(x), expected, rtol=1e-4, atol=1e-4)
