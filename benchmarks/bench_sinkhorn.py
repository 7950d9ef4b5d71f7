"""Sinkhorn speed, memory and accuracy of the library against the comparison implementations.

For B = 4, N in ``--sizes`` (default 800; ``--full``: 128, 576, 800, 2048), tau in
``--taus`` (default 2.0, 0.1, 0.01), ``log_alpha = randn / tau``, 50 iterations:

* ``ours``        :func:`gpslib.sinkhorn.sinkhorn`, the library's default: its forward
                  (scaling form on CPU, matrix loop on CUDA) and its one backward
                  (``_SinkhornFunction``, saving only the normaliser vectors);
* ``ours_matrix`` the matrix-loop forward alone (``sinkhorn._iterate``, no autograd): the
                  CUDA path, here on any device; no backward column;
* ``authors``     :func:`gpslib.comparison_only.sinkhorn_clamped_authors` (clamp to
                  [-15, 15], early exit);
* ``prob50``      :func:`gpslib.comparison_only.sinkhorn_probability_domain`, the fixed
                  50-iteration probability-domain loop: the speed yardstick;
* ``matrix_lse``  :func:`gpslib.comparison_only.sinkhorn_matrix_logsumexp`, the textbook
                  log-domain loop: the numerical reference (plain autograd through it).

Columns: best-of-``--repeats`` forward and forward + backward time (ms; the methods are
timed round-robin, one run of each per round, so a burst of load on a shared machine hits
them alike; ``authors`` and ``matrix_lse`` only in the first two rounds), memory of the
backward (MB: the bytes autograd saves on CPU, counted with ``saved_tensors_hooks``; the
peak allocated during forward + backward on CUDA), max row error, count of non-finite
entries, max |P - P_matrix_lse| and the max gradient difference against autograd through
``matrix_lse`` relative to that gradient's max.

The goal table, at N = 800: the library's default path at most 1.5x the
probability-domain loop at tau 0.1, forward and forward + backward; equal to the log-domain
loop within 1e-5 and finite at every tau (0.01 included). It is printed for one torch
thread and for torch's default thread count, in one run. Usage:

    python benchmarks/bench_sinkhorn.py                   # N 800, 1 thread and the default
    python benchmarks/bench_sinkhorn.py --threads 1       # one thread only
    python benchmarks/bench_sinkhorn.py --full --repeats 3
    python benchmarks/bench_sinkhorn.py --device cuda --sizes 2048

:func:`run` is also what ``benchmarks/paper_size_gps.py`` calls at N = 2048 on CUDA.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import thread_settings  # noqa: E402

import gpslib.sinkhorn as sk  # noqa: E402
from gpslib.comparison_only import (  # noqa: E402
    sinkhorn_clamped_authors,
    sinkhorn_matrix_logsumexp,
    sinkhorn_probability_domain,
)

N_ITERS = 50
BATCH = 4
GOAL_N, GOAL_TAU, GOAL_RATIO, GOAL_DIFF = 800, 0.1, 1.5, 1e-5


def _ours_matrix(la: torch.Tensor) -> torch.Tensor:
    """The matrix-loop forward of :func:`gpslib.sinkhorn.sinkhorn` (its CUDA path), no autograd."""
    return sk._exp_floored(sk._iterate(la.detach(), N_ITERS, None, 10)[0])


METHODS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "ours": lambda la: sk.sinkhorn(la, N_ITERS),
    "ours_matrix": _ours_matrix,
    "authors": lambda la: sinkhorn_clamped_authors(la, N_ITERS),
    "prob50": lambda la: sinkhorn_probability_domain(la, N_ITERS),
    "matrix_lse": lambda la: sinkhorn_matrix_logsumexp(la, N_ITERS),
}
FORWARD_ONLY = {"ours_matrix"}  # no autograd: no backward columns
TIMED_FULLY = {"ours", "ours_matrix", "prob50"}  # best of all --repeats; the others of at most 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _fwd_bwd(method, la: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """One forward + backward of ``(method(la) * w).sum()``; returns d/d la (B, N, N)."""
    x = la.clone().requires_grad_()
    (method(x) * w).sum().backward()
    return x.grad


def _round_robin(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Best milliseconds of each ``fns[name]()`` over ``repeats`` rounds, one run of each per round.

    Methods outside :data:`TIMED_FULLY` run in the first ``min(repeats, 2)`` rounds only (the
    textbook loop takes seconds per call at tau 0.01 on CPU; its time is not a goal).
    """
    for fn in fns.values():  # warm-up
        fn()
    best = dict.fromkeys(fns, math.inf)
    for r in range(repeats):
        for name, fn in fns.items():
            if r >= 2 and name not in TIMED_FULLY:
                continue
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: t * 1e3 for name, t in best.items()}


def _backward_mb(method, la: torch.Tensor, w: torch.Tensor) -> float:
    """MB kept for backward (CPU: saved tensors; CUDA: peak of forward + backward)."""
    if la.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _fwd_bwd(method, la, w)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = la.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = (method(x) * w).sum()
    out.backward()
    return sum(seen.values()) / 2**20


def _max_abs(x: torch.Tensor) -> float:
    return float(x.abs().nan_to_num(math.inf).max())


