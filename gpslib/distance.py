"""Does RoPE distance matter? The position-gap experiment (paper Section 1, the hypothesis behind everything).

The paper's hypothesis: an image token far (in RoPE positions) from the word it belongs to
scores lower against it, so a LLaMA-based VLM answers worse, and moving related tokens next
to each other helps. The embedded model's prompts are short, so distance is made a setting
(:mod:`gpslib.positions`): ``position_gap`` = g virtual positions between the leading block of
image tokens and everything after it. The prediction, written before any number: **if RoPE
distance hurts, the original order (``none``) loses accuracy as g grows, while the oracle
order, which puts each object's patches next to its word, stays flat.**

* :data:`CONDITIONS`: the orders and position schemes compared: ``none``, ``oracle``,
  ``cosine`` (TokenMixer), ``random`` (as many tokens moved as cosine moves, to random words),
  ``v2pe`` and ``cca`` (position-only baselines: image tokens on fractional or concentric
  positions, in the original order);
* :func:`run_distance_experiment`: every condition at every gap on the same held-out
  questions: greedy answers scored against the short answer (accuracy) and the mean
  log-likelihood of the reference answer's tokens;
* :func:`distance_table`: accuracy and log-likelihood per gap, condition and question type,
  with 95% bootstrap intervals over questions (:func:`gpslib.intervals.bootstrap_ci`);
* :func:`attention_to_objects`: layer by layer, the attention mass from each question word
  that names an object to that object's patches (ShapesVQA's grounding), against g;
* :func:`distance_verdict`: the conclusion, generated from the numbers: which curves fell
  between g = 0 and the largest g, by how much, and whether beyond their paired intervals.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from gpslib.data import VQACollator
from gpslib.generation import unwrap_model
from gpslib.intervals import bootstrap_ci, paired_bootstrap_difference
from gpslib.metrics import answer_log_likelihood
from gpslib.reordering_config import LAYOUTS
from gpslib.shapes_vqa import CHANCE, answer_correct

__all__ = [
    "CONDITIONS",
    "PREDICTION",
    "condition_settings",
    "collate_questions",
    "score_condition",
    "run_distance_experiment",
    "distance_table",
    "attention_to_objects",
    "distance_verdict",
]

# condition -> the ReorderingLlavaConfig fields it sets (the gap is set per run)
CONDITIONS: dict[str, dict[str, str]] = LAYOUTS
PREDICTION = ("If RoPE distance hurts, the original order (none) loses accuracy as the gap g grows, "
              "while the oracle order, which puts each object's patches next to its word, stays flat.")


def condition_settings(condition: str, gap: int) -> dict:
    """The config fields of ``condition`` at ``gap`` (ValueError naming an unknown condition)."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; valid conditions are {list(CONDITIONS)}")
    return {**CONDITIONS[condition], "position_gap": gap}


def collate_questions(processor, rows: Sequence[dict], batch_size: int) -> list[tuple[dict, dict, list[dict]]]:
    """Batches of (generation inputs, teacher-forced inputs with labels, rows), both with the oracle grounding."""
    gen, train = VQACollator(processor, "generate", grounding=True), VQACollator(processor, "train", grounding=True)
    out = []
    for start in range(0, len(rows), batch_size):
        part = list(rows[start:start + batch_size])
        out.append((gen(part), train(part), part))
    return out


