"""The package's import structure, read from the source with ``ast`` (nothing is imported):

* no import cycle among ``mixedae`` modules, counting imports inside functions too (a lazy
  import that closes a cycle is still two modules that need each other);
* no re-export layer: no ``noqa: F401`` outside package ``__init__`` files, and no
  ``from mixedae.X import name`` where ``X`` only imports ``name`` from somewhere else.
"""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "mixedae"

# cycles accepted on purpose (none)
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name → source file, for every module of the package."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the package modules it imports anywhere in its body (top level or inside a
    function). ``from a import b`` counts ``a.b`` when that is a module, else ``a``; importing
    ``a.b.c`` runs ``a`` and ``a.b`` first, but a package ``__init__`` is only an edge when it is
    named itself (else every submodule would form a cycle with its own package)."""
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in files)
            elif isinstance(node, ast.ImportFrom):
                target = _absolute(node, name, is_package)
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in files:
                        deps.add(sub)
                    elif target in files:
                        deps.add(target)
        deps.discard(name)
        graph[name] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every elementary cycle reachable by depth-first search, each as a tuple starting at
    its smallest module name (so that one cycle is reported once)."""
    cycles: set[tuple[str, ...]] = set()

    def visit(node: str, path: list[str], on_path: set[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                cycle = path[path.index(nxt):]
                i = cycle.index(min(cycle))
                cycles.add(tuple(cycle[i:] + cycle[:i]))
            elif nxt > path[0]:  # each cycle is found from its smallest member only
                path.append(nxt)
                on_path.add(nxt)
                visit(nxt, path, on_path)
                on_path.discard(nxt)
                path.pop()

    for start in sorted(graph):
        visit(start, [start], {start})
    return cycles


def test_cycle_finder_finds_a_lazy_two_module_cycle_and_a_submodule_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")         # b resolved as a submodule
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg import a\n")  # lazy import
    (pkg / "c.py").write_text("from pkg.a import x\n")           # into the cycle, not part of it
    graph = import_graph(module_files(pkg))
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.c"] == {"pkg.a"}
    assert find_cycles(graph) == {("pkg.a", "pkg.sub.b")}


def test_no_import_cycle():
    cycles = find_cycles(import_graph(module_files()))
    unexpected = sorted(cycles - KNOWN_CYCLES)
    assert not unexpected, "import cycles:\n" + "\n".join(" -> ".join(c + c[:1]) for c in unexpected)


def test_no_reexport_layer():
    files = module_files()
    noqa = [f"{p.relative_to(REPO)}:{i}" for p in [*files.values(), *(REPO / "tools").rglob("*.py")]
            if p.name != "__init__.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if "noqa: F401" in line]
    assert not noqa, "re-exports (noqa: F401) outside package __init__ files: " + ", ".join(noqa)

    def own_names(path: Path) -> set[str]:
        """Names a module defines at its top level (not those it imports)."""
        names, todo = set(), list(ast.parse(path.read_text()).body)
        while todo:
            node = todo.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            else:
                names.update(n.id for n in ast.walk(node)
                             if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
                todo += [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
        return names

    defined = {m: own_names(p) for m, p in files.items() if p.name != "__init__.py"}
    sources = [*files.values(), *(REPO / "tools").rglob("*.py"), *(REPO / "tests").rglob("*.py")]
    through = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module in defined:
                through += [f"{path.relative_to(REPO)}:{node.lineno} {node.module}.{a.name}"
                            for a in node.names if a.name not in defined[node.module]
                            and f"{node.module}.{a.name}" not in files]
    assert not through, "imported through a module that does not define them:\n" + "\n".join(through)