def run(sizes, taus, repeats: int, device: torch.device, methods: list[str] | None = None,
        deadline: float | None = None, batch: int = BATCH, verbose: bool = True) -> pd.DataFrame:
    """One row per (N, tau, method) with the columns of the module docstring.

    ``deadline``: a ``time.perf_counter()`` value; configurations not started by then are
    skipped (``df.attrs["stopped_at"]`` names the first one skipped, else None).
    """
    methods = list(METHODS) if methods is None else methods
    rows, stopped_at = [], None
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        scores = torch.randn(batch, n, n, generator=g).to(device)  # (B, N, N)
        w = torch.randn(batch, n, n, generator=g).to(device)  # (B, N, N) weights of the loss
        for tau in taus:
            if deadline is not None and time.perf_counter() > deadline:
                stopped_at = stopped_at or {"N": n, "tau": tau}
                continue
            la = scores / tau  # (B, N, N)
            with torch.no_grad():
                ref = sinkhorn_matrix_logsumexp(la, N_ITERS)
            ref_grad = _fwd_bwd(METHODS["matrix_lse"], la, w)
            scale = _max_abs(ref_grad) or 1.0
            with torch.no_grad():
                t_fwd = _round_robin({m: (lambda m=m: METHODS[m](la)) for m in methods}, repeats, device)
            backward = [m for m in methods if m not in FORWARD_ONLY]
            t_fb = _round_robin({m: (lambda m=m: _fwd_bwd(METHODS[m], la, w)) for m in backward}, repeats, device)
            for m in methods:
                with torch.no_grad():
                    P = METHODS[m](la)
                row = {"N": n, "tau": tau, "method": m, "threads": torch.get_num_threads(),
                       "fwd_ms": t_fwd[m], "fwd_bwd_ms": t_fb.get(m, math.nan), "bwd_mem_MB": math.nan,
                       "row_err": _max_abs(sk.row_error(P)), "nonfinite": int((~torch.isfinite(P)).sum()),
                       "max_diff_vs_lse": _max_abs(P - ref), "grad_rel_diff_vs_lse": math.nan}
                if m not in FORWARD_ONLY:
                    row["bwd_mem_MB"] = _backward_mb(METHODS[m], la, w)
                    row["grad_rel_diff_vs_lse"] = _max_abs(_fwd_bwd(METHODS[m], la, w) - ref_grad) / scale
                rows.append(row)
                if verbose:
                    print({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            del ref, ref_grad, P
            if device.type == "cuda":
                torch.cuda.empty_cache()
    df = pd.DataFrame(rows)
    df.attrs["stopped_at"] = stopped_at
    return df


def _yes(ok) -> str:
    return "yes" if bool(ok) else "NO"


def goals(df: pd.DataFrame, n: int = GOAL_N) -> pd.DataFrame:
    """The goal table at N = ``n``: one row per (threads, tau)."""
    out = []
    for (threads, tau), d in df[df.N == n].groupby(["threads", "tau"]):
        m = d.set_index("method")
        fwd = m.fwd_ms["ours"] / m.fwd_ms["prob50"]
        fb = m.fwd_bwd_ms["ours"] / m.fwd_bwd_ms["prob50"]
        row = {"threads": threads, "N": n, "tau": tau,
               "fwd ours/prob50": fwd, "fwd+bwd ours/prob50": fb,
               "ours fwd ms": m.fwd_ms["ours"], "prob50 fwd ms": m.fwd_ms["prob50"],
               "ours fwd+bwd ms": m.fwd_bwd_ms["ours"], "prob50 fwd+bwd ms": m.fwd_bwd_ms["prob50"],
               f"<={GOAL_RATIO}x": _yes(fwd <= GOAL_RATIO and fb <= GOAL_RATIO) if tau == GOAL_TAU else "-",
               "|P - lse|": m.max_diff_vs_lse["ours"], f"<={GOAL_DIFF:g}": _yes(m.max_diff_vs_lse["ours"] <= GOAL_DIFF),
               "ours finite": _yes(m.nonfinite["ours"] == 0),
               "prob50 nonfinite": int(m.nonfinite["prob50"])}
        if "ours_matrix" in m.index:
            row["fwd matrix/prob50"] = m.fwd_ms["ours_matrix"] / m.fwd_ms["prob50"]
        out.append(row)
    return pd.DataFrame(out)


def goal_met(table: pd.DataFrame) -> bool:
    """True when every thread count meets the speed goal at tau 0.1 and the accuracy goals at every tau."""
    speed = table[table.tau == GOAL_TAU]
    return bool(len(speed) and (speed[f"<={GOAL_RATIO}x"] == "yes").all()
                and (table[f"<={GOAL_DIFF:g}"] == "yes").all() and (table["ours finite"] == "yes").all())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[GOAL_N], help="N values (default: 800)")
    ap.add_argument("--full", action="store_true", help="N in {128, 576, 800, 2048}")
    ap.add_argument("--taus", type=float, nargs="+", default=[2.0, 0.1, 0.01])
    ap.add_argument("--threads", type=int, default=None, help="only this torch thread count (default: 1 and torch's)")
    ap.add_argument("--repeats", type=int, default=5, help="best of this many rounds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--csv", default=None, help="also write the full table here")
    args = ap.parse_args()
    sizes = [128, 576, 800, 2048] if args.full else args.sizes
    device = torch.device(args.device)
    frames = []
    for threads in thread_settings(args.threads):
        torch.set_num_threads(threads)
        frames.append(run(sizes, args.taus, args.repeats, device))
    df = pd.concat(frames, ignore_index=True)
    print(f"\ndevice={args.device} B={BATCH} n_iters={N_ITERS} best of {args.repeats} rounds\n")
    print(df.to_markdown(index=False, floatfmt=".3g"))
    if args.csv:
        df.to_csv(args.csv, index=False)
    if (df.N == GOAL_N).any():
        table = goals(df)
        print(f"\nGoal: ours <= {GOAL_RATIO}x prob50 at N={GOAL_N}, tau={GOAL_TAU}, "
              f"forward and forward+backward; |P - matrix_lse| <= {GOAL_DIFF:g} and finite at every tau\n")
        print(table.to_markdown(index=False, floatfmt=".3g"))
        print(f"\ngoal met: {goal_met(table)}")


if __name__ == "__main__":
    main()
