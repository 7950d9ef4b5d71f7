"""TokenMixer speed at the paper's geometry: the batched torch path against the authors'-style loop.

Goal (issue 12): the vectorised reordering (``cosine_reorder`` plus reading the sequence in its
order) at least 100x faster than the authors'-style per-sample loop
(:func:`gpslib.comparison_only.cosine_reorder_per_token`, then stacking the sequence) at
B = 8, M = 576, N = 50, D = 2048; and the reorder cost per batch in ms. Both give the same
order (checked). Both start from the merged sequence (B, M + N, D), image tokens first, as
the model holds it after LLaVA has placed the image features, and return it reordered. Best
of ``--repeats`` runs, with one torch thread and with the default.

The vectorised side is timed twice. ``fresh``: the reordered sequence goes into a new tensor,
41 MB at this geometry; on a CPU, glibc serves an allocation that large with a fresh ``mmap``
every time, so about half of the time is page faults (measured: the row gather takes 26 ms into
a new tensor, 3 ms into an existing one). ``reused``: the same gather into a buffer allocated
once, which is what a caching allocator (CUDA's) gives and what the loop's side cannot use (it
stacks token by token). The similarity matmul (about 15 ms of the rest) both sides compute. Run:

    .venv/bin/python benchmarks/bench_tokenmixer.py [--threads N] [--repeats R]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import best_time, thread_settings  # noqa: E402

from gpslib.comparison_only import cosine_reorder_per_token  # noqa: E402
from gpslib.tokenmixer import cosine_reorder  # noqa: E402

B, M, N, D, THRESHOLD = 8, 576, 50, 2048, 0.1


def authors_style(tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per sample: the authors'-style loop, then the sequence stacked token by token, (M+N, D) each."""
    out = []
    for b in range(tokens.shape[0]):
        order = cosine_reorder_per_token(tokens[b, :M], tokens[b, M:], THRESHOLD, "before")
        out.append(torch.stack([tokens[b, i] for i in order.tolist()]))
    return out


def vectorised(tokens: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``cosine_reorder`` for the batch (on views of the sequence), then one row gather: (B, M+N, D).

    ``out``: a (B*(M+N), D) buffer to gather into (None: a new tensor).
    """
    b, t, d = tokens.shape
    order = cosine_reorder(tokens[:, :M], tokens[:, M:], THRESHOLD, "before")  # (B, M+N)
    rows = (order + torch.arange(b)[:, None] * t).view(-1)  # (B*(M+N),)
    if out is None:
        return tokens.reshape(-1, d).index_select(0, rows).view(b, t, d)
    return torch.index_select(tokens.reshape(-1, d), 0, rows, out=out).view(b, t, d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="only this torch thread count")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    image = torch.randn(B, M, D, generator=g)
    text = 0.05 * image[:, :N] + torch.randn(B, N, D, generator=g)  # correlated: some tokens pass the threshold
    tokens = torch.cat([image, text], dim=1)  # (B, M+N, D): the merged sequence, image tokens first
    buffer = torch.empty(B * (M + N), D)
    fast, slow = vectorised(tokens), authors_style(tokens)
    if not torch.equal(vectorised(tokens, buffer), fast):
        raise SystemExit("the gather into a reused buffer differs from the gather into a new tensor")
    moved = (cosine_reorder(image, text, THRESHOLD, "before") != torch.arange(M + N)).float().mean()
    if not all(torch.equal(fast[b], slow[b]) for b in range(B)):
        raise SystemExit("the vectorised sequence differs from the authors'-style loop's")
    print(f"B={B} M={M} N={N} D={D} threshold={THRESHOLD}: {moved:.1%} of positions change; sequences identical")
    print(f"{'threads':>7} | {'loop ms':>9} | {'fresh ms':>9} | {'speedup':>8} | {'reused ms':>9} | {'speedup':>8}")
    speedups = {"fresh": [], "reused": []}
    for threads in thread_settings(args.threads):
        torch.set_num_threads(threads)
        t_fresh = best_time(lambda: vectorised(tokens), args.repeats)
        t_reused = best_time(lambda: vectorised(tokens, buffer), args.repeats)
        t_slow = best_time(lambda: authors_style(tokens), max(1, args.repeats // 2))
        speedups["fresh"].append(t_slow / t_fresh)
        speedups["reused"].append(t_slow / t_reused)
        print(f"{threads:>7} | {t_slow * 1e3:9.1f} | {t_fresh * 1e3:9.2f} | {t_slow / t_fresh:7.1f}x | "
              f"{t_reused * 1e3:9.2f} | {t_slow / t_reused:7.1f}x")
    print("'fresh ms' / 'reused ms': the reorder cost per batch of 8 at the paper's geometry, into a new tensor / "
          "into a buffer allocated once")
    for kind, values in speedups.items():
        print(f"goal (speedup >= 100x), {kind} output: {'met' if min(values) >= 100 else 'missed'} "
              f"(min {min(values):.1f}x over the thread counts)")


if __name__ == "__main__":
    main()
