"""Site check: do a site's scans differ, as a group, from the scans the
model was validated on? No labels needed.

A model's test figures hold for scans like its test scans. The
out-of-distribution guard (core.inference.ood) judges one slice at a time against the
training scans, so a whole hospital whose scanners, protocols or patients
differ a little on every slice passes it, and the model's figures quietly stop
holding there (issue 27, docs/site-adaptation.md). This check looks at the
site's slices together, through the model's own pooled features
(Predictor.features: what its head classifies), against the run's validation
slices (held-out patients of the data it was tested on).

Each patient is one unit: the mean of its slices' unit-length features.
The slices of one patient are near copies of each other: counted one by one,
a site's few patients would look like many, and a site that sends 20 slices
a patient against validation's 2 would differ in its clusters, not its
scans. With patients as units, every cross-validation below is grouped by
patient (one patient's slices never sit on both sides) and every
permutation relabels whole patients.

Decision rule: a classifier two-sample test. A logistic regression learns
"site or validation" from the patients' features (after a PCA that sees no
labels, so it is the same for every permutation) and is scored by its
ROC-AUC on the patients it was not fitted on (stratified K-fold). The
p-value is the share of N_PERMUTATIONS shufflings of the site/validation
labels over the patients whose ROC-AUC reaches the observed one. The scans
are "different" when p < ALPHA and the ROC-AUC is at least MIN_AUC: with
enough patients any difference at all becomes significant, and scans of one
source differ a little between its own splits (docs/site-adaptation.md).
What breaks a model's figures is the shift to another hospital's scanners
and protocols, which a classifier sees in nearly every patient; 0.8 is
where discrimination counts as "excellent" on Hosmer and Lemeshow's scale.
A significant difference below it is reported as slight. It is preferred to MMD (an RBF-kernel
maximum mean discrepancy with the same permutations, reported beside it)
because it asks the question a hospital has, whether NEW patients of the
site can be told from the validation patients, and its size reads plainly:
ROC-AUC 0.5, nothing tells them apart; 1.0, every patient's origin can be
told. MMD's size has no such reading, and its kernel width is a heuristic.

Reported too, not decided on: the guard's refusal rate on the site's slices
(it refuses about 1% of validation slices by design), and the shift of the
predicted probabilities (mean, share decided positive, two-sample KS
statistic): a site that sees more COVID-19 patients shifts these as well,
without any difference in its scans.

Minimum: MIN_SLICES slices of MIN_PATIENTS patients. Cross-validation
must fit on at least two of the site's patients while it holds out a third,
and the features of a patient with a handful of slices are mostly that
handful's. Below it the check says how many more are needed.

Patients are given as groups (one sub-folder per patient for a folder); a
slice without one counts as its own patient, which overstates a difference
when several slices come from one patient, and the result says so.

The reference (validation features, raw probabilities, patients) is built
through the run's model on first use and stored as RUN/site_reference.npz
(atomically), rebuilt when model.keras is newer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from core.inference import ood
from core.inference.predict import Predictor
from core.evaluation.two_sample import N_PERMUTATIONS, classifier_test, mmd_test, patient_means
from core.inference.site_features import reference, score, site_files

ALPHA = 0.05
MIN_AUC = 0.8         # a difference this large (or larger) is one that breaks the model's figures
                      # variance along its direction, so the leading components hold it
MIN_PATIENTS = 3
MIN_SLICES = 20
FEW_PATIENTS = 10     # below it a "similar" verdict says that only a large difference would show


def needed(slices: int, patients: int) -> dict:
    """How many more slices and patients the check needs ({} when none)."""
    more = {"slices": max(0, MIN_SLICES - slices), "patients": max(0, MIN_PATIENTS - patients)}
    return {key: value for key, value in more.items() if value}


def compare_features(site_features, reference_features, site_groups=None, reference_groups=None,
                     n_permutations: int = N_PERMUTATIONS, seed: int = 0) -> dict:
    """The site's features against the reference's, with a patient per slice
    (None: each slice is its own patient). Returns {"verdict": "different",
    "similar" or "too few", "site": {"slices", "patients", "patients_known"},
    "reference": {"slices", "patients"}, "needed" (more slices / patients the
    site needs; {} when enough), "reference_needed", "classifier",
    "mmd" (None below the minimum), "slight" (significant, below MIN_AUC)}."""
    site_features, reference_features = np.asarray(site_features), np.asarray(reference_features)
    patients_known = site_groups is not None
    site_groups = [str(g) for g in site_groups] if patients_known else [f"slice {i}" for i in range(len(site_features))]
    reference_groups = ([str(g) for g in reference_groups] if reference_groups is not None
                        else [f"slice {i}" for i in range(len(reference_features))])
    if len(site_groups) != len(site_features) or len(reference_groups) != len(reference_features):
        raise ValueError("one patient (group) per slice is needed, as many as there are feature rows")
    result = {"site": {"slices": len(site_features), "patients": len(set(site_groups)),
                       "patients_known": patients_known},
              "reference": {"slices": len(reference_features), "patients": len(set(reference_groups))},
              "classifier": None, "mmd": None, "slight": False}
    result["needed"] = needed(result["site"]["slices"], result["site"]["patients"])
    # The reference's patients are the units it offers; its slices only make their features.
    result["reference_needed"] = needed(MIN_SLICES, result["reference"]["patients"])
    if result["needed"] or result["reference_needed"]:
        return {**result, "verdict": "too few"}
    site, validation = patient_means(site_features, site_groups), patient_means(reference_features, reference_groups)
    result["classifier"] = classifier_test(site, validation, n_permutations, seed)
    result["mmd"] = mmd_test(site, validation, n_permutations, seed)
    significant = result["classifier"]["p_value"] < ALPHA
    result["slight"] = significant and result["classifier"]["roc_auc"] < MIN_AUC
    return {**result, "verdict": "different" if significant and not result["slight"] else "similar"}


# ---------------------------------------------------------------------------
# Plain words and a table, for the CLI and a page
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Through a run's model: the site's slices and the validation reference
# ---------------------------------------------------------------------------


def check_site(run_dir, sources, patients=None, names=None, n_permutations: int = N_PERMUTATIONS,
               seed: int = 0, report=lambda line: None, predictor=None) -> dict:
    """Check a site's slices against run_dir's validation slices.

    sources: paths, bytes, file-likes or decoded uint8 images (a folder's
    files, a PACS query's, the app's uploads); patients: one id per source
    (None: each its own); names: for messages (default: the paths);
    predictor: the run's, with its own calibration (default: loaded). Returns compare_features'
    dict with "run", "guard" ({"refused", "slices", "rate", "expected_rate",
    "guarded"}), "probabilities" (site vs validation: means on the run's
    calibrated scale, shares decided positive, KS statistic), "problems"
    (unreadable sources, "file: problem", left out) and "message"."""
    sources = list(sources)
    names = list(names) if names is not None else [str(s) if isinstance(s, (str, Path)) else f"slice {i + 1}"
                                                   for i, s in enumerate(sources)]
    if patients is not None and len(patients) != len(sources):
        raise ValueError(f"{len(patients)} patient ids for {len(sources)} slices: give one per slice")
    predictor = predictor or Predictor.from_run(run_dir)
    scored = score(predictor, sources, names, report)
    # A slice without a patient is its own: named by its position, never merged with another.
    groups = None if patients is None else [patients[i] for i in scored["kept"]]
    result = check_features(predictor, scored["features"], scored["raw"], scored["refused"], groups,
                            n_permutations=n_permutations, seed=seed, report=report)
    result["problems"] = scored["problems"]
    return result


def check_features(predictor, features, raw, refused, groups=None, n_permutations: int = N_PERMUTATIONS,
                   seed: int = 0, report=lambda line: None) -> dict:
    """The site check on slices already through the model (Predictor.raw_and_features
    and its guard): features N x D, raw probabilities and the guard's refusals
    (one each), groups: a patient per slice, None for a slice that is its own
    (None: every slice its own). The same dict as check_site, "problems" empty;
    "site" also counts "single_slices" (slices that are their own patient)."""
    features, raw, refused = np.asarray(features), np.asarray(raw, float), np.asarray(refused, bool)
    validation = reference(predictor, report)
    single = len(raw) if groups is None else sum(g is None for g in groups)
    groups = None if groups is None else [f"slice {i}" if g is None else f"patient {g}" for i, g in enumerate(groups)]
    result = compare_features(features, validation["features"], groups, validation["patients"],
                              n_permutations=n_permutations, seed=seed)
    result["site"]["single_slices"] = single
    result["run"] = Path(predictor.run_dir).name
    result["problems"] = []
    result["guard"] = {"refused": int(refused.sum()), "slices": len(raw),
                       "rate": float(refused.mean()) if len(raw) else 0.0,
                       "expected_rate": 1 - ood.PERCENTILE / 100, "guarded": predictor.guard is not None}
    if len(raw):
        calibrated = predictor.calibration.apply
        result["probabilities"] = {
            "site_mean": float(np.mean(calibrated(raw))),
            "reference_mean": float(np.mean(calibrated(validation["raw"]))),
            "site_positive_share": float(np.mean(raw >= predictor.threshold)),
            "reference_positive_share": float(np.mean(validation["raw"] >= predictor.threshold)),
            "ks": float(ks_2samp(raw, validation["raw"]).statistic)}
    result["message"] = message(result)
    return result


def check_folder(run_dir, folder, **options) -> dict:
    """check_site on a folder's slices (site_files: one sub-folder per patient)."""
    files, patients = site_files(folder)
    root = Path(folder).expanduser()
    names = [Path(f).relative_to(root).as_posix() if Path(f).is_relative_to(root) else f for f in files]
    known = any(p is not None for p in patients)
    return check_site(run_dir, files, patients if known else None, names, **options)


