import dataclasses
from pathlib import Path

import pytest

from helpers.config import ENV_VARS, SettingsError, load_settings


def test_every_documented_variable_is_read():
    expected = {
        "DEEPLAB_DATASET", "DEEPLAB_DATA_DIR", "DEEPLAB_OUTPUT_DIR", "DEEPLAB_IMAGE_SIZE", "DEEPLAB_BATCH_SIZE",
        "DEEPLAB_EPOCHS",
        "DEEPLAB_TRAIN_MINUTES", "DEEPLAB_BACKBONE", "DEEPLAB_WEIGHTS", "DEEPLAB_SEED", "DEEPLAB_PROFILE",
        "DEEPLAB_SEPARABLE", "DEEPLAB_OUTPUT_STRIDE", "DEEPLAB_PRECISION", "DEEPLAB_XLA", "DEEPLAB_STRATEGY",
    }  # fmt: skip
    assert set(ENV_VARS) == expected


def test_smoke_profile_is_the_default_and_uses_built_in_data():
    s = load_settings({})
    assert s.profile == "smoke"
    assert s.data_dir_is_default
    assert s.data_dir.name == "synthetic-smoke"
    assert s.weights == "none" and s.backbone_weights is None
    assert s.image_size % 16 == 0
    assert (s.backbone, s.separable, s.precision, s.output_stride, s.xla) == ("mobilenetv2", True, "auto", 16, False)


def test_full_profile_defaults():
    s = load_settings({"DEEPLAB_PROFILE": "full"})
    assert (s.image_size, s.weights, s.train_minutes, s.backbone) == (256, "imagenet", 8.0, "resnet50")
    assert s.backbone_weights == "imagenet"


def test_environment_overrides_profile(tmp_path):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"x")
    s = load_settings(
        {
            "DEEPLAB_DATA_DIR": str(tmp_path / "d"),
            "DEEPLAB_OUTPUT_DIR": str(tmp_path / "o"),
            "DEEPLAB_IMAGE_SIZE": "320",
            "DEEPLAB_BATCH_SIZE": "4",
            "DEEPLAB_EPOCHS": "2",
            "DEEPLAB_TRAIN_MINUTES": "1.5",
            "DEEPLAB_BACKBONE": "MobileNetV2",
            "DEEPLAB_WEIGHTS": str(weights),
            "DEEPLAB_SEED": "3",
            "DEEPLAB_SEPARABLE": "no",
            "DEEPLAB_PRECISION": "Mixed_Float16",
            "DEEPLAB_XLA": "1",
        }
    )
    assert s.data_dir == Path(tmp_path / "d") and not s.data_dir_is_default and s.dataset == "path"
    assert s.output_dir == Path(tmp_path / "o")
    assert (s.image_size, s.batch_size, s.epochs, s.train_minutes) == (320, 4, 2, 1.5)
    assert (s.backbone, s.backbone_weights, s.seed) == ("mobilenetv2", str(weights), 3)
    assert (s.separable, s.precision, s.xla, s.output_stride) == (False, "mixed_float16", True, 16)


@pytest.mark.parametrize(
    "env, words",
    [
        ({"DEEPLAB_IMAGE_SIZE": "big"}, ["DEEPLAB_IMAGE_SIZE", "'big'", "whole number"]),
        ({"DEEPLAB_IMAGE_SIZE": "250"}, ["multiple of 16", "256"]),
        ({"DEEPLAB_BATCH_SIZE": "0"}, ["DEEPLAB_BATCH_SIZE", "at least 1"]),
        ({"DEEPLAB_EPOCHS": "2.5"}, ["DEEPLAB_EPOCHS", "whole number"]),
        ({"DEEPLAB_TRAIN_MINUTES": "soon"}, ["DEEPLAB_TRAIN_MINUTES", "minutes"]),
        ({"DEEPLAB_PROFILE": "huge"}, ["DEEPLAB_PROFILE", "smoke", "full"]),
        ({"DEEPLAB_BACKBONE": "vgg16"}, ["DEEPLAB_BACKBONE", "resnet50"]),
        ({"DEEPLAB_WEIGHTS": "/no/such/file.h5"}, ["DEEPLAB_WEIGHTS", "none"]),
        ({"DEEPLAB_SEPARABLE": "maybe"}, ["DEEPLAB_SEPARABLE", "'maybe'", "=1", "=0"]),
        ({"DEEPLAB_OUTPUT_STRIDE": "32"}, ["DEEPLAB_OUTPUT_STRIDE=32", "16 or 8"]),
        ({"DEEPLAB_OUTPUT_STRIDE": "8", "DEEPLAB_BACKBONE": "mobilenetv2"}, ["DEEPLAB_OUTPUT_STRIDE=8", "resnet50"]),
        ({"DEEPLAB_PRECISION": "fp8"}, ["DEEPLAB_PRECISION", "'fp8'", "mixed_bfloat16"]),
        ({"DEEPLAB_XLA": "fast"}, ["DEEPLAB_XLA", "'fast'"]),
        ({"DEEPLAB_STRATEGY": "horovod"}, ["DEEPLAB_STRATEGY", "mirrored", "multiworker"]),
    ],
)
def test_bad_values_are_named_with_a_fix(env, words):
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    for word in words:
        assert word in str(info.value)


