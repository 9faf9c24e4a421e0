"""Evaluate's site check of the external sets: does each set's scans differ
from the model's validation scans (core.inference.external_site_check)?
The verdicts are read from the run's folder; a set without one gets it on
request (a button), stored there, so a rerun of the page computes nothing."""
from __future__ import annotations

import streamlit as st

from core.inference import external, external_site_check
from ui.formatting import plain
from ui.sites import VERDICT_SHOWN


def external_site_checks(run: dict) -> None:
    """The stored verdict of each complete external set; a button checks those without one."""
    names = [found["name"] for found in external.list_external(run["path"]) if found["state"] == "completed"]
    if not names:
        return
    st.markdown("**Site check of the external sets** (no labels used): do their scans differ from the scans "
                "this model was validated on?")
    for name in names:
        result = external_site_check.stored_check(run["path"], name)
        if result is None:
            continue
        show, icon = VERDICT_SHOWN.get(result["verdict"], (st.info, ":material/info:"))
        show(f"**{name}**: {plain(result['message'])}", icon=icon)
    missing = external_site_check.missing_checks(run["path"], names)
    if missing and st.button(f"Check {', '.join(missing)} against the validation scans", key="external_site_check",
                             icon=":material/compare:"):
        _compute(run, missing)


def _compute(run: dict, names: list[str]) -> None:
    from ui.model import predictor  # TensorFlow: only when a check is computed

    for name in names:
        try:
            with st.spinner(f"Site check of {name}: scoring its slices and comparing…"):
                external_site_check.check_external(run["path"], name, predictor=predictor(run))
        except (ValueError, OSError) as error:  # its folder moved, or holds nothing readable
            st.error(f"Cannot check {name}: {plain(str(error))}")
            return
    st.rerun()
