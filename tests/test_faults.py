"""Faults: a diverging run is caught at the step that diverged; an interrupted session leaves
no worker and no partial result behind."""
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from bench_fixtures.config import resolve
from bench_fixtures.runner.experiment import Experiment, telemetry_problems
from bench_fixtures.runner.worker import WorkerError
from tests.helpers import tiny_bundle


@pytest.mark.parametrize("framework", [pytest.param("torch", marks=pytest.mark.torch),
                                       pytest.param("tensorflow", marks=pytest.mark.tensorflow),
                                       pytest.param("jax", marks=pytest.mark.jax)])
def test_nan_loss_is_reported_with_epoch_and_step(framework, tmp_path):
    cfg = resolve(dict(profile="smoke", device="cpu", lr=1e30, batch_size=16, epochs=2), gpu_count=0)
    bundle = tiny_bundle(tmp_path / "bundle", n_train=64, batch=16, epochs=2)
    # the cheapest model of each: Keras builds and traces VGG19 faster than MobileNetV2; torch runs MobileNetV2 faster
    exp = Experiment(framework, "mobilenet_v2" if framework == "torch" else "vgg19", cfg, bundle, tmp_path)
    try:
        exp.load()
        exp.init()  # no evaluation first: it would only add TensorFlow's tracing of the test step
        with pytest.raises(WorkerError) as e:
            exp.fine_tune()
    finally:
        exp.close()
    msg = str(e.value)
    assert f"{framework}: the loss became NaN/inf at epoch 0, step " in msg and "lower --lr" in msg
    assert "Traceback" not in msg  # a finding, not a crash
    step = int(msg.split("step ")[1].split(" ")[0])
    assert 0 <= step < 4


@pytest.mark.parametrize("framework", [pytest.param("torch", marks=pytest.mark.torch),
                                       pytest.param("tensorflow", marks=pytest.mark.tensorflow),
                                       pytest.param("jax", marks=pytest.mark.jax)])
def test_out_of_memory_fails_the_case_with_the_fix(framework, tmp_path):
    """A real allocation failure: the worker's memory is capped (RLIMIT_DATA) below what 16
    images at 512 px need; the framework's own OOM error becomes one line naming the sizes."""
    cfg = resolve(dict(profile="smoke", device="cpu", batch_size=16, epochs=1, image_size=512,
                       worker_memory_limit=1024), gpu_count=0)
    bundle = tiny_bundle(tmp_path / "bundle", n_train=32, n_test=16, batch=16, epochs=1)
    model = "mobilenet_v2" if framework == "torch" else "vgg19"  # each framework's cheapest to set up
    exp = Experiment(framework, model, cfg, bundle, tmp_path)
    try:
        exp.load()
        with pytest.raises(WorkerError) as e:
            exp.start_round()
        assert exp.worker.proc.poll() is not None  # the worker is gone, the next case gets a fresh one
    finally:
        exp.close()
    msg = str(e.value)
    # Raised by the framework, or (native code that crashes instead of raising: TensorFlow has died
    # with SIGSEGV here on some machines) a native crash under the cap: the same line either way.
    assert msg.startswith(f"{framework}-{model}: {framework}: out of host memory (--worker-memory-limit "
                          f"1024 MiB) during 'evaluate' at --batch-size 16 --image-size 512: "), msg
    assert msg.endswith("lower --batch-size or --image-size, or raise --worker-memory-limit")
    assert "\n" not in msg and "Traceback" not in msg


ROOT = Path(__file__).resolve().parents[1]


