"""Training: one config, one run folder, head warm-up then fine-tuning.

The recipe follows the Keras "Transfer learning & fine-tuning" guide: train the
new head on a frozen ImageNet backbone first (so large gradients from a random
head do not wreck the pretrained features), then unfreeze the stages from
`train_from` up and continue at a lower learning rate.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from core import checkpoint, data, distribute, evaluate, external, runs
from core.config import TrainConfig, recipe_changes
from core.model import build_model, frozen_boundary, load_model, predict_proba, set_trainable, split_at

# Augmented views per training image in the frozen-stage activation cache.
CACHED_VIEWS = 4


class RunCancelled(KeyboardInterrupt):
    """Raised when the user asks a run to stop (cancel file or SIGTERM); a
    KeyboardInterrupt so that nothing on the way treats it as a failure."""


class RunProgress(keras.callbacks.Callback):
    """Keeps status.json up to date, reports epochs, and stops on request.

    Cancellation is a file (`cancel` in the run folder) so the app can ask a
    training process it does not own to stop at the next batch."""

    def __init__(self, run_dir: Path, phase: str, epochs: int, steps: int, report):
        super().__init__()
        self.run_dir, self.phase, self.epochs, self.steps, self.report = run_dir, phase, epochs, steps, report
        self.epoch = 0
        self.last_write = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self._write(batch=0)

    def on_train_batch_end(self, batch, logs=None):
        if (self.run_dir / "cancel").exists():
            self.model.stop_training = True
            raise RunCancelled("cancelled by the user")
        if time.monotonic() - self.last_write > 2.0:  # don't hammer the disk
            self._write(batch=batch + 1)
        checkpoint.kill_point(f"{self.phase} epoch {self.epoch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: round(float(v), 4) for k, v in (logs or {}).items()}
        self._write(batch=self.steps, last_logs=logs)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k in
                          ("loss", "auc", "val_loss", "val_auc", "val_accuracy"))
        self.report(f"[{self.phase}] epoch {epoch + 1}/{self.epochs}  {shown}")

    def _write(self, batch: int, **extra):
        self.last_write = time.monotonic()
        runs.set_status(self.run_dir, "running", phase=self.phase, epoch=self.epoch + 1,
                        epochs=self.epochs, batch=batch, steps=self.steps, **extra)


def run_index(config: TrainConfig) -> pd.DataFrame:
    """The images a run trains, validates and tests on, with their splits:
    its training sources indexed, regrouped into its cross-validation fold,
    sampled down for a smoke run. The one rule, for training and for
    anything that must see the run's images again (core.ood)."""
    index = data.index_dataset(config.training_sources(), positive_class=config.positive_class,
                               seed=config.seed, use_official_splits=config.use_official_splits)
    if config.cv_folds:
        index = data.cross_validation_split(index, config.cv_folds, config.cv_fold, config.seed)
    return select_images(index, config)


