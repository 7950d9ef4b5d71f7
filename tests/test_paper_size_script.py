"""benchmarks/paper_size_gps.py at the smoke size on CPU, and the loader notebook 03 calls."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import load_script
from gpslib.paper_size_results import HISTORY_CSV, PROVENANCE_JSON, SINKHORN_CSV, load_paper_size_results
from gpslib.run_profiles import profile_settings

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "paper_size_gps.py"
METHODS = {"ours", "ours_matrix", "authors", "prob50", "matrix_lse"}


@pytest.mark.slow
def test_smoke_run_writes_both_csvs_and_the_provenance_into_out(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([HISTORY_CSV, SINKHORN_CSV, PROVENANCE_JSON])

    smoke = profile_settings("gps", "smoke")
    history = pd.read_csv(tmp_path / HISTORY_CSV)
    assert list(history.step) == list(range(smoke["steps"]))
    assert {"loss", "tau", "accuracy", "valid_fraction", "row_error", "step_s"} <= set(history.columns)
    assert history.loss.notna().all() and (history.step_s > 0).all()

    table = pd.read_csv(tmp_path / SINKHORN_CSV)
    assert set(table.method) == METHODS and set(table.N) == {64} and set(table.tau) == {2.0, 0.1, 0.01}
    ours = table[table.method == "ours"]
    assert (ours.max_diff_vs_lse <= 1e-5).all() and (ours.nonfinite == 0).all() and (ours.fwd_bwd_ms > 0).all()

    prov = json.loads((tmp_path / PROVENANCE_JSON).read_text())
    assert prov["smoke"] is True and prov["device"] == "cpu" and prov["profile"] == "smoke"
    for key in ("git_commit", "git_dirty", "device_name", "torch", "date_utc", "wall_s", "code_fingerprint"):
        assert key in prov
    assert prov["wall_s"] > 0 and prov["torch"]
    assert prov["gps"]["steps_done"] == prov["gps"]["steps_planned"] == smoke["steps"]
    assert prov["gps"]["stopped_by_budget"] is False
    assert prov["gps"]["settings"]["n_tokens"] == smoke["n_tokens"]
    assert prov["gps"]["settings"]["gps"]["ffn_dim"] == smoke["ffn_dim"]
    assert prov["sinkhorn"]["stopped_at"] is None and prov["sinkhorn"]["rows"] == len(table)
    for name in (HISTORY_CSV, SINKHORN_CSV):
        assert prov["files"][name]["sha256"] == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()

    results, sentence = load_paper_size_results(tmp_path)  # a smoke run is not a GPU run
    assert results is None and "smoke" in sentence and "not a GPU run" in sentence


def test_a_zero_budget_stops_both_parts_and_records_where(tmp_path, capsys):
    prov = load_script(SCRIPT).main(["--smoke", "--out", str(tmp_path), "--budget-s", "0"])
    assert prov["gps"]["steps_done"] == 1 and prov["gps"]["stopped_by_budget"] is True
    assert prov["sinkhorn"]["rows"] == 0 and prov["sinkhorn"]["stopped_at"] == {"N": 64, "tau": 2.0}
    assert len(pd.read_csv(tmp_path / HISTORY_CSV)) == 1
    assert json.loads((tmp_path / PROVENANCE_JSON).read_text())["gps"]["steps_done"] == 1
    assert "time budget reached after 1 of" in capsys.readouterr().out


def test_smoke_refuses_to_write_without_out(capsys):
    with pytest.raises(SystemExit):
        load_script(SCRIPT).main(["--smoke"])
    assert "--out" in capsys.readouterr().err


def test_loader_says_plainly_when_no_gpu_run_was_committed(tmp_path):
    results, sentence = load_paper_size_results(tmp_path)
    assert results is None
    assert "does not exist because no GPU run of benchmarks/paper_size_gps.py was committed" in sentence


def test_loader_returns_a_gpu_run(tmp_path):
    pd.DataFrame({"step": [0, 1], "loss": [2.0, 1.0], "accuracy": [0.5, 1.0]}).to_csv(tmp_path / HISTORY_CSV,
                                                                                        index=False)
    prov = {"smoke": False, "device": "cuda", "device_name": "NVIDIA H200", "torch": "2.13.0",
            "git_commit": "0123456789abcdef", "date_utc": "2025-01-01T00:00:00+00:00", "wall_s": 300.0,
            "gps": {"steps_done": 2, "steps_planned": 2, "stopped_by_budget": False, "final_accuracy": 1.0},
            "sinkhorn": None, "files": {HISTORY_CSV: {"rows": 2}}}
    (tmp_path / PROVENANCE_JSON).write_text(json.dumps(prov))
    results, sentence = load_paper_size_results(tmp_path)
    assert list(results["history"].accuracy) == [0.5, 1.0] and results["sinkhorn"] is None
    assert results["provenance"]["device_name"] == "NVIDIA H200"
    assert "NVIDIA H200" in sentence and "2 of 2 steps" in sentence and "0123456789" in sentence


def test_loader_finds_no_gpu_run_in_the_committed_figures():
    results, sentence = load_paper_size_results()
    if (ROOT / "figures" / PROVENANCE_JSON).exists():
        pytest.skip("a GPU run is committed")
    assert results is None and "no GPU run" in sentence
