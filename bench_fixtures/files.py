"""Writing results so that a reader never sees half a file; folders and locks that outlive nothing."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def umask() -> int:
    """This process's umask. Read from /proc (Linux), which leaves it alone; elsewhere set and put
    back at once (os.umask is the only other way to read it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_beside(path: str | os.PathLike) -> tuple[int, Path]:
    """A new hidden temporary file in PATH's folder (created if absent), to be renamed over PATH:
    (fd, path). Its mode is what open() would give PATH (0o666 less the umask), not mkstemp's 0600,
    which would hide a shared history or report from everyone else."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, Path(tmp)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over PATH."""
    return write_text_atomic(path, json.dumps(obj, indent=1, default=str))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """TEXT into PATH whole or not at all: a temporary file beside it, fsynced, renamed over it."""
    path = Path(path)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
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
        fd, self._tmp = temp_beside(self.name)
        self._fh = os.fdopen(fd, "wb")
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
    fd, tmp = temp_beside(folder / name)
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


UNITS = ((2**30, "GiB", 2), (2**20, "MiB", 1), (2**10, "KiB", 1))  # (size, name, decimals shown)


def _unit(n: int | float) -> tuple[int, str, int]:
    return next(((s, u, d) for s, u, d in UNITS if n >= s), (1, "bytes", 0))


def size(n: int | float) -> str:
    """N bytes, readably: 1.5 GiB, 6.2 MiB, 12.0 KiB, 300 bytes."""
    scale, unit, decimals = _unit(n)
    return f"{n / scale:,.{decimals}f} {unit}"


def size_pair(needed: int | float, limit: int | float) -> tuple[str, str]:
    """NEEDED and LIMIT (bytes) for a line saying that one does not fit the other: when NEEDED is
    above LIMIT, both in LIMIT's unit with as many decimals as it takes to read above it (rounding
    both to "1 MiB" made a refusal read as if it fitted)."""
    if needed <= limit:
        return size(needed), size(limit)
    scale, unit, decimals = _unit(limit)
    for digits in range(decimals, decimals + 7):
        shown = (f"{needed / scale:,.{digits}f} {unit}", f"{limit / scale:,.{digits}f} {unit}")
        if shown[0] != shown[1]:
            return shown
    return f"{needed:,.0f} bytes", f"{limit:,.0f} bytes"


def space_message(folder: str | os.PathLike, needed: int, what: str, fix: str, error: OSError | None = None) -> str:
    """One line for a write that does not fit: which folder, how much WHAT needs, how much is free."""
    try:
        need, free = size_pair(needed, free_bytes(folder))
        free = f"{free} are free"
    except OSError:
        need, free = size(needed), "free space unknown"
    cause = f" ({error.strerror})" if error is not None else ""
    return f"{folder}: no room for {what}{cause}: it needs {need}, {free}; {fix}"


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
    the session cannot remove it (killed with SIGKILL, the machine lost power), the next one to create
    its own does (a pytest session or `bench ab` alike: creating one sweeps first).

    The owner holds an flock on a file inside for as long as it lives; the kernel drops it when the
    owner dies. The folder gets its final name only once the lock is held, so a sweeping session
    never mistakes a folder being created for an abandoned one."""

    PREFIX = "bench-"
    LOCK = ".owner.lock"

    def __init__(self, parent: str | os.PathLike | None = None) -> None:
        parent = Path(parent or tempfile.gettempdir())
        self.sweep(parent)  # what sessions killed before their cleanup left behind
        staging = None
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{self.PREFIX}", dir=parent))
            self._lock = open(staging / self.LOCK, "ab")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            self.path = Path(parent) / staging.name[1:]
            os.rename(staging, self.path)
        except OSError as e:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            raise OutputError(f"{parent}: cannot make this session's work folder ({e.strerror or e}); set TMPDIR "
                              f"to a writable folder with room") from None

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


class FolderBusy(OutputError):
    """Another live session writes into the output folder this one was given."""


class FolderClaim:
    """This session's claim on an output folder (a report, telemetry, `bench ab --out`): an flock on
    FOLDER/.bench-session.lock, held until `release` or until the process dies (the kernel drops it, so
    a killed session never blocks the next). A second live session given the same folder would
    silently replace the first one's files: it is refused instead, with OPTION and the fix. The lock
    file (and the folder, when the claim created it and nothing was written) goes at release."""

    LOCK = ".bench-session.lock"

    def __init__(self, folder: str | os.PathLike, option: str, fix: str = "give each session its own folder") -> None:
        self.folder = Path(folder).expanduser().absolute()
        self.created = not self.folder.exists()
        path = self.folder / self.LOCK
        while True:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._file = open(path, "a+")
            except OSError as e:
                raise OutputError(f"{option}: cannot write to {self.folder}: {e.strerror or e}; give {option} a "
                                  f"writable folder") from None
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._file.seek(0)
                holder = self._file.read().strip() or "unknown"
                self._file.close()
                raise FolderBusy(f"{option}: another session (PID {holder}) is writing into {self.folder} now, "
                                 f"and one would replace the other's files; {fix}") from None
            try:  # the lock is ours only if the file is still the folder's (a holder unlinks it at release)
                same = os.stat(path).st_ino == os.fstat(self._file.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            self._file.close()
        self._file.truncate(0)
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        if self._file.closed:
            return
        (self.folder / self.LOCK).unlink(missing_ok=True)  # still holding the lock: see __init__
        self._file.close()
        if self.created:
            try:
                self.folder.rmdir()  # only when empty: the session wrote nothing there
            except OSError:
                pass


TERMINATING = (signal.SIGTERM, signal.SIGHUP)  # a CI runner's stop, a closed terminal


def interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP take Ctrl-C's path (KeyboardInterrupt), so `finally` blocks run: workers
    are ended and work folders removed. A signal someone chose to ignore (nohup) stays ignored."""
    for sig in TERMINATING:
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _raise_interrupt)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")
