"""The official CIFAR-10 download: md5-verified, safely extracted, validated, renamed into place."""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .cifar10 import BATCHES_DIR, DataError, find_batches_dir, read_canonical

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


def download_cifar10(data_dir: str | os.PathLike, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
                     timeout: float = 30.0) -> Path:
    """Download, verify the md5, extract into a temporary folder, validate, then rename into place.

    An interrupted earlier attempt leaves only dot-prefixed temporaries, removed here first."""
    data_dir = Path(data_dir)
    target = data_dir / BATCHES_DIR
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        for stale in data_dir.glob(".cifar10-*"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    except OSError as e:
        raise DataError(f"{data_dir}: cannot write ({e.strerror}); pass a writable --data-dir") from None
    fd, part_name = tempfile.mkstemp(prefix=".cifar10-", suffix=".tar.gz.part", dir=data_dir)
    part = Path(part_name)
    try:
        digest = hashlib.md5()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise DataError(f"cannot download CIFAR-10 from {url} ({reason}); put the extracted "
                            f"{BATCHES_DIR}/ under {data_dir} (or pass --data-dir / set CIFAR10_DIR), "
                            f"or run with --dataset synthetic") from None
        if digest.hexdigest() != md5:
            raise DataError(f"{url}: md5 {digest.hexdigest()} != expected {md5}; the download is corrupt "
                            f"or not the CIFAR-10 archive, retry or fetch it by hand into {data_dir}")
        extract = Path(tempfile.mkdtemp(prefix=".cifar10-extract-", dir=data_dir))
        try:
            try:
                with tarfile.open(part, "r:gz") as tar:
                    tar.extractall(extract, members=_safe_members(tar, part), filter="data")
            except (tarfile.TarError, EOFError, OSError) as e:
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


def default_data_dir() -> Path:
    env = os.environ.get("CIFAR10_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bench_fixtures" / "cifar10"


def ensure_cifar10(data_dir: str | os.PathLike, download: bool = True, url: str | None = None,
                   md5: str = CIFAR10_MD5) -> Path:
    """The validated batches folder under DATA_DIR, downloaded there when absent (from CIFAR10_URL
    when set: a mirror for runners without internet; the md5 is still the official archive's)."""
    url = url or os.environ.get("CIFAR10_URL") or CIFAR10_URL
    found = find_batches_dir(data_dir)
    if found is not None:
        return found
    if not download:
        raise DataError(f"{data_dir}: no {BATCHES_DIR}/ found; pass --data-dir to a folder holding it, "
                        f"or run with --dataset synthetic")
    return download_cifar10(data_dir, url, md5)
