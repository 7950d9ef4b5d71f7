"""Shared timing helper of the benchmarks: best of several runs, with a fixed torch thread count, and the machine."""

from __future__ import annotations

import time
from typing import Callable

import torch

from gpslib.manifest import device_info

__all__ = ["best_time", "thread_settings", "machine"]


def best_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Best wall-clock seconds of ``fn()`` over ``repeats`` runs, after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def thread_settings(only: int | None = None) -> list[int]:
    """Thread counts to measure: 1 and the default (both unless ``only`` is given)."""
    if only is not None:
        return [only]
    default = torch.get_num_threads()
    return sorted({1, default})


def machine() -> str:
    """The CPU model (as the figures' manifest records it), its core count and torch's version.

    Ratios of different kernels depend on all three.
    """
    info = device_info()
    return f"{info['cpu']}, {info['cpu_count']} cores, torch {torch.__version__}"
