"""Site check and site profiles (core.inference.site_check, core.inference.site_profile).

The statistics are tested on synthetic features (same population: similar;
shifted: different; patients of many near-identical slices: not a
difference by themselves), the check end to end on the tiny trained run
with SY575, and profiles on a small site made of COVID-CT test scans, one
folder per patient: fitted, used by predict, refused below the minimum,
cross-fitted without each patient's own slices, and bad names refused.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.inference import deploy
from core.evaluation import classification
from core.inference import ood
from core.base import paths
from core.base import files
from core.inference import site_features
from core.inference import site_check
from core.inference import site_store
from core.inference import site_profile
from core.cli.main import main

SY575 = paths.SHARED / "data" / "external" / "SY575-COVID19-CT"
PERMUTATIONS = 100


def synthetic_patients(rng, patients: int, slices: int, shift: float = 0.0, spread: float = 0.3, width: int = 64):
    """Features of `patients` patients drawn from one population (their
    first 8 dimensions moved by `shift`), `slices` near copies each."""
    features, groups = [], []
    for patient in range(patients):
        centre = rng.normal(size=width)
        centre[:8] += shift
        features += [centre + spread * rng.normal(size=width) for _ in range(slices)]
        groups += [f"p{patient}"] * slices
    return np.array(features), groups


# ---------------------------------------------------------------------------
# The statistical core, on synthetic features
# ---------------------------------------------------------------------------

def test_same_population_is_similar_and_a_shifted_one_different():
    rng = np.random.default_rng(0)
    reference, reference_groups = synthetic_patients(rng, 40, 2)
    same, same_groups = synthetic_patients(rng, 6, 10)
    shifted, shifted_groups = synthetic_patients(rng, 6, 10, shift=3.0)

    similar = site_check.compare_features(same, reference, same_groups, reference_groups, PERMUTATIONS)
    assert similar["verdict"] == "similar" and similar["classifier"]["p_value"] > 0.05
    assert similar["site"] == {"slices": 60, "patients": 6, "patients_known": True}
    assert site_check.message(similar).startswith("Similar: no sign that these scans differ")

    different = site_check.compare_features(shifted, reference, shifted_groups, reference_groups, PERMUTATIONS)
    assert different["verdict"] == "different"
    assert different["classifier"]["p_value"] < 0.05 and different["classifier"]["roc_auc"] > 0.9
    assert different["mmd"]["p_value"] < 0.05
    assert site_check.message(different).startswith("These scans differ from the scans this model was tested on")


def test_many_near_identical_slices_per_patient_are_no_difference_by_themselves():
    """A scan's slices are near copies: a site of 8 patients x 20 slices from
    the validation population is not "different" from 40 patients x 2."""
    rng = np.random.default_rng(1)
    reference, reference_groups = synthetic_patients(rng, 40, 2)
    site, site_groups = synthetic_patients(rng, 8, 20, spread=0.05)
    result = site_check.compare_features(site, reference, site_groups, reference_groups, PERMUTATIONS)
    assert result["verdict"] == "similar", result["classifier"]


def test_too_few_slices_or_patients_says_how_many_more():
    rng = np.random.default_rng(2)
    reference, reference_groups = synthetic_patients(rng, 40, 2)
    site, groups = synthetic_patients(rng, 2, 5)
    result = site_check.compare_features(site, reference, groups, reference_groups)
    assert result["verdict"] == "too few" and result["classifier"] is None
    assert result["needed"] == {"slices": site_check.MIN_SLICES - 10, "patients": site_check.MIN_PATIENTS - 2}
    text = site_check.message(result)
    assert "10 more slices" in text and "1 more patient" in text

    unknown = site_check.compare_features(site, reference, None, reference_groups)  # each slice its own patient
    assert unknown["site"]["patients"] == 10 and not unknown["site"]["patients_known"]
    assert "Patients were not given" in site_check.message(unknown)


def test_site_files_one_folder_per_patient_or_a_manifest(tmp_path):
    for relpath in ("p1/a.png", "p1/b.png", "p2/c.jpg", "loose.png", ".hidden/d.png"):
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relpath).write_bytes(b"x")
    (tmp_path / "README").write_text("not an image, not DICOM")
    (tmp_path / "notes.md").write_text("left alone")
    files, patients = site_features.site_files(tmp_path)
    assert [Path(f).relative_to(tmp_path).as_posix() for f in files] == ["loose.png", "p1/a.png", "p1/b.png",
                                                                         "p2/c.jpg"]
    assert patients == [None, "p1", "p1", "p2"]

    pd.DataFrame({"path": ["p1/a.png", "p2/c.jpg"], "patient": ["A", "B"]}).to_csv(tmp_path / "manifest.csv",
                                                                                  index=False)
    files, patients = site_features.site_files(tmp_path)
    assert files == [str(tmp_path / "p1/a.png"), str(tmp_path / "p2/c.jpg")] and patients == ["A", "B"]

    with pytest.raises(ValueError, match="missing: folder not found"):
        site_features.site_files(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty: no images or DICOM files in it"):
        site_features.site_files(empty)


# ---------------------------------------------------------------------------
# The tiny trained run, deployed
# ---------------------------------------------------------------------------

@pytest.fixture
def deployed_run(trained_artifacts, trained_run):
    """The tiny run deployed, its guard's feature check off as in
    test_app.py (8 validation scans give no meaningful 99th percentile);
    its site profiles and site-check reference removed afterwards."""
    deploy.deploy(trained_run.name, force=True)
    summary = files.read_json(trained_run / ood.SUMMARY_FILE)
    files.write_json(trained_run / ood.SUMMARY_FILE, {**summary, "threshold": float("inf")})
    yield trained_run
    deploy.deployed_file().unlink(missing_ok=True)
    shutil.rmtree(trained_run / site_store.SITES, ignore_errors=True)
    (trained_run / site_features.REFERENCE_FILE).unlink(missing_ok=True)


def test_site_check_end_to_end_on_the_tiny_run(deployed_run, tmp_path, capsys):
    site = tmp_path / "site"
    shutil.copytree(SY575, site)
    (site / "COVID" / "person001" / "broken.png").write_text("not an image")
    result_file = tmp_path / "result.json"

    code = main(["site-check", str(site), "--permutations", str(PERMUTATIONS), "--json", str(result_file)])
    captured = capsys.readouterr()
    assert code == 2  # one unreadable file: named, left out, the others checked
    (error,) = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert "broken.png" in error and "not a readable image" in error
    result = json.loads(result_file.read_text())
    assert result["site"] == {"slices": 48, "patients": 4, "patients_known": True, "single_slices": 0}
    assert result["verdict"] in ("similar", "different")  # 8 validation scans: no direction to rely on
    assert result["message"] in captured.out and "4 patients, 48 slices" in captured.out
    assert result["guard"]["slices"] == 48 and result["guard"]["expected_rate"] == pytest.approx(0.01)
    assert 0 <= result["probabilities"]["ks"] <= 1

    reference = deployed_run / site_features.REFERENCE_FILE
    built = reference.stat().st_mtime_ns
    assert main(["site-check", str(SY575 / "COVID"), "--permutations", "10"]) == 0  # 2 patients: too few
    assert "Too few scans to check (2 patients, 29 slices)" in capsys.readouterr().out
    assert reference.stat().st_mtime_ns == built  # cached per run, not rebuilt


def test_check_features_on_features_already_through_the_model(deployed_run):
    """Predict's check: features kept from earlier uploads, no image. Below the
    minimum it says how many more; a slice without a patient is its own and the
    message says so; features far from validation's are different."""
    from core.inference.predict import Predictor

    predictor = Predictor.from_run(deployed_run)
    width = site_features.reference(predictor)["features"].shape[1]
    rng = np.random.default_rng(0)
    few = site_check.check_features(predictor, rng.normal(size=(5, width)), np.full(5, 0.5), np.zeros(5, bool),
                                    ["scan a"] * 4 + [None], n_permutations=10)
    assert few["verdict"] == "too few" and few["needed"] == {"slices": 15, "patients": 1}
    assert few["site"]["patients"] == 2 and few["site"]["single_slices"] == 1
    assert "15 more slices and 1 more patient" in few["message"]
    assert "1 slice without a patient counted each as its own patient" in few["message"]

    groups = [f"scan {i // 8}" for i in range(24)]
    far = np.zeros((24, width))
    far[:, :2] = 1 + 0.01 * rng.normal(size=(24, 2))
    result = site_check.check_features(predictor, far, np.full(24, 0.9), np.zeros(24, bool), groups,
                                       n_permutations=PERMUTATIONS)
    assert result["site"] == {"slices": 24, "patients": 3, "patients_known": True, "single_slices": 0}
    # The tiny run's 7 validation patients give no power: the decision itself is tested on synthetic
    # features above; here, that it is compare_features' on these features, against the stored reference.
    reference = site_features.reference(predictor)
    expected = site_check.compare_features(far, reference["features"], [f"patient {g}" for g in groups],
                                           reference["patients"], PERMUTATIONS)
    assert result["verdict"] == expected["verdict"] and result["classifier"] == expected["classifier"]
    assert result["guard"]["slices"] == 24 and result["probabilities"]["site_positive_share"] == 1.0


