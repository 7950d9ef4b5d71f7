"""Pretraining the embedded base model: a tiny LLaVA trained from scratch on ShapesVQA.

:func:`pretrain` trains every parameter of :func:`gpslib.model.build_model`
(vision tower, projector and LLaMA) on a fresh ShapesVQA training batch each
step (rows ``step * batch_size ...`` of the train split, so no sample is
seen twice), with AdamW, linear warmup and a cosine decay to 10% of ``lr``,
and gradient-norm clipping. The vision tower and projector learn at
``vision_lr_scale * lr``: at the full rate, Adam drives their outputs to a
large image-independent vector within a few hundred steps, the language model
learns to ignore the image tokens and answers from the question alone
(measured with :func:`image_reliance`). The loss is the language-modelling loss on the
answer tokens (:class:`gpslib.data.VQACollator`).

The result is saved with ``save_pretrained`` (model and processor) plus
``history.csv`` (step, loss, lr, elapsed seconds) and ``train_info.json``
into :func:`embedded_cache_dir`, whose name hashes the model config, the
training settings and the code that trains it (:func:`gpslib.provenance.code_fingerprint`). Saving is atomic: everything is written
into a temporary sibling folder that is renamed into place. With
``checkpoint_every`` a partial run leaves ``<dir>.partial/checkpoint.pt``
and the next call with the same settings resumes from it.

:func:`ensure_base_model` is what notebooks call: the cached model of a
profile, trained on first use (the ``paper`` profile loads the hub model).

CLI: ``python -m gpslib.pretrain --profile cpu --seed 0 [--force]``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from gpslib.atomic_files import replace_directory
from gpslib.data import VQACollator
from gpslib.model import MODEL_SIZES, build_model, build_processor, load_model
from gpslib.provenance import code_fingerprint, settings_hash
from gpslib.run_profiles import check_profile, profile_settings
from gpslib.runtime import setup
from gpslib.shapes_vqa import shapes_vqa

__all__ = ["pretrain", "embedded_cache_dir", "base_model_dir", "ensure_base_model", "train_settings", "main"]

_TRAIN_KEYS = ("size", "steps", "batch_size", "lr", "warmup", "weight_decay", "grad_clip", "vision_lr_scale")
_INFO, _HISTORY, _CKPT = "train_info.json", "history.csv", "checkpoint.pt"


def _positive(name: str, value: Any, integer: bool = True) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not value > 0:
        kind = "int" if integer else "number"
        raise ValueError(f"{name} must be a positive {kind}; got {name}={value!r}")


def train_settings(profile: str) -> dict[str, Any]:
    """The training keyword arguments of :func:`pretrain` in ``profile`` (its ``"pretrain"`` block without ``eval_*``).

    Missing training keys get :func:`pretrain`'s defaults, so the cache key is
    the same whether a run starts from the profile or from a call.
    """
    settings = {k: v for k, v in profile_settings("pretrain", profile).items() if not k.startswith("eval_")}
    if "model" in settings:
        return settings
    defaults = inspect.signature(_PRETRAIN).parameters
    return {k: settings.get(k, defaults[k].default) for k in _TRAIN_KEYS} | settings


def embedded_cache_dir(seed: int, settings: dict[str, Any], root: str | os.PathLike | None = None) -> Path:
    """Where a pretrained base model lives: ``$GPSLIB_CACHE/<size>-<hash>-seed<seed>``.

    ``root`` defaults to the ``GPSLIB_CACHE`` environment variable, else ``~/.cache/gpslib``.
    ``settings``: the training settings of :func:`pretrain` (keys starting with ``eval_`` are
    ignored). The hash covers the size's entry of :data:`gpslib.model.MODEL_SIZES`, those
    settings and the code that trains the model (this module and every gpslib module it
    uses), so a changed architecture, recipe or code never reuses a stale model, and the
    smoke model never shadows the cpu one.
    """
    train = {k: v for k, v in sorted(settings.items()) if not k.startswith("eval_")}
    size = train.get("size", "embedded")
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; valid sizes are {list(MODEL_SIZES)}")
    root = Path(root or os.environ.get("GPSLIB_CACHE") or Path.home() / ".cache" / "gpslib").expanduser()
    digest = settings_hash({"spec": MODEL_SIZES[size], "train": train, "code": code_fingerprint("gpslib.pretrain")})[:10]
    return root / f"{size}-{digest}-seed{seed}"


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _rows(ds, start: int, stop: int) -> list[dict[str, Any]]:
    cols = ds[start:stop]
    return [dict(zip(cols, values)) for values in zip(*cols.values())]


def pretrain(size: str = "embedded", seed: int = 0, steps: int = 1200, batch_size: int = 32, lr: float = 2e-3,
             warmup: int = 60, weight_decay: float = 0.01, grad_clip: float = 1.0, vision_lr_scale: float = 0.1,
             cache_dir=None,
             save: bool = True, checkpoint_every: int = 200, progress: bool = True):
    """Train the tiny LLaVA of ``size`` from scratch on ShapesVQA; returns ``(model, processor, history)``.

    ``history`` is a DataFrame with one row per step: ``step``, ``loss``,
    ``lr``, ``seconds`` (elapsed). The model comes back in eval mode. With
    ``save``, everything goes to ``cache_dir`` (default:
    :func:`embedded_cache_dir` of these settings). Threads: the caller's
    ``torch.set_num_threads``. Raises ValueError naming a bad argument.
    """
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; valid sizes are {list(MODEL_SIZES)}")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        _positive(name, value)
    for name, value in (("lr", lr), ("grad_clip", grad_clip), ("vision_lr_scale", vision_lr_scale)):
        _positive(name, value, integer=False)
    if not isinstance(warmup, int) or not 0 <= warmup <= steps:
        raise ValueError(f"warmup must be an int in [0, steps={steps}]; got warmup={warmup!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0; got weight_decay={weight_decay!r}")
    settings = dict(size=size, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                    weight_decay=weight_decay, grad_clip=grad_clip, vision_lr_scale=vision_lr_scale)
    final = Path(cache_dir) if cache_dir is not None else embedded_cache_dir(seed, settings=settings)
    partial = final.with_name(final.name + ".partial")

    model, processor = build_model(size, seed=seed), build_processor(size)
    collate = VQACollator(processor, "train")
    data = shapes_vqa(steps * batch_size, seed=seed, split="train", image_size=MODEL_SIZES[size]["image_size"])
    vision = [p for n, p in model.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n]
    seen = {id(p) for p in vision}
    groups = [{"params": [p for p in model.parameters() if id(p) not in seen], "lr": lr},
              {"params": vision, "lr": lr * vision_lr_scale}]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps, warmup))
    history, start, spent = [], 0, 0.0
    if save and checkpoint_every and (partial / _CKPT).exists():
        ckpt = torch.load(partial / _CKPT, weights_only=False)
        if ckpt["settings"] == settings and ckpt["seed"] == seed:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            history, start, spent = ckpt["history"], ckpt["step"], ckpt["seconds"]

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, initial=start, desc=f"pretrain {size}", file=sys.stderr)
    model.train()
    t0 = time.perf_counter() - spent
    for step in range(start, steps):
        batch = collate(_rows(data, step * batch_size, (step + 1) * batch_size))
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        current_lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        history.append({"step": step + 1, "loss": loss.item(), "lr": current_lr,
                        "seconds": time.perf_counter() - t0})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
        if save and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            partial.mkdir(parents=True, exist_ok=True)
            torch.save({"settings": settings, "seed": seed, "step": step + 1, "seconds": history[-1]["seconds"],
                        "history": history, "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict()}, partial / f"{_CKPT}.tmp")
            os.replace(partial / f"{_CKPT}.tmp", partial / _CKPT)
    if bar is not None:
        bar.close()
    model.eval()
    hist = pd.DataFrame(history, columns=["step", "loss", "lr", "seconds"])
    if save:
        info = dict(settings, seed=seed, seconds=float(hist["seconds"].iloc[-1]) if len(hist) else 0.0,
                    seconds_per_step=float(hist["seconds"].iloc[-1] / len(hist)) if len(hist) else 0.0,
                    parameters=sum(p.numel() for p in model.parameters()), torch_threads=torch.get_num_threads(),
                    resumed_from_step=start, torch=torch.__version__)
        _save(final, model, processor, hist, info)
        shutil.rmtree(partial, ignore_errors=True)
    return model, processor, hist


_PRETRAIN = pretrain  # the signature train_settings reads defaults from


def _save(final: Path, model, processor, hist: pd.DataFrame, info: dict[str, Any]) -> None:
    """Write into a temporary sibling folder, then move it to ``final`` (replacing an old one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    hist.to_csv(tmp / _HISTORY, index=False)
    (tmp / _INFO).write_text(json.dumps(info, indent=2) + "\n")
    replace_directory(tmp, final)


def base_model_dir(profile: str, seed: int = 0, force: bool = False, progress: bool = True) -> str:
    """Where the base model of ``profile`` lives, training and caching it on first use.

    The cache directory of the embedded model (``smoke``, ``cpu``), or the hub id the
    ``paper`` profile names. Loads nothing: see :func:`ensure_base_model`.
    """
    check_profile(profile)
    settings = train_settings(profile)
    if "model" in settings:
        return settings["model"]
    path = embedded_cache_dir(seed, settings=settings)
    if force or not (path / _INFO).exists():
        pretrain(seed=seed, progress=progress, **settings)
    return str(path)


def ensure_base_model(profile: str, seed: int = 0, force: bool = False, progress: bool = True):
    """The base model of ``profile``: ``(model, processor)``, loaded from the cache or trained and cached.

    ``smoke`` and ``cpu`` pretrain the embedded model with the profile's
    ``"pretrain"`` settings on first use (``force`` retrains); ``paper``
    loads the hub model named there. The directory a cached model was read
    from is ``model.name_or_path``; its ``history.csv`` and
    ``train_info.json`` sit beside the weights.
    """
    return load_model(base_model_dir(profile, seed, force, progress))


def main(argv: list[str] | None = None) -> int:
    """CLI: pretrain (or find cached) the base model of a profile and print where it is."""
    parser = argparse.ArgumentParser(prog="python -m gpslib.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu", help="smoke | cpu (default) | paper")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="retrain even if the cache holds the model")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: gpslib.runtime)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        setup(args.profile, seed=args.seed, threads=args.threads)
    except ValueError as err:
        parser.error(str(err))
    if "model" in train_settings(args.profile):
        parser.error(f"profile {args.profile!r} uses the hub model; there is nothing to pretrain")
    path = embedded_cache_dir(args.seed, settings=train_settings(args.profile))
    cached = (path / _INFO).exists() and not args.force
    ensure_base_model(args.profile, seed=args.seed, force=args.force, progress=not args.no_progress)
    info = json.loads((path / _INFO).read_text())
    print(f"{'cached' if cached else 'trained'}: {path} ({info['parameters']} parameters, "
          f"{info['steps']} steps in {info['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
