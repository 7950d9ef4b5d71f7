from pathlib import Path
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = []
md = lambda s: cells.append(new_markdown_cell(s.strip("\n")))
code = lambda s, tags=None: cells.append(new_code_cell(s.strip("\n"), metadata={"tags": tags or []}))

md("""
# 06 · Does distance matter? (paper Section 1: the hypothesis behind both methods)

The paper's premise: RoPE makes the attention score of two related tokens depend on their
distance, and in LLaVA an image token sits far from the word it belongs to, so the model
should answer worse the farther the image is; moving related tokens next to each other (the
oracle order, TokenMixer) should help. Notebook 01 shows the score side in isolation. Here the
question is asked of a whole model: the mixed-layout base model (notebook 00), which has seen
every layout and every gap in pretraining, answers the same held-out ShapesVQA questions

* with `position_gap` = g virtual RoPE positions between the leading block of image tokens and
  everything after it (what g filler tokens would do, without their compute; `gpslib.positions`),
  for g from 0 to 1024 (TinyLLaVA's 576 image tokens put the farthest patch about 600 positions
  from the question);
* in six layouts (`gpslib.reordering_config.LAYOUTS`): the original order (`none`), each
  object's patches right before the word naming it (`oracle`, ShapesVQA's grounding),
  TokenMixer (`cosine`, Algorithm 1), as many patches moved as cosine moves but to random words
  (`random`: proximity without grounding), and two position-only baselines from the literature
  in the original order: V2PE (image tokens advance the position by 1/M) and CCA's concentric
  positions (the patch grid's centre nearest the text; positions only, not CCA's mask).

Every number below is computed in this run; intervals are 95% bootstrap intervals over the
questions. Library: `gpslib.distance`.
""")
code('profile = "smoke"  # smoke | cpu | paper (papermill parameter)', ["parameters"])
code("""
import matplotlib.pyplot as plt
import seaborn as sns

from gpslib.distance import (PREDICTION, attention_to_objects, distance_table, distance_verdict,
                             run_distance_experiment)
from gpslib.figures import save_table, savefig
from gpslib.model import load_model
from gpslib.pretrain import base_model_dir
from gpslib.run_profiles import model_label, profile_settings
from gpslib.runtime import setup
from gpslib.shapes_vqa import SHORT_ANSWER_TYPES, shapes_vqa

setup(profile)
settings = profile_settings("distance", profile)
model, processor = load_model(base_model_dir(profile, base="mixed", progress=profile != "smoke"), reorder="none")
questions = shapes_vqa(settings["n_questions"], seed=0, split="test", image_size=model.config.vision_config.image_size,
                       question_types=SHORT_ANSWER_TYPES)
rows = [questions[i] for i in range(len(questions))]
print(f"{model_label(profile)}: {len(rows)} held-out questions, gaps {settings['gaps']}")
""")
md("""
## The prediction, written before the numbers
""")
code("print(PREDICTION)")
md("""
## Accuracy and answer log-likelihood against the gap

Each question is answered greedily (scored against its short answer) and, teacher forced, the
mean log-probability of its reference answer's tokens is read off (a finer measure than
accuracy). The table `table_distance` has one row per gap, layout and question type.
""")
code("""
results = run_distance_experiment(model, processor, rows, settings["gaps"], batch_size=settings["batch_size"],
                                  max_new_tokens=settings["max_new_tokens"], progress=profile != "smoke")
table = distance_table(results)
print(save_table(table[["gap", "strategy", "question_type", "accuracy", "ci_low", "ci_high", "n", "chance",
                        "loglik", "loglik_low", "loglik_high"]].set_index(["gap", "strategy", "question_type"]),
                 "table_distance", profile))
table[table.question_type == "all"].pivot(index="gap", columns="strategy", values="accuracy").round(4)
""")
code("""
fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
for ax, (column, label) in zip(axes, (("correct", "accuracy"), ("loglik", "answer log-likelihood (per token)"))):
    sns.lineplot(data=results, x="gap", y=column, hue="condition", style="condition", markers=True, dashes=False,
                 errorbar=("ci", 95), n_boot=1000, seed=0, err_style="bars", err_kws={"capsize": 3}, ax=ax)
    ax.set_xscale("symlog", linthresh=16)
    ax.set(xlim=(0, max(settings["gaps"]) * 1.2), xticks=settings["gaps"], ylabel=label,
           xlabel="position gap g (virtual RoPE positions after the image)")
    ax.xaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
chance = table[(table.question_type == "all")]["chance"].iloc[0]
axes[0].axhline(chance, color="grey", ls=":", lw=1, label=f"chance ({chance:.2f})")
axes[0].set_ylim(0, 1)
axes[0].legend(fontsize=8, ncol=2)
axes[1].get_legend().remove()
fig.suptitle(f"Accuracy against RoPE distance, 95% bootstrap intervals over {len(rows)} questions "
             f"({model_label(profile)})")
fig.tight_layout()
print(savefig(fig, "fig_distance_accuracy", profile))
""")
md("""
## Per question type

Each type in its own panel (chance drawn): colour and shape questions need the object's
patches, count and existence several patches, position and relation the layout of the grid.
""")
code("""
per_type = results.assign(question_type=results["question_type"].astype(str))
grid = sns.relplot(data=per_type, x="gap", y="correct", hue="condition", col="question_type", col_wrap=3,
                   kind="line", errorbar=("ci", 95), n_boot=500, seed=0, height=2.6, aspect=1.3,
                   col_order=[t for t in SHORT_ANSWER_TYPES if t in set(per_type.question_type)])
chance_by_type = table.drop_duplicates("question_type").set_index("question_type")["chance"]
for qtype, ax in grid.axes_dict.items():
    ax.axhline(chance_by_type[qtype], color="grey", ls=":", lw=1)
    ax.set_xscale("symlog", linthresh=16)
    ax.set(ylim=(0, 1), xlim=(0, max(settings["gaps"]) * 1.2), xticks=settings["gaps"])
    ax.xaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
grid.figure.suptitle(f"Accuracy per question type against the gap (dotted: chance; {model_label(profile)})", y=1.02)
print(savefig(grid.figure, "fig_distance_per_type", profile))
""")
md("""
## Where the words look: attention from an object's name to its patches

For each question word that names an object, the share of its attention (heads averaged)
that lands on the patches showing that object, layer by layer, against the gap, in the original
order and in the oracle order. If distance weakens the link, the original order's share falls
with g; next to its word (oracle) it should not. The dotted line is the share a word would give
those patches by attending uniformly to everything before it.
""")
code("""
named = [r for r in rows if r["mentions"]][: settings["attention_questions"]]
attention = attention_to_objects(model, processor, named, settings["gaps"])
print(save_table(attention.set_index(["strategy", "gap", "layer"]), "table_distance_attention", profile))
layers = sorted(attention["layer"].unique())
fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 3.6), sharey=True, squeeze=False)
for ax, layer in zip(axes[0], layers):
    part = attention[attention.layer == layer]
    sns.lineplot(data=part, x="gap", y="mass", hue="strategy", marker="o", ax=ax)
    for strategy, line in part.groupby("strategy"):
        ax.plot(line["gap"], line["uniform"], ls=":", lw=1, color="grey")
    ax.set_xscale("symlog", linthresh=16)
    ax.set(title=f"layer {layer}", xlabel="position gap g", ylabel="attention share on the object's patches",
           xticks=settings["gaps"], xlim=(0, max(settings["gaps"]) * 1.2))
    ax.xaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
fig.suptitle(f"Attention from an object's name to its patches ({len(named)} questions, {model_label(profile)})", y=1.02)
fig.tight_layout()
print(savefig(fig, "fig_distance_attention", profile))
""")
md("""
## Conclusion, from the numbers

`distance_verdict` compares each layout's accuracy at the smallest and the largest gap (paired
bootstrap over the same questions) and then the change of `none` against the change of `oracle`,
the difference the hypothesis predicts to be negative. The prediction is about slopes; last, the
levels beside them: `oracle` minus `none` at every gap, since an oracle curve that stays flat can
still lie below the original order's. The text below is generated from this run's results.
""")
code("print(distance_verdict(results))")
nb = new_notebook(cells=cells, metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                                          "language_info": {"name": "python", "version": "3.11.7"}})
nbformat.write(nb, Path(__file__).resolve().parents[1] / "06_distance.ipynb")
