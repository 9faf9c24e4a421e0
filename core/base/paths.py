"""Where data, weights and runs live, with defaults that find ../shared.

Each default can be overridden by an environment variable, so the app, the CLI
and the tests agree on one place without configuration files.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from core.base.ranges import NOT_NEGATIVE, from_environment

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # core/base/paths.py -> the repository
SHARED = PROJECT_ROOT.parent / "shared"


def data_dir() -> Path:
    """The CT dataset folder ($COVIDCT_DATA, else ../shared/data/COVID-CT)."""
    return Path(os.environ.get("COVIDCT_DATA", SHARED / "data" / "COVID-CT"))


def weights_path() -> str:
    """ImageNet weights for ResNet-50 ($COVIDCT_WEIGHTS, else the ../shared
    file when present, else "imagenet" so Keras downloads them)."""
    if os.environ.get("COVIDCT_WEIGHTS"):
        return os.environ["COVIDCT_WEIGHTS"]
    local = SHARED / "weights" / "resnet50_imagenet.weights.h5"
    return str(local) if local.exists() else "imagenet"


# The labelled sets from other hospitals that every recipe comparison reports (core.inference.panel).
PANEL_SETS = ("SY575-COVID19-CT", "COVID-CT-MD-sample")


def panel_dirs() -> list[Path]:
    """The external panel's folders: $COVIDCT_PANEL (folders joined with the
    path separator), else PANEL_SETS under ../shared/data/external."""
    given = os.environ.get("COVIDCT_PANEL", "")
    if given.strip():
        return [Path(part).expanduser() for part in given.split(os.pathsep) if part.strip()]
    return [SHARED / "data" / "external" / name for name in PANEL_SETS]


def artifacts_dir() -> Path:
    """Root of runs and models ($COVIDCT_ARTIFACTS, else ./artifacts)."""
    return Path(os.environ.get("COVIDCT_ARTIFACTS", PROJECT_ROOT / "artifacts"))


def runs_dir() -> Path:
    return artifacts_dir() / "runs"


def cases_dir() -> Path:
    """The case log: one JSON file per prediction made in the app or the CLI
    (core.inference.case_log): $COVIDCT_CASES, else the artifacts folder's cases/."""
    return Path(os.environ.get("COVIDCT_CASES", artifacts_dir() / "cases"))


def keep_case_images() -> bool:
    """Whether the case log keeps each input's bytes beside its record
    ($COVIDCT_KEEP_IMAGES=1; default off: only a digest of the input is kept)."""
    return os.environ.get("COVIDCT_KEEP_IMAGES", "").strip().lower() in ("1", "true", "yes", "on")


def studies_dir() -> Path:
    """Hyperparameter searches: one Optuna SQLite file (and a worker log) per study."""
    return artifacts_dir() / "studies"


def default_config_path() -> Path:
    """The training defaults promoted from a search (core.training.studies.promote_best)."""
    return artifacts_dir() / "default_config.json"


def weights_cache_dir() -> Path:
    """Weights converted on first use, such as the CT ResNet-152's
    ($COVIDCT_WEIGHTS_CACHE, else the artifacts folder's weights/)."""
    return Path(os.environ.get("COVIDCT_WEIGHTS_CACHE", artifacts_dir() / "weights"))


FROZEN_CACHE_GB = 16  # default budget of a run's frozen-stage cache on disk


def frozen_cache_budget(folder) -> int:
    """Bytes a run may use for its frozen-stage cache (core.training.frozen_cache):
    $COVIDCT_FROZEN_CACHE_GB (default FROZEN_CACHE_GB), and never more than
    half the free space of the disk holding `folder`."""
    gigabytes = from_environment("COVIDCT_FROZEN_CACHE_GB", FROZEN_CACHE_GB, NOT_NEGATIVE)
    return int(min(gigabytes * 1e9, shutil.disk_usage(folder).free / 2))
