"""One run per folder: an exclusive lock on ``<output-dir>/.run.lock`` held for a run's life.

The lock is an ``fcntl.flock`` on an open file, so the kernel releases it when the process
ends however it ends (``kill -9`` included); the file itself stays and holds the pid of the
run that last held it. A second run on a folder in use is refused before it changes anything.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_NAME = ".run.lock"


class FolderUnusableError(RuntimeError):
    """The run cannot take ``--output-dir``; the message names the folder and why."""


class FolderInUseError(FolderUnusableError):
    """Another live process holds the folder's lock; the message names the folder and its pid."""


def _holder_message(directory: Path, handle: IO[str]) -> str:
    handle.seek(0)
    pid = handle.read().strip() or "unknown"
    return (f"--output-dir {directory} is in use by a running run (process {pid}); nothing "
            "there was changed. Wait for it to end (or stop it), or choose another --output-dir.")


def folder_in_use(directory: Path) -> str | None:
    """Why ``directory`` cannot take a run now (the message names the holder's pid), or None.
    Reads only: creates and changes nothing."""
    try:
        handle = open(directory / LOCK_NAME)
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_message(directory, handle)
    return None


class FolderLock:
    """``directory``'s lock, held from construction until :meth:`release` or the process's end.

    Creates the folder if needed and writes this process's pid into the lock file;
    :class:`FolderInUseError` if another process holds it, :class:`FolderUnusableError` if the
    folder or the lock file cannot be created (a place only a write reveals, such as ``/proc``
    for root, whom permission bits do not stop). A folder this lock created is removed
    again on release if the run left nothing else in it (a run refused after the lock changes
    nothing).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.created = not directory.exists()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.handle = open(directory / LOCK_NAME, "a+")  # created if missing, not truncated
        except OSError as error:
            raise FolderUnusableError(
                f"--output-dir {directory}: cannot create {error.filename or directory} "
                f"({error.strerror or error}); expected a folder this process can write in"
            ) from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = _holder_message(directory, self.handle)
            self.handle.close()
            raise FolderInUseError(message) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"{os.getpid()}\n")
        self.handle.flush()

    def release(self) -> None:
        if self.created and os.listdir(self.directory) == [LOCK_NAME]:
            (self.directory / LOCK_NAME).unlink()
            self.directory.rmdir()
        self.handle.close()  # unlocks
