"""A case measured while something else used the machine says so: the load that is not ours is
recorded per case and epoch, and above the threshold the case is *disturbed* (the findings name it
first, the gate refuses it, the report marks it)."""
import subprocess
import sys
import time

import numpy as np
import pytest

from bench_fixtures.config import resolve
from bench_fixtures.data import prepare_data
from bench_fixtures.runner.experiment import Experiment
from bench_fixtures.telemetry import monitor as mon

HOG = "while True: pass\n"


def _host(t_s: float, share: float) -> dict:
    return dict(t_ns=int(t_s * 1e9), other_cores=2 * share, other_share=share, steal_share=0.0, run_queue=2, cores=2)


def test_the_threshold_judges_the_timed_region_and_each_long_epoch():
    """Constructed samples: a load that came for one of four 3-second epochs shows in that epoch even
    where the region's mean stays under the threshold; short epochs are not judged alone."""
    m = mon.Monitor(0, "cpu")
    m.host_samples = [_host(t / 10, 0.5 if 30 <= t < 60 else 0.01) for t in range(120)]
    epochs = [(int(k * 3e9), int((k + 1) * 3e9)) for k in range(4)]
    d = mon.disturbance(m, [(0, int(12e9))], epochs)
    assert d["cpu"]["other_share_mean"] == pytest.approx(0.1325)
    assert d["disturbed"] and [e["disturbed"] for e in d["epochs"]] == [False, True, False, False]
    m.host_samples = [_host(t / 10, 0.5 if 30 <= t < 32 else 0.01) for t in range(120)]  # 0.2 s of it
    assert not mon.disturbance(m, [(0, int(12e9))], epochs)["disturbed"]
    short = [(int(k * 1e9), int((k + 1) * 1e9)) for k in range(12)]
    m.host_samples = [_host(t / 10, 0.5 if 30 <= t < 40 else 0.01) for t in range(120)]
    d = mon.disturbance(m, [(0, int(12e9))], short)
    assert not d["disturbed"] and not any(e["judged"] for e in d["epochs"])


def test_other_gpu_processes_disturb_and_old_monitors_are_not_measured():
    m = mon.Monitor(0, "gpu")
    m.samples = [dict(t_ns=t, device_mem=1, other_procs=1 if t == 5 else 0, other_proc_mem=2**30) for t in range(10)]
    d = mon.disturbance(m, [(0, 10)], [])
    assert d["disturbed"] and d["gpu"]["other_processes_max"] == 1
    assert d["reasons"] == ["1 other process computed on the GPU while it was timed (up to 1,024 MiB)"]
    assert d["cpu"] is None and d["measured"] is False
    d = mon.disturbance(None, [(0, 10)], [None])
    assert not d["disturbed"] and not d["measured"] and d["epochs"][0]["judged"] is False


def test_a_hog_is_other_load_and_the_monitored_worker_is_not():
    """Real processes: the monitored one spins a core (ours), a second one spins another (not ours,
    though this process started it: only the harness itself counts as ours, not its children)."""
    spin = [sys.executable, "-c", "import time\nend = time.time() + 6\nwhile time.time() < end: pass\n"]
    worker = subprocess.Popen(spin)
    try:
        hog = subprocess.Popen(spin)
        try:
            with mon.Monitor(worker.pid, "cpu", interval=0.05) as m:
                time.sleep(2.5)  # the window sampled, not a synchronisation: over EPOCH_MIN_S, judged
        finally:
            hog.kill()
            hog.wait()
        busy = mon.disturbance(m, [(m.started_ns, m.stopped_ns + 1)], [])
    finally:
        worker.kill()
        worker.wait()
    assert busy["disturbed"] and busy["cpu"]["other_share_mean"] > 0.3, busy  # one of 2 cores: 0.5
    assert busy["reasons"][0].startswith("other processes used ")


def test_a_hog_started_in_the_middle_of_a_real_case_marks_it_disturbed(tmp_path):
    """torch-mobilenet_v2, smoke: a quiet round, then a round with a core-spinning process per core
    started when the first epoch ends. The second is disturbed, the first is not."""
    pytest.importorskip("torch")
    cfg = resolve({"device": "cpu", "epochs": 3, "data_dir": str(tmp_path / "data")}, gpu_count=0)
    bundle, meta = prepare_data(cfg, tmp_path, world=1)
    exp = Experiment("torch", "mobilenet_v2", cfg, bundle, tmp_path, meta)
    hogs: list[subprocess.Popen] = []

    def start_hogs(name, event):
        if not hogs and event.get("epoch") == 0:
            hogs.extend(subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(2))

    try:
        exp.load()
        infos = []
        for hog in (False, True):
            exp.worker.on_progress = start_hogs if hog else None
            exp.start_round()
            exp.fine_tune()
            for h in hogs:
                h.kill()
                h.wait()
            exp.predict_after()
            infos.append(exp.finetune_info())
    finally:
        exp.close()
    quiet, busy = (i["disturbance"] for i in infos)
    assert hogs, "the first epoch's progress never came"
    assert busy["disturbed"], busy
    assert busy["reasons"][0].startswith("other processes used "), busy["reasons"]
    assert not quiet["disturbed"], quiet
    assert len(busy["epochs"]) == 3 and quiet["cpu"]["samples"] > 10
    assert np.isfinite(quiet["cpu"]["other_share_mean"])
