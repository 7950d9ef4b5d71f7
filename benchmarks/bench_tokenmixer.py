"""TokenMixer speed at the paper's geometry: the batched torch path against the authors'-style loop.

Goal: the vectorised reordering at least 100x faster than the authors'-style
per-sample loop at B = 8, M = 576, N = 50, D = 2048; and the reorder cost per batch in ms.
Both sides start from the merged sequence (B, M + N, D), image tokens first, as the model holds
it after LLaVA has placed the image features, and both end with the reordered batch (B, M + N,
D) the language model reads. The vectorised side is the library's own path:
:func:`gpslib.tokenmixer.cosine_reorder`, then :func:`gpslib.prompt_layout.take_rows` (what
``reorder_inputs`` calls). The loop side is
:func:`gpslib.comparison_only.cosine_reorder_per_token` per sample, the sequence stacked token
by token, and the batch stacked. Both give the same sequences (checked). Best of ``--repeats``
runs, with one torch thread and with the default. Three ratios:

* ``order``: the rule alone, :func:`cosine_reorder` against the loop's order (the goal as it was
  first set, before it covered the whole reordering, and still kept);
* ``fresh``: the whole reordering, the batch written into a new tensor. At this geometry it is
  41 MB, above glibc's 32 MB ``mmap`` cap, so on a CPU every call maps fresh pages and pays a
  page fault per 4 kB: about half of this side's time (the row gather takes ~25 ms into a new
  tensor, ~7 ms into an existing one). The loop side pays the same for its batch, but its time
  is 100x larger, so the fault cost weighs on the ratio from one side only;
* ``reused``: the same, both sides writing the batch into a buffer allocated once, which is
  what a caching allocator (CUDA's) gives.

The ratios depend on the CPU, not only on the code: the loop's cost is elementwise (the
authors' broadcast ``F.cosine_similarity`` writes an (N, M, D) product per sample), the
vectorised rule's is the B x M x N x D multiply-adds of one batched matrix product, which no
implementation of the rule in float32 can skip. So the script also times that product alone
(``product ms``, with the GFLOP/s it reaches) and prints ``ceiling``: the loop's order time over
the product's, the largest ``order`` ratio this CPU allows. The same code can meet the goal on
one machine and miss it on another, and the loop's side is the one that moves: its
``F.cosine_similarity`` writes (N, M, D) float32 temporaries of 236 MB per sample, and most of
its time is the page faults of touching that fresh memory, which the machine (its kernel, its
hypervisor) prices. Two sessions on AMD EPYC machines measured the loop's order at 1.4-1.6 s
and at 2.9-5.0 s per batch at one thread, with the vectorised order at 17-20 ms in both (order
ratios 81-99x against 100-225x). So the script also prints that price: a new (N, M, D)
tensor filled, against an existing one filled; the first line names the CPU.

Run:

    .venv/bin/python benchmarks/bench_tokenmixer.py [--threads N] [--repeats R]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import best_time, machine, thread_settings  # noqa: E402

from gpslib.comparison_only import cosine_reorder_per_token  # noqa: E402
from gpslib.prompt_layout import take_rows  # noqa: E402
from gpslib.tokenmixer import cosine_reorder  # noqa: E402

B, M, N, D, THRESHOLD = 8, 576, 50, 2048, 0.1


def loop_orders(tokens: torch.Tensor) -> list[torch.Tensor]:
    """The authors'-style loop's order for each sample, (M+N,) each."""
    return [cosine_reorder_per_token(tokens[b, :M], tokens[b, M:], THRESHOLD, "before") for b in range(tokens.shape[0])]


def authors_style(tokens: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample the loop's order and the sequence stacked token by token; then the batch, (B, M+N, D).

    ``out``: a (B, M+N, D) buffer for the batch (None: a new tensor).
    """
    sequences = [torch.stack([tokens[b, i] for i in order.tolist()]) for b, order in enumerate(loop_orders(tokens))]
    return torch.stack(sequences) if out is None else torch.stack(sequences, out=out)


def vectorised_order(tokens: torch.Tensor) -> torch.Tensor:
    """The library's rule for the batch, on views of the merged sequence: (B, M+N) gather indices."""
    return cosine_reorder(tokens[:, :M], tokens[:, M:], THRESHOLD, "before")


def first_touch_ms(repeats: int) -> tuple[float, float]:
    """ms to fill a new (N, M, D) float32 tensor, and to fill one allocated once: the price of fresh pages."""
    reused = torch.empty(N, M, D)
    return (best_time(lambda: torch.empty(N, M, D).fill_(1.0), repeats) * 1e3,
            best_time(lambda: reused.fill_(1.0), repeats) * 1e3)


def product(tokens: torch.Tensor) -> torch.Tensor:
    """The (B, M, N) image-by-text dot products alone, as the library computes them: the work the rule cannot skip."""
    return tokens[:, :M] @ tokens[:, M:].transpose(-1, -2)


