"""Result files: written whole or not at all, and never over another session's."""
import json
import multiprocessing
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_fixtures.files import OutputError, check_writable, save_numbered, write_json_atomic


def _save(folder, i, barrier):
    barrier.wait()  # all writers at once: the race pytest-benchmark's own autosave loses
    save_numbered(folder, "20261127_120000_abc", json.dumps({"writer": i, "pad": "x" * 200_000}).encode())


def test_concurrent_saves_get_distinct_numbers_and_whole_files(tmp_path):
    (tmp_path / "0003_older.json").write_text('{"writer": "older"}')
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_save, args=(tmp_path, i, barrier)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    files = sorted(p.name for p in tmp_path.glob("[0-9]*.json"))
    assert files == ["0003_older.json"] + [f"{n:04d}_20261127_120000_abc.json" for n in range(4, 12)]
    writers = sorted(json.loads((tmp_path / f).read_text())["writer"] for f in files[1:])
    assert writers == list(range(8))  # every session's run kept, none overwritten, all complete JSON
    assert not list(tmp_path.glob(".*.part"))


def test_save_never_replaces_a_file_written_without_the_lock(tmp_path, monkeypatch):
    """A writer that ignores the lock (plain pytest-benchmark) took the number meanwhile."""
    real_link = os.link

    def racing_link(src, dst):
        if not os.path.exists(tmp_path / "0001_run.json"):
            (tmp_path / "0001_run.json").write_text('{"other": true}')
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    path = save_numbered(tmp_path, "run", b'{"mine": true}')
    assert path.name == "0002_run.json"
    assert json.loads((tmp_path / "0001_run.json").read_text()) == {"other": True}


@settings(max_examples=20, deadline=None)
@given(obj=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4)))
def test_atomic_json_round_trips_and_leaves_no_temporaries(tmp_path_factory, obj):
    folder = tmp_path_factory.mktemp("j")
    path = write_json_atomic(folder / "x.json", obj)
    assert json.loads(path.read_text()) == obj
    assert [p.name for p in folder.iterdir()] == ["x.json"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = write_json_atomic(tmp_path / "x.json", {"v": 1})
    loop: list = [1, 2]
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        write_json_atomic(path, {"v": 2, "w": loop})  # fails half-way through the dump
    assert json.loads(path.read_text()) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_check_writable_names_the_option_and_probes_the_nearest_folder(tmp_path):
    check_writable(tmp_path / "not" / "yet", "--bench-report")  # created later; its parent is writable
    assert not (tmp_path / "not").exists()  # the probe writes nothing that stays
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match=r"--telemetry-dir: cannot write to .*file/sub .*not a directory"):
        check_writable(tmp_path / "file" / "sub", "--telemetry-dir")
