"""The causes of GPS divergence (gpslib.gps_divergence): the table, its summary, the committed record, the smoke grid."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from conftest import load_script
from gpslib import gps_divergence as gdv

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gps_divergence_causes.py"
A = gdv.Variant("a", "alpha 10", gps={"alpha": 10.0})
M = gdv.Variant("m", "mixed base, gps lr 1e-3", finetune={"base": "mixed", "gps_learning_rate": 1e-3})


def _records():
    return [{"name": "none", "seed": 0, "best_val_loss": 0.2}, {"name": "none", "seed": 1, "best_val_loss": 0.25},
            {"name": "a", "seed": 0, "best_val_loss": 0.31}, {"name": "a", "seed": 1, "best_val_loss": 0.25},
            {"name": "none-mixed", "seed": 0, "best_val_loss": 0.2}, {"name": "m", "seed": 0, "best_val_loss": math.nan}]


def test_a_seed_diverges_above_one_and_a_half_times_nones_loss_or_with_a_non_finite_loss():
    table = gdv.divergence_table(_records(), [A, M], {v.name: v.reference() for v in (A, M)})
    assert list(table.columns) == gdv.COLUMNS
    assert table[["variant", "seed", "diverged"]].values.tolist() == [["a", 0, True], ["a", 1, False], ["m", 0, True]]
    assert table["ratio"].iloc[:2].tolist() == pytest.approx([0.31 / 0.2, 1.0])


def test_the_reference_of_a_variant_is_none_with_the_settings_none_reads():
    assert (A.reference(), M.reference()) == ("none", "none-mixed")
    with pytest.raises(ValueError, match="'m' has no reference"):
        gdv.divergence_table(_records(), [M], {})


def test_the_summary_counts_diverged_seeds_and_the_sentence_names_those_variants():
    table = gdv.divergence_table(_records(), [A, M], {v.name: v.reference() for v in (A, M)})
    summary = gdv.divergence_summary(table)
    assert summary.loc["a", ["n_seeds", "n_diverged"]].tolist() == [2, 1]
    assert summary.loc["a", "mean_ratio"] == pytest.approx((0.31 / 0.2 + 1.0) / 2)
    sentence = gdv.divergence_sentence(summary)
    assert "a (alpha 10): 1 of 2 seeds" in sentence and "m (mixed base, gps lr 1e-3): 1 of 1" in sentence
    calm = gdv.divergence_sentence(summary.assign(n_diverged=0))
    assert calm.startswith("No variant diverged") and "a, m" in calm


def test_the_committed_record_is_the_old_codes_and_consistent_with_itself():
    table, prov, sentence = gdv.load_divergence_causes()
    assert list(table.columns) == gdv.COLUMNS
    assert prov["git_commit"].startswith("24d3a13") and "24d3a13" in sentence and "old code" in sentence
    assert prov["files"][gdv.CSV]["sha256"] == hashlib.sha256((ROOT / "records" / gdv.CSV).read_bytes()).hexdigest()
    assert table["ratio"].tolist() == pytest.approx((table["val_loss_gps"] / table["val_loss_none"]).tolist())
    assert table["diverged"].tolist() == (table["ratio"] > 1.5).tolist()
    assert set(table["variant"]) - {"old"} <= {v.name for v in gdv.VARIANTS}  # every variant reruns but 'old'


def test_load_says_when_there_is_no_record(tmp_path):
    assert gdv.load_divergence_causes(tmp_path)[:2] == (None, None)


def test_the_smoke_grid_writes_the_table_and_its_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("GPSLIB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    prov = load_script(SCRIPT).main(["--smoke", "--out", str(out), "--runs", str(tmp_path / "runs"), "--workers", "1"])
    table = pd.read_csv(out / gdv.CSV)
    assert sorted(p.name for p in out.iterdir()) == sorted([gdv.CSV, gdv.PROVENANCE_JSON])
    assert list(table.columns) == gdv.COLUMNS
    assert table[["variant", "seed"]].values.tolist() == [[v, s] for v in gdv.SMOKE_VARIANTS for s in (0, 1)]
    assert (table["val_loss_gps"] > 0).all() and (table["val_loss_none"] > 0).all()
    # the reinitialised Sinkformer trains otherwise than the defaults' (same seed, same settings)
    gps = table.set_index(["variant", "seed"])["val_loss_gps"]
    assert gps["xavier", 0] != gps["base", 0]
    saved = json.loads((out / gdv.PROVENANCE_JSON).read_text())
    assert saved == json.loads(json.dumps(prov, default=str))
    assert saved["smoke"] is True and saved["profile"] == "smoke" and saved["seeds"] == [0, 1]
    assert [v["name"] for v in saved["variants"]] == list(gdv.SMOKE_VARIANTS)
    assert saved["files"][gdv.CSV]["sha256"] == hashlib.sha256((out / gdv.CSV).read_bytes()).hexdigest()
    loaded, _, sentence = gdv.load_divergence_causes(out)
    assert len(loaded) == 6 and "smoke" in sentence


def test_smoke_refuses_to_write_without_out(capsys):
    with pytest.raises(SystemExit):
        load_script(SCRIPT).main(["--smoke"])
    assert "--out" in capsys.readouterr().err
