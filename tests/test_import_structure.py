"""The gpslib modules import each other at the top of the file, and only downwards (no circle).

Read from the source with ``ast`` (:func:`gpslib.provenance.gpslib_imports`, which counts an
import anywhere in a file), so a circle hidden by an import inside a function, or one that
Python happens to resolve at import time, is still found.
"""

from __future__ import annotations

import ast

from gpslib.provenance import PACKAGE_DIR, gpslib_imports

MODULES = ["gpslib"] + [f"gpslib.{p.stem}" for p in sorted(PACKAGE_DIR.glob("*.py")) if p.stem != "__init__"]


def find_cycle(graph: dict[str, list[str]]) -> list[str]:
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


def nested_gpslib_imports(source: str) -> list[int]:
    """Lines of ``source`` where a def or class imports from gpslib."""
    return sorted(node.lineno for outer in ast.parse(source).body
                  if isinstance(outer, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  for node in ast.walk(outer)
                  if (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "gpslib")
                  or (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "gpslib" for a in node.names)))


def test_gpslib_modules_import_each_other_without_a_circle():
    graph = {m: gpslib_imports(m) for m in MODULES}
    assert len(graph) > 30 and sum(map(len, graph.values())) > 50  # the walk really read the package
    assert find_cycle(graph) == [], f"import circle: {' -> '.join(find_cycle(graph))}"


def test_gpslib_modules_import_each_other_at_the_top_of_the_file():
    nested = [f"gpslib/{p.name}:{line}" for p in sorted(PACKAGE_DIR.glob("*.py"))
              for line in nested_gpslib_imports(p.read_text(encoding="utf-8"))]
    assert nested == [], "gpslib imported inside a function or class (move it to the top): " + ", ".join(nested)


def test_the_checks_find_a_planted_circle_and_a_nested_import():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) == []
    source = "from gpslib import paper\nimport gpslib.sinkhorn\n\ndef f():\n    from gpslib.figures import repo_root\n"
    assert nested_gpslib_imports(source) == [5]
