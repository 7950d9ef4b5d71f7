"""Resuming Trainer runs (pretraining and fine-tuning): the newest complete checkpoint, read correctly.

* transformers' ``Trainer`` writes ``checkpoint-<step>/`` folders file by file; a process
  killed while one is being written leaves it incomplete (``trainer_state.json``, written
  last, missing), and resuming from it fails. :func:`latest_complete_checkpoint` skips such
  folders with a warning naming them, and removes them.
* ``Trainer`` (5.24) resumes a full-model checkpoint with a raw ``load_state_dict``, while
  ``save_pretrained`` wrote LLaVA's weights in their original (renamed) layout: every key
  misses and training silently restarts from the initial weights (transformers issue
  #43701). :class:`ResumableTrainer` reads such checkpoints through ``from_pretrained``,
  which renames them back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

from transformers import Trainer

__all__ = ["latest_complete_checkpoint", "ResumableTrainer"]

_REQUIRED = ("trainer_state.json",)


def _complete(folder: Path) -> bool:
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete ``checkpoint-<step>`` in ``output_dir`` (a path), or None.

    Incomplete checkpoints (no readable ``trainer_state.json`` or no weights) are removed,
    with a warning naming each one.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in output_dir.iterdir()
                   if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    for _, folder in reversed(found):
        if _complete(folder):
            return str(folder)
        warnings.warn(f"skipping the incomplete checkpoint {folder} (interrupted while it was written); removing it",
                      RuntimeWarning, stacklevel=2)
        shutil.rmtree(folder, ignore_errors=True)
    return None


class ResumableTrainer(Trainer):
    """``Trainer`` whose resume reads a full-model checkpoint through the model class's ``from_pretrained``."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.model if model is None else model
        full = (Path(resume_from_checkpoint) / "config.json").is_file() and not hasattr(model, "peft_config")
        if not full:  # adapters (peft) load as Trainer loads them
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        loaded = type(model).from_pretrained(resume_from_checkpoint, config=model.config, dtype=dtype)
        model.load_state_dict(loaded.state_dict())
