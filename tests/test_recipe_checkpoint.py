"""Checkpoint files: a write that fails midway leaves the previous checkpoint as it was."""

from __future__ import annotations

import errno
import os

import pytest
import torch
from splathead_recipes import checkpoint


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def fail_midway(state, handle, *args, **kwargs):
    """``torch.save`` on a disk that fills up after the first 4 KiB."""
    handle.write(b"\0" * 4096)
    no_space()


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint_loadable(tmp_path,
                                                                         monkeypatch):
    path = tmp_path / "checkpoint-00000004.pt"
    checkpoint.save_atomic({"step": 4, "weights": torch.arange(4096.0)}, path)
    monkeypatch.setattr(torch, "save", fail_midway)
    with pytest.raises(checkpoint.WriteError,
                       match=rf"could not write {path}: .*No space left .* MiB free"):
        checkpoint.save_atomic({"step": 8, "weights": torch.zeros(4096)}, path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left
    state = torch.load(path, weights_only=True)
    assert state["step"] == 4 and torch.equal(state["weights"], torch.arange(4096.0))


def test_torch_saves_own_error_on_a_full_disk_is_named_with_the_path(tmp_path, monkeypatch):
    def torch_on_a_full_disk(state, handle, *args, **kwargs):
        handle.write(b"\0" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 683008")

    monkeypatch.setattr(torch, "save", torch_on_a_full_disk)
    path = tmp_path / "checkpoint-00000008.pt"
    with pytest.raises(checkpoint.WriteError, match=rf"could not write {path}: .*MiB free"):
        checkpoint.save_atomic({"step": 8}, path)
    assert list(tmp_path.iterdir()) == []


def test_text_written_atomically_keeps_the_old_text_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    checkpoint.write_text_atomic("old\n", path)
    monkeypatch.setattr(os, "fsync", no_space)  # the data reaches the disk at fsync
    with pytest.raises(checkpoint.WriteError, match=f"could not write {path}"):
        checkpoint.write_text_atomic("new\n", path)
    monkeypatch.undo()
    assert path.read_text() == "old\n" and sorted(tmp_path.iterdir()) == [path]
