"""The pytest-benchmark internals this suite relies on: all of them here, each one checked.

pytest-benchmark has public hooks for what a run *contains* (machine_info, the JSON's fields) and
none for *where and how* it is written. Four things need its session object:
- the machine id: the one folder level under the storage that `pytest-benchmark compare` lists;
  ours adds the GPU/CPU model, so histories of different hardware never share a folder;
- the storage's `save`: autosave numbers its file under a lock and links it into place;
- the `--benchmark-json` output: written beside its target and renamed (an open file today; its
  development branch turns the option into a Path, which `atomic_json` takes too);
- the list of results: emptied when the session is interrupted, so nothing partial is saved.
`check` says what no longer matches (tests/test_plugin.py runs it against the installed version),
and every function here fails with that message instead of silently doing nothing.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from .files import AtomicOutput


class InternalsChanged(RuntimeError):
    """The installed pytest-benchmark no longer has what this suite uses; the message says what."""


def _session(config: pytest.Config) -> Any:
    session = getattr(config, "_benchmarksession", None)
    if session is None:
        raise InternalsChanged("pytest-benchmark's session (config._benchmarksession) is missing: is the "
                               "pytest-benchmark plugin installed and enabled (not -p no:benchmark)?")
    return session


def check(config: pytest.Config) -> list[str]:
    """What no longer matches the pytest-benchmark internals this module uses (empty = all good)."""
    try:
        session = _session(config)
    except InternalsChanged as e:
        return [str(e)]
    problems = []
    if not isinstance(getattr(session, "benchmarks", None), list):
        problems.append("BenchmarkSession.benchmarks is no longer a list")
    if not isinstance(getattr(session, "machine_id", None), str):
        problems.append("BenchmarkSession.machine_id is no longer a string")
    for attr in ("json", "save", "autosave", "compare"):
        if not hasattr(session, attr):
            problems.append(f"BenchmarkSession.{attr} is gone")
    for attr in ("save_json", "handle_loading"):
        if not callable(getattr(session, attr, None)):
            problems.append(f"BenchmarkSession.{attr}() is gone")
    storage = getattr(session, "storage", None)
    if not hasattr(storage, "default_machine_id"):
        problems.append(f"the storage object ({type(storage).__name__}) has no 'default_machine_id'")
    if _is_file_storage(storage):
        for attr in ("save", "get", "path", "logger"):
            if not hasattr(storage, attr):
                problems.append(f"the file storage has no '{attr}'")
        if not problems and Path(storage.get("x")).parent.name != storage.default_machine_id:
            problems.append("the file storage no longer writes into STORAGE/<machine id>/")
    return problems


def _is_file_storage(storage: Any) -> bool:
    from pytest_benchmark.storage.file import FileStorage
    return isinstance(storage, FileStorage)


def _require(config: pytest.Config) -> Any:
    problems = check(config)
    if problems:
        import pytest_benchmark
        raise InternalsChanged(f"pytest-benchmark {pytest_benchmark.__version__} changed: {'; '.join(problems)}; "
                               f"this suite supports the version pinned in requirements.txt")
    return _session(config)


def set_machine_id(config: pytest.Config, make_id: Callable[[str], str]) -> str:
    """Store runs under MAKE_ID(pytest-benchmark's own id): still one folder below the storage."""
    session = _require(config)
    session.machine_id = make_id(session.machine_id)
    session.storage.default_machine_id = session.machine_id
    if session.compare:  # --benchmark-compare loaded its runs at configure time, from the plain id
        session.handle_loading()
    return session.machine_id


def storage_folder(config: pytest.Config) -> Path | None:
    """The folder autosave writes into, or None when the run is not saved to a file storage."""
    session = _require(config)
    if not (session.save or session.autosave) or not _is_file_storage(session.storage):
        return None
    return Path(session.storage.path)


def save_with(config: pytest.Config, save: Callable[[Path, str, bytes], Path]) -> None:
    """Autosave through SAVE(folder, name, payload) instead of pytest-benchmark's own writer; the
    payload is serialised as pytest-benchmark serialises it."""
    from pytest_benchmark.utils import safe_dumps
    session = _require(config)
    storage = session.storage

    def storage_save(output_json: dict, name: str) -> None:
        payload = safe_dumps(output_json, ensure_ascii=True, indent=4).encode()
        path = save(Path(storage.get("x")).parent, name, payload)
        storage.logger.info(f"Saved benchmark data in: {path}")

    storage.save = storage_save


def atomic_json(config: pytest.Config, path: str | os.PathLike | None = None) -> Path | None:
    """Have `--benchmark-json` (or PATH when it was not given) written atomically; its path.

    Today the option is an argparse file object, opened (and emptied) while the command line was
    parsed: it is closed, the empty file removed, and an `AtomicOutput` takes its place."""
    session = _require(config)
    given = session.json
    if given is None and path is None:
        return None
    if isinstance(given, AtomicOutput):
        return Path(given.name)
    if given is not None:
        if isinstance(given, io.IOBase):
            target = _close_and_remove_if_empty(given)
        elif isinstance(given, (str, os.PathLike)):
            target = Path(given)
        else:
            raise InternalsChanged(f"--benchmark-json is a {type(given).__name__}, neither an open file nor a path")
    else:
        target = Path(path)
    session.json = config.option.benchmark_json = AtomicOutput(target)
    return target


def _close_and_remove_if_empty(opened: io.IOBase) -> Path:
    """argparse opened (and so created) the `--benchmark-json` file while parsing: close it, and
    remove it while nothing was written, since an empty file would later read as a truncated run."""
    opened.close()
    target = Path(opened.name)
    if target.is_file() and target.stat().st_size == 0:
        target.unlink()
    return target


def discard_empty_json(config: pytest.Config) -> None:
    """A session that saved nothing leaves no `--benchmark-json` file behind."""
    given = getattr(config.option, "benchmark_json", None)
    if isinstance(given, io.IOBase):
        _close_and_remove_if_empty(given)


def drop_results(config: pytest.Config) -> None:
    """Nothing of an interrupted session is saved: no results, so pytest-benchmark writes nothing."""
    session = getattr(config, "_benchmarksession", None)
    if session is not None:
        _require(config).benchmarks[:] = []
