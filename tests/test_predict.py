"""Prediction input: every kind of image a learner might have, and files that are not images."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from helpers import predict
from helpers.predict import ImageReadError, predict_folder, predict_mask, read_image


class ShapeSpy:
    """Stands in for ``predict.predict_scores`` and remembers the shape of the last batch the network got."""

    def __init__(self):
        self.seen, self.real = None, predict.predict_scores

    def __call__(self, model, batch):
        self.seen = tuple(batch.shape)
        return self.real(model, batch)


@pytest.fixture
def spy(monkeypatch):
    spy = ShapeSpy()
    monkeypatch.setattr(predict, "predict_scores", spy)
    return spy


@pytest.fixture(scope="module")
def model():
    """A stand-in segmenter: class scores at stride 4, like DeepLab's decoder, then upsampled."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.AveragePooling2D(4, padding="same")(inputs)
    x = keras.layers.Conv2D(3, 1, kernel_initializer="ones")(x)
    return keras.Model(inputs, keras.layers.UpSampling2D(4)(x))


def test_grayscale_becomes_three_equal_channels(tmp_path):
    Image.fromarray(np.full((5, 7), 90, np.uint8), "L").save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8 and (image == 90).all()


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[0, 0, 3] = 0  # one fully transparent pixel
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    image = read_image(tmp_path / "t.png")
    assert tuple(image[0, 0]) == (255, 255, 255) and tuple(image[1, 1]) == (200, 0, 0)


def test_palette_image_keeps_its_colours(tmp_path):
    palette_image = Image.new("P", (3, 2))
    palette_image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette_image.putpixel((1, 0), 1)
    palette_image.save(tmp_path / "p.png")
    image = read_image(tmp_path / "p.png")
    assert tuple(image[0, 1]) == (10, 200, 30) and tuple(image[1, 2]) == (0, 0, 0)


def test_sixteen_bit_image_is_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 32768, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")  # PIL writes uint16 as a 16-bit PNG
    image = read_image(tmp_path / "deep.png")
    assert image.shape == (1, 3, 3)
    assert list(image[0, :, 0]) == [0, 128, 255]  # 32768 / 65535 * 255 = 127.5, rounded half up


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)  # stored landscape, 20 rows x 40 columns
    stored[:, :10] = 255  # a white band on the stored image's left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "phone.jpg")
    assert image.shape == (40, 20, 3)  # displayed portrait
    assert image[:10].mean() > 200 and image[-10:].mean() < 50  # the left band is now at the top


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("notes.png", b"this is text, not a picture", ["notes.png", "not an image"]),
        ("cut.png", None, ["cut.png", "truncated or corrupt"]),
    ],
)
def test_unusable_files_are_refused_by_name(tmp_path, name, content, words):
    if content is None:  # the first part of a real PNG
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "full.png")
        content = (tmp_path / "full.png").read_bytes()[:300]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / name)
    for word in words:
        assert word in str(info.value)


def test_tiny_image_is_enlarged_for_the_network_and_answered_at_its_size(model, spy):
    mask = predict_mask(model, np.zeros((8, 8, 3), np.uint8))
    assert mask.shape == (8, 8)
    assert spy.seen[1:3] == (32, 32)


def test_huge_image_is_shrunk_for_the_network_and_answered_at_full_size(model, spy):
    image = np.zeros((4000, 6000, 3), np.uint8)
    image[:, 3000:] = 255  # a bright right half
    mask = predict_mask(model, image)
    assert mask.shape == (4000, 6000) and mask.dtype == np.uint8
    assert spy.seen[1:3] == (1365, 2048)  # longest side capped, aspect kept
    assert predict.network_size(4000, 6000, None) == (1365, 2048)


def test_scores_are_resized_before_the_argmax():
    # two classes whose scores cross in the middle: the mask must follow the interpolated scores
    inputs = keras.Input((None, None, 3))
    ramp = keras.layers.Lambda(lambda x: keras.ops.concatenate([x[..., :1], 255 - x[..., :1]], axis=-1))(inputs)
    model = keras.Model(inputs, ramp)
    image = np.zeros((1, 16, 3), np.uint8)
    image[0, :, 0] = np.linspace(0, 255, 16).astype(np.uint8)
    mask = predict_mask(model, np.repeat(image, 4, axis=0), image_size=None)
    assert list(mask[0]) == [1] * 8 + [0] * 8


def test_folder_of_mixed_files_predicts_what_it_can_and_reports_the_rest(model, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(source / "a.png")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(source / "b.jpg")
    (source / "c.txt").write_text("not an image")
    (source / "d.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(source / "a.tif")  # same stem as a.png
    report = predict_folder(model, source, tmp_path / "out", image_size=64)
    assert [p.name for p in report.written] == ["a.png", "b.png"]
    assert np.asarray(Image.open(report.written[0])).shape == (30, 40)
    skipped = {path.name: reason for path, reason in report.skipped}
    assert set(skipped) == {"a.tif", "c.txt", "d.jpg"}
    assert "c.txt" in skipped["c.txt"] and "stem" in skipped["a.tif"]
    assert "Skipped 3 file(s)" in report.format()
    assert not list((tmp_path / "out").glob(".*"))  # no partial files left behind


def test_folder_without_images_writes_nothing(model, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("hello")
    report = predict_folder(model, tmp_path / "in", tmp_path / "out")
    assert report.written == [] and len(report.skipped) == 1
    assert not (tmp_path / "out").exists()


def test_images_of_several_sizes_in_a_row_with_atrous_separable_aspp():
    # Keras's predict_on_batch retraces a second size with some dimensions still fixed, and
    # TensorFlow's dilated depthwise conv then pads wrongly ("not divisible by block_shape");
    # 200x300 then 240x320 at image size 128 means 128x192 then 128x171 for the network.
    from helpers.model import build_deeplabv3_plus

    model = build_deeplabv3_plus(3, backbone="mobilenetv2", weights=None, separable=True, precision="float32")
    rng = np.random.default_rng(0)
    for height, width in [(200, 300), (240, 320), (320, 240), (100, 133)]:
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        assert predict_mask(model, image, image_size=128).shape == (height, width)
        size = predict.network_size(height, width, 128)
        batch = tf.image.resize(tf.constant(image[None], tf.float32), size)
        eager = model(batch, training=False).numpy()  # eager: every shape known, no retracing involved
        np.testing.assert_allclose(predict.predict_scores(model, batch).numpy(), eager, rtol=1e-4, atol=1e-4)
