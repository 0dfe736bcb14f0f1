import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from helpers import synthetic


def digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = synthetic.generate_dataset(tmp_path / "a", 3, 1, 1, seed=5)
    b = synthetic.generate_dataset(tmp_path / "b", 3, 1, 1, seed=5)
    c = synthetic.generate_dataset(tmp_path / "c", 3, 1, 1, seed=6)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_layout_and_classes_json(synthetic_dir):
    info = json.loads((synthetic_dir / "classes.json").read_text())
    assert info["classes"] == ["background", "road", "car", "pedestrian", "building"]
    assert info["ignore_index"] == 255
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        images = sorted((synthetic_dir / split / "images").glob("*.png"))
        masks = sorted((synthetic_dir / split / "masks").glob("*.png"))
        assert len(images) == len(masks) == n
        assert [p.name for p in images] == [p.name for p in masks]
    image = Image.open(images[0])
    mask = Image.open(masks[0])
    assert image.mode == "RGB" and mask.mode == "L" and image.size == mask.size == (320, 240)


def test_all_five_classes_appear_and_are_imbalanced(synthetic_dir):
    counts = np.zeros(256, np.int64)
    for path in (synthetic_dir / "train" / "masks").glob("*.png"):
        counts += np.bincount(np.asarray(Image.open(path)).ravel(), minlength=256)
    assert all(counts[:5] > 0), counts[:5]
    assert set(np.flatnonzero(counts)) <= {0, 1, 2, 3, 4, 255}
    assert counts[3] < counts[1] / 3  # pedestrians are rare next to road, as in real street scenes


def test_scenes_vary():
    a, _ = synthetic.render_scene(np.random.default_rng(1))
    b, _ = synthetic.render_scene(np.random.default_rng(2))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 10


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic.render_scene

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_scene", flaky)
    with pytest.raises(RuntimeError):
        synthetic.generate_dataset(tmp_path / "d", 4, 1, 1)
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_not_overwritten_by_accident(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        synthetic.generate_dataset(target, 1, 1, 1)
    with pytest.raises(FileExistsError, match="does not look like a course dataset"):
        synthetic.generate_dataset(target, 1, 1, 1, overwrite=True)
    assert (target / "precious.txt").read_text() == "keep me"
