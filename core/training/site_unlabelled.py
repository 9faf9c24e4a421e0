"""Adapting the deployed model to a site without labels: re-estimate its
BatchNorm statistics on the site's slices (AdaBN, Li et al. 2016).

A BatchNorm layer normalises with the mean and variance it stored in
training. The deployed models keep BatchNorm frozen through fine-tuning
(core.models.resnet.set_trainable), so those statistics are ImageNet's.
Another hospital's scanners move what each layer sees; AdaBN replaces each
layer's statistics with the site's own, measured by running the site's
slices through the model with BatchNorm alone in training mode. Nothing is
learned: every weight and bias stays as it is (no optimizer, no gradient);
only the moving mean and variance change. With `flip`, the statistics are
taken over each slice and its mirror: the views test-time augmentation
(the run's flip_tta) shows the model.

Each batch's statistics are averaged over the batches (the momentum of
batch k is (k-1)/k), so the order of the site's slices does not matter and
the first batch leaves nothing of ImageNet's statistics. The variance is
the mean of the batches' variances, as AdaBN does: batches of BATCH_SIZE
slices of one site differ little.

The adapted model goes to sites/NAME/unlabelled/model.keras (saved then
renamed), with unlabelled.json: what was done, on how many slices, and,
where the site's folders are labelled (one sub-folder per class), the site's
figures before and after (core.training.site_adaptation.site_figures), the
labels used for that measurement only. The run's calibration and threshold
come from COVID-CT's validation split through ImageNet's statistics; the
adapted model's probabilities are read through them unchanged, which is
what the calibration error "after" measures.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd

from core.base import files
from core.data.images import load_image
from core.data.limits import ImageReadError
from core.inference import calibration, site_features, site_labels
from core.inference.predict import Predictor
from core.models.resnet import load_model, predict_proba, tta_views
from core.training.fit import save_model
from core.training.site_adaptation import site_figures, sites_dir

BATCH_SIZE = 32
RESULT_FILE = "unlabelled.json"


def batchnorm_layers(model: keras.Model) -> list:
    """Every BatchNormalization layer of the model, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found += batchnorm_layers(layer)
    return found


def reestimate_batchnorm(model: keras.Model, batches, flip: bool = False) -> int:
    """Replace each BatchNorm layer's moving mean and variance by their averages
    over `batches` (prepared float32 slices; with `flip`, each batch and its
    mirror). Returns the number of slices seen. Weights are untouched."""
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError("this model has no BatchNorm layer: nothing to re-estimate")
    saved = [(layer.trainable, layer.momentum) for layer in layers]
    seen = 0
    try:
        for layer in layers:
            layer.trainable = True  # a frozen BatchNorm runs in inference mode in Keras 3 and learns no statistics
        for number, batch in enumerate(batches, start=1):
            for layer in layers:
                layer.momentum = (number - 1) / number  # a running average over the batches
            model(np.concatenate(tta_views(batch, flip)), training=True)
            seen += len(batch)
    finally:
        for layer, (trainable, momentum) in zip(layers, saved):
            layer.trainable, layer.momentum = trainable, momentum
    if not seen:
        raise ValueError("no readable slice to re-estimate the statistics on")
    return seen


def prepared_batches(predictor: Predictor, paths: list[str], problems: list[str], kept: list[int] | None = None):
    """The slices as the model takes them, BATCH_SIZE at a time; unreadable ones left out,
    named in `problems`; the positions of those read appended to `kept`."""
    for start in range(0, len(paths), BATCH_SIZE):
        batch = []
        for position in range(start, min(start + BATCH_SIZE, len(paths))):
            try:
                batch.append(predictor.prepare(load_image(paths[position])))
            except (ImageReadError, OSError) as error:
                problems.append(str(error))
                continue
            if kept is not None:
                kept.append(position)
        if batch:
            yield np.stack(batch)


def site_slices(site_dirs: list, classes: tuple[str, str]) -> tuple[list[str], pd.DataFrame | None]:
    """The site's slice files, and their labels and patients where the folders are
    labelled (site_labels.site_index), else None: the adaptation uses no label."""
    try:
        index = site_labels.site_index(site_dirs, *classes)
    except ValueError:
        index = None
    if index is not None and len(index):
        return index["path"].astype(str).tolist(), index
    paths = []
    for folder in site_dirs:
        paths += site_features.site_files(folder)[0]
    return paths, None


def adapt_unlabelled(deployed_dir, site_dirs: list, name: str, flip: bool = False, report=print) -> dict:
    """Re-estimate the deployed model's BatchNorm statistics on the site's slices;
    store the model and unlabelled.json under sites/NAME/unlabelled; returns the result."""
    deployed_dir = Path(deployed_dir)
    name = files.check_name(name, "site name")
    predictor = Predictor.from_run(deployed_dir)
    paths, index = site_slices(site_dirs, (predictor.negative_class, predictor.positive_class))
    report(f"site {name}: {len(paths)} slices; re-estimating BatchNorm statistics"
           + (" over each slice and its mirror" if flip else ""))
    model, problems = load_model(deployed_dir / "model.keras"), []
    seen = reestimate_batchnorm(model, prepared_batches(predictor, paths, problems), flip)
    out = sites_dir() / name / "unlabelled"
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out / "model.keras")
    result = {"site": name, "deployed": deployed_dir.name, "slices": seen, "flip": flip,
              "batchnorm_layers": len(batchnorm_layers(model)), "problems": problems,
              "model": str(out / "model.keras")}
    if index is not None:
        result.update(measure(predictor, model, index, report))
    files.write_json(out / RESULT_FILE, result)
    return result


def measure(predictor: Predictor, adapted: keras.Model, index: pd.DataFrame, report=print) -> dict:
    """The labelled site's figures through the deployed model and through the adapted one,
    both read through the run's calibration and threshold."""
    calibrate = calibration.for_run(predictor.run_dir)
    scored = {}
    for when, model in (("before", predictor.model), ("after", adapted)):
        problems: list[str] = []
        positions: list[int] = []
        raw = np.concatenate([predict_proba(model, batch, BATCH_SIZE, flip_tta=predictor.flip_tta)
                              for batch in prepared_batches(predictor, index["path"].tolist(), problems, positions)])
        kept = index.iloc[positions]
        scored[when] = pd.DataFrame({"y_true": kept["y"].to_numpy(), "prob": calibrate.apply(raw),
                                     "threshold": calibrate.threshold,
                                     "patient_id": kept["patient_id"].to_numpy()})
        report(f"scored the site's {len(kept)} slices {when} adaptation")
    return {"patients": int(index["patient_id"].nunique()),
            "before": site_figures(scored["before"]), "after": site_figures(scored["after"])}

