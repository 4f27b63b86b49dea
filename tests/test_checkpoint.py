"""Loading checkpoints: a foreign or malicious file is refused with a clear error (issue 11)."""

from __future__ import annotations

import pickle

import pytest
import torch

from exptrack.errors import ModelError
from exptrack.training import checkpoint


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
        checkpoint.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a readable checkpoint: not an exptrack checkpoint, or it holds objects")
    assert "weights_only" not in message and "arbitrary code" not in message and "\n" not in message
    if writer == "torch":
        assert "(first: tests.test_checkpoint.Plain)" in message
    assert "this must never run" not in capsys.readouterr().out


def test_a_real_checkpoint_loads(tmp_path):
    path = checkpoint.save_atomic({"model": {"w": torch.ones(2)}, "config": {}, "epoch": 3}, tmp_path / "ok.pt")
    assert checkpoint.load(path)["epoch"] == 3
