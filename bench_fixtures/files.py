"""Writing results so that a reader never sees half a file; folders and locks that outlive nothing."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


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


def folder_problem(path: str | os.PathLike) -> str | None:
    """Why PATH cannot be used as an input folder ("a file, not a folder", "a symlink loop", "a dangling
    symlink"), or None
    when it is a folder or does not exist yet (Path.exists() says False for a loop: it hides why)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a dangling symlink (to {os.readlink(path)}, which does not exist)"
        return None
    except OSError as e:
        return "a symlink loop" if e.errno == errno.ELOOP else (e.strerror or str(e))
    return None if stat.S_ISDIR(st.st_mode) else "a file, not a folder"


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


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a quota, a file-size limit


def free_bytes(folder: str | os.PathLike) -> int:
    """Free space of the file system FOLDER is (or, not yet created, will be) on."""
    folder = Path(folder).absolute()
    return shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists())).free


def space_message(folder: str | os.PathLike, needed: int, what: str, fix: str, error: OSError | None = None) -> str:
    """One line for a write that does not fit: which folder, how much WHAT needs, how much is free."""
    try:
        free = f"{free_bytes(folder) / 2**20:,.0f} MiB are free"
    except OSError:
        free = "free space unknown"
    cause = f" ({error.strerror})" if error is not None else ""
    return f"{folder}: no room for {what}{cause}: it needs {needed / 2**20:,.0f} MiB, {free}; {fix}"


@contextmanager
def exclusive_lock(path: str | os.PathLike, wait_s: float,
                   waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an flock on PATH (created if absent). The kernel releases it when the holder dies, however
    it dies, so a crashed holder never blocks anyone. WAITING is called once if another holds it;
    TimeoutError after WAIT_S seconds."""
    with open(path, "ab") as f:
        end = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > end:
                    raise TimeoutError(f"{path} is held by another process") from None
                if not told and waiting is not None:
                    waiting()
                told = True
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class WorkFolder:
    """A session's scratch folder (`bench-*` in the temp dir), removed at the end of the session; when
    the session cannot remove it (killed with SIGKILL, the machine lost power), the next one does.

    The owner holds an flock on a file inside for as long as it lives; the kernel drops it when the
    owner dies. The folder gets its final name only once the lock is held, so a sweeping session
    never mistakes a folder being created for an abandoned one."""

    PREFIX = "bench-"
    LOCK = ".owner.lock"

    def __init__(self, parent: str | os.PathLike | None = None) -> None:
        parent = Path(parent or tempfile.gettempdir())
        staging = Path(tempfile.mkdtemp(prefix=f".{self.PREFIX}", dir=parent))
        self._lock = open(staging / self.LOCK, "ab")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.path = Path(parent) / staging.name[1:]
        os.rename(staging, self.path)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.close()

    @classmethod
    def sweep(cls, parent: str | os.PathLike | None = None) -> list[Path]:
        """Remove this user's abandoned work folders under PARENT; returns those removed."""
        removed = []
        for folder in Path(parent or tempfile.gettempdir()).glob(f"{cls.PREFIX}*"):
            try:
                if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                    continue
                with open(folder / cls.LOCK, "rb") as f:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: its owner is gone
                    shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
            except OSError:  # no lock file (not ours), still held (owner alive), or gone meanwhile
                continue
        return removed
