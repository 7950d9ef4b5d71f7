"""GPS inside the model, measured after training (paper Section 3.2 and 4.4, Table 3's gps row).

Two views of finished fine-tuning runs (:mod:`gpslib.finetune`); the third, what P does
step by step during training, is recorded by every ``"gps"`` run itself
(:class:`gpslib.gps_trace.GPSTrace`, read with :func:`gpslib.gps_trace.read_trace`):

* :func:`training_curves`: the training and validation loss of runs (GPS and ``none``, one
  run per seed) as one tidy table, per logged step (``log_history.json``) or per epoch
  (``epochs.json``);
* :func:`inference_permutations`: the hard permutation a trained GPS applies at inference
  (no noise, ``tau_end``, Hungarian) to held-out prompts: how many tokens it moves, how far,
  how close its scores are to moving one, and, with ShapesVQA's grounding
  (:meth:`gpslib.data.VQACollator.grounding_maps`), whether it moves image tokens next to
  the words naming their object; :func:`permutation_summary` averages it per run, and
  :func:`inference_permutation_table` does so for several runs (one row each).

Positions: a prompt's movable tokens are its image tokens and its text tokens after BOS
(:mod:`gpslib.prompt_layout`); GPS orders ``[image; text]`` into their slots, so ``P = I``
already puts the image right after BOS (before ``USER:``). "Moved" and "displacement" below
are against the original prompt (what ``"none"`` feeds the model) unless named ``_local``
(against ``P = I``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import torch

from gpslib.data import VQACollator
from gpslib.finetune import FinetuneConfig, load_data, load_finetuned
from gpslib.generation import unwrap_model
from gpslib.gps_trace import inverse_order, permutation_stats
from gpslib.sinkhorn import perm_matrix_to_order
from gpslib.tokenmixer import grouped_order

__all__ = ["training_curves", "inference_permutations", "permutation_summary", "inference_permutation_table"]


# ----------------------------------------------------------------------------- training curves
def _run_columns(run_dir: Path) -> dict[str, Any]:
    settings = json.loads((run_dir / "config.json").read_text())["settings"]
    return {"strategy": settings["reorder"], "seed": settings["seed"], "base": settings.get("base"),
            "position_gap": settings.get("position_gap")}


def training_curves(run_dirs: Iterable[str | os.PathLike] | Mapping[Any, str | os.PathLike],
                    level: str = "step") -> pd.DataFrame:
    """The training and validation loss of fine-tuning runs, one tidy table.

    ``run_dirs``: run directories (:func:`gpslib.finetune.finetune`), or a mapping label ->
    directory (the label goes into the ``run`` column; else the directory's name does).
    ``level="step"``: every logged training step and every evaluation, from the run's
    ``log_history.json`` (written when the run finishes; an unfinished run falls back to
    its epochs); ``level="epoch"``: ``epochs.json`` (the mean training loss of the epoch,
    the validation loss, and ``bleu``). Columns: run, strategy, seed, base, position_gap
    (from the run's ``config.json``), split (``"train"`` / ``"val"``), epoch, step (NaN at
    the epoch level), loss, and, where logged, grad_norm, learning_rate, bleu.
    """
    if level not in ("step", "epoch"):
        raise ValueError(f"level must be 'step' or 'epoch'; got level={level!r}")
    items = run_dirs.items() if isinstance(run_dirs, Mapping) else ((None, d) for d in run_dirs)
    rows = []
    for label, run_dir in items:
        run_dir = Path(run_dir)
        if not (run_dir / "config.json").exists():
            raise FileNotFoundError(f"{run_dir} holds no fine-tuning run (no config.json)")
        base = {"run": run_dir.name if label is None else label, **_run_columns(run_dir)}
        history = run_dir / "log_history.json"
        if level == "step" and history.exists():
            for e in json.loads(history.read_text()):
                if "loss" in e:
                    rows.append({**base, "split": "train", "epoch": e.get("epoch"), "step": e.get("step"),
                                 "loss": e["loss"], "grad_norm": e.get("grad_norm"),
                                 "learning_rate": e.get("learning_rate")})
                elif "eval_loss" in e:
                    rows.append({**base, "split": "val", "epoch": e.get("epoch"), "step": e.get("step"),
                                 "loss": e["eval_loss"], "bleu": e.get("eval_bleu")})
            continue
        epochs = run_dir / "epochs.json"
        for e in (json.loads(epochs.read_text()) if epochs.exists() else []):
            rows.append({**base, "split": "train", "epoch": e["epoch"], "step": math.nan, "loss": e["train_loss"]})
            rows.append({**base, "split": "val", "epoch": e["epoch"], "step": math.nan, "loss": e["val_loss"],
                         "bleu": e.get("bleu")})
    columns = ["run", "strategy", "seed", "base", "position_gap", "split", "epoch", "step", "loss", "grad_norm",
               "learning_rate", "bleu"]
    table = pd.DataFrame(rows)
    return table.reindex(columns=columns) if len(table) else pd.DataFrame(columns=columns)


# ----------------------------------------------------------------------------- the inference permutation
def _nearest(slot_a: list[int], slots_b: list[int]) -> int:
    return min(abs(a - b) for a in slot_a for b in slots_b)


@torch.no_grad()
def inference_permutations(run_dir: str | os.PathLike, rows=None, num_samples: int = 64,
                           batch_size: int = 32, model=None, processor=None) -> pd.DataFrame:
    """The hard permutation a trained GPS applies at inference, per held-out prompt.

    ``run_dir``: a finished ``"gps"`` run (:func:`gpslib.finetune.load_finetuned`; or pass
    its ``model`` and ``processor``). ``rows``: schema rows (default: the run's first
    ``num_samples`` held-out rows, as :func:`gpslib.evaluation.evaluate_run` reads them).
    The prompts go through the model's own reordering in eval mode (no noise, ``tau_end``,
    Hungarian). One row per prompt:

    * ``n_image``, ``n_text``: the movable tokens (image tokens; text after BOS);
    * ``moved``, ``image_moved``, ``text_moved``: fractions of those tokens whose position
      differs from the original prompt's (what ``"none"`` feeds the model);
      ``displacement``, ``image_displacement``: mean |new position - old position|;
    * ``moved_local``, ``displacement_local``: the same against ``P = I`` (image right
      after BOS), the Sinkformer's residual starting point;
    * ``margin_min``, ``margin_mean``: per token, its noise-free score for its own slot
      (``A_O + alpha``) minus its best other score, the smallest and the mean over the
      prompt: how far GPS is from moving a token (all positive: the identity);
    * with grounding (ShapesVQA rows): ``grounded_image`` (image tokens showing an object the
      question names), ``distance_original`` / ``distance_gps`` / ``distance_oracle``: their
      mean distance (in positions) to the nearest word naming their object in the original
      prompt, in GPS's order and in the oracle's (:class:`gpslib.reordering` ``"oracle"``,
      placed ``"before"``), and ``adjacent_gps`` / ``adjacent_oracle``: the fraction right
      next to such a word (distance 1); NaN without grounded tokens;
    * ``order``: the local order (gather indices into ``[image; text]``) as a list.
    """
    run_dir = Path(run_dir)
    if model is None or processor is None:
        model, processor = load_finetuned(run_dir)
    inner = unwrap_model(model)
    if inner.config.reorder != "gps":
        raise ValueError(f"{run_dir} is a {inner.config.reorder!r} run; the inference permutation is GPS's")
    if rows is None:
        config = FinetuneConfig(**json.loads((run_dir / "config.json").read_text())["settings"])
        rows = load_data(config, "test", num_samples, inner.config.vision_config.image_size)
    rows = [rows[i] for i in range(len(rows))]
    collate = VQACollator(processor, "generate")
    grounded = all("objects" in r and "mentions" in r for r in rows)
    was_training = inner.training
    inner.eval()
    records = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            batch = collate(chunk)
            device = next(inner.parameters()).device
            r = inner.reorder_inputs(batch["input_ids"].to(device), batch["pixel_values"].to(device, inner.dtype),
                                     batch["attention_mask"].to(device))
            layout = r.layout
            local = perm_matrix_to_order(r.perm_matrix).cpu()  # (B, L)
            m = layout.image_pos.shape[1]
            mask = torch.cat([torch.ones(len(chunk), m, dtype=torch.bool), layout.text_mask.cpu()], dim=1)
            margins = _identity_margins(inner, batch, device, mask.to(device)).cpu()  # (B, L)
            stats_local = permutation_stats(local, mask, m)
            slot_pos = layout.slot_pos.cpu()
            local_pos = layout.local_pos.cpu()
            new_pos = slot_pos.gather(1, inverse_order(local))  # (B, L) the position each token lands on
            for b, row in enumerate(chunk):
                n_text = int(layout.n_text[b])
                real = mask[b]
                old, new = local_pos[b][real], new_pos[b][real]
                shift = (new - old).abs().float()
                is_image = torch.arange(real.numel())[real] < m
                record = {
                    "n_image": m, "n_text": n_text,
                    "moved": float((shift > 0).float().mean()),
                    "image_moved": float((shift[is_image] > 0).float().mean()),
                    "text_moved": float((shift[~is_image] > 0).float().mean()) if n_text else math.nan,
                    "displacement": float(shift.mean()), "image_displacement": float(shift[is_image].mean()),
                    "moved_local": float(stats_local["moved"][b]), "displacement_local": float(stats_local["displacement"][b]),
                    "margin_min": float(margins[b][real].min()), "margin_mean": float(margins[b][real].mean()),
                }
                if grounded:
                    record.update(_grounding(collate.grounding_maps(row), old.tolist(), new.tolist(), m, n_text))
                record["order"] = local[b][: m + n_text].tolist()
                records.append(record)
    finally:
        inner.train(was_training)
    return pd.DataFrame(records)


def _identity_margins(inner, batch, device, mask: torch.Tensor) -> torch.Tensor:
    """Per token of [image; text]: its noise-free score for its own slot minus its best other one, (B, L).

    S = A_O + alpha * I of the Sinkformer on the prompt's tokens; a token whose margin is
    positive in every row keeps the identity at inference; padded tokens get +inf.
    """
    parts = inner.prompt_embeddings(batch["input_ids"].to(device), batch["pixel_values"].to(device, inner.dtype),
                                    batch["attention_mask"].to(device))
    x = torch.cat([parts["image_embeds"], parts["text_embeds"]], dim=1)
    gps = inner.reorder_gps
    S = gps.scores(x.to(next(gps.parameters()).dtype), mask).float()  # (B, L, L)
    n = S.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=S.device)
    others = S.masked_fill(eye | ~mask[:, None, :], float("-inf")).amax(-1)  # (B, L)
    return torch.where(mask, torch.diagonal(S, dim1=-2, dim2=-1) - others, torch.full_like(others, float("inf")))


def _grounding(maps: dict[str, list[int]], old: list[int], new: list[int], m: int, n_text: int) -> dict[str, Any]:
    """Distances from grounded image tokens to the words naming their object: original, GPS and oracle orders.

    ``old`` / ``new``: the original and GPS positions of the real ``[image; text]`` tokens.
    """
    image_object, text_object, assignment = maps["image_object"], maps["text_object"], maps["assignment"]
    if len(text_object) != n_text:
        raise ValueError(f"the grounding names {len(text_object)} prompt text tokens, the prompt has {n_text}")
    oracle = grouped_order(torch.tensor([assignment]), n_text, "before")[0]  # (M + N,)
    oracle_slot = inverse_order(oracle[None])[0].tolist()
    slots = sorted(old)  # the slots' positions, in order
    oracle_pos = [slots[s] for s in oracle_slot]
    d = {"original": [], "gps": [], "oracle": []}
    for i in range(m):
        o = image_object[i]
        words = [m + t for t, w in enumerate(text_object) if w == o and o >= 0]
        if not words:
            continue
        for name, pos in (("original", old), ("gps", new), ("oracle", oracle_pos)):
            d[name].append(_nearest([pos[i]], [pos[w] for w in words]))
    n = len(d["gps"])

    def avg(values, f=lambda v: v):
        return float(sum(f(v) for v in values) / n) if n else math.nan

    return {"grounded_image": n, "distance_original": avg(d["original"]), "distance_gps": avg(d["gps"]),
            "distance_oracle": avg(d["oracle"]), "adjacent_gps": avg(d["gps"], lambda v: float(v == 1)),
            "adjacent_oracle": avg(d["oracle"], lambda v: float(v == 1))}


def permutation_summary(per_prompt: pd.DataFrame) -> dict[str, float]:
    """Means over prompts of :func:`inference_permutations`' numeric columns (``order`` left out)."""
    numeric = per_prompt.drop(columns=["order"], errors="ignore").select_dtypes("number")
    return {k: float(v) for k, v in numeric.mean().items()}


def inference_permutation_table(run_dirs: Mapping[Any, str | os.PathLike], num_samples: int = 64) -> pd.DataFrame:
    """:func:`permutation_summary` of :func:`inference_permutations` for each finished ``"gps"`` run.

    ``run_dirs``: label -> run directory. One row per run (index ``run``, the label), the
    columns :func:`inference_permutations` describes (means over ``num_samples`` held-out prompts).
    """
    rows = {label: permutation_summary(inference_permutations(d, num_samples=num_samples))
            for label, d in run_dirs.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run")
