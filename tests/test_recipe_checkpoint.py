"""Checkpoint files: a write that fails midway leaves the previous checkpoint as it was."""

from __future__ import annotations

import errno

import pytest
import torch
from splathead_recipes import checkpoint


def fail_midway(state, handle, *args, **kwargs):
    """``torch.save`` on a disk that fills up after the first 4 KiB."""
    handle.write(b"\0" * 4096)
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint_loadable(tmp_path,
                                                                         monkeypatch):
    path = tmp_path / "checkpoint-00000004.pt"
    checkpoint.save_atomic({"step": 4, "weights": torch.arange(4096.0)}, path)
    monkeypatch.setattr(torch, "save", fail_midway)
    with pytest.raises(OSError):
        checkpoint.save_atomic({"step": 8, "weights": torch.zeros(4096)}, path)
    monkeypatch.undo()
    state = torch.load(path, weights_only=True)
    assert state["step"] == 4 and torch.equal(state["weights"], torch.arange(4096.0))
