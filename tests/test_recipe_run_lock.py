"""One run per folder: a run holds its --output-dir's lock for its life, even through kill -9."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from splathead_recipes.run_lock import LOCK_NAME, FolderInUseError, FolderLock, folder_in_use
from test_recipe_train import ROOT, run

HOLD = ("import sys, time; from pathlib import Path; "
        "from splathead_recipes.run_lock import FolderLock; "
        "lock = FolderLock(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)")


def hold_in_another_process(directory: Path) -> subprocess.Popen:
    """A live process holding ``directory``'s lock, as a running run does."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "recipes")}
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], env=environment,
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout.readline().strip() == "held"
    return process


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(directory.rglob("*"))}


def test_a_second_run_on_a_folder_in_use_exits_2_naming_it_and_the_pid_changing_nothing(
        tmp_path, capsys):
    assert run(tmp_path, "--epochs", "1") == 0
    holder = hold_in_another_process(tmp_path)
    try:
        before = snapshot(tmp_path)
        for flags in (["--resume", "auto"], [], ["--seed", "1"]):
            assert run(tmp_path, "--epochs", "2", *flags) == 2
            error = capsys.readouterr().err
            assert re.search(rf"--output-dir {re.escape(str(tmp_path))} is in use by a "
                             rf"running run \(process {holder.pid}\)", error), error
            assert snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_goes_with_its_process_even_on_kill_9(tmp_path):
    holder = hold_in_another_process(tmp_path)
    assert str(holder.pid) in folder_in_use(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert folder_in_use(tmp_path) is None
    FolderLock(tmp_path).release()


def test_a_lock_is_refused_while_held_and_free_once_released(tmp_path):
    lock = FolderLock(tmp_path / "out")
    assert (tmp_path / "out" / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(FolderInUseError, match=rf"process {os.getpid()}"):
        FolderLock(tmp_path / "out")
    (tmp_path / "out" / "metrics.jsonl").write_text("")
    lock.release()
    FolderLock(tmp_path / "out").release()


def test_a_folder_the_lock_created_goes_again_if_the_run_wrote_nothing(tmp_path):
    FolderLock(tmp_path / "new").release()
    assert not (tmp_path / "new").exists()
