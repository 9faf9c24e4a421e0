"""Training end to end on a handful of real images, and the run folder it leaves."""
import json

import numpy as np
import pandas as pd
import pytest

from core.evaluation import classification
from core.runs import lock
from core.runs import catalogue
from core.runs import storage
from core.base import files
from core.models.resnet import load_model
from core.runs.train_config import TrainConfig
from core.runs.dataset import select_images
from core.training.fit import train
from core.data.image_cache import cache_images


def test_smoke_run_writes_every_artifact(trained_run):
    for name in ("config.json", "status.json", "history.csv", "model.keras", "metrics.json",
                 "predictions.csv"):
        assert (trained_run / name).exists(), name
    assert not (trained_run / "frozen_cache").exists() and not (trained_run / "checkpoints").exists()
    status = storage.read_status(trained_run)
    assert status["state"] == "completed"
    assert status["train_seconds"] > 0

    history = pd.read_csv(trained_run / "history.csv")
    assert len(history) == 2  # one head epoch, one fine-tuning epoch
    assert {"loss", "auc", "val_loss", "val_auc"} <= set(history.columns)

    predictions = pd.read_csv(trained_run / "predictions.csv")
    assert set(predictions.split) == {"val", "test"}
    assert predictions.prob.between(0, 1).all()
    assert set(predictions.y_true) == {0, 1}

    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["threshold"]["chosen_on"] == "val"
    assert metrics["labels"] == {"positive": "COVID", "negative": "NonCOVID"}
    assert 0 <= metrics["test"]["at_threshold"]["roc_auc"] <= 1


def test_saved_model_reproduces_the_predictions(trained_run, data_dir):
    from core.models.resnet import predict_proba

    model = load_model(trained_run / "model.keras")
    predictions = pd.read_csv(trained_run / "predictions.csv").head(4)
    images = cache_images([str(data_dir / p) for p in predictions.path], 64).array()
    np.testing.assert_allclose(predict_proba(model, images, flip_tta=True), predictions.prob, atol=1e-4)


def tiny_config(data_dir, weights, **changes):
    return TrainConfig(data_dir=str(data_dir), weights=weights, input_size=64, batch_size=4,
                       max_images_per_split=6, head_epochs=1, finetune_epochs=1, **changes)


def test_over_its_budget_the_frozen_cache_gives_way_to_streaming(tmp_path, data_dir, weights, monkeypatch):
    monkeypatch.setenv("COVIDCT_FROZEN_CACHE_GB", "0")
    lines = []
    run_dir = train(tiny_config(data_dir, weights), report=lines.append, runs_root=tmp_path)
    assert storage.read_status(run_dir)["state"] == "completed"
    assert any("over budget, training end to end on streamed images" in line for line in lines)
    assert not any(line.startswith("cached conv2_block3_out") for line in lines)
    assert len(pd.read_csv(run_dir / "history.csv")) == 2


def test_an_image_lost_from_the_cache_while_training_fails_the_run_naming_it(tmp_path, data_dir, weights,
                                                                             monkeypatch):
    import os

    from core.training import fit

    lost, cache_images = [], fit.cache_images

    def cache_then_lose_one(paths, *args, **kwargs):
        cached = cache_images(paths, *args, **kwargs)
        if not lost:  # the train split's first entry, gone after decoding
            os.remove(cached.entries[0])
            lost.append(cached.sources[0])
        return cached
    monkeypatch.setattr(fit, "cache_images", cache_then_lose_one)
    monkeypatch.setenv("COVIDCT_IMAGE_CACHE", str(tmp_path / "image_cache"))
    with pytest.raises(Exception, match="its decoded copy"):
        train(tiny_config(data_dir, weights), report=lambda line: None, runs_root=tmp_path / "runs")
    (run_dir,) = (tmp_path / "runs").iterdir()
    status = storage.read_status(run_dir)
    assert status["state"] == "failed" and status["reason"].startswith(f"ImageReadError: {lost[0]}: ")


def test_select_images_is_class_balanced_per_split(data_dir):
    from core.data import datasets

    index = datasets.index_dataset(data_dir)
    picked = select_images(index, TrainConfig(data_dir=str(data_dir), max_images_per_split=6))
    assert picked.groupby(["split", "y"]).size().tolist() == [3] * 6


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 0}, "batch_size"),
    ({"input_size": 8}, "input_size"),
    ({"finetune_lr": -1e-4}, "finetune_lr"),
    ({"backbone": "vgg16"}, "backbone"),
    ({"data_dir": "/nonexistent"}, "data_dir"),
    ({"cv_folds": 1}, "cv_folds 1 must be 0"),
    ({"cv_folds": 5, "cv_fold": 5}, "cv_fold 5 must be between 0 and cv_folds - 1"),
])
def test_impossible_config_is_refused_before_any_work(tmp_path, change, message):
    config = TrainConfig(**change)
    with pytest.raises(ValueError, match=message):
        train(config, runs_root=tmp_path)
    assert not any(tmp_path.iterdir())  # no run folder was created


