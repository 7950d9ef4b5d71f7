"""What GPS's P does during fine-tuning (gpslib.gps_trace): one order's statistics, the per-step trace."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny
from gpslib import finetune as ft
from gpslib import gps_trace as gt


def test_permutation_stats_count_moved_tokens_and_their_displacement():
    order = torch.tensor([[1, 0, 2, 3, 4], [0, 1, 3, 2, 4]])  # row 1: two text tokens swapped, the last is padding
    mask = torch.tensor([[True] * 5, [True, True, True, True, False]])
    stats = gt.permutation_stats(order, mask, n_image=2)
    torch.testing.assert_close(stats["moved"], torch.tensor([2 / 5, 2 / 4]))
    torch.testing.assert_close(stats["displacement"], torch.tensor([2 / 5, 2 / 4]))
    torch.testing.assert_close(stats["image_moved"], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(stats["text_moved"], torch.tensor([0.0, 1.0]))


def test_permutation_stats_of_the_identity_are_zero():
    order = torch.arange(6).expand(3, 6)
    stats = gt.permutation_stats(order, torch.ones(3, 6, dtype=torch.bool), n_image=4)
    assert all(float(v.abs().max()) == 0.0 for v in stats.values())


def test_permutation_stats_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="order and mask"):
        gt.permutation_stats(torch.arange(4)[None], torch.ones(1, 5, dtype=torch.bool), n_image=2)


def test_inverse_order_gives_each_tokens_slot():
    order = torch.tensor([[2, 0, 1]])  # slot 0 takes token 2, ...
    assert gt.inverse_order(order).tolist() == [[1, 2, 0]]


@pytest.fixture(scope="module")
def runs(base_dir, tmp_path_factory):
    """A tiny gps run (traced, as every gps run is), and the same run with the trace removed."""
    root = tmp_path_factory.mktemp("runs")
    traced = ft.finetune(tiny(base_dir, reorder="gps"), root / "traced", progress=False)
    original = ft._callbacks

    def without_trace(*args, **kwargs):
        return [c for c in original(*args, **kwargs) if not isinstance(c, gt.GPSTrace)]

    ft._callbacks = without_trace
    try:
        plain = ft.finetune(tiny(base_dir, reorder="gps"), root / "plain", progress=False)
    finally:
        ft._callbacks = original
    return root, plain, traced


def test_a_traced_run_trains_exactly_as_an_untraced_one(runs):
    root, plain, traced = runs
    assert not (root / "plain" / gt.TRACE_FILE).exists()
    a = load_file(root / "plain" / "adapter" / "adapter_model.safetensors")
    b = load_file(root / "traced" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("reorder_gps" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain["val_loss"].tolist() == traced["val_loss"].tolist()


def test_the_trace_has_one_record_per_step_with_the_schedule_and_the_losses(runs):
    root, _, _ = runs
    trace = gt.read_trace(root / "traced")
    steps = json.loads((root / "traced" / "done.json").read_text())["steps"]
    assert trace["step"].tolist() == list(range(1, steps + 1))
    assert trace["tau"].iloc[0] == pytest.approx(2.0) and trace["tau"].is_monotonic_decreasing
    assert trace["hard"].tolist() == [s - 1 >= steps * 0.5 for s in trace["step"]]
    logged = {e["step"]: e["loss"] for e in json.loads((root / "traced" / "log_history.json").read_text()) if "loss" in e}
    assert trace["loss"].tolist() == [logged[s] for s in trace["step"]]
    for column in ("entropy", "diagonal", "entropy_clean", "diagonal_clean", "moved_train", "moved_infer",
                   "image_moved_train", "image_moved_infer"):
        assert trace[column].between(0, 1).all(), column
    assert (trace["grad_gps"] > 0).all() and (trace["grad_lora"] > 0).all()
    # soft steps blend the tokens; tau 2.0 with Gumbel noise leaves P far from a permutation
    assert (trace[~trace["hard"]]["mixing"] > 0).all() and trace["entropy"].iloc[0] > 0.5


def test_a_resumed_run_keeps_the_records_before_its_checkpoint(base_dir, tmp_path):
    run_dir = tmp_path / "resume"
    ft.finetune(tiny(base_dir, reorder="gps", epochs=1), run_dir, progress=False)  # 2 steps, checkpoint-2
    first = gt.read_trace(run_dir)
    (run_dir / "done.json").unlink()  # as if interrupted after epoch 1 of a longer run
    info = json.loads((run_dir / "config.json").read_text())
    config = tiny(base_dir, reorder="gps", epochs=2)
    (run_dir / "config.json").write_text(json.dumps({**info, "settings": config.__dict__}))
    ft.finetune(config, run_dir, progress=False)
    trace = gt.read_trace(run_dir)
    assert trace["step"].tolist() == [1, 2, 3, 4]
    assert trace.iloc[:2]["entropy"].tolist() == first["entropy"].tolist()


def test_read_trace_names_a_run_without_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="only 'gps' runs"):
        gt.read_trace(tmp_path)
