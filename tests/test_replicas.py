"""--replicas N: the shard each replica trains on, the launcher's environment, the group's faults,
and, end to end on the CPU, two replicas of torch (DDP over gloo) and TensorFlow
(MultiWorkerMirroredStrategy over loopback) that see their shards and agree after a step."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_fixtures.config import ConfigError, resolve
from bench_fixtures.data import Bundle, prepare_data
from bench_fixtures.data.bundle import replica_shard
from bench_fixtures.registry import FRAMEWORKS, installed
from bench_fixtures.runner import replicas as replicas_mod
from bench_fixtures.runner.replicas import ReplicaGroup, rendezvous_env, world_size
from bench_fixtures.runner.worker import _LIVE, WorkerError
from bench_fixtures.telemetry.monitor import PsutilSampler


def needs(framework: str):
    return pytest.mark.skipif(framework not in installed(), reason=f"{framework} is not installed")


# --------------------------------------------------------------------------- the shard

@settings(max_examples=200, deadline=None)
@given(epochs=st.integers(1, 3), steps=st.integers(1, 6), replicas=st.integers(1, 5), batch=st.integers(1, 7),
       extra=st.integers(0, 9), seed=st.integers(0, 2**16))
def test_the_shards_of_a_step_are_its_global_batch(epochs, steps, replicas, batch, extra, seed):
    """Together the replicas' batches of step s are exactly the single process's global batch s, in
    rank order; each shard keeps the shared order; a partial last global batch is dropped."""
    g = replicas * batch
    extra %= g  # less than one global batch left over
    order = np.random.default_rng(seed).permutation(epochs * (steps * g + extra)).reshape(epochs, -1)
    shards = [replica_shard(order, r, replicas, batch) for r in range(replicas)]
    for shard in shards:
        assert shard.shape == (epochs, steps * batch)
    for e in range(epochs):
        for s in range(steps):
            together = np.concatenate([sh[e, s * batch:(s + 1) * batch] for sh in shards])
            assert np.array_equal(together, order[e, s * g:(s + 1) * g])


def test_one_replica_is_the_shared_order_itself():
    order = np.arange(40).reshape(2, 20)
    assert np.array_equal(replica_shard(order, 0, 1, 4), order)


# --------------------------------------------------------------------------- the launcher's environment

def test_local_rendezvous_is_torchrun_style_for_torch_and_tf_config_for_tensorflow():
    envs, where = rendezvous_env("torch", 2, gpu=False, environ={}, ports=[29400])
    assert [(e["RANK"], e["WORLD_SIZE"], e["LOCAL_RANK"], e["MASTER_PORT"]) for e in envs] == \
        [("0", "2", "0", "29400"), ("1", "2", "1", "29400")]
    assert where == "127.0.0.1:29400" and all("CUDA_VISIBLE_DEVICES" not in e for e in envs)
    envs, _ = rendezvous_env("tensorflow", 2, gpu=True, environ={}, ports=[5001, 5002])
    configs = [json.loads(e["TF_CONFIG"]) for e in envs]
    assert configs[1] == {"cluster": {"worker": ["127.0.0.1:5001", "127.0.0.1:5002"]},
                          "task": {"type": "worker", "index": 1}}
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1"]  # one GPU each


def test_a_second_host_takes_its_ranks_from_the_environment():
    envs, where = rendezvous_env("torch", 2, gpu=True, environ=dict(
        MASTER_ADDR="10.0.0.1", MASTER_PORT="29500", NNODES="2", NODE_RANK="1", CUDA_VISIBLE_DEVICES="4,5"))
    assert [(e["RANK"], e["WORLD_SIZE"], e["CUDA_VISIBLE_DEVICES"]) for e in envs] == [("2", "4", "4"), ("3", "4", "5")]
    assert where == "10.0.0.1:29500"
    cluster = {"worker": ["a:1", "a:2", "b:1", "b:2"]}
    envs, _ = rendezvous_env("tensorflow", 2, gpu=False, environ=dict(
        TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 2}})))
    assert [json.loads(e["TF_CONFIG"])["task"]["index"] for e in envs] == [2, 3]


def test_the_world_is_every_host_s_replicas():
    assert world_size(1, {"MASTER_ADDR": "h", "NNODES": "2"}) == 1  # one process: no rendezvous
    assert world_size(2, {}) == 2
    assert world_size(2, {"MASTER_ADDR": "h", "MASTER_PORT": "1", "NNODES": "3"}) == 6
    assert world_size(2, {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"] * 4}, "task": {"index": 0}})}) == 4
    with pytest.raises(WorkerError, match="one framework per multi-host session"):
        world_size(2, {"MASTER_ADDR": "h", "NNODES": "1",
                       "TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"] * 4}, "task": {"index": 0}})})


def test_an_incomplete_rendezvous_is_one_clear_error():
    with pytest.raises(WorkerError, match="MASTER_PORT is not"):
        rendezvous_env("torch", 2, gpu=False, environ=dict(MASTER_ADDR="10.0.0.1"))
    with pytest.raises(WorkerError, match="shows 1 GPU"):
        rendezvous_env("torch", 2, gpu=True, environ=dict(CUDA_VISIBLE_DEVICES="3"))
    with pytest.raises(WorkerError, match="one entry per replica"):
        rendezvous_env("tensorflow", 2, gpu=False, environ=dict(
            TF_CONFIG=json.dumps({"cluster": {"worker": ["a:1", "a:2"]}, "task": {"type": "worker", "index": 1}})))


def test_replicas_option_is_checked_and_the_smoke_subset_grows_with_it():
    for bad, match in ((0, "--replicas 0: must be an integer >= 1"), (1.5, "--replicas 1.5"),
                       (10**4, "at most 1,?024")):  # the settings table writes its bounds with commas
        with pytest.raises(ConfigError, match=match.replace("(", r"\(")):
            resolve({"device": "cpu", "replicas": bad}, 0)
    assert resolve({"device": "cpu", "replicas": 2}, 0).train_size == 512  # smoke's 256 per replica
    assert resolve({"device": "cpu", "replicas": 2, "train_size": 300}, 0).train_size == 300
    assert resolve({"device": "cpu", "replicas": 2, "profile": "quick"}, 0).train_size == 10000  # smoke's only
    with pytest.raises(ConfigError, match="each replica needs its own GPU and NVML sees 1"):
        resolve({"device": "gpu", "replicas": 2}, 1)
    with pytest.raises(ConfigError, match="--batch-size 32 x --replicas 4 is larger than --train-size 100"):
        resolve({"device": "cpu", "replicas": 4, "train_size": 100}, 0)


def test_jax_says_in_one_line_that_replicas_are_not_supported_yet():
    assert FRAMEWORKS["jax"].replicas_problem(1) is None
    line = FRAMEWORKS["jax"].replicas_problem(2)
    assert line.startswith("jax cases skipped: --replicas 2 is not supported yet") and "\n" not in line
    assert FRAMEWORKS["torch"].replicas_problem(2) is None and FRAMEWORKS["tensorflow"].replicas_problem(2) is None


def test_every_replica_process_is_sampled():
    procs = [subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(%d); time.sleep(30)" % n])
             for n in (1 << 20, 64 << 20)]
    try:
        time.sleep(0.5)
        sampler = PsutilSampler([p.pid for p in procs])
        time.sleep(0.1)
        (sample,) = sampler.sample()
        assert len(sample["replica_mem"]) == 2 and len(sample["replica_busy_cores"]) == 2
        assert sample["proc_mem"] == max(sample["replica_mem"]) and sample["replica_mem"][1] > 60 << 20
    finally:
        for p in procs:
            p.kill()
            p.wait()


# --------------------------------------------------------------------------- two replicas, end to end

@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory):
    """The smoke data for two replicas of 32 (a global batch of 64)."""
    cfg = resolve({"device": "cpu", "replicas": 2, "worker_timeout": 300}, 0)
    folder = tmp_path_factory.mktemp("replicas")
    bundle_dir, _ = prepare_data(cfg, folder, world_size(cfg.replicas))
    return cfg, bundle_dir, folder


# Where the model does not matter: Keras on TensorFlow traces VGG19 (no BatchNorm) in a fifth of
# MobileNetV2's time; torch builds and steps MobileNetV2 fastest.
CHEAPEST = {"torch": "mobilenet_v2", "tensorflow": "vgg19"}


def _group(framework, two_replicas, name, **kw):
    cfg, bundle_dir, folder = two_replicas
    return ReplicaGroup(framework, cfg.as_dict(), bundle_dir, folder / f"{name}.log", cfg.worker_timeout,
                        name=name, **kw)


def _gone(pids):
    return all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)


@pytest.mark.parametrize("framework", [pytest.param("torch", marks=needs("torch")),
                                       pytest.param("tensorflow", marks=needs("tensorflow"))])
def test_two_replicas_train_their_shards_and_agree_after_a_step(two_replicas, framework):
    """Each replica is fed its slice of every global batch (TensorFlow: by tf.distribute's own
    sharding), the replicas start equal, and after a step their weights are identical again
    (gradients averaged by DDP / the strategy's all-reduce), and changed."""
    cfg, bundle_dir, _ = two_replicas
    order = Bundle.read(bundle_dir).order
    labels = Bundle.read(bundle_dir).train.labels
    with _group(framework, two_replicas, f"{framework}-agree") as g:
        assert len(set(g.pids)) == 2 and g.info["distributed"]["world_size"] == 2
        g.request("build", model=CHEAPEST[framework])
        g.request("peek_labels", batches=3)
        for rank, fed in enumerate(g.answers):
            mine = replica_shard(order, rank, 2, cfg.batch_size)[0, :3 * cfg.batch_size]
            assert fed == labels[mine].reshape(3, cfg.batch_size).tolist(), f"replica {rank}"
        g.request("weights_digest")
        before = list(g.answers)
        g.request("train_steps", count=1)
        assert g.answers[0]["images"] == 2 * cfg.batch_size  # the global batch
        g.request("weights_digest")
        assert g.answers[0] == g.answers[1] and before[0] == before[1] and g.answers[0] != before[0]


@pytest.mark.parametrize("framework", [pytest.param("tensorflow", marks=needs("tensorflow"))])
def test_a_replica_killed_mid_fit_fails_its_case_and_ends_the_others(two_replicas, framework):
    """(torch's: tests/test_faults.py, in a whole session.)"""
    g = _group(framework, two_replicas, f"{framework}-kill")
    pids = g.pids
    try:
        g.request("build", model=CHEAPEST[framework])
        threading.Timer(4.0, os.kill, (pids[1], 9)).start()
        with pytest.raises(WorkerError) as e:
            g.request("fit", epochs=200)  # far longer than the 4 s before the kill
    finally:
        g.close()
    message = str(e.value)
    assert message.startswith(f"{framework}-kill: replica 1 of 2 failed during 'fit'"), message[:300]
    assert "killed by SIGKILL" in message and "replica(s) 0 ended with it" in message
    assert "--- last output of the worker" in message  # the replica's log tail
    assert _gone(pids) and not set(pids) & set(_LIVE)


@needs("torch")
def test_a_taken_rendezvous_port_is_retried_on_another(two_replicas, monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))  # bound, never listening: torch's store cannot bind it
    calls = []
    real = replicas_mod.free_ports

    def ports(count, host="127.0.0.1"):
        calls.append(count)
        return [taken.getsockname()[1]] if len(calls) == 1 else real(count, host)

    monkeypatch.setattr(replicas_mod, "free_ports", ports)
    monkeypatch.setattr(replicas_mod, "SETTLE_S", 1.0)
    try:
        with _group("torch", two_replicas, "torch-port") as g:
            assert g.info["port_attempts"] == 2 and str(taken.getsockname()[1]) not in g.rendezvous
    finally:
        taken.close()


@needs("torch")
def test_a_stopped_replica_is_named_when_its_peers_hang_with_it(two_replicas):
    """A replica that stops answering leaves its peers waiting in the all-reduce: every replica
    times out, and the case names the one that was stopped, not its waiting peers."""
    cfg, bundle_dir, folder = two_replicas
    g = ReplicaGroup("torch", cfg.as_dict(), bundle_dir, folder / "torch-stop.log", 60.0, name="torch-stop")
    pids = g.pids
    try:
        g.request("build", model="mobilenet_v2")
        threading.Timer(2.0, os.kill, (pids[1], 19)).start()  # SIGSTOP
        with pytest.raises(WorkerError) as e:  # stopped at 2 s; its epochs take under a second: 6 s is a hang
            g.request("fit", epochs=200, timeout=6.0)
    finally:
        g.close()
    message = str(e.value)
    assert message.startswith("torch-stop: replica 1 of 2 failed during 'fit'"), message[:300]
    assert "hung (it was stopped: SIGSTOP" in message and _gone(pids)
