"""Evaluating models (paper Section 4.4, Table 3): answer accuracy, the six metrics, intervals over seeds.

:func:`accuracy_table` groups the answers of :func:`gpslib.generation.predict` per question
type beside chance (:data:`gpslib.shapes_vqa.CHANCE`), :func:`accuracy_goal` and
:func:`goal_accuracies` hold it against the goal for a base model that sees (at least 0.70
overall, every question type at least 15 points above its chance);
:func:`accuracy_by_form` splits the types into forms of question (counts of all objects or of a
named colour or shape, yes/no by their right answer) and :func:`constant_answers` names the types
that get one answer whatever the image shows; :func:`image_reliance` asks whether a
model reads the image at all. :func:`evaluate_run` scores a finished :mod:`gpslib.finetune` run on held-out prompts:
validation loss, the metrics of Table 3 (:func:`gpslib.metrics.compute_metrics`) and,
where the data carries short answers (ShapesVQA), answer accuracy. Results are cached in
the run directory (``eval.json``) so notebooks rerun cheaply. :func:`summarise_runs` turns per-seed numbers into a mean with a 95% confidence interval
(:mod:`gpslib.intervals`), the error bars the paper's single-seed tables lack.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from gpslib.atomic_files import atomic_write_text
from gpslib.data import VQACollator
from gpslib.finetune import FinetuneConfig, load_data, load_finetuned
from gpslib.generation import predict
from gpslib.intervals import mean_ci
from gpslib.metrics import answer_log_likelihood, compute_metrics
from gpslib.shapes_vqa import CHANCE, SHORT_ANSWER_TYPES, answer_values

__all__ = ["accuracy_table", "accuracy_by_form", "constant_answers", "GOAL_OVERALL", "GOAL_MARGIN", "goal_accuracies", "accuracy_goal", "image_reliance", "evaluate_run", "summarise_runs"]


def accuracy_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """Answer accuracy per short-answer question type beside :data:`CHANCE`, plus an ``all`` row.

    Columns: ``n``, ``accuracy``, ``chance`` (``all``: the mean chance of its questions).
    """
    scored = predictions[predictions["question_type"].isin(list(CHANCE))]
    rows = {}
    for qtype in SHORT_ANSWER_TYPES:
        part = scored[scored["question_type"] == qtype]
        if len(part):
            rows[qtype] = {"n": len(part), "accuracy": float(part["correct"].astype(float).mean()),
                           "chance": CHANCE[qtype]}
    if rows:
        chance = scored["question_type"].map(CHANCE)
        rows["all"] = {"n": len(scored), "accuracy": float(scored["correct"].astype(float).mean()),
                       "chance": float(chance.mean())}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["n", "accuracy", "chance"])
    table.index.name = "question_type"
    return table


def question_form(question_type: str, question: str, short_answer: str) -> str:
    """The form of a short-answer question that :func:`accuracy_by_form` groups by.

    ``count``: ``"all objects"`` (the question names no colour or shape), ``"named, answer
    zero"`` or ``"named, answer one or more"``; ``existence`` and ``relation``: ``"answer yes"``
    or ``"answer no"``; other types: ``"all"``.
    """
    if question_type == "count":
        if not (answer_values(question, "colour") or answer_values(question, "shape")):  # names no colour or shape
            return "all objects"
        return "named, answer zero" if short_answer == "zero" else "named, answer one or more"
    if question_type in ("existence", "relation"):
        return f"answer {short_answer}"
    return "all"


def accuracy_by_form(predictions: pd.DataFrame) -> pd.DataFrame:
    """Answer accuracy per question type and form (:func:`question_form`), with the answer given most often.

    Columns: ``n``, ``accuracy``, ``most_given`` (the value the generated answers name most
    often, ``gpslib.shapes_vqa.answer_values``; ``"(none)"`` where they name none or several)
    and ``most_given_share``. A form whose questions all get one answer, right for some forms
    and wrong for others, is a model that gives that answer whatever the image shows.
    """
    rows = []
    for qtype in SHORT_ANSWER_TYPES:
        part = predictions[predictions["question_type"] == qtype]
        if not len(part):
            continue
        forms = [question_form(qtype, q, a) for q, a in zip(part["question"], part["short_answer"])]
        given = [next(iter(v)) if len(v := answer_values(g, qtype)) == 1 else "(none)" for g in part["generated"]]
        frame = pd.DataFrame({"form": forms, "correct": part["correct"].astype(float).to_numpy(), "given": given})
        for form, group in frame.groupby("form", sort=True):
            counts = group["given"].value_counts()
            rows.append({"question_type": qtype, "form": form, "n": len(group), "accuracy": float(group["correct"].mean()),
                         "most_given": counts.index[0], "most_given_share": float(counts.iloc[0] / len(group))})
    return pd.DataFrame(rows, columns=["question_type", "form", "n", "accuracy", "most_given",
                                       "most_given_share"]).set_index(["question_type", "form"])


def constant_answers(forms: pd.DataFrame, share: float = 0.95) -> list[str]:
    """Sentences naming each question type whose forms all get one answer, from an :func:`accuracy_by_form` table.

    A type is named when the same value is given to at least ``share`` of the questions of each
    of its forms, and it has a form where that value is wrong: the model then gives that answer
    whatever the image shows. Answers that name no value (``"(none)"``) are no such answer.
    One sentence per type, with the form's accuracies; or a sentence saying no type does.
    """
    sentences = []
    for qtype, part in forms.groupby(level="question_type", sort=False):
        part = part.droplevel("question_type")
        if len(part) < 2:
            continue
        named = part.drop(index="all objects", errors="ignore")  # count: the named forms only
        values = set(named["most_given"])
        if (len(values) == 1 and values != {"(none)"} and (named["most_given_share"] >= share).all()
                and (named["accuracy"] < 0.5).any()):
            (value,) = values
            low = named["most_given_share"].min()
            how_many = "every question" if low == 1 else f"at least {low:.0%} of the questions"
            detail = ", ".join(f"{form} {row['accuracy']:.2f} (n={row['n']})" for form, row in named.iterrows())
            sentences.append(f"{qtype}: the answer '{value}' to {how_many} of each form; accuracy {detail}.")
    return sentences or [f"No question type gets one answer to {share:.0%} or more of the questions of every form."]


# The goal for a base model that sees: 0.70 overall, every type chance + 0.15.
GOAL_OVERALL, GOAL_MARGIN = 0.70, 0.15


def goal_accuracies(table: pd.DataFrame, overall: float = GOAL_OVERALL, margin: float = GOAL_MARGIN) -> pd.Series:
    """The goal per row of an :func:`accuracy_table`: chance + ``margin`` per type, ``overall`` for ``all``."""
    goal = (table["chance"] + margin).rename("goal")
    if "all" in goal.index:
        goal["all"] = overall
    return goal


def accuracy_goal(table: pd.DataFrame, overall: float = GOAL_OVERALL, margin: float = GOAL_MARGIN) -> tuple[bool, str]:
    """Whether an :func:`accuracy_table` meets the goal for a base model that sees, and a sentence saying so.

    The goal: accuracy at least ``overall`` on all short-answer questions, and every question
    type at least ``margin`` above its chance.
    """
    types = table.drop(index="all", errors="ignore")
    short = types[types["accuracy"] < types["chance"] + margin]
    met_all = "all" in table.index and table.loc["all", "accuracy"] >= overall
    met = bool(met_all and short.empty)
    parts = [f"overall {table.loc['all', 'accuracy']:.4f} ({'>=' if met_all else '<'} {overall})" if "all" in table.index
             else "no overall row"]
    parts.append("every type at least {:.0f} points above chance".format(100 * margin) if short.empty else
                 "below chance + {:.0f} points: ".format(100 * margin) + ", ".join(
                     f"{t} {r['accuracy']:.4f} (chance {r['chance']:.4f})" for t, r in short.iterrows()))
    return met, ("meets" if met else "misses") + " the goal: " + "; ".join(parts)


def image_reliance(model, processor, dataset, batch_size: int = 32, seed: int = 0) -> dict[str, float]:
    """Answer-token loss of ``dataset`` with its own images and with images shuffled across rows.

    Returns ``{"loss": ..., "shuffled_loss": ..., "gap": shuffled - own}``. A gap
    near zero means the model answers from the question alone (a language prior)
    and does not read the image. Batches are shuffled within themselves, so
    ``batch_size`` must be at least 2.
    """
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2; got batch_size={batch_size!r}")
    collate = VQACollator(processor, "train")
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    own = shuffled = 0.0
    n = 0
    for start in range(0, len(dataset), batch_size):
        batch = {k: v.to(device) for k, v in collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]).items()}
        order = torch.randperm(len(batch["input_ids"]), generator=gen)
        perm = torch.empty_like(order)
        perm[order] = order.roll(1)  # every row gets another row's image (a single row keeps its own)
        with torch.no_grad():
            own += float(model(**batch).loss) * len(perm)
            shuffled += float(model(**dict(batch, pixel_values=batch["pixel_values"][perm.to(device)])).loss) * len(perm)
        n += len(perm)
    return {"loss": own / n, "shuffled_loss": shuffled / n, "gap": (shuffled - own) / n}


def evaluate_run(run_dir: str | os.PathLike, num_samples: int | None = None, batch_size: int = 50) -> dict:
    """Table 3's numbers of a finished run on held-out prompts, per prompt and overall (cached in eval.json).

    ``num_samples`` held-out prompts (default: the run's ``gen_samples``) are scored twice:
    teacher forced (the answer's token log-likelihood: the validation loss) and by greedy
    generation (the metrics of Table 3, :func:`gpslib.metrics.compute_metrics`, and, where
    the data has short answers, accuracy). Returns ``{"num_samples", "metrics": {...},
    "per_prompt": {column: [value per prompt]}, "predictions": [...]}``; ``metrics`` holds
    the corpus values, ``val_loss`` the token-weighted mean over the prompts; ``per_prompt``
    holds ``nll`` (the prompt's mean answer-token loss), ``correct`` (1/0, NaN without a
    short answer) and each metric with sample scores, for paired intervals over prompts.
    """
    run_dir = Path(run_dir)
    cache = run_dir / "eval.json"
    config = FinetuneConfig(**json.loads((run_dir / "config.json").read_text())["settings"])
    n = num_samples or config.gen_samples
    if cache.exists():
        stored = json.loads(cache.read_text())
        if stored.get("num_samples") == n and "per_prompt" in stored:
            return stored
    model, processor = load_finetuned(run_dir)
    held_out = load_data(config, "test", n, model.config.vision_config.image_size)
    collate = VQACollator(processor, "train", grounding=config.reorder == "oracle")
    device = next(model.parameters()).device
    sums, counts = [], []
    with torch.no_grad():
        for start in range(0, len(held_out), batch_size):
            rows = [held_out[i] for i in range(start, min(start + batch_size, len(held_out)))]
            batch = {k: v.to(device) for k, v in collate(rows).items()}
            total, count = answer_log_likelihood(model(**batch).logits, batch["labels"])
            sums.append(total.cpu())
            counts.append(count.cpu())
    total, count = torch.cat(sums), torch.cat(counts)
    preds = predict(model, processor, held_out, batch_size=batch_size, max_new_tokens=config.max_new_tokens)
    metrics, each = compute_metrics(preds["generated"].tolist(), preds["answer"].tolist(), per_sample=True)
    metrics["val_loss"] = float(-total.sum() / count.sum())
    correct = preds["correct"].map(lambda c: math.nan if c is None else float(c))
    metrics["accuracy"] = float(correct.mean()) if correct.notna().any() else math.nan
    per_prompt = each.assign(nll=(-total / count.clamp_min(1)).tolist(), correct=correct.tolist())
    result = {"num_samples": n, "metrics": metrics, "per_prompt": per_prompt.to_dict(orient="list"),
              "predictions": preds.to_dict(orient="records")}
    atomic_write_text(cache, json.dumps(result, indent=1))
    return result


def summarise_runs(results: dict[tuple[str, int], dict], metrics: Sequence[str]) -> pd.DataFrame:
    """Per strategy and metric: mean, CI half-width and the per-seed values.

    ``results`` maps (strategy, seed) to :func:`evaluate_run` output. Returns a long
    DataFrame with columns strategy, metric, mean, ci95, n, values.
    """
    rows = []
    for strategy in dict.fromkeys(s for s, _ in results):
        seeds = sorted(k for s, k in results if s == strategy)
        for metric in metrics:
            values = [results[(strategy, k)]["metrics"][metric] for k in seeds]
            mean, half = mean_ci(values)
            rows.append({"strategy": strategy, "metric": metric, "mean": mean, "ci95": half,
                         "n": len(values), "values": values})
    return pd.DataFrame(rows)
