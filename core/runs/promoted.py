"""The training defaults a search may have promoted (artifacts/default_config.json,
written by core.training.studies.promote_best): what `python -m core train`
and the Train page start from."""
from __future__ import annotations

from core.base import files, paths
from core.runs.train_config import TrainConfig


def load_default_config() -> TrainConfig:
    """TrainConfig with the promoted defaults when a search's best was
    promoted, else the project's recipe (TrainConfig())."""
    path = paths.default_config_path()
    try:
        saved = files.read_json(path)
        return TrainConfig.from_dict(saved["config"], starting=True) if saved else TrainConfig()
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path}: {error}; correct it, or go back to the project's defaults with "
                         "`python -m core tune --reset-default`") from None


def promoted_from() -> dict | None:
    """Where the promoted defaults come from (study, trial, run, val_roc_auc), None without any."""
    try:
        return (files.read_json(paths.default_config_path()) or {}).get("promoted_from")
    except ValueError:
        return None


def reset_default() -> bool:
    """Back to the project's recipe; False when nothing was promoted."""
    path = paths.default_config_path()
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed
