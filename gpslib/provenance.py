"""What produced a result: fingerprints of the code and the settings, versions, commit, device.

Cached results (the pretrained base model, fine-tuning runs) are keyed by what determines
them, the code included: :func:`code_fingerprint` hashes the source of a gpslib module and
of every gpslib module it imports, directly or not (read from the import statements at the
top of each file), so editing any of them gives a new key, and editing an unrelated
module (a notebook helper, a plot) does not.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["gpslib_imports", "code_fingerprint", "settings_hash"]

PACKAGE_DIR = Path(__file__).resolve().parent


def _module_file(name: str) -> Path:
    if name == "gpslib":
        return PACKAGE_DIR / "__init__.py"
    path = PACKAGE_DIR / (name.split(".", 1)[1].replace(".", "/") + ".py")
    if not path.is_file():
        raise ValueError(f"{name!r} is not a module of gpslib (no {path})")
    return path


def gpslib_imports(name: str) -> list[str]:
    """The gpslib modules ``name`` imports anywhere in its file (sorted, itself excluded)."""
    tree = ast.parse(_module_file(name).read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gpslib":
            if node.module == "gpslib":  # from gpslib import x, y: submodules
                found.update(f"gpslib.{a.name}" for a in node.names if (PACKAGE_DIR / f"{a.name}.py").is_file())
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "gpslib" and a.name != "gpslib")
    found.discard(name)
    return sorted(found)


@functools.lru_cache(maxsize=None)
def _closure(name: str) -> tuple[str, ...]:
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(gpslib_imports(current))
    return tuple(sorted(seen | {"gpslib"}))


def code_fingerprint(name: str) -> str:
    """SHA-256 (16 hex digits) of the sources of module ``name`` and all gpslib modules it depends on."""
    digest = hashlib.sha256()
    for module in _closure(name):
        digest.update(module.encode())
        digest.update(_module_file(module).read_bytes())
    return digest.hexdigest()[:16]


def settings_hash(settings: Any) -> str:
    """SHA-256 (16 hex digits) of ``settings`` as canonical JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