def vectorised(tokens: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The library's path: the order, then the rows read in it (:func:`take_rows`), (B, M+N, D).

    ``out``: a (B, M+N, D) buffer to gather into (None: :func:`take_rows`, a new tensor; the
    buffer variant is ``take_rows``'s single ``index_select`` with ``out=``).
    """
    order = vectorised_order(tokens)
    if out is None:
        return take_rows(tokens, order)
    b, t, d = tokens.shape
    rows = (order + torch.arange(b)[:, None] * t).view(-1)
    torch.index_select(tokens.reshape(-1, d), 0, rows, out=out.view(-1, d))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="only this torch thread count")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    image = torch.randn(B, M, D, generator=g)
    text = 0.05 * image[:, :N] + torch.randn(B, N, D, generator=g)  # correlated: some tokens pass the threshold
    tokens = torch.cat([image, text], dim=1)  # (B, M+N, D): the merged sequence, image tokens first
    fast_buffer, slow_buffer = torch.empty(B, M + N, D), torch.empty(B, M + N, D)
    fast, slow = vectorised(tokens), authors_style(tokens)
    if not torch.equal(torch.stack(loop_orders(tokens)), vectorised_order(tokens)):
        raise SystemExit("the vectorised order differs from the authors'-style loop's")
    if not (torch.equal(fast, slow) and torch.equal(vectorised(tokens, fast_buffer), fast)
            and torch.equal(authors_style(tokens, slow_buffer), slow)):
        raise SystemExit("the vectorised sequences differ from the authors'-style loop's")
    moved = (vectorised_order(tokens) != torch.arange(M + N)).float().mean()
    print(f"{machine()}\nB={B} M={M} N={N} D={D} threshold={THRESHOLD}: {moved:.1%} of positions change; orders "
          "and sequences identical")
    print(f"{'threads':>7} | {'loop order ms':>13} | {'order ms':>8} | {'x':>6} | {'product ms':>10} | {'GFLOP/s':>7} | "
          f"{'ceiling':>7} | {'loop ms':>8} | {'fresh ms':>8} | {'x':>6} | {'loop reused':>11} | {'reused ms':>9} | "
          f"{'x':>6}")
    speedups: dict[str, list[float]] = {"order": [], "fresh": [], "reused": []}
    for threads in thread_settings(args.threads):
        torch.set_num_threads(threads)
        loop_repeats = max(1, args.repeats // 2)
        t = {
            "order": best_time(lambda: vectorised_order(tokens), args.repeats),
            "product": best_time(lambda: product(tokens), args.repeats),
            "fresh": best_time(lambda: vectorised(tokens), args.repeats),
            "reused": best_time(lambda: vectorised(tokens, fast_buffer), args.repeats),
            "loop order": best_time(lambda: loop_orders(tokens), loop_repeats),
            "loop fresh": best_time(lambda: authors_style(tokens), loop_repeats),
            "loop reused": best_time(lambda: authors_style(tokens, slow_buffer), loop_repeats),
        }
        for kind in speedups:
            speedups[kind].append(t[f"loop {kind}"] / t[kind])
        ms = {k: v * 1e3 for k, v in t.items()}
        gflops, ceiling = 2 * B * M * N * D / t["product"] / 1e9, t["loop order"] / t["product"]
        print(f"{threads:>7} | {ms['loop order']:13.1f} | {ms['order']:8.2f} | {speedups['order'][-1]:5.1f}x | "
              f"{ms['product']:10.2f} | {gflops:7.1f} | {ceiling:6.1f}x | "
              f"{ms['loop fresh']:8.1f} | {ms['fresh']:8.2f} | {speedups['fresh'][-1]:5.1f}x | "
              f"{ms['loop reused']:11.1f} | {ms['reused']:9.2f} | {speedups['reused'][-1]:5.1f}x")
    print("'product ms': the (M, N) dot products alone; 'ceiling': loop order ms / product ms, the most 'order' can "
          "reach on this CPU")
    print("'order ms': the rule alone; 'fresh ms' / 'reused ms': the reorder cost per batch of 8 at the paper's "
          "geometry (order + reordered batch), into a new tensor / into a buffer allocated once")
    new_ms, reused_ms = first_touch_ms(args.repeats)
    print(f"page-fault price here (threads {torch.get_num_threads()}): a new ({N}, {M}, {D}) float32 tensor filled "
          f"{new_ms:.1f} ms, one allocated once filled {reused_ms:.1f} ms; the loop writes such temporaries per sample")
    for kind, values in speedups.items():
        print(f"goal (speedup >= 100x), {kind}: {'met' if min(values) >= 100 else 'missed'} "
              f"(min {min(values):.1f}x over the thread counts)")


if __name__ == "__main__":
    main()
