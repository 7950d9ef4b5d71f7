"""What was reproduced: every claim of the paper a number can check, our evidence, and a verdict by rule.

Each claim (:data:`CLAIMS`) names the paper's words and section, the table of ours that
tests it (a file the notebooks wrote into ``figures/``), and a rule that turns our numbers
into a verdict, so that no verdict is typed:

* ``reproduced``: our number says what the paper's says (for a printed value: it rounds to
  the printed decimals, :func:`gpslib.paper.matches_printed`; for a direction or a
  difference: the same sign with a 95% interval that excludes zero);
* ``not reproduced``: our interval includes zero, or our value rounds elsewhere, without
  contradicting the paper's direction;
* ``contradicted``: our interval excludes zero on the other side;
* ``not testable here``: the evidence needs what this run does not have (the paper's size on
  a GPU, the paper's model), and the reason says so.

:func:`claims_table` reads the tables of one run (``figures/`` of the cpu or paper profile,
``runs/smoke/figures`` of a smoke run) and returns one row per claim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from gpslib import paper
from gpslib.atomic_files import atomic_write_text
from gpslib.run_profiles import model_label

__all__ = ["VERDICTS", "Claim", "CLAIMS", "claims_table", "interval_verdict", "update_readme"]

README_START, README_END = "<!-- claims:start -->", "<!-- claims:end -->"

VERDICTS = ("reproduced", "not reproduced", "contradicted", "not testable here")
# "few tokens move" (Section 4.4) read as: under this fraction of the image tokens reach tau_align.
# One base model on an Intel Xeon moved 8.3%, the same recipe on an AMD EPYC 10.1%: hence the interval.
FEW_TOKENS = 0.1


@dataclass(frozen=True)
class Claim:
    """One checkable claim: its id, the paper's section and words, where our evidence is, and its rule."""

    id: str
    section: str
    text: str
    notebook: str
    evidence: str  # the table of ours (a stem of a file in figures/)
    judge: Callable[[Path], tuple[str, str, str, str]]  # folder -> (paper's value, ours, verdict, why)


def _read(folder: Path, stem: str) -> pd.DataFrame:
    path = folder / f"{stem}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"the claims need {path}, which the notebooks write; run them first")
    return pd.read_csv(path)


def interval_verdict(low: float, high: float, expected_sign: int) -> str:
    """The verdict on a difference whose 95% interval is [low, high] and whose expected sign is ``expected_sign``."""
    if low > 0 or high < 0:
        return "reproduced" if (low > 0) == (expected_sign > 0) else "contradicted"
    return "not reproduced"


def _rope(case: str):
    def judge(folder: Path):
        row = _read(folder, "table_rope_demo").set_index("case").loc[case]
        same = paper.matches_printed(row["ours"], row["paper"], 1)
        return (f"{row['paper']:+.1f}", f"{row['ours']:+.4f}", "reproduced" if same else "not reproduced",
                "rounds to the paper's printed value" if same else
                "the same formula, seed and positions give another value (the authors' code gives ours)")
    return judge


def _rope_far(folder: Path):
    t = _read(folder, "table_rope_layout").set_index(_read(folder, "table_rope_layout").columns[0])
    original, grouped = t.loc["original layout", "mean |score - no RoPE|"], t.loc["grouped layout", "mean |score - no RoPE|"]
    verdict = "reproduced" if original > grouped else "contradicted"
    return ("far apart the score moves away from its no-RoPE value", f"mean |score - no RoPE|: original layout "
            f"{original:.4f}, grouped {grouped:.4f}", verdict, "expected values over many random related pairs")


def _few_tokens(folder: Path):
    row = _read(folder, "table_tokenmixer_sweep").set_index("threshold").loc[paper.SIMILARITY_THRESHOLD]
    moved, low, high = (float(row[c]) for c in ("moved", "moved ci_low", "moved ci_high"))
    verdict = "reproduced" if high < FEW_TOKENS else "not reproduced"
    return (f"similarities mostly below {paper.SIMILARITY_THRESHOLD}; few tokens move",
            f"{moved:.1%} [{low:.1%}, {high:.1%}] of image tokens reach {paper.SIMILARITY_THRESHOLD}", verdict,
            f"rule: 'few' means under {FEW_TOKENS:.0%} of the image tokens, the whole 95% interval over the prompts "
            "below it; a different model (ours is the embedded one)")


