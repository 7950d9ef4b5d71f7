"""Properties of gpslib.checkpoints: which Trainer checkpoint a resumed run starts from."""

import shutil

import pytest

from gpslib.checkpoints import latest_complete_checkpoint

# finished_run: a fine-tuning run of tests/test_finetune.py (conftest cannot see it), rebuilt here small
from test_finetune import finished_run  # noqa: F401  (pytest fixture; base_dir is in conftest)


@pytest.mark.parametrize("damage", ["no_state", "truncated_state", "wrong_step", "no_optimizer", "no_rng"])
def test_only_complete_checkpoints_count_and_none_means_from_scratch(finished_run, tmp_path, damage):
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(finished_run[0] / "checkpoints" / "checkpoint-4", checkpoints / "checkpoint-4")
    assert latest_complete_checkpoint(checkpoints) == checkpoints / "checkpoint-4"
    path = checkpoints / "checkpoint-4"
    if damage == "no_state":
        (path / "trainer_state.json").unlink()
    elif damage == "truncated_state":
        (path / "trainer_state.json").write_text((path / "trainer_state.json").read_text()[:40])
    elif damage == "wrong_step":
        path.rename(checkpoints / "checkpoint-3")
    elif damage == "no_optimizer":
        (path / "optimizer.pt").unlink()
    else:
        for rng in path.glob("rng_state*.pth"):
            rng.unlink()
    with pytest.warns(UserWarning, match="starting from scratch"):
        assert latest_complete_checkpoint(checkpoints) is None
    assert not any(checkpoints.iterdir())
