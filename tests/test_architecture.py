"""The layers of core, kept true: every import points down, and no module
imports itself back in a circle (docs/architecture.md).

Function-local imports count as much as module-level ones: an import placed
inside a function to dodge a circle is still an arrow. The deliberate lazy
imports (the CLI's commands load TensorFlow only when they need it) must
point down like every other.
"""
import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "core"

# Lowest first: a package may import only the packages before it (and itself).
LAYERS = ("base", "data", "evaluation", "runs", "models", "inference", "training", "jobs", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(module, line) of every core module `path` imports, at any depth of the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.startswith("core")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("core") and not node.level:
            for alias in node.names:  # `from core.data import images` imports the module core.data.images
                candidate = f"{node.module}.{alias.name}"
                found.append((candidate if candidate in known else node.module, node.lineno))
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in CORE.rglob("*.py")}
    return {name: {target for target, _ in imported_modules(path, set(files)) if target != name}
            for name, path in files.items()}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_lives_in_a_layer():
    loose = [m for m in import_graph() if layer(m) is None and m not in ("core", "core.__main__")]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


def test_every_import_points_down():
    upward = [f"{source} imports {target}" for source, targets in import_graph().items() for target in targets
              if layer(source) is not None and layer(target) is not None and layer(target) > layer(source)]
    assert not upward, "imports that point up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = import_graph()
    cycles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("limit, folder", [(300, CORE)])
def test_no_module_is_over_the_size_limit(limit, folder):
    long = {str(p.relative_to(folder.parent)): n for p in folder.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > limit}
    assert not long, f"modules over {limit} lines: {long}"


def test_core_imports_neither_streamlit_nor_the_app():
    found = [f"{module_name(path)} imports {name}" for path in CORE.rglob("*.py")
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, (ast.Import, ast.ImportFrom))
             for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])
             if name.split(".")[0] in ("streamlit", "ui", "app_pages")]
    assert not found, found


def test_no_private_name_crosses_modules():
    found = [f"{module_name(path)}:{node.lineno} imports {alias.name} from {node.module}"
             for path in CORE.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("core")
             for alias in node.names if alias.name.startswith("_")]
    assert not found, found
