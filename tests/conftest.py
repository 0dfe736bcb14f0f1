import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """A small synthetic dataset shared by the tests that only read it."""
    from helpers import synthetic

    return synthetic.generate_dataset(tmp_path_factory.mktemp("data") / "synthetic", 12, 4, 4, seed=7)


@pytest.fixture
def clean_env(monkeypatch):
    """No DEEPLAB_* variables from the developer's shell leak into a test."""
    for key in list(os.environ):
        if key.startswith("DEEPLAB_"):
            monkeypatch.delenv(key)
    return monkeypatch
