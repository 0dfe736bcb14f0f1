"""Colour-coded masks (as annotation tools export them), mapped to class indices through classes.json."""

import json

import numpy as np
import pytest
from PIL import Image

from helpers import data, imageio
from helpers.check import check_dataset

COLOURS = [[0, 0, 0], [128, 64, 128], [0, 0, 142]]


def colour_dataset(root, mode="RGB", extra_colour=None):
    root.mkdir(parents=True, exist_ok=True)
    info = {"classes": ["bg", "road", "car"], "ignore_index": 255, "colors": COLOURS, "ignore_color": [255, 255, 255]}
    (root / "classes.json").write_text(json.dumps(info))
    indices = np.zeros((8, 10), np.uint8)
    indices[4:, :] = 1
    indices[6:, 7:] = 2
    indices[0, 0] = 255
    palette = {0: COLOURS[0], 1: COLOURS[1], 2: COLOURS[2], 255: [255, 255, 255]}
    rgb = np.array([[palette[v] for v in row] for row in indices], np.uint8)
    if extra_colour is not None:
        rgb[1, 1] = extra_colour
    for split in ("train", "val", "test"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        Image.fromarray(np.full((8, 10, 3), 77, np.uint8)).save(root / split / "images" / "a.png")
        mask = Image.fromarray(rgb)
        if mode == "P":
            mask = mask.quantize(colors=8, method=Image.Quantize.MAXCOVERAGE)
        mask.save(root / split / "masks" / "a.png")
    return root, indices


@pytest.mark.parametrize("mode", ["RGB", "P"])
def test_colours_become_class_indices_in_the_pipeline(tmp_path, mode):
    root, indices = colour_dataset(tmp_path / "d", mode)
    info = data.read_dataset_info(root)
    assert info.colors[1] == (128, 64, 128) and info.ignore_color == (255, 255, 255)
    np.testing.assert_array_equal(data.load_mask(str(root / "val" / "masks" / "a.png"), info).numpy()[..., 0], indices)
    _, masks = next(iter(data.make_dataset(root, "val", 16, 1, training=False, info=info)))
    assert set(np.unique(masks.numpy())) == {0, 1, 2, 255}
    report = check_dataset(root)
    assert report.ok, report.format()
    assert report.splits["train"].label_counts[2] == 6


def test_unknown_colour_is_named_in_the_pipeline(tmp_path):
    root, _ = colour_dataset(tmp_path / "d", extra_colour=[10, 20, 30])
    info = data.read_dataset_info(root)
    with pytest.raises(imageio.MaskError) as err:
        data.load_mask(str(root / "train" / "masks" / "a.png"), info)
    assert 'not in classes.json "colors"' in str(err.value) and "train/masks/a.png" in str(err.value)
    assert "10, 20, 30" in str(err.value)


def test_unknown_colour_is_named_by_check_data(tmp_path):
    root, _ = colour_dataset(tmp_path / "d", extra_colour=[10, 20, 30])
    problems = check_dataset(root).problems
    assert len(problems) == 3
    assert problems[0].path.endswith("masks/a.png") and "(10, 20, 30)" in problems[0].message


@pytest.mark.parametrize(
    "colors, words",
    [
        ([[0, 0, 0], [1, 1, 1]], "list of 3"),
        ([[0, 0, 0], [1, 1, 1], [0, 0, 0]], "share a colour"),
        ("red", "list of 3"),
    ],
)
def test_bad_colors_list_is_explained(tmp_path, colors, words):
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c"], "colors": colors}))
    with pytest.raises(data.DatasetError, match=words):
        data.read_dataset_info(tmp_path)
