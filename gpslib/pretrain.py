"""Pretraining the embedded base models: a tiny LLaVA trained from scratch on ShapesVQA (the CPU runs' TinyLLaVA).

No machine here reaches a model hub, so the ``smoke`` and ``cpu`` profiles train their own
base model: :func:`gpslib.model.build_model` (the real TinyLLaVA architecture at toy size),
every parameter, on fresh ShapesVQA training rows, through transformers' ``Trainer`` (the
same stack as fine-tuning: checkpoints, resume, logging, several processes). AdamW with
linear warmup and a cosine decay to 10% of ``lr``; gradient-norm clipping; the vision tower
and projector learn at ``vision_lr_scale * lr``. The loss is the language-modelling loss on
the answer tokens (:class:`gpslib.data.VQACollator`), plus ``grounding_loss`` times the grounding
term when that is set (the logged ``loss`` is then the weighted total). Before that, ``vision_steps`` steps of
patch labels teach the vision tower to see (:func:`pretrain_vision_tower`: TinyLLaVA's tower
comes pretrained, ours would not), ``question_mix`` asks the hard question types (shape,
existence, relation) more often than a uniform draw would, and ``grounding_loss`` adds
:mod:`gpslib.answer_grounding`'s loss (one attention head is told where the objects the
question names are: without it the model never learns to detect, and answers every existence
and relation question with one word).

Two base models per profile (:data:`BASE_MODELS`, settings in ``gpslib.run_profiles``):

* ``"image_first"``: trained in the original order only (image tokens before the question),
  as TinyLLaVA was; the base of the paper's protocol (LoRA then sees the reordered order
  for the first time);
* ``"mixed"``: the image-first model trained further on every layout the notebooks evaluate
  (:data:`gpslib.reordering_config.LAYOUTS`: none, oracle, cosine, random, V2PE, CCA) and on
  position gaps drawn from [0, ``max_gap``] (:func:`layout_for_step`), so that no distance or
  layout it is tested on is new to it: the base of the Table 3 arms free of the confound of an
  unfamiliar order (:mod:`gpslib.table3`).

A model is saved as a plain ``LlavaForConditionalGeneration`` (model, processor,
``history.csv``, ``train_info.json``) into :func:`embedded_cache_dir`, whose name hashes the
model size, the training settings, the code that trains it
(:func:`gpslib.provenance.code_fingerprint`) and the torch thread count; the folder appears
atomically. An interrupted run resumes from its newest complete checkpoint in
``<dir>.partial/``. :func:`ensure_base_model` is what notebooks call.

CLI: ``python -m gpslib.pretrain --profile cpu --base image_first [--seed 0] [--force] [--steps 500 ...]``
(:func:`main`; ``--help`` lists a flag per :class:`PretrainConfig` field).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import (HfArgumentParser, LlavaForConditionalGeneration, PrinterCallback, TrainerCallback,
                          TrainingArguments)

from gpslib.answer_grounding import GroundingTrainer, check_head
from gpslib.atomic_files import replace_directory
from gpslib.checkpoints import ResumableTrainer, latest_complete_checkpoint
from gpslib.cli import flags_to_config, parse, preparse, setting, settings_flags
from gpslib.data import VQACollator
from gpslib.generation import unwrap_model
from gpslib.model import MODEL_SIZES, build_model, build_processor, check_text_layers, load_model, tiny_llava_config
from gpslib.provenance import code_fingerprint, settings_hash
from gpslib.reordering_config import LAYOUTS
from gpslib.run_profiles import PROFILES, check_profile, profile_settings
from gpslib.runtime import setup
from gpslib.shapes_vqa import OBJECT_SIZES, SHAPES, COLOURS, LazyShapesVQA, object_patches, question_type_weights

__all__ = ["BASE_MODELS", "PretrainConfig", "layout_for_step", "pretrain_vision_tower", "pretrain", "embedded_cache_dir", "train_settings",
           "base_model_dir", "ensure_base_model", "PretrainRun", "main"]

BASE_MODELS = ("image_first", "mixed")
_INFO, _HISTORY, _VISION_HISTORY = "train_info.json", "history.csv", "vision_history.csv"


@dataclasses.dataclass
class PretrainConfig:
    """The training settings of one base model (they key its cache entry)."""

    size: str = setting("embedded", "model size, a key of gpslib.model.MODEL_SIZES", tuple(MODEL_SIZES))
    text_layers: int | None = setting(None, "layers of the language model; none: the size's (gpslib.model.MODEL_SIZES)")
    steps: int = setting(2000, "training steps (one fresh batch of ShapesVQA rows each)")
    batch_size: int = setting(32, "rows per step")
    lr: float = setting(2e-3, "peak learning rate (AdamW)")
    warmup: int = setting(100, "linear warmup steps, then cosine to 10%% of lr")
    weight_decay: float = setting(0.01, "AdamW weight decay")
    grad_clip: float = setting(1.0, "gradient-norm clipping")
    vision_lr_scale: float = setting(0.1, "the vision tower and projector learn at this fraction of lr")
    layouts: str = setting("image_first", "image_first, or mixed: every layout and gap (see layout_for_step)",
                            BASE_MODELS)
    max_gap: int = setting(0, "G: position gaps drawn from [0, G] (mixed)")
    vision_steps: int = setting(0, "steps of patch-level supervision of the vision tower before the VQA training "
                                   "(see pretrain_vision_tower); 0: none")
    question_mix: str = setting("uniform", "how often each question type is asked: uniform, or one weight per type "
                                           "of gpslib.shapes_vqa.QUESTION_TYPES, e.g. 1,2,1,1,2,2,1")
    init: str | None = setting(None, "none: from scratch; image_first: continue the image-first model of the "
                                      "profile", (None, "image_first"))
    dataloader_workers: int = setting(0, "processes drawing the images beside the training process")
    grounding_loss: float = setting(0.0, "weight of the answer grounding loss (gpslib.answer_grounding): while the "
                                         "model writes its answer, one head of the last layer is trained to attend to "
                                         "the patches of the objects the question names; 0: none. Needs layouts image_first")
    grounding_head: int = setting(0, "the head of the last language-model layer that the grounding loss trains")

    def validate(self) -> "PretrainConfig":
        """Raise ValueError naming the first bad setting; returns self."""
        if self.size not in MODEL_SIZES:
            raise ValueError(f"unknown model size {self.size!r}; valid sizes are {list(MODEL_SIZES)}")
        check_text_layers(self.text_layers)
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {name}={value!r}")
        for name in ("lr", "grad_clip", "vision_lr_scale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a positive number; got {name}={value!r}")
        if not isinstance(self.warmup, int) or not 0 <= self.warmup <= self.steps:
            raise ValueError(f"warmup must be an int in [0, steps={self.steps}]; got warmup={self.warmup!r}")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got weight_decay={self.weight_decay!r}")
        if self.layouts not in BASE_MODELS:
            raise ValueError(f"layouts must be one of {BASE_MODELS}; got layouts={self.layouts!r}")
        if not isinstance(self.max_gap, int) or self.max_gap < 0:
            raise ValueError(f"max_gap must be an int >= 0; got max_gap={self.max_gap!r}")
        if not isinstance(self.vision_steps, int) or isinstance(self.vision_steps, bool) or self.vision_steps < 0:
            raise ValueError(f"vision_steps must be an int >= 0; got vision_steps={self.vision_steps!r}")
        if self.question_mix != "uniform":
            question_type_weights(self.question_mix)
        if self.init not in (None, "image_first"):
            raise ValueError(f"init must be None or 'image_first'; got init={self.init!r}")
        if not isinstance(self.dataloader_workers, int) or self.dataloader_workers < 0:
            raise ValueError(f"dataloader_workers must be an int >= 0; got {self.dataloader_workers!r}")
        if (not isinstance(self.grounding_loss, (int, float)) or isinstance(self.grounding_loss, bool)
                or not (math.isfinite(self.grounding_loss) and self.grounding_loss >= 0)):
            raise ValueError(f"grounding_loss must be a finite number >= 0; got grounding_loss={self.grounding_loss!r}")
        if not isinstance(self.grounding_head, int) or isinstance(self.grounding_head, bool) or self.grounding_head < 0:
            raise ValueError(f"grounding_head must be an int >= 0; got grounding_head={self.grounding_head!r}")
        if self.grounding_loss and self.layouts != "image_first":
            raise ValueError(f"grounding_loss={self.grounding_loss!r} needs layouts='image_first' (its patch masks follow "
                             f"the image tokens' places in input_ids, which other layouts move); got "
                             f"layouts={self.layouts!r}")
        return self


def layout_for_step(step: int, seed: int, max_gap: int) -> dict[str, Any]:
    """The layout of the mixed model's training step ``step``: config fields of the model.

    One of :data:`gpslib.reordering_config.LAYOUTS`, uniformly, and a gap: 0 with probability
    1/4, else log-uniform on [1, ``max_gap``] (every scale the notebooks test, 16 to 1024, is
    seen about as often). Drawn from a generator seeded with ``(seed, step)``, so a resumed
    run draws what an uninterrupted one does.
    """
    rng = np.random.default_rng([seed, step, 20_24])
    name = list(LAYOUTS)[int(rng.integers(len(LAYOUTS)))]
    gap = 0 if max_gap == 0 or rng.random() < 0.25 else int(round(math.exp(rng.uniform(0.0, math.log(max_gap)))))
    return {**LAYOUTS[name], "position_gap": gap, "layout": name}


def embedded_cache_dir(seed: int, settings: dict[str, Any], root: str | os.PathLike | None = None) -> Path:
    """Where a pretrained base model lives: ``$GPSLIB_CACHE/<size>-<layouts>-<hash>-seed<seed>``.

    ``root`` defaults to the ``GPSLIB_CACHE`` environment variable, else ``~/.cache/gpslib``.
    ``settings``: :class:`PretrainConfig` fields (keys starting with ``eval_`` are ignored).
    The hash covers the size's entry of :data:`gpslib.model.MODEL_SIZES`, the settings, the
    code that trains the model (this module and every gpslib module it uses), the torch
    thread count (results depend on it) and, for a continued model, its initial model's key.
    """
    config = PretrainConfig(**{k: v for k, v in settings.items() if not k.startswith("eval_")}).validate()
    root = Path(root or os.environ.get("GPSLIB_CACHE") or Path.home() / ".cache" / "gpslib").expanduser()
    key = {"spec": MODEL_SIZES[config.size], "train": dataclasses.asdict(config),
           "code": code_fingerprint("gpslib.pretrain"), "threads": torch.get_num_threads()}
    return root / f"{config.size}-{config.layouts}-{settings_hash(key)[:10]}-seed{seed}"


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class _Schedule(TrainerCallback):
    """The mixed layouts (set on the model before each step), timings, and a few progress lines."""

    def __init__(self, config: PretrainConfig, seed: int, progress: bool):
        self.config, self.seed, self.progress = config, seed, progress
        self.layouts: dict[int, dict[str, Any]] = {}
        self.seconds: dict[int, float] = {}
        self.start = time.perf_counter()

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.config.layouts == "mixed":
            layout = layout_for_step(state.global_step, self.seed, self.config.max_gap)
            inner = unwrap_model(model)
            for key in ("reorder", "position_scheme", "position_gap"):
                setattr(inner.config, key, layout[key])
            self.layouts[state.global_step + 1] = layout

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds[state.global_step] = time.perf_counter() - self.start
        every = max(1, state.max_steps // 10)
        if self.progress and (state.global_step % every == 0 or state.global_step == state.max_steps):
            losses = [e["loss"] for e in state.log_history[-every:] if "loss" in e]
            loss = f", loss {sum(losses) / len(losses):.4f}" if losses else ""
            print(f"pretrain {self.config.size} ({self.config.layouts}): step {state.global_step}/{state.max_steps}"
                  f"{loss}, {self.seconds[state.global_step]:.0f} s", flush=True)


def pretrain_vision_tower(model, processor, config: PretrainConfig, seed: int, progress: bool = True) -> pd.DataFrame:
    """Teach the vision tower to see before the VQA training: ``config.vision_steps`` steps of patch labels.

    TinyLLaVA's vision tower comes pretrained (CLIP); the embedded model's starts from random
    weights, and trained only through the language loss it learnt colour late and shape not at
    all (shape questions at chance). Here every patch of a fresh ShapesVQA training
    image (its own seed, ``seed + 2000``) is labelled with the shape, colour and size of the
    object covering it (or "background"), and three linear heads on the features the projector
    reads (``vision_feature_layer``, CLS dropped) are trained with the tower by AdamW (``lr``,
    50 warmup steps, cosine to 10%), one cross-entropy per attribute. The heads are discarded.
    Returns the per-step history (step, vision_loss, seconds). Changes ``model`` in place.
    """
    size = MODEL_SIZES[config.size]
    image_size, patch = size["image_size"], size["patch_size"]
    grid = (image_size // patch) ** 2
    tower = unwrap_model(model).model.vision_tower
    layer = unwrap_model(model).config.vision_feature_layer
    attributes = (SHAPES, tuple(COLOURS), OBJECT_SIZES)
    generator = torch.Generator().manual_seed(seed + 2000)
    heads = torch.nn.Linear(tower.config.hidden_size, sum(len(a) + 1 for a in attributes))
    with torch.no_grad():
        bound = 1 / math.sqrt(tower.config.hidden_size)
        heads.weight.uniform_(-bound, bound, generator=generator)
        heads.bias.zero_()
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warm = min(50, config.vision_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, config.vision_steps, warm))
    data = LazyShapesVQA(config.vision_steps * config.batch_size, seed=seed + 2000, split="train",
                         image_size=image_size)
    history, start = [], time.perf_counter()
    tower.train()
    for step in range(config.vision_steps):
        rows = [data[i] for i in range(step * config.batch_size, (step + 1) * config.batch_size)]
        pixels = processor.image_processor(images=[r["images"][0] for r in rows], return_tensors="pt")["pixel_values"]
        labels = torch.tensor([len(a) for a in attributes]).repeat(len(rows), grid, 1)  # "background"
        for b, row in enumerate(rows):
            for o in row["objects"]:
                cls = torch.tensor([SHAPES.index(o["shape"]), list(COLOURS).index(o["colour"]),
                                    OBJECT_SIZES.index(o["size"])])
                labels[b, object_patches(o["box"], image_size, patch)] = cls
        features = tower(pixels, output_hidden_states=True).hidden_states[layer][:, 1:]
        logits = heads(features)
        loss, first = 0.0, 0
        for j, names in enumerate(attributes):
            width = len(names) + 1
            loss = loss + torch.nn.functional.cross_entropy(logits[..., first:first + width].reshape(-1, width),
                                                            labels[..., j].reshape(-1))
            first += width
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        sched.step()
        history.append({"step": step + 1, "vision_loss": loss.item(), "seconds": time.perf_counter() - start})
        every = max(1, config.vision_steps // 5)
        if progress and ((step + 1) % every == 0 or step + 1 == config.vision_steps):
            print(f"pretrain {config.size} vision tower: step {step + 1}/{config.vision_steps}, "
                  f"loss {loss.item():.4f}, {time.perf_counter() - start:.0f} s", flush=True)
    return pd.DataFrame(history)


def pretrain(config: PretrainConfig, seed: int = 0, profile: str | None = None, cache_dir=None, save: bool = True,
             checkpoint_every: int = 200, progress: bool = True):
    """Train one base model; returns ``(model, processor, history)``.

    ``config``: :class:`PretrainConfig`; ``profile`` names where the initial model of a
    continued run (``init="image_first"``) comes from (:func:`base_model_dir`). ``history``
    has one row per step: step, loss, lr, seconds (and layout, gap for the mixed model; with
    ``grounding_loss``, grounding_loss: the unweighted grounding term, while loss is the language
    loss plus ``grounding_loss`` times it).
    The model comes back in eval mode as a plain ``LlavaForConditionalGeneration``. With
    ``save`` it goes to ``cache_dir`` (default :func:`embedded_cache_dir`), with checkpoints
    every ``checkpoint_every`` steps in ``<cache_dir>.partial`` for resuming. Threads: the
    caller's ``torch.set_num_threads``.
    """
    config.validate()
    final = Path(cache_dir) if cache_dir is not None else embedded_cache_dir(seed, dataclasses.asdict(config))
    partial = final.with_name(final.name + ".partial")
    processor = build_processor(config.size)
    if config.init is None:
        model = build_model(config.size, seed=seed, text_layers=config.text_layers, reorder="none")
    else:
        if profile is None:
            raise ValueError("a continued run (init='image_first') needs the profile its initial model comes from")
        model, _ = load_model(base_model_dir(profile, seed, base="image_first", progress=progress), reorder="none")
        layers = model.config.text_config.num_hidden_layers
        if config.text_layers is not None and config.text_layers != layers:
            raise ValueError(f"text_layers={config.text_layers} but the initial model (the profile's image_first) "
                             f"has {layers} language-model layers")
    if config.grounding_loss:  # before minutes of vision-tower training
        check_head(model.config.text_config.num_attention_heads, config.grounding_head)
    size = MODEL_SIZES[config.size]
    resume = latest_complete_checkpoint(partial / "checkpoints") if save else None
    vision_history = pd.DataFrame(columns=["step", "vision_loss", "seconds"])
    if config.vision_steps and resume is None:  # a checkpoint holds the vision tower it trained on
        vision_history = pretrain_vision_tower(model, processor, config, seed, progress)
        if save:
            partial.mkdir(parents=True, exist_ok=True)
            vision_history.to_csv(partial / _VISION_HISTORY, index=False)
    elif config.vision_steps and (partial / _VISION_HISTORY).exists():
        vision_history = pd.read_csv(partial / _VISION_HISTORY)
    # each row is read once: drawn on access, not materialised (gpslib.shapes_vqa's docstring has the numbers)
    data = LazyShapesVQA(config.steps * config.batch_size, seed=seed + (1000 if config.init else 0), split="train",
                         image_size=size["image_size"],
                         type_weights=None if config.question_mix == "uniform" else config.question_mix)
    vision = [p for n, p in model.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n]
    seen = {id(p) for p in vision}
    groups = [{"params": [p for p in model.parameters() if id(p) not in seen], "lr": config.lr},
              {"params": vision, "lr": config.lr * config.vision_lr_scale}]
    opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, config.steps, config.warmup))
    args = TrainingArguments(
        output_dir=str(partial / "checkpoints"), max_steps=config.steps, per_device_train_batch_size=config.batch_size,
        max_grad_norm=config.grad_clip, logging_strategy="steps", logging_steps=1, report_to="none",
        save_strategy="steps" if save and checkpoint_every else "no", save_steps=checkpoint_every or config.steps,
        save_total_limit=1, remove_unused_columns=False, label_names=["labels"], use_cpu=not torch.cuda.is_available(),
        seed=seed, data_seed=seed, disable_tqdm=True, dataloader_num_workers=config.dataloader_workers,
    )
    schedule = _Schedule(config, seed, progress)
    grounded = config.grounding_loss > 0
    collator = VQACollator(processor, "train", grounding=config.layouts == "mixed", mentioned=grounded)
    common = dict(model=model, args=args, train_dataset=data, optimizers=(opt, sched), callbacks=[schedule],
                  data_collator=collator)
    if grounded:
        trainer = GroundingTrainer(**common, weight=config.grounding_loss, head=config.grounding_head,
                                   image_token_id=unwrap_model(model).config.image_token_id)
    else:
        trainer = ResumableTrainer(**common)
    trainer.remove_callback(PrinterCallback)
    model.train()
    trainer.train(resume_from_checkpoint=resume)
    inner = unwrap_model(trainer.model)
    plain = LlavaForConditionalGeneration(tiny_llava_config(config.size, inner.config.text_config.num_hidden_layers))
    plain.load_state_dict({k: v for k, v in inner.state_dict().items() if not k.startswith("reorder_gps.")})
    plain.generation_config.pad_token_id = plain.config.text_config.pad_token_id
    plain.eval()
    losses = {e["step"]: e for e in trainer.state.log_history if "loss" in e}
    hist = pd.DataFrame([{"step": s, "loss": e["loss"], "lr": e.get("learning_rate", math.nan),
                          "seconds": schedule.seconds.get(s, math.nan),
                          **({"grounding_loss": e.get("grounding_loss", math.nan)} if grounded else {}),
                          **({"layout": schedule.layouts[s]["layout"], "gap": schedule.layouts[s]["position_gap"]}
                             if s in schedule.layouts else {})} for s, e in sorted(losses.items())])
    if save:
        seconds = float(hist["seconds"].max()) if len(hist) else 0.0
        vision_seconds = float(vision_history["seconds"].max()) if len(vision_history) else 0.0
        info = dict(dataclasses.asdict(config), seed=seed, seconds=seconds, seconds_per_step=seconds / max(1, len(hist)),
                    vision_seconds=vision_seconds, total_seconds=vision_seconds + seconds,
                    parameters=sum(p.numel() for p in plain.parameters()), torch_threads=torch.get_num_threads(),
                    resumed_from=None if resume is None else Path(resume).name, torch=torch.__version__)
        _save(final, plain, processor, hist, info, vision_history)
        shutil.rmtree(partial, ignore_errors=True)
    return plain, processor, hist


def _save(final: Path, model, processor, hist: pd.DataFrame, info: dict[str, Any],
          vision_history: pd.DataFrame) -> None:
    """Write into a temporary sibling folder, then move it to ``final`` (replacing an old one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    hist.to_csv(tmp / _HISTORY, index=False)
    if len(vision_history):
        vision_history.to_csv(tmp / _VISION_HISTORY, index=False)
    (tmp / _INFO).write_text(json.dumps(info, indent=2) + "\n")
    replace_directory(tmp, final)


def train_settings(profile: str, base: str = "image_first") -> dict[str, Any]:
    """The training settings of ``profile``'s base model ``base`` (``"image_first"`` or ``"mixed"``).

    A dict of :class:`PretrainConfig` fields, or ``{"model": hub_id}`` for the ``paper``
    profile (which trains nothing). Raises ValueError naming an unknown profile or base.
    """
    if base not in BASE_MODELS:
        raise ValueError(f"unknown base model {base!r}; valid ones are {list(BASE_MODELS)}")
    settings = profile_settings("pretrain", profile)
    if "model" in settings:
        return {"model": settings["model"]}
    return {k: v for k, v in settings[base].items()}


def base_model_dir(profile: str, seed: int = 0, base: str = "image_first", force: bool = False,
                   progress: bool = True) -> str:
    """Where ``profile``'s base model ``base`` lives, training and caching it on first use.

    The cache directory of the embedded model (``smoke``, ``cpu``), or the hub id the
    ``paper`` profile names (the same for both bases: the hub model has seen one layout).
    Loads nothing: see :func:`ensure_base_model`.
    """
    check_profile(profile)
    settings = train_settings(profile, base)
    if "model" in settings:
        return settings["model"]
    path = embedded_cache_dir(seed, settings)
    if force or not (path / _INFO).exists():
        pretrain(PretrainConfig(**settings), seed=seed, profile=profile, progress=progress)
    return str(path)


def ensure_base_model(profile: str, seed: int = 0, base: str = "image_first", force: bool = False,
                      progress: bool = True):
    """``profile``'s base model ``base``: ``(model, processor)``, loaded from the cache or trained and cached.

    The directory a cached model was read from is ``model.name_or_path``; its
    ``history.csv`` and ``train_info.json`` sit beside the weights.
    """
    return load_model(base_model_dir(profile, seed, base, force, progress))


@dataclasses.dataclass
class PretrainRun:
    """The CLI's run-level flags (the rest are :class:`PretrainConfig`'s)."""

    _argument_group_name = "run"
    profile: str = setting("cpu", "the run profile whose base model's settings are the defaults below", PROFILES)
    base: str = setting("image_first", "which of the profile's base models", BASE_MODELS)
    seed: int = setting(0, "seed of the model (initialisation, data); part of its cache key")
    force: bool = setting(False, "retrain even if the cache holds the model")
    threads: int | None = setting(None, "torch threads (unset: $GPSLIB_THREADS, else 1; gpslib.runtime)")
    no_progress: bool = setting(False, "no progress lines")


def main(argv: list[str] | None = None) -> int:
    """CLI: pretrain (or find cached) a base model and print where it is.

    ``python -m gpslib.pretrain [--profile cpu] [--base image_first] [--SETTING VALUE ...]``:
    a flag for every :class:`PretrainConfig` field (``--help`` lists them with the profile's
    settings of ``--base`` as defaults), plus :class:`PretrainRun`'s. With no setting flags
    it trains exactly what :func:`ensure_base_model` finds; other values are cached under
    their own key. Bad values exit with status 2 and a message naming them, before any
    model is built.
    """
    prog = "python -m gpslib.pretrain"
    description = (f"{__doc__.splitlines()[0]} Every setting defaults to the value of the --profile's --base "
                   f"model (shown for the ones given, e.g. --profile smoke --help).")
    known = preparse(argv, profile="cpu", base="image_first")
    try:
        settings = train_settings(check_profile(known["profile"]), known["base"])
    except ValueError as err:
        argparse.ArgumentParser(prog=prog).error(str(err))
    if "model" in settings:
        argparse.ArgumentParser(prog=prog).error(
            f"profile {known['profile']!r} uses the hub model {settings['model']!r}; there is nothing to pretrain")
    flags = settings_flags(PretrainConfig, settings, f"settings (defaults: the {known['profile']} profile's "
                                                     f"{known['base']} model)")
    parser = HfArgumentParser((PretrainRun, flags), prog=prog, description=description, allow_abbrev=False)
    run, values = parse(parser, argv)
    config = flags_to_config(parser, PretrainConfig, values)
    try:
        setup(run.profile, seed=run.seed, threads=run.threads, verbose=False)
    except ValueError as err:
        parser.error(str(err))
    path = embedded_cache_dir(run.seed, dataclasses.asdict(config))
    cached = (path / _INFO).exists() and not run.force
    if not cached:
        pretrain(config, seed=run.seed, profile=run.profile, progress=not run.no_progress)
    info = json.loads((path / _INFO).read_text())
    print(f"{'cached' if cached else 'trained'}: {path} ({info['parameters']} parameters, "
          f"{info['steps']} steps in {info['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