def test_unknown_setting_is_named():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_cancel_request_marks_the_run_cancelled(tmp_path, data_dir, weights, monkeypatch):
    """A `cancel` file in the run folder stops training at the next batch."""
    real_new_run = storage.new_run

    def new_run_with_cancel(*args, **kwargs):
        folder = real_new_run(*args, **kwargs)
        (folder / "cancel").touch()
        return folder

    monkeypatch.setattr(storage, "new_run", new_run_with_cancel)
    config = TrainConfig(data_dir=str(data_dir), weights=weights, input_size=32, batch_size=4,
                         max_images_per_split=4, head_epochs=1, finetune_epochs=0)
    with pytest.raises(KeyboardInterrupt):
        train(config, runs_root=tmp_path, report=lambda line: None)
    (run_dir,) = tmp_path.iterdir()
    status = storage.read_status(run_dir)
    assert status["state"] == "cancelled"
    assert not (run_dir / "model.keras").exists()


def test_activation_batches_draw_from_all_views_with_class_weights():
    from core.training.frozen_cache import ActivationBatches
    from core.training.pipeline import balanced_class_weights

    views, n = 3, 10
    x = np.arange(views * n, dtype="float16").reshape(-1, 1)  # sample id as its "activation"
    y = np.tile(np.array([0] * 7 + [1] * 3), views)
    weights = balanced_class_weights(y[:n])
    batches = ActivationBatches(x, y, batch_size=4, epoch_size=n, seed=0, class_weight=weights)
    assert len(batches) == 3
    seen = []
    for epoch in range(5):
        drawn = [batches[i] for i in range(len(batches))]
        ids = np.concatenate([xb[:, 0] for xb, _, _ in drawn]).astype(int)
        assert len(ids) == n and len(set(ids)) == n  # one epoch = n distinct samples
        for xb, yb, wb in drawn:
            labels = yb.argmax(axis=1)
            np.testing.assert_array_equal(labels, y[xb[:, 0].astype(int)])
            np.testing.assert_allclose(wb, [weights[c] for c in labels])
        seen.extend(ids)
        batches.on_epoch_end()
    assert len(set(np.array(seen) // n)) == views  # epochs mix the augmented views
    assert weights[1] > weights[0]  # the rarer class weighs more

    val = ActivationBatches(x[:n], y[:n], batch_size=4)
    np.testing.assert_array_equal(np.concatenate([val[i][0][:, 0] for i in range(len(val))]), np.arange(n))


def test_disk_full_while_saving_marks_the_run_failed_and_keeps_earlier_files(tmp_path, data_dir, weights, monkeypatch):
    import errno

    import core.training.fit

    def disk_full(model, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(core.training.fit, "save_model", disk_full)
    config = TrainConfig(data_dir=str(data_dir), weights=weights, input_size=32, batch_size=4,
                         max_images_per_split=4, head_epochs=1, finetune_epochs=0)
    with pytest.raises(OSError):
        train(config, runs_root=tmp_path, report=lambda line: None)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    status = storage.read_status(run_dir)
    assert status["state"] == "failed" and "No space left on device" in status["reason"]
    assert json.loads((run_dir / "config.json").read_text())["input_size"] == 32
    assert len(pd.read_csv(run_dir / "history.csv")) == 1  # the finished epoch is still there
    assert lock.active_training(tmp_path) is None  # the lock is released


def test_retired_settings_load_from_old_runs_and_are_refused_for_new_ones(tmp_path):
    from dataclasses import asdict

    from core.runs.train_config import RETIRED

    old = {**asdict(TrainConfig(data_dir=str(tmp_path))), **RETIRED}  # a run saved before the retirement
    assert TrainConfig.from_dict(old, starting=True) == TrainConfig(data_dir=str(tmp_path))
    mixed = {**old, "mixup": 0.4, "ema": 0.97}
    assert TrainConfig.from_dict(mixed) == TrainConfig(data_dir=str(tmp_path))  # shown, evaluated, predicted with
    with pytest.raises(ValueError, match=r"retired setting\(s\) mixup=0.4, ema=0.97: see docs/experiments.md"):
        TrainConfig.from_dict(mixed, starting=True)
    with pytest.raises(ValueError, match="unknown config setting"):
        TrainConfig.from_dict({**old, "mixdown": 1})


def test_a_run_saved_before_the_evidence_penalty_existed_reads_as_unpenalised(tmp_path):
    """The penalty is on by default now; a config.json saved before it existed trained without it,
    and must load, resume, group and be described so, not as today's default."""
    from dataclasses import asdict

    from core.runs.train_config import recipe_changes, recipe_of

    today = asdict(TrainConfig(data_dir=str(tmp_path)))
    assert today["evidence_penalty"] == 1.0 and recipe_changes(today) == "project defaults"
    old = {key: value for key, value in today.items() if key != "evidence_penalty"}
    assert TrainConfig.from_dict(old, starting=True).evidence_penalty == 0.0
    assert recipe_of(old) == recipe_of({**today, "evidence_penalty": 0.0})  # one recipe with an unpenalised new run
    assert recipe_changes(old) == "evidence_penalty=0.0"


def test_a_run_saved_with_a_retired_setting_does_not_resume(tmp_path):
    from dataclasses import asdict

    from core.jobs.background import resume

    run_dir = storage.new_run({**asdict(TrainConfig(data_dir=str(tmp_path))), "blur": 1.5}, runs_root=tmp_path)
    storage.set_status(run_dir, "failed", reason="killed")
    with pytest.raises(ValueError, match=r"retired setting\(s\) blur=1.5"):
        resume(run_dir, report=lambda line: None)


def test_fine_tuning_keeps_the_weights_validation_scored(tmp_path):
    """The model keeps the weights of the epoch validation scored best."""
    import keras
    from sklearn.metrics import roc_auc_score

    from core.training.frozen_cache import ActivationBatches
    from core.training.fit import fit_phase

    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8)).astype("float32")
    y = (x[:, 0] + rng.normal(scale=1.0, size=96) > 0).astype(int)
    train_batches = ActivationBatches(x[:64], y[:64], batch_size=8, epoch_size=64, seed=0)
    val_batches = ActivationBatches(x[64:], y[64:], batch_size=32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])

    raw = []  # the optimizer's own weights at each epoch's end (these callbacks run first)
    keep_raw = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: raw.append(model.get_weights()))
    config = TrainConfig(data_dir=str(tmp_path), early_stopping_patience=2)
    history = fit_phase(model, config, tmp_path, "finetune", 6, 0.05, train_batches, val_batches, 8,
                        report=lambda _: None, extra_callbacks=[keep_raw])

    best = int(np.argmax(history.history["val_auc"]))
    kept_auc = roc_auc_score(y[64:], model.predict(x[64:], verbose=0)[:, 1])
    assert kept_auc == pytest.approx(history.history["val_auc"][best], abs=2e-3)
    assert all(np.allclose(a, b) for a, b in zip(model.get_weights(), raw[best]))


