"""Benchmark of Sinkhorn implementations, printed side by side in one run (issue 3, item 5).

For B = 4, N in {128, 576, 800, 2048} (``--quick``: {128, 800}), tau in {2.0, 0.1, 0.01},
log_alpha = randn / tau, 50 iterations:

* ``ours``      gpslib.sinkhorn.sinkhorn: forward in scaling form (the CPU path), autograd
                backward through the unrolled matrix loop;
* ``ours_me``   the same with ``memory_efficient=True`` (custom backward);
* ``ours_matrix`` the forward of the matrix loop alone (the path taken on CUDA, no host sync);
* ``authors``   the authors' clamped probability-domain loop with its early exit (b);
* ``prob50``    a fixed 50-iteration probability-domain loop without clamp (c);
* ``matrix_lse`` the textbook matrix logsumexp loop (d), the reference.

Columns: best-of-repeats forward time and forward + backward time (ms), memory kept for
backward (MB; the bytes of the tensors autograd saves, counted with saved_tensors_hooks
on CPU, ``max_memory_allocated`` of forward + backward on CUDA), max row error,
non-finite count, max |P - P_matrix_lse|. Usage:

    python benchmarks/bench_sinkhorn.py --quick --threads 1
    python benchmarks/bench_sinkhorn.py            # all N, default threads
"""

from __future__ import annotations

import argparse
import math
import time

import pandas as pd
import torch

import gpslib.sinkhorn as sk


def prob50(log_alpha: torch.Tensor, n_iters: int = 50, eps: float = 1e-8) -> torch.Tensor:
    """(c): exp, then a fixed number of row / column divisions; no clamp, no early exit."""
    alpha = log_alpha.exp()
    for _ in range(n_iters):
        alpha = alpha / (alpha.sum(dim=-1, keepdim=True) + eps)
        alpha = alpha / (alpha.sum(dim=-2, keepdim=True) + eps)
    return alpha


def _matrix_loop(la: torch.Tensor) -> torch.Tensor:
    """Our matrix-form loop (the CUDA path of sinkhorn), with autograd when la requires it."""
    return sk._iterate(la, 50, None, 10, grad=la.requires_grad)[0].exp()


METHODS = {
    "ours": lambda la: sk.sinkhorn(la, 50),
    "ours_me": lambda la: sk.sinkhorn(la, 50, memory_efficient=True),
    "ours_matrix": lambda la: _matrix_loop(la),
    "authors": lambda la: sk.sinkhorn_clamped_authors(la, 50),
    "prob50": prob50,
    "matrix_lse": lambda la: sk.sinkhorn_matrix_reference(la, 50),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best(fn, repeats: int, device: torch.device) -> float:
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def _backward_mb(method, la: torch.Tensor, w: torch.Tensor) -> float:
    x = la.clone().requires_grad_()
    if la.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        (method(x) * w).sum().backward()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = (method(x) * w).sum()
    out.backward()
    return sum(seen.values()) / 2**20


def run(ns, taus, repeats: int, device: torch.device, batch: int = 4) -> pd.DataFrame:
    rows = []
    for n in ns:
        g = torch.Generator().manual_seed(n)
        scores = torch.randn(batch, n, n, generator=g).to(device)  # (B, N, N)
        w = torch.randn(batch, n, n, generator=g).to(device)
        for tau in taus:
            la = scores / tau
            ref = sk.sinkhorn_matrix_reference(la, 50)
            for name, method in METHODS.items():
                with torch.no_grad():
                    P = method(la)
                    t_fwd = _best(lambda: method(la), repeats, device)

                def fwd_bwd():
                    x = la.clone().requires_grad_()
                    (method(x) * w).sum().backward()

                t_fb = _best(fwd_bwd, max(1, repeats - 1), device)
                rows.append({
                    "N": n, "tau": tau, "method": name, "fwd_ms": t_fwd, "fwd_bwd_ms": t_fb,
                    "bwd_mem_MB": _backward_mb(method, la, w),
                    "row_err": float(sk.row_error(P).nan_to_num(math.inf).max()),
                    "nonfinite": int((~torch.isfinite(P)).sum()),
                    "max_diff_vs_lse": float((P - ref).abs().nan_to_num(math.inf).max()),
                })
                print(rows[-1], flush=True)
            # the -80 floor inside the matrix loop's logsumexp: its effect on P and its speed-up
            with torch.no_grad():
                p_ours = _matrix_loop(la)
            old = sk.EXP_FLOOR
            sk.EXP_FLOOR = -math.inf
            try:
                with torch.no_grad():
                    t_nofloor = _best(lambda: _matrix_loop(la), repeats, device)
                    p_nofloor = _matrix_loop(la)
            finally:
                sk.EXP_FLOOR = old
            rows.append({"N": n, "tau": tau, "method": "ours_no_floor", "fwd_ms": t_nofloor,
                         "max_diff_vs_lse": float((p_nofloor - ref).abs().max()),
                         "row_err": float(sk.row_error(p_nofloor).max()),
                         "nonfinite": int((~torch.isfinite(p_nofloor)).sum()),
                         "floor_dP": float((p_nofloor - p_ours).abs().max())})
    return pd.DataFrame(rows)


def goals(df: pd.DataFrame) -> pd.DataFrame:
    """The issue's goals at N = 800 (or the largest N run), one row per tau."""
    n = 800 if (df.N == 800).any() else int(df.N.max())
    out = []
    for tau, d in df[df.N == n].groupby("tau"):
        m = d.set_index("method")
        out.append({
            "N": n, "tau": tau,
            "fwd ours/prob50": m.fwd_ms["ours"] / m.fwd_ms["prob50"],
            "fwd+bwd ours/prob50": m.fwd_bwd_ms["ours"] / m.fwd_bwd_ms["prob50"],
            "fwd+bwd ours_me/prob50": m.fwd_bwd_ms["ours_me"] / m.fwd_bwd_ms["prob50"],
            "<=1.5x": max(m.fwd_ms["ours"] / m.fwd_ms["prob50"],
                          m.fwd_bwd_ms["ours_me"] / m.fwd_bwd_ms["prob50"]) <= 1.5,
            "ours_me bwd MB": m.bwd_mem_MB["ours_me"], "<=50MB": m.bwd_mem_MB["ours_me"] <= 50,
            "ours vs lse": m.max_diff_vs_lse["ours"], "<=1e-5": m.max_diff_vs_lse["ours"] <= 1e-5,
            "ours finite": m.nonfinite["ours"] == 0 and m.nonfinite["ours_me"] == 0,
            "fwd matrix/prob50": m.fwd_ms["ours_matrix"] / m.fwd_ms["prob50"],
            "floor speed-up (matrix)": m.fwd_ms["ours_no_floor"] / m.fwd_ms["ours_matrix"],
            "floor |dP|": m.floor_dP["ours_no_floor"],
        })
    return pd.DataFrame(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N in {128, 800} only")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ns = [128, 800] if args.quick else [128, 576, 800, 2048]
    df = run(ns, [2.0, 0.1, 0.01], args.repeats, torch.device(args.device))
    print(f"\nthreads={torch.get_num_threads()} device={args.device} B=4 n_iters=50 best of {args.repeats}\n")
    print(df.to_markdown(index=False, floatfmt=".3g"))
    print("\nGoals (issue 3, item 5):\n")
    print(goals(df).to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
