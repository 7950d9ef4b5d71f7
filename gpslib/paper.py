"""The paper's reported numbers, quoted as the paper's, in one place.

Every "paper vs ours" table joins against this module, so no notebook types a
paper number by hand. Each entry names where in the paper it comes from
(Zhang & Zhu, "GPS: Gumbel Permutation Sinkformer for Unified Multimodal Encoder ... with
Similarity-based Tokens Grouping"; the README names it).
Numbers from other papers are kept here too, each with its citation.
"""

from __future__ import annotations

import pandas as pd

__all__ = [
    "ROPE_DEMO",
    "LORA_CONFIG",
    "LORA_CONFIG_AUTHORS_CODE",
    "TABLE2_LOSSES",
    "EARLY_STOP_EPOCH",
    "TABLE3_METRICS",
    "GPS_CLAIM",
    "SIMILARITY_EXCERPT",
    "QUALITATIVE_EXAMPLES",
    "SIMILARITY_THRESHOLD",
    "AUTHORS_CODE_THRESHOLD",
    "TABLE3_COSINE_COLUMN",
    "similarity_excerpt_summary",
    "NEURALSORT_TABLE1",
    "rope_demo_table",
    "matches_printed",
    "table2",
    "table3",
    "table3_differences",
]

# Introduction, paragraph after Figure 1: pre-softmax attention score of two
# related tokens, without RoPE, adjacent under RoPE, and far apart under RoPE.
ROPE_DEMO: dict[str, float] = {
    "no_rope": 1.4,
    "adjacent": 1.2,
    "far": -1.7,
}

# Section 4.3, Table 1 ("Cosine Similarity Training Configuration"); the
# entries the table does not state (alpha, batch, warmup) are the authors'
# code's (tinyllava_finetune*.py in https://github.com/garyz712/GPS, the paper's code link),
# marked so in every table.
LORA_CONFIG: dict[str, object] = {
    "lora_rank": 8,
    "lora_dropout": 0.05,
    "training_epochs": 1,
    "dtype": "fp16",
    "learning_rate": 1e-4,
    "optimizer": "paged_adamw_8bit",
}
# Not printed in the paper; the authors' code's values (tinyllava_finetune*.py in https://github.com/garyz712/GPS).
LORA_CONFIG_AUTHORS_CODE: dict[str, object] = {
    "lora_alpha": 16,
    "batch_size": 4,
    "grad_accum": 4,
    "warmup_ratio": 0.03,
}

# Section 4.3, Table 2 ("Training Metrics per Epoch").
TABLE2_LOSSES: dict[int, tuple[float, float]] = {
    1: (1.0946, 1.2527),
    2: (0.9910, 1.2241),
    3: (0.8874, 1.2226),
    4: (0.7574, 1.2147),
    5: (0.6480, 1.2241),
    6: (0.5773, 1.2059),
    7: (0.4381, 1.2084),
    8: (0.3831, 1.2603),
    9: (0.3282, 1.3199),
    10: (0.2639, 1.4761),
}
# Section 4.3, text after Figure 4: early stopping at the seventh epoch.
EARLY_STOP_EPOCH = 7

# Section 4.4, Table 3 ("Comparison of Evaluation Metrics Between Models"):
# metric -> (cosine similarity, threshold 0.1; original model).
TABLE3_METRICS: dict[str, tuple[float, float]] = {
    "val_loss": (1.293967, 1.280968),
    "bertscore_f1": (0.8971, 0.8952),
    "meteor": (0.3471, 0.3183),
    "cider": (1.7027, 1.7284),
    "rouge_l": (0.3914, 0.3800),
    "bleu": (0.3030, 0.2839),
}

# Section 4.4: the printed corner of the image-text cosine-similarity matrix of the
# authors' model (rows: image tokens, columns: text tokens; "..." elided), from which the
# paper concludes the similarities are "mostly low -- well below" tau_align = 0.1.
SIMILARITY_EXCERPT: tuple[tuple[float, ...], ...] = (
    (0.0209, -0.0111, -0.0021, -0.0124, 0.0080, 0.0054),
    (-0.0213, -0.0077, -0.0057, -0.0013, -0.0156, -0.0004),
    (0.0280, -0.0002, 0.0015, -0.0173, -0.0138, 0.0076),
    (-0.0069, 0.0341, 0.0365, 0.0147, -0.0113, 0.0102),
    (0.0109, 0.0391, 0.0433, 0.0247, 0.0027, -0.0037),
    (0.0085, 0.0292, 0.0260, 0.0168, 0.0159, -0.0047),
)
SIMILARITY_THRESHOLD = 0.1  # tau_align of Table 3; the default of gpslib.reordering_config
AUTHORS_CODE_THRESHOLD = 0.08  # the authors' code (tinyllava_finetune_cos*.py, garyz712/GPS), not in the paper
# Table 3's column of the cosine run, named by its threshold
TABLE3_COSINE_COLUMN = f"cosine_{SIMILARITY_THRESHOLD}"

