"""Training: one config, one run folder, head warm-up then fine-tuning.

The recipe follows the Keras "Transfer learning & fine-tuning" guide: train the
new head on a frozen ImageNet backbone first (so large gradients from a random
head do not wreck the pretrained features), then unfreeze the stages from
`train_from` up and continue at a lower learning rate.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from core.training import checkpoint, evidence_penalty
from core.data.splits import SPLITS
from core.training import distribute
from core.evaluation import classification
from core.inference import external, lung_focus
from core.data import image_cache
from core.runs import lock, storage
from core.base import files
from core.runs.dataset import run_index
from core.runs.train_config import TrainConfig
from core.training.progress import RunProgress
from core.training.frozen_cache import cached_datasets, fits_budget, remove_cache
from core.data.image_cache import CachedImages, cache_images
from core.models.resnet import build_model, frozen_boundary, load_model, predict_proba, set_trainable
from core.training.pipeline import (augmentation, balanced_class_weights, distributed_training_dataset, make_dataset, reading_errors)

SCORE_CHUNK = 512  # images scored per chunk after training: memory bounded by it, not by the split


def compile_model(model: keras.Model, learning_rate: float) -> None:
    """Adam, cross-entropy on one-hot labels, and the positive-class
    precision, recall and AUC."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.Precision(class_id=1, name="precision"),
            keras.metrics.Recall(class_id=1, name="recall"),
            # Per-column AUC averaged over the two softmax columns: both equal
            # the positive-class ROC-AUC, since p0 = 1 - p1.
            keras.metrics.AUC(multi_label=True, num_labels=2, name="auc"),
        ],
    )


def fit_phase(model, config, run_dir, phase, epochs, learning_rate, train_ds, val_ds, steps, report,
              extra_callbacks=(), rows_before=0):
    """One phase of model.fit with the run's callbacks (and the caller's, such
    as a tuner's pruning callback); returns the history. Continues after the
    phase's last committed epoch, if any (core.training.checkpoint); `rows_before`:
    the history.csv rows of the phases before it."""
    # Rows of epochs logged but not committed before a kill are logged again.
    checkpoint.truncate_history(run_dir, checkpoint.history_rows(run_dir, phase, rows_before))
    compile_model(model, learning_rate)
    callbacks = list(extra_callbacks) + [
        RunProgress(run_dir, phase, epochs, steps, report),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_auc", mode="max", factor=0.5,
                                          patience=config.lr_patience, min_lr=1e-7),
    ]
    if phase == "finetune":
        callbacks += [
            keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", restore_best_weights=True,
                                          patience=config.early_stopping_patience),
        ]
    # Last: it commits each epoch once the callbacks above have counted it.
    callbacks.append(checkpoint.EpochCheckpoint(run_dir, phase, rows_before, train_ds, callbacks))
    # The training batches carry the class weights, and shuffle themselves.
    return model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, shuffle=False, verbose=0)


def train(config: TrainConfig, name: str | None = None, report=print, runs_root=None,
          run_dir: Path | None = None, callbacks=(), exclusive: bool = True) -> Path:
    """Train one run end to end; returns its folder. `run_dir` trains into a
    folder already made by launch_training. `callbacks` join Keras' in both
    phases. `exclusive` takes the training lock (a tuning search holds it for
    its trials instead). The run is marked completed, cancelled or failed
    (with the reason) whatever happens."""
    config.validate()
    # Before any other TensorFlow work: a multi-worker strategy and a split
    # CPU can only be set up in a fresh runtime.
    try:
        strategy = distribute.make_strategy(config.strategy)
    except (ValueError, RuntimeError) as error:  # a folder made by launch_training says why
        if run_dir:
            storage.set_status(run_dir, "failed", reason=f"{type(error).__name__}: {error}")
        raise
    if not distribute.is_chief(strategy):
        return _train_as_worker(config, strategy, report, callbacks)
    runs_root = Path(run_dir).parent if run_dir else runs_root
    if exclusive:
        lock.acquire_training_lock(Path(run_dir).name if run_dir else "new run", runs_root)
    try:
        if run_dir is None:
            run_dir = storage.new_run(asdict(config), name=name, runs_root=runs_root)
        run_dir = Path(run_dir)
        storage.set_status(run_dir, "running", **storage.owner(os.getpid()))
        report(f"run folder: {run_dir}")
        return _train_with_status(run_dir, config, report, callbacks, strategy)
    finally:
        if exclusive:
            lock.release_training_lock(runs_root)


