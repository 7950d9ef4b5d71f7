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
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME

__all__ = ["checkpoint_is_complete", "latest_complete_checkpoint", "ResumableTrainer"]

# files without which a Trainer checkpoint cannot resume exactly (trainer_state.json is written last)
CHECKPOINT_FILES = (TRAINER_STATE_NAME, OPTIMIZER_NAME, SCHEDULER_NAME)
CHECKPOINT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin")


def _checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def checkpoint_is_complete(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds everything a Trainer checkpoint resumes from, with a readable trainer state.

    The Trainer writes the weights, optimizer, scheduler and RNG state first and
    ``trainer_state.json`` last (not atomically), so a kill while saving leaves a folder
    without it or with a truncated one; a kill while old checkpoints are rotated away leaves
    one with files missing.
    """
    path = Path(path)
    if not all((path / name).is_file() for name in CHECKPOINT_FILES):
        return False
    if not any((path / name).is_file() for name in CHECKPOINT_WEIGHTS) or not any(path.glob("rng_state*.pth")):
        return False
    try:
        state = json.loads((path / TRAINER_STATE_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("global_step") == _checkpoint_step(path)


def latest_complete_checkpoint(checkpoints: str | os.PathLike, remove: bool = True) -> Path | None:
    """The complete ``checkpoint-*`` in ``checkpoints`` with the most steps, or None.

    Incomplete ones are named in a warning and, with ``remove`` (the main process of a
    distributed run), deleted.
    """
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        return None
    found = sorted((p for p in checkpoints.glob("checkpoint-*") if _checkpoint_step(p) is not None),
                   key=_checkpoint_step, reverse=True)
    complete = [p for p in found if checkpoint_is_complete(p)]
    incomplete = [p for p in found if p not in complete]
    if incomplete:
        newest = f"resuming from {complete[0].name}" if complete else "starting from scratch"
        warnings.warn(f"skipping incomplete checkpoints {[p.name for p in incomplete]} in {checkpoints} "
                      f"(interrupted while being written or removed); {newest}; removing them", stacklevel=2)
        if remove:
            for path in incomplete:
                shutil.rmtree(path, ignore_errors=True)
    return complete[0] if complete else None


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
