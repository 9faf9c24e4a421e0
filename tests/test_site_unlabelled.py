"""Adaptation without labels (core.training.site_unlabelled): re-estimating
BatchNorm statistics changes the moving means and variances only, never a
weight, and leaves each layer frozen as it was; the command stores the
adapted model and, for a labelled site, its figures before and after."""
import shutil

import keras
import numpy as np
import pytest
from test_site import SY575, deployed_run  # noqa: F401 (fixture)

from core.base import files
from core.cli.main import main
from core.models.resnet import load_model
from core.training import site_adaptation, site_unlabelled


def moving_statistics(layer) -> list:
    return [layer.moving_mean, layer.moving_variance]


def test_reestimating_batchnorm_changes_its_moving_statistics_only(trained_run):
    model = load_model(trained_run / "model.keras")
    layers = site_unlabelled.batchnorm_layers(model)
    assert layers and all(not layer.trainable for layer in layers)  # frozen in training, as deployed
    statistics = {id(v) for layer in layers for v in moving_statistics(layer)}
    before = {id(v): np.array(v) for v in model.weights}
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 255, size=(4, 64, 64, 3)).astype("float32") for _ in range(3)]

    seen = site_unlabelled.reestimate_batchnorm(model, iter(batches), flip=True)

    assert seen == 12
    changed = {key for key, value in before.items()
               if not np.array_equal(value, np.array(next(v for v in model.weights if id(v) == key)))}
    assert changed and changed <= statistics  # gammas, betas, kernels, the head: untouched
    assert all(not layer.trainable for layer in layers)  # frozen again, momentum restored
    assert {layer.momentum for layer in layers} == {0.99}
    # The first layer's statistics are those of its inputs over the 3 batches and their mirrors.
    first = layers[0]
    inputs = keras.Model(model.inputs, first.input)
    views = [np.concatenate([b, b[:, :, ::-1]]) for b in batches]
    means = np.mean([np.asarray(inputs(v)).mean(axis=(0, 1, 2)) for v in views], axis=0)
    np.testing.assert_allclose(np.array(first.moving_mean), means, rtol=1e-3, atol=1e-3)

    with pytest.raises(ValueError, match="no readable slice"):
        site_unlabelled.reestimate_batchnorm(model, iter([]))


def test_adapt_unlabelled_stores_the_model_and_measures_a_labelled_site(deployed_run, tmp_path,  # noqa: F811
                                                                        capsys):
    site = tmp_path / "site"
    shutil.copytree(SY575, site)
    assert main(["adapt", str(site), "--site", "sy575", "--unlabelled"]) == 0
    out = capsys.readouterr().out
    assert "BatchNorm statistics of" in out and "on 48 slices" in out and "roc_auc" in out
    folder = site_adaptation.sites_dir() / "sy575" / "unlabelled"
    result = files.read_json(folder / site_unlabelled.RESULT_FILE)
    assert result["slices"] == 48 and result["patients"] == 4 and not result["flip"]
    assert result["before"]["slices"]["n"] == result["after"]["slices"]["n"] == 48
    assert result["before"]["patients"]["roc_auc_ci"] is None  # 2 patients a class: too few for an interval
    adapted, deployed = load_model(folder / "model.keras"), load_model(deployed_run / "model.keras")
    kernel = deployed.get_layer("head_dense").kernel
    np.testing.assert_array_equal(np.array(adapted.get_layer("head_dense").kernel), np.array(kernel))

    assert main(["adapt", str(site), "--site", "x", "--flip"]) == 2  # --flip without --unlabelled
    assert "--flip goes with --unlabelled" in capsys.readouterr().err
