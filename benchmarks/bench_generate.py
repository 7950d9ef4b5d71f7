"""Batched generation against a per-sample loop, for evaluation (goal: >= 4x faster at batch 16).

Both decode the same 16 held-out ShapesVQA prompts greedily with the embedded base model
(random weights of its architecture if the trained one is not cached; speed does not depend
on the weights), through ``gpslib.generation.predict``: once with batch size 16 (left
padding, one ``generate`` call) and once with batch size 1 (sixteen calls). Prints best-of
wall times and the ratio, with one torch thread and with the default, and checks that both
produce the same answers. Run:

    .venv/bin/python benchmarks/bench_generate.py [--threads N] [--repeats R] [--reorder cosine]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import best_time, thread_settings  # noqa: E402

from gpslib.generation import predict  # noqa: E402
from gpslib.model import build_model, build_processor  # noqa: E402
from gpslib.shapes_vqa import shapes_vqa  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--reorder", default="none", help="none | cosine | gps | oracle")
    args = parser.parse_args()

    processor = build_processor("embedded")
    model = build_model("embedded", seed=0, reorder=args.reorder)
    rows = shapes_vqa(args.batch, seed=0, split="test", image_size=model.config.vision_config.image_size)

    def run(batch_size: int):
        return predict(model, processor, rows, batch_size=batch_size, max_new_tokens=args.max_new_tokens)

    print(f"{'threads':>7} | {'loop s':>8} | {'batched s':>9} | {'speedup':>8} | same answers")
    for threads in thread_settings(args.threads):
        torch.set_num_threads(threads)
        same = run(args.batch)["generated"].tolist() == run(1)["generated"].tolist()
        t_loop = best_time(lambda: run(1), args.repeats)
        t_batch = best_time(lambda: run(args.batch), args.repeats)
        print(f"{threads:>7} | {t_loop:8.3f} | {t_batch:9.3f} | {t_loop / t_batch:7.1f}x | {same}")
    print(f"goal: batched >= 4x the per-sample loop at batch {args.batch} "
          f"({args.max_new_tokens} new tokens, reorder={args.reorder})")


if __name__ == "__main__":
    main()
