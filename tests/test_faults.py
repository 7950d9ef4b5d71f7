"""Fault injection: a fine-tune killed at random points, and run_all.sh interrupted mid-notebook.

Fine-tuning: a tiny GPS run (5 epochs of one optimizer step each, so every step is
evaluated and checkpointed) is killed with SIGKILL at a seeded choice of points, among them
a kill while a checkpoint is being written, and resumed after each kill; its records and
weights must equal an uninterrupted run's with the same seed. Trainer's resume is bit-exact
on the CPU here: the checkpoint holds the weights, the optimizer and scheduler states and
the RNG states (torch, numpy, python) taken after the epoch's evaluation, the data order of
an epoch comes from a sampler seeded by ``seed`` and the epoch, and an epoch boundary
needs no fast-forwarding; so the comparisons are exact (tolerance 0). GPS is the strategy
that needs the most state back: Gumbel noise from the torch RNG, a tau schedule that
follows the global step, and Sinkformer weights trained in full beside LoRA.

The killed runs are forked from this process (fast: no fresh import of torch), with a
watchdog; the final resume is a fresh process through the CLI.

run_all.sh: a notebook run is interrupted with SIGINT or SIGTERM to run_all.sh's process
group, or SIGTERM to the script alone, while the second of three notebooks runs; the publish
folder must hold exactly the complete files of the notebook that finished (and the files
that were there before), no temporary files and nothing of the interrupted notebook, the
staging folder must be gone and no papermill left running.
"""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback
from transformers.trainer_callback import TrainerState

from conftest import WRITE, cli_flags, notebook
from gpslib import finetune as ft
from gpslib.run_profiles import profile_settings

ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("GPSLIB_FAULT_SEED", "13"))  # the seeded choice of kill points (try others)
STEPS = 5  # one step per epoch: train_samples == batch_size, grad_accum 1

# the kinds of kill points: where the process dies at step k
KILL_POINTS = {
    "after_step": "after optimizer step k, before epoch k is evaluated",
    "after_evaluation": "after epoch k's evaluation wrote epochs.json, before checkpoint-k",
    "checkpoint_without_state": "while checkpoint-k is written: weights, optimizer, RNG there, no trainer_state.json",
    "truncated_state": "while checkpoint-k's trainer_state.json is written: half of it on disk",
    "after_checkpoint": "right after checkpoint-k is complete",
    "after_training": "after the last step, before adapter/ and done.json are written",
}


# the run, as FinetuneConfig fields and as the CLI's flags (smoke profile + these)
def _settings(base_dir):
    return dict(model=str(base_dir), model_profile="smoke", reorder="gps", train_samples=4, eval_samples=4,
                gen_samples=2, epochs=STEPS, batch_size=4, grad_accum=1, max_new_tokens=4,
                early_stopping_patience=None, learning_rate=1e-2, seed=0,
                gps=dict(profile_settings("finetune", "smoke")["gps"]))  # what the CLI's --profile smoke gives


