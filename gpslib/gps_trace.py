"""What GPS's P does during fine-tuning, step by step (paper Section 3.2, Algorithm 2, inside the model).

:class:`GPSTrace` is the ``Trainer`` callback :func:`gpslib.finetune.finetune` adds to every
``"gps"`` run: per optimizer step it records how close P is to a permutation and to the
identity, how far it moves the prompt's tokens in training and at inference, how much
``P @ tokens`` blends them, the scale of the learned scores against ``alpha`` and the
gradient norms of the Sinkformer and of LoRA, into the run's ``gps_trace.json``
(:func:`read_trace`). It draws its Gumbel noise from its own generator, so a traced run
trains exactly as an untraced one. :func:`permutation_stats` measures one order.

Orders follow :mod:`gpslib.sinkhorn` (gather indices); here they are local orders over a
prompt's ``[image; text]`` tokens (:mod:`gpslib.prompt_layout`), measured against
``P = I``, which already puts the image right after BOS (:mod:`gpslib.gps_diagnostics`
measures the inference permutation against the original prompt too).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import TrainerCallback

from gpslib.atomic_files import atomic_write_text
from gpslib.generation import unwrap_model
from gpslib.gps import GumbelPermutationSinkformer
from gpslib.sinkhorn import hard_permutation, perm_matrix_to_order

__all__ = ["TRACE_FILE", "inverse_order", "permutation_stats", "GPSTrace", "read_trace"]

TRACE_FILE = "gps_trace.json"  # in the run directory


def inverse_order(order: torch.Tensor) -> torch.Tensor:
    """order (B, L) gather indices -> (B, L): the slot each token lands in."""
    slots = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, slots)


def permutation_stats(order: torch.Tensor, mask: torch.Tensor, n_image: int) -> dict[str, torch.Tensor]:
    """How far a local order over ``[image; text]`` moves the real tokens, against ``P = I``.

    order (B, L) gather indices; mask (B, L) bool, True on real tokens (padded text tokens
    map to themselves); n_image: M, the image tokens come first. Returns per sample (B,)
    float tensors: ``displacement`` (mean |new slot - old slot| over real tokens),
    ``moved`` (fraction of real tokens not in their own slot), ``image_moved`` (fraction of
    the image tokens moved), ``text_moved`` (of the real text tokens).
    """
    if order.dim() != 2 or order.shape != mask.shape:
        raise ValueError(f"order and mask must both be (B, L); got {tuple(order.shape)} and {tuple(mask.shape)}")
    slot = inverse_order(order).float()  # (B, L) new slot of each token
    own = torch.arange(order.shape[1], device=order.device).float()
    real = mask.float()
    moved = (slot != own).float() * real
    is_image = (own < n_image).float()
    text = real * (1 - is_image)
    return {
        "displacement": ((slot - own).abs() * real).sum(1) / real.sum(1).clamp_min(1),
        "moved": moved.sum(1) / real.sum(1).clamp_min(1),
        "image_moved": (moved * is_image).sum(1) / max(n_image, 1),
        "text_moved": (moved * text).sum(1) / text.sum(1).clamp_min(1),
    }


def _row_entropy(P: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy of P's real rows over log(real tokens): 0 = a permutation, 1 = uniform. (B, L, L) -> (B,)."""
    n = mask.sum(1).clamp_min(2).float()
    ent = -(P * P.clamp_min(1e-30).log()).sum(-1)  # (B, L)
    return (ent * mask).sum(1) / mask.sum(1).clamp_min(1) / n.log()