def _train_as_worker(config: TrainConfig, strategy, report, callbacks=()) -> None:
    """A non-chief worker of a multi-worker run: it takes part in every step
    (and in the evaluation, whose predictions are gathered across workers) but
    keeps its files in a scratch folder, as the chief writes the run."""
    scratch = Path(tempfile.mkdtemp(prefix=f"covidct-{distribute.worker_name(strategy)}-"))
    try:
        files.write_json(scratch / "config.json", asdict(config))
        report(f"{distribute.worker_name(strategy)}: training with the chief; scratch folder {scratch}")
        _train_in(scratch, config, report, callbacks, strategy)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train_with_status(run_dir: Path, config: TrainConfig, report, callbacks=(), strategy=None) -> Path:
    started = time.monotonic()
    try:
        with lock.sigterm_raises(lock.RunCancelled):
            _train_in(run_dir, config, report, callbacks, strategy)
    except KeyboardInterrupt as reason:
        storage.set_status(run_dir, "cancelled", reason=str(reason) or "cancelled",
                        train_seconds=round(time.monotonic() - started, 1))
        report("run cancelled")
        raise
    except Exception as error:  # an error may name another final state (a tuner's "pruned")
        storage.set_status(run_dir, getattr(error, "run_state", "failed"), reason=f"{type(error).__name__}: {error}",
                        train_seconds=round(time.monotonic() - started, 1))
        raise
    storage.set_status(run_dir, "completed", phase="done", train_seconds=round(time.monotonic() - started, 1))
    report(f"completed in {time.monotonic() - started:.0f} s: {run_dir}")
    return run_dir


def _train_in(run_dir: Path, config: TrainConfig, report, callbacks=(), strategy=None) -> None:
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if replicas > 1:  # per-replica batch and learning rates -> global ones (core.training.distribute)
        config = distribute.scale_for_replicas(config, replicas)
        report(f"{replicas} replicas ({distribute.worker_name(strategy)}): global batch {config.batch_size}, "
               f"learning rates {config.head_lr:g} / {config.finetune_lr:g}")
    storage.set_status(run_dir, "running", replicas=replicas)
    keras.utils.set_random_seed(config.seed)
    index = run_index(config)
    report(f"images: {len(index)} ({', '.join(f'{s} {n}' for s, n in index.split.value_counts().items())})")

    started = time.monotonic()
    images, labels = decode_splits(index, config, SPLITS, run_dir)
    report(f"decoded and resized to {config.input_size} px in {time.monotonic() - started:.0f} s "
           f"(image cache: {image_cache.cache_root()})")

    augment = augmentation(config, seed=config.seed)
    # Models (their variables, optimizers) made in the strategy's scope are mirrored; fit splits each batch.
    with strategy.scope():
        model = fit_model(run_dir, config, images, labels, augment, report, callbacks)
    if replicas > 1:
        # Under a strategy, Keras 3.15's predict_on_batch returns the batch
        # once per replica; evaluate the saved model on one device, as the app does.
        model = load_model(run_dir / "model.keras")

    storage.set_status(run_dir, "running", phase="evaluating")
    probs = {split: score(model, images[split], config) for split in ("val", "test")}

    predictions = pd.concat([
        pd.DataFrame({"path": index[index.split == split].relpath.to_numpy(), "y_true": labels[split],
                      "prob": probs[split], "split": split})
        for split in ("val", "test")
    ], ignore_index=True)
    files.write_csv(run_dir / "predictions.csv", predictions)
    checkpoint.kill_point("evaluating")
    metrics = classification.evaluate_predictions(predictions, seed=config.seed, threshold_method=config.threshold_method)
    negative_class = index.loc[index.y == 0, "label"].iloc[0]
    metrics["labels"] = {"positive": config.positive_class, "negative": str(negative_class)}
    files.write_json(run_dir / "metrics.json", metrics)
    test = metrics.get("test", {}).get("at_threshold", {})
    report(f"test ROC-AUC {test.get('roc_auc')}  accuracy {test.get('accuracy')}  "
           f"F1 {test.get('f1')}  at threshold {metrics['threshold']['value']:.3f} (chosen on val)")
    if config.holdout_source and distribute.is_chief(strategy):
        storage.set_status(run_dir, "running", phase=f"evaluating on the held-out source {config.holdout_source}")
        external.evaluate_on(run_dir, config.held_out_source(), name=config.holdout_source, report=report)
    if distribute.is_chief(strategy):  # where its Grad-CAM evidence lies, beside its scores (lung_focus.json)
        storage.set_status(run_dir, "running", phase="measuring the lung focus")
        lung_focus.after_training(run_dir, report=report)


def decode_splits(index: pd.DataFrame, config: TrainConfig, splits, run_dir: Path | None = None):
    """({split: CachedImages}, {split: labels}) of the index's splits, each
    image decoded into the image cache unless it is there already."""
    images, labels = {}, {}
    for split in splits:
        rows = index[index.split == split]
        if run_dir is not None:
            storage.set_status(run_dir, "running", phase=f"decoding {split} images")
        images[split] = cache_images(rows.path.tolist(), config.input_size, config.lung_crop, lung_mask=config.lung_mask)
        labels[split] = rows.y.to_numpy()
        checkpoint.kill_point("loading")
    return images, labels


