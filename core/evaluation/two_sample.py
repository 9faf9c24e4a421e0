"""Do two groups of patients come from the same population? Two-sample
tests on feature vectors, one row per patient: a classifier two-sample test
(can held-out patients be told apart?) and the maximum mean discrepancy, each
with a permutation p-value over the patients' group labels. core.inference.site_check
applies them to a site's slices and the deployed model's validation slices."""
from __future__ import annotations

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits


N_PERMUTATIONS = 200  # p-values down to 1/201: enough to decide at ALPHA


FOLDS = 5             # cross-validation folds of patients (fewer when a side has fewer patients)


N_COMPONENTS = 20     # principal components the classifier sees: a shift between the sides adds


def _unit_rows(features) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def patient_means(features, patients) -> np.ndarray:
    """One row per patient (in order of first appearance): the mean of its
    slices' unit-length features."""
    codes, _ = pd.factorize(np.asarray(patients, dtype=object))
    features = _unit_rows(features)
    sums = np.zeros((codes.max() + 1, features.shape[1]))
    np.add.at(sums, codes, features)
    return sums / np.bincount(codes)[:, None]


def _permutations(labels, n_permutations: int, seed: int):
    """The site/validation labels of the patients, shuffled, n_permutations times."""
    rng = np.random.default_rng(seed)
    for _ in range(n_permutations):
        yield rng.permutation(labels)


def _p_value(observed: float, null) -> float:
    """Permutation p-value, the observed labelling counted as one of them."""
    null = np.asarray(null)
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))


def _held_out_auc(x, labels, seed: int) -> float:
    """ROC-AUC of site-vs-validation scores, each patient scored by a
    logistic regression fitted on the other patients."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    folds = min(FOLDS, int(labels.sum()), int((1 - labels).sum()))
    scores = np.zeros(len(labels))
    for fit_rows, held_rows in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, labels):
        model = LogisticRegression(class_weight="balanced", solver="liblinear").fit(x[fit_rows], labels[fit_rows])
        scores[held_rows] = model.decision_function(x[held_rows])
    return float(roc_auc_score(labels, scores))


def _stacked(site, reference) -> tuple[np.ndarray, np.ndarray]:
    """(patients' features, 1 for a site patient)."""
    site, reference = np.asarray(site, dtype=float), np.asarray(reference, dtype=float)
    return np.vstack([site, reference]), np.r_[np.ones(len(site), int), np.zeros(len(reference), int)]


def classifier_test(site, reference, n_permutations: int = N_PERMUTATIONS, seed: int = 0) -> dict:
    """The decision rule, on one feature row per patient (patient_means):
    {"roc_auc", "p_value", "n_permutations", "null_95" (the 95th percentile
    of the permuted ROC-AUCs)}."""
    from sklearn.decomposition import PCA

    features, labels = _stacked(site, reference)
    components = min(N_COMPONENTS, len(features) - 1, features.shape[1])
    x = PCA(n_components=components, whiten=True, random_state=seed).fit_transform(features)
    # One thread: a thousand small fits run ten times slower with BLAS threads fighting over the cores.
    with threadpool_limits(1):
        observed = _held_out_auc(x, labels, seed)
        null = [_held_out_auc(x, permuted, seed) for permuted in _permutations(labels, n_permutations, seed)]
    return {"roc_auc": observed, "p_value": _p_value(observed, null), "n_permutations": n_permutations,
            "null_95": float(np.percentile(null, 95)) if null else None}


def mmd_test(site, reference, n_permutations: int = N_PERMUTATIONS, seed: int = 0) -> dict:
    """Maximum mean discrepancy (squared, biased estimate) on one feature row
    per patient, with an RBF kernel whose width is the median distance (the
    usual heuristic), and its p-value over the same permutations."""
    features, labels = _stacked(site, reference)
    squared = np.maximum(np.sum(features ** 2, axis=1)[:, None] + np.sum(features ** 2, axis=1)[None]
                         - 2 * features @ features.T, 0)
    width = np.median(squared[np.triu_indices(len(features), k=1)])
    kernel = np.exp(-squared / max(width, 1e-12))

    def statistic(labels):
        weights = labels / labels.sum() - (1 - labels) / (1 - labels).sum()
        return float(weights @ kernel @ weights)  # mean k(site, site) + mean k(val, val) - 2 mean k(site, val)

    observed = statistic(labels)
    null = [statistic(permuted) for permuted in _permutations(labels, n_permutations, seed)]
    return {"mmd2": observed, "p_value": _p_value(observed, null), "n_permutations": n_permutations}
