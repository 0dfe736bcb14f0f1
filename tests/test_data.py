import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from helpers import data, imageio


def write_dataset(root, masks, classes=("a", "b", "c"), ignore_index=255, split="train"):
    """A dataset on disk from a list of mask arrays; images are grey levels of the mask."""
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps({"classes": list(classes), "ignore_index": ignore_index}))
    for i, mask in enumerate(masks):
        Image.fromarray((mask * 60).astype(np.uint8)).convert("RGB").save(root / split / "images" / f"s{i}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / split / "masks" / f"s{i}.png")
    return root


def test_read_dataset_info(tmp_path):
    (tmp_path / "classes.json").write_text('{"classes": ["x", "y"], "ignore_index": null}')
    info = data.read_dataset_info(tmp_path)
    assert info.classes == ("x", "y") and info.ignore_index is None and info.num_classes == 2


@pytest.mark.parametrize(
    "text, words",
    [
        (None, ["classes.json is missing"]),
        ("{not json", ["not valid JSON"]),
        ('{"classes": []}', ["non-empty list"]),
        ('{"classes": ["a", "a"]}', ["twice"]),
        ('{"classes": ["a", "b"], "ignore_index": 1}', ["ignore_index", "'b'"]),
        ('{"classes": ["a", "b"], "ignore_index": "void"}', ["ignore_index"]),
    ],
)
def test_bad_classes_json_is_explained(tmp_path, text, words):
    if text is not None:
        (tmp_path / "classes.json").write_text(text)
    with pytest.raises(data.DatasetError) as info:
        data.read_dataset_info(tmp_path)
    for word in words:
        assert word in str(info.value)


def test_pairs_are_matched_by_stem_and_unmatched_files_named(tmp_path):
    root = write_dataset(tmp_path, [np.zeros((8, 8), int)] * 2)
    images, masks = data.list_pairs(root, "train")
    assert [p.split("/")[-1] for p in images] == ["s0.png", "s1.png"]
    assert [p.split("/")[-1] for p in masks] == ["s0.png", "s1.png"]
    (root / "train" / "images" / "lonely.png").write_bytes((root / "train" / "images" / "s0.png").read_bytes())
    with pytest.raises(data.DatasetError, match="lonely.png has no mask"):
        data.list_pairs(root, "train")


def test_jpeg_mask_and_empty_split_are_refused(tmp_path):
    root = write_dataset(tmp_path, [np.zeros((8, 8), int)])
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "train" / "masks" / "s1.jpg")
    with pytest.raises(data.DatasetError, match="JPEG mask"):
        data.list_pairs(root, "train")
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "masks").mkdir(parents=True)
    with pytest.raises(data.DatasetError, match="is empty: the val split has no image/mask pairs"):
        data.list_pairs(root, "val")