def test_cross_validation_table_scores_each_recipe_over_its_trained_folds(tmp_path, monkeypatch):
    from dataclasses import asdict

    from sklearn.metrics import roc_auc_score

    from core.runs.recipes import cross_validation_table

    rng = np.random.default_rng(0)

    def fold_run(name: str, config: TrainConfig, first: int, retired=None) -> None:  # its own 20 validation images
        run_dir = storage.new_run({**asdict(config), **(retired or {})}, name=f"{name}-fold{config.cv_fold + 1}",
                               runs_root=tmp_path)
        y = np.tile([0, 1], 10)
        files.write_csv(run_dir / "predictions.csv", pd.DataFrame({
            "path": [f"img{i}" for i in range(first, first + 20)], "y_true": y,
            "prob": np.clip(0.3 * y + rng.uniform(0, 0.7, 20), 0, 1), "split": "val"}))
        storage.set_status(run_dir, "completed")

    for fold in range(3):
        fold_run("a-default", TrainConfig(cv_folds=3, cv_fold=fold), 20 * fold)
    for fold in range(2):  # the same folds, a fold not trained yet
        fold_run("b-conv2", TrainConfig(cv_folds=3, cv_fold=fold, train_from="conv2"), 20 * fold)
    fold_run("c-ema", TrainConfig(cv_folds=2, cv_fold=0), 0, retired={"ema": 0.97})  # from before its retirement
    (catalogue.list_runs(tmp_path)[0]["path"] / "predictions.csv").unlink()  # c-ema's, newest

    monkeypatch.setattr(classification, "N_BOOT", 50)
    table = cross_validation_table(catalogue.list_runs(tmp_path)).set_index("recipe")
    assert list(table.index) == ["ema=0.97", "train_from=conv2", "project defaults"]
    assert list(table.folds) == ["1 of 2", "2 of 3", "3 of 3"]
    assert "predictions.csv" in table.problem["ema=0.97"]  # named, not raised

    folds = [storage.read_predictions(run["path"]) for run in catalogue.list_runs(tmp_path)[3:]]
    expected = [roc_auc_score(f.y_true, f.prob) for f in reversed(folds)]
    row = table.loc["project defaults"]
    assert row.mean_roc_auc == pytest.approx(np.mean(expected))
    assert row.fold_roc_auc == ", ".join(f"{auc:.3f}" for auc in expected)
    pooled = pd.concat(folds)
    assert row.pooled_roc_auc == pytest.approx(roc_auc_score(pooled.y_true, pooled.prob))
    assert row.images == 60 and pd.isna(row.problem)
    assert pd.isna(row.vs_defaults)

    # train_from=conv2 against the defaults, fold by fold, on the two folds both have.
    conv2 = [storage.read_predictions(run["path"]) for run in reversed(catalogue.list_runs(tmp_path)[1:3])]
    differences = [roc_auc_score(f.y_true, f.prob) - auc for f, auc in zip(conv2, expected)]
    assert table.loc["train_from=conv2", "vs_defaults"] == pytest.approx(np.mean(differences))
    assert table.loc["train_from=conv2", "vs_defaults_se"] == pytest.approx(np.std(differences, ddof=1) / np.sqrt(2))
