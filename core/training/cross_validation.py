"""Scoring a recipe on more than one validation split: k-fold
cross-validation over train + val, leave-one-source-out, and the table that
compares cross-validated recipes fold by fold."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from core.data import datasets
from core.runs.dataset import run_index
from core.runs.train_config import TrainConfig
from core.training.fit import train


def cross_validate(config: TrainConfig, name: str | None = None, report=print, runs_root=None) -> list[Path]:
    """One run per fold of config.cv_folds (at least 2), each validating on
    its own fold of train + val; returns their folders, to be scored with
    folds.cross_validation_summary. A failed fold stops the rest (the
    finished folds stay as runs)."""
    if config.cv_folds < 2:
        raise ValueError(f"cross-validation needs cv_folds of at least 2, got {config.cv_folds}")
    run_dirs = []
    for fold in range(config.cv_folds):
        report(f"fold {fold + 1} of {config.cv_folds}")
        run_dirs.append(train(dataclasses.replace(config, cv_fold=fold), name=f"{name or 'cv'}-fold{fold + 1}",
                              report=report, runs_root=runs_root))
    return run_dirs


@dataclasses.dataclass(frozen=True)
class SourceLeftOut:
    """One fold of leave-one-source-out: the run trained without `source`,
    or why the other sources could not train one."""
    source: str
    run_dir: Path | None
    refused: str = ""


def leave_one_source_out(config: TrainConfig, name: str | None = None, report=print,
                         runs_root=None) -> list[SourceLeftOut]:
    """One run per source of config.data_dir (at least two), each trained on
    the other sources and evaluated on the one left out (stored as that
    run's external set). Tells how the recipe travels to a source it never
    saw. A fold whose other sources cannot be split into train, validation
    and test (a few external patients alone) is refused with the reason and
    the others go on; a fold that fails while training stops the rest."""
    sources = datasets.source_dirs(config.data_dir)
    if len(sources) < 2:
        raise ValueError(f"leave-one-source-out needs at least two dataset folders in data_dir (separated by "
                         f"{os.pathsep!r}), got {config.data_dir}")
    folds = []
    for folder in sources:
        source = datasets.source_name(folder)
        held_out = dataclasses.replace(config, holdout_source=source).validate()
        try:
            run_index(held_out)  # the images it would train on: refused here, before a run folder exists
        except ValueError as error:
            report(f"leaving out {source}: the other sources cannot train a run: {error}")
            folds.append(SourceLeftOut(source, None, str(error)))
            continue
        report(f"leaving out {source}")
        folds.append(SourceLeftOut(source, train(held_out, name=f"{name or 'loso'}-without-{source}",
                                                 report=report, runs_root=runs_root)))
    return folds
