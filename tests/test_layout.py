"""The layout docs/design.md promises, read from the source: no import cycle among podslib's
modules, the core importing nothing of the kit but the registry, kit imports at the top of
each module (only the engine modules, which pull in transformers or vLLM, load on demand), and
every module importable."""

import ast
import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "podslib"
# Function-local kit imports allowed: (importing module, imported module). The engine modules
# import transformers / vLLM at their top, and `make_engine` loads only the one asked for.
LAZY = {("podslib.rollout", "podslib.rollout.hf"), ("podslib.rollout", "podslib.rollout.vllm")}
CORE_ALLOWED = {"podslib.registry"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def kit_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported podslib module, at module level?) of every import in `path`: `from a.b import c`
    counts as a.b.c when that is a module, else as a.b."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if (PACKAGE.parent / f"{node.module}.{a.name}"
                     .replace(".", "/")).with_suffix(".py").exists()
                     or (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")).is_dir()
                     else node.module for a in node.names]
        else:
            assert not isinstance(node, ast.ImportFrom), f"{path}: relative import"
            continue
        found += [(n, id(node) in top) for n in names if n.split(".")[0] == "podslib"]
    return found


GRAPH = {module_name(p): kit_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_module_graph_has_no_cycle():
    edges = {m: {t for t, _ in imports if t != m} for m, imports in GRAPH.items()}
    done, path = set(), []

    def visit(m: str) -> None:
        if m in path:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for t in sorted(edges.get(m, ())):
            visit(t)
        path.pop()
        done.add(m)

    for m in sorted(edges):
        visit(m)


def test_the_core_imports_only_torch_and_the_registry():
    core = sorted((PACKAGE / "core").glob("*.py"))
    assert {p.stem for p in core} >= {"selection", "advantages", "loss"}
    for path in core:
        tree = ast.parse(path.read_text())
        roots = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
                 for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                 for a in n.names}
        assert roots - set(sys.stdlib_module_names) <= {"torch", "podslib"}, (path, roots)
        assert {t for t, _ in kit_imports(path)} <= CORE_ALLOWED, path


def test_kit_imports_sit_at_the_top_of_each_module():
    local = [(m, t) for m, imports in GRAPH.items() for t, top in imports if not top]
    assert set(local) <= LAZY, sorted(set(local) - LAZY)


def test_every_module_imports_and_the_package_exports_its_surface():
    for m in GRAPH:
        if m != "podslib.__main__":
            importlib.import_module(m)
    import podslib

    assert set(podslib.__all__) == {"select", "rule", "group_advantages", "grpo_loss", "Config",
                                    "train"}
    assert all(callable(getattr(podslib, name)) for name in podslib.__all__)
    wings = [p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()]
    assert all(isinstance(getattr(podslib, w), ModuleType) for w in wings), wings  # not shadowed