# Section 4.4: the paper's two qualitative examples (answers truncated as in the paper).
QUALITATIVE_EXAMPLES: tuple[dict[str, str], ...] = (
    {
        "prompt": "What problems might the placement of this stop sign cause?",
        "ground_truth": "The unusually large stop sign, covering a significant portion of the lane or "
        "entrance, can cause several problems. [...]",
        "original": "The stop sign is placed next to the road, partially obscured by a railing and "
        "surrounded by a bridge and a fence. [...]",
        "cosine": "The placement of the stop sign next to a wooden fence and by a roadside pedestrian "
        "bridge could cause several problems. [...]",
    },
    {
        "prompt": "Who wrote this book?",
        "ground_truth": "John Morgenthaler",
        "original": "Arthur Benavie",
        "cosine": "Dr. John Report",
    },
)

# Section 4.5 and Figure 5: GPS learns an arbitrary permutation of 800 tokens.
GPS_CLAIM: dict[str, object] = {
    "n_tokens": 800,
    "final_accuracy": 1.0,
    "text": "GPS can learn any arbitrary permutation perfectly with cosine "
    "temperature tau scheduling (here token length = 800).",
}

# Grover et al. 2019, "Stochastic Optimization of Sorting Networks via Continuous
# Relaxations" (NeuralSort, ICLR 2019), Table 1: sorting n 4-digit large-MNIST numbers
# (28x28 digits, 112x28 number images), their task, not ours (see
# gpslib.digits_sorting.PROTOCOL_DIFFERENCES). method -> metric -> n -> value; "exact"
# is the fraction of sequences sorted entirely right, "elementwise" the fraction of
# positions right (their "partial" in parentheses). Checked against their Table 1
# (Grover, Wang, Zweig, Ermon, ICLR 2019, arXiv:1903.08850).
NEURALSORT_TABLE1: dict[str, dict[str, dict[int, float]]] = {
    "Gumbel-Sinkhorn": {
        "exact": {3: 0.484, 5: 0.033, 7: 0.001, 9: 0.0, 15: 0.0},
        "elementwise": {3: 0.575, 5: 0.295, 7: 0.189, 9: 0.146, 15: 0.078},
    },
    "Deterministic NeuralSort": {
        "exact": {3: 0.930, 5: 0.837, 7: 0.738, 9: 0.649, 15: 0.386},
        "elementwise": {3: 0.951, 5: 0.927, 7: 0.909, 9: 0.896, 15: 0.857},
    },
}


def matches_printed(ours: float, printed: float, decimals: int) -> bool:
    """Whether ``ours`` is what the paper printed, to the decimals it printed (``round(ours) == printed``).

    The paper's 1.4 stands for any value in [1.35, 1.45); nothing closer can be read from it.
    """
    return round(float(ours), decimals) == round(float(printed), decimals)


def rope_demo_table(ours: dict[str, float]) -> pd.DataFrame:
    """The RoPE demonstration: paper's number beside ours, one row per case.

    ``ours`` maps each key of :data:`ROPE_DEMO` to our computed score; a
    missing key raises ValueError naming it.
    """
    missing = sorted(set(ROPE_DEMO) - set(ours))
    if missing:
        raise ValueError(f"ours lacks the cases {missing}; expected keys {sorted(ROPE_DEMO)}")
    rows = [
        {"case": case, "paper": ROPE_DEMO[case], "ours": float(ours[case])}
        for case in ROPE_DEMO
    ]
    return pd.DataFrame(rows).set_index("case")


def table2() -> pd.DataFrame:
    """Table 2 as the paper reports it: index epoch, columns train_loss, val_loss."""
    df = pd.DataFrame.from_dict(TABLE2_LOSSES, orient="index", columns=["train_loss", "val_loss"])
    df.index.name = "epoch"
    return df


def table3() -> pd.DataFrame:
    """Table 3 as the paper reports it: index metric, columns :data:`TABLE3_COSINE_COLUMN`, original."""
    df = pd.DataFrame.from_dict(TABLE3_METRICS, orient="index", columns=[TABLE3_COSINE_COLUMN, "original"])
    df.index.name = "metric"
    return df


def table3_differences() -> pd.Series:
    """Table 3's cosine (threshold 0.1) minus original, per metric, as the paper's numbers give it."""
    t = table3()
    return (t[TABLE3_COSINE_COLUMN] - t["original"]).rename("paper: cosine - original")


def similarity_excerpt_summary() -> dict[str, float]:
    """Min, max and mean |.| of the paper's printed similarity entries, and how many reach tau_align."""
    values = [v for row in SIMILARITY_EXCERPT for v in row]
    return {
        "min": min(values),
        "max": max(values),
        "mean_abs": sum(abs(v) for v in values) / len(values),
        "fraction_at_or_above_threshold": sum(v >= SIMILARITY_THRESHOLD for v in values) / len(values),
    }
