"""Properties of gpslib.paper: the paper's numbers, and the joins against them."""

import pytest

from gpslib import paper


def test_rope_demo_table_puts_the_paper_column_beside_ours():
    df = paper.rope_demo_table({"no_rope": 1.0, "adjacent": 2.0, "far": 3.0})
    assert list(df.columns) == ["paper", "ours"]
    assert df.loc["far", "paper"] == -1.7 and df.loc["far", "ours"] == 3.0


def test_rope_demo_table_names_missing_cases():
    with pytest.raises(ValueError, match="far"):
        paper.rope_demo_table({"no_rope": 1.0, "adjacent": 2.0})


def test_table2_has_ten_epochs_and_table3_six_metrics():
    assert list(paper.table2().index) == list(range(1, 11))
    assert paper.table2().loc[7, "val_loss"] == 1.2084
    assert len(paper.table3()) == 6
    assert paper.table3().loc["bleu", "cosine_0.1"] == 0.3030


def test_similarity_summary_counts_entries_at_or_above_the_threshold(monkeypatch):
    monkeypatch.setattr(paper, "SIMILARITY_EXCERPT", ((0.1, -0.3), (0.25, 0.05)))
    summary = paper.similarity_excerpt_summary()
    assert summary["min"] == -0.3 and summary["max"] == 0.25
    assert summary["mean_abs"] == pytest.approx(0.7 / 4, abs=1e-12)
    assert summary["fraction_at_or_above_threshold"] == 0.5  # 0.1 itself counts: "reaches tau_align"


def test_no_entry_of_the_papers_similarity_excerpt_reaches_tau_align_or_the_authors_threshold(monkeypatch):
    # "well below" tau_align, as Section 4.4 says; below the authors' code's lower threshold too
    assert paper.similarity_excerpt_summary()["fraction_at_or_above_threshold"] == 0.0
    monkeypatch.setattr(paper, "SIMILARITY_THRESHOLD", paper.AUTHORS_CODE_THRESHOLD)
    assert paper.similarity_excerpt_summary()["fraction_at_or_above_threshold"] == 0.0
    # not vacuous: the summary's own extremes, used as the threshold, count the excerpt's entries
    summary = paper.similarity_excerpt_summary()
    monkeypatch.setattr(paper, "SIMILARITY_THRESHOLD", summary["min"])
    assert paper.similarity_excerpt_summary()["fraction_at_or_above_threshold"] == 1.0
    monkeypatch.setattr(paper, "SIMILARITY_THRESHOLD", summary["max"])
    assert 0.0 < paper.similarity_excerpt_summary()["fraction_at_or_above_threshold"] < 1.0


def test_a_value_matches_the_paper_only_where_it_rounds_to_the_printed_decimal():
    from gpslib.paper import matches_printed

    assert matches_printed(1.449, 1.4, 1) and matches_printed(1.35, 1.4, 1)
    assert not matches_printed(1.502, 1.4, 1) and not matches_printed(-1.6264, -1.7, 1)
    assert matches_printed(0.30301, 0.3030, 4) and not matches_printed(0.3031, 0.3030, 4)
