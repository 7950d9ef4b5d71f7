"""Rerun the trials for a base model that sees, and append them to records/base_model_trials.csv.

Each trial trains the profile's image-first base model with some PretrainConfig settings
changed and scores it on the same ShapesVQA test questions (gpslib.base_model_trials). The
default trials are the steps to the recipe the cpu profile uses, and two variants:

Recorded as rerun-<name> (rerun-baseline is their baseline in notebook 00's table):

    baseline            vision_steps 0,    question_mix uniform   (the recipe before the trials)
    vision_pretraining  vision_steps 1000, question_mix uniform
    recipe              vision_steps 1000, question_mix 1,2,1,1,2,2,1  (the cpu profile's before the
                        grounding loss)
    mix3_2500           recipe with question_mix 1,2,1,1,3,3,1, 2500 steps
    deeper              recipe with question_mix 1,2,1,1,3,3,1, text_layers 3, weight_decay 0.1
                        (the best single trial overall, 0.70 with seed 0; 0.61 with seed 1)
    long                recipe with 4000 steps, twice the budget (existence and relation stay
                        constant on seeds 0 and 1: not a plateau that more steps end)
    grounding           recipe with grounding_loss 0.1 (gpslib.answer_grounding)
    grounding_3000      grounding with 3000 steps
    position            grounding with question_mix 1,2,1,2,2,2,1 (position questions weighted 2,
                        after grounding's seed 1 answered position 0.648)
    position_3000       position with 3000 steps (the cpu profile's)

The trials before ``grounding`` set grounding_loss 0, and those without a number of steps of their own
set 2000, as they ran (the profile's 3000 came with ``position_3000``). A name the record already holds is
refused before training (pass --seed, or remove the old row first).

About 5-13 minutes a trial on one CPU thread (long: 16 minutes; two trials sharing the 2 cores). ``--smoke`` runs the smoke profile's test-size
model (seconds) into a scratch record, to check the script.

    python benchmarks/base_model_trials.py [--trials baseline,recipe] [--record PATH] [--smoke]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _git import git_output  # noqa: E402

from gpslib.base_model_trials import run_trial  # noqa: E402
from gpslib.runtime import setup  # noqa: E402

NO_GROUNDING = {"grounding_loss": 0.0}  # the trials before the grounding loss ran without it
STEPS_2000 = {"steps": 2000}  # the profile's steps until position_3000 (the trials must not inherit today's)
TRIALS = {
    "baseline": {"vision_steps": 0, "question_mix": "uniform", **NO_GROUNDING, **STEPS_2000},
    "vision_pretraining": {"vision_steps": 1000, "question_mix": "uniform", **NO_GROUNDING, **STEPS_2000},
    "recipe": {"vision_steps": 1000, "question_mix": "1,2,1,1,2,2,1", **NO_GROUNDING, **STEPS_2000},
    "mix3_2500": {"vision_steps": 1000, "question_mix": "1,2,1,1,3,3,1", "steps": 2500, **NO_GROUNDING},
    "deeper": {"vision_steps": 1000, "question_mix": "1,2,1,1,3,3,1", "text_layers": 3, "weight_decay": 0.1,
               **NO_GROUNDING, **STEPS_2000},
    "long": {"vision_steps": 1000, "question_mix": "1,2,1,1,2,2,1", "steps": 4000, **NO_GROUNDING},
    "grounding": {"vision_steps": 1000, "question_mix": "1,2,1,1,2,2,1", "grounding_loss": 0.1, **STEPS_2000},
    "grounding_3000": {"vision_steps": 1000, "question_mix": "1,2,1,1,2,2,1", "grounding_loss": 0.1, "steps": 3000},
    "position": {"vision_steps": 1000, "question_mix": "1,2,1,2,2,2,1", "grounding_loss": 0.1, **STEPS_2000},
    "position_3000": {"vision_steps": 1000, "question_mix": "1,2,1,2,2,2,1", "grounding_loss": 0.1, "steps": 3000},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", default=",".join(TRIALS), help=f"comma-separated names among {list(TRIALS)}")
    parser.add_argument("--record", default=None, help="CSV to append to (default records/base_model_trials.csv)")
    parser.add_argument("--seed", type=int, default=0, help="the base model's seed (recorded as -seed<N> when not 0)")
    parser.add_argument("--smoke", action="store_true", help="the smoke profile's test-size model, 2 vision steps, "
                                                             "16 test questions")
    args = parser.parse_args(argv)
    names = [n for n in args.trials.split(",") if n]
    unknown = [n for n in names if n not in TRIALS]
    if unknown or not names:
        parser.error(f"unknown trials {unknown}; valid ones are {list(TRIALS)}")
    if args.smoke and args.record is None:
        parser.error("--smoke writes a scratch record: give --record PATH")
    profile = "smoke" if args.smoke else "cpu"
    setup(profile, verbose=False)
    head = git_output("rev-parse", "--short", "HEAD") or "unknown"
    commit = head + (" (uncommitted changes)" if git_output("status", "--porcelain", "--untracked-files=no") else "")
    for name in names:
        overrides = dict(TRIALS[name])
        if args.smoke:  # the smoke profile's own 30 steps, 2 vision steps: seconds
            overrides = {**overrides, "vision_steps": min(2, overrides["vision_steps"])}
            overrides.pop("steps", None)
        tag = (f"-seed{args.seed}" if args.seed else "") + ("-smoke" if args.smoke else "")
        row = run_trial(f"rerun-{name}{tag}", overrides, profile=profile, seed=args.seed,
                        eval_samples=16 if args.smoke else 600, batch_size=16 if args.smoke else 100,
                        record=args.record, progress=not args.smoke, commit=commit)
        print(f"{row['trial']}: all {row['all']:.4f}, " + ", ".join(
            f"{t} {row[t]:.4f}" for t in ("colour", "shape", "count", "position", "existence", "relation")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
