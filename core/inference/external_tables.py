"""External validation side by side with the run's internal test split, as
the app's Evaluate page shows it (core.inference.external stores the sets)."""
from __future__ import annotations

import pandas as pd


SHOWN = {"roc_auc": "ROC-AUC", "recall": "sensitivity", "specificity": "specificity", "accuracy": "accuracy",
         "f1": "F1"}


def summary_table(internal: dict, sets: dict) -> pd.DataFrame:
    """One row for the run's internal test split and one per external set and
    level (slices, patients): n, ROC-AUC with its CI, sensitivity,
    specificity, accuracy and F1 at the run's threshold. `internal` is the
    run's metrics.json, `sets` {name: external metrics.json}."""
    levels = [("internal test", "slices", (internal.get("test") or {}).get("at_threshold"),
               _test_cases(internal), None)]
    for name, found in sets.items():
        levels.append((name, "slices", found["slice"]["at_threshold"], found["slice"]["n"],
                       found["slice"].get("ci_note")))
        if found.get("patient"):
            levels.append((name, "patients", found["patient"]["at_threshold"], found["patient"]["n"],
                           found["patient"].get("ci_note")))
    rows = []
    for name, level, at, n, note in levels:
        if not at:
            continue
        low, high = at["ci"]["roc_auc"]
        rows.append({"set": name, "level": level, "n": n,
                     **{label: at[key] for key, label in SHOWN.items()},
                     "ROC-AUC 95% CI": note or ("–" if low is None else f"{low:.3f} – {high:.3f}")})
    return pd.DataFrame(rows)


def _test_cases(internal: dict) -> int | None:
    """Test cases behind a run's metrics.json (from its confusion counts)."""
    at = (internal.get("test") or {}).get("at_threshold") or {}
    return sum(at.get(k, 0) for k in ("tn", "fp", "fn", "tp")) or None


def comparison_table(internal: dict, found: dict) -> pd.DataFrame:
    """Metrics (rows) of the internal test split beside one external set's
    slices and patients (columns), at the run's threshold."""
    columns = {"internal test": (internal.get("test") or {}).get("at_threshold") or {},
               "external slices": found["slice"]["at_threshold"],
               "external patients": (found.get("patient") or {}).get("at_threshold") or {}}
    names = {**SHOWN, "precision": "precision", "pr_auc": "PR-AUC"}
    return pd.DataFrame({column: [at.get(key) for key in names] for column, at in columns.items() if at},
                        index=list(names.values()), dtype=float)
