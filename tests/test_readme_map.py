"""The README's paper -> notebook -> gpslib map names exactly the functions the notebooks import and call.

Exempt from the map: the plumbing every notebook calls (:data:`PLUMBING`: saving figures and
tables, reading the profile's settings, seeding), which the README names once for all rows.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _map_rows() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Paper figure/table -> notebook -> gpslib", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("`") and re.match(r"`\d\d_", cells[1]):
            rows[cells[1].strip("`")] = re.findall(r"`([a-z_0-9]+\.[A-Za-z_0-9]+)`", cells[3])
    return rows


def _used(notebook: Path) -> set[str]:
    """``module.name`` of every gpslib function or class the notebook's code calls."""
    nb = nbformat.read(notebook, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code" and not c.source.startswith("%"))
    tree = ast.parse(code)
    names, modules = {}, {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpslib"):
            for alias in node.names:
                if node.module == "gpslib":
                    modules[alias.asname or alias.name] = alias.name
                else:
                    names[alias.asname or alias.name] = f"{node.module.split('.', 1)[1]}.{alias.name}"
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in names:
                used.add(names[f.id])
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in modules:
                used.add(f"{modules[f.value.id]}.{f.attr}")
    return used


ROWS = _map_rows()
PLUMBING = ("figures.", "run_profiles.", "runtime.")


def test_the_map_has_a_row_for_every_notebook():
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(ROWS) == notebooks


@pytest.mark.parametrize("notebook", sorted(ROWS))
def test_every_function_the_map_credits_is_called_by_its_notebook(notebook):
    used = _used(ROOT / "notebooks" / f"{notebook}.ipynb")
    missing = [name for name in ROWS[notebook] if name not in used]
    assert ROWS[notebook] and not missing, f"{notebook} never calls {missing}; it calls {sorted(used)}"


@pytest.mark.parametrize("notebook", sorted(ROWS))
def test_every_function_a_notebook_calls_is_credited_on_its_row(notebook):
    used = _used(ROOT / "notebooks" / f"{notebook}.ipynb")
    uncredited = sorted(name for name in used if not name.startswith(PLUMBING) and name not in ROWS[notebook])
    assert not uncredited, f"{notebook} calls {uncredited}, which its README row does not name"


def test_the_readme_names_the_plumbing_the_map_leaves_out():
    section = (ROOT / "README.md").read_text().split("## Paper figure/table -> notebook -> gpslib", 1)[1]
    intro = section.split("| paper |", 1)[0]
    assert all(f"`{module.rstrip('.')}`" in intro for module in PLUMBING)


@pytest.mark.parametrize("notebook", sorted(ROWS))
def test_each_stored_notebook_says_its_outputs_are_the_smoke_run_and_where_the_cpu_results_are(notebook):
    nb = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    first = nb.cells[0].source.split("\n")
    banner = next(line for line in first if line.strip())  # the line after the title
    banner = first[2] if first[0].startswith("#") else banner
    assert "the `smoke` run" in banner and f"report/{notebook}.ipynb" in banner and "figures/" in banner
