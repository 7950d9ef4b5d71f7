"""GPS inside the model, measured (gpslib.gps_diagnostics): curves, the per-step trace, the inference permutation."""

import json

import pytest
import torch

from conftest import tiny
from gpslib import finetune as ft
from gpslib import gps_diagnostics as gd


def _fake_run(path, reorder, seed):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"settings": {"reorder": reorder, "seed": seed, "base": "image_first",
                                                               "position_gap": 0}}))
    (path / "epochs.json").write_text(json.dumps([{"epoch": 1, "train_loss": 2.0, "val_loss": 1.5, "bleu": 0.1},
                                                  {"epoch": 2, "train_loss": 1.0, "val_loss": 0.5, "bleu": 0.2}]))
    return path


def test_training_curves_read_steps_from_the_log_history_and_fall_back_to_epochs(tmp_path):
    done = _fake_run(tmp_path / "gps-0", "gps", 0)
    (done / "log_history.json").write_text(json.dumps([
        {"epoch": 0.5, "step": 1, "loss": 3.0, "grad_norm": 1.0, "learning_rate": 1e-4},
        {"epoch": 1.0, "step": 2, "loss": 2.0, "grad_norm": 0.5, "learning_rate": 5e-5},
        {"epoch": 1.0, "step": 2, "eval_loss": 1.5, "eval_bleu": 0.1}]))
    unfinished = _fake_run(tmp_path / "none-1", "none", 1)
    table = gd.training_curves({"a": done, "b": unfinished})
    a, b = table[table["run"] == "a"], table[table["run"] == "b"]
    assert a[a["split"] == "train"]["loss"].tolist() == [3.0, 2.0]
    assert a[a["split"] == "val"]["loss"].tolist() == [1.5]
    assert a["strategy"].unique().tolist() == ["gps"] and b["seed"].unique().tolist() == [1]
    assert b[b["split"] == "val"]["loss"].tolist() == [1.5, 0.5]  # no log_history.json: the epochs
    by_epoch = gd.training_curves([done], level="epoch")
    assert by_epoch["run"].unique().tolist() == ["gps-0"]
    assert by_epoch[by_epoch["split"] == "train"]["loss"].tolist() == [2.0, 1.0]


def test_training_curves_reject_a_bad_level_and_a_directory_without_a_run(tmp_path):
    with pytest.raises(ValueError, match="level"):
        gd.training_curves([], level="batch")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        gd.training_curves([tmp_path])


@pytest.fixture(scope="module")
def gps_run(base_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "gps"
    ft.finetune(tiny(base_dir, reorder="gps"), run_dir, progress=False)
    return run_dir


def test_inference_permutations_describe_the_models_own_order(gps_run):
    model, processor = ft.load_finetuned(gps_run)
    table = gd.inference_permutations(gps_run, num_samples=3, model=model, processor=processor)
    assert len(table) == 3
    inner = model.get_base_model()
    for _, row in table.iterrows():
        order = row["order"]
        assert sorted(order) == list(range(row["n_image"] + row["n_text"]))  # a permutation of the real tokens
        assert (row["displacement_local"] == 0) == (order == sorted(order))
        assert 0 <= row["moved"] <= 1 and 0 <= row["image_moved"] <= 1
        assert row["distance_oracle"] >= 1 or row["grounded_image"] == 0
    summary = gd.permutation_summary(table)
    assert "order" not in summary and summary["n_image"] == inner.config.image_seq_length


def test_the_inference_permutation_table_has_one_row_per_run_with_its_prompt_means(gps_run):
    table = gd.inference_permutation_table({"gps seed 0": gps_run}, num_samples=2)
    per_prompt = gd.inference_permutations(gps_run, num_samples=2)
    assert table.index.tolist() == ["gps seed 0"] and "order" not in table
    assert table.loc["gps seed 0", "moved"] == pytest.approx(per_prompt["moved"].mean())
    assert table.loc["gps seed 0", "displacement"] == pytest.approx(per_prompt["displacement"].mean())


def test_the_identity_local_order_moves_the_image_before_the_prompts_first_words(gps_run):
    """P = I writes [image; text] into the slots: the image lands right after BOS, 'USER:' after it."""
    model, processor = ft.load_finetuned(gps_run)
    gps = model.get_base_model().reorder_gps.modules_to_save["default"]
    with torch.no_grad():
        for p in gps.head.parameters():
            p.zero_()  # scores = alpha * I: the inference permutation is the identity
    table = gd.inference_permutations(gps_run, num_samples=2, model=model, processor=processor)
    assert (table["moved_local"] == 0).all()
    assert (table["image_moved"] == 1).all()  # every image token shifts by the words before it ("USER:")
    assert (table["image_displacement"] > 0).all()
    alpha = model.get_base_model().config.gps_settings.alpha
    assert table["margin_min"].tolist() == pytest.approx([alpha] * 2)  # S = alpha * I: own slot alpha, others 0
    # the naming words stay where they were, the image moved image_displacement slots away from them
    grounded = table[table["grounded_image"] > 0]
    assert len(grounded)
    assert grounded["distance_gps"].tolist() == pytest.approx(
        (grounded["distance_original"] + grounded["image_displacement"]).tolist())


def test_inference_permutations_refuse_a_run_of_another_strategy(base_dir, tmp_path):
    ft.finetune(tiny(base_dir, reorder="none", epochs=1), tmp_path / "none", progress=False)
    with pytest.raises(ValueError, match="'none' run"):
        gd.inference_permutations(tmp_path / "none", num_samples=2)
