"""Loading checkpoints: a foreign or malicious file is refused with a clear error (issue 11)."""

from __future__ import annotations

import pickle

import pytest
import torch

from exptrack.errors import ModelError
from exptrack.models.weights import load_weights, save_atomic


class Payload:
    """A custom class: weights-only loading must refuse it (it could run code when unpickled)."""

    def __reduce__(self):
        return (print, ("this must never run",))


class Plain:
    pass


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_a_checkpoint_with_objects_is_refused_without_torchs_advice(tmp_path, writer, capsys):
    path = tmp_path / "evil.pt"
    if writer == "torch":
        torch.save({"model": Plain(), "config": {}, "epoch": 1}, path)
    else:
        path.write_bytes(pickle.dumps({"model": Payload(), "config": {}, "epoch": 1}))
    with pytest.raises(ModelError) as err:
        load_weights(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a readable checkpoint: not an exptrack checkpoint, or it holds objects")
    assert "weights_only" not in message and "arbitrary code" not in message and "\n" not in message
    if writer == "torch":
        assert "(first: tests.test_checkpoint.Plain)" in message
    assert "this must never run" not in capsys.readouterr().out


def test_a_real_checkpoint_loads(tmp_path):
    path = save_atomic({"model": {"w": torch.ones(2)}, "config": {}, "epoch": 3}, tmp_path / "ok.pt")
    assert load_weights(path)["epoch"] == 3


def test_a_real_full_disk_is_a_checkpoint_error_naming_the_folder(tmp_path):
    """A 256 KiB tmpfs: torch's writer fails with "unexpected pos"; the run gets exptrack's line."""
    import subprocess

    import torch

    from exptrack.errors import CheckpointError
    from exptrack.training.checkpoint import CheckpointManager

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        manager = CheckpointManager(disk / "checkpoints", every=0, keep=1)
        payload = {"model": {"w": torch.zeros(200_000)}, "config": {}, "epoch": 3, "run_id": "abc"}
        with pytest.raises(CheckpointError, match=r"checkpoints: cannot write the checkpoint of epoch 3 \(the write "
                                                  r"failed with \d+ bytes free on its disk"):
            manager.save(payload, {"val_loss": True, "val_acc": True, "val_mean_class_acc": True})
        assert not [p for p in (disk / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp file left
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_checkpoint_whose_model_entry_is_not_a_state_dict_is_refused(tmp_path):
    import torch

    from exptrack.errors import ModelError

    path = tmp_path / "list.pt"
    torch.save({"model": [1, 2], "config": {}, "epoch": 1}, path)
    with pytest.raises(ModelError, match="its 'model' entry is a list, not a state dict of tensors"):
        load_weights(path)


def test_an_epoch_keeps_a_model_when_it_is_the_best_or_a_periodic_checkpoint_that_survives(tmp_path):
    from exptrack.training.checkpoint import CheckpointManager

    manager = CheckpointManager(tmp_path, every=2, keep=1)
    manager.save({"epoch": 2, "metrics": {"val_acc": 0.5}}, {})
    assert manager.keeps_model(3, {"val_mean_class_acc": True}, 0.0)  # the new best model
    assert not manager.keeps_model(3, {}, 1.0)  # neither best nor periodic
    assert not manager.keeps_model(4, {}, 0.4)  # periodic, but pruned at once: epoch 2 stays the kept one
    assert manager.keeps_model(4, {}, 0.6)
    manager.save({"epoch": 4, "metrics": {"val_acc": 0.4}}, {})
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_0002.pt"]  # as keeps_model said


def test_a_cosine_schedule_resumed_for_more_epochs_decays_to_its_new_end():
    """Resumed from epoch 4 of 4 for 8 epochs, the LR climbed back to its peak by epoch 8 (the
    saved T_max=4 kept running); it now follows the 8-epoch cosine from epoch 4 down to min_lr."""
    from exptrack.config import load_config
    from exptrack.training.loop import load_scheduler
    from exptrack.training.run import build_scheduler

    def fresh(epochs: int):
        config = load_config(None, ["optim.scheduler=cosine", "optim.lr=0.001", "optim.min_lr=0.00001",
                                    f"train.epochs={epochs}"])
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.optim.lr)
        return optimizer, build_scheduler(optimizer, config)

    optimizer, scheduler = fresh(4)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    optimizer, scheduler = fresh(8)
    load_scheduler(scheduler, state, 8)
    lrs = []
    for _ in range(4):  # epochs 5-8
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < 0.001 * 0.6  # past the middle, falling
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.00001)  # at the new end: min_lr
