"""The package's shape, checked on its source: no import circles, no package imports hidden in
function bodies, no function longer than a screen. Read with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "efficientad_ext"
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Lines under ``if TYPE_CHECKING:`` (annotations only: never executed)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def _function_spans(tree: ast.Module) -> list[tuple[int, int, str]]:
    return [
        (n.lineno, n.end_lineno, n.name)
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def _imported(node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The package modules an import statement loads: ``from a.b import c`` is an edge to
    ``a.b.c`` when that is a module, else to ``a.b``. Relative imports are refused elsewhere."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    base = node.module or ""
    subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
    names_not_modules = len(subs) < len(node.names)
    return subs | ({base} if names_not_modules and base in known else set())


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    inside_functions: list[str] = []
    for name, (path, tree) in modules.items():
        skip, spans = _type_checking_lines(tree), _function_spans(tree)
        edges: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
                continue
            targets = _imported(node, known) - {name}
            edges |= targets  # function-level imports count too: a circle through one still loops
            if targets and any(a < node.lineno <= b for a, b, _ in spans):
                inside_functions.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
        graph[name] = edges
    return graph, inside_functions


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    u = stack.pop()
                    on_stack.discard(u)
                    component.append(u)
                    if u == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_planted_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    graph, _ = _graph()
    assert len(graph) > 50  # the walk saw the package
    assert _cycles(graph) == []


def test_no_package_imports_inside_functions():
    _, inside = _graph()
    assert inside == [], "import package modules at the top of the module: " + ", ".join(inside)


def test_no_relative_imports():
    relative = [
        f"{p.relative_to(PACKAGE)}:{n.lineno}"
        for p, tree in _modules().values()
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.level
    ]
    assert relative == []


def test_no_function_longer_than_a_screen():
    long = [
        f"{p.relative_to(PACKAGE)}:{a} {name} ({b - a + 1} lines)"
        for p, tree in _modules().values()
        for a, b, name in _function_spans(tree)
        if b - a + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def _readme_layout() -> str:
    text = (PACKAGE.parents[1] / "README.md").read_text()
    start = text.index("## Layout")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def test_readme_layout_names_every_module_and_folder():
    layout = _readme_layout()
    unnamed = [
        str(p.relative_to(PACKAGE))
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name not in ("__init__.py", "__main__.py", "_version.py") and f"`{p.name}`" not in layout
    ]
    unnamed += [
        f"{d.relative_to(PACKAGE)}/"
        for d in sorted(PACKAGE.rglob("*"))
        if d.is_dir() and d.name != "__pycache__" and f"`{d.name}/`" not in layout
    ]
    assert not unnamed, f"README's Layout section does not name: {unnamed}"
