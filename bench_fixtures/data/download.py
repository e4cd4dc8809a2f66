"""The official CIFAR-10 download: md5-verified, safely extracted, validated, renamed into place."""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
from pathlib import Path

from ..files import NO_SPACE, exclusive_lock, folder_problem, free_bytes, space_message
from .cifar10 import BATCHES_DIR, DataError, find_batches_dir, read_canonical
from .http import DOWNLOAD_DEADLINE_S, TooSlow, chunks_within, open_within

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"


def _safe_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        parts = Path(m.name).parts
        if m.name.startswith(("/", "\\")) or ".." in parts or not (m.isfile() or m.isdir()):
            raise DataError(f"{archive}: unsafe member {m.name!r} (absolute path, '..' or link); "
                            f"delete it and download the official archive")
    return members


ARCHIVE_BYTES = 170_498_071      # the official archive
EXTRACTED_BYTES = 186_214_114    # cifar-10-batches-py/ unpacked
SPACE_FIX = "free space there, or pass --data-dir / set CIFAR10_DIR to a folder on a larger disk"


MAX_ARCHIVE_BYTES = ARCHIVE_BYTES + (1 << 20)  # a server sending more is not sending the archive


def download_cifar10(data_dir: str | os.PathLike, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
                     timeout: float = 30.0, deadline: float = DOWNLOAD_DEADLINE_S) -> Path:
    """Download, verify the md5, extract into a temporary folder, validate, then rename into place.

    One download per folder at a time: sessions that find another one downloading wait for it (a
    lock beside the data, released by the kernel if its holder dies) and then use its result.
    TIMEOUT bounds each network wait, DEADLINE the whole transfer. An interrupted earlier attempt
    leaves only dot-prefixed temporaries, removed (under the lock) first."""
    data_dir = Path(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = exclusive_lock(data_dir / ".cifar10.lock", wait_s=deadline + 600, waiting=lambda: print(
            f"bench: another session is downloading CIFAR-10 into {data_dir}; waiting for it", file=sys.stderr))
        with lock:
            found = find_batches_dir(data_dir)
            if found is not None:  # the session we waited for downloaded it
                return found
            for stale in data_dir.glob(".cifar10-*"):
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
            return _download(data_dir, url, md5, timeout, deadline)
    except TimeoutError as e:
        raise DataError(f"{data_dir}: waited too long for another session's download ({e}); "
                        f"remove {data_dir / '.cifar10.lock'} if no session is running") from None
    except OSError as e:
        raise DataError(f"{data_dir}: cannot write ({e.strerror}); pass a writable --data-dir") from None


def _download(data_dir: Path, url: str, md5: str, timeout: float, deadline: float) -> Path:
    target = data_dir / BATCHES_DIR
    if free_bytes(data_dir) < ARCHIVE_BYTES + EXTRACTED_BYTES:
        raise DataError(space_message(data_dir, ARCHIVE_BYTES + EXTRACTED_BYTES, "CIFAR-10 (archive + extracted)",
                                      SPACE_FIX))
    fd, part_name = tempfile.mkstemp(prefix=".cifar10-", suffix=".tar.gz.part", dir=data_dir)
    part = Path(part_name)
    offline = (f"put the extracted {BATCHES_DIR}/ under {data_dir} (or pass --data-dir / set CIFAR10_DIR), "
               f"or run with --dataset synthetic")
    try:
        digest, received, start = hashlib.md5(), 0, time.monotonic()
        with os.fdopen(fd, "wb") as out:
            try:
                with open_within(url, timeout, start + deadline) as resp:
                    length = int(resp.headers.get("Content-Length") or 0)
                    if length > MAX_ARCHIVE_BYTES:
                        raise DataError(f"cannot download CIFAR-10 from {url}: it announces {length:,} bytes, the "
                                        f"archive has {ARCHIVE_BYTES:,}; not the CIFAR-10 archive; {offline}")
                    for chunk in chunks_within(resp, start + deadline):
                        digest.update(chunk)
                        received += len(chunk)
                        if received > MAX_ARCHIVE_BYTES:
                            raise DataError(f"cannot download CIFAR-10 from {url}: more than {MAX_ARCHIVE_BYTES:,} "
                                            f"bytes sent, the archive has {ARCHIVE_BYTES:,}; not the CIFAR-10 "
                                            f"archive; {offline}")
                        try:
                            out.write(chunk)
                        except OSError as e:
                            raise _write_error(data_dir, e) from None
                    expected = int(resp.headers.get("Content-Length") or received)
                    if received < expected:  # read1 ends quietly where read() raised IncompleteRead
                        raise DataError(f"cannot download CIFAR-10 from {url}: the connection ended after "
                                        f"{received:,} of {expected:,} bytes; retry, or {offline}")
            except TooSlow:
                raise DataError(f"cannot download CIFAR-10 from {url}: not complete after {deadline:g} s "
                                f"({received / 2**20:.1f} MiB received; the mirror is too slow); {offline}") from None
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                reason = " ".join(str(getattr(e, "reason", None) or e).split())  # urllib's can span lines
                raise DataError(f"cannot download CIFAR-10 from {url} ({reason}); {offline}") from None
        if digest.hexdigest() != md5:
            raise DataError(f"{url}: md5 {digest.hexdigest()} != expected {md5}; the download is corrupt "
                            f"or not the CIFAR-10 archive, retry or fetch it by hand into {data_dir}")
        extract = Path(tempfile.mkdtemp(prefix=".cifar10-extract-", dir=data_dir))
        try:
            try:
                with tarfile.open(part, "r:gz") as tar:
                    tar.extractall(extract, members=_safe_members(tar, part), filter="data")
            except OSError as e:
                raise _write_error(data_dir, e) if e.errno in NO_SPACE else DataError(
                    f"{url}: archive cannot be extracted ({e}); retry the download") from None
            except (tarfile.TarError, EOFError) as e:
                raise DataError(f"{url}: archive cannot be extracted ({e}); retry the download") from None
            found = find_batches_dir(extract)
            if found is None:
                raise DataError(f"{url}: archive holds no {BATCHES_DIR}/batches.meta; "
                                f"it is not the CIFAR-10 python archive")
            read_canonical(found)  # validate before it becomes visible
            if target.exists():
                shutil.rmtree(target)
            os.replace(found, target)
        finally:
            shutil.rmtree(extract, ignore_errors=True)
    finally:
        part.unlink(missing_ok=True)
    return target


def _write_error(data_dir: Path, e: OSError) -> DataError:
    if e.errno in NO_SPACE:
        return DataError(space_message(data_dir, ARCHIVE_BYTES + EXTRACTED_BYTES, "CIFAR-10 (archive + extracted)",
                                       SPACE_FIX, e))
    return DataError(f"{data_dir}: cannot write the download ({e.strerror}); pass a writable --data-dir")


def ensure_cifar10(data_dir: str | os.PathLike, download: bool = True, url: str | None = None,
                   md5: str = CIFAR10_MD5) -> Path:
    """The validated batches folder under DATA_DIR, downloaded there when absent (from CIFAR10_URL
    when set: a mirror for runners without internet; the md5 is still the official archive's)."""
    url = url or os.environ.get("CIFAR10_URL") or CIFAR10_URL
    problem = folder_problem(data_dir)
    if problem:
        raise DataError(f"{data_dir}: {problem}; give --data-dir (or CIFAR10_DIR) the folder that holds "
                        f"(or will hold) {BATCHES_DIR}/")
    found = find_batches_dir(data_dir)
    if found is not None:
        return found
    if not download:
        raise DataError(f"{data_dir}: no {BATCHES_DIR}/ found; pass --data-dir to a folder holding it, "
                        f"or run with --dataset synthetic")
    return download_cifar10(data_dir, url, md5)
