"""The command line: help, one-line reasons and exit code 2 on bad input, real outputs."""
import os
import subprocess
import sys

from PIL import Image

from core.cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("train", "cv", "evaluate", "predict", "explain", "audit", "runs"):
        assert command in result.stdout


def test_train_help_offers_every_hyperparameter():
    from dataclasses import fields

    from core.runs.train_config import TrainConfig

    result = run_cli("train", "--help")
    for field in fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in result.stdout


def test_impossible_config_exits_2_with_one_line(tmp_path):
    result = run_cli("train", "--batch-size", "0", "--input-size", "8", "--dropout", "1.5",
                     env={"COVIDCT_ARTIFACTS": str(tmp_path)})
    assert result.returncode == 2
    # TensorFlow prints its own start-up lines on stderr; ours is one line.
    (reason,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "batch_size" in reason and "input_size" in reason and "dropout 1.5" in reason
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_audit_names_the_cross_class_duplicates(data_dir, capsys):
    assert main(["audit", "--data", str(data_dir)]) == 0
    out = capsys.readouterr().out
    for name in ("kjr-21-e24-p5-29.png", "71%0.jpg", "kjr-21-e24-p5-31.png", "71%1.jpg"):
        assert name in out


def test_predict_explain_evaluate_on_a_trained_run(trained_artifacts, data_dir, tmp_path, capsys):
    scan = str(next((data_dir / "COVID").glob("*.png")))
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")

    # --run latest: the newest completed run, deployed or not (test_deploy.py tests the deployed default)
    assert main(["predict", scan, str(bad), "--run", "latest"]) == 2  # one bad file: reported, the other predicted
    captured = capsys.readouterr()
    path, probability, label = captured.out.strip().split("\t")
    assert path == scan and 0 <= float(probability) <= 1 and label in ("COVID", "NonCOVID")
    assert "notes.png" in captured.err

    out_png = tmp_path / "cam.png"
    assert main(["explain", scan, "--method", "gradcam++", "--out", str(out_png), "--run", "latest"]) == 0
    with Image.open(scan) as original, Image.open(out_png) as overlay:
        assert overlay.size == original.size  # the scan's own aspect ratio

    assert main(["evaluate", "--n-boot", "50"]) == 0
    assert "roc_auc" in capsys.readouterr().out


def test_no_run_yet_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path))
    assert main(["predict", "x.png"]) == 2
    assert "no model deployed" in capsys.readouterr().err
    assert main(["predict", "x.png", "--run", "latest"]) == 2
    assert "no completed run" in capsys.readouterr().err


def test_cv_trains_one_run_per_fold_and_scores_the_out_of_fold_predictions(data_dir, weights, tmp_path,
                                                                           monkeypatch, capsys):
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from core.evaluation import classification
    from core.runs import storage
    from core.base import files

    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path))
    monkeypatch.setattr(classification, "N_BOOT", 20)
    tiny = ["--data-dir", str(data_dir), "--weights", weights, "--input-size", "64", "--batch-size", "4",
            "--max-images-per-split", "8", "--head-epochs", "1", "--finetune-epochs", "1"]
    assert main(["cv", "--cv-folds", "2", "--name", "tiny", *tiny]) == 0
    out = capsys.readouterr().out

    run_dirs = sorted((tmp_path / "runs").iterdir())
    assert [d.name.split("-", 2)[-1] for d in run_dirs] == ["tiny-fold1", "tiny-fold2"]
    assert [files.read_json(d / "config.json")["cv_fold"] for d in run_dirs] == [0, 1]
    predictions = [storage.read_predictions(d) for d in run_dirs]
    val = [set(p.path[p.split == "val"]) for p in predictions]
    assert val[0] and val[1] and not val[0] & val[1]  # each fold validates on its own images
    pooled = pd.concat([p[p.split == "val"] for p in predictions])
    assert "2-fold cross-validation over train + val" in out
    assert f"pooled out-of-fold ROC-AUC {roc_auc_score(pooled.y_true, pooled.prob):.3f}" in out
    assert f"over {len(pooled)} images" in out
    for run_dir in run_dirs:
        assert run_dir.name in out

    # The same fold runs, scored again without training.
    assert main(["cv", "--score", *[d.name for d in run_dirs]]) == 0
    assert capsys.readouterr().out.strip() == out[out.index("2-fold"):].strip()
    assert main(["cv", "--score", run_dirs[0].name, "--seed", "3"]) == 2
    assert "takes no training options" in capsys.readouterr().err

    # `runs` finds the fold runs by itself and scores their recipe.
    assert main(["runs"]) == 0
    listing = capsys.readouterr().out
    recipes = listing[listing.index("Cross-validated recipes"):]
    assert "2 of 2" in recipes and " ".join(d.name for d in run_dirs) in recipes
    assert f"{roc_auc_score(pooled.y_true, pooled.prob):.3f}" in recipes