@torch.no_grad()
def score_condition(model, processor, batches, settings: dict, max_new_tokens: int = 16) -> pd.DataFrame:
    """Answers and answer log-likelihoods of ``model`` with the config fields ``settings``.

    The fields are set for the call and restored afterwards. Returns one row per question:
    question_type, correct (greedy answer against the short answer), loglik (mean
    log-probability of the reference answer's tokens, teacher forced).
    """
    inner = unwrap_model(model)
    old = {k: getattr(inner.config, k) for k in settings}
    records = []
    try:
        for k, v in settings.items():
            setattr(inner.config, k, v)
        device = next(model.parameters()).device
        for gen, train, rows in batches:
            g = {k: v.to(device) for k, v in gen.items()}
            out = model.generate(**g, max_new_tokens=max_new_tokens, do_sample=False)
            texts = processor.tokenizer.batch_decode(out[:, g["input_ids"].shape[1]:], skip_special_tokens=True)
            t = {k: v.to(device) for k, v in train.items()}
            total, count = answer_log_likelihood(model(**t).logits, t["labels"])
            loglik = (total / count.clamp_min(1)).tolist()
            for row, text, ll in zip(rows, texts, loglik):
                qtype = row["question_type"]
                records.append({"question_type": qtype, "generated": text.strip(), "loglik": ll,
                                "correct": answer_correct(text, row["short_answer"], qtype)})
    finally:
        for k, v in old.items():
            setattr(inner.config, k, v)
    return pd.DataFrame(records)


def run_distance_experiment(model, processor, rows: Sequence[dict], gaps: Iterable[int],
                            conditions: Iterable[str] = tuple(CONDITIONS), batch_size: int = 100,
                            max_new_tokens: int = 16, progress: bool = False) -> pd.DataFrame:
    """Every condition at every gap on ``rows`` (short-answer ShapesVQA questions).

    ``model`` is a :class:`gpslib.reordering.ReorderingLlavaForConditionalGeneration` (its
    settings are switched per condition and restored). Returns one row per (condition, gap,
    question): condition, gap, question (index in ``rows``), question_type, correct, loglik,
    generated.
    """
    rows = [r for r in rows]
    if not rows or any(r.get("question_type") not in CHANCE for r in rows):
        raise ValueError("rows must be short-answer ShapesVQA questions (question_type in CHANCE)")
    batches = collate_questions(processor, rows, batch_size)
    gaps, conditions = list(gaps), list(conditions)
    frames = []
    with tqdm(total=len(gaps) * len(conditions), disable=not progress, desc="distance", mininterval=10) as bar:
        for condition in conditions:
            for gap in gaps:
                df = score_condition(model, processor, batches, condition_settings(condition, gap), max_new_tokens)
                frames.append(df.assign(condition=condition, gap=gap, question=range(len(df))))
                bar.update(1)
    cols = ["condition", "gap", "question", "question_type", "correct", "loglik", "generated"]
    return pd.concat(frames, ignore_index=True)[cols]