def _count(number: int, word: str) -> str:
    return f"{number} {word}{'' if number == 1 else 's'}"


def _p_text(test: dict) -> str:
    smallest = 1 / (1 + test["n_permutations"])
    return f"p ≤ {smallest:.3f}" if test["p_value"] <= smallest + 1e-12 else f"p = {test['p_value']:.3f}"


def message(result: dict) -> str:
    """The verdict in plain words, with its counts."""
    site = result["site"]
    counts = f"{_count(site['patients'], 'patient')}, {_count(site['slices'], 'slice')}"
    if result["verdict"] == "too few":
        if result["needed"]:
            more = " and ".join(_count(n, f"more {key[:-1]}") for key, n in result["needed"].items())
            text = (f"Too few scans to check ({counts}): the check needs at least {MIN_PATIENTS} patients and "
                    f"{MIN_SLICES} slices, so {more}.")
        else:
            reference = result["reference"]
            text = (f"This model's validation set is too small to compare with ({reference['patients']} patients; "
                    f"the check needs {MIN_PATIENTS}).")
    elif result["verdict"] == "different":
        test = result["classifier"]
        text = ("These scans differ from the scans this model was tested on: its figures do not hold here; "
                "validate it on labelled scans from your site first. "
                f"(A classifier tells them from the model's validation scans with ROC-AUC {test['roc_auc']:.2f}, "
                f"{_p_text(test)}; {counts}.)")
    elif result.get("slight"):
        test = result["classifier"]
        text = (f"Similar: these scans differ only slightly from the model's validation scans ({counts}; "
                f"ROC-AUC {test['roc_auc']:.2f}, below {MIN_AUC:.2f}; {_p_text(test)}): its figures should hold, "
                "but check its calibration on labelled scans from your site when you can.")
    else:
        test = result["classifier"]
        text = (f"Similar: no sign that these scans differ from the model's validation scans ({counts}; "
                f"ROC-AUC {test['roc_auc']:.2f}, {_p_text(test)}).")
        if site["patients"] < FEW_PATIENTS:
            text += f" With fewer than {FEW_PATIENTS} patients only a large difference would show."
    if not site["patients_known"] and site["slices"]:
        text += (" Patients were not given: each slice counted as its own patient, which makes slices of one "
                 "patient look like a difference.")
    elif site.get("single_slices"):
        text += (f" {_count(site['single_slices'], 'slice')} without a patient counted each as its own patient, "
                 "which makes slices of one patient look like a difference.")
    return text