def test_cv_scores_an_ensemble_of_two_recipes_and_compares_recipes_fold_by_fold(tmp_path, monkeypatch, capsys):
    from dataclasses import asdict

    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from core.evaluation import classification
    from core.runs import storage
    from core.base import files
    from core.runs.train_config import TrainConfig

    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path))
    monkeypatch.setattr(classification, "N_BOOT", 20)
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 10)

    def recipe(name, folds=3, first_image=0, **settings) -> list[str]:
        """Fake fold runs: fold f validates on 20 images of its own, all score the same 4 test images."""
        ids = []
        for fold in range(folds):
            run_dir = storage.new_run(asdict(TrainConfig(cv_folds=3, cv_fold=fold, **settings)),
                                   name=f"{name}-fold{fold + 1}")
            val = [f"img{first_image + 20 * fold + i}" for i in range(20)]
            predictions = pd.DataFrame({
                "path": val + ["t0", "t1", "t2", "t3"], "y_true": [*labels, 0, 1, 0, 1],
                "prob": np.clip(0.3 * np.r_[labels, 0, 1, 0, 1] + rng.uniform(0, 0.7, 24), 0, 1),
                "split": ["val"] * 20 + ["test"] * 4})
            files.write_csv(run_dir / "predictions.csv", predictions)
            # A completed run has its metrics (core.runs.checks): the runs scored are checked first.
            files.write_json(run_dir / "metrics.json", classification.evaluate_predictions(predictions, n_boot=20))
            storage.set_status(run_dir, "completed")
            ids.append(run_dir.name)
        return ids

    imagenet, ct = recipe("imagenet"), recipe("ct", backbone="ct-resnet152")

    def fold_aucs(ids):
        return [roc_auc_score(f.y_true[f.split == "val"], f.prob[f.split == "val"])
                for f in (storage.read_predictions(storage.run_path(i)) for i in ids)]

    # The ensemble: in each fold, each image's probability is the mean of the two recipes' models.
    assert main(["cv", "--score", *imagenet, "--ensemble-with", *ct]) == 0
    out = capsys.readouterr().out
    averaged = []
    for a, b in zip(imagenet, ct):
        first, second = (storage.read_predictions(storage.run_path(i)) for i in (a, b))
        val = first.split == "val"
        averaged.append(roc_auc_score(first.y_true[val], (first.prob[val] + second.prob[val]) / 2))
        assert f"{a} + {b}: validation ROC-AUC {averaged[-1]:.3f}" in out
    assert f"mean {np.mean(averaged):.3f} ± {np.std(averaged, ddof=1):.3f}" in out
    assert "over 60 images" in out

    # One recipe against another, on the same folds.
    assert main(["cv", "--score", *ct, "--against", *imagenet]) == 0
    differences = np.subtract(fold_aucs(ct), fold_aucs(imagenet))
    assert (f"{differences.mean():+.3f} ± {differences.std(ddof=1) / np.sqrt(3):.3f} "
            "(mean difference fold by fold") in capsys.readouterr().out

    # Other folds (here: other validation images) are refused with the reason.
    shifted = recipe("shifted", first_image=5, seed=1)
    assert main(["cv", "--score", *ct, "--against", *shifted]) == 2
    assert "fold 1 validates on other images" in capsys.readouterr().err
    assert main(["cv", "--score", *ct, "--ensemble-with", *shifted]) == 2
    assert "predicted by one model and not the other" in capsys.readouterr().err
    assert main(["cv", "--score", *ct, "--ensemble-with", *imagenet[:2]]) == 2
    assert "other folds: 1, 2, 3 against 1, 2" in capsys.readouterr().err
    assert main(["cv", "--score", ct[0], ct[0]]) == 2
    assert "a second run of fold 1" in capsys.readouterr().err

    # Rows are matched by image, not by position.
    from core.runs.recipes import averaged_predictions

    frame = storage.read_predictions(storage.run_path(ct[0]))
    pd.testing.assert_frame_equal(averaged_predictions([frame.iloc[::-1], frame]).sort_values(["split", "path"],
                                                                                             ignore_index=True),
                                  frame.sort_values(["split", "path"], ignore_index=True))


def test_an_artifacts_folder_named_but_missing_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "typo"))
    assert main(["runs"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: COVIDCT_ARTIFACTS=") and error.strip().endswith("no such folder")
