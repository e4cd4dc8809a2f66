"""Timeline arithmetic (property tests), utilisation summaries, and the two monitor back-ends."""
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_fixtures.telemetry import monitor as mon
from bench_fixtures.telemetry import timeline as tl

EPOCH_EVENTS = ["epoch_start", "first_step_start", "first_step_end", "last_step_end",
                "eval_start", "eval_stop", "epoch_stop"]


@st.composite
def event_sequences(draw):
    """Well-ordered epochs (optionally with eval), then maybe some events dropped or shuffled in time."""
    epochs = draw(st.integers(1, 5))
    with_eval = draw(st.booleans())
    t, events = 0, []
    for k in range(epochs):
        for name in EPOCH_EVENTS:
            if name.startswith("eval") and not with_eval:
                continue
            t += draw(st.integers(0, 10**9))
            events.append({"name": name, "t_ns": t, "epoch": k})
    drop = draw(st.lists(st.integers(0, len(events) - 1), max_size=3, unique=True))
    jitter = draw(st.booleans())
    for i in sorted(drop, reverse=True):
        events.pop(i)
    if jitter and events:
        i = draw(st.integers(0, len(events) - 1))
        events[i] = dict(events[i], t_ns=events[i]["t_ns"] - draw(st.integers(1, 10**10)))
    return epochs, events, bool(drop), jitter


@settings(max_examples=150, deadline=None)
@given(event_sequences())
def test_phases_add_up_never_negative_and_missing_is_reported(seq):
    epochs, events, dropped, jittered = seq
    phases, problems = tl.epoch_phases(events, epochs)
    assert len(phases) == epochs
    times = tl.epoch_times(events, epochs)
    for p, t in zip(phases, times):
        if p is None:
            continue
        assert min(p["steps_s"], p["eval_s"], p["other_s"]) >= 0
        assert p["steps_s"] + p["eval_s"] + p["other_s"] == pytest.approx(p["total_s"], abs=1e-9)
        assert p["total_s"] == pytest.approx(t, abs=1e-9)
    assert (None in phases) == bool(problems)
    if not dropped and not jittered:
        assert problems == [] and None not in phases


@settings(max_examples=150, deadline=None)
@given(event_sequences())
def test_gaps_split_exactly_and_never_negative(seq):
    epochs, events, dropped, jittered = seq
    gaps, problems = tl.inter_epoch_gaps(events, epochs)
    assert len(gaps) == max(epochs - 1, 0)
    for g in gaps:
        if g is None:
            continue
        assert min(g["total_s"], g["eval_s"], g["callbacks_s"], g["unaccounted_s"]) >= 0
        assert g["eval_s"] + g["callbacks_s"] + g["unaccounted_s"] == pytest.approx(g["total_s"], abs=1e-9)
    assert (None in gaps) == bool(problems)
    if not dropped and not jittered:
        assert problems == []


def test_gap_split_on_a_known_sequence():
    ev = lambda name, t, k: {"name": name, "t_ns": int(t * 1e9), "epoch": k}  # noqa: E731
    events = [ev("epoch_start", 0, 0), ev("first_step_start", 0.1, 0), ev("last_step_end", 5, 0),
              ev("eval_start", 5.5, 0), ev("eval_stop", 6.5, 0), ev("epoch_stop", 6.7, 0),
              ev("epoch_start", 7.0, 1), ev("first_step_start", 7.4, 1), ev("last_step_end", 12, 1),
              ev("epoch_stop", 12.1, 1)]
    (gap,), problems = tl.inter_epoch_gaps(events, 2)
    assert problems == []
    assert gap["total_s"] == pytest.approx(2.4)
    assert gap["eval_s"] == pytest.approx(1.0)
    assert gap["callbacks_s"] == pytest.approx(0.2 + 0.4)
    assert gap["unaccounted_s"] == pytest.approx(0.5 + 0.3)
    phases, _ = tl.epoch_phases(events, 2)
    assert phases[0]["steps_s"] == pytest.approx(4.9) and phases[0]["other_s"] == pytest.approx(0.8)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=200), st.integers(1, 10))
def test_util_summary(values, n_windows):
    samples = [{"t_ns": i * 10, "util": v} for i, v in enumerate(values)]
    every = mon.summarize_util(samples, [(0, 10 * len(values))])
    assert every["samples"] == len(values)
    assert every["mean"] == pytest.approx(float(np.mean(values)))
    assert 0 <= every["idle_fraction"] <= 1 and every["p50"] <= every["p95"] + 1e-12
    # disjoint windows partition the samples
    edges = np.linspace(0, 10 * len(values), n_windows + 1).astype(int)
    parts = [mon.summarize_util(samples, [(a, b)])["samples"] for a, b in zip(edges, edges[1:])]
    assert sum(parts) == len(values)
    assert mon.summarize_util(samples, [])["mean"] is None


