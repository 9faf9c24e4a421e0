"""Lung focus (core.inference.heatmaps, core.inference.lung_focus): a map
whose evidence is known to lie inside or outside the lung mask is measured
so, and a run's focus is computed, stored and printed."""
import shutil

import numpy as np
import pytest

from core.base import files
from core.cli.main import main
from core.inference import heatmaps, lung_focus
from core.runs import storage


def test_evidence_inside_or_outside_the_mask_is_measured_as_such():
    mask = np.zeros((100, 100), bool)
    mask[20:60, 10:50] = True  # 16% of the slice
    inside = np.zeros((10, 10), np.float32)
    inside[3:5, 2:4] = 1.0  # the map is at the model's input size: resized onto the mask
    found = heatmaps.lung_focus(inside, mask)
    assert found["in_lungs"] > 0.9 and found["peak_in_lungs"] and found["lung_share"] == pytest.approx(0.16)
    assert found["ratio"] == pytest.approx(found["in_lungs"] / 0.16) and heatmaps.evidence_note(found) is None
    outside = np.zeros((10, 10), np.float32)
    outside[8:10, 7:10] = 1.0
    found = heatmaps.lung_focus(outside, mask)
    assert found["in_lungs"] < 0.1 and not found["peak_in_lungs"]
    assert heatmaps.evidence_note(found) == heatmaps.OUTSIDE_NOTE
    even = heatmaps.lung_focus(np.ones((10, 10), np.float32), mask)
    assert even["ratio"] == pytest.approx(1.0, abs=0.02)  # an even map: no focus on the lungs
    assert heatmaps.lung_focus(inside, np.zeros((100, 100), bool)) is None  # no lungs found


def test_a_runs_lung_focus_is_stored_and_printed(trained_run, tmp_path, capsys):
    run_dir = tmp_path / trained_run.name
    shutil.copytree(trained_run, run_dir)
    assert main(["lung-focus", "--run", str(run_dir), "--limit", "2"]) == 0
    stored = files.read_json(run_dir / lung_focus.FILE)
    assert "test" in stored and set(stored["test"]) == set(lung_focus.METHODS)
    for summary in (s for methods in stored.values() for s in methods.values()):
        assert summary["asked"] == 2 and 0 <= summary["slices"] <= 2
        if summary["slices"]:
            assert 0 <= summary["in_lungs"] <= 1 and 0 < summary["lung_share"] < 1
    out = capsys.readouterr().out
    assert "in_lungs" in out and "gradcam++" in out
    assert main(["lung-focus", "--run", str(run_dir), "--limit", "0"]) == 2


def test_the_lung_outline_is_drawn_on_the_mask_edge_only():
    image = np.zeros((100, 100, 3), np.uint8)
    mask = np.zeros((100, 100), bool)
    mask[20:60, 10:50] = True
    outlined = heatmaps.with_lung_outline(image, mask)
    changed = outlined.any(axis=2)
    assert changed[20, 30] and changed[40, 10]  # on the edge
    assert not changed[40, 30] and not changed[80, 80]  # not inside, not outside
    assert not image.any()  # the input is left as it was


def test_every_run_stores_its_test_splits_lung_focus_when_it_ends(trained_run):
    stored = lung_focus.read(trained_run)
    assert set(stored) == {"test"} and set(stored["test"]) == {"gradcam"}  # no panel, one method: cheap
    tested = (storage.read_predictions(trained_run)["split"] == "test").sum()
    assert stored["test"]["gradcam"]["asked"] == min(tested, lung_focus.AFTER_TRAINING_SLICES)
    assert lung_focus.stored_ratio(trained_run) == stored["test"]["gradcam"].get("ratio")
    assert lung_focus.stored_ratio(trained_run, "SY575-COVID19-CT") is None


def test_a_limited_set_is_spread_over_both_ends():
    listed = list(range(10))  # a split listed class by class: the first few would be one class only
    assert lung_focus.spread(listed, 4) == [0, 3, 6, 9]
    assert lung_focus.spread(listed, None) == listed and lung_focus.spread(listed, 20) == listed
