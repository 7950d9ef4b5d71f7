"""Figure 5 at the paper's size, and Sinkhorn at N = 2048, on one CUDA GPU.

Two parts, run in this order, each stopped cleanly by a time budget:

(a) :func:`gpslib.permutation_learning.run_permutation_learning` with
    ``profile_settings("gps", "paper")``: N 800 tokens, d 2048, FFN 8192, 4 blocks, 50
    Sinkhorn iterations, batch 4, AdamW lr 1e-4, 1000 steps, tau 2.0 -> 0.1, Hungarian hard
    permutation after half the steps (the paper's settings, :class:`gpslib.gps.GPSSettings`);
    written to ``gps_paper_profile_history.csv``, one row per step plus ``step_s``, the wall
    seconds of that step;
(b) ``benchmarks/bench_sinkhorn.py``'s :func:`run` at N 2048, tau 2.0 / 0.1 / 0.01, B 4:
    forward, forward + backward, memory (peak of forward + backward), max |P - reference|
    for ours and the comparison implementations; written to ``sinkhorn_paper_size.csv``.

Provenance (git commit and whether the tree was dirty, code fingerprints, device name,
torch / CUDA versions, settings, wall times, UTC date, budget and where it stopped a part)
goes to ``gps_paper_size_provenance.json``; every file is written atomically
(:mod:`gpslib.atomic_files`), the JSON after each part. Notebook 03 reads them with
:func:`gpslib.paper_size_results.load_paper_size_results`.

Budget: ``--budget-s`` (default 450 s) bounds the whole script. Part (a) stops before the
step that would end later than ``budget - sinkhorn_reserve_s`` after the start (it always
runs at least one step) and records the steps done; part (b) skips the (N, tau) cases not
started by the end of the budget and records the first one skipped.

Expected time on one H100/H200 (estimated, no GPU was lent when this was written):
(a) ~3.0 TFLOP per step in float32 (147 M parameters over 3200 tokens, forward + backward)
is 60-90 ms at 35-50 TFLOP/s; the Sinkhorn forward + backward at B 4, N 800 ~15 ms; from
step 500 on, the Hungarian hard permutation runs on the CPU (scipy, 4 x 800 x 800): 0.17-0.47
s per step measured on this project's 2-core CPU machine. So ~50 s + 500 x 0.6 s = ~350 s
at worst, ~150 s at best. (b) well under 60 s (5 implementations x 3 tau, each call < 0.1 s
on the GPU; the textbook loop's autograd holds ~7 GB). Total < 7.5 min; the budget guard
makes 450 s the ceiling.

Usage:

    python benchmarks/paper_size_gps.py                          # CUDA, writes figures/
    python benchmarks/paper_size_gps.py --budget-s 300 --out /tmp/gps
    python benchmarks/paper_size_gps.py --smoke --out /tmp/smoke # CPU, seconds
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path
from unittest import mock

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_sinkhorn  # noqa: E402
from _git import git_output  # noqa: E402

import gpslib.permutation_learning as pl  # noqa: E402
from gpslib.atomic_files import atomic_write, atomic_write_text  # noqa: E402
from gpslib.paper_size_results import HISTORY_CSV, PROVENANCE_JSON, SINKHORN_CSV  # noqa: E402
from gpslib.provenance import code_fingerprint  # noqa: E402
from gpslib.run_profiles import profile_settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SINKHORN_TAUS = [2.0, 0.1, 0.01]
RUN_KEYS = ("n_tokens", "dim", "steps", "batch_size", "lr")  # of profile_settings("gps", ...) for part (a)
GPS_KEYS = ("ffn_dim", "num_layers", "sinkhorn_iters")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}"


class _Budget:
    """Stands in for ``tqdm`` in :mod:`gpslib.permutation_learning`: yields the steps until
    the next one would end after ``deadline`` (at least one), timing each step."""

    def __init__(self, deadline: float, report_every: int):
        self.deadline, self.report_every = deadline, report_every
        self.step_s: list[float] = []
        self.called = False
        self.stopped = False

    def __call__(self, iterable, disable=False, desc=""):
        self.called = True
        return self._steps(list(iterable), desc)

    def _steps(self, steps, desc):
        start = time.perf_counter()
        for i, step in enumerate(steps):
            now = time.perf_counter()
            if i and now + self.step_s[-1] > self.deadline:
                self.stopped = True
                print(f"{desc}: time budget reached after {i} of {len(steps)} steps", flush=True)
                return
            yield step
            self.step_s.append(time.perf_counter() - now)
            if (i + 1) % self.report_every == 0 or i + 1 == len(steps):
                done = time.perf_counter() - start
                print(f"{desc}: step {i + 1}/{len(steps)}, {done:.1f} s, last step {self.step_s[-1]:.3f} s",
                      flush=True)


def run_gps(settings: dict, device: torch.device, deadline: float, report_every: int) -> tuple[pd.DataFrame, dict]:
    """Part (a): the profile's Figure 5 run, stopped by ``deadline``; (history, record)."""
    gps = {k: settings[k] for k in GPS_KEYS}
    kwargs = {k: settings[k] for k in RUN_KEYS}
    budget = _Budget(deadline, report_every)
    t0 = time.perf_counter()
    with mock.patch.object(pl, "tqdm", budget):
        df = pl.run_permutation_learning(**kwargs, gps=gps, task="fixed_batch", device=device, progress=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    if not budget.called:
        raise RuntimeError("run_permutation_learning no longer loops over tqdm(range(steps)): "
                           "the budget guard of this script could not attach")
    df["step_s"] = budget.step_s[: len(df)]
    last = df.iloc[-1]
    hard = df.step > settings["steps"] * df.attrs["settings"]["gps"]["hard_after"]  # straight-through steps
    record = {"profile_settings": {k: settings[k] for k in RUN_KEYS + GPS_KEYS}, "settings": df.attrs["settings"],
              "steps_planned": settings["steps"], "steps_done": len(df), "stopped_by_budget": budget.stopped,
              "wall_s": wall,
              "final_accuracy": float(last.accuracy), "final_loss": float(last.loss),
              "final_valid_fraction": float(last.valid_fraction),
              "final_eval_accuracy": df.attrs["final_eval_accuracy"], "final_eval_exact": df.attrs["final_eval_exact"],
              "mean_step_s_soft": float(df.step_s[~hard].mean()),
              "mean_step_s_hard": float(df.step_s[hard].mean()) if hard.any() else math.nan}
    if device.type == "cuda":
        record["peak_memory_MB"] = torch.cuda.max_memory_allocated(device) / 2**20
    return df, record


def run_sinkhorn(sizes: list[int], repeats: int, device: torch.device, deadline: float) -> tuple[pd.DataFrame, dict]:
    """Part (b): the Sinkhorn benchmark, cases not started by ``deadline`` skipped; (table, record)."""
    t0 = time.perf_counter()
    df = bench_sinkhorn.run(sizes, SINKHORN_TAUS, repeats, device, deadline=deadline)
    record = {"sizes": sizes, "taus": SINKHORN_TAUS, "methods": list(bench_sinkhorn.METHODS), "repeats": repeats,
              "batch": bench_sinkhorn.BATCH, "n_iters": bench_sinkhorn.N_ITERS, "rows": len(df),
              "stopped_at": df.attrs["stopped_at"], "wall_s": time.perf_counter() - t0}
    return df, record


def _write_csv(df: pd.DataFrame, path: Path) -> dict:
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
    return {"rows": len(df), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, the gps smoke profile, Sinkhorn at N 64; needs --out")
    ap.add_argument("--out", default=None, help="folder for the CSVs and the JSON (default: figures/)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="wall seconds for the whole script")
    ap.add_argument("--sinkhorn-reserve-s", type=float, default=60.0, help="of the budget, kept for part (b)")
    ap.add_argument("--sinkhorn-sizes", type=int, nargs="+", default=None, help="default: 2048 (64 with --smoke)")
    ap.add_argument("--repeats", type=int, default=None, help="Sinkhorn timing rounds (default 5, 1 with --smoke)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: 1 with --smoke, else torch's)")
    ap.add_argument("--skip-gps", action="store_true", help="run part (b) only")
    ap.add_argument("--skip-sinkhorn", action="store_true", help="run part (a) only")
    args = ap.parse_args(argv)
    if args.smoke and args.out is None:
        ap.error("--smoke writes only into a folder given with --out, never into figures/")
    if not args.budget_s >= 0:
        ap.error(f"--budget-s must be >= 0; got {args.budget_s}")
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here: the paper-size run needs one GPU "
                         "(use --smoke --out DIR for the CPU smoke size)")
    threads = args.threads or (1 if args.smoke else None)
    if threads is not None:
        torch.set_num_threads(threads)  # one thread: small sizes on a shared CPU are fastest so
    out = Path(args.out) if args.out else ROOT / "figures"
    profile = "smoke" if args.smoke else "paper"
    settings = profile_settings("gps", profile)
    sizes = args.sinkhorn_sizes or ([64] if args.smoke else [2048])
    repeats = args.repeats or (1 if args.smoke else 5)

    start = time.perf_counter()
    end = start + args.budget_s
    prov = {"script": "benchmarks/paper_size_gps.py", "argv": sys.argv[1:] if argv is None else argv,
            "smoke": args.smoke, "profile": profile,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_output("rev-parse", "HEAD"), "git_dirty": None,
            "code_fingerprint": {m: code_fingerprint(m) for m in ("gpslib.permutation_learning", "gpslib.sinkhorn")},
            "device": device.type, "device_name": _device_name(device), "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "budget_s": args.budget_s,
            "sinkhorn_reserve_s": args.sinkhorn_reserve_s, "gps": None, "sinkhorn": None, "files": {},
            "wall_s": None}
    status = git_output("status", "--porcelain", "--untracked-files=no")
    prov["git_dirty"] = None if status is None else bool(status)

    def save() -> None:
        prov["wall_s"] = time.perf_counter() - start
        atomic_write_text(out / PROVENANCE_JSON, json.dumps(prov, indent=2, default=str) + "\n")

    print(f"{profile}: device {prov['device_name']}, torch {prov['torch']}, budget {args.budget_s:.0f} s, "
          f"writing to {out}", flush=True)
    if not args.skip_gps:
        gps_deadline = end - (0.0 if args.skip_sinkhorn else args.sinkhorn_reserve_s)
        history, prov["gps"] = run_gps(settings, device, gps_deadline, 1 if args.smoke else 50)
        prov["files"][HISTORY_CSV] = _write_csv(history, out / HISTORY_CSV)
        save()
    if not args.skip_sinkhorn:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        table, prov["sinkhorn"] = run_sinkhorn(sizes, repeats, device, end)
        prov["files"][SINKHORN_CSV] = _write_csv(table, out / SINKHORN_CSV)
        save()
        if len(table):
            print(table.to_markdown(index=False, floatfmt=".3g"))
    save()
    print(f"done in {prov['wall_s']:.1f} s: {', '.join(prov['files'])}, {PROVENANCE_JSON} in {out}", flush=True)
    return prov


if __name__ == "__main__":
    main()
