"""Notebook and CLI runtime: fixed threads, seeds and print precision, so reruns match.

:func:`setup` is the first call of every notebook. It fixes torch's thread
count, seeds Python, numpy and torch, and sets the print precision of numpy and
pandas to 4 decimals, so that nbval can compare a rerun's outputs with the
committed ones.

Threads: one by default (``$GPSLIB_THREADS`` overrides). Results depend on the thread
count (measured: 100 pretraining steps of the embedded model give different weights with
one and two threads, identical weights for the same count in separate processes), and on
a shared 2-core machine two OpenMP threads under load ran 100 steps in 792 s against 48 s
with one. So every computation runs single-threaded and reproducible; the second core
draws training images (``dataloader_workers``) or runs a second fine-tuning process.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pandas as pd
import torch

from gpslib.run_profiles import check_profile

__all__ = ["setup", "seed_everything", "default_threads", "quiet_libraries"]


def default_threads() -> int:
    """Torch threads to use: ``$GPSLIB_THREADS`` if set, else 1 (see the module docstring)."""
    env = os.environ.get("GPSLIB_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"GPSLIB_THREADS must be a positive integer; got {env!r}") from None
        if n < 1:
            raise ValueError(f"GPSLIB_THREADS must be a positive integer; got {env!r}")
        return n
    return 1


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def quiet_libraries() -> None:
    """No weight-loading progress bars or info chatter from transformers/datasets in notebook output."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # datasets is a dependency; guard only against a partial install
        pass


def setup(profile: str, seed: int = 0, threads: int | None = None, verbose: bool = True) -> str:
    """Fix threads, seeds and print precision for a run in ``profile``; returns the profile.

    Raises ValueError naming an unknown profile.
    """
    check_profile(profile)
    threads = default_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got threads={threads}")
    torch.set_num_threads(threads)
    seed_everything(seed)
    np.set_printoptions(precision=4, suppress=True)
    pd.set_option("display.precision", 4)
    torch.set_printoptions(precision=4, sci_mode=False)
    quiet_libraries()
    if verbose:
        print(f"profile={profile} seed={seed} torch={torch.__version__} threads={torch.get_num_threads()}")
    return profile
