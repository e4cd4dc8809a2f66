"""Writing results so that a reader never sees half a file."""
from __future__ import annotations

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
