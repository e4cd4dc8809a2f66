"""Writing results so that a reader never sees half a file."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over PATH."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class AtomicOutput:
    """A file object for pytest-benchmark's `--benchmark-json` (what `--bench-report` hands it):
    nothing is opened at startup; `with out as fh:` writes a temporary file beside PATH and
    renames it on success, so a failed session leaves no partial JSON."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.name = str(path)
        self._tmp: Path | None = None
        self._fh: Any = None

    def __enter__(self):
        path = Path(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        self._tmp, self._fh = Path(tmp), os.fdopen(fd, "wb")
        return self._fh

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._fh is not None and self._tmp is not None
        try:
            if exc_type is None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            self._fh.close()
            if exc_type is None:
                os.replace(self._tmp, self.name)
        finally:
            self._tmp.unlink(missing_ok=True)

    def close(self) -> None:
        pass

    def __str__(self) -> str:
        return self.name

    __fspath__ = __str__


class OutputError(OSError):
    """An output location the session could not write; the message names the option and the fix."""


def check_writable(folder: str | os.PathLike, option: str) -> None:
    """Fail before any work if FOLDER (or, while it does not exist yet, the nearest folder above it)
    cannot take a new file: a real probe file, since mode bits say nothing for root or read-only mounts."""
    folder = Path(folder).absolute()
    probe_in = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    try:
        if not probe_in.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(probe_in))
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=probe_in)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        where = "" if probe_in == folder else f" (its nearest existing folder {probe_in})"
        raise OutputError(f"{option}: cannot write to {folder}{where}: {e.strerror or e}; "
                          f"give {option} a writable folder") from None


def save_numbered(folder: str | os.PathLike, name: str, payload: bytes) -> Path:
    """Save PAYLOAD as FOLDER/NNNN_NAME.json with the next free number, whole or not at all.

    pytest-benchmark's autosave picks `max + 1` and then opens the file for writing: two sessions
    saving into one storage folder at once can pick the same number, and a reader can see half a
    file. Here the number is chosen under an exclusive lock, the file is written beside its target
    and linked into place (a link never replaces an existing file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        with open(folder / ".save.lock", "ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            numbers = [int(p.name[:4]) for p in folder.glob("[0-9][0-9][0-9][0-9]_*.json")]
            number = max(numbers, default=0) + 1
            while True:
                target = folder / f"{number:04d}_{name}.json"
                try:
                    os.link(tmp, target)
                    return target
                except FileExistsError:  # a writer that does not take the lock
                    number += 1
    finally:
        Path(tmp).unlink(missing_ok=True)
