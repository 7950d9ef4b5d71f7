"""The gpslib modules import each other at the top of the file, and only downwards (no circle).

Read from the source with ``ast``, so a circle hidden by an import inside a function, or one
that Python happens to resolve at import time, is still found.
"""

from __future__ import annotations

import ast
from pathlib import Path

GPSLIB = Path(__file__).resolve().parents[1] / "gpslib"


def _target(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The gpslib modules an import statement names (``from gpslib import paper`` -> ``paper``)."""
    if isinstance(node, ast.Import):
        return [a.name.split(".")[1] for a in node.names if a.name.startswith("gpslib.")]
    if node.module == "gpslib":
        return [a.name for a in node.names if (GPSLIB / f"{a.name}.py").exists()]
    if node.module and node.module.startswith("gpslib."):
        return [node.module.split(".")[1]]
    return []


def gpslib_imports(source: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(modules imported at the top level of ``source``, [(line, module)] imported inside a def or class)."""
    tree = ast.parse(source)
    top = {m for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)) for m in _target(node)}
    nested = [(node.lineno, m) for outer in tree.body if isinstance(outer, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                            ast.ClassDef))
              for node in ast.walk(outer) if isinstance(node, (ast.Import, ast.ImportFrom)) for m in _target(node)]
    return top, nested


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of ``graph`` (module -> modules it imports) as [a, b, ..., a], or [] when there is none."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    graph, nested = {}, []
    for path in sorted(GPSLIB.glob("*.py")):
        top, inner = gpslib_imports(path.read_text(encoding="utf-8"))
        graph[path.stem] = top - {path.stem}
        nested += [f"gpslib/{path.name}:{line} imports {m}" for line, m in inner]
    return graph, nested


def test_gpslib_modules_import_each_other_without_a_circle():
    graph, _ = _graph()
    assert len(graph) > 30 and sum(map(len, graph.values())) > 50  # the walk really read the package
    assert find_cycle(graph) == [], f"import circle: {' -> '.join(find_cycle(graph))}"


def test_gpslib_modules_import_each_other_at_the_top_of_the_file():
    _, nested = _graph()
    assert nested == [], "imports inside a function or class (move them to the top):\n" + "\n".join(nested)


def test_the_checks_find_a_planted_circle_and_a_nested_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    source = "from gpslib import paper\nimport gpslib.sinkhorn\n\ndef f():\n    from gpslib.figures import repo_root\n"
    assert gpslib_imports(source) == ({"paper", "sinkhorn"}, [(5, "figures")])
