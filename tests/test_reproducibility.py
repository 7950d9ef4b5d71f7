"""Reruns reproduce (issue 13 item 1): the same piece of work, run twice in separate processes with the
same seeds and thread count, writes byte-identical outputs.

The piece: a smoke-profile base model (2 vision-tower steps, 12 VQA steps) and one epoch of LoRA
fine-tuning from it, each in a fresh ``python -m`` process with its own cache. The
weights, the losses and the adapter's settings are compared (wall times and the adapter's
path to its base model differ by design). The thread count is pinned to 1, as every notebook pins it (:mod:`gpslib.runtime`: results differ
between 1 and 2 threads; the cache keys include the count).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cache: Path, threads: int = 1) -> subprocess.CompletedProcess:
    env = dict(os.environ, GPSLIB_CACHE=str(cache), GPSLIB_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=600,
                          cwd=cache.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _piece(root: Path) -> dict[str, bytes]:
    """Pretrain and fine-tune in separate processes under ``root``; the bytes of what they wrote."""
    cache = root / "cache"
    cache.mkdir(parents=True)
    _run(["gpslib.pretrain", "--profile", "smoke", "--steps", "12", "--warmup", "2", "--vision-steps", "2",
          "--no-progress"], cache)
    (model,) = [p for p in cache.iterdir() if p.is_dir() and not p.name.endswith(".partial")]
    _run(["gpslib.finetune", "--profile", "smoke", "--run-dir", str(root / "run"), "--epochs", "1",
          "--model", str(model), "--no-progress"], cache)
    history = pd.read_csv(model / "history.csv").drop(columns="seconds")  # wall times differ, the rest may not
    files = {"model/model.safetensors": (model / "model.safetensors").read_bytes(),
             "model/history.csv without seconds": history.to_csv(index=False).encode()}
    files |= {f"run/{p.relative_to(root / 'run')}": p.read_bytes()
              for p in sorted((root / "run" / "adapter").glob("*.safetensors"))}
    config = json.loads((root / "run" / "adapter" / "adapter_config.json").read_text())
    assert Path(config.pop("base_model_name_or_path")) == model  # the only path it holds: differs by design
    files["run/adapter/adapter_config.json without the base path"] = json.dumps(config, sort_keys=True).encode()
    files["run/epochs.json"] = (root / "run" / "epochs.json").read_bytes()
    return files


@pytest.mark.slow
def test_pretraining_and_fine_tuning_twice_in_separate_processes_write_identical_bytes(tmp_path):
    first, second = _piece(tmp_path / "first"), _piece(tmp_path / "second")
    assert any(name.endswith(".safetensors") for name in first if name.startswith("run/"))
    assert sorted(first) == sorted(second)
    differing = [name for name in first if first[name] != second[name]]
    assert not differing, f"the reruns differ in {differing}"
