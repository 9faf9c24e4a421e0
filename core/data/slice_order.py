"""The order of a series' slices along the body axis, and the gaps in it:
file names and instance numbers are not slice order (COVID-CT-MD's README
says so), and a partial export leaves slices out."""
from __future__ import annotations

import numpy as np
import pydicom


GAP_FACTOR = 1.5  # a step between neighbouring slices over 1.5x the usual spacing means slices are missing


def slice_order(datasets: list[pydicom.Dataset], names: list[str]):
    """(order, positions in mm or None, notes): by ImagePositionPatient along
    the slice normal (ImageOrientationPatient's row x column), else by
    InstanceNumber, else by file name."""
    try:
        normal = np.cross(*np.reshape(np.asarray(datasets[0].ImageOrientationPatient, float), (2, 3)))
        along = np.array([float(np.dot(np.asarray(d.ImagePositionPatient, float), normal)) for d in datasets])
        if abs(normal[2]) < 0.5:  # a sagittal or coronal series: its slices are not along the body axis
            order, positions, notes = _by_position(along, names)
            return order, positions, notes + ["slices are not axial (a sagittal or coronal series)"]
        return _by_position(along * np.sign(normal[2]), names)  # feet to head
    except (AttributeError, TypeError, ValueError, KeyError):
        pass  # no usable position: fall back on the instance numbers
    try:
        numbers = np.array([int(d.InstanceNumber) for d in datasets])
    except (AttributeError, TypeError, ValueError):
        return list(range(len(datasets))), None, ["no slice position or instance number: slices in file-name order"]
    order = [int(i) for i in np.argsort(numbers, kind="stable")]
    steps = np.diff(numbers[order])
    notes = ["no slice position: slices ordered by InstanceNumber"]
    missing = int(np.sum(np.clip(steps - 1, 0, None))) if len(steps) else 0
    if missing:
        notes.append(f"{missing} instance numbers missing between slices: some slices are not here")
    return order, None, notes


def _by_position(along: np.ndarray, names: list[str]):
    if not np.all(np.isfinite(along)):
        raise ValueError("non-finite slice position")
    order = [int(i) for i in np.argsort(along, kind="stable")]
    positions = [float(along[i]) for i in order]
    return order, positions, gap_notes(positions, [names[i] for i in order])


def gap_notes(positions: list[float], names: list[str]) -> list[str]:
    """Notes on missing slices (a step over GAP_FACTOR x the usual spacing) and on slices at one position."""
    steps = np.diff(positions)
    if len(steps) == 0:
        return []
    notes = []
    repeated = int(np.sum(steps < 1e-3))
    if repeated:
        notes.append(f"{repeated} slices share a position with another")
    spacing = float(np.median(steps[steps >= 1e-3])) if np.any(steps >= 1e-3) else 0.0
    for i in np.flatnonzero(steps > GAP_FACTOR * spacing) if spacing else []:
        notes.append(f"missing slices: a gap of {steps[i]:.1f} mm (about {round(steps[i] / spacing) - 1} "
                     f"slices at {spacing:.1f} mm) between {names[i]} and {names[i + 1]}")
    return notes