def _diagonal(P: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean P_jj over the real rows: 1 = the identity. (B, L, L) -> (B,)."""
    real = mask.float()
    return (torch.diagonal(P, dim1=-2, dim2=-1) * real).sum(1) / real.sum(1).clamp_min(1)


class GPSTrace(TrainerCallback):
    """Per optimizer step of a ``"gps"`` run: what P does to the prompt, and the gradient norms.

    Hooks the Sinkformer, keeps the first micro-batch of each step and, after the step,
    measures on it (no gradient; Gumbel noise from its own generator, seeded by the step):

    * ``tau``, ``hard``: the schedule's values for the step;
    * ``entropy``: mean row entropy of a soft P at the step's ``tau`` with noise, over
      log(tokens) (1 = uniform rows, 0 = a permutation); ``diagonal``: its mean P_jj
      (1 = the identity); ``entropy_clean``, ``diagonal_clean``: the same without noise;
    * ``mixing``: ||P x - x|| / ||x|| of the forward's own P over the real tokens (what
      ``P @ tokens`` changed: soft, blending; hard, moving);
    * ``moved_train``, ``image_moved_train``, ``displacement_train``: of the forward's P
      made a permutation (itself when hard, else its Hungarian permutation);
    * ``moved_infer``, ``image_moved_infer``, ``displacement_infer``: of the inference
      permutation (no noise, ``tau_end``, Hungarian) of the same tokens;
    * ``score_std``, ``score_diag``: the learned scores ``A_O`` (without ``alpha * I``),
      standard deviation over the real off-diagonal pairs and mean of the diagonal, to set
      against ``alpha`` and the noise; ``margin_mean``, ``margin_min``: per real token its
      noise-free score for its own slot minus its best other one (``S_jj - max_k S_jk``),
      mean and smallest over the batch (all positive: the inference permutation is P = I);
    * ``grad_gps``, ``grad_lora``: gradient norms (after clipping) of the Sinkformer's and
      LoRA's parameters; ``loss``: the step's logged training loss.

    Moves are against ``P = I``. The records go to ``path`` (JSON) at each epoch's end and at
    the end of training, from the main process; a resumed run keeps the records of the steps
    it resumes after.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self.n_image = 0
        self._pending: dict[str, Any] | None = None
        self._grads: dict[str, float] = {}
        self._busy = False
        self._hooks: list = []

    def _hook(self, module, args, kwargs, output):
        if self._busy or not module.training or self._pending is not None:
            return
        self._pending = {"module": module, "x": args[0].detach(), "mask": kwargs.get("mask"), "P": output.detach(),
                         "tau": float(kwargs.get("tau", 1.0)), "hard": bool(kwargs.get("hard", False))}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.n_image = int(unwrap_model(model).config.image_seq_length)
        if state.global_step > 0 and self.path.exists():  # resumed: keep the steps before the checkpoint
            self.records = [r for r in json.loads(self.path.read_text()) if r["step"] <= state.global_step]
        for module in model.modules():
            if isinstance(module, GumbelPermutationSinkformer):
                self._hooks.append(module.register_forward_hook(self._hook, with_kwargs=True))

    def on_step_begin(self, args, state, control, **kwargs):
        self._pending, self._grads = None, {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        sums = {"gps": 0.0, "lora": 0.0}
        for name, p in model.named_parameters():
            key = "gps" if "reorder_gps" in name else "lora" if "lora_" in name else None
            if key and p.grad is not None:
                sums[key] += float(p.grad.detach().float().pow(2).sum())
        self._grads = {f"grad_{k}": math.sqrt(v) for k, v in sums.items()}

    def on_step_end(self, args, state, control, **kwargs):
        if self._pending is None:
            return
        record = {"step": state.global_step, **self._measure(self._pending, state.global_step), **self._grads}
        record["loss"] = math.nan  # filled by on_log
        self.records.append(record)
        self._pending = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.records and logs and "loss" in logs and self.records[-1]["step"] == state.global_step:
            self.records[-1]["loss"] = float(logs["loss"])

    def on_epoch_end(self, args, state, control, **kwargs):
        self._write(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._write(state)
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _write(self, state) -> None:
        if self.records and state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(self.records, indent=0))

    @torch.no_grad()
    def _measure(self, pending: dict[str, Any], step: int) -> dict[str, Any]:
        module: GumbelPermutationSinkformer = pending["module"]
        x, P, tau = pending["x"], pending["P"], pending["tau"]
        settings = module.settings
        b, n, _ = x.shape
        mask = pending["mask"] if pending["mask"] is not None else torch.ones(b, n, dtype=torch.bool, device=x.device)
        self._busy = True
        try:
            gen = torch.Generator(device=x.device).manual_seed(10_007 + step)
            soft = module(x, tau=tau, hard=False, noise=True, mask=mask, generator=gen)
            clean = module(x, tau=tau, hard=False, noise=False, mask=mask)
            infer = module(x, tau=settings.tau_end, hard=True, noise=False, mask=mask)
            S = module.scores(x, mask)  # (B, L, L) = A_O + alpha * I
        finally:
            self._busy = False
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        pair = mask[:, :, None] & mask[:, None, :]
        learned = S - settings.alpha * eye  # A_O
        others = S.masked_fill(eye | ~mask[:, None, :], float("-inf")).amax(-1)  # (B, L)
        margin = (torch.diagonal(S, dim1=-2, dim2=-1) - others)[mask]
        hard_now = bool(((P == 0) | (P == 1)).all())
        train = permutation_stats(perm_matrix_to_order(P if hard_now else hard_permutation(P)), mask, self.n_image)
        inference = permutation_stats(perm_matrix_to_order(infer), mask, self.n_image)
        real, xf = mask.float(), x.float()
        mixing = ((P.float() @ xf - xf).norm(dim=-1) * real).sum() / ((xf.norm(dim=-1) * real).sum()).clamp_min(1e-12)
        off = learned[pair & ~eye]
        return {
            "tau": tau, "hard": pending["hard"],
            "entropy": float(_row_entropy(soft, mask).mean()), "diagonal": float(_diagonal(soft, mask).mean()),
            "entropy_clean": float(_row_entropy(clean, mask).mean()),
            "diagonal_clean": float(_diagonal(clean, mask).mean()),
            "mixing": float(mixing),
            **{f"{k}_train": float(train[k].mean()) for k in ("moved", "image_moved", "displacement")},
            **{f"{k}_infer": float(inference[k].mean()) for k in ("moved", "image_moved", "displacement")},
            "score_std": float(off.std()) if off.numel() > 1 else math.nan,
            "score_diag": float(torch.diagonal(learned, dim1=-2, dim2=-1)[mask].mean()),
            "margin_mean": float(margin.mean()), "margin_min": float(margin.min()),
        }


def read_trace(run_dir_or_file: str | os.PathLike) -> pd.DataFrame:
    """A run's :class:`GPSTrace` records as a table, one row per optimizer step (a run directory or the file)."""
    path = Path(run_dir_or_file)
    if path.is_dir():
        path = path / TRACE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no GPS trace at {path}: only 'gps' runs write one ({TRACE_FILE})")
    return pd.DataFrame(json.loads(path.read_text()))
