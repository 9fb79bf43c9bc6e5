"""Checkpoint folders under kills and disk errors: the newest readable one is found, a failed save
leaves the previous one intact, and the logs are cut back to exactly the checkpoint's rows."""

import errno

import pytest
import torch

from picorl.logging.metrics import log_sizes, truncate_logs
from picorl.train.checkpoint import SaveError, latest_checkpoint, write_dir_atomically


def fake_checkpoint(folder, update):
    (folder / "model").mkdir(parents=True)
    from safetensors.torch import save_file

    save_file({"w": torch.full((2,), float(update))}, folder / "model" / "adapter_model.safetensors")
    state = {"update": update, "optimizer": {}, "lr_scheduler": {}, "rng": {}, "log_sizes": {}}
    torch.save(state, folder / "trainer_state.pt")


def test_a_kill_between_the_two_renames_leaves_old_which_is_read(tmp_path):
    fake_checkpoint(tmp_path / "checkpoint.old", 4)  # checkpoint/ renamed away, checkpoint.tmp not yet in
    fake_checkpoint(tmp_path / "checkpoint.tmp", 5)
    checkpoint, problems = latest_checkpoint(tmp_path)
    assert checkpoint.state["update"] == 4 and checkpoint.folder.name == "checkpoint.old" and not problems


def test_an_unreadable_checkpoint_falls_back_to_old(tmp_path):
    fake_checkpoint(tmp_path / "checkpoint", 6)
    fake_checkpoint(tmp_path / "checkpoint.old", 4)
    (tmp_path / "checkpoint" / "trainer_state.pt").write_bytes(b"torn")
    checkpoint, problems = latest_checkpoint(tmp_path)
    assert checkpoint.state["update"] == 4 and "unreadable" in problems[0]
    assert latest_checkpoint(tmp_path / "nothing") == (None, [])


def test_newest_wins_when_both_exist(tmp_path):
    fake_checkpoint(tmp_path / "checkpoint", 6)
    fake_checkpoint(tmp_path / "checkpoint.old", 4)  # a kill during the old one's removal
    assert latest_checkpoint(tmp_path)[0].state["update"] == 6


def test_a_checkpoint_from_an_older_picorl_is_refused_not_skipped(tmp_path):
    """Skipping it would start the run over and empty its logs; refusing loses nothing."""
    fake_checkpoint(tmp_path / "checkpoint", 6)
    torch.save(
        {"update": 6, "optimizer": {}, "scheduler": {}, "rng": {}},
        tmp_path / "checkpoint" / "trainer_state.pt",
    )
    with pytest.raises(ValueError, match="older picorl .*no lr_scheduler, log_sizes.*start a new run"):
        latest_checkpoint(tmp_path)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failed_save_keeps_the_previous_one_and_says_so(tmp_path, code):
    fake_checkpoint(tmp_path / "checkpoint", 3)

    def write(tmp):
        (tmp / "half").write_text("x")
        raise OSError(code, "simulated")

    with pytest.raises(SaveError, match="previous copy in .*checkpoint is intact") as error:
        write_dir_atomically(tmp_path / "checkpoint", write)
    assert "simulated" in str(error.value) and "--resume" in str(error.value)
    assert latest_checkpoint(tmp_path)[0].state["update"] == 3
    assert not (tmp_path / "checkpoint.tmp").exists()


def test_logs_are_cut_back_to_the_recorded_sizes(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    (tmp_path / "samples.jsonl").write_text("")
    sizes = log_sizes(tmp_path)
    assert sizes == {"metrics.jsonl": 12, "samples.jsonl": 0, "eval_samples.jsonl": 0}
    for name in sizes:
        with (tmp_path / name).open("a") as f:
            f.write('{"step": 1}\n{"step": 2, "torn')
    truncate_logs(tmp_path, sizes)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 0}\n'
    assert (tmp_path / "samples.jsonl").read_text() == (tmp_path / "eval_samples.jsonl").read_text() == ""
