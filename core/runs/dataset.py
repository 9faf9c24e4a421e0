"""The images of a run: one rule, for training and for anything that must
see a run's images again (the out-of-distribution reference, scan decisions)."""
from __future__ import annotations

import pandas as pd

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
        index = datasets.cross_validation_split(index, config.cv_folds, config.cv_fold, config.seed)
    return select_images(index, config)


def select_images(index: pd.DataFrame, config: TrainConfig) -> pd.DataFrame:
    """The rows used by a run: all, or a class-balanced sample per split."""
    if not config.max_images_per_split:
        return index
    per_class = max(1, config.max_images_per_split // 2)
    shuffled = index.sample(frac=1.0, random_state=config.seed)
    return shuffled.groupby(["split", "y"]).head(per_class).sort_values("relpath").reset_index(drop=True)