def select_images(index: pd.DataFrame, config: TrainConfig) -> pd.DataFrame:
    """The rows used by a run: all, or a class-balanced sample per split."""
    if not config.max_images_per_split:
        return index
    per_class = max(1, config.max_images_per_split // 2)
    shuffled = index.sample(frac=1.0, random_state=config.seed)
    return shuffled.groupby(["split", "y"]).head(per_class).sort_values("relpath").reset_index(drop=True)


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


def balanced_class_weights(labels: np.ndarray) -> dict[int, float]:
    counts = np.bincount(labels, minlength=2)
    return {c: float(len(labels) / (2 * max(counts[c], 1))) for c in (0, 1)}


def fit_phase(model, config, run_dir, phase, epochs, learning_rate, train_ds, val_ds, steps, class_weight, report,
              extra_callbacks=(), rows_before=0):
    """One phase of model.fit with the run's callbacks (and the caller's, such
    as a tuner's pruning callback); returns the history. Continues after the
    phase's last committed epoch, if any (core.checkpoint); `rows_before`:
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
            # Weights of the trained layers at the best validation AUC (the
            # fitted model may be the top part only; model.keras is the whole).
            keras.callbacks.ModelCheckpoint(str(run_dir / "best.weights.h5"), monitor="val_auc",
                                            mode="max", save_best_only=True, save_weights_only=True),
        ]
    # Last: it commits each epoch once the callbacks above have counted it.
    callbacks.append(checkpoint.EpochCheckpoint(run_dir, phase, rows_before, train_ds, callbacks))
    return model.fit(train_ds, validation_data=val_ds, epochs=epochs, class_weight=class_weight,
                     callbacks=callbacks, shuffle=False, verbose=0)  # the datasets shuffle


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
            runs.set_status(run_dir, "failed", reason=f"{type(error).__name__}: {error}")
        raise
    if not distribute.is_chief(strategy):
        return _train_as_worker(config, strategy, report, callbacks)
    runs_root = Path(run_dir).parent if run_dir else runs_root
    if exclusive:
        runs.acquire_training_lock(Path(run_dir).name if run_dir else "new run", runs_root)
    try:
        if run_dir is None:
            run_dir = runs.new_run(asdict(config), name=name, runs_root=runs_root)
        run_dir = Path(run_dir)
        runs.set_status(run_dir, "running", pid=os.getpid())
        report(f"run folder: {run_dir}")
        return _train_with_status(run_dir, config, report, callbacks, strategy)
    finally:
        if exclusive:
            runs.release_training_lock(runs_root)


def _train_as_worker(config: TrainConfig, strategy, report, callbacks=()) -> None:
    """A non-chief worker of a multi-worker run: it takes part in every step
    (and in the evaluation, whose predictions are gathered across workers) but
    keeps its files in a scratch folder, as the chief writes the run."""
    scratch = Path(tempfile.mkdtemp(prefix=f"covidct-{distribute.worker_name(strategy)}-"))
    try:
        runs.write_json(scratch / "config.json", asdict(config))
        report(f"{distribute.worker_name(strategy)}: training with the chief; scratch folder {scratch}")
        _train_in(scratch, config, report, callbacks, strategy)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train_with_status(run_dir: Path, config: TrainConfig, report, callbacks=(), strategy=None) -> Path:
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_cancelled)
    started = time.monotonic()
    try:
        _train_in(run_dir, config, report, callbacks, strategy)
    except KeyboardInterrupt as reason:
        runs.set_status(run_dir, "cancelled", reason=str(reason) or "cancelled",
                        train_seconds=round(time.monotonic() - started, 1))
        report("run cancelled")
        raise
    except Exception as error:  # an error may name another final state (a tuner's "pruned")
        runs.set_status(run_dir, getattr(error, "run_state", "failed"), reason=f"{type(error).__name__}: {error}",
                        train_seconds=round(time.monotonic() - started, 1))
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    runs.set_status(run_dir, "completed", phase="done", train_seconds=round(time.monotonic() - started, 1))
    report(f"completed in {time.monotonic() - started:.0f} s: {run_dir}")
    return run_dir


def cross_validate(config: TrainConfig, name: str | None = None, report=print, runs_root=None) -> list[Path]:
    """One run per fold of config.cv_folds (at least 2), each validating on
    its own fold of train + val; returns their folders, to be scored with
    evaluate.cross_validation_summary. A failed fold stops the rest (the
    finished folds stay as runs)."""
    if config.cv_folds < 2:
        raise ValueError(f"cross-validation needs cv_folds of at least 2, got {config.cv_folds}")
    run_dirs = []
    for fold in range(config.cv_folds):
        report(f"fold {fold + 1} of {config.cv_folds}")
        run_dirs.append(train(dataclasses.replace(config, cv_fold=fold), name=f"{name or 'cv'}-fold{fold + 1}",
                              report=report, runs_root=runs_root))
    return run_dirs


def leave_one_source_out(config: TrainConfig, name: str | None = None, report=print, runs_root=None) -> list[Path]:
    """One run per source of config.data_dir (at least two), each trained on
    the other sources and evaluated on the one left out (stored as that
    run's external set); returns their folders. Tells how the recipe travels
    to a source it never saw."""
    sources = data.source_dirs(config.data_dir)
    if len(sources) < 2:
        raise ValueError(f"leave-one-source-out needs at least two dataset folders in data_dir (separated by "
                         f"{os.pathsep!r}), got {config.data_dir}")
    run_dirs = []
    for folder in sources:
        source = data.source_name(folder)
        report(f"leaving out {source}")
        held_out = dataclasses.replace(config, holdout_source=source).validate()
        run_dirs.append(train(held_out, name=f"{name or 'loso'}-without-{source}", report=report,
                              runs_root=runs_root))
    return run_dirs


def cross_validation_table(all_runs: list[dict]) -> pd.DataFrame:
    """One row per cross-validated recipe found among the runs
    (runs.cross_validation_groups), scored by evaluate.cross_validation_summary
    over the folds trained so far: the mean fold ROC-AUC is the recipe's score.
    Folds differ in difficulty far more than recipes do, so a recipe is also
    compared with the project defaults fold by fold, on the same folds
    (same data, seed and number of folds): the mean paired difference and its
    standard error."""
    scored = []  # (recipe, config, runs, summary or the error that stopped it)
    for group in runs.cross_validation_groups(all_runs):
        config = group[0]["config"]
        try:
            summary = evaluate.cross_validation_summary([runs.read_predictions(run["path"]) for run in group],
                                                        seed=config.get("seed", 0))
        except (OSError, ValueError, KeyError) as error:  # a deleted or edited predictions.csv
            summary = error
        scored.append((recipe_changes(config), config, group, summary))

    def same_folds(config):
        return config.get("data_dir"), config["cv_folds"], config.get("seed", 0)

    def fold_scores(group, summary):
        return dict(zip([run["config"]["cv_fold"] for run in group], summary["fold_roc_auc"]))

    defaults = {same_folds(config): fold_scores(group, summary) for recipe, config, group, summary in scored
                if recipe == "project defaults" and isinstance(summary, dict)}
    rows = []
    for recipe, config, group, summary in scored:
        row = {"recipe": recipe, "seed": config.get("seed", 0), "folds": f"{len(group)} of {config['cv_folds']}"}
        fold_runs = " ".join(run["id"] for run in group)
        if not isinstance(summary, dict):
            rows.append({**row, "problem": f"{type(summary).__name__}: {summary}", "runs": fold_runs})
            continue
        baseline = None if recipe == "project defaults" else defaults.get(same_folds(config))
        difference, standard_error = _paired_difference(fold_scores(group, summary), baseline)
        low, high = summary["pooled_ci"]
        rows.append({
            **row,
            "mean_roc_auc": summary["mean_roc_auc"],
            "std_roc_auc": summary["std_roc_auc"],
            "vs_defaults": difference,
            "vs_defaults_se": standard_error,
            "fold_roc_auc": ", ".join("n/a" if auc is None else f"{auc:.3f}" for auc in summary["fold_roc_auc"]),
            "pooled_roc_auc": summary["pooled_roc_auc"],
            "pooled_ci_low": low,
            "pooled_ci_high": high,
            "images": summary["n_images"],
            "runs": fold_runs,
        })
    table = pd.DataFrame(rows)
    return table[[c for c in table if c != "runs"] + ["runs"]] if len(table) else table


def _paired_difference(scores: dict, baseline: dict | None) -> tuple[float | None, float | None]:
    """Mean and standard error of scores[fold] - baseline[fold] over the folds both scored."""
    common = [f for f in scores if baseline and baseline.get(f) is not None and scores[f] is not None]
    differences = np.array([scores[f] - baseline[f] for f in common])
    if len(differences) < 2:
        return None, None
    return float(differences.mean()), float(differences.std(ddof=1) / np.sqrt(len(differences)))


def launch_training(config: TrainConfig, name: str | None = None, runs_root=None) -> Path:
    """Start a run in a background process that outlives the caller (the
    app's page or tab); returns its folder at once. Refused while another
    training is alive."""
    config.validate()
    runs.acquire_training_lock("starting", runs_root)
    try:
        run_dir = runs.new_run(asdict(config), name=name, runs_root=runs_root)
    except BaseException:
        runs.release_training_lock(runs_root)
        raise
    pid = runs.start_with_lock(["train", "--run-dir", str(run_dir)], run_dir / "train.log", run_dir.name, runs_root)
    runs.set_status(run_dir, "running", pid=pid)
    return run_dir


def _raise_cancelled(signum, frame):
    raise RunCancelled("stopped by SIGTERM")


def _train_in(run_dir: Path, config: TrainConfig, report, callbacks=(), strategy=None) -> None:
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if replicas > 1:  # per-replica batch and learning rates -> global ones (core.distribute)
        config = distribute.scale_for_replicas(config, replicas)
        report(f"{replicas} replicas ({distribute.worker_name(strategy)}): global batch {config.batch_size}, "
               f"learning rates {config.head_lr:g} / {config.finetune_lr:g}")
    runs.set_status(run_dir, "running", replicas=replicas)
    keras.utils.set_random_seed(config.seed)
    index = run_index(config)
    report(f"images: {len(index)} ({', '.join(f'{s} {n}' for s, n in index.split.value_counts().items())})")

    images, labels = {}, {}
    for split in data.SPLITS:
        rows = index[index.split == split]
        runs.set_status(run_dir, "running", phase=f"loading {split} images")
        images[split] = data.load_images(rows.path.tolist(), config.input_size, lung_crop=config.lung_crop)
        labels[split] = rows.y.to_numpy()
        checkpoint.kill_point("loading")
    report(f"decoded and resized to {config.input_size} px")

    augment = augmentation(config, seed=config.seed)
    # Models (and so their variables and optimizers) made under the strategy's
    # scope are mirrored across its replicas; fit then splits each batch.
    with strategy.scope():
        model = fit_model(run_dir, config, images, labels, augment, report, callbacks)
    if replicas > 1:
        # Under a strategy, Keras 3.15's predict_on_batch returns the batch
        # once per replica; evaluate the saved model on one device, as the app does.
        model = load_model(run_dir / "model.keras")

    runs.set_status(run_dir, "running", phase="evaluating")
    probs = {split: predict_proba(model, images[split], config.batch_size, config.flip_tta)
             for split in ("val", "test")}

    predictions = pd.concat([
        pd.DataFrame({"path": index[index.split == split].relpath.to_numpy(), "y_true": labels[split],
                      "prob": probs[split], "split": split})
        for split in ("val", "test")
    ], ignore_index=True)
    runs.write_csv(run_dir / "predictions.csv", predictions)
    checkpoint.kill_point("evaluating")
    metrics = evaluate.evaluate_predictions(predictions, seed=config.seed,
                                            threshold_method=config.threshold_method)
    negative_class = index.loc[index.y == 0, "label"].iloc[0]
    metrics["labels"] = {"positive": config.positive_class, "negative": str(negative_class)}
    runs.write_json(run_dir / "metrics.json", metrics)
    test = metrics.get("test", {}).get("at_threshold", {})
    report(f"test ROC-AUC {test.get('roc_auc')}  accuracy {test.get('accuracy')}  "
           f"F1 {test.get('f1')}  at threshold {metrics['threshold']['value']:.3f} (chosen on val)")
    if config.holdout_source and distribute.is_chief(strategy):
        runs.set_status(run_dir, "running", phase=f"evaluating on the held-out source {config.holdout_source}")
        external.evaluate_on(run_dir, config.held_out_source(), name=config.holdout_source, report=report)


def augmentation(config: TrainConfig, seed: int | None = None) -> keras.Sequential:
    """The config's training augmentation (core.data.augmentation_layers)."""
    return data.augmentation_layers(config.rotation, config.zoom, config.contrast, config.flip, seed=seed)


def fit_model(run_dir: Path, config: TrainConfig, images, labels, augment, report, callbacks=()) -> keras.Model:
    """Build the model and train it: head warm-up, then fine-tuning. Returns
    the whole model, also saved as model.keras. A resumed run loads what its
    committed phases made and continues after the last committed epoch
    (core.checkpoint lists the phases and their commits)."""
    model = build_model(config.backbone, config.input_size, config.weights, config.dropout, train_from="head")
    if (run_dir / "model.keras").exists():  # the saving phase committed
        model.load_weights(run_dir / "model.keras")
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # if a kill came before their removal
        report("resumed after training: evaluating")
        return model
    # The frozen stages' activations are cached whenever train_from leaves any frozen.
    boundary = frozen_boundary(model, config.train_from)
    if boundary:
        fitted, train_ds, val_ds = cached_datasets(model, boundary, images, labels, augment, config, run_dir, report)
    else:
        fitted = model
        train_ds = data.make_dataset(images["train"], labels["train"], config.batch_size, training=True,
                                     augment=augment, seed=config.seed)
        val_ds = data.make_dataset(images["val"], labels["val"], config.batch_size)
    steps = int(np.ceil(len(labels["train"]) / config.batch_size))
    # Cached batches carry their own sample weights; Keras takes class_weight for tf.data only.
    class_weight = None if boundary else balanced_class_weights(labels["train"])

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
            fit_phase(fitted, config, run_dir, phase, epochs, learning_rate, train_ds, val_ds, steps, class_weight,
                      report, callbacks, rows_before=rows)
            checkpoint.kill_point(f"{phase} fitted")
            checkpoint.commit_phase(run_dir, phase, model, train_ds)
        rows = checkpoint.history_rows(run_dir, phase, rows)
        runs.set_status(run_dir, "running", phases_done=[p for p, _, _ in phases if checkpoint.is_finished(run_dir, p)])
    save_model(model, run_dir / "model.keras")
    checkpoint.kill_point("saved")
    # model.keras is the saving phase's commit: a resume never reads the checkpoints again.
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return model


def cached_datasets(model, boundary, images, labels, augment, config, run_dir, report):
    """Run the frozen stages once per augmented view and train the rest on
    those activations: the frozen stages hold most of ResNet-50's compute, and
    they give the same output every epoch for the same input (BatchNorm in
    inference mode, no dropout). Returns the trainable top model and the
    train/validation batches of activations."""
    frozen, top = split_at(model, boundary)
    started = time.monotonic()
    runs.set_status(run_dir, "running", phase=f"caching {boundary} activations")
    train_x = activations(frozen, images["train"], config.batch_size, augment, views=CACHED_VIEWS)
    train_y = np.tile(labels["train"], CACHED_VIEWS)
    checkpoint.kill_point("caching")
    val_x = activations(frozen, images["val"], config.batch_size)
    report(f"cached {boundary} activations for {CACHED_VIEWS} augmented views "
           f"({train_x.nbytes / 2**20:.0f} MB) in {time.monotonic() - started:.0f} s")

    train_batches = ActivationBatches(train_x, train_y, config.batch_size, epoch_size=len(labels["train"]),
                                      seed=config.seed, class_weight=balanced_class_weights(labels["train"]))
    val_batches = ActivationBatches(val_x, labels["val"], config.batch_size)
    return top, train_batches, val_batches


def activations(frozen: keras.Model, images: np.ndarray, batch_size: int, augment=None, views: int = 1) -> np.ndarray:
    """Frozen-stage outputs of `views` passes over the images (augmented when
    `augment` is given), as float16 to halve the memory, written into one
    array allocated up front."""
    out = None
    for view in range(views):
        for start in range(0, len(images), batch_size):
            batch = tf.convert_to_tensor(images[start:start + batch_size], "float32")
            if augment is not None:
                batch = augment(batch, training=True)
            result = np.asarray(frozen(batch, training=False), dtype="float16")
            if out is None:
                out = np.empty((views * len(images), *result.shape[1:]), dtype="float16")
            offset = view * len(images) + start
            out[offset:offset + len(result)] = result
    return out


class ActivationBatches(keras.utils.PyDataset):
    """Batches of cached activations with one-hot labels (and class weights).

    For training, each epoch draws as many samples as there are training
    images, at random from all views, so each epoch mixes augmentations.
    Indexing the array avoids the copies a tf.data shuffle buffer would make."""

    def __init__(self, x, y, batch_size, epoch_size=None, seed=None, class_weight=None):
        super().__init__()
        self.x, self.y, self.batch_size = x, np.asarray(y), batch_size
        self.epoch_size = epoch_size or len(x)
        self.rng = np.random.default_rng(seed) if epoch_size else None
        self.class_weight = class_weight
        self.on_epoch_end()

    def __len__(self):
        return int(np.ceil(self.epoch_size / self.batch_size))

    def __getitem__(self, i):
        rows = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        labels = self.y[rows]
        batch = (self.x[rows].astype("float32"), np.eye(2, dtype="float32")[labels])
        if self.class_weight:
            batch += (np.array([self.class_weight[c] for c in labels], dtype="float32"),)
        return batch

    def on_epoch_end(self):
        if self.rng is None:
            self.order = np.arange(len(self.x))
        else:
            self.order = self.rng.permutation(len(self.x))[:self.epoch_size]


def save_model(model: keras.Model, path: Path) -> None:
    """Save then rename, so a crash never leaves a truncated model.keras."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    tmp.replace(path)


def resume(run_dir: Path, report=print) -> Path:
    """Continue an interrupted, failed or cancelled run where it stopped."""
    run_dir = Path(run_dir)
    state = runs.read_status(run_dir).get("state")
    if state in ("running", "completed"):
        raise ValueError(f"run {run_dir.name} is {state}: nothing to resume")
    (run_dir / "cancel").unlink(missing_ok=True)
    config = TrainConfig.from_dict(runs.read_json(run_dir / "config.json", {}), starting=True)
    report(f"resuming {run_dir.name}: {checkpoint.describe(run_dir)} committed")
    if config.strategy == "multiworker":
        # The other workers' backups lived in scratch folders that are gone.
        raise ValueError(f"run {run_dir.name} trained on several machines: start it again instead of resuming")
    return train(config, run_dir=run_dir, report=report)
