"""The worker protocol and its failure modes, with real processes and real signals."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_fixtures.config import resolve
from bench_fixtures.registry import installed
from bench_fixtures.runner.worker import Worker, WorkerError
from tests.helpers import tiny_bundle

ROOT = Path(__file__).resolve().parents[1]
CFG = {"device": "cpu"}  # all a worker without a framework reads of its config
# A case's config, as the worker rebuilds it from the dict that crossed the pipe.
CASE = resolve(dict(profile="smoke", device="cpu", batch_size=16, precision="fp32"), gpu_count=0)


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
        Worker("torch", CASE, tmp_path / "no-such-bundle", tmp_path / "w.log", 60)
    assert "during 'hello'" in str(e.value) and "no-such-bundle" in str(e.value)


def test_a_framework_worker_takes_only_a_whole_config(tmp_path):
    """The worker rebuilds the typed config from the dict that crossed the pipe: a partial one is
    refused at 'hello', naming what is missing, before any framework is imported."""
    with pytest.raises(WorkerError, match=r"during 'hello': ConfigError: not a bench config: missing \[.*'seed'"):
        Worker("torch", {"device": "cpu", "batch_size": 16}, tmp_path / "no-such-bundle", tmp_path / "w.log", 60)


@pytest.mark.torch
@pytest.mark.tensorflow
def test_every_framework_sees_the_same_batches_in_the_same_order(tmp_path):
    """The shared order is not a promise: read the labels each input pipeline actually yields."""
    bundle = tiny_bundle(tmp_path / "bundle", n_train=64, batch=16, epochs=2)
    seqs = {}
    for fw in installed():  # the config as experiment.py sends it (a dict) and as a BenchConfig
        with Worker(fw, CASE.as_dict() if fw == "torch" else CASE, bundle, tmp_path / f"{fw}.log", 120) as w:
            seqs[fw] = w.request("peek_labels", batches=8)  # both epochs, 4 batches each
    assert len(seqs["torch"]) == 8 and all(len(b) == 16 for b in seqs["torch"])
    assert all(seq == seqs["torch"] for seq in seqs.values()) and len(seqs) == len(installed())
    assert seqs["torch"][:4] != seqs["torch"][4:]  # each epoch its own order


FIT_ORDER = """
import json, sys
from bench_fixtures.frameworks import jax_backend as jb
from bench_fixtures.frameworks.keras_common import FirstNonFiniteStep
from bench_fixtures.data import Bundle
from bench_fixtures.telemetry.timeline import Timeline
import keras
fed = []
get = jb.SharedOrder.__getitem__
def logged(self, i):
    x, y = get(self, i)
    fed.append(y.tolist())
    return x, y
jb.SharedOrder.__getitem__ = logged
from bench_fixtures.config import resolve
cfg = resolve(dict(profile="smoke", device="cpu", batch_size=16, precision="fp32", eval_every_epoch=False), gpu_count=0)
be = jb.JaxBackend(cfg, Bundle.read(sys.argv[1]), Timeline())
inputs = keras.Input((32, 32, 3), dtype="uint8")
outputs = keras.layers.Dense(10)(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs)))
be.model = keras.Model(inputs, outputs)  # a tiny model: what is tested is the data path of `fit`
be.model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=[FirstNonFiniteStep()], jit_compile=True)
be._instrument()
fed.clear()
be.fit(2)
print(json.dumps({"fed": fed[:], "peek": be.peek_labels(8)}))
"""


@pytest.mark.torch
@pytest.mark.jax
def test_keras_on_jax_fit_feeds_the_shared_order_epoch_by_epoch(tmp_path):
    """JAX's `fit` reads a PyDataset that cannot count epochs itself (Keras reads a batch to build the
    model and restarts the pass each epoch): the labels `fit` is actually fed, logged, are torch's."""
    bundle = tiny_bundle(tmp_path / "bundle", n_train=64, batch=16, epochs=2)
    r = subprocess.run([sys.executable, "-c", FIT_ORDER, str(bundle)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    with Worker("torch", CASE, bundle, tmp_path / "torch.log", 120) as w:
        torch_order = w.request("peek_labels", batches=8)
    # Keras first reads one batch to build the metrics and the optimizer (shapes only), then trains on
    # both epochs, 4 batches each, in order
    assert got["fed"][0] == torch_order[0] and got["fed"][1:] == torch_order == got["peek"]
