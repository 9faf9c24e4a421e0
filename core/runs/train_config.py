"""A run's settings: TrainConfig, each field with its label, help and allowed
values (the one place the CLI's --help, the Train form, the search space and
validation read them from), and the defaults a search may have promoted."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from core.data import datasets
from core.evaluation import classification
from core.base import files, machine, paths
from core.base.ranges import NOT_NEGATIVE, Range

# The names a run chooses from; core.models.resnet and core.training.distribute build what they
# name. Kept here, free of TensorFlow, so that the CLI parses its options and
# refuses bad input without the few seconds (and the log lines) of loading it.
IMAGENET_BACKBONES = ("resnet50", "resnet101", "resnet152")  # keras.applications
# The CT-pretrained ResNet-152 v1.5 (core.models.ct_backbone), fed each slice as it is
# or transposed (rows <-> columns): its training volumes may have had rows
# along the patient's left-right axis, and nothing here tells which fits.
CT_BACKBONES = {"ct-resnet152": False, "ct-resnet152-transposed": True}
BACKBONES = (*IMAGENET_BACKBONES, *CT_BACKBONES)
# Where fine-tuning may start: "head" trains the new head only, "conv4" trains
# conv4_*, conv5_* and the head, and so on down to "conv1" (everything).
TRAIN_FROM = ("head", "conv5", "conv4", "conv3", "conv2", "conv1")
STRATEGIES = ("default", "mirrored", "multiworker")  # core.training.distribute

# Settings measured and not kept (docs/experiments.md), with the value every run
# now trains with: an old run's config.json naming them still loads.
RETIRED = {"precision": "float32", "optimizer": "adam", "train_batchnorm": False, "cache_frozen": True,
           "cached_views": 4, "label_smoothing": 0.0, "mixup": 0.0, "class_weights": True,
           "fill_mode": "reflect", "blur": 0.0, "ema": 0.0, "rotate_zoom_tta": False, "n_boot": classification.N_BOOT,
           "cpu_devices": 0}
# Settings whose default changed after runs had been saved without them (they did not exist yet),
# with the value those runs trained with: an old config.json that lacks one means this, not today's default.
BEFORE_THEY_EXISTED = {"evidence_penalty": 0.0}


def setting(label: str, help: str, choices=None, allowed: Range | None = None, step: float | None = None,
            search=None) -> dict:
    """A TrainConfig field's metadata: its name on the form, one line of help,
    its choices or Range, the form's step for a number, and its default
    search space (core.training.tune): a list of choices or {"low", "high", "log"}."""
    found = {"label": label, "help": help, "choices": tuple(choices) if choices else None, "range": allowed,
             "step": step, "search": search}
    return {key: value for key, value in found.items() if value is not None}


FRACTION = Range(0, 1, open_high=True)
LEARNING_RATE = Range(0, 1, open_low=True, open_high=True)


@dataclass
class TrainConfig:
    """Every hyperparameter of a run; saved as the run's config.json."""
    data_dir: str = field(default_factory=lambda: str(paths.data_dir()), metadata=setting(
        "Dataset folder(s)", "Folder with one sub-folder per class (and splits/, meta/); several sources "
        f"(hospitals, collections) joined with '{os.pathsep}'."))
    holdout_source: str = field(default="", metadata=setting(
        "Source left out (evaluated on)", "Leave-one-source-out: train on the other sources and evaluate on "
        "this one (its folder's name) as an external set; empty: train on all."))
    positive_class: str = field(default="COVID", metadata=setting(
        "Class predicted as positive", "The class folder predicted as positive."))
    use_official_splits: bool = field(default=True, metadata=setting(
        "Use the dataset's own train/val/test lists",
        "Use the split lists in splits/; off: split by patient, stratified by class."))
    seed: int = field(default=0, metadata=setting(
        "Random seed", "Same seed, same settings, same data: the same run again.",
        allowed=Range(0, 2**32 - 1)))  # what numpy and scikit-learn take as a seed
    max_images_per_split: int = field(default=0, metadata=setting(
        "Images per split (0 = all)", "0 = all images; a small number for a quick smoke run.",
        allowed=NOT_NEGATIVE))
    cv_folds: int = field(default=0, metadata=setting(
        "Cross-validation folds (0 = off)", "Regroup train + val into this many folds of whole patients "
        "(0 = off, else 2 to 20); `python -m core cv` trains every fold and scores them together.",
        allowed=Range(0, 20)))
    cv_fold: int = field(default=0, metadata=setting(
        "Validation fold", "The fold (from 0) this run validates on.", allowed=Range(0, 19)))
    backbone: str = field(default="resnet50", metadata=setting(
        "Network", "resnet50/101/152: ImageNet-pretrained. ct-resnet152: pretrained on CT volumes "
        "(docs/ct_backbone.md), -transposed: fed rows as columns.", choices=BACKBONES,
        # The CT ResNet-152 costs 3x ResNet-50's compute per image: searched when asked for (--backbones).
        search=list(IMAGENET_BACKBONES)))
    weights: str | None = field(default_factory=paths.weights_path, metadata=setting(
        "Starting weights file", "ImageNet weights file for the ImageNet ResNets (the CT ResNet loads its "
        "own); empty = random initialisation."))
    start_from_run: str = field(default="", metadata=setting(
        "Start from a trained run", "Fine-tune this run's model (a run id or folder) instead of the pretrained "
        "backbone, as site adaptation does; its network and input must be this config's. Empty: the pretrained "
        "weights."))
    # 224, not 160: 160 px tied under 5-fold CV but lost on the official validation split over 3 seeds
    # (docs/choosing-a-recipe.md); Home's first model trains at 160 px (core.training.presets.FAST_CHANGES).
    input_size: int = field(default=224, metadata=setting(
        "Image size (px)", "Images are resized to this square size (pixels).", allowed=Range(32, 1024),
        search=[160, 224, 288]))
    lung_crop: bool = field(default=False, metadata=setting(
        "Crop to the lung fields", "Crop each slice to its lung fields (core.data.lung) before resizing, in "
        "training, evaluation, prediction and Grad-CAM alike."))
    lung_mask: bool = field(default=False, metadata=setting(
        "Blank outside the lung fields", "Set everything outside the (slightly widened) lung fields to black "
        "(core.data.lung.mask_outside_lungs), in training, evaluation, prediction and Grad-CAM alike: what "
        "lies outside the lungs (captions, borders, the table) cannot be learnt. A slice whose lungs are not "
        "found is left whole."))
    evidence_penalty: float = field(default=1.0, metadata=setting(
        "Penalty on evidence outside the lungs (weight, 0 = off)", "Adds this weight times the share of each "
        "training slice's Grad-CAM evidence (true class against the other) lying outside its widened lung "
        "fields to the loss (core.training.evidence_penalty), so the model learns from the lungs, not captions "
        "and borders, while still seeing the whole slice; training only.", allowed=Range(0, 100), step=0.5))
    batch_size: int = field(default=32, metadata=setting(
        "Slices per training step", "More slices per step: faster epochs, more memory (per replica).",
        allowed=Range(1, 1024), search=[16, 32, 64]))
    dropout: float = field(default=0.3, metadata=setting(
        "Dropout before the classifier", "Share of features dropped at random while training, against "
        "over-fitting.", allowed=FRACTION, step=0.05, search={"low": 0.0, "high": 0.6, "log": False}))
    head_epochs: int = field(default=5, metadata=setting(
        "Epochs training the classifier only", "Phase 1: the new head on a frozen backbone.",
        allowed=NOT_NEGATIVE))
    head_lr: float = field(default=1e-3, metadata=setting(
        "Learning rate, classifier only", "Step size while the new classifier trains on the frozen network.",
        allowed=LEARNING_RATE, step=1e-4, search={"low": 1e-4, "high": 1e-2, "log": True}))
    finetune_epochs: int = field(default=20, metadata=setting(
        "Epochs fine-tuning (at most)", "Phase 2: the unfrozen stages at the lower learning rate.",
        allowed=NOT_NEGATIVE))
    finetune_lr: float = field(default=5e-5, metadata=setting(
        "Learning rate, fine-tuning", "Step size while the unfrozen stages fine-tune: small, so ImageNet "
        "features are kept.", allowed=LEARNING_RATE, step=1e-5, search={"low": 5e-6, "high": 2e-4, "log": True}))
    train_from: str = field(default="conv3", metadata=setting(
        "Fine-tune from stage", "Fine-tuning trains the ResNet stages from this one up ('head': the head "
        "only); the frozen stages' outputs are computed once and cached.", choices=TRAIN_FROM,
        search=["conv3", "conv4", "conv5"]))
    rotation: float = field(default=10.0, metadata=setting(
        "Random rotation (± degrees)", "Random rotation, ± degrees (0 = off).", allowed=Range(0, 180), step=1.0))
    zoom: float = field(default=0.1, metadata=setting(
        "Random zoom (± fraction)", "Random zoom, ± fraction (0 = off).", allowed=FRACTION, step=0.05))
    contrast: float = field(default=0.1, metadata=setting(
        "Random contrast (± fraction)", "Random contrast, ± fraction (0 = off).", allowed=FRACTION, step=0.05))
    flip: bool = field(default=True, metadata=setting("Random left-right flip", "Random horizontal flip."))
    intensity_jitter: float = field(default=0.0, metadata=setting(
        "Random window, gamma, blur and JPEG (strength, 0 = off)", "Each training slice gets its own window, "
        "gamma, blur and JPEG quality, up to this strength (core.training.pipeline.RandomIntensity), as other "
        "hospitals' scans come in other windows and compressions; never on evaluation or prediction.",
        allowed=Range(0, 1), step=0.1))
    early_stopping_patience: int = field(default=5, metadata=setting(
        "Stop after this many epochs without progress",
        "Fine-tuning stops after this many epochs without a better validation AUC.", allowed=NOT_NEGATIVE))
    lr_patience: int = field(default=2, metadata=setting(
        "Halve the learning rate after this many epochs without progress",
        "Halve the learning rate after this many epochs without a better validation AUC.", allowed=NOT_NEGATIVE))
    flip_tta: bool = field(default=True, metadata=setting(
        "Also predict on the mirrored slice",
        "Average each prediction with that of the mirrored slice (test-time augmentation)."))
    threshold_method: str = field(default=classification.THRESHOLD_RULE, metadata=setting(
        "Threshold rule", "How the operating threshold is chosen on validation: Youden's J or best F1.",
        choices=classification.THRESHOLD_RULES))
    strategy: str = field(default="default", metadata=setting(
        "Devices", "default: one device; mirrored: every local GPU (or the CPU split by COVIDCT_CPU_DEVICES); "
        "multiworker: several machines, from TF_CONFIG. Batch size and learning rates are per replica.",
        choices=STRATEGIES))

    @classmethod
    def from_dict(cls, values: dict, starting: bool = False) -> "TrainConfig":
        """The config of saved `values`. Retired settings are left out; one
        set to another value than every run now trains with is refused when
        `starting` a run (new or resumed), as that run would not train as asked.
        A setting of BEFORE_THEY_EXISTED that `values` lack takes the value
        runs trained with before it existed."""
        if not isinstance(values, dict):
            raise ValueError(f"a config is a JSON object of settings, not {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - set(RETIRED))
        if unknown:
            raise ValueError(f"unknown config setting(s): {', '.join(unknown)}")
        changed = [f"{name}={values[name]!r}" for name in RETIRED if name in values and values[name] != RETIRED[name]]
        if starting and changed:
            raise ValueError(f"retired setting(s) {', '.join(changed)}: see docs/experiments.md for what they "
                             "did and the commit that still has them")
        values = {**BEFORE_THEY_EXISTED, **values}
        return cls(**{name: value for name, value in values.items() if name in known})

    def problems(self, here: bool = True) -> list[str]:
        """Every impossible value, so a bad config is refused before any work;
        `here`: also what this machine lacks (its data folders, devices, cluster)."""
        found = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "choices" in f.metadata and value not in f.metadata["choices"]:
                found.append(f"{f.name} {value!r} is not one of {', '.join(f.metadata['choices'])}")
            elif "range" in f.metadata and value not in f.metadata["range"]:
                found.append(f"{f.name} {value} must be {f.metadata['range']}")
        if self.cv_folds and not 2 <= self.cv_folds <= 20:
            found.append(f"cv_folds {self.cv_folds} must be 0 (no cross-validation) or between 2 and 20")
        elif self.cv_folds and not 0 <= self.cv_fold < self.cv_folds:
            found.append(f"cv_fold {self.cv_fold} must be between 0 and cv_folds - 1 ({self.cv_folds - 1})")
        if self.head_epochs + self.finetune_epochs == 0:
            found.append("head_epochs + finetune_epochs must be at least 1")
        if here:
            found += machine.machine_problems(self.strategy) + self._data_problems() + self._start_problems()
        return found

    def start_run_dir(self) -> Path | None:
        """The folder of start_from_run: a run folder's path, or a run id under the runs folder."""
        if not self.start_from_run:
            return None
        given = Path(self.start_from_run).expanduser()
        return given if (given / "config.json").is_file() else paths.runs_dir() / files.check_name(
            self.start_from_run, "run id")

    def _start_problems(self) -> list[str]:
        """A run to start from must have a model of this config's network and input."""
        try:
            folder = self.start_run_dir()
        except ValueError as error:
            return [f"start_from_run: {error}"]
        if folder is None:
            return []
        if not (folder / "model.keras").is_file():
            return [f"start_from_run {self.start_from_run!r}: no model.keras in {folder}"]
        theirs = files.read_json(folder / "config.json", {})
        return [f"start_from_run {self.start_from_run!r}: its {key} is {theirs.get(key)!r}, this config's "
                f"{getattr(self, key)!r}" for key in ("backbone", "input_size", "lung_crop", "lung_mask")
                if theirs.get(key) != getattr(self, key)]

    def _data_problems(self) -> list[str]:
        try:
            folders = datasets.source_dirs(self.data_dir)
        except ValueError as error:
            return [f"data_dir: {error}"]
        found = [f"data_dir {folder}: no such folder" for folder in folders if not folder.is_dir()]
        names = [datasets.source_name(folder) for folder in folders]
        if self.holdout_source and self.holdout_source not in names:
            found.append(f"holdout_source {self.holdout_source!r} is not one of the sources in data_dir "
                         f"({', '.join(names)})")
        elif self.holdout_source and len(names) < 2:
            found.append("holdout_source needs at least two sources in data_dir (separated by "
                         f"{os.pathsep!r})")
        return found

    def training_sources(self) -> list[Path]:
        """The dataset folders a run trains on: data_dir's, less the held-out
        source (datasets.resolve_image finds their files from a relpath)."""
        return [folder for folder in datasets.source_dirs(self.data_dir) if datasets.source_name(folder) != self.holdout_source]

    def held_out_source(self) -> Path | None:
        """The folder of the held-out source (leave-one-source-out), else None."""
        return next((folder for folder in datasets.source_dirs(self.data_dir)
                     if self.holdout_source and datasets.source_name(folder) == self.holdout_source), None)

    def validate(self) -> "TrainConfig":
        found = self.problems()
        if found:
            raise ValueError("invalid config: " + "; ".join(found))
        return self





# What a run's settings say besides its recipe: where its data and weights are, how this machine
# trains it, and which folds and seed it draws. Recipes are compared, grouped and promoted without them.
NOT_RECIPE = ("data_dir", "holdout_source", "weights", "strategy", "cv_folds", "cv_fold", "seed")
# Runs with the same values of these draw the same cross-validation folds (data.splits).
FOLDS_DRAWN_BY = ("data_dir", "holdout_source", "cv_folds", "seed")


def recipe_of(config: dict) -> dict:
    """A run's settings less NOT_RECIPE: what makes it the recipe it is (with BEFORE_THEY_EXISTED's
    values for the settings an older run's config lacks)."""
    return {key: value for key, value in {**BEFORE_THEY_EXISTED, **config}.items() if key not in NOT_RECIPE}


def folds_of(config: dict) -> tuple:
    """What decides a cross-validated run's folds (FOLDS_DRAWN_BY), with TrainConfig's defaults."""
    defaults = dataclasses.asdict(TrainConfig())
    return tuple(config.get(key, defaults[key]) for key in FOLDS_DRAWN_BY)


def recipe_changes(config: dict) -> str:
    """The settings of a run that differ from the project's recipe
    (TrainConfig's defaults, and the values of the retired settings), e.g.
    "train_from=conv2, input_size=160"."""
    defaults = {**RETIRED, **dataclasses.asdict(TrainConfig())}
    changed = [f"{key}={value}" for key, value in recipe_of(config).items()
               if key in defaults and value != defaults[key]]
    return ", ".join(changed) or "project defaults"
