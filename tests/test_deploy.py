"""The deployed model (core.inference.deploy) and the out-of-distribution guard
(core.inference.ood): a smoke run is refused with its reasons unless forced; deploying
builds the guard; the CLI predicts with the deployed model, in batches, from
folders and globs, into a CSV, refusing scans unlike the training slices."""
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom.data
import pytest
from PIL import Image

from core.inference import deploy
from core.inference import ood
from core.base import files
from core.cli.main import main


def fake_run(tmp_path, state="completed", subset=0, n_test=200, auc_low=0.8, val_auc=0.9, name="run"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.keras").touch()
    return {"id": name, "path": folder, "config": {"max_images_per_split": subset}, "status": {"state": state},
            "metrics": {"val": {"at_threshold": {"roc_auc": val_auc}},
                        "test": {"at_threshold": {"n": n_test, "roc_auc": 0.9, "ci": {"roc_auc": [auc_low, 0.95]}}}}}


def test_problems_name_why_a_run_is_not_fit(tmp_path):
    assert deploy.problems(fake_run(tmp_path)) == []
    smoke = deploy.problems(fake_run(tmp_path, subset=8, n_test=8, auc_low=0.2, name="smoke"))
    assert any("subset (8 images per split)" in p for p in smoke)
    assert any("8 slices, fewer than 50" in p for p in smoke)
    assert any("could be chance" in p for p in smoke)
    assert deploy.problems(fake_run(tmp_path, state="cancelled", name="c"))[0] == "it is cancelled, not completed"


def test_best_run_is_chosen_on_validation_among_fit_runs(tmp_path):
    candidates = [fake_run(tmp_path, val_auc=0.85, name="a"), fake_run(tmp_path, val_auc=0.92, name="b"),
                  fake_run(tmp_path, val_auc=0.99, subset=8, name="smoke")]
    assert deploy.best_run(candidates)["id"] == "b"
    assert deploy.best_run(candidates[2:]) is None


def test_image_checks_refuse_photos_and_tiny_images_not_ct(data_dir):
    from sklearn.datasets import load_sample_image

    assert "a colour image" in ood.image_problems(load_sample_image("flower.jpg"))[0]
    assert "too small" in ood.image_problems(np.zeros((30, 200, 3), np.uint8))[0]
    from core.data.images import load_image
    for path in sorted((data_dir / "COVID").glob("*.png"))[:5]:
        assert ood.image_problems(load_image(path)) == []


def test_guard_refuses_features_far_from_the_training_scans():
    rng = np.random.default_rng(0)
    train = np.abs(rng.normal(1, 0.1, (50, 16)))
    guard = ood.Guard(reference=ood._normalise(train), threshold=0.01)
    near, far = train[0] * 1.01, np.r_[np.zeros(15), 1.0]
    scan = np.full((64, 64, 3), 100, np.uint8)
    passed, refused = guard.problems([scan, scan], np.stack([near, far]))
    assert passed == [] and len(refused) == 1 and "far from every training slice" in refused[0]


@pytest.fixture
def artifacts_copy(trained_run, tmp_path, monkeypatch):
    """The tiny run in an artifacts folder of its own (deploying writes into the run)."""
    runs_root = tmp_path / "artifacts" / "runs"
    shutil.copytree(trained_run, runs_root / trained_run.name)
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "artifacts"))
    return runs_root / trained_run.name


def test_smoke_run_is_refused_then_forced_and_the_cli_uses_it(artifacts_copy, data_dir, tmp_path, capsys):
    run_id = artifacts_copy.name
    scans = data_dir / "COVID"
    assert main(["predict", str(next(scans.glob("*.png")))]) == 2  # nothing deployed
    assert "no model deployed" in capsys.readouterr().err

    assert main(["deploy", run_id]) == 2
    reason = capsys.readouterr().err
    assert "trained on a subset" in reason and "--force" in reason
    assert not deploy.deployed_file().exists()

    assert main(["deploy", str(artifacts_copy), "--force"]) == 0  # a run folder's path, as evaluate takes
    assert deploy.deployed_record()["run"] == run_id
    assert any("subset" in r for r in deploy.deployed_record()["confirmed_despite"])
    summary = files.read_json(artifacts_copy / ood.SUMMARY_FILE)
    assert summary["n_train"] == 8 and np.isfinite(summary["threshold"])
    capsys.readouterr()

    # Folders, globs and files, in batches; the CSV has one row per scan.
    folder = tmp_path / "scans"
    folder.mkdir()
    for path in sorted(scans.glob("*.png"))[:3]:
        shutil.copy(path, folder / path.name)
    photo = tmp_path / "photo.png"
    from sklearn.datasets import load_sample_image
    Image.fromarray(load_sample_image("china.jpg")).save(photo)
    ct_crop = pydicom.data.get_testdata_file("CT_small.dcm")
    out = tmp_path / "out.csv"
    assert main(["predict", str(folder), str(tmp_path / "*.png"), ct_crop, "--batch-size", "2",
                 "--csv", str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 5 and list(table.columns) == ["path", "probability", "decision", "ood", "reason"]
    photo_row = table[table.path == str(photo)].iloc[0]
    assert photo_row.decision == "refused" and photo_row.ood and "colour" in photo_row.reason
    assert table.probability.between(0, 1).all()
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 5 and any("not like the training slices" in line for line in printed)


def test_cli_is_quiet_and_refuses_an_empty_glob(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-m", "core", "predict", str(tmp_path / "*.png")], cwd=root,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COVIDCT_ARTIFACTS": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / '*.png'}: no file matches this pattern"]
