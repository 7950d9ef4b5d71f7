"""Tests of gpslib.pretrain: Trainer-based pretraining, the two base models, the cache and the CLI (test size)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from gpslib import pretrain as pt
from gpslib import run_profiles
from gpslib.model import load_model
from gpslib.pretrain import PretrainConfig, embedded_cache_dir, layout_for_step
from gpslib.reordering_config import LAYOUTS

TINY = dict(size="test", steps=6, batch_size=4, lr=3e-3, warmup=1)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPSLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_pretraining_lowers_the_loss_and_saves_a_model_that_loads_with_the_same_logits(cache, train_batch):
    config = PretrainConfig(**{**TINY, "steps": 12})
    model, processor, hist = pt.pretrain(config, seed=0, progress=False)
    assert list(hist.columns[:4]) == ["step", "loss", "lr", "seconds"] and hist["step"].tolist() == list(range(1, 13))
    assert hist["loss"].iloc[-3:].mean() < hist["loss"].iloc[:3].mean() and not model.training
    path = embedded_cache_dir(0, TINY | {"steps": 12})
    info = json.loads((path / "train_info.json").read_text())
    assert info["steps"] == 12 and info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["torch_threads"] == torch.get_num_threads()
    assert pd.read_csv(path / "history.csv")["loss"].tolist() == pytest.approx(hist["loss"].tolist())
    loaded, _ = load_model(path)
    batch = {k: train_batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels")}
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".") or p.name.endswith(".partial")]


def test_vision_pretraining_lowers_the_patch_label_loss_and_changes_only_the_vision_tower(cache):
    config = PretrainConfig(**{**TINY, "vision_steps": 24, "batch_size": 8})
    model = pt.build_model("test", seed=0, reorder="none")
    before = _weights(model)
    hist = pt.pretrain_vision_tower(model, pt.build_processor("test"), config, seed=0, progress=False)
    assert hist["step"].tolist() == list(range(1, 25))
    assert hist["vision_loss"].iloc[-4:].mean() < 0.8 * hist["vision_loss"].iloc[:4].mean()
    changed = {k for k, v in _weights(model).items() if not torch.equal(v, before[k])}
    assert changed and all("vision_tower" in k for k in changed)


def test_a_model_with_vision_steps_saves_both_histories_and_their_times(cache):
    config = PretrainConfig(**{**TINY, "vision_steps": 3, "question_mix": "0,1,0,0,0,0,0"})
    pt.pretrain(config, seed=0, progress=False)
    path = embedded_cache_dir(0, dataclasses.asdict(config))
    info = json.loads((path / "train_info.json").read_text())
    assert pd.read_csv(path / "vision_history.csv")["step"].tolist() == [1, 2, 3]
    assert info["total_seconds"] == pytest.approx(info["seconds"] + info["vision_seconds"]) and info["vision_seconds"] > 0


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_weights(cache, monkeypatch):
    config = PretrainConfig(**TINY, vision_steps=2, question_mix="1,2,1,1,2,2,1")
    reference, _, _ = pt.pretrain(config, seed=0, progress=False, cache_dir=cache / "ref", checkpoint_every=2)

    class Interrupt(Exception):
        pass

    real = pt._Schedule.on_step_end

    def stop_at_five(self, args, state, control, **kwargs):
        real(self, args, state, control, **kwargs)
        if state.global_step == 5:
            raise Interrupt

    monkeypatch.setattr(pt._Schedule, "on_step_end", stop_at_five)
    with pytest.raises(Interrupt):
        pt.pretrain(config, seed=0, progress=False, cache_dir=cache / "run", checkpoint_every=2)
    monkeypatch.setattr(pt._Schedule, "on_step_end", real)
    assert (cache / "run.partial" / "checkpoints" / "checkpoint-4").is_dir() and not (cache / "run").exists()
    resumed, _, hist = pt.pretrain(config, seed=0, progress=False, cache_dir=cache / "run", checkpoint_every=2)
    assert json.loads((cache / "run" / "train_info.json").read_text())["resumed_from"] == "checkpoint-4"
    ref, got = _weights(reference), _weights(resumed)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert not (cache / "run.partial").exists()
    vision = [pd.read_csv(cache / name / "vision_history.csv")["vision_loss"].tolist() for name in ("run", "ref")]
    assert vision[0] == vision[1]


def test_the_mixed_model_continues_the_image_first_one_on_every_layout(cache, monkeypatch):
    monkeypatch.setitem(run_profiles.SETTINGS["pretrain"], "smoke", {
        "image_first": TINY, "mixed": TINY | {"steps": 8, "layouts": "mixed", "max_gap": 1024, "init": "image_first"},
        "eval_samples": 4, "eval_batch_size": 4, "eval_max_new_tokens": 4})
    first = pt.base_model_dir("smoke", progress=False)
    mixed = pt.base_model_dir("smoke", base="mixed", progress=False)
    assert first != mixed and os.path.isdir(first)
    hist = pd.read_csv(os.path.join(mixed, "history.csv"))
    expected = [layout_for_step(s - 1, 0, 1024) for s in hist["step"]]
    assert hist["layout"].tolist() == [e["layout"] for e in expected]
    assert hist["gap"].tolist() == [e["position_gap"] for e in expected]
    model, _ = load_model(mixed)
    assert type(model).__name__ == "LlavaForConditionalGeneration"  # saved plain, whatever it trained on


def test_the_grounding_loss_adds_its_weighted_term_to_the_language_loss_and_logs_it(cache):
    plain_config = PretrainConfig(**{**TINY, "steps": 2, "question_mix": "0,1,0,0,1,0,0"})
    _, _, plain = pt.pretrain(plain_config, seed=0, progress=False)
    grounded_config = dataclasses.replace(plain_config, grounding_loss=0.5, grounding_head=1)
    model, _, hist = pt.pretrain(grounded_config, seed=0, progress=False)
    assert "grounding_loss" not in plain and hist["grounding_loss"].gt(0).all()
    # step 1: same weights, same batch; the logged loss is the language loss + 0.5 x the grounding term
    assert hist["loss"].iloc[0] == pytest.approx(plain["loss"].iloc[0] + 0.5 * hist["grounding_loss"].iloc[0], abs=1e-4)
    saved = pd.read_csv(embedded_cache_dir(0, dataclasses.asdict(grounded_config)) / "history.csv")
    assert saved["grounding_loss"].tolist() == pytest.approx(hist["grounding_loss"].tolist())
    assert model.config.text_config._attn_implementation != "eager"  # a plain model: inference as any other


def test_a_grounding_head_the_model_lacks_is_named_before_the_vision_tower_trains(cache, monkeypatch):
    monkeypatch.setattr(pt, "pretrain_vision_tower", lambda *a, **k: pytest.fail("trained before the check"))
    with pytest.raises(ValueError, match="grounding head 9"):
        pt.pretrain(PretrainConfig(**{**TINY, "steps": 1, "vision_steps": 5, "grounding_loss": 1.0,
                                      "grounding_head": 9}), seed=0, progress=False)


def test_a_dataloader_worker_trains_the_same_weights_as_drawing_in_the_training_process(cache):
    config = TINY | {"vision_steps": 2, "question_mix": "1,2,1,1,3,3,1"}
    alone, _, hist_alone = pt.pretrain(PretrainConfig(**config), seed=0, progress=False, save=False)
    beside, _, hist_beside = pt.pretrain(PretrainConfig(**config, dataloader_workers=1), seed=0, progress=False,
                                         save=False)
    assert hist_alone["loss"].tolist() == hist_beside["loss"].tolist()
    assert all(torch.equal(a, b) for a, b in zip(alone.state_dict().values(), beside.state_dict().values()))


def test_text_layers_gives_a_deeper_language_model_that_the_mixed_continuation_keeps(cache, monkeypatch):
    deep = TINY | {"text_layers": 3}
    monkeypatch.setitem(run_profiles.SETTINGS["pretrain"], "smoke", {
        "image_first": deep, "mixed": deep | {"steps": 2, "layouts": "mixed", "max_gap": 16, "init": "image_first"},
        "eval_samples": 4, "eval_batch_size": 4, "eval_max_new_tokens": 4})
    shallow = pt.build_model("test", seed=0).config.text_config.num_hidden_layers
    for base in ("image_first", "mixed"):
        model, _ = load_model(pt.base_model_dir("smoke", base=base, progress=False))
        assert model.config.text_config.num_hidden_layers == 3 != shallow
    monkeypatch.setitem(run_profiles.SETTINGS["pretrain"]["smoke"], "mixed",
                        deep | {"text_layers": 4, "steps": 2, "init": "image_first"})
    with pytest.raises(ValueError, match="text_layers=4 but the initial model .* has 3"):
        pt.base_model_dir("smoke", base="mixed", progress=False)


def test_layouts_for_steps_cover_every_layout_and_every_scale_of_gap_and_repeat():
    draws = [layout_for_step(s, 0, 1024) for s in range(3000)]
    assert {d["layout"] for d in draws} == set(LAYOUTS)
    gaps = np.array([d["position_gap"] for d in draws])
    assert 0.2 < (gaps == 0).mean() < 0.3 and gaps.max() <= 1024
    for low, high in ((1, 16), (16, 128), (128, 1025)):  # log-uniform: each band sees its share
        assert ((gaps >= low) & (gaps < high)).mean() > 0.15
    assert [layout_for_step(s, 0, 1024) for s in range(50)] == draws[:50]
    assert [layout_for_step(s, 1, 1024) for s in range(50)] != draws[:50]
    assert all(layout_for_step(s, 0, 0)["position_gap"] == 0 for s in range(20))


def test_ensure_base_model_trains_once_then_reuses_the_cache(monkeypatch):
    monkeypatch.setitem(run_profiles.SETTINGS["pretrain"], "smoke", {
        "image_first": TINY, "mixed": TINY, "eval_samples": 4, "eval_batch_size": 4, "eval_max_new_tokens": 4})
    calls = []
    real = pt.pretrain
    monkeypatch.setattr(pt, "pretrain", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    first, _ = pt.ensure_base_model("smoke", progress=False)
    second, _ = pt.ensure_base_model("smoke", progress=False)
    assert len(calls) == 1
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))


def test_cache_entries_differ_by_profile_settings_seed_threads_and_code(monkeypatch):
    smoke, cpu = pt.train_settings("smoke"), pt.train_settings("cpu")
    assert embedded_cache_dir(0, smoke) != embedded_cache_dir(0, cpu)
    assert embedded_cache_dir(0, cpu) != embedded_cache_dir(0, dict(cpu, steps=cpu["steps"] + 1))
    assert embedded_cache_dir(0, cpu) == embedded_cache_dir(0, dict(cpu, eval_samples=1))
    assert embedded_cache_dir(0, cpu) != embedded_cache_dir(1, cpu)
    assert embedded_cache_dir(0, cpu) != embedded_cache_dir(0, pt.train_settings("cpu", "mixed"))
    before = embedded_cache_dir(0, cpu)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)
    assert embedded_cache_dir(0, cpu) != before
    monkeypatch.undo()
    monkeypatch.setattr(pt, "code_fingerprint", lambda name: "another code")
    assert embedded_cache_dir(0, cpu) != before


@pytest.mark.parametrize("kwargs, word", [
    (dict(size="huge"), "huge"), (dict(steps=0), "steps=0"), (dict(batch_size=-2), "batch_size=-2"),
    (dict(lr=0.0), "lr=0.0"), (dict(warmup=99, steps=5), "warmup=99"),
    (dict(vision_lr_scale=-1.0), "vision_lr_scale=-1.0"), (dict(layouts="all"), "layouts='all'"),
    (dict(max_gap=-3), "max_gap=-3"), (dict(init="scratch"), "init='scratch'"),
    (dict(vision_steps=-1), "vision_steps=-1"), (dict(question_mix="1,2"), "'1,2'"),
    (dict(text_layers=0), "text_layers=0"), (dict(text_layers=2.5), "text_layers=2.5"),
    (dict(grounding_loss=-0.1), "grounding_loss=-0.1"), (dict(grounding_head=-1), "grounding_head=-1"),
    (dict(grounding_loss=float("inf")), "grounding_loss=inf"),
    (dict(grounding_loss=0.1, layouts="mixed"), "layouts='mixed'"),
])
def test_bad_settings_raise_value_errors_naming_them(kwargs, word):
    with pytest.raises(ValueError, match=word):
        PretrainConfig(**{**TINY, **kwargs}).validate()


def test_unknown_profiles_and_base_models_are_named():
    with pytest.raises(ValueError, match="nope"):
        pt.ensure_base_model("nope")
    with pytest.raises(ValueError, match="'both'"):
        pt.train_settings("cpu", "both")


@pytest.mark.slow
def test_cli_smoke_end_to_end(cache):
    env = dict(os.environ, GPSLIB_CACHE=str(cache), GPSLIB_THREADS="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "gpslib.pretrain", "--profile", "smoke", "--no-progress"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"trained: {embedded_cache_dir(0, pt.train_settings('smoke'), cache)} " in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0 and "cached:" in second.stdout
    short = subprocess.run(cmd + ["--steps", "2", "--batch-size", "4", "--warmup", "1"], capture_output=True,
                           text=True, env=env, timeout=600)
    assert short.returncode == 0 and "trained:" in short.stdout and "2 steps" in short.stdout
    bad = subprocess.run(cmd[:3] + ["--profile", "nope"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "nope" in bad.stderr
    bad = subprocess.run(cmd + ["--lr", "0"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "lr=0.0" in bad.stderr


class _Stop(Exception):
    pass


def _main_config(monkeypatch, argv):
    """The config and seed ``pt.main(argv)`` would pretrain with (stopped before training)."""
    seen = []

    def record(config, seed, profile, progress):
        seen.append((config, seed, profile))
        raise _Stop

    monkeypatch.setattr(pt, "pretrain", record)
    with pytest.raises(_Stop):
        pt.main(argv + ["--force", "--no-progress"])
    return seen[0]


def test_cli_without_setting_flags_trains_what_ensure_base_model_finds(monkeypatch):
    for base in pt.BASE_MODELS:
        config, seed, profile = _main_config(monkeypatch, ["--profile", "smoke", "--base", base])
        assert config == PretrainConfig(**pt.train_settings("smoke", base)) and (seed, profile) == (0, "smoke")
        assert embedded_cache_dir(seed, dataclasses.asdict(config)) == embedded_cache_dir(0, pt.train_settings(
            "smoke", base))


def test_cli_flags_override_the_profile_settings(monkeypatch):
    config, seed, _ = _main_config(monkeypatch, ["--profile", "smoke", "--base", "mixed", "--steps", "7",
                                                 "--max-gap", "64", "--init", "none", "--seed", "3"])
    assert config == PretrainConfig(**{**pt.train_settings("smoke", "mixed"), "steps": 7, "max_gap": 64, "init": None})
    assert seed == 3


def test_cli_help_shows_every_setting_with_choices_and_the_profile_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        pt.main(["--profile", "smoke", "--base", "mixed", "--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    for name in [f.name for f in dataclasses.fields(PretrainConfig)] + ["profile", "base", "seed", "force", "threads",
                                                                          "no_progress"]:
        assert f"--{name}" in text, name
    assert "--layouts {image_first,mixed}" in text and "--size {embedded,test,mirror}" in text
    assert "(default: 10)" in text and "smoke profile's mixed model" in text  # the smoke mixed model's 10 steps


@pytest.mark.parametrize("argv, message", [
    (["--profile", "paper"], "nothing to pretrain"), (["--base", "both"], "'both'"), (["--steps", "0"], "steps=0"),
    (["--init", "scratch"], "invalid choice: 'scratch'"), (["--size", "huge"], "invalid choice: 'huge'"),
    (["--threads", "0"], "threads must be >= 1"), (["--epochs", "3"], "unrecognized arguments: --epochs 3"),
])
def test_cli_usage_errors_exit_2_naming_the_value_before_any_training(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(pt, "pretrain", lambda *a, **k: pytest.fail("trained despite a bad value"))
    with pytest.raises(SystemExit) as exit_info:
        pt.main(["--profile", "smoke", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