BUSY = "import time\nend = time.time() + 3\nx = [0] * 50_000_000\nwhile time.time() < end: pass\n"


def test_psutil_monitor_on_a_busy_child():
    child = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        with mon.Monitor(child.pid, "cpu", interval=0.05) as m:
            time.sleep(1.5)
        info = m.info()
        assert info["backend"] == "psutil" and info["samples"] >= 15
        util = [s["util"] for s in m.samples[5:]]
        assert np.mean(util) > 0.3  # one of 2 cores spinning = 0.5
        assert max(s["proc_mem"] for s in m.samples) > 300e6  # the 400 MB list
        ts = [s["t_ns"] for s in m.samples]
        assert ts == sorted(ts)
    finally:
        child.kill()
        child.wait()


def test_monitor_survives_the_worker_exiting():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    m = mon.Monitor(child.pid, "cpu", interval=0.02).start()
    child.wait()
    time.sleep(0.2)
    m.stop()
    assert "worker exited" in m.info()["errors"]


def test_gpu_request_without_nvml_falls_back_to_psutil(monkeypatch):
    """No NVML library here (or no nvidia-ml-py): the GPU monitor degrades to psutil and says why."""
    import builtins
    real_import = builtins.__import__

    def no_pynvml(name, *a, **k):
        if name == "pynvml":
            raise ImportError("no pynvml")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    sampler, note = mon.make_sampler(__import__("os").getpid(), "gpu")
    assert sampler.name == "psutil" and "not installed" in note


def test_nvml_failure_falls_back_with_the_reason(monkeypatch):
    pynvml = pytest.importorskip("pynvml")

    def fail():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    sampler, note = mon.make_sampler(__import__("os").getpid(), "gpu")
    assert sampler.name == "psutil" and note.startswith("fell back to psutil: NVML failed")


def test_nvml_process_not_listed_gives_none_not_a_guess(monkeypatch):
    """Against a fake NVML whose process list lacks the worker (as inside a PID namespace)."""
    pynvml = pytest.importorskip("pynvml")
    calls = {}
    fake = dict(nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: "h",
                nvmlDeviceGetSamples=lambda h, t, ts: (1, []),
                nvmlDeviceGetMemoryInfo=lambda h: type("M", (), {"used": 123})(),
                nvmlDeviceGetComputeRunningProcesses=lambda h: [type("P", (), {"pid": 1, "usedGpuMemory": 9})()],
                nvmlDeviceGetClockInfo=lambda h, c: 1980, nvmlDeviceGetPowerUsage=lambda h: 350_000,
                nvmlDeviceGetTemperature=lambda h, s: 60)
    for name, fn in fake.items():
        monkeypatch.setattr(pynvml, name, fn)
    s = mon.NvmlSampler(pid=__import__("os").getpid())  # alive, but not in the fake list
    (mem,) = s.sample()
    assert mem["proc_mem"] is None and mem["device_mem"] == 123 and mem["power_w"] == 350
    assert s.process_listed is False and calls == {}


def test_nvml_on_a_real_gpu():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as e:
        pytest.skip(f"no NVIDIA GPU here ({e})")
    if not count:
        pytest.skip("NVML sees no GPU")
    with mon.Monitor(__import__("os").getpid(), "gpu", interval=0.05) as m:
        time.sleep(1.0)
    assert m.info()["backend"] == "nvml" and any("device_mem" in s for s in m.samples)


def test_nvml_failing_mid_run_keeps_the_samples_and_says_why(monkeypatch):
    """The driver gives up during a run (GPU lost, NVML unloaded): sampling stops, the samples so far
    stay, the error is reported in `monitor.errors`, and nothing reaches the training run."""
    pynvml = pytest.importorskip("pynvml")
    calls = {"n": 0}

    def memory_info(h):
        calls["n"] += 1
        if calls["n"] > 3:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return type("M", (), {"used": 123})()

    fake = dict(nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: "h",
                nvmlDeviceGetSamples=lambda h, t, ts: (1, []), nvmlDeviceGetMemoryInfo=memory_info,
                nvmlDeviceGetComputeRunningProcesses=lambda h: [])
    for name, fn in fake.items():
        monkeypatch.setattr(pynvml, name, fn)
    m = mon.Monitor(__import__("os").getpid(), "gpu", interval=0.01).start()
    time.sleep(0.3)
    m.stop()
    info = m.info()
    assert info["backend"] == "nvml" and info["samples"] == 3
    assert any("GPU is lost" in e for e in info["errors"]), info["errors"]