def _figure5(folder: Path):
    t = _read(folder, "table_gps_claim").set_index(_read(folder, "table_gps_claim").columns[0])
    reached = str(t.iloc[:, 1].get("seeds reaching 100%", "—"))
    gpu = str(t.iloc[:, 2].get("final training accuracy", "—")) if t.shape[1] > 2 else "—"
    n = t.iloc[:, 1].get("tokens N")
    if gpu not in ("—", "nan"):
        verdict = "reproduced" if float(gpu) >= 1.0 else "not reproduced"
        return ("100% at N = 800", f"N = 800 on a GPU: {gpu}; N = {n}: {reached} seeds", verdict, "the paper's size")
    k, total = (int(x) for x in reached.split(" of ")) if " of " in reached else (0, 0)
    return ("100% at N = 800", f"N = {n}: {reached} seeds reach 100%", "not testable here",
            f"no GPU run at N = 800 was committed; at N = {n} "
            + ("every seed memorises its batch" if total and k == total else f"{k} of {total} seeds do"))


def _table2(folder: Path):
    t = _read(folder, "table2_losses_per_epoch").dropna(subset=["ours train_loss"])
    falls = t["ours train_loss"].iloc[-1] < t["ours train_loss"].iloc[0]
    turn = int(t.loc[t["ours val_loss"].idxmin(), "epoch"])
    overfits = turn < int(t["epoch"].max())
    verdict = "reproduced" if falls and overfits else "not reproduced"
    return ("training loss falls; validation loss turns up after epoch 6",
            f"training loss {t['ours train_loss'].iloc[0]:.4f} -> {t['ours train_loss'].iloc[-1]:.4f}; validation "
            f"loss lowest at epoch {turn} of {int(t['epoch'].max())}", verdict,
            "the shape of the curves only (other model, other data)")


def _table3(metric: str):
    def judge(folder: Path):
        d = _read(folder, "table3_differences")
        row = d[(d.arm == "paper_protocol") & (d.strategy == "cosine") & (d.metric == metric)].iloc[0]
        theirs = paper.table3_differences()[metric]
        verdict = interval_verdict(row["ci_low"], row["ci_high"], 1 if theirs > 0 else -1)
        return (f"{theirs:+.4f}", f"{row['difference']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] "
                f"({int(row['seeds'])} seeds)", verdict, "cosine minus original, the paper's protocol; paired bootstrap "
                "over seeds and prompts")
    return judge


def _improves(arm: str, strategy: str):
    def judge(folder: Path):
        d = _read(folder, "table3_differences")
        part = d[(d.arm == arm) & (d.strategy == strategy)].set_index("metric")
        if part.empty:
            raise KeyError(f"no {strategy} runs in the arm {arm}")
        signs = {m: (-1 if m == "val_loss" else 1) for m in part.index}
        verdicts = {m: interval_verdict(part.loc[m, "ci_low"], part.loc[m, "ci_high"], signs[m]) for m in part.index}
        better = [m for m, v in verdicts.items() if v == "reproduced"]
        worse = [m for m, v in verdicts.items() if v == "contradicted"]
        verdict = "reproduced" if better and not worse else ("contradicted" if worse and not better else "not reproduced")
        return ("reordering improves answer quality after a few LoRA epochs",
                f"{strategy} vs none ({arm}): better beyond the interval on {better or 'no metric'}; worse on "
                f"{worse or 'no metric'}", verdict, "each metric's paired 95% interval over seeds and prompts")
    return judge


def _distance(folder: Path):
    t = _read(folder, "table_distance")
    all_ = t[t.question_type == "all"]
    g0, g1 = all_["gap"].min(), all_["gap"].max()

    def at(strategy, gap):
        r = all_[(all_.strategy == strategy) & (all_.gap == gap)].iloc[0]
        return r["accuracy"], r["ci_low"], r["ci_high"]

    (n0, n0l, n0h), (n1, n1l, n1h) = at("none", g0), at("none", g1)
    drop = n1h < n0l  # the far interval lies below the near one
    rise = n1l > n0h
    verdict = "reproduced" if drop else ("contradicted" if rise else "not reproduced")
    return ("positional distance hurts (the original order answers worse far from its image)",
            f"none: accuracy {n0:.3f} [{n0l:.3f}, {n0h:.3f}] at g = {g0}, {n1:.3f} [{n1l:.3f}, {n1h:.3f}] at g = {g1}",
            verdict, "separate 95% bootstrap intervals; notebook 06 prints the paired test and the oracle's change")


