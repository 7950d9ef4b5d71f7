"""Independent runs in parallel processes, each single-threaded (the notebooks' fine-tuning grids).

Every computation here runs with one torch thread, because results depend on the thread
count (:mod:`gpslib.runtime`). A grid of independent runs (Table 3's strategies x seeds x
arms) still uses every core: :func:`run_in_processes` hands the jobs to ``workers``
processes (``spawn``, so nothing of the parent's state leaks in), each with one thread. A
job's result does not depend on which worker ran it or in which order, so the outputs
equal a sequential run's.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Any, Callable, Sequence

import torch

from gpslib.runtime import quiet_libraries

__all__ = ["default_workers", "run_in_processes"]


def default_workers() -> int:
    """``$GPSLIB_WORKERS`` if set, else the number of CPU cores available to this process (at most 8)."""
    env = os.environ.get("GPSLIB_WORKERS")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"GPSLIB_WORKERS must be a positive integer; got {env!r}")
        return int(env)
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _init_worker() -> None:
    torch.set_num_threads(1)
    quiet_libraries()


def run_in_processes(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int | None = None) -> list[Any]:
    """``[fn(job) for job in jobs]``, computed by ``workers`` processes (in order of ``jobs``).

    ``fn`` must be a module-level function and the jobs picklable. With one worker (or one
    job) the jobs run here, in this process. An exception in a job is raised here.
    """
    workers = default_workers() if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1; got workers={workers!r}")
    jobs = list(jobs)
    if workers == 1 or len(jobs) <= 1:
        return [fn(job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_init_worker,
                                                   maxtasksperchild=None) as pool:
        return pool.map(fn, jobs, chunksize=1)
