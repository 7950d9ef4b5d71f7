"""Tests of gpslib.pretrain: training, the cache, evaluation and the CLI (test-size model, seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from gpslib import pretrain as pt
from gpslib import run_profiles
from gpslib.data import VQACollator
from gpslib.model import MODEL_SIZES, build_model, build_processor
from gpslib.pretrain import embedded_cache_dir
from gpslib.shapes_vqa import shapes_vqa
TINY = dict(size="test", steps=6, batch_size=4, lr=3e-3, warmup=1, weight_decay=0.0, grad_clip=1.0,
            vision_lr_scale=0.1)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPSLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_loss_decreases_on_a_fixed_batch():
    model, processor = build_model("test"), build_processor("test")
    ds = shapes_vqa(8, image_size=MODEL_SIZES["test"]["image_size"])
    batch = VQACollator(processor, "train")([ds[i] for i in range(8)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_pretrain_writes_history_info_and_a_loadable_model(cache):
    model, processor, hist = pt.pretrain(seed=0, progress=False, **TINY)
    assert list(hist.columns) == ["step", "loss", "lr", "seconds"] and len(hist) == TINY["steps"]
    assert hist["loss"].iloc[-1] < hist["loss"].iloc[0] and not model.training
    path = embedded_cache_dir(0, settings=TINY)
    info = json.loads((path / "train_info.json").read_text())
    assert info["steps"] == 6 and info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["torch_threads"] == 1 and info["seconds"] > 0
    assert pd.read_csv(path / "history.csv")["loss"].tolist() == pytest.approx(hist["loss"].tolist())
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_an_interrupted_run_resumes_from_its_checkpoint(cache, monkeypatch):
    real, calls = pt._rows, []

    def flaky(ds, start, stop):
        calls.append(start)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(ds, start, stop)

    monkeypatch.setattr(pt, "_rows", flaky)
    with pytest.raises(KeyboardInterrupt):
        pt.pretrain(seed=0, progress=False, checkpoint_every=3, **TINY)
    path = embedded_cache_dir(0, settings=TINY)
    assert not path.exists() and (path.with_name(path.name + ".partial") / "checkpoint.pt").exists()
    _, _, hist = pt.pretrain(seed=0, progress=False, checkpoint_every=3, **TINY)
    info = json.loads((path / "train_info.json").read_text())
    assert info["resumed_from_step"] == 3 and hist["step"].tolist() == list(range(1, 7))
    assert not path.with_name(path.name + ".partial").exists()


def test_ensure_base_model_trains_once_then_reuses_the_cache(monkeypatch):
    monkeypatch.setitem(run_profiles.SETTINGS["pretrain"], "smoke", dict(TINY, eval_samples=4))
    calls = []
    real = pt.pretrain
    monkeypatch.setattr(pt, "pretrain", lambda **kw: calls.append(kw) or real(**kw))
    first, _ = pt.ensure_base_model("smoke", progress=False)
    second, _ = pt.ensure_base_model("smoke", progress=False)
    assert len(calls) == 1
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_smoke_and_cpu_models_have_different_cache_entries():
    smoke, cpu = pt.train_settings("smoke"), pt.train_settings("cpu")
    assert embedded_cache_dir(0, settings=smoke) != embedded_cache_dir(0, settings=cpu)
    assert embedded_cache_dir(0, settings=cpu) != embedded_cache_dir(0, settings=dict(cpu, steps=cpu["steps"] + 1))
    assert embedded_cache_dir(0, settings=cpu) == embedded_cache_dir(0, settings=dict(cpu, eval_samples=1))
    assert embedded_cache_dir(0, cpu) != embedded_cache_dir(1, cpu)
    assert set(pt.train_settings("smoke")) == set(cpu)  # every training key is in the cache key


@pytest.mark.parametrize("kwargs, word", [
    (dict(size="huge"), "huge"), (dict(steps=0), "steps=0"), (dict(batch_size=-2), "batch_size=-2"),
    (dict(lr=0.0), "lr=0.0"), (dict(warmup=99, steps=5), "warmup=99"),
    (dict(vision_lr_scale=-1.0), "vision_lr_scale=-1.0"),
])
def test_bad_arguments_raise_value_errors_naming_them(kwargs, word):
    with pytest.raises(ValueError, match=word):
        pt.pretrain(**{**TINY, **kwargs, "save": False, "progress": False})
    with pytest.raises(ValueError, match="nope"):
        pt.ensure_base_model("nope")


@pytest.mark.slow
def test_cli_smoke_end_to_end(cache):
    env = dict(os.environ, GPSLIB_CACHE=str(cache), GPSLIB_THREADS="1")
    cmd = [sys.executable, "-m", "gpslib.pretrain", "--profile", "smoke", "--no-progress"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "trained:" in first.stdout
    assert (embedded_cache_dir(0, settings=pt.train_settings("smoke")) / "config.json").exists()
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0 and "cached:" in second.stdout
    bad = subprocess.run(cmd[:3] + ["--profile", "nope"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "nope" in bad.stderr
