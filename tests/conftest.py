"""Shared fixtures: the real COVID-CT data and ImageNet weights from ../shared,
and one tiny trained run reused by the tests that need a model."""
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Decoded images of this test session, not of the user's runs (core.data.image_cache).
os.environ.setdefault("COVIDCT_IMAGE_CACHE", tempfile.mkdtemp(prefix="covidct-image-cache-"))
# The answers the tests' predictions log (core.inference.case_log), never in the user's case log.
os.environ.setdefault("COVIDCT_CASES", tempfile.mkdtemp(prefix="covidct-cases-"))

from core.base import paths  # noqa: E402


@pytest.fixture(scope="session")
def data_dir() -> Path:
    folder = paths.data_dir()
    if not (folder / "COVID").is_dir():
        pytest.skip(f"COVID-CT dataset not found at {folder} (set COVIDCT_DATA)")
    return folder


@pytest.fixture(scope="session")
def weights() -> str:
    path = paths.weights_path()
    if path == "imagenet":
        pytest.skip("ResNet-50 ImageNet weights file not found (set COVIDCT_WEIGHTS)")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_dir, weights):
    """A real but tiny run: ResNet-50 with ImageNet weights, 64 px, a few
    images per split, one epoch per phase. Shared by the tests that need a
    completed run (evaluation, prediction, explanation, the app)."""
    from core.evaluation import classification
    from core.runs.train_config import TrainConfig
    from core.training.fit import train

    runs_root = tmp_path_factory.mktemp("artifacts") / "runs"  # the layout of paths.runs_dir()
    config = TrainConfig(data_dir=str(data_dir), weights=weights, input_size=64, batch_size=4,
                         max_images_per_split=8, head_epochs=1, finetune_epochs=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(classification, "N_BOOT", 50)  # fewer bootstrap resamples: faster, CIs still there
        return train(config, name="smoke", report=lambda line: None, runs_root=runs_root)


@pytest.fixture
def trained_artifacts(trained_run, monkeypatch):
    """Point paths.artifacts_dir() (and so the CLI and the app) at the tiny run."""
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(trained_run.parent.parent))
    return trained_run.parent.parent


@pytest.fixture(scope="session")
def ct_weights_cache(tmp_path_factory):
    """The CT ResNet-152 weights converted by this code once per test session
    (about 20 s), into a temporary cache: a cache of an earlier conversion
    would test that one instead."""
    from core.models import ct_backbone

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COVIDCT_WEIGHTS_CACHE", str(tmp_path_factory.mktemp("weights_cache")))
        yield ct_backbone.converted_weights(report=lambda line: None)
