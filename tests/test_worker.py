"""The worker protocol and its failure modes, with real processes and real signals."""
import os
import time

import pytest

from bench_fixtures.runner.worker import Worker, WorkerError
from tests.helpers import tiny_bundle

CFG = {"device": "cpu"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def protocol_worker(tmp_path, timeout=30.0) -> Worker:
    return Worker(None, CFG, None, tmp_path / "w.log", timeout, faults=True)


def test_hello_and_clean_shutdown(tmp_path):
    w = protocol_worker(tmp_path)
    assert w.info["framework"] is None and w.info["pid"] == w.pid
    w.close()
    assert w.proc.returncode == 0 and not alive(w.pid)


def test_killed_worker_fails_with_signal_and_phase(tmp_path):
    w = protocol_worker(tmp_path)
    with pytest.raises(WorkerError, match=r"worker died \(killed by SIGKILL\) during 'crash'"):
        w.request("crash", signal="SIGKILL")
    assert not alive(w.pid)


def test_hung_worker_is_killed_after_the_timeout(tmp_path):
    w = protocol_worker(tmp_path, timeout=1.0)
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"hung: no answer to 'sleep' within 1 s") as e:
        w.request("sleep", seconds=60)
    assert time.monotonic() - start < 15 and not alive(w.pid)
    assert 'line' in str(e.value) and "in serve" in str(e.value)  # its stacks: where it hung


def test_exception_in_worker_reports_traceback(tmp_path):
    w = protocol_worker(tmp_path)
    with pytest.raises(WorkerError, match="failed during 'raise': RuntimeError: boom") as e:
        w.request("raise", message="boom")
    assert "Traceback" in str(e.value) and not alive(w.pid)


def test_unknown_framework_output_tail_is_included(tmp_path):
    with pytest.raises(WorkerError) as e:
        Worker("torch", CFG, tmp_path / "no-such-bundle", tmp_path / "w.log", 60)
    assert "during 'hello'" in str(e.value) and "no-such-bundle" in str(e.value)


@pytest.mark.torch
@pytest.mark.tensorflow
def test_both_frameworks_see_the_same_batches_in_the_same_order(tmp_path):
    """The shared order is not a promise: read the labels each input pipeline actually yields."""
    bundle = tiny_bundle(tmp_path / "bundle", n_train=64, batch=16, epochs=2)
    cfg = {"device": "cpu", "seed": 0, "batch_size": 16, "precision": "fp32"}
    seqs = {}
    for fw in ("torch", "tensorflow"):
        with Worker(fw, cfg, bundle, tmp_path / f"{fw}.log", 120) as w:
            seqs[fw] = w.request("peek_labels", batches=8)  # both epochs, 4 batches each
    assert len(seqs["torch"]) == 8 and all(len(b) == 16 for b in seqs["torch"])
    assert seqs["torch"] == seqs["tensorflow"]
    assert seqs["torch"][:4] != seqs["torch"][4:]  # each epoch its own order