def score(model: keras.Model, images: CachedImages, config: TrainConfig) -> np.ndarray:
    """Positive-class probabilities of cached images, a chunk at a time (bounded memory)."""
    with reading_errors(images):
        parts = [predict_proba(model, chunk.array(), config.batch_size, config.flip_tta)
                 for chunk in images.chunks(SCORE_CHUNK)]
    return np.concatenate(parts) if parts else np.zeros((0,), "float32")


def fit_model(run_dir: Path, config: TrainConfig, images, labels, augment, report, callbacks=()) -> keras.Model:
    """Build the model and train it: head warm-up, then fine-tuning. Returns
    the whole model, also saved as model.keras. A resumed run loads what its
    committed phases made and continues after the last committed epoch
    (core.training.checkpoint lists the phases and their commits)."""
    model = build_model(config.backbone, config.input_size, config.weights, config.dropout, train_from="head")
    if config.start_from_run:  # fine-tune a trained run's model (site adaptation), not the pretrained one
        model.load_weights(config.start_run_dir() / "model.keras")
    if (run_dir / "model.keras").exists():  # the saving phase committed
        model.load_weights(run_dir / "model.keras")
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # if a kill came before their removal
        remove_cache(run_dir)
        report("resumed after training: evaluating")
        return model
    fitted, train_ds, val_ds = training_data(model, config, images, labels, augment, run_dir, report)
    steps = int(np.ceil(len(labels["train"]) / config.batch_size))

    phases = [("head", config.head_epochs, config.head_lr)]
    if config.train_from != "head":
        phases.append(("finetune", config.finetune_epochs, config.finetune_lr))
    rows = 0  # history.csv rows of the phases done
    for phase, epochs, learning_rate in phases:
        if not epochs:
            continue
        if phase == "finetune":
            set_trainable(model, config.train_from)
        if checkpoint.is_finished(run_dir, phase):
            checkpoint.restore_phase(run_dir, phase, model, train_ds)
            report(f"resumed after the {phase} phase")
        else:
            if checkpoint.committed(run_dir, phase):
                report(f"resuming the {phase} phase after epoch {checkpoint.committed(run_dir, phase)['epoch']}")
            with reading_errors(images["train"], images["val"]):
                fit_phase(fitted, config, run_dir, phase, epochs, learning_rate, train_ds, val_ds, steps, report,
                          callbacks, rows_before=rows)
            checkpoint.kill_point(f"{phase} fitted")
            checkpoint.commit_phase(run_dir, phase, model, train_ds)
        rows = checkpoint.history_rows(run_dir, phase, rows)
        storage.set_status(run_dir, "running", phases_done=[p for p, _, _ in phases if checkpoint.is_finished(run_dir, p)])
    save_model(model, run_dir / "model.keras")
    checkpoint.kill_point("saved")
    # model.keras is the saving phase's commit: a resume never reads the checkpoints again.
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    remove_cache(run_dir)
    return model


def training_data(model, config, images, labels, augment, run_dir, report):
    """(the model fit trains, training batches with class weights as sample
    weights, validation batches). The frozen stages' activations are cached
    when train_from leaves any frozen and the cache fits its disk budget
    (then the fitted model is the part above them); otherwise the images
    stream through the whole model."""
    boundary = frozen_boundary(model, config.train_from)
    if boundary and fits_budget(model, boundary, images, run_dir, report):
        top, train_batches, val_batches = cached_datasets(model, boundary, images, labels, augment, config,
                                                          run_dir, report)
        fitted = evidence_penalty.for_training(top, config.evidence_penalty, model, boundary)
        return fitted, train_batches, val_batches
    fields = evidence_penalty.streamed_options(model, config.evidence_penalty)  # the lung fields, penalised
    options = dict(augment=augment, seed=config.seed, class_weight=balanced_class_weights(labels["train"]), **fields)
    strategy = tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):  # each worker reads its share of the files
        train_ds = distributed_training_dataset(strategy, images["train"], labels["train"], config.batch_size,
                                                **options)
    else:
        train_ds = make_dataset(images["train"], labels["train"], config.batch_size, training=True, **options)
    val_ds = make_dataset(images["val"], labels["val"], config.batch_size, **fields)  # tf.distribute shards it
    return evidence_penalty.for_training(model, config.evidence_penalty), train_ds, val_ds


def save_model(model: keras.Model, path: Path) -> None:
    """Save then rename, so a crash never leaves a truncated model.keras."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    tmp.replace(path)
