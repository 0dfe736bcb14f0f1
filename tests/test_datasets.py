"""CamVid and Oxford-IIIT Pet converters, on fixtures built in their exact upstream formats."""

import io
import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import data, datasets, train, viz
from helpers.check import check_dataset
from helpers.config import load_settings


def camvid_fixture(root, per_split=4, shape=(48, 64)):
    """CamVid as the SegNet tutorial publishes it: RGB PNGs, and annotations of class indices 0-11."""
    rng = np.random.default_rng(0)
    for images, masks in datasets.CAMVID_SPLITS.values():
        (root / images).mkdir(parents=True)
        (root / masks).mkdir(parents=True)
        for i in range(per_split):
            name = f"0001TP_{i:06d}.png"
            Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(root / images / name)
            annotation = np.zeros(shape, np.uint8)
            annotation[: shape[0] // 2] = 0  # sky
            annotation[shape[0] // 2 :] = 3  # road
            annotation[-8:, :16] = 8  # car
            annotation[0, 0] = 11  # unlabelled
            Image.fromarray(annotation).save(root / masks / name)
    return root


def tiny_training(data_dir, out, model):
    """One epoch of the course's training loop on ``data_dir``, with a tiny model."""
    settings = load_settings(
        {
            "DEEPLAB_DATA_DIR": str(data_dir),
            "DEEPLAB_OUTPUT_DIR": str(out),
            "DEEPLAB_IMAGE_SIZE": "32",
            "DEEPLAB_BATCH_SIZE": "2",
            "DEEPLAB_EPOCHS": "1",
            "DEEPLAB_BACKBONE": "mobilenetv2",
        }
    )
    return train.train(settings, model=model, verbose=0)


@pytest.mark.slow
def test_camvid_conversion_and_one_training_step(tmp_path, tiny_model):
    target = datasets.convert_camvid(camvid_fixture(tmp_path / "CamVid"), tmp_path / "camvid")
    info = json.loads((target / "classes.json").read_text())
    assert info["classes"] == datasets.CAMVID_CLASSES and len(info["classes"]) == 11
    assert info["ignore_index"] == 11
    report = check_dataset(target)
    assert report.ok, report.format()
    assert {s: r.pairs for s, r in report.splits.items()} == {"train": 4, "val": 4, "test": 4}
    result = tiny_training(target, tmp_path / "out", tiny_model(11))
    assert result.epochs_run == 1 and np.isfinite(result.history["loss"][0])


def test_camvid_palette_is_the_one_users_know():
    palette = viz.make_palette(datasets.CAMVID_CLASSES)
    assert tuple(palette[3]) == (128, 64, 128)  # road
    assert tuple(palette[8]) == (64, 0, 128)  # car


def test_camvid_layout_errors_name_the_missing_folder(tmp_path):
    root = camvid_fixture(tmp_path / "CamVid", per_split=1)
    (root / "valannot" / "0001TP_000000.png").unlink()
    (root / "valannot").rmdir()
    with pytest.raises(FileNotFoundError, match="valannot is missing"):
        datasets.convert_camvid(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def pet_examples(n=6, shape=(40, 56)):
    """Examples shaped like tensorflow_datasets' oxford_iiit_pet: trimap 1 pet, 2 background, 3 border."""
    rng = np.random.default_rng(1)
    for i in range(n):
        trimap = np.full((*shape, 1), 2, np.uint8)
        trimap[10:30, 15:40] = 3
        trimap[12:28, 17:38] = 1
        yield {
            "image": rng.integers(0, 255, (*shape, 3), dtype=np.uint8),
            "segmentation_mask": trimap,
            "file_name": f"Abyssinian_{i}.jpg".encode(),
            "label": 0,
            "species": 0,
            "split": ["train", "train", "train", "train", "val", "test"][i],
        }


@pytest.mark.slow
def test_pet_conversion_and_one_training_step(tmp_path, tiny_model):
    target = datasets.convert_pet_examples(pet_examples(), tmp_path / "pets")
    assert data.read_dataset_info(target).classes == ("pet", "background", "border")
    mask = np.asarray(Image.open(target / "train" / "masks" / "Abyssinian_0.png"))
    assert set(np.unique(mask)) == {0, 1, 2} and mask[20, 20] == 0 and mask[0, 0] == 1
    report = check_dataset(target)
    assert report.ok, report.format()
    assert {s: r.pairs for s, r in report.splits.items()} == {"train": 4, "val": 1, "test": 1}
    result = tiny_training(target, tmp_path / "out", tiny_model(3))
    assert result.epochs_run == 1 and np.isfinite(result.history["loss"][0])


def test_pet_trimap_with_other_values_is_refused(tmp_path):
    bad = next(pet_examples(1))
    bad["segmentation_mask"][0, 0] = 7
    with pytest.raises(ValueError, match="trimap values must be 1, 2 or 3"):
        datasets.convert_pet_examples([bad], tmp_path / "pets")
    assert list(tmp_path.iterdir()) == []


def test_offline_download_says_how_to_provide_the_files(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datasets.urllib.request, "urlopen", offline)
    with pytest.raises(datasets.DownloadError) as info:
        datasets.prepare_camvid(tmp_path / "camvid", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "Offline?" in message and "convert-camvid" in message and str(tmp_path / "cache") in message


class FakeResponse(io.BytesIO):
    """What urlopen returns, for a server on no network: bytes, a status, a context manager."""

    def __init__(self, payload, status=200):
        super().__init__(payload)
        self.status = status

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_resumes_a_partial_file(tmp_path, monkeypatch):
    payload = b"0123456789"
    (tmp_path / "file.zip.part").write_bytes(payload[:4])
    seen = {}

    def fake_urlopen(request, timeout):
        seen["range"] = request.get_header("Range")
        return FakeResponse(payload[4:], status=206)

    monkeypatch.setattr(datasets.urllib.request, "urlopen", fake_urlopen)
    path = datasets.download("https://example.invalid/file.zip", tmp_path / "file.zip")
    assert seen["range"] == "bytes=4-" and path.read_bytes() == payload
    assert not (tmp_path / "file.zip.part").exists()


def fake_server(monkeypatch, payload):
    monkeypatch.setattr(datasets.urllib.request, "urlopen", lambda request, timeout: FakeResponse(payload))


def test_download_verifies_and_records_the_checksum(tmp_path, monkeypatch):
    import hashlib

    fake_server(monkeypatch, b"camvid bytes")
    with pytest.raises(datasets.DownloadError, match="expected 000"):
        datasets.download("https://example.invalid/a.zip", tmp_path / "a.zip", sha256="000")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    good = hashlib.sha256(b"camvid bytes").hexdigest()
    path = datasets.download("https://example.invalid/a.zip", tmp_path / "a.zip", sha256=good)
    assert (tmp_path / "a.zip.sha256").read_text().strip() == good
    path.write_bytes(b"damaged")  # the cache goes bad later
    with pytest.raises(datasets.DownloadError, match="does not match its checksum"):
        datasets.download("https://example.invalid/a.zip", path)


def test_download_gives_the_file_keras_get_file_gives(tmp_path):
    import hashlib

    import keras

    source = tmp_path / "served" / "data.zip"
    source.parent.mkdir()
    source.write_bytes(bytes(range(256)) * 64)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    ours = datasets.download(source.as_uri(), tmp_path / "ours" / "data.zip", sha256=digest)
    by_keras = keras.utils.get_file(
        "data.zip", source.as_uri(), file_hash=digest, cache_dir=str(tmp_path / "keras"), cache_subdir=""
    )
    assert ours.read_bytes() == Path(by_keras).read_bytes() == source.read_bytes()


def test_incomplete_camvid_copy_is_refused(tmp_path):
    root = camvid_fixture(tmp_path / "CamVid", per_split=2)
    with pytest.raises(FileNotFoundError, match="holds 2 images, CamVid's train split has 367"):
        datasets.convert_camvid(root, tmp_path / "out", datasets.CAMVID_COUNTS)
    assert not (tmp_path / "out").exists()


def test_missing_tensorflow_datasets_is_one_sentence_with_the_install_line(tmp_path, monkeypatch):
    import sys

    from helpers import datasets

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"needs tensorflow-datasets: pip install 'deeplab-course\[datasets\]'"):
        datasets.prepare_pets(tmp_path / "pets")
    assert not (tmp_path / "pets").exists()