def distance_table(results: pd.DataFrame, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Accuracy (and answer log-likelihood) per gap, strategy and question type, with bootstrap intervals.

    Columns: gap, strategy, question_type (each type and ``all``), accuracy, ci_low, ci_high,
    n, chance, loglik, loglik_low, loglik_high. Intervals: percentile bootstrap over the
    questions (seeded, so a rerun gives the same table).
    """
    rows = []
    for (condition, gap), part in results.groupby(["condition", "gap"], sort=False):
        for qtype in [*CHANCE, "all"]:
            sub = part if qtype == "all" else part[part["question_type"] == qtype]
            if not len(sub):
                continue
            acc, lo, hi = bootstrap_ci(sub["correct"].astype(float), confidence, n_boot, seed)
            ll, ll_lo, ll_hi = bootstrap_ci(sub["loglik"], confidence, n_boot, seed)
            chance = float(sub["question_type"].map(CHANCE).mean())
            rows.append({"gap": int(gap), "strategy": condition, "question_type": qtype, "accuracy": acc,
                         "ci_low": lo, "ci_high": hi, "n": len(sub), "chance": chance,
                         "loglik": ll, "loglik_low": ll_lo, "loglik_high": ll_hi})
    return pd.DataFrame(rows)


@torch.no_grad()
def attention_to_objects(model, processor, rows: Sequence[dict], gaps: Iterable[int],
                         conditions: Iterable[str] = ("none", "oracle"), batch_size: int = 50) -> pd.DataFrame:
    """Attention mass from object-naming question words to their object's patches, per layer.

    For each question word that names an object (ShapesVQA's ``mentions``), the share of its
    attention (averaged over heads) that goes to the image tokens showing that object, at the
    word's first token, in the reordered sequence. Runs with eager attention (restored after).
    Returns columns strategy, gap, layer, mass (mean over words), n_words, uniform (the mass
    a word would give those patches if it attended uniformly to every earlier token).
    """
    inner = unwrap_model(model)
    collate = VQACollator(processor, "generate", grounding=True)
    old_impl = inner.config.text_config._attn_implementation
    old = {k: getattr(inner.config, k) for k in ("reorder", "position_scheme", "position_gap")}
    inner.set_attn_implementation("eager")
    device = next(model.parameters()).device
    records = []
    try:
        for condition in conditions:
            for gap in gaps:
                for k, v in condition_settings(condition, gap).items():
                    setattr(inner.config, k, v)
                sums, counts, uniform = None, 0, 0.0
                for start in range(0, len(rows), batch_size):
                    part = list(rows[start:start + batch_size])
                    batch = {k: v.to(device) for k, v in collate(part).items()}
                    maps = [collate.grounding_maps(r) for r in part]
                    r = inner.reorder_inputs(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], None,
                                             batch["reorder_assignment"])
                    out = inner.model.language_model(inputs_embeds=r.inputs_embeds, attention_mask=r.attention_mask,
                                                     position_ids=r.position_ids, output_attentions=True)
                    att = torch.stack([a.mean(1) for a in out.attentions], 1)  # (B, layers, T, T)
                    position = torch.empty_like(r.order)
                    position.scatter_(1, r.order, torch.arange(r.order.shape[1], device=device).expand_as(r.order))
                    for b, g in enumerate(maps):
                        image_pos, text_pos = r.layout.image_pos[b], r.layout.text_pos[b]
                        image_object = torch.tensor(g["image_object"], device=device)
                        seen = set()
                        for j, obj in enumerate(g["text_object"]):
                            if obj < 0 or obj in seen:
                                continue
                            seen.add(obj)  # first token of the first word naming the object
                            patches = position[b, image_pos[image_object == obj]]
                            if not len(patches):
                                continue
                            q = int(position[b, text_pos[j]])
                            mass = att[b, :, q, patches].sum(-1)  # (layers,)
                            sums = mass if sums is None else sums + mass
                            counts += 1
                            uniform += float((patches <= q).sum()) / (q + 1 - int((r.attention_mask[b] == 0).sum()))
                if counts:
                    for layer, value in enumerate((sums / counts).tolist()):
                        records.append({"strategy": condition, "gap": int(gap), "layer": layer, "mass": value,
                                        "n_words": counts, "uniform": uniform / counts})
    finally:
        inner.set_attn_implementation(old_impl)
        for k, v in old.items():
            setattr(inner.config, k, v)
    return pd.DataFrame(records)


def _per_question(results: pd.DataFrame, condition: str, gap: int, column: str) -> np.ndarray:
    """``column`` of one condition at one gap, in question order (so two such arrays pair up)."""
    part = results[(results["condition"] == condition) & (results["gap"] == gap)]
    return part.sort_values("question")[column].astype(float).to_numpy()


def _paired(results: pd.DataFrame, condition: str, gap_a: int, gap_b: int, column: str) -> np.ndarray:
    return _per_question(results, condition, gap_a, column), _per_question(results, condition, gap_b, column)


def distance_verdict(results: pd.DataFrame, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> str:
    """The conclusion of the experiment, generated from ``results`` (:func:`run_distance_experiment`).

    For each condition: the change of accuracy from the smallest to the largest gap, with its
    paired bootstrap interval over questions, and whether it is beyond the interval; then
    the difference between the changes of ``none`` and ``oracle`` (what the hypothesis
    predicts to be negative) with its interval, and the verdict: *supported* (none falls
    beyond its interval, and by more than oracle beyond the interval of the difference),
    *distance hurts but reordering does not help* (none falls, the difference's interval
    includes zero) or *not supported at this scale* (none's change is within its interval,
    or positive). Last, the levels beside the slopes: oracle minus none at every gap (paired
    bootstrap over questions), and the gaps where the oracle order answers better or worse
    than the original beyond the interval (a flat oracle curve can still lie below none's).
    """
    gaps = sorted(results["gap"].unique())
    if len(gaps) < 2:
        raise ValueError(f"the verdict needs at least two gaps; got {gaps}")
    g0, g1 = gaps[0], gaps[-1]
    lines, drops = [], {}
    for condition in results["condition"].unique():
        a, b = _paired(results, condition, g1, g0, "correct")
        change, lo, hi = paired_bootstrap_difference(a, b, confidence, n_boot, seed)
        drops[condition] = (a, b)
        beyond = "beyond its interval" if (hi < 0 or lo > 0) else "within its interval (no change we can call real)"
        lines.append(f"{condition}: accuracy {b.mean():.3f} at g={g0} -> {a.mean():.3f} at g={g1}, change "
                     f"{change:+.3f} [{lo:+.3f}, {hi:+.3f}], {beyond}")
    verdict = ""
    if {"none", "oracle"} <= set(drops):
        (n1, n0), (o1, o0) = drops["none"], drops["oracle"]
        did, lo, hi = paired_bootstrap_difference(n1 - n0, o1 - o0, confidence, n_boot, seed)
        _, n_lo, n_hi = paired_bootstrap_difference(n1, n0, confidence, n_boot, seed)
        lines.append(f"none's change minus oracle's change: {did:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        if n_hi < 0 and hi < 0:
            verdict = (f"Supported at this scale: without reordering, accuracy falls as the image moves {g1} "
                       f"positions away, and it falls more than with the oracle order.")
        elif n_hi < 0:
            verdict = (f"Distance hurts at this scale (none falls beyond its interval), but the oracle order "
                       f"does not protect against it more than its interval allows: reordering's benefit "
                       f"is not shown.")
        else:
            verdict = (f"Not supported at this scale: moving the image {g1} positions away does not lower "
                       f"the accuracy of the original order beyond its interval.")
    level = _level_sentence(results, gaps, confidence, n_boot, seed) if {"none", "oracle"} <= set(drops) else []
    return "\n".join(lines + ([f"Verdict on the paper's hypothesis: {verdict}"] if verdict else []) + level)


def _level_sentence(results: pd.DataFrame, gaps: list, confidence: float, n_boot: int, seed: int) -> list[str]:
    """Oracle minus none at each gap (paired over questions), and what it says beside the slopes' verdict."""
    diffs, better, worse, same = [], [], [], []
    for gap in gaps:
        d, lo, hi = paired_bootstrap_difference(_per_question(results, "oracle", gap, "correct"),
                                                _per_question(results, "none", gap, "correct"),
                                                confidence, n_boot, seed)
        diffs.append(f"g={gap} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        (better if lo > 0 else worse if hi < 0 else same).append(gap)
    if len(better) == len(gaps):
        sentence = "The oracle order also answers better than the original order at every gap measured."
    elif len(worse) == len(gaps):
        sentence = (f"But the oracle order answers worse than the original order at every gap measured, the "
                    f"largest ({gaps[-1]}) included: at this scale, putting each object's patches beside its "
                    f"word costs more than it saves.")
    else:
        parts = [f"{word} at g = {', '.join(map(str, gs))}" for word, gs in
                 (("better", better), ("worse", worse), ("no differently beyond the intervals", same)) if gs]
        sentence = "Against the original order, the oracle order answers " + "; ".join(parts) + "."
    return ["oracle minus none, accuracy at each gap: " + ", ".join(diffs), sentence]