def _workers(pid: int) -> list[psutil.Process]:
    """The worker processes under PID now (none once PID itself is gone)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if "bench_fixtures.runner.worker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def _worker_of(pid: int, timeout: float = 120, exclude: set[int] = frozenset()) -> psutil.Process:
    end = time.monotonic() + timeout
    while True:
        for worker in _workers(pid):
            if worker.pid not in exclude:
                return worker
        if time.monotonic() > end:
            raise AssertionError("no worker process appeared")
        time.sleep(0.05)


@pytest.mark.torch
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_interrupted_session_kills_workers_and_saves_nothing(tmp_path, sig):
    """SIGTERM (what CI runners send) and SIGHUP (a closed terminal or SSH session) take the same path
    as Ctrl-C: pytest's KeyboardInterrupt; the workers and the work folder go with the session."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    store = tmp_path / "store" / "Linux-CPython-3.11-64bit"
    store.mkdir(parents=True)
    history = store / "0001_earlier.json"
    history.write_text('{"benchmarks": [], "earlier": true}')
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    out, telemetry = tmp_path / "out.json", tmp_path / "telemetry"
    # SIGTERM: two fine-tune rounds, the first a finished measurement that must not be saved either
    # (SIGHUP takes the same path from the signal on: one round is enough to show it).
    rounds = 2 if sig == signal.SIGTERM else 1
    proc, lines = _session(["-k", "test_finetune and torch-mobilenet_v2", f"--finetune-rounds={rounds}", "--epochs=2",
                            f"--benchmark-json={out}", "--benchmark-autosave",
                            f"--benchmark-storage=file://{tmp_path / 'store'}", f"--telemetry-dir={telemetry}"],
                           env={"TMPDIR": str(tmp)})
    seen: list[str] = []
    try:
        for _ in range(rounds):  # the last round, inside its fine-tune
            _wait_for(lines, "torch-mobilenet_v2: epoch 1/2", seen)
        worker = _worker_of(proc.pid)
        # Held inside its fine-tune, so the session cannot end before the signal arrives: the last
        # epoch takes under a second here, and a session once finished first.
        worker.suspend()
        proc.send_signal(sig)
        output = _drain(proc, lines, seen, timeout=120)
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
    assert list(tmp.glob("bench-*")) == []


def _session(args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, "queue.Queue[str]"]:
    """A real nested `pytest` of the benchmark cases; its output lines arrive on a queue as printed.
    It starts with SIGHUP at its default, as a session in a terminal does, whatever this suite was
    started under (`nohup` leaves it ignored, and the session then rightly keeps running)."""
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "tests/benchmarks", "-p", "no:cacheprovider",
                             "--benchmark-only", "-rf", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    return proc, lines


