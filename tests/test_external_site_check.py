"""Evaluate's site check of the external sets (core.inference.external_site_check,
ui.external_site_check): none until asked for; once computed, stored with the
set, shown on every rerun without computing again; stale when the set is
evaluated again."""
import os
import shutil

import pytest
from test_app import assert_no_exception, open_page, texts

from core.base import paths
from core.inference import external, external_site_check
from ui import navigation

SY575 = paths.SHARED / "data" / "external" / "SY575-COVID19-CT"
NAME = "SY575-COVID19-CT"


def test_evaluate_checks_an_external_set_once_and_shows_the_stored_verdict(trained_run, tmp_path, monkeypatch):
    if not SY575.is_dir():
        pytest.skip("external set not found")
    run_dir = tmp_path / "artifacts" / "runs" / trained_run.name
    shutil.copytree(trained_run, run_dir)
    monkeypatch.setenv("COVIDCT_ARTIFACTS", str(tmp_path / "artifacts"))
    external.evaluate_on(run_dir, SY575, n_boot=50, report=lambda line: None)
    assert external_site_check.stored_check(run_dir, NAME) is None

    at = open_page(navigation.EVALUATE)
    assert_no_exception(at)
    (check,) = [b for b in at.button if b.label == f"Check {NAME} against the validation scans"]
    at = check.click().run()
    assert_no_exception(at)
    stored = run_dir / "external" / NAME / external_site_check.CHECK_FILE
    result = external_site_check.stored_check(run_dir, NAME)
    assert result["site"]["slices"] == 48 and result["site"]["patients"] == 4 and result["set"] == NAME
    shown = texts(at.error) + texts(at.success) + texts(at.info)
    assert f"**{NAME}**: {result['message'][:20]}" in shown, shown

    written = stored.stat().st_mtime_ns
    at = open_page(navigation.EVALUATE)  # a new session: read, not computed
    assert_no_exception(at)
    assert f"**{NAME}**: " in texts(at.error) + texts(at.success) + texts(at.info)
    assert not [b for b in at.button if b.label.startswith("Check ")]
    assert stored.stat().st_mtime_ns == written

    metrics = run_dir / "external" / NAME / "metrics.json"
    os.utime(metrics, ns=(written + 10**9, written + 10**9))  # evaluated again after the check
    assert external_site_check.stored_check(run_dir, NAME) is None
    assert external_site_check.missing_checks(run_dir, [NAME]) == [NAME]
