"""Plain words for the technical terms the app shows: one line each, used as
the `help=` tooltips of the pages and rendered into docs/glossary.md
(tests/test_glossary.py keeps that file in step with this one)."""
from __future__ import annotations

TERMS = {
    "Youden's J": "The threshold rule that makes sensitivity + specificity as large as possible on the "
                  "validation scans: it weighs missed COVID cases and false alarms equally.",
    "Threshold": "The probability above which a scan is called COVID; chosen on the validation scans, "
                 "never on the test scans.",
    "Calibration": "Adjusting the model's probabilities so that, of the scans given 80%, about 80% really "
                   "are COVID. It never changes which side of the threshold a scan falls on.",
    "Temperature scaling": "A calibration that divides the model's raw score by one number fitted on the "
                           "validation scans, making over-confident probabilities more modest.",
    "Platt scaling": "A calibration that fits a scale and a shift of the model's raw score on the "
                     "validation scans.",
    "Expected calibration error (ECE)": "How far, on average, the stated probabilities are from how often "
                                        "COVID really was present (probabilities grouped in 10 bins). "
                                        "0 is perfect; 0.05 means about 5 percentage points off.",
    "Spearman ρ": "A number from -1 to +1 saying whether one thing tends to rise as another rises "
                  "(+1), falls (-1), or neither (0), judging only by rank order.",
    "95% CI": "Confidence interval: the range in which the true figure probably lies (95% of the time), "
              "given how few test scans there are. Wide means uncertain.",
    "ROC-AUC": "The chance that the model gives a random COVID scan a higher probability than a random "
               "non-COVID one. 0.5 is a coin toss, 1.0 is perfect.",
    "PR-AUC": "Average precision over all thresholds: how clean the COVID calls stay as more of them "
              "are made.",
    "Sensitivity": "Of the scans that really are COVID, the share the model calls COVID (recall).",
    "Specificity": "Of the scans that really are not COVID, the share the model calls not COVID.",
    "Precision (PPV)": "Of the scans the model calls COVID, the share that really are COVID.",
    "Accuracy": "The share of all scans the model calls right, COVID or not.",
    "F1": "One figure balancing precision and sensitivity (their harmonic mean); 1 is perfect.",
    "Grad-CAM": "A heat map of the regions of the image that pushed the model towards its answer. It "
                "shows where the model looked, not where disease is.",
    "Grad-CAM++": "A variant of Grad-CAM that spreads the heat over several regions when more than one "
                  "region counts.",
    "Unfamiliar image check": "The model's internal description (image features) of an uploaded image "
                              "is compared with those of the validation scans; an image further from "
                              "them than 99 in 100 validation scans is flagged as unlike the training "
                              "data (the 99th percentile).",
    "Transfer syntax": "How a DICOM file's pixels are stored and compressed. Some compressions need an "
                       "extra decoder; a file in one that cannot be decoded is refused.",
    "Smoke run": "A quick test run on a small subset of the images: it checks that training works, but "
                 "its figures mean nothing and it cannot answer predictions.",
    "Quality floor": "The lowest test figures a run must reach before it may answer predictions for "
                     "clinicians.",
    "Cross-validation fold": "One of several runs that each validate on a different group of patients, "
                             "so every patient is scored once by a model that never trained on them.",
    "Learning rate": "How big a step the training takes each time it adjusts the model; too big is "
                     "unstable, too small is slow.",
    "Epoch": "One pass of the training over all training scans.",
    "Augmentation": "Random small changes (flips, rotations, contrast) to the training scans, so the "
                    "model learns what matters rather than the exact pictures.",
}


def explain(term: str) -> str:
    """The term's one-line explanation, for a `help=` tooltip; a KeyError names a missing term."""
    return TERMS[term]


def markdown() -> str:
    """The glossary as docs/glossary.md holds it."""
    intro = ("Plain words for the technical terms the app shows, as its tooltips give them. "
             "Generated from `ui/glossary.py` (`python -m ui.glossary > docs/glossary.md`); "
             "tests/test_glossary.py fails when the two differ.")
    lines = ["# Glossary", "", intro, ""]
    lines += [f"- **{term}**: {text}" for term, text in TERMS.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