def _wait_for(lines: "queue.Queue[str]", text: str, seen: list[str], timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            seen.append(lines.get(timeout=max(end - time.monotonic(), 0.01)))
        except queue.Empty:
            break
        if text in seen[-1]:
            return
    raise AssertionError(f"{text!r} never appeared:\n{''.join(seen)[-3000:]}")


def _drain(proc: subprocess.Popen, lines: "queue.Queue[str]", seen: list[str], timeout: float = 300) -> str:
    proc.wait(timeout=timeout)
    time.sleep(0.2)
    while not lines.empty():
        seen.append(lines.get())
    return "".join(seen)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.torch
def test_worker_faults_fail_only_their_own_test(tmp_path):
    """Real signals to real workers in a real session: SIGKILL mid-epoch fails the fine-tune, a hung
    worker (SIGSTOP) fails the next test at --worker-timeout; the test after that gets a fresh
    worker and passes; no worker outlives the session (checked by PID)."""
    out = tmp_path / "out.json"
    proc, lines = _session(["-k", "torch-mobilenet_v2", "--epochs=3", "--worker-timeout=10",
                            f"--benchmark-json={out}", f"--telemetry-dir={tmp_path / 'telemetry'}"])
    seen: list[str] = []
    watch = _WorkerWatch(proc.pid)
    try:
        _wait_for(lines, "torch-mobilenet_v2: epoch 1/3", seen)  # epochs 2 and 3 still to run
        first = _worker_of(proc.pid)
        time.sleep(0.2)
        os.kill(first.pid, signal.SIGKILL)
        second = _worker_of(proc.pid, exclude={first.pid})  # test_train_step's fresh worker
        os.kill(second.pid, signal.SIGSTOP)
        output = _drain(proc, lines, seen)
    finally:
        proc.kill()
        watch.stop()
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, output[-3000:]
    assert "FAILED tests/benchmarks/test_cases.py::test_finetune[torch-mobilenet_v2]" in output, output[-3000:]
    assert "FAILED tests/benchmarks/test_cases.py::test_train_step[torch-mobilenet_v2]" in output
    assert "WorkerError: torch-mobilenet_v2 worker died (killed by SIGKILL) during 'fit'; SIGKILL from outside" \
        in output, output[-3000:]
    assert "WorkerError: torch-mobilenet_v2 worker hung (it was stopped: SIGSTOP, Ctrl-Z or a debugger): no answer " \
           "to 'hello' within 10 s (--worker-timeout); killed it" in output
    assert "bench_fixtures/runner/worker.py" not in output  # the worker's account, not the harness's internals
    assert "2 failed, 1 passed" in output, output[-3000:]
    assert [b["name"] for b in json.loads(out.read_text())["benchmarks"]] == \
        ["test_harness_overhead[torch-mobilenet_v2]"]
    assert len(watch.pids) == 3, watch.pids  # one worker per test: each fault cost only its own
    assert [pid for pid in watch.pids if not _gone(pid)] == []


class _WorkerWatch(threading.Thread):
    """Every worker PID a session starts, seen by polling its process tree."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.pids, self.done = pid, set(), threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.pids.update(w.pid for w in _workers(self.pid))

    def stop(self) -> None:
        self.done.set()
        self.join()


@pytest.mark.torch
@pytest.mark.tensorflow
def test_gpu_the_framework_cannot_use_fails_loudly_per_framework(tmp_path):
    """--device gpu where a framework sees no usable GPU (a CPU-only build, a missing CUDA library;
    here: no GPU at all): each framework's case fails with its own reason, never silently on the
    CPU, and the session goes on to the next case."""
    proc, lines = _session(["-k", "test_finetune and mobilenet_v2", "--device=gpu",
                            f"--benchmark-storage=file://{tmp_path / 'store'}"])
    try:
        output = _drain(proc, lines, [], timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, output[-3000:]
    assert re.search(r"WorkerError: torch-mobilenet_v2: --device gpu, but torch \S+ \(CUDA [^)]*\) sees no CUDA "
                     r"device", output), output[-3000:]
    assert re.search(r"WorkerError: tensorflow-mobilenet_v2: --device gpu, but TensorFlow \S+ \(built for CUDA "
                     r"[^)]*\) sees no GPU; install tensorflow\[and-cuda\]", output), output[-3000:]
    assert re.search(r"WorkerError: jax-mobilenet_v2: --device gpu, but JAX \S+ \(jaxlib \S+\) sees no GPU, only cpu; "
                     r"install jax\[cuda12\]", output), output[-3000:]
    assert "3 failed" in output


@pytest.mark.torch
def test_a_killed_session_takes_its_worker_and_the_next_session_removes_its_folder(tmp_path):
    """`kill -9` of pytest mid-fine-tune runs none of its cleanup: the kernel kills the worker with it
    (PR_SET_PDEATHSIG), and the next session removes the work folder it left (its owner lock is free)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp / "bench-not-ours").mkdir()  # no owner lock inside: some other program's, left alone
    env = {"TMPDIR": str(tmp)}
    proc, lines = _session(["-k", "test_finetune and torch-mobilenet_v2", "--epochs=3",
                            f"--benchmark-storage=file://{tmp_path / 'store'}",
                            f"--telemetry-dir={tmp_path / 'telemetry'}"], env=env)
    seen: list[str] = []
    try:
        _wait_for(lines, "torch-mobilenet_v2: epoch 1/3", seen)
        worker = _worker_of(proc.pid)
        worker.suspend()  # held inside its fine-tune: the session cannot end before it is killed
        left = [p for p in tmp.glob("bench-*") if (p / ".owner.lock").exists()]
        proc.kill()
        proc.wait(timeout=30)
        end = time.monotonic() + 10
        while not _gone(worker.pid) and time.monotonic() < end:
            time.sleep(0.05)
        assert _gone(worker.pid), f"worker {worker.pid} outlived its killed session: {worker.status()}"
    finally:
        proc.kill()
    assert len(left) == 1 and left[0].is_dir()  # what SIGKILL leaves: nothing of the session's ran
    after = subprocess.run([sys.executable, "-m", "pytest", "tests/benchmarks", "--collect-only", "-q",
                            "-p", "no:cacheprovider", f"--benchmark-storage=file://{tmp_path / 'store'}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert after.returncode == 0, after.stdout[-2000:] + after.stderr[-2000:]
    assert sorted(p.name for p in tmp.glob("bench-*")) == ["bench-not-ours"]  # its own went at its end


@pytest.mark.torch
def test_a_worker_stopped_mid_fine_tune_fails_its_telemetry(tmp_path):
    """SIGSTOP for 1.5 s once epoch 1 of 3 has ended, then SIGCONT: the fine-tune completes, but its
    time includes the pause, and the case says so instead of reporting valid figures."""
    cfg = resolve(dict(profile="smoke", device="cpu", epochs=3, batch_size=16), gpu_count=0)
    bundle = tiny_bundle(tmp_path / "bundle", n_train=64, batch=16, epochs=3)
    exp = Experiment("torch", "mobilenet_v2", cfg, bundle, tmp_path)
    paused = threading.Event()

    def pause_after_epoch_1(name, event):
        if event["name"] == "epoch_stop" and not paused.is_set():
            paused.set()
            os.kill(exp.worker.pid, signal.SIGSTOP)
            threading.Timer(1.5, os.kill, (exp.worker.pid, signal.SIGCONT)).start()
    try:
        exp.load()
        exp.worker.on_progress = pause_after_epoch_1
        exp.start_round()
        exp.fine_tune()
        exp.predict_after()
        info = exp.finetune_info()
    finally:
        exp.close()
    assert paused.is_set()
    problems = telemetry_problems(info, "finetune")
    assert any(p.startswith("the worker was stopped (SIGSTOP, Ctrl-Z or a debugger) in ") for p in problems), problems


def _replica(pid: int, framework_env: str, rank: str, timeout: float = 120) -> psutil.Process:
    """The session's worker that is replica RANK (by the launcher's variable FRAMEWORK_ENV)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for worker in _workers(pid):
            try:
                env = worker.environ()
            except psutil.Error:
                continue
            if framework_env == "RANK" and env.get("RANK") == rank:
                return worker
        time.sleep(0.05)
    raise AssertionError(f"no replica {rank} appeared")


@pytest.mark.torch
@pytest.mark.tensorflow
def test_a_killed_replica_fails_only_its_case_in_a_replicas_session(tmp_path):
    """`--replicas 2` through the plugin: SIGKILL to torch's replica 1 mid-fit fails the torch case
    naming that replica; TensorFlow's case then runs its two replicas and passes, with both
    processes sampled; no replica outlives the session; JAX's cases say in one line why they skip."""
    out = tmp_path / "out.json"
    proc, lines = _session(["-k", "test_finetune and mobilenet_v2", "--replicas=2", "--epochs=3", "-rfs",
                            f"--benchmark-json={out}", f"--telemetry-dir={tmp_path / 'telemetry'}"])
    seen: list[str] = []
    watch = _WorkerWatch(proc.pid)
    try:
        _wait_for(lines, "torch-mobilenet_v2 replica 0: epoch 1/3", seen)
        os.kill(_replica(proc.pid, "RANK", "1").pid, signal.SIGKILL)
        output = _drain(proc, lines, seen)
    finally:
        proc.kill()
        watch.stop()
    assert "FAILED tests/benchmarks/test_cases.py::test_finetune[torch-mobilenet_v2]" in output, output[-3000:]
    assert "WorkerError: torch-mobilenet_v2: replica 1 of 2 failed during 'fit'" in output, output[-3000:]
    assert "jax cases skipped: --replicas 2 is not supported yet" in output
    assert "1 failed, 1 passed, 1 skipped" in output, output[-3000:]
    (b,) = json.loads(out.read_text())["benchmarks"]
    e = b["extra_info"]
    assert (b["name"], e["replicas"], e["global_batch_size"]) == ("test_finetune[tensorflow-mobilenet_v2]", 2, 64)
    assert e["monitor"]["processes"] == 2 and len(e["memory"]["replica_process_peaks"]) == 2
    assert e["distributed"]["world_size"] == 2 and e["distributed"]["setup_s"] > 0
    assert len(watch.pids) == 4, watch.pids  # two replicas per case
    assert [pid for pid in watch.pids if not _gone(pid)] == []