CLAIMS: tuple[Claim, ...] = (
    Claim("rope-no-rope", "Section 1", "score of two related tokens without RoPE: 1.4", "01_rope_positional_noise",
          "table_rope_demo", _rope("no_rope")),
    Claim("rope-adjacent", "Section 1", "adjacent under RoPE: 1.2", "01_rope_positional_noise", "table_rope_demo",
          _rope("adjacent")),
    Claim("rope-far", "Section 1", "far apart under RoPE: -1.7", "01_rope_positional_noise", "table_rope_demo",
          _rope("far")),
    Claim("rope-noise", "Section 1", "placing related tokens far apart changes their attention score (positional noise)",
          "01_rope_positional_noise", "table_rope_layout", _rope_far),
    Claim("distance-hurts", "Section 1 (premise)", "the positional noise hurts the model's answers",
          "06_distance", "table_distance", _distance),
    Claim("few-tokens-move", "Section 4.4",
          f"image-text similarities mostly below tau_align = {paper.SIMILARITY_THRESHOLD}: few tokens move",
          "02_tokenmixer_reordering", "table_tokenmixer_sweep", _few_tokens),
    Claim("figure5", "Section 4.5, Figure 5", "GPS learns any permutation perfectly (N = 800)",
          "03_gps_permutation_learning", "table_gps_claim", _figure5),
    Claim("table2", "Section 4.3, Table 2", "training loss falls, validation loss turns up (over-fitting)",
          "04_lora_finetuning", "table2_losses_per_epoch", _table2),
    *(Claim(f"table3-{m}", "Section 4.4, Table 3", f"cosine {paper.SIMILARITY_THRESHOLD} vs original: {m}",
            "05_metric_tables",
            "table3_differences", _table3(m)) for m in paper.TABLE3_METRICS),
    Claim("improves-paper-protocol", "Abstract; Section 4.4", "reordering (cosine) improves VQA quality, paper's protocol",
          "05_metric_tables", "table3_differences", _improves("paper_protocol", "cosine")),
    Claim("improves-all-layouts", "Abstract; Section 4.4",
          "reordering (cosine) improves VQA quality, base model that saw every layout", "05_metric_tables",
          "table3_differences", _improves("all_layouts", "cosine")),
    Claim("oracle-improves", "Section 1 (premise)", "moving each object's patches to its word improves the answers",
          "05_metric_tables", "table3_differences", _improves("all_layouts", "oracle")),
)


def claims_table(folder: str | Path, profile: str) -> pd.DataFrame:
    """One row per claim of :data:`CLAIMS`, judged on the tables in ``folder`` (one run of ``profile``).

    Columns: claim, section, paper, ours, notebook, evidence, model, verdict, why. A claim
    whose table is missing gets ``not testable here`` with the reason.
    """
    folder = Path(folder)
    rows = []
    for claim in CLAIMS:
        try:
            theirs, ours, verdict, why = claim.judge(folder)
        except (FileNotFoundError, KeyError, IndexError) as err:
            theirs, ours, verdict, why = "—", "—", "not testable here", f"no evidence in this run ({err})"
        if verdict not in VERDICTS:
            raise ValueError(f"claim {claim.id!r} gave the verdict {verdict!r}; valid verdicts are {VERDICTS}")
        rows.append({"claim": claim.text, "section": claim.section, "paper": theirs, "ours": ours,
                     "notebook": claim.notebook, "evidence": claim.evidence, "model": model_label(profile),
                     "verdict": verdict, "why": why})
    return pd.DataFrame(rows)


def update_readme(table: pd.DataFrame, readme: str | Path) -> None:
    """Put ``table`` (as Markdown, verdicts counted above it) between the claims markers of ``readme``.

    The block between ``<!-- claims:start -->`` and ``<!-- claims:end -->`` is generated; the
    rest of the file is left as it is. Raises ValueError when the markers are missing.
    """
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} lacks the markers {README_START} ... {README_END}")
    counts = table["verdict"].value_counts()
    summary = ", ".join(f"{int(counts.get(v, 0))} {v}" for v in VERDICTS)
    shown = table[["claim", "section", "paper", "ours", "verdict", "evidence"]]
    block = (f"{README_START}\n_Generated by notebook 07 from the tables in `figures/` ({table['model'].iloc[0]}): "
             f"{summary}._\n\n{shown.to_markdown(index=False)}\n{README_END}")
    head, rest = text.split(README_START, 1)
    atomic_write_text(readme, head + block + rest.split(README_END, 1)[1])
