"""Evaluate's table of a run's test metrics at the validation-chosen
threshold, with 95% bootstrap CIs, per slice and, where the dataset knows
the patients, per patient (each decided as Predict decides a whole scan)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.evaluation import patient_level, tables
from ui.formatting import fmt

NAMES = {"accuracy": "Accuracy", "precision": "Precision (PPV)", "recall": "Sensitivity (recall)",
         "specificity": "Specificity", "f1": "F1", "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC (average precision)"}


def _with_ci(table: pd.DataFrame) -> list[str]:
    """Each row's confidence interval as one text, "low – high"."""
    return [f"{fmt(low)} – {fmt(high)}" for low, high in zip(table["ci_low"], table["ci_high"])]


def metrics_table(run: dict, scan_settings: dict) -> None:
    """The table and how its figures were made; scan_settings (ui.scans.settings)
    hold the per-patient metrics, when known, and how patients were decided."""
    table = tables.metrics_table(run["metrics"]).rename(index=NAMES)
    table.insert(1, "95% CI", _with_ci(table))
    per_patient = scan_settings.get("test_patients")
    if per_patient:  # patients known from the dataset's metadata: the same metrics per patient
        patients = tables.metrics_table({"test": {"at_threshold": per_patient}}).rename(index=NAMES)
        table["per patient"], table["per patient 95% CI"] = patients["value"], _with_ci(patients)
    st.subheader("Test metrics")
    st.dataframe(table, column_config={"value": st.column_config.NumberColumn("per slice", format="%.3f"),
                                       "95% CI": "per slice 95% CI", "ci_low": None, "ci_high": None,
                                       "per patient": st.column_config.NumberColumn(format="%.3f")})
    st.caption("Per slice: at the validation-chosen threshold; CIs: percentile bootstrap over the test images."
               + (f" Per patient: the {per_patient['n']} test patients, each scored by the "
                  f"{patient_level.AGGREGATIONS[scan_settings['aggregation']]}, decided at the scan threshold "
                  f"{scan_settings['threshold']:.3f} chosen on the {scan_settings['val_patients']} validation "
                  "patients (as Predict decides a whole scan); CIs resample patients." if per_patient else ""))