def test_site_check_refuses_a_folder_without_scans(deployed_run, tmp_path, capsys):
    assert main(["site-check", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: no images or DICOM files in it"


# ---------------------------------------------------------------------------
# Site profiles
# ---------------------------------------------------------------------------

def make_site(folder: Path, data_dir: Path, covid: int, non_covid: int, slices: int = 3) -> Path:
    """A labelled site of COVID-CT test scans: one folder per class, one sub-folder per patient."""
    index = pd.read_csv(data_dir / "manifest.csv")
    test = index[index["official_split"] == "test"]
    for label, patients in (("COVID", covid), ("NonCOVID", non_covid)):
        paths_ = test[test["label"] == label]["path"].tolist()
        for patient in range(patients):
            target = folder / label / f"{label}-{patient}"
            target.mkdir(parents=True)
            for relpath in paths_[patient * slices:(patient + 1) * slices]:
                shutil.copy(data_dir / relpath, target / Path(relpath).name)
    return folder


def test_profile_fitted_stored_and_used(deployed_run, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(classification, "N_BOOT", 50)
    site = make_site(tmp_path / "site", data_dir, covid=6, non_covid=6)
    assert main(["site-profile", "fit", "hospital-a", str(site), "--n-boot", "50"]) == 0
    out = capsys.readouterr().out
    assert "Site profile hospital-a" in out and "12 patients (6 COVID, 6 NonCOVID)" in out

    profile = site_store.load_profile(deployed_run, "hospital-a")
    assert (deployed_run / "sites" / "hospital-a" / "predictions.csv").exists()
    assert profile["slices"] == 36 and profile["cross_fitted"]["folds"] == 5
    site_figures = profile["cross_fitted"]["site"]
    assert site_figures["ci_note"] is None and set(site_figures["ci"]) == set(site_profile.FIGURES)

    from core.inference.calibration import for_run
    from core.data.images import load_image
    from core.inference.predict import Predictor

    raw = np.array([0.05, 0.3, 0.5, 0.7, 0.95])
    calibrated, threshold = site_store.apply_profile(deployed_run, "hospital-a", raw)
    assert not np.allclose(calibrated, for_run(deployed_run).apply(raw))  # the site's own map
    assert np.all(np.diff(calibrated) >= 0) and threshold == pytest.approx(profile["threshold"])

    scan = next((site / "COVID").rglob("*.*"))
    plain = Predictor.from_run(deployed_run).predict_images([load_image(scan)], ["scan"])[0]
    sited = Predictor.from_run(deployed_run, site="hospital-a").predict_images([load_image(scan)], ["scan"])[0]
    assert plain.site is None and sited.site == "hospital-a"
    assert sited.raw_probability == pytest.approx(plain.raw_probability, abs=1e-5)
    assert sited.probability == pytest.approx(site_store.apply_profile(deployed_run, "hospital-a",
                                                                         [sited.raw_probability])[0][0])
    assert sited.threshold == pytest.approx(threshold)

    assert main(["predict", str(scan), "--site", "hospital-a"]) == 0
    captured = capsys.readouterr()
    assert "site profile hospital-a" in captured.err and f"{sited.probability:.4f}" in captured.out

    assert main(["site-profile", "list"]) == 0
    assert "hospital-a" in capsys.readouterr().out
    assert main(["site-profile", "fit", "hospital-a", str(site)]) == 2  # exists: not replaced silently
    assert "already has a site profile 'hospital-a'" in capsys.readouterr().err
    assert main(["site-profile", "remove", "hospital-a"]) == 0
    assert not (deployed_run / "sites" / "hospital-a").exists()
    assert main(["predict", str(scan), "--site", "hospital-a"]) == 2
    assert "has no site profile 'hospital-a'" in capsys.readouterr().err


def test_profile_refused_below_the_minimum_with_the_number_missing(trained_artifacts, trained_run, data_dir,
                                                                  tmp_path, capsys):
    site = make_site(tmp_path / "site", data_dir, covid=2, non_covid=4)
    assert main(["site-profile", "fit", "small", str(site), "--run", trained_run.name]) == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "too few patients to fit a site profile: 6 (2 COVID, 4 NonCOVID)" in error
    assert "4 more patients (at least 1 COVID)" in error
    assert not (trained_run / "sites" / "small").exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "x" * 65, "two words"])
def test_bad_profile_names_are_refused(name):
    with pytest.raises(ValueError, match="invalid site name"):
        site_store.check_name(name)


def test_the_cli_refuses_a_bad_profile_name(trained_artifacts, trained_run, capsys):
    assert main(["site-profile", "remove", "../escape", "--run", trained_run.name]) == 2
    assert capsys.readouterr().err.strip() == "error: invalid site name '../escape': use letters, digits, '.', " \
        "'_' and '-' only (at most 64, starting with a letter or digit)"
    assert main(["predict", "x.png", "--site", "../escape", "--run", trained_run.name]) == 2
    assert "error: invalid site name '../escape'" in capsys.readouterr().err


def synthetic_site(patients_per_class: int = 6, slices: int = 4, seed: int = 0) -> pd.DataFrame:
    """Raw probabilities of a model that ranks a site's patients fairly, each
    patient with its own level; one COVID patient the model gets badly wrong."""
    rng = np.random.default_rng(seed)
    rows = []
    for y in (0, 1):
        for patient in range(patients_per_class):
            level = rng.normal(0.8 * y - 0.4, 0.6)
            if y == 1 and patient == 0:
                level = -3.0  # a patient whose own slices would pull its calibration
            for _ in range(slices):
                rows.append({"patient_id": f"{y}-{patient}", "y": y,
                             "raw": float(1 / (1 + np.exp(-(level + 0.3 * rng.normal()))))})
    return pd.DataFrame(rows)


def test_cross_fitting_scores_each_patient_without_its_own_slices():
    frame = synthetic_site()
    crossed = site_profile.cross_fit(frame, seed=0)
    assert crossed["fold"].nunique() == 5 and (crossed.groupby("patient_id")["fold"].nunique() == 1).all()
    everyone = site_profile.fit_calibration(frame)
    for fold, held in crossed.groupby("fold"):
        others = frame[~frame["patient_id"].isin(held["patient_id"])]
        fitted = site_profile.fit_calibration(others)
        assert np.allclose(held["prob"], fitted.apply(held["raw"]))
        assert (held["decided"] == (held["raw"] >= fitted.raw_threshold)).all()
    wrong = crossed["patient_id"] == "1-0"
    # Fitted on itself, the badly scored patient would get another probability.
    assert not np.allclose(crossed.loc[wrong, "prob"], everyone.apply(frame.loc[wrong, "raw"]))


def test_site_figures_draw_no_interval_from_too_few_patients():
    frame = synthetic_site(patients_per_class=4)
    figures = site_profile.site_figures(frame, frame["raw"], (frame["raw"] >= 0.5).astype(int), n_boot=50)
    assert figures["ci"] is None and figures["ci_note"] == "too few patients to estimate"
    assert 0 <= figures["roc_auc"] <= 1
    enough = synthetic_site(patients_per_class=5)
    figures = site_profile.site_figures(enough, enough["raw"], (enough["raw"] >= 0.5).astype(int), n_boot=50)
    low, high = figures["ci"]["roc_auc"]
    assert low <= figures["roc_auc"] <= high
