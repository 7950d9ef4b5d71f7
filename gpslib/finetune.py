"""LoRA fine-tuning of (Tiny)LLaVA with a token-reordering strategy (paper Section 4.3, Table 1).

:func:`finetune` is one run: a base model (the embedded one, a local directory or
``bczhou/tiny-llava-v1-hf``), a reordering strategy (``none``, ``cosine``, ``gps``,
``oracle``), peft LoRA on the language model only (r 8, alpha 16, dropout 0.05 on
q/k/v/o/gate/up/down, chosen by a regex so CLIP's own q/k/v get none), and
transformers' ``Trainer`` (lr 1e-4 cosine with 3% warmup, batch 4 x accumulation 4,
evaluation every epoch). On CUDA it uses fp16 and ``paged_adamw_8bit`` as the paper;
on the CPU fp32 and ``adamw_torch``; the run records which. Every epoch it logs the
validation loss and the paper's BLEU on generated answers; early stopping on the
validation loss keeps the best checkpoint. With ``"gps"`` the Sinkformer trains fully
beside LoRA, its temperature annealed and made hard (straight-through) on the schedule of
its :class:`gpslib.gps.GPSSettings` (the paper's GPS experiment: tau 2.0 -> 0.1, cosine,
hard after half the steps).

A run directory holds ``config.json`` (settings, device, precision, optimizer),
``epochs.json`` (train loss, validation loss, BLEU per epoch), ``checkpoints/`` (for
resuming an interrupted run), ``adapter/`` (the best LoRA adapter, and the Sinkformer)
and ``done.json`` once finished; a finished run is not trained again. An interrupted run
resumes from its newest complete checkpoint, and only with the settings, setup and base
model it was started with (``--restart`` discards it instead). The same entry
point runs under ``torchrun`` / ``accelerate launch`` on several processes:

    python -m gpslib.finetune --reorder cosine --profile cpu --run-dir runs/finetune/cosine
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from huggingface_hub.utils import validate_repo_id
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import EarlyStoppingCallback, HfArgumentParser, PrinterCallback, TrainerCallback, TrainingArguments

from gpslib.atomic_files import atomic_write_text
from gpslib.checkpoints import ResumableTrainer, latest_complete_checkpoint
from gpslib.cli import flags_to_config, parse, preparse, setting, settings_flags
from gpslib.data import VQACollator, load_hub_vsft
from gpslib.generation import predict, unwrap_model
from gpslib.gps_trace import TRACE_FILE, GPSTrace
from gpslib.metrics import paper_bleu
from gpslib.model import load_model
from gpslib.pretrain import BASE_MODELS, base_model_dir
from gpslib.positions import POSITION_SCHEMES
from gpslib.provenance import code_fingerprint, settings_hash
from gpslib.reordering_config import REORDERING_FIELDS, STRATEGIES, ReorderingLlavaConfig, check_reordering_settings
from gpslib.run_profiles import PROFILES, check_profile, profile_settings
from gpslib.runtime import seed_everything, setup
from gpslib.shapes_vqa import shapes_vqa
from gpslib.sinkhorn import tau_schedule
from gpslib.tokenmixer import PLACEMENTS

__all__ = [
    "LORA_TARGET_REGEX",
    "FinetuneConfig",
    "config_for_profile",
    "lora_config",
    "load_data",
    "finetune",
    "load_finetuned",
    "base_model_source",
    "run_dir_for",
    "EMBEDDED_NAME",
    "FinetuneRun",
    "main",
]

EMBEDDED_NAME = "gpslib/embedded"  # FinetuneConfig.model: the embedded base model of ``model_profile``

# The language model's projections only: the vision tower's q/k/v/out_proj never match.
LORA_TARGET_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


@dataclasses.dataclass
class FinetuneConfig:
    """Everything that defines a run (stored as the run's ``config.json``)."""

    model: str = setting(EMBEDDED_NAME, f"base model: {EMBEDDED_NAME!r} (the embedded one of model_profile), "
                                         "a local directory or a hub id")
    model_profile: str = setting("cpu", "the profile whose embedded base model is used (gpslib.pretrain)",
                                  PROFILES)
    base: str = setting("image_first", "which embedded base model: image_first (the paper's protocol) or "
                                        "mixed (trained on every layout)", BASE_MODELS)
    data: str = setting("shapes", "'shapes' (ShapesVQA), a hub id, or a local hub-layout directory")
    train_samples: int = setting(1000, "training rows")
    eval_samples: int = setting(100, "validation rows (loss every epoch)")
    gen_samples: int = setting(100, "validation rows answered by generation for BLEU every epoch")
    # the reordering settings: fields of ReorderingLlavaConfig, with its defaults
    reorder: str = setting(ReorderingLlavaConfig.reorder, "the reordering strategy", STRATEGIES)
    threshold: float = setting(ReorderingLlavaConfig.threshold, "TokenMixer's cosine-similarity threshold (cosine)")
    placement: str = setting(ReorderingLlavaConfig.placement, "matched image tokens go before or after their word "
                                                               "(cosine)", PLACEMENTS)
    gps: dict[str, Any] = setting(help="GPSSettings fields to override, a JSON object, e.g. "
                                        "'{\"sinkhorn_iters\": 20}' (gps)", default_factory=dict)
    position_gap: int = setting(ReorderingLlavaConfig.position_gap, "virtual RoPE positions between the leading "
                                                                     "image tokens and the rest")
    position_scheme: str = setting(ReorderingLlavaConfig.position_scheme, "positions of the image tokens",
                                    POSITION_SCHEMES)
    v2pe_delta: float | None = setting(ReorderingLlavaConfig.v2pe_delta, "V2PE's step per image token "
                                                                          "(none: 1/M)")
    epochs: int = setting(1, "training epochs")
    lora_r: int = setting(8, "LoRA rank")
    lora_alpha: int = setting(16, "LoRA alpha")
    lora_dropout: float = setting(0.05, "LoRA dropout")
    learning_rate: float = setting(1e-4, "peak learning rate (cosine schedule)")
    gps_learning_rate: float | None = setting(None, "the Sinkformer's own peak learning rate with gps (none: "
                                                    "learning_rate, as the paper); ignored by other strategies")
    warmup_ratio: float = setting(0.03, "fraction of the steps spent warming up")
    batch_size: int = setting(4, "rows per device and step")
    grad_accum: int = setting(4, "gradient accumulation steps")
    max_new_tokens: int = setting(64, "generated tokens per answer (BLEU)")
    early_stopping_patience: int | None = setting(2, "epochs without a better validation loss before "
                                                      "stopping (none: never stop early)")
    seed: int = setting(0, "seed of the run (initialisation, data order, dropout)")

    def validate(self) -> "FinetuneConfig":
        """Raise ValueError naming the first bad setting; returns self.

        Checks every setting, the reordering ones through
        :func:`gpslib.reordering_config.check_reordering_settings`, without loading,
        training or writing anything: :func:`finetune` and the CLI call it first.
        """
        check_reordering_settings(**self.reordering_settings)
        check_profile(self.model_profile)
        if self.base not in BASE_MODELS:
            raise ValueError(f"base must be one of {BASE_MODELS}; got base={self.base!r}")
        _check_source("model", self.model, EMBEDDED_NAME)
        _check_source("data", self.data, "shapes")
        for name in ("train_samples", "eval_samples", "gen_samples", "epochs", "lora_r", "lora_alpha", "batch_size",
                     "grad_accum", "max_new_tokens"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {name}={value!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0; got seed={self.seed!r}")
        if not _is_number(self.learning_rate) or not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must lie in (0, 1); got learning_rate={self.learning_rate!r}")
        gps_lr = self.gps_learning_rate
        if gps_lr is not None and (not _is_number(gps_lr) or not 0 < gps_lr < 1):
            raise ValueError(f"gps_learning_rate must be None or lie in (0, 1); got gps_learning_rate={gps_lr!r}")
        if not _is_number(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must lie in [0, 1); got warmup_ratio={self.warmup_ratio!r}")
        if not _is_number(self.lora_dropout) or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must lie in [0, 1); got lora_dropout={self.lora_dropout!r}")
        patience = self.early_stopping_patience
        if patience is not None and (not _is_int(patience) or patience < 1):
            raise ValueError(f"early_stopping_patience must be an integer >= 1 or None; got {patience!r}")
        return self

    @property
    def reordering_settings(self) -> dict[str, Any]:
        """The run's fields of :class:`gpslib.reordering_config.ReorderingLlavaConfig`."""
        return {name: getattr(self, name) for name in REORDERING_FIELDS if hasattr(self, name)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_source(name: str, value: Any, builtin: str) -> None:
    """``value`` is ``builtin``, an existing directory, or a hub id (``owner/name``); else ValueError."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be {builtin!r}, a local directory or a hub id; got {name}={value!r}")
    if value == builtin or Path(value).is_dir():
        return
    if Path(value).exists():
        raise ValueError(f"{name} must be {builtin!r}, a local directory or a hub id; {name}={value!r} is a file")
    try:
        validate_repo_id(value)
    except ValueError:
        raise ValueError(f"{name} must be {builtin!r}, a local directory or a hub id; got {name}={value!r}, "
                         f"which is neither an existing directory nor a valid hub id") from None


# keys of the "finetune" profile section that steer the notebooks, not one run
EXPERIMENT_KEYS = ("table2_epochs",)


def config_for_profile(profile: str, **overrides) -> FinetuneConfig:
    """The run settings of a profile (``profiles.SETTINGS["finetune"]``), with ``overrides``.

    A ``gps`` override is merged into the profile's ``gps`` settings (``{"sinkhorn_iters": 20}``
    keeps the profile's alpha), as the CLI's ``--gps`` is.
    """
    settings = {k: v for k, v in profile_settings("finetune", profile).items() if k not in EXPERIMENT_KEYS}
    if "gps" in overrides:
        overrides = {**overrides, "gps": {**settings.get("gps", {}), **overrides["gps"]}}
    settings.update(overrides)
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(FinetuneConfig)})
    if unknown:
        raise ValueError(f"unknown fine-tuning settings {unknown}")
    return FinetuneConfig(**settings).validate()


def run_dir_for(config: FinetuneConfig, root: str | os.PathLike, name: str) -> Path:
    """``root / f"{name}-{key}"``, where ``key`` hashes the run's settings, the code that trains it
    and the torch thread count.

    A run directory is reused when its run finished (and resumed when it did not), so its
    name carries everything that determines the result: changed settings, changed code
    (:mod:`gpslib.finetune` or any gpslib module it imports) or another thread count get a
    new directory instead of a stale run. GPS's settings key only ``"gps"`` runs. The base model is checked separately by its
    weights' fingerprint.
    """
    settings = dataclasses.asdict(config.validate())
    if config.reorder != "gps":  # GPS's settings do not touch the other strategies' runs
        settings = {**settings, "gps": {}, "gps_learning_rate": None}
    key = settings_hash({"settings": settings, "code": code_fingerprint("gpslib.finetune"),
                         "threads": torch.get_num_threads()})
    return Path(root) / f"{name}-{key[:10]}"


def lora_config(config: FinetuneConfig):
    """peft ``LoraConfig`` of Table 1; with ``"gps"`` the Sinkformer is fully trainable."""
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=LORA_TARGET_REGEX,
        modules_to_save=["reorder_gps"] if config.reorder == "gps" else None,
        bias="none",
    )


def load_data(config: FinetuneConfig, split: str, num_samples: int, image_size: int):
    """Rows in the llava-instruct-mix-vsft schema: ShapesVQA, or the hub set (a name or a local dir)."""
    if config.data == "shapes":
        return shapes_vqa(num_samples, seed=0, split=split, image_size=image_size)
    ds, _ = load_hub_vsft(config.data, split=split, max_rows=num_samples)
    return ds


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def base_model_source(config: FinetuneConfig) -> tuple[str, str]:
    """Where the run's base model comes from, and a fingerprint of its weights.

    The embedded model is resolved to its cache directory (trained there on first use);
    a local directory is itself; a hub id is itself. The fingerprint is the first 16 hex
    digits of the SHA-256 of ``model.safetensors`` where there is such a file (else the
    source string), so an adapter is never evaluated on weights it was not trained on,
    e.g. after ``GPSLIB_CACHE`` pointed elsewhere or the base model was retrained.
    """
    source = config.model
    if source == EMBEDDED_NAME:
        source = base_model_dir(config.model_profile, base=config.base, progress=False)
    weights = Path(source) / "model.safetensors"
    if weights.is_file():
        return source, hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    return source, source


def _load_base(config: FinetuneConfig, source: str):
    """The base model at ``source`` as a reordering model with the run's strategy, and its processor."""
    return load_model(source, **config.reordering_settings)


def _epoch_records(log_history: list[dict[str, Any]], bleu: dict[int, float]) -> list[dict[str, Any]]:
    """Per epoch: mean logged training loss, validation loss, BLEU (the last evaluation of an epoch wins)."""
    records: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        if "eval_loss" not in entry:
            continue
        epoch = int(round(entry["epoch"]))
        losses = [e["loss"] for e in log_history if "loss" in e and epoch - 1 < e["epoch"] <= epoch + 1e-9]
        records[epoch] = {
            "epoch": epoch,
            "train_loss": float(sum(losses) / len(losses)) if losses else math.nan,
            "val_loss": float(entry["eval_loss"]),
            "bleu": bleu.get(epoch, math.nan),
        }
    return [records[e] for e in sorted(records)]


def _callbacks(config: FinetuneConfig, run_dir: Path, processor, gen_rows, progress: bool):
    class GPSTemperature(TrainerCallback):
        """GPS's schedule (:class:`gpslib.gps.GPSSettings`): tau annealed over the run, hard from ``hard_after``."""

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            base = unwrap_model(model)
            gps = base.config.gps_settings
            base.gps_tau = tau_schedule(state.global_step, max(1, state.max_steps), gps.tau_start, gps.tau_end)
            base.gps_hard = state.global_step >= state.max_steps * gps.hard_after

    class EpochMetrics(TrainerCallback):
        """After each evaluation: BLEU on generated answers; epochs.json rewritten atomically."""

        def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
            if not state.is_world_process_zero:
                return
            preds = predict(model, processor, gen_rows, batch_size=16, max_new_tokens=config.max_new_tokens)
            bleu = paper_bleu(preds["generated"].tolist(), preds["answer"].tolist())
            epoch = int(round(state.epoch))
            metrics["eval_bleu"] = bleu
            path = run_dir / "bleu.json"
            known = json.loads(path.read_text()) if path.exists() else {}
            known[str(epoch)] = bleu
            atomic_write_text(path, json.dumps(known, indent=1))
            # on_evaluate runs after the trainer logged these metrics, but do not rely on it
            latest = {"eval_loss": metrics["eval_loss"], "epoch": state.epoch}
            records = _epoch_records(state.log_history + [latest], {int(k): v for k, v in known.items()})
            atomic_write_text(run_dir / "epochs.json", json.dumps(records, indent=1))
            if progress:
                print(f"epoch {epoch}: val_loss {metrics['eval_loss']:.4f}, BLEU {bleu:.4f}", flush=True)

    callbacks = [EpochMetrics()]
    if config.reorder == "gps":
        callbacks += [GPSTemperature(), GPSTrace(run_dir / TRACE_FILE)]
    if config.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    return callbacks


class _FinetuneTrainer(ResumableTrainer):
    """``ResumableTrainer`` whose optimizer gives the Sinkformer (parameters named ``reorder_gps``)
    its own learning rate, ``gps_learning_rate`` (None: the Trainer's one for every parameter).

    The Trainer's parameter groups (with and without weight decay) are each split in two,
    LoRA's and the Sinkformer's, in a fixed order, so a resumed run rebuilds the same groups;
    the learning-rate schedule scales every group by the same factor.
    """

    def __init__(self, *args, gps_learning_rate: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.gps_learning_rate = gps_learning_rate

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.gps_learning_rate is None:
            return optimizer
        model = self.model if model is None else model
        gps = {id(p) for n, p in model.named_parameters() if "reorder_gps" in n}
        groups = []
        for group in optimizer.param_groups:
            options = {k: v for k, v in group.items() if k != "params"}
            groups.append({**options, "params": [p for p in group["params"] if id(p) not in gps]})
            groups.append({**options, "params": [p for p in group["params"] if id(p) in gps],
                           "lr": self.gps_learning_rate})
        optimizer.param_groups = []
        for group in groups:
            if group["params"]:
                optimizer.add_param_group(group)
        return optimizer


# what a run writes into its directory (a restart or a fresh start discards exactly these)
RUN_FILES = ("done.json", "config.json", "epochs.json", "bleu.json", "log_history.json", "eval.json", "adapter",
             ".adapter.tmp", "checkpoints", TRACE_FILE)
class _RunDirError(ValueError):
    """``run_dir`` holds a run this one may not reuse or resume; the message says what differs and what to do."""


def _setup() -> dict[str, Any]:
    """Device, precision, optimizer and world size of a run started here and now."""
    device = _device()
    return {
        "device": device,
        "precision": "fp16" if device == "cuda" else "fp32",
        "optimizer": "paged_adamw_8bit" if device == "cuda" else "adamw_torch",
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _differences(stored: dict[str, Any], settings: dict[str, Any], setup: dict[str, Any] | None = None,
                 fingerprint: str | None = None) -> list[str]:
    """``"name: old -> new"`` for each stored setting (and setup entry, and the base fingerprint) that differs."""
    old = stored.get("settings", {})
    lines = [f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(old) | set(settings))
             if old.get(k) != settings.get(k)]
    for key, value in (setup or {}).items():
        if stored.get(key) != value:
            lines.append(f"{key}: {stored.get(key)!r} -> {value!r}")
    if fingerprint is not None and stored.get("base_fingerprint") != fingerprint:
        lines.append(f"base model fingerprint: {stored.get('base_fingerprint')!r} -> {fingerprint!r} "
                     f"(GPSLIB_CACHE changed or the base model was retrained)")
    return lines


def _resume_point(run_dir: Path, settings: dict[str, Any], setup: dict[str, Any], fingerprint: str) -> Path | None:
    """The checkpoint an unfinished run in ``run_dir`` resumes from (None: start from scratch).

    Raises ValueError naming every difference when the run was started with other settings,
    on another setup or from another base model.
    """
    checkpoint = latest_complete_checkpoint(run_dir / "checkpoints", remove=_is_main_process())
    if checkpoint is None:
        return None
    hint = "resume it with its own settings, choose another run_dir, or pass restart=True (--restart) to discard it"
    try:
        stored = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        raise _RunDirError(f"{run_dir} holds an unfinished run ({checkpoint.name}) without a readable config.json; "
                           f"pass restart=True (--restart) to discard it") from None
    differences = _differences(stored, settings, setup, fingerprint)
    if differences:
        raise _RunDirError(f"{run_dir} holds an unfinished run ({checkpoint.name}) that differs from this one in "
                           f"{'; '.join(differences)}; {hint}")
    return checkpoint


def _discard_run(run_dir: Path) -> None:
    """Remove every file a run writes (:data:`RUN_FILES`) from ``run_dir``; other files stay."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def finetune(config: FinetuneConfig, run_dir: str | os.PathLike, progress: bool = True,
             restart: bool = False) -> pd.DataFrame:
    """Fine-tune one run into ``run_dir``; returns epochs.json as a table.

    Every setting is checked first (:meth:`FinetuneConfig.validate`), before a base model is
    trained or loaded and before anything is written. A finished run (``done.json``) with the
    same settings is returned as it is. An unfinished one resumes from its newest complete
    checkpoint (incomplete ones, left by a kill while saving, are skipped with a warning and
    removed); it must have been started with the same settings, on the same setup (device,
    precision, optimizer, world size) and from the same base model, else ValueError naming
    what differs. ``restart=True`` discards the run's files in ``run_dir`` (:data:`RUN_FILES`)
    and trains from scratch.
    """
    config.validate()
    run_dir = Path(run_dir)
    settings = json.loads(json.dumps(dataclasses.asdict(config)))  # as config.json stores them
    setup = _setup()
    if not restart and (run_dir / "done.json").exists():
        stored = json.loads((run_dir / "config.json").read_text())
        differences = _differences(stored, settings)
        if differences:
            raise _RunDirError(f"{run_dir} holds a finished run with other settings ({'; '.join(differences)}); "
                               f"choose another run_dir, or pass restart=True (--restart) to discard it")
        source, fingerprint = base_model_source(config)
        _check_fingerprint(run_dir, stored, fingerprint)
        return pd.DataFrame(json.loads((run_dir / "epochs.json").read_text()))
    source, fingerprint = base_model_source(config)
    checkpoint = None if restart else _resume_point(run_dir, settings, setup, fingerprint)
    seed_everything(config.seed)
    model, processor = _load_base(config, source)
    image_size = model.config.vision_config.image_size
    train = load_data(config, "train", config.train_samples, image_size)
    evaluation = load_data(config, "test", config.eval_samples, image_size)
    gen_rows = evaluation.select(range(min(config.gen_samples, len(evaluation))))
    model = get_peft_model(model, lora_config(config))
    info = {
        "settings": settings,
        "base_model": source,
        "base_fingerprint": fingerprint,
        **setup,
        "torch_threads": torch.get_num_threads(),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
    }
    # Only now, with every setting checked and the model and data loaded, does the run touch
    # its directory (a bad value leaves nothing behind). Process 0 writes; under torchrun it
    # does so before it sets up the process group (TrainingArguments below), which the others
    # wait for, so none of them trains against a half-cleared directory.
    if _is_main_process():
        if checkpoint is None:  # from scratch: no stale records of an earlier attempt
            _discard_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(info, indent=1))
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size * 4,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_ratio,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_strategy="steps",
        logging_steps=1,
        report_to="none",
        remove_unused_columns=False,
        label_names=["labels"],
        fp16=setup["precision"] == "fp16",
        optim=setup["optimizer"],
        use_cpu=setup["device"] == "cpu",
        ddp_backend="gloo" if setup["device"] == "cpu" and setup["world_size"] > 1 else None,
        seed=config.seed,
        data_seed=config.seed,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )
    grounding = config.reorder == "oracle"
    trainer = _FinetuneTrainer(
        gps_learning_rate=config.gps_learning_rate if config.reorder == "gps" else None,
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=VQACollator(processor, "train", grounding=grounding),
        callbacks=_callbacks(config, run_dir, processor, gen_rows, progress),
    )
    if not progress:  # the Trainer prints every log dict (with timings) when its bars are off
        trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
    if trainer.is_world_process_zero():
        adapter_tmp = run_dir / ".adapter.tmp"
        trainer.model.save_pretrained(adapter_tmp)
        processor.save_pretrained(adapter_tmp)
        if (run_dir / "adapter").exists():
            shutil.rmtree(run_dir / "adapter")
        os.replace(adapter_tmp, run_dir / "adapter")
        atomic_write_text(run_dir / "log_history.json", json.dumps(trainer.state.log_history, indent=1))
        best = trainer.state.best_model_checkpoint
        atomic_write_text(run_dir / "done.json", json.dumps({
            "best_checkpoint": None if best is None else Path(best).name,
            "best_val_loss": trainer.state.best_metric,
            "steps": trainer.state.global_step,
        }, indent=1))
    return pd.DataFrame(json.loads((run_dir / "epochs.json").read_text()))


def load_finetuned(run_dir: str | os.PathLike):
    """(model, processor) of a finished run: its base model with the best adapter, eval mode."""
    run_dir = Path(run_dir)
    if not (run_dir / "done.json").exists():
        raise FileNotFoundError(f"{run_dir} holds no finished run (no done.json); run finetune first")
    stored = json.loads((run_dir / "config.json").read_text())
    config = FinetuneConfig(**stored["settings"])
    source, fingerprint = base_model_source(config)
    _check_fingerprint(run_dir, stored, fingerprint)
    base, processor = _load_base(config, source)
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    return model.eval(), processor


def _check_fingerprint(run_dir: Path, stored: dict[str, Any], fingerprint: str) -> None:
    if stored.get("base_fingerprint") != fingerprint:
        raise _RunDirError(
            f"{run_dir} was fine-tuned from another base model (fingerprint {stored.get('base_fingerprint')!r}, "
            f"now {fingerprint!r}: GPSLIB_CACHE changed or the base model was retrained); train it again with "
            f"restart=True (--restart), or delete the run directory"
        )


@dataclasses.dataclass
class FinetuneRun:
    """The CLI's run-level flags (the rest are :class:`FinetuneConfig`'s)."""

    _argument_group_name = "run"
    # required; argparse.SUPPRESS keeps "(default: None)" out of --help
    run_dir: str = dataclasses.field(metadata={"help": "where the run's files go (an unfinished run there resumes)",
                                               "default": argparse.SUPPRESS})
    profile: str = setting("cpu", "the run profile whose settings are the defaults of the settings below", PROFILES)
    restart: bool = setting(False, "discard the run's files in --run-dir (finished or not) and train from scratch")
    no_progress: bool = setting(False, "no progress bars or per-epoch lines")
    threads: int | None = setting(None, "torch threads (unset: $GPSLIB_THREADS, else 1; gpslib.runtime); "
                                           "results depend on it, and the run records it")


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m gpslib.finetune --run-dir DIR [--profile cpu] [--reorder cosine] [--SETTING VALUE ...]``.

    A flag for every :class:`FinetuneConfig` field (``--help`` lists them with the
    profile's values as defaults), plus :class:`FinetuneRun`'s. Bad values exit with status
    2 and a message naming them, before a model is resolved, built or loaded.
    """
    prog = "python -m gpslib.finetune"
    description = (f"{__doc__.splitlines()[0]} Every setting defaults to the --profile's value "
                   f"(shown for the profile given, e.g. --profile smoke --help).")
    profile = preparse(argv, profile="cpu")["profile"]
    try:
        defaults = dataclasses.asdict(config_for_profile(check_profile(profile)))
    except ValueError as err:
        argparse.ArgumentParser(prog=prog).error(str(err))
    flags = settings_flags(FinetuneConfig, defaults, f"settings (defaults: the {profile} profile)")
    parser = HfArgumentParser((FinetuneRun, flags), prog=prog, description=description, allow_abbrev=False)
    run, values = parse(parser, argv)
    values.gps = {**defaults["gps"], **values.gps}  # --gps adds to the profile's GPS settings
    config = flags_to_config(parser, FinetuneConfig, values)
    try:
        setup(run.profile, seed=config.seed, threads=run.threads, verbose=False)
    except ValueError as err:
        parser.error(str(err))
    try:
        table = finetune(config, run.run_dir, progress=not run.no_progress, restart=run.restart)
    except _RunDirError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    if int(os.environ.get("RANK", "0")) == 0:
        print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
