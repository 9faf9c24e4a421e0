"""The images of a run: one rule, for training and for anything that must
see a run's images again (the out-of-distribution reference, scan decisions)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.data import splits
from core.runs import checks
from core.data import datasets
from core.runs.train_config import TrainConfig


def run_index(config: TrainConfig) -> pd.DataFrame:
    """The images a run trains, validates and tests on, with their splits:
    its training sources indexed, regrouped into its cross-validation fold,
    sampled down for a smoke run. The one rule, for training and for
    anything that must see the run's images again (core.inference.ood)."""
    index = datasets.index_dataset(config.training_sources(), positive_class=config.positive_class,
                               seed=config.seed, use_official_splits=config.use_official_splits)
    if config.cv_folds:
        index = splits.cross_validation_split(index, config.cv_folds, config.cv_fold, config.seed)
    return select_images(index, config)


def select_images(index: pd.DataFrame, config: TrainConfig) -> pd.DataFrame:
    """The rows used by a run: all, or a class-balanced sample per split."""
    if not config.max_images_per_split:
        return index
    per_class = max(1, config.max_images_per_split // 2)
    shuffled = index.sample(frac=1.0, random_state=config.seed)
    return shuffled.groupby(["split", "y"]).head(per_class).sort_values("relpath").reset_index(drop=True)


def run_index_of(run_dir) -> pd.DataFrame:
    """run_index of the run stored in `run_dir`, from its config.json."""
    return run_index(TrainConfig.from_dict(checks.read_valid(Path(run_dir) / "config.json") or {}))


def run_images(run_dir, wanted) -> dict:
    """{split: list of image paths} of the `wanted` splits of the run in `run_dir`."""
    index = run_index_of(run_dir)
    return {split: index[index.split == split].path.tolist() for split in wanted}