def test_train_minutes_can_be_switched_off():
    assert load_settings({"DEEPLAB_TRAIN_MINUTES": "none"}).train_minutes is None
    assert load_settings({"DEEPLAB_TRAIN_MINUTES": "0"}).train_minutes is None


def test_describe_lists_every_variable():
    text = load_settings({}).describe()
    for var in ENV_VARS:
        assert var in text


def test_a_time_budget_of_your_own_lifts_the_profile_epoch_cap():
    assert load_settings({}).epochs == 12  # the smoke profile's cap, with its own 4-minute budget
    assert load_settings({"DEEPLAB_TRAIN_MINUTES": "15"}).epochs == 10_000  # the clock decides
    assert load_settings({"DEEPLAB_TRAIN_MINUTES": "15", "DEEPLAB_EPOCHS": "3"}).epochs == 3
    assert load_settings({"DEEPLAB_TRAIN_MINUTES": "none"}).epochs == 12  # no budget: keep the cap


def test_named_datasets_and_paths(tmp_path):
    assert load_settings({}).dataset == "synthetic"
    full = load_settings({"DEEPLAB_PROFILE": "full"})
    assert full.dataset == "camvid" and full.dataset_is_default and full.data_dir.name == "camvid"
    pets = load_settings({"DEEPLAB_DATASET": "Pets"})
    assert pets.dataset == "pets" and not pets.dataset_is_default and pets.data_dir.name == "pets"
    mine = load_settings({"DEEPLAB_DATASET": str(tmp_path)})
    assert mine.dataset == "path" and mine.data_dir == tmp_path and not mine.data_dir_is_default
    elsewhere = load_settings({"DEEPLAB_DATASET": "camvid", "DEEPLAB_DATA_DIR": str(tmp_path / "cv")})
    assert elsewhere.dataset == "camvid" and elsewhere.data_dir == tmp_path / "cv"
    with pytest.raises(SettingsError, match="DEEPLAB_DATASET='cityscapes' is neither synthetic, camvid, pets"):
        load_settings({"DEEPLAB_DATASET": "cityscapes"})
    (tmp_path / "a").mkdir()
    with pytest.raises(SettingsError, match="two different folders"):
        load_settings({"DEEPLAB_DATASET": str(tmp_path / "a"), "DEEPLAB_DATA_DIR": str(tmp_path)})


def test_the_full_profile_falls_back_to_built_in_data_offline_and_says_why(tmp_path, monkeypatch, capsys):
    from helpers import data, datasets

    def offline(target):
        raise datasets.DownloadError("Could not download the CamVid archive (no network).")

    monkeypatch.setattr(datasets, "prepare_camvid", offline)
    monkeypatch.setattr("helpers.synthetic.generate_dataset", lambda d, *a, **k: d)
    settings = dataclasses.replace(load_settings({"DEEPLAB_PROFILE": "full"}), data_dir=tmp_path / "camvid")
    assert data.ensure_data(settings) == tmp_path / "synthetic-full"
    said = capsys.readouterr().out
    assert "uses the built-in synthetic data instead" in said and "prepare-data camvid" in said
    asked = load_settings({"DEEPLAB_DATASET": "camvid", "DEEPLAB_DATA_DIR": str(tmp_path / "camvid")})
    with pytest.raises(datasets.DownloadError, match="no network"):
        data.ensure_data(asked)  # asked for by name: no silent substitute


def test_relative_folders_are_taken_from_the_checkout_not_the_working_directory(tmp_path, monkeypatch):
    from helpers.config import project_root

    monkeypatch.chdir(tmp_path)  # as a notebook runs in notebooks/
    s = load_settings({"DEEPLAB_OUTPUT_DIR": "build/x", "DEEPLAB_DATA_DIR": "data/mine"})
    assert s.output_dir == project_root() / "build" / "x" and s.data_dir == project_root() / "data" / "mine"
