"""The end of a background job's log as people read it: without the lines
TensorFlow, XLA and absl print while they start (CPU instruction notices,
cuDNN/cuBLAS factory registration, "E0000 …" lines from before absl's
logging starts). Those are written to the log untouched, for debugging;
only the view drops them."""
from __future__ import annotations

import re
from pathlib import Path

# glog/absl lines ("E0000 00:00:1733 12 cuda_dnn.cc:8310] …"), TensorFlow's own
# C++ log lines ("2026-12-05 03:12:01.123: I tensorflow/…"), and the few
# start-up notices TensorFlow prints without either prefix.
NOISE = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d\d[.\d]*\s+\d+\s+\S+:\d+\]"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] (?:tensorflow|external|xla)/"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions:"
    r"|oneDNN custom operations are on"
    r"|This TensorFlow binary is optimized to use available CPU instructions)")


def readable_lines(text: str) -> list[str]:
    """The log's lines without TensorFlow's start-up noise."""
    return [line for line in text.splitlines() if not NOISE.match(line.strip())]


def tail(path: Path, lines: int) -> str:
    """The last `lines` readable lines of the log at `path`; "(empty)" when none."""
    kept = readable_lines(Path(path).read_text(errors="replace"))
    return "\n".join(kept[-lines:]) or "(empty)"