# --------------------------------------------------------------------------- trust

def _window(m: mon.Monitor) -> list[tuple[int, int]]:
    return [(m.started_ns, m.stopped_ns + 1)]


def test_a_monitor_whose_sampling_fails_says_so_and_leaves_a_measured_hole(monkeypatch):
    """The sampler starts failing after 3 samples (as psutil does on AccessDenied): the samples so far
    stay, and the figures are judged untrustworthy instead of passing as one sample's 98.6%."""
    real, calls = mon.PsutilSampler.sample, {"n": 0}

    def failing(self):
        calls["n"] += 1
        if calls["n"] > 3:
            raise PermissionError("access denied")
        return real(self)

    monkeypatch.setattr(mon.PsutilSampler, "sample", failing)
    child = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        m = mon.Monitor(child.pid, "cpu", interval=0.01).start()
        time.sleep(2.5)
        m.stop()
    finally:
        child.kill()
        child.wait()
    assert m.info()["samples"] == 3 and m.longest_gap_s() > 2.0
    problems, _ = mon.judge(m, _window(m), _window(m))
    assert problems[0] == "monitor: PermissionError: access denied (after 3 samples)", problems
    assert any(p.startswith("monitor: no sample for 2.") for p in problems), problems


def test_an_idle_cpu_worker_is_a_problem_a_busy_one_is_not():
    """Real processes: one sleeping, one spinning a core. The psutil judgement counts cores, not a share
    of the machine, so a one-core worker on a 64-core host is not 'idle'."""
    results = {}
    for name, code in (("idle", "import time; time.sleep(3)"), ("busy", BUSY)):
        child = subprocess.Popen([sys.executable, "-c", code])
        try:
            with mon.Monitor(child.pid, "cpu", interval=0.02) as m:
                time.sleep(1.5)
        finally:
            child.kill()
            child.wait()
        results[name] = mon.judge(m, _window(m), _window(m))
    assert results["busy"] == ([], []), results["busy"]
    (problem,), flags = results["idle"]
    assert problem.startswith("the steps used under 5% of a core in ") and "not computing" in problem
    assert flags == []


def test_an_idle_gpu_is_a_flag_not_a_failure_and_the_monitor_reports_its_own_cost():
    """On a GPU, steps that leave it idle are a finding (the host is the bottleneck), not broken figures."""
    m = mon.Monitor(0, "gpu", interval=0.05)
    m.sampler = type("Nvml", (), {"name": "nvml"})()
    m.started_ns, m.stopped_ns = 0, 10**9
    m.polls = list(range(0, 10**9, 5 * 10**7))
    m.samples = [dict(t_ns=t, util=0.01 if t < 8 * 10**8 else 0.9) for t in m.polls]
    m.busy_s = 0.2  # 20% of the second: a monitor competing with what it measures
    problems, flags = mon.judge(m, [(0, 10**9)], [(0, 10**9)])
    assert problems == []
    assert flags[0].startswith("the GPU was idle (utilisation < 5%) in 80% of the steps' samples")
    assert flags[1].startswith("the monitor was busy 20% of the time at --monitor-interval 0.05")


def test_nvml_buffered_samples_land_on_the_timeline_clock_once_each(monkeypatch):
    """The driver's buffered utilisation samples carry wall-clock microseconds; they are moved onto
    the monotonic clock the worker's timeline uses, and a sample is never taken twice."""
    pynvml = pytest.importorskip("pynvml")
    wall_us = time.time_ns() // 1000
    value = lambda v: type("V", (), {"uiVal": v})()  # noqa: E731
    buffered = [type("S", (), {"timeStamp": wall_us + 100_000 * k, "sampleValue": value(50 + k)})() for k in (1, 2, 3)]
    fake = dict(nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: "h",
                nvmlDeviceGetSamples=lambda h, kind, since: (1, [s for s in buffered if s.timeStamp > since]),
                nvmlDeviceGetMemoryInfo=lambda h: type("M", (), {"used": 1})(),
                nvmlDeviceGetComputeRunningProcesses=lambda h: [])
    for name, fn in fake.items():
        monkeypatch.setattr(pynvml, name, fn)
    s = mon.NvmlSampler(pid=__import__("os").getpid())
    assert s.buffered
    util = [x for x in s.sample() if "util" in x]
    offset = time.monotonic_ns() - time.time_ns()
    assert [u["util"] for u in util] == [0.51, 0.52, 0.53]
    for k, u in zip((1, 2, 3), util):
        assert abs(u["t_ns"] - ((wall_us + 100_000 * k) * 1000 + offset)) < 5_000_000  # within 5 ms
    assert [x for x in s.sample() if "util" in x] == []  # already taken
