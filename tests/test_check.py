"""check-data: every broken case is built on disk and must be reported, naming the file."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers.check import check_dataset


def make_clean(root, n=2):
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps({"classes": ["bg", "road", "car"], "ignore_index": 255}))
    for split in ("train", "val", "test"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((6, 8, 3), 90, np.uint8)).save(root / split / "images" / f"{i}.png")
            mask = np.zeros((6, 8), np.uint8)
            mask[:, 4:] = 2
            mask[0, 0] = 255
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")
    return root


def only_problem(report):
    assert len(report.problems) == 1, [str(p) for p in report.problems]
    return report.problems[0]


def test_clean_dataset_has_counts_sizes_and_histogram(tmp_path):
    report = check_dataset(make_clean(tmp_path))
    assert report.ok, report.format()
    assert report.splits["train"].pairs == 2
    assert report.splits["train"].image_sizes == {(8, 6): 2}
    counts = report.splits["val"].label_counts
    assert (counts[0], counts[2], counts[255]) == (2 * 23, 2 * 24, 2 * 1)
    assert "No problems found." in report.format() and "car 50.0%" in report.format()


def test_image_without_mask_and_mask_without_image(tmp_path):
    root = make_clean(tmp_path)
    (root / "train" / "masks" / "1.png").rename(root / "train" / "masks" / "9.png")
    messages = sorted(str(p) for p in check_dataset(root).problems)
    assert any("train/images/1.png: has no mask" in m for m in messages)
    assert any("train/masks/9.png: has no image" in m for m in messages)


def test_truncated_file(tmp_path):
    root = make_clean(tmp_path)
    path = root / "val" / "images" / "0.png"
    path.write_bytes(path.read_bytes()[:40])
    problem = only_problem(check_dataset(root))
    assert problem.path.endswith("val/images/0.png") and "truncated or corrupt" in problem.message


def test_non_image_file(tmp_path):
    root = make_clean(tmp_path)
    (root / "test" / "images" / "notes.txt").write_text("hello")
    (root / "test" / "images" / "1.png").write_text("not a png at all")
    messages = [str(p) for p in check_dataset(root).problems]
    assert any("notes.txt: is not a .png or .jpg image" in m for m in messages)
    assert any("test/images/1.png: is not an image file" in m for m in messages)


def test_mask_size_differs_from_image(tmp_path):
    root = make_clean(tmp_path)
    Image.fromarray(np.zeros((5, 8), np.uint8)).save(root / "train" / "masks" / "0.png")
    problem = only_problem(check_dataset(root))
    assert "is 8x5 but its image is 8x6" in problem.message


def test_colour_mask(tmp_path):
    root = make_clean(tmp_path)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "train" / "masks" / "0.png")
    problem = only_problem(check_dataset(root))
    assert "3 channels (mode RGB)" in problem.message and problem.path.endswith("train/masks/0.png")


def test_labels_outside_the_classes(tmp_path):
    root = make_clean(tmp_path)
    mask = np.zeros((6, 8), np.uint8)
    mask[2, 2] = 7
    Image.fromarray(mask).save(root / "val" / "masks" / "1.png")
    problem = only_problem(check_dataset(root))
    assert "label value(s) [7]" in problem.message and "a class (0..2)" in problem.message


def test_jpeg_mask(tmp_path):
    root = make_clean(tmp_path)
    (root / "test" / "masks" / "1.png").unlink()
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(root / "test" / "masks" / "1.jpg")
    messages = [str(p) for p in check_dataset(root).problems]
    assert any("1.jpg: is a JPEG mask" in m for m in messages)


def test_sixteen_bit_mask_is_read_when_its_labels_fit_and_refused_when_not(tmp_path):
    root = make_clean(tmp_path)
    mask = np.zeros((6, 8), np.uint16)
    mask[0, :3] = 2
    Image.fromarray(mask.astype(np.uint8)).save(root / "train" / "masks" / "1.png")
    as_8_bit = check_dataset(root).splits["train"].label_counts
    Image.fromarray(mask).save(root / "train" / "masks" / "1.png")
    assert Image.open(root / "train" / "masks" / "1.png").mode.startswith("I")
    report = check_dataset(root)
    assert report.ok
    np.testing.assert_array_equal(report.splits["train"].label_counts, as_8_bit)
    mask[0, 0] = 300
    Image.fromarray(mask).save(root / "train" / "masks" / "1.png")
    problem = only_problem(check_dataset(root))
    assert "16-bit mask with label values up to 300" in problem.message and problem.path.endswith("masks/1.png")


def test_empty_split(tmp_path):
    root = make_clean(tmp_path)
    for path in (root / "val" / "images").iterdir():
        path.unlink()
    for path in (root / "val" / "masks").iterdir():
        path.unlink()
    problem = only_problem(check_dataset(root))
    assert problem.path.endswith("val") and "is empty" in problem.message


@pytest.mark.parametrize(
    "text, words",
    [(None, "is missing"), ("{oops", "not valid JSON"), ('{"classes": ["a"], "ignore_index": 0}', "ignore_index")],
)
def test_classes_json_missing_malformed_or_wrong(tmp_path, text, words):
    root = make_clean(tmp_path)
    if text is None:
        (root / "classes.json").unlink()
    else:
        (root / "classes.json").write_text(text)
    problems = check_dataset(root).problems
    assert any(p.path.endswith("classes.json") and words in p.message for p in problems)


def test_classes_json_that_disagrees_with_the_masks(tmp_path):
    root = make_clean(tmp_path)
    (root / "classes.json").write_text(json.dumps({"classes": ["bg", "road"], "ignore_index": 255}))
    problems = check_dataset(root).problems
    assert len(problems) == 6 and all("label value(s) [2]" in p.message for p in problems)


def test_grayscale_and_rgba_images_are_accepted(tmp_path):
    root = make_clean(tmp_path)
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(root / "train" / "images" / "0.png")
    Image.fromarray(np.zeros((6, 8, 4), np.uint8)).save(root / "train" / "images" / "1.png")
    assert check_dataset(root).ok


def test_cli_exit_status(tmp_path):
    root = make_clean(tmp_path)
    ok = subprocess.run([sys.executable, "-m", "helpers", "check-data", str(root)], capture_output=True, text=True)
    assert ok.returncode == 0 and "No problems found." in ok.stdout
    (root / "train" / "masks" / "0.png").unlink()
    bad = subprocess.run([sys.executable, "-m", "helpers", "check-data", str(root)], capture_output=True, text=True)
    assert bad.returncode == 1 and "train/images/0.png: has no mask" in bad.stdout


def test_training_refuses_a_dataset_that_fails_the_check(tmp_path):
    from helpers import train
    from helpers.config import load_settings
    from helpers.data import DatasetError

    root = make_clean(tmp_path / "d")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "train" / "masks" / "0.png")
    settings = load_settings({"DEEPLAB_DATA_DIR": str(root), "DEEPLAB_OUTPUT_DIR": str(tmp_path / "o")})
    with pytest.raises(DatasetError, match="3 channels"):
        train.train(settings)
    assert not (tmp_path / "o").exists()


def test_report_counts_match_the_pipeline_counts_used_for_class_weights(synthetic_dir):
    from helpers import data

    report = check_dataset(synthetic_dir)
    info = data.read_dataset_info(synthetic_dir)
    np.testing.assert_array_equal(
        report.splits["train"].label_counts[: info.num_classes], data.class_pixel_counts(synthetic_dir, "train", info)
    )
