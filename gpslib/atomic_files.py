"""Atomic file writing: a file or a folder appears whole or not at all.

Everything this project writes that a later run reads back (figures, tables, run records,
the cached base model) goes through these helpers: the content is written under a
temporary name in the target folder and moved into place with ``os.replace``, which is
atomic on one file system, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "atomic_write_text", "replace_directory"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it into place.

    The file gets mode 0644 (``mkstemp`` makes 0600; what is written here is meant to be
    read by others). On any error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(path, write)


def replace_directory(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an old ``final`` if there is one.

    Both must be on one file system. An old ``final`` is first renamed aside, so at every
    moment ``final`` is either the old complete folder or the new one.
    """
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