def guard_message(result: dict) -> str | None:
    """What the out-of-distribution guard made of the site's slices, in plain words."""
    guard = result.get("guard")
    if not guard or not guard["slices"]:
        return None
    if not guard["guarded"]:
        return "This run has no out-of-distribution reference (not deployed): only the image checks ran."
    return (f"The out-of-distribution guard refused {guard['rate']:.0%} of these slices (about "
            f"{guard['expected_rate']:.0%} of validation slices by design): it judges one slice at a time and "
            "cannot see a difference that a whole site shares.")


def figures_table(result: dict) -> pd.DataFrame:
    """The check's figures, one row each: figure, site, validation (the
    reference, or what is expected there), meaning."""
    site, reference = result["site"], result["reference"]
    rows = [("slices", site["slices"], reference["slices"], ""),
            ("patients", site["patients"], reference["patients"],
             "" if site["patients_known"] else "patients not given: one per slice")]
    test, mmd = result.get("classifier"), result.get("mmd")
    if test:
        rows += [("classifier ROC-AUC, site vs validation", round(test["roc_auc"], 3), 0.5,
                  f"{_p_text(test)} (decides: different at p < {ALPHA} and ROC-AUC ≥ {MIN_AUC}; 0.5: cannot tell apart)"),
                 ("MMD², site vs validation", round(mmd["mmd2"], 4), 0.0, f"{_p_text(mmd)} (reported only)")]
    guard = result.get("guard")
    if guard and guard["guarded"]:
        rows.append(("refused by the out-of-distribution guard", f"{guard['rate']:.1%}",
                     f"{guard['expected_rate']:.0%}", "expected on validation slices by design"))
    shift = result.get("probabilities")
    if shift:
        rows += [("mean calibrated probability", round(shift["site_mean"], 3), round(shift["reference_mean"], 3),
                  "also moves with the share of COVID-19 patients"),
                 ("share decided positive", f"{shift['site_positive_share']:.0%}",
                  f"{shift['reference_positive_share']:.0%}", "at the run's threshold"),
                 ("KS statistic of the probabilities", round(shift["ks"], 3), 0.0, "0: same distribution")]
    return pd.DataFrame(rows, columns=["figure", "site", "validation", "meaning"]).astype({"site": str,
                                                                                           "validation": str})
