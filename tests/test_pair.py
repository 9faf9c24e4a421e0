"""Serving the average of two runs as one model (core.inference.pair): the pair's
predictions are the mean of its members', its threshold is chosen on their averaged
validation scores, a slice is refused when either member's guard refuses it, its
Grad-CAM is the mean of the members' maps, and `deploy-pair` makes Predict serve it."""
import json
import shutil

import numpy as np
import pytest

from core.base import files
from core.cli.main import main
from core.data.images import load_image
from core.inference import deploy, pair
from core.inference.predict import Predictor
from core.runs import catalogue, storage


@pytest.fixture
def two_runs(trained_run, tmp_path, monkeypatch):
    """The tiny run twice, the second predicting without the mirrored slice (so the two differ)."""
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "artifacts"))
    runs_root = tmp_path / "artifacts" / "runs"
    first, second = runs_root / "first", runs_root / "second"
    shutil.copytree(trained_run, first)
    shutil.copytree(trained_run, second)
    for stale in ("calibration.json", "ood.json", "ood.npz", "scan.json"):
        (second / stale).unlink(missing_ok=True)
    config = json.loads((second / "config.json").read_text())
    (second / "config.json").write_text(json.dumps({**config, "flip_tta": False}))
    predictions = storage.read_predictions(second)
    predictions["prob"] = predictions["prob"] ** 2  # another model's scores on the same slices
    files.write_csv(second / "predictions.csv", predictions)
    yield first, second
    deploy.deployed_file().unlink(missing_ok=True)


def test_a_pair_averages_its_members_and_chooses_its_threshold_on_validation(two_runs):
    first, second = two_runs
    pair_dir = pair.make_pair(first, second)
    assert pair.members_of(pair_dir) == (first, second) and catalogue.has_model(catalogue.load_run(pair_dir))
    averaged = storage.read_predictions(pair_dir).set_index(["split", "path"]).sort_index()
    members = [storage.read_predictions(run).set_index(["split", "path"]).sort_index() for run in two_runs]
    np.testing.assert_allclose(averaged["prob"], (members[0]["prob"] + members[1]["prob"]) / 2)
    metrics = files.read_json(pair_dir / "metrics.json")
    assert metrics["threshold"]["chosen_on"] == "val"
    assert pair.members_of(first) is None


def test_a_pair_predicts_guards_and_explains_with_both_members(two_runs, data_dir):
    first, second = two_runs
    predictor = Predictor.from_run(pair.make_pair(first, second))
    assert predictor.model is None and [m.run_dir for m in predictor.members] == [first, second]
    assert predictor.members[0].flip_tta != predictor.members[1].flip_tta
    image = load_image(min((data_dir / "COVID").glob("*.png")))
    (answer,) = predictor.predict_images([image], ["slice"])
    alone = [m.predict_images([image], ["slice"])[0].raw_probability for m in predictor.members]
    assert alone[0] != alone[1] and answer.raw_probability == pytest.approx(np.mean(alone), abs=1e-6)
    assert answer.probability == pytest.approx(float(predictor.calibration.apply(np.array([np.mean(alone)]))[0]))
    assert answer.raw_threshold == storage.decision_threshold(files.read_json(predictor.run_dir / "metrics.json"))

    class Refusing:  # one member's guard refuses every slice
        def problems(self, images, features):
            return [["unlike this member's training slices"] for _ in images]

    predictor.members[1].guard = Refusing()
    (refused,) = predictor.predict_images([image], ["slice"])
    assert refused.refused and refused.ood_problems == ["unlike this member's training slices"]

    maps = [m.gradcam(image) for m in predictor.members]
    np.testing.assert_allclose(predictor.gradcam(image), (maps[0] + maps[1]) / 2, atol=1e-6)
    assert predictor.gradcam_overlay(image).shape == image.shape


def test_runs_that_see_slices_differently_make_no_pair(two_runs):
    first, second = two_runs
    config = json.loads((second / "config.json").read_text())
    (second / "config.json").write_text(json.dumps({**config, "lung_mask": True}))
    with pytest.raises(ValueError, match="lung_mask differs"):
        pair.make_pair(first, second)
    with pytest.raises(ValueError, match="two different runs"):
        pair.make_pair(first, first)


def test_deploy_pair_serves_the_pair_as_the_deployed_model(two_runs, capsys):
    assert main(["deploy-pair", "first", "second"]) == 2  # smoke runs: refused, with their reasons
    assert "member second: it was trained on a subset" in capsys.readouterr().err
    assert main(["deploy-pair", "first", "second", "--force"]) == 0
    deployed = deploy.deployed_run()
    assert pair.members_of(deployed["path"]) == two_runs
    assert all((run / "ood.npz").exists() for run in two_runs)  # each member's guard built
    assert len(Predictor.from_run(deployed["path"]).members) == 2


def test_predict_serves_a_deployed_pair_like_a_run(two_runs, data_dir, tmp_path):
    from streamlit.testing.v1 import AppTest
    from test_app import ROOT, TIMEOUT, assert_no_exception, shown_percent

    from core.inference import ood
    from ui import navigation

    record = deploy.deploy_pair("first", "second", force=True)
    for member in two_runs:  # 8 validation slices give no meaningful feature threshold (as test_app's `deployed`)
        summary = files.read_json(member / ood.SUMMARY_FILE)
        files.write_json(member / ood.SUMMARY_FILE, {**summary, "threshold": float("inf")})
    path = min((data_dir / "COVID").glob("*.png"))
    expected = Predictor.from_run(storage.run_path(record["run"])).predict_images([load_image(path)], ["slice"])[0]
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    at.switch_page(navigation.PREDICT).run()
    at.file_uploader(key="uploads").set_value([("slice.png", path.read_bytes(), "image/png")]).run()
    assert_no_exception(at)
    (shown,) = [m.value for m in at.metric if m.label == "Probability of COVID"]
    assert shown_percent(shown) == pytest.approx(100 * expected.probability, abs=1.0)
    assert [c for image in at.image for c in image.captions].count("Grad-CAM") == 1
