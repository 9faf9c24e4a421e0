"""What this machine offers a run, checked without TensorFlow: a sound
COVIDCT_CPU_DEVICES, and TF_CONFIG for a multi-worker cluster. A bad config
is refused before the seconds (and log lines) of loading TensorFlow."""
from __future__ import annotations

import json
import os

from core.base.ranges import Range, from_environment


# Logical CPU devices to split the CPU into (a machine setting, not a recipe's).
CPU_DEVICES_VARIABLE = "COVIDCT_CPU_DEVICES"
CPU_DEVICES = Range(0, 64)  # 1 is refused below: one device is no split


def cpu_devices() -> int:
    """COVIDCT_CPU_DEVICES as a number (0, no split, when unset); ValueError when it is not one."""
    return from_environment(CPU_DEVICES_VARIABLE, 0, CPU_DEVICES, kind=int)


def machine_problems(name: str) -> list[str]:
    """What this machine lacks for the strategy: a sound COVIDCT_CPU_DEVICES,
    and TF_CONFIG for "multiworker" (TrainConfig.problems lists them with the
    others, so a bad config is refused before any work)."""
    found = []
    try:
        devices = cpu_devices()
        if devices == 1:
            found.append(f"{CPU_DEVICES_VARIABLE}={devices} must be 0 (no split) or at least 2")
    except ValueError as error:
        found.append(str(error))
    if name == "multiworker":
        try:
            if not cluster_spec():
                found.append("strategy 'multiworker' needs TF_CONFIG describing the cluster "
                             "(docs/distributed.md)")
        except ValueError as error:
            found.append(str(error))
    return found


def cluster_spec() -> dict:
    """TF_CONFIG as a dict ({} when unset); a malformed value is an error."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return {}
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from error
    if not isinstance(spec, dict) or "cluster" not in spec or "task" not in spec:
        raise ValueError("TF_CONFIG must have 'cluster' and 'task' entries")
    return spec