def _kill_plan(seed: int) -> list[tuple[str, int]]:
    """Four (kind, step) kill points in the order they happen: a kill while a checkpoint is
    written, and three other kinds drawn by ``seed``, at increasing steps."""
    rng = random.Random(seed)
    others = [k for k in KILL_POINTS if k != "checkpoint_without_state"]
    kinds = ["checkpoint_without_state"] + rng.sample(others, 3)
    timed = [k for k in kinds if k != "after_training"]
    steps = sorted(rng.sample(range(1, STEPS + 1), len(timed)))
    rng.shuffle(timed)
    plan = list(zip(timed, steps))
    if "after_training" in kinds:
        plan.append(("after_training", STEPS))
    return plan


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _killed_run(config, run_dir: Path, kind: str, step: int, timeout: float = 300) -> int:
    """Fork a process that runs ``finetune`` and SIGKILLs itself at (kind, step); its wait status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            class Kill(TrainerCallback):
                def on_step_end(self, args, state, control, **kwargs):
                    if kind == "after_step" and state.global_step == step:
                        _die()

                def on_evaluate(self, args, state, control, **kwargs):  # runs after EpochMetrics
                    if kind == "after_evaluation" and state.global_step == step:
                        _die()

                def on_save(self, args, state, control, **kwargs):
                    if kind == "after_checkpoint" and state.global_step == step:
                        _die()

                def on_train_end(self, args, state, control, **kwargs):
                    if kind == "after_training":
                        _die()

            save_to_json = TrainerState.save_to_json

            def save_state(self, json_path):
                if Path(json_path).parent.name == f"checkpoint-{step}":
                    if kind == "checkpoint_without_state":
                        _die()
                    if kind == "truncated_state":
                        text = json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)
                        with open(json_path, "w") as fh:
                            fh.write(text[: len(text) // 2])
                        _die()
                save_to_json(self, json_path)

            TrainerState.save_to_json = save_state
            callbacks = ft._callbacks
            ft._callbacks = lambda *a, **k: callbacks(*a, **k) + [Kill()]
            ft.finetune(config, run_dir, progress=False)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(1)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the run to be killed at {kind} step {step} hung for {timeout} s")
        time.sleep(0.05)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "adapter_model.safetensors")


def test_kill_plan_is_seeded_and_includes_a_kill_during_a_checkpoint_write():
    plan = _kill_plan(SEED)
    assert plan == _kill_plan(SEED) and len(plan) == 4
    assert "checkpoint_without_state" in dict(plan)
    timed = [s for kind, s in plan if kind != "after_training"]
    assert timed == sorted(set(timed))  # each kill lies beyond the checkpoint the run resumes from
    assert plan[-1][0] == "after_training" or "after_training" not in dict(plan)


@pytest.mark.slow
def test_a_run_killed_four_times_and_resumed_equals_an_uninterrupted_run(base_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    config = ft.FinetuneConfig(**_settings(base_dir)).validate()
    reference = tmp_path / "reference"
    ft.finetune(config, reference, progress=False)

    run_dir = tmp_path / "killed"
    plan = _kill_plan(SEED)
    for kind, step in plan:
        status = _killed_run(config, run_dir, kind, step)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (kind, step, status)
        assert not (run_dir / "done.json").exists()
        if kind == "checkpoint_without_state":  # the state that blocked every resume on main
            torn = run_dir / "checkpoints" / f"checkpoint-{step}"
            assert (torn / "adapter_model.safetensors").exists() and (torn / "optimizer.pt").exists()
            assert not (torn / "trainer_state.json").exists()

    # the last resume: a fresh process, through the CLI, with the same settings
    settings = _settings(base_dir)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "gpslib.finetune", "--profile", "smoke", "--run-dir", str(run_dir), "--no-progress",
         *cli_flags(settings)],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]

    plan_text = f"kill plan {plan}"
    assert json.loads((run_dir / "epochs.json").read_text()) == json.loads((reference / "epochs.json").read_text()), \
        plan_text
    assert json.loads((run_dir / "done.json").read_text()) == json.loads((reference / "done.json").read_text())
    assert json.loads((run_dir / "config.json").read_text())["settings"] == \
        json.loads((reference / "config.json").read_text())["settings"]
    last = f"checkpoints/checkpoint-{STEPS}"
    for sub in ("adapter", last):
        ours, theirs = _weights(run_dir / sub), _weights(reference / sub)
        assert ours.keys() == theirs.keys()
        for name in theirs:  # exact: Trainer's resume is bit-exact on the CPU (module docstring)
            assert torch.equal(ours[name], theirs[name]), (plan_text, sub, name)
    trained = _weights(reference / last)
    assert any(float(t.abs().max()) > 0 for n, t in trained.items() if "lora_B" in n)  # not a trivial match
    assert any("reorder_gps" in n for n in trained)  # the Sinkformer's weights are compared too


# --------------------------------------------------------------------------- run_all.sh interrupted
def _default_signal_handlers() -> None:
    """In the child: INT, TERM and HUP back to their defaults, as a terminal gives them.

    A test suite started as a background job of a non-interactive shell (``cmd &``, ``nohup``)
    inherits SIGINT ignored, and bash cannot trap a signal ignored when it starts: the
    SIGINT cases would then test the harness, not run_all.sh.
    """
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _papermills_running(notebooks: Path) -> list[str]:
    """Command lines of live papermill processes that run a notebook under ``notebooks``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "papermill" in text and str(notebooks) in text:
            found.append(text)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("target, sig", [("group", signal.SIGINT), ("group", signal.SIGTERM),
                                         ("script", signal.SIGTERM)],
                         ids=["SIGINT-to-group", "SIGTERM-to-group", "SIGTERM-to-script"])
def test_an_interrupted_run_all_publishes_only_the_finished_notebooks_files(tmp_path, target, sig):
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("run_all.sh is exercised from its own .venv")
    nbs, publish, runs = tmp_path / "notebooks", tmp_path / "figures", tmp_path / "runs"
    nbs.mkdir()
    publish.mkdir()
    (publish / "table_b.csv").write_text("good old table\n")
    started = tmp_path / "02_started"
    notebook(nbs / "01_ok.ipynb", WRITE.format(value=1, name="table_a"))
    # writes its table into staging, says so, then runs until interrupted
    notebook(nbs / "02_interrupted.ipynb", WRITE.format(value=2, name="table_b"),
             f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\ntime.sleep(300)")
    notebook(nbs / "03_never.ipynb", WRITE.format(value=3, name="table_c"))
    env = dict(os.environ, GPSLIB_NOTEBOOKS_DIR=str(nbs), GPSLIB_PUBLISH_DIR=str(publish), GPSLIB_RUNS_DIR=str(runs),
               OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([str(ROOT / "run_all.sh"), "--profile", "cpu"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_signal_handlers)
    try:
        deadline = time.monotonic() + 300
        while not started.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "notebook 02 never started"
            time.sleep(0.2)
        if target == "group":  # what Ctrl-C in a terminal, or a job scheduler's kill, does
            os.killpg(proc.pid, sig)
        else:  # what timeout(1) or kill PID does: papermill must not run on, orphaned
            os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=180)  # the notebook sleeps 300 s: a run left going still fails
        assert _papermills_running(nbs) == []
    finally:  # the whole group: an orphaned papermill outlives the script in it
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 128 + sig, out + err
    assert "run_all.sh: interrupted" in err and "while running 02_interrupted.ipynb" in err, err
    # exactly the complete files of the notebook that finished, and what was there before
    assert sorted(p.name for p in publish.iterdir()) == ["manifest.json", "table_a.csv", "table_a.md", "table_a.tex", "table_b.csv"]
    assert (publish / "table_a.csv").read_text().splitlines() == [",v", "0,1"]
    assert (publish / "table_b.csv").read_text() == "good old table\n"
    assert not (runs / "cpu" / "staging").exists() or not any((runs / "cpu" / "staging").iterdir())
    assert not (runs / "cpu" / "03_never.ipynb").exists()
