"""The app's layout, kept true: the pages that do not predict (Home, Data)
open without loading TensorFlow, only ui.model (and ui.scans, which scores
with it) loads it, the pages keep their URLs, titles and menu order, and
no file outgrows its limit (ui modules 300 lines, pages 150)."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ui import navigation

ROOT = Path(__file__).resolve().parent.parent
UI, PAGES = ROOT / "ui", ROOT / "app_pages"
LOADS_TENSORFLOW = {"ui.model", "ui.scans"}  # the model, and whole scans scored with it
TENSORFLOW = ("tensorflow", "keras")


def imported_modules(path: Path) -> list[str]:
    """The modules a script imports at its top level (`from ui import frame` imports ui.frame)."""
    found = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names
                      if (ROOT / node.module.replace(".", "/") / f"{alias.name}.py").exists()]
    return found


def loaded_after(code: str, env: dict | None = None) -> dict:
    """Run `code` in a fresh interpreter at the repository root; it prints a JSON object."""
    answer = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            check=False, env={**os.environ, **(env or {})})
    assert answer.returncode == 0, answer.stderr[-3000:]
    return json.loads(answer.stdout.strip().splitlines()[-1])


def tensorflow_check(modules: list[str], then: str = "") -> str:
    """Code that imports `modules`, runs `then`, and prints which of TENSORFLOW got loaded."""
    return (f"import importlib, json, sys\nsys.path.insert(0, '.')\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n{then}\n"
            f"print(json.dumps({{'loaded': [m for m in {TENSORFLOW!r} if m in sys.modules]}}))")


@pytest.mark.parametrize("page", [navigation.HOME, navigation.DATA])
def test_the_entry_point_and_the_pages_that_do_not_predict_import_no_tensorflow(page):
    modules = imported_modules(ROOT / "streamlit_app.py") + imported_modules(ROOT / page)
    assert loaded_after(tensorflow_check(modules))["loaded"] == []


def test_home_and_data_render_without_loading_tensorflow(tmp_path):
    """Drawn, not only imported: nothing they call loads TensorFlow either."""
    render = ("from streamlit.testing.v1 import AppTest\n"
              "at = AppTest.from_file('streamlit_app.py', default_timeout=120).run()\n"
              f"at.switch_page({navigation.DATA!r}).run()\n"
              "assert not at.exception, [e.value for e in at.exception]")
    answer = loaded_after(tensorflow_check(["streamlit"], render), {"COVIDCT_ARTIFACTS": str(tmp_path)})
    assert answer["loaded"] == []


def test_only_the_model_modules_of_ui_load_tensorflow():
    light = sorted(f"ui.{path.stem}" for path in UI.glob("*.py")
                   if path.stem != "__init__" and f"ui.{path.stem}" not in LOADS_TENSORFLOW)
    assert loaded_after(tensorflow_check(light))["loaded"] == []


def test_the_pages_keep_their_urls_titles_icons_and_order():
    assert [(p.url_path, p.title) for p in navigation.PAGES] == [
        ("Home", "Home"), ("Data", "Data"), ("Train", "Train"), ("Search", "Search"),
        ("Evaluate", "Evaluate"), ("Misclassified", "Misclassified"), ("Predict", "Predict"), ("Sites", "Sites")]
    assert sorted(p.path for p in navigation.PAGES) == sorted(f"app_pages/{f.name}" for f in PAGES.glob("*.py"))
    assert all(p.icon.startswith(":material/") for p in navigation.PAGES)


@pytest.mark.parametrize("limit, folder", [(300, UI), (150, PAGES)])
def test_no_file_is_over_its_size_limit(limit, folder):
    long = {path.name: n for path in folder.glob("*.py") if (n := len(path.read_text().splitlines())) > limit}
    assert not long, f"over {limit} lines: {long}"