def test_colour_mask_is_refused_not_converted(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    with pytest.raises(imageio.MaskError, match=r"rgb.png has 3 channels \(mode RGB\)"):
        data.load_mask(str(path))


def test_grayscale_and_rgba_images_become_rgb(tmp_path):
    Image.fromarray(np.full((4, 5), 9, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((4, 5, 4), 9, np.uint8)).save(tmp_path / "a.png")
    for name in ("g.png", "a.png"):
        assert data.load_image(str(tmp_path / name)).shape == (4, 5, 3)


def test_nearest_resize_never_invents_labels():
    mask = np.zeros((37, 53, 1), np.uint8)
    mask[:, 20:] = 3
    mask[10:, 40:] = 255
    resized = data.resize_mask(tf.constant(mask), 64).numpy()
    assert set(np.unique(resized)) == {0, 3, 255}
    bilinear = tf.image.resize(tf.cast(mask, tf.float32), (64, 64)).numpy()
    assert len(np.unique(bilinear)) > 3  # the lesson: bilinear would invent labels


def test_augmentation_keeps_labels_and_alignment():
    # 8x8 blocks with labels 0..4; the image encodes each block's label as its grey level,
    # so any misalignment between image and mask shows up as disagreement.
    size = 64
    labels = (np.add.outer(np.arange(size) // 8, np.arange(size) // 8) % 5).astype(np.uint8)
    image = np.repeat((labels * 50)[..., None], 3, axis=-1).astype(np.uint8)
    mask = labels[..., None]
    for i in range(12):
        seeds = tf.constant(np.random.default_rng(i).integers(0, 2**31, (4, 2)), tf.int64)
        aug_image, aug_mask = data.augment_pair(tf.constant(image), tf.constant(mask), seeds, size, pad_label=255)
        aug_image, aug_mask = aug_image.numpy(), aug_mask.numpy()[..., 0]
        assert aug_image.shape == (size, size, 3) and aug_mask.shape == (size, size)
        assert set(np.unique(aug_mask)) <= {0, 1, 2, 3, 4, 255}
        valid = aug_mask != 255
        # brightness jitter shifts every grey level by the same amount (at most 25): estimate and undo it
        shift = np.median(aug_image[..., 0][valid] - aug_mask[valid] * 50.0)
        decoded = np.clip(np.round((aug_image[..., 0] - shift) / 50), 0, 4)
        agreement = np.mean(decoded[valid] == aug_mask[valid])
        assert agreement > 0.9, f"seed {i}: image and mask disagree on {1 - agreement:.0%} of pixels"


def test_without_ignore_index_augmentation_never_pads():
    image = tf.zeros((32, 32, 3), tf.uint8)
    mask = tf.ones((32, 32, 1), tf.uint8)
    for i in range(8):
        seeds = tf.constant(np.random.default_rng(i).integers(0, 2**31, (4, 2)), tf.int64)
        _, out = data.augment_pair(image, mask, seeds, 32, pad_label=None)
        assert set(np.unique(out.numpy())) == {1}


def test_training_dataset_shapes_and_shuffling(synthetic_dir):
    ds = data.make_dataset(synthetic_dir, "train", 64, 4, training=True, seed=1)
    images, masks = next(iter(ds))
    assert images.shape == (4, 64, 64, 3) and images.dtype == tf.float32
    assert masks.shape == (4, 64, 64) and masks.dtype == tf.int32
    assert 0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255
    assert data.steps_per_epoch(12, 4) == 3  # 12 images, full batches only
    batches = [m.numpy() for _, m in ds.take(6)]  # two epochs of three batches
    assert not all(np.array_equal(a, b) for a, b in zip(batches[:3], batches[3:])), "epochs should differ (shuffle)"
    again = [m.numpy() for _, m in ds.take(6)]
    assert all(np.array_equal(a, b) for a, b in zip(batches, again)), "same seed, same stream"


def test_training_stream_can_start_at_any_epoch(synthetic_dir):
    """What resuming needs: starting at epoch 2 gives exactly the batches an uninterrupted run sees there."""
    full = [b for b in data.make_dataset(synthetic_dir, "train", 48, 4, training=True, seed=5).take(9)]
    resumed = [
        b for b in data.make_dataset(synthetic_dir, "train", 48, 4, training=True, seed=5, first_epoch=2).take(3)
    ]
    for (x1, y1), (x2, y2) in zip(full[6:], resumed):
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    other_seed = next(iter(data.make_dataset(synthetic_dir, "train", 48, 4, training=True, seed=6)))
    assert not np.array_equal(other_seed[1].numpy(), full[0][1].numpy())


def test_evaluation_dataset_is_deterministic(synthetic_dir):
    ds = data.make_dataset(synthetic_dir, "val", 64, 3, training=False)
    a = [m.numpy() for _, m in ds]
    b = [m.numpy() for _, m in ds]
    assert [len(x) for x in a] == [3, 1]  # partial last batch kept for evaluation
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_pixel_weights_and_median_frequency():
    w = data.median_frequency_weights(np.array([600, 300, 100, 0]))
    # frequencies 0.6, 0.3, 0.1 (class 3 absent): median 0.3
    np.testing.assert_allclose(w, [0.5, 1.0, 3.0, 0.0])
    mask = tf.constant([[0, 1, 2, 255]])
    np.testing.assert_allclose(data.pixel_weights(mask, tf.constant(w), 255).numpy(), [[0.5, 1.0, 3.0, 0.0]])
    softened = data.median_frequency_weights(np.array([600, 300, 100, 0]), power=0.5)
    np.testing.assert_allclose(softened, [0.5**0.5, 1.0, 3.0**0.5, 0.0], rtol=1e-6)  # the square roots


def test_class_pixel_counts(tmp_path):
    m = np.zeros((4, 4), int)
    m[0] = 1
    m[1, :2] = 255
    root = write_dataset(tmp_path, [m])
    np.testing.assert_array_equal(data.class_pixel_counts(root), [10, 4, 0])


def test_missing_user_data_dir_is_explained(tmp_path):
    from helpers.config import load_settings

    settings = load_settings({"DEEPLAB_DATA_DIR": str(tmp_path / "nope")})
    with pytest.raises(data.DatasetError, match="does not exist"):
        data.ensure_data(settings)


def test_training_stream_works_with_seed_zero(synthetic_dir):
    # TensorFlow treats a global seed of 0 specially; the stream must not depend on the global seed at all
    import keras

    keras.utils.set_random_seed(0)
    first = next(iter(data.make_dataset(synthetic_dir, "train", 32, 4, training=True, seed=0)))
    keras.utils.set_random_seed(123)
    again = next(iter(data.make_dataset(synthetic_dir, "train", 32, 4, training=True, seed=0)))
    np.testing.assert_array_equal(first[1].numpy(), again[1].numpy())


def test_scaled_shape_keeps_each_images_aspect_ratio():
    assert data.scaled_shape(240, 320, 64) == (64, 85)  # 64 * 4/3 = 85.3
    assert data.scaled_shape(360, 480, 256) == (256, 341)
    assert data.scaled_shape(80, 40, 32) == (64, 32)  # portrait: the width is the shorter side
    tensor_shape = data.scaled_shape(tf.constant(80), tf.constant(40), 32)
    assert tuple(int(v) for v in tensor_shape) == (64, 32)


def test_mixed_portrait_and_landscape_images_are_not_squashed(tmp_path):
    # one landscape (30x60) and one portrait (60x30) image; each keeps its own shape
    root = write_dataset(tmp_path, [np.zeros((30, 60), int), np.ones((60, 30), int)], split="val")
    batches = list(data.make_dataset(root, "val", 16, 2, training=False))
    (images, masks) = batches[0]
    assert images.shape == (2, 32, 32, 3)  # padded to the batch's largest height and width
    np.testing.assert_array_equal(masks[0, :16, :32], 0)  # landscape: 16x32
    np.testing.assert_array_equal(masks[0, 16:], 255)  # the rest is padding, with the ignore index
    np.testing.assert_array_equal(masks[1, :32, :16], 1)  # portrait: 32x16
    np.testing.assert_array_equal(masks[1, :, 16:], 255)


def test_mixed_shapes_without_an_ignore_index_go_one_at_a_time(tmp_path):
    root = write_dataset(tmp_path, [np.zeros((30, 60), int), np.ones((60, 30), int)], ignore_index=None, split="val")
    shapes = [tuple(m.shape) for _, m in data.make_dataset(root, "val", 16, 2, training=False)]
    assert shapes == [(1, 16, 32), (1, 32, 16)]


def test_training_crops_mixed_shapes_into_squares(tmp_path):
    root = write_dataset(tmp_path, [np.zeros((30, 60), int), np.ones((60, 30), int)])
    images, masks = next(iter(data.make_dataset(root, "train", 16, 2, training=True)))
    assert images.shape == (2, 16, 16, 3) and masks.shape == (2, 16, 16)


def test_a_split_smaller_than_a_batch_gets_a_new_augmentation_for_every_copy(tmp_path):
    rng = np.random.default_rng(0)
    root = write_dataset(tmp_path, [rng.integers(0, 3, (40, 40)) for _ in range(2)])
    images, _ = next(iter(data.make_dataset(root, "train", 16, 8, training=True)))
    flat = images.numpy().reshape(8, -1)
    distinct = {row.tobytes() for row in flat}
    assert len(distinct) == 8, f"only {len(distinct)} distinct crops among 8 copies of 2 images"


def test_evaluation_images_keep_their_aspect_and_training_crops_are_square(synthetic_dir):
    images, masks = next(iter(data.make_dataset(synthetic_dir, "test", 64, 2, training=False)))
    assert images.shape == (2, 64, 85, 3) and masks.shape == (2, 64, 85)
    images, masks = next(iter(data.make_dataset(synthetic_dir, "train", 64, 2, training=True)))
    assert images.shape == (2, 64, 64, 3) and masks.shape == (2, 64, 64)


def test_augmentation_scales_a_wide_image_without_squashing_it():
    # vertical stripes 4 pixels wide on a 32x64 image; the same scale on both axes keeps them
    # square-pixelled: a stripe's width in the output is 4 * scale, its height is unchanged
    stripes = ((np.arange(64) // 4) % 2).astype(np.uint8)
    mask = np.repeat(stripes[None, :], 32, axis=0)[..., None]
    image = np.repeat(mask * 200, 3, axis=-1).astype(np.uint8)
    for i in range(6):
        seeds = tf.constant(np.random.default_rng(i).integers(0, 2**31, (4, 2)), tf.int64)
        scale = float(tf.random.stateless_uniform([], seeds[0], 1.0, data.TRAIN_SCALES[1]))
        _, out = data.augment_pair(tf.constant(image), tf.constant(mask), seeds, 32, pad_label=None)
        row = out.numpy()[16, :, 0]
        runs = np.diff(np.flatnonzero(np.diff(row) != 0))  # lengths of the inner stripes
        assert out.shape == (32, 32, 1)
        assert np.all(np.abs(runs - 4 * scale) <= 1), (scale, runs)
        assert np.all(out.numpy()[:, :, 0] == row[None, :]), "stripes stay vertical"


@pytest.mark.parametrize("bad", [(2.0, 0.5), (0.0, 1.5), (-1.0, 1.0)])
def test_a_scale_range_that_cannot_be_drawn_from_is_named(tmp_path, bad):
    with pytest.raises(ValueError, match=rf"scale_range=\({bad[0]}, {bad[1]}\)"):
        data.make_dataset(tmp_path, "train", 32, 2, training=True, scale_range=bad)
