"""Plain words: the glossary and its docs page agree, every page's tooltip
term exists, tables get human column names, times read in minutes, and the
training log shown drops TensorFlow's start-up noise but keeps the run's lines."""
import re
from pathlib import Path

import pandas as pd
import pytest

from core.jobs import log_tail
from core.runs import catalogue
from ui import column_names, glossary, navigation
from ui.formatting import minutes

ROOT = Path(__file__).resolve().parent.parent


def test_docs_glossary_is_generated_from_ui_glossary():
    assert (ROOT / "docs" / "glossary.md").read_text() == glossary.markdown(), \
        "docs/glossary.md is stale: python -m ui.glossary > docs/glossary.md"


def test_every_term_the_app_explains_is_in_the_glossary():
    used = set()
    for source in [*(ROOT / entry.path for entry in navigation.PAGES), *ROOT.glob("ui/*.py")]:
        used |= set(re.findall(r'explain\("([^"]+)"\)', source.read_text()))
    assert used, "no page uses the glossary"
    assert used <= set(glossary.TERMS), f"terms without an explanation: {used - set(glossary.TERMS)}"


def test_each_explanation_is_one_plain_line():
    for term, text in glossary.TERMS.items():
        assert "\n" not in text and 20 < len(text) < 400, term


def test_runs_table_columns_all_have_human_names():
    raw = catalogue.compare_runs([])  # no rows: build the column list the way compare_runs does
    columns = ["run", "state", "study", *catalogue.COMPARED_SETTINGS, "val_roc_auc",
               *[f"test_{m}" for m in ("roc_auc", "pr_auc", "accuracy", "f1", "recall", "specificity")],
               "train_seconds", "problem"]
    assert raw.empty
    for column in columns:
        assert column in column_names.COLUMNS, column
        assert "_" not in column_names.human(column)
    assert column_names.human("val_roc_auc") == "Validation ROC-AUC"
    assert column_names.human("test_recall") == "Test sensitivity"


def test_readable_table_turns_seconds_into_minutes_and_renames():
    table = pd.DataFrame({"trial": [0, 1], "val_roc_auc": [0.9, None], "seconds": [120, 1108.0],
                          "some_new_param": [1, 2]})
    shown = column_names.readable(table)
    assert list(shown.columns) == ["Trial", "Validation ROC-AUC", "Minutes", "Some new param"]
    assert shown["Minutes"].tolist() == pytest.approx([2.0, 1108 / 60])
    assert table["seconds"].tolist() == [120, 1108.0]  # the caller's table is left as it was


@pytest.mark.parametrize("seconds, text", [(1108.0, "18 min"), (20, "under 1 min"), (3900, "1 h 05 min"),
                                           (None, "–"), (float("nan"), "–"), ("?", "–")])
def test_minutes(seconds, text):
    assert minutes(seconds) == text


TF_START = """\
2026-12-05 03:12:01.123456: I tensorflow/core/util/port.cc:153] oneDNN custom operations are on. You may see ...
2026-12-05 03:12:01.223456: I tensorflow/core/platform/cpu_feature_guard.cc:210] This TensorFlow binary is optimized
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate flags.
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796444186.715703   11158 port.cc:153] oneDNN custom operations are on. You may see slightly different
E0000 00:00:1733368321.456789   12345 cuda_dnn.cc:8310] Unable to register cuDNN factory
W0000 00:00:1733368321.556789   12345 computation_placer.cc:177] computation placer already registered
Epoch 1/3
I am a run line that mentions tensorflow/ but is not a log prefix
 4/4 - 3s - loss: 0.69 - auc: 0.51
"""


def test_log_tail_drops_tensorflow_start_up_noise_and_keeps_the_run(tmp_path):
    log = tmp_path / "fit.log"
    log.write_text(TF_START)
    shown = log_tail.tail(log, 15)
    assert shown.splitlines() == ["Epoch 1/3", "I am a run line that mentions tensorflow/ but is not a log prefix",
                                  " 4/4 - 3s - loss: 0.69 - auc: 0.51"]
    assert "E0000" in log.read_text()  # the file itself keeps everything, for debugging
    assert log_tail.tail(log, 1) == " 4/4 - 3s - loss: 0.69 - auc: 0.51"


def test_log_tail_of_only_noise_says_empty(tmp_path):
    log = tmp_path / "fit.log"
    log.write_text(TF_START.split("Epoch")[0])
    assert log_tail.tail(log, 15) == "(empty)"
