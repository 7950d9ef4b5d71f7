"""Writes notebooks/05_metric_tables.ipynb (cells only; run ./run_all.sh to fill its outputs), then run banner.py."""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = []
md = lambda s: cells.append(new_markdown_cell(s.strip("\n")))
code = lambda s, tags=None: cells.append(new_code_cell(s.strip("\n"), metadata={"tags": tags or []}))

md("""
# 05 · Six metrics, without the order confound (paper Section 4.4, Table 3)

The paper fine-tunes TinyLLaVA with LoRA twice, in the original order and with TokenMixer's
cosine reordering (threshold 0.1), and compares validation loss, BERTScore F1, METEOR, CIDEr,
ROUGE-L and BLEU, one run each. That protocol has a confound: the base model was pretrained in
the original order only, so a few LoRA epochs in a new order measure the cost of an unfamiliar
order as well as any value of proximity. Here every comparison is made three ways
(`gpslib.table3.ARMS`):

* **paper_protocol**: the image-first base model (notebook 00), LoRA in each strategy's order:
  the paper's protocol;
* **all_layouts**: the mixed-layout base model, which saw every layout and gap in
  pretraining, so no strategy's order is new to it;
* **all_layouts_g512**: the same with 512 virtual positions between the image and the
  question (notebook 06), where RoPE distance should matter most.

Strategies: `none` (original order), `cosine` (TokenMixer, the paper's method 1), `gps` (the
Sinkformer trained beside LoRA, method 2, which the paper proposes but never evaluates in the
model), `oracle` (each object's patches before its word: the upper bound). Every run is scored on
the same held-out prompts; means carry a Student-t interval over seeds, and every difference
from `none` a paired bootstrap interval over seeds and prompts. Library: `gpslib.table3`.
""")
code('profile = "smoke"  # smoke | cpu | paper (papermill parameter)', ["parameters"])
code("""
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from gpslib import paper
from gpslib.figures import repo_root, save_table, savefig
from gpslib.run_profiles import model_label, profile_settings
from gpslib.runtime import setup
from gpslib.gps_diagnostics import inference_permutation_table, training_curves
from gpslib.gps_divergence import divergence_sentence, divergence_summary, load_divergence_causes
from gpslib.gps_trace import TRACE_FILE, read_trace
from gpslib.table3 import (STRATEGY_SETTINGS, differences, gps_seed_table, metric_summary, run_table3, table3_jobs,
                           table3_verdict)

setup(profile)
plan = profile_settings("table3", profile)
results = run_table3(profile, repo_root() / "runs" / "finetune" / profile)
arms = list(plan["arms"])
runs = "; ".join(f"{arm}: " + ", ".join(f"{s} x {len(seeds)} seeds" for s, seeds in plan["arms"][arm].items())
                 for arm in arms)
print(f"{len(results)} runs ({model_label(profile)}): {runs}; each scored on {plan['eval_prompts']} held-out prompts")
""")
md("""
## Table 3, the paper's protocol, beside the paper's numbers

Our cells: mean ± 95% Student-t half-width over seeds. The paper's columns are one run each
of TinyLLaVA on real instructions; ours are the embedded model on ShapesVQA (cpu profile), so
only directions compare, not levels. Accuracy and corpus BLEU (sacrebleu) are ours only.
`val_loss` here is the answer tokens' mean loss over all held-out prompts pooled (token-weighted,
as the trainer's evaluation computes it), so the long `describe` answers weigh most.
""")
code("""
metrics = ["val_loss", "bertscore_f1", "meteor", "cider", "rouge_l", "bleu", "sacrebleu", "accuracy"]
STRATEGY_ORDER = [s for s in ["none", "cosine", "gps", "oracle", *STRATEGY_SETTINGS] if any(s in v for v in plan["arms"].values())]
summary = metric_summary(results, metrics)
cell = lambda r: f"{r['mean']:.4f} ± {r['ci95']:.4f}" if r["n"] > 1 else f"{r['mean']:.4f}"
summary["cell"] = summary.apply(cell, axis=1)
ours = summary[summary.arm == "paper_protocol"].pivot(index="metric", columns="strategy", values="cell")
ours = ours[[s for s in plan["arms"]["paper_protocol"]]].add_prefix("ours ")
table3 = paper.table3().rename(columns={"cosine_0.1": "paper cosine 0.1", "original": "paper original"})
table3 = table3.astype(object).join(ours, how="outer").reindex(metrics).fillna("—")
print(save_table(table3, "table3_metrics", profile))
table3
""")
code("""
every_arm = summary.pivot(index=["arm", "metric"], columns="strategy", values="cell").reindex(
    columns=STRATEGY_ORDER).dropna(axis=1, how="all").fillna("—")
print(save_table(every_arm, "table3_metrics_all_arms", profile))
every_arm
""")
md("""
## Differences from the original order, with paired intervals

Each strategy minus `none` in the same arm, seed by seed and prompt by prompt. A difference
counts only when its interval excludes zero. The paper's column is its Table 3 difference
(cosine − original, one run); `sign agrees` compares it with ours for the paper's protocol.
Pairing needs one number per prompt, so `val_loss` here is the mean over prompts of each
prompt's mean answer-token loss (every prompt weighs the same): not Table 3's token-weighted
value above, and the two differences can differ a lot where a strategy costs most on the long
`describe` answers.
""")
code("""
diffs = differences(results, metrics)
paper_diff = paper.table3_differences()
diffs["paper: cosine - original"] = [paper_diff.get(m) if s == "cosine" and a == "paper_protocol" else None
                                     for a, s, m in zip(diffs.arm, diffs.strategy, diffs.metric)]
diffs["sign agrees"] = [None if p is None or pd.isna(p) else bool((d > 0) == (p > 0))
                        for d, p in zip(diffs["difference"], diffs["paper: cosine - original"])]
print(save_table(diffs.set_index(["arm", "strategy", "metric"]), "table3_differences", profile))
print(table3_verdict(diffs))
agree = diffs.dropna(subset=["sign agrees"])
if len(agree):
    print(f"paper protocol, cosine vs none: our difference has the paper's sign on "
          f"{int(agree['sign agrees'].sum())} of {len(agree)} metrics the paper reports")
""")
code("""
long = pd.DataFrame([{"arm": a, "strategy": s, "seed": k, "metric": m, "value": r["metrics"][m]}
                     for (a, s, k), r in results.items() for m in metrics])
shown = ["val_loss", "accuracy", "bleu", "meteor", "rouge_l", "cider", "bertscore_f1"]
grid = sns.catplot(data=long[long.metric.isin(shown)], x="strategy", y="value", col="metric", row="arm",
                   kind="point", errorbar=("ci", 95), seed=0, order=STRATEGY_ORDER, col_order=shown,
                   row_order=arms, sharey="col", height=2.2, aspect=1.0, linestyle="none", capsize=0.2)
grid.map_dataframe(sns.stripplot, x="strategy", y="value", order=STRATEGY_ORDER,
                   color="k", size=2.5, alpha=0.6)
for (arm, metric), ax in grid.axes_dict.items():
    ax.set_title(f"{arm}\\n{metric}", fontsize=8)
    ax.tick_params(axis="x", labelsize=7, rotation=45)
    if metric == "accuracy":
        ax.set_ylim(0, 1)
grid.figure.suptitle(f"Table 3's metrics per seed (dots) with the mean and its bootstrap 95% interval "
                     f"({model_label(profile)})", y=1.01)
print(savefig(grid.figure, "fig_table3_metrics", profile))
""")
md("""
## GPS, seed by seed

A GPS run counts as diverged when its validation loss exceeds 1.5 times that of `none` trained
with the same seed and settings. `gps` is GPS with identity scale alpha 20 (the fine-tuning
profiles' setting); `gps_alpha0.5` is GPS with the authors' alpha 0.5. Everything else is the
same. The sentences under the table count the diverged seeds of each; the per-step trace below
shows what P did. "Diverged" is a verdict on the loss, not on P: GPS orders the prompt's
`[image; text]` tokens into their slots, so `P = I` is not the original prompt (the image moves
before `USER:`), and a run whose P stays the identity pays for that order as the oracle pays
for its own. The table of inference permutations below says which it is.
""")
code("""
gps = gps_seed_table(results)
print(save_table(gps.set_index(["arm", "strategy", "seed"]), "table_gps_seeds", profile))
for (arm, strategy), part in gps.groupby(["arm", "strategy"], sort=False):
    print(f"{arm}, {strategy}: {int(part['diverged'].sum())} of {len(part)} seeds diverged "
          f"(val loss {part['val_loss_gps'].min():.4f} to {part['val_loss_gps'].max():.4f}; "
          f"none {part['val_loss_none'].min():.4f} to {part['val_loss_none'].max():.4f})")
gps
""")
md("""
### Training curves of each GPS seed beside `none`

Per seed of the paper's protocol: the training loss (mean of the epoch) and the validation loss
per epoch of `gps` and of `none` with the same seed; the dotted line is 1.5 times `none`'s best
validation loss, above which the GPS seed counts as diverged.
""")
code("""
run_dirs = {(s, k): d for a, s, k, _, d in table3_jobs(profile, repo_root() / "runs" / "finetune" / profile)
            if a == "paper_protocol" and (s == "none" or s.startswith("gps"))}
curves = training_curves({f"{s} seed {k}": d for (s, k), d in run_dirs.items()}, level="epoch")
curves["strategy"] = curves["run"].str.rsplit(" seed ", n=1).str[0]  # gps_alpha0.5 is reorder "gps" too
grid = sns.relplot(data=curves, x="epoch", y="loss", hue="strategy", style="split", col="seed", kind="line",
                   marker="o", height=2.6, aspect=1.0, facet_kws={"sharey": False})
for seed, ax in grid.axes_dict.items():
    ax.axhline(1.5 * curves.query("strategy == 'none' and split == 'val' and seed == @seed")["loss"].min(),
               color="k", linestyle=":", linewidth=1, label="1.5 x none (val)")
grid.figure.suptitle(f"GPS and none per seed, paper protocol: training and validation loss "
                     f"({model_label(profile)})", y=1.03)
print(savefig(grid.figure, "fig_gps_seeds_curves", profile))
""")
md("""
### Why a seed diverges: what P does, step by step

Every GPS run records, per training step (`gpslib.gps_trace`), the mass the soft P puts on the
identity (`diagonal`), how much it mixes token embeddings (`mixing`), the mean diagonal of the
Sinkformer's learnt scores (`score_diag`: positive favours keeping each token in place), the
fraction of tokens the inference permutation would move at that step (`moved_infer`) and the
training loss. Mean over the seeds of each strategy; the vertical line is where the hard
permutation starts.
""")
code("""
found = [read_trace(d).assign(strategy=s, seed=k) for (s, k), d in run_dirs.items()
         if s.startswith("gps") and (Path(d) / TRACE_FILE).exists()]
missing = [f"{s} seed {k}" for (s, k), d in run_dirs.items() if s.startswith("gps") and not (Path(d) / TRACE_FILE).exists()]
if missing:
    print(f"no per-step trace for {', '.join(missing)} (runs trained before gps_trace.json existed)")
traces = pd.concat(found, ignore_index=True) if found else pd.DataFrame()
if len(traces):
    panels = ["diagonal", "mixing", "score_diag", "moved_infer", "loss"]
    long_trace = traces.melt(id_vars=["strategy", "seed", "step", "hard"], value_vars=panels, var_name="quantity")
    grid = sns.relplot(data=long_trace, x="step", y="value", hue="strategy", col="quantity", kind="line",
                       errorbar=("ci", 95), seed=0, col_wrap=5, height=2.4, aspect=1.0, facet_kws={"sharey": False})
    first_hard = traces.loc[traces["hard"], "step"].min()
    for ax in grid.axes.flat:
        ax.axvline(first_hard, color="grey", linestyle=":", linewidth=1)
    grid.figure.suptitle(f"GPS inside the model, per training step, mean over seeds ({model_label(profile)})", y=1.04)
    print(savefig(grid.figure, "fig_gps_trace", profile))
    for strategy, part in traces.groupby("strategy"):
        ordered = part.sort_values("step")
        start, end = ordered.groupby("seed").head(1), ordered.groupby("seed").tail(1)  # each seed's own last step
        print(f"{strategy}: at step 1 the soft P puts {start['diagonal'].mean():.3f} of its mass on the identity "
              f"(training loss {start['loss'].mean():.3f}); by the last step the scores' diagonal is "
              f"{end['score_diag'].mean():+.3f} and the inference permutation moves {end['moved_infer'].mean():.1%} "
              f"of the tokens (seeds {sorted(part['seed'].unique().tolist())})")
""")
md("""
### The permutation each trained GPS applies at inference

Eval mode (no noise, the last temperature, Hungarian), on held-out prompts: the fraction of
the movable tokens (image tokens and the text after BOS) it moves from their place in the
original prompt, their mean displacement in positions, the same for the image tokens, the
displacement from `P = I` (the Sinkformer's residual starting point), and the smallest margin of
a token's score for its own slot (positive for every token would mean GPS keeps the identity).
The sentence under the table says which it is.
""")
code("""
gps_runs = {f"{s} seed {k}": d for (s, k), d in run_dirs.items() if s.startswith("gps")}
permutation = inference_permutation_table(gps_runs, num_samples=plan["eval_prompts"])
shown = ["moved", "displacement", "image_moved", "image_displacement", "moved_local", "displacement_local",
         "margin_min", "margin_mean"]
print(save_table(permutation[shown], "table_gps_inference_permutation", profile))
for run, row in permutation.iterrows():
    print(f"{run}: against the original prompt it moves {row['moved']:.1%} of the movable tokens (mean "
          f"displacement {row['displacement']:.2f} positions); against P = I, the Sinkformer's starting point, "
          f"{row['moved_local']:.1%} (smallest identity margin {row['margin_min']:+.3f}) -> "
          + ("the learnt P is still the identity" if row["moved_local"] == 0 else "the learnt P moved away from the identity"))
permutation[shown]
""")
md("""
### What makes a GPS seed diverge

Fine-tuning with `gps` on five seeds under variants that each change one or two things, against
`none` with the same seed and base model (`benchmarks/gps_divergence_causes.py`). The numbers
below are the committed record `records/gps_divergence_causes.csv`; its provenance says which
code measured them.
""")
code("""
causes, provenance, origin = load_divergence_causes()
print(origin)
if causes is not None:
    causes_summary = divergence_summary(causes)
    print(divergence_sentence(causes_summary))
    record_none = causes.loc[causes["variant"] == "base", "val_loss_none"].mean()
    ours_none = gps.loc[gps["arm"] == "paper_protocol", "val_loss_none"].mean() if len(gps) else float("nan")
    print(f"The record's none runs reach a validation loss of {record_none:.4f}, this run's {ours_none:.4f}"
          + (": the record's base model is not this run's, so its verdicts need not hold here; the gps and "
             "gps_alpha0.5 rows above are this run's own measurement." if abs(record_none - ours_none) > 0.01
             else "."))
causes_summary if causes is not None else None
""")
md("""
## Qualitative examples

Held-out prompts with the ground truth and the answers of each strategy's seed-0 run in the
paper's protocol, as the paper shows two. The paper's own two examples follow, quoted as the
paper's: they are TinyLLaVA's answers on real images, not ours.
""")
code("""
first = min(k for a, s, k in results if (a, s) == ("paper_protocol", "none"))
shown_strategies = [s for s in plan["arms"]["paper_protocol"] if ("paper_protocol", s, first) in results]
predictions = {s: results[("paper_protocol", s, first)]["predictions"][:4] for s in shown_strategies}
examples = pd.DataFrame({"prompt": [p["question"] for p in predictions["none"]],
                         "ground truth": [p["answer"] for p in predictions["none"]],
                         **{s: [p["generated"] for p in predictions[s]] for s in shown_strategies}})
print(save_table(examples, "table3_examples_ours", profile))
print(f"columns: the answers of {', '.join(shown_strategies)} (seed {first}, paper protocol)")
pd.set_option("display.max_colwidth", 120)
examples
""")
code("""
paper_examples = pd.DataFrame(paper.QUALITATIVE_EXAMPLES).rename(columns={
    "ground_truth": "ground truth", "original": "paper: original model", "cosine": "paper: cosine model"})
paper_examples
""")
nb = new_notebook(cells=cells, metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                                          "language_info": {"name": "python", "version": "3.11.7"}})
nbformat.write(nb, Path(__file__).resolve().parents[1] / "05_metric_tables.ipynb")
