"""Faults: a diverging run is caught at the step that diverged; an interrupted session leaves
no worker and no partial result behind."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench_fixtures.config import resolve
from bench_fixtures.experiment import Experiment
from bench_fixtures.worker import WorkerError
from tests.helpers import tiny_bundle


@pytest.mark.parametrize("framework", [pytest.param("torch", marks=pytest.mark.torch),
                                       pytest.param("tensorflow", marks=pytest.mark.tensorflow)])
def test_nan_loss_is_reported_with_epoch_and_step(framework, tmp_path):
    cfg = resolve(dict(profile="smoke", device="cpu", lr=1e30, batch_size=16, epochs=2), gpu_count=0)
    bundle = tiny_bundle(tmp_path / "bundle", n_train=64, batch=16, epochs=2)
    exp = Experiment(framework, "mobilenet_v2", cfg, bundle, tmp_path)
    try:
        exp.load()
        exp.start_round()
        with pytest.raises(WorkerError) as e:
            exp.fine_tune()
    finally:
        exp.close()
    msg = str(e.value)
    assert f"{framework}: the loss became NaN/inf at epoch 0, step " in msg and "lower --lr" in msg
    assert "Traceback" not in msg  # a finding, not a crash
    step = int(msg.split("step ")[1].split(" ")[0])
    assert 0 <= step < 4


ROOT = Path(__file__).resolve().parents[1]


def _worker_of(pid: int, timeout: float = 120) -> psutil.Process:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for child in psutil.Process(pid).children(recursive=True):
            try:
                if "bench_fixtures.worker" in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    raise AssertionError("no worker process appeared")


@pytest.mark.torch
def test_interrupted_session_kills_workers_and_saves_nothing(tmp_path):
    """SIGTERM (what CI runners send) takes the same path as Ctrl-C: pytest's KeyboardInterrupt."""
    sig = signal.SIGTERM
    store = tmp_path / "store" / "Linux-CPython-3.11-64bit"
    store.mkdir(parents=True)
    history = store / "0001_earlier.json"
    history.write_text('{"benchmarks": [], "earlier": true}')
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    out, telemetry = tmp_path / "out.json", tmp_path / "telemetry"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "tests/benchmarks", "-p", "no:cacheprovider", "--benchmark-only",
         "-k", "test_finetune and torch-vgg19", f"--benchmark-json={out}", "--benchmark-autosave",
         f"--benchmark-storage=file://{tmp_path / 'store'}", f"--telemetry-dir={telemetry}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        worker = _worker_of(proc.pid)
        time.sleep(12)  # past import, build and evaluation: inside the fine-tune
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output[-2000:]
    try:
        status = worker.status()
    except psutil.NoSuchProcess:
        status = "gone"
    assert status in ("gone", psutil.STATUS_ZOMBIE), f"worker {worker.pid} outlived the session: {status}\n{output[-3000:]}"
    assert not out.exists(), "a partial --benchmark-json was left behind"
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before  # histories untouched, none added
    assert not telemetry.exists() or not any(telemetry.iterdir())
