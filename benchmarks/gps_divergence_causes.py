"""What makes a GPS fine-tuning seed diverge: variants x seeds against main's code.

Every variant of :data:`gpslib.gps_divergence.VARIANTS` (hard permutation from step 0, Gumbel
noise, Xavier initialisation, alpha, the Sinkformer's learning rate, the mixed base model)
is fine-tuned with ``reorder="gps"`` on each seed, beside ``"none"`` with the same seed and
base model (:func:`gpslib.gps_divergence.run_divergence_grid`, runs in parallel
single-threaded processes, reused when finished). A seed diverged when GPS's best
validation loss exceeds 1.5x none's. Writes into ``--out`` (default ``records/``):

* ``gps_divergence_causes.csv``: variant, what_changed, seed, val_loss_gps, val_loss_none,
  ratio, diverged;
* ``gps_divergence_causes_provenance.json``: git commit (and whether the tree was dirty),
  code fingerprint of :mod:`gpslib.finetune`, profile, seeds, every variant's overrides,
  torch / python versions, threads, workers, UTC date, wall time, the CSV's sha256.

Notebook 05 reads them with :func:`gpslib.gps_divergence.load_divergence_causes`.

Time: the cpu profile takes ~3 min per ``none`` run and ~5 min per ``gps`` run on one
thread of this project's 2-core machine (measured at commit 24d3a13): 13 variants x 5 seeds
plus 10 ``none`` runs is ~6 hours on one worker, ~3 on two. ``--smoke`` (test-size model, 2 seeds, 3
variants, 8 steps a run) takes well under a minute.

Usage:

    python benchmarks/gps_divergence_causes.py                        # cpu profile, writes records/
    python benchmarks/gps_divergence_causes.py --variants base st0n01 --seeds 0 1 --out /tmp/div
    python benchmarks/gps_divergence_causes.py --smoke --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _git import git_output  # noqa: E402

from gpslib.atomic_files import atomic_write, atomic_write_text  # noqa: E402
from gpslib.gps_divergence import CSV, PROVENANCE_JSON, SMOKE_VARIANTS, VARIANTS, run_divergence_grid  # noqa: E402
from gpslib.provenance import code_fingerprint  # noqa: E402
from gpslib.table3 import DIVERGENCE_FACTOR  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    names = [v.name for v in VARIANTS]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="smoke profile, seeds 0 1, variants "
                    f"{' '.join(SMOKE_VARIANTS)}; needs --out")
    ap.add_argument("--out", default=None, help="folder for the CSV and the JSON (default: records/)")
    ap.add_argument("--runs", default=None, help="where the runs go (default: runs/divergence/<profile>)")
    ap.add_argument("--variants", nargs="+", choices=names, default=None, help="default: all (smoke: three)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 3 4 (smoke: 0 1)")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: gpslib.parallel's)")
    args = ap.parse_args(argv)
    if args.smoke and args.out is None:
        ap.error("--smoke writes only into a folder given with --out, never into records/")
    profile = "smoke" if args.smoke else "cpu"
    chosen = args.variants or (list(SMOKE_VARIANTS) if args.smoke else names)
    variants = [v for v in VARIANTS if v.name in chosen]
    seeds = args.seeds or ([0, 1] if args.smoke else [0, 1, 2, 3, 4])
    out = Path(args.out) if args.out else ROOT / "records"
    runs = Path(args.runs) if args.runs else ROOT / "runs" / "divergence" / profile
    torch.set_num_threads(1)  # the runs' directories are keyed by the thread count: one, as Table 3's

    status = git_output("status", "--porcelain", "--untracked-files=no")
    prov = {"script": "benchmarks/gps_divergence_causes.py", "argv": sys.argv[1:] if argv is None else argv,
            "smoke": args.smoke, "profile": profile, "seeds": seeds,
            "variants": [dataclasses.asdict(v) for v in variants],
            "measure": "best validation loss of the run (done.json's best_val_loss)",
            "divergence_factor": DIVERGENCE_FACTOR,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_output("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status),
            "code_fingerprint": {"gpslib.finetune": code_fingerprint("gpslib.finetune")},
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "workers": args.workers, "files": {}, "wall_s": None}
    print(f"{profile}: {len(variants)} variants x {len(seeds)} seeds, runs in {runs}, writing to {out}", flush=True)
    start = time.perf_counter()
    table = run_divergence_grid(profile, runs, variants, seeds, args.workers)
    prov["wall_s"] = time.perf_counter() - start
    atomic_write(out / CSV, lambda tmp: table.to_csv(tmp, index=False))
    prov["files"][CSV] = {"rows": len(table), "sha256": hashlib.sha256((out / CSV).read_bytes()).hexdigest()}
    atomic_write_text(out / PROVENANCE_JSON, json.dumps(prov, indent=2, default=str) + "\n")
    print(table.to_markdown(index=False, floatfmt=".4f"))
    print(f"done in {prov['wall_s']:.1f} s: {CSV}, {PROVENANCE_JSON} in {out}", flush=True)
    return prov


if __name__ == "__main__":
    main()
