"""Utilisation and memory of a worker, sampled from the parent process by the worker's PID.

Nothing runs inside the training process: a thread here polls NVML (GPU) or psutil (CPU) and
stamps every sample with `time.monotonic_ns()`, the clock the worker's timeline uses.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import psutil

from . import energy

IDLE_BELOW = 0.05  # utilisation under 5% counts as idle
STOPPED = (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)  # SIGSTOP, Ctrl-Z, a debugger


def _stopped(proc: psutil.Process) -> bool:
    """A worker that is not running at all (stopped by a signal): its timed steps include the pause."""
    try:
        return proc.status() in STOPPED
    except psutil.Error:
        return False


class PsutilSampler:
    """The worker's CPU use as a fraction of all cores, and its resident memory. With several
    processes (a case's replicas), one sample for all: their cores added up, the largest one's
    memory (per-replica memory), and each one's in `replica_busy_cores` / `replica_mem`."""
    name = "psutil"

    def __init__(self, pid: int | list[int]) -> None:
        self.procs = [psutil.Process(p) for p in ([pid] if isinstance(pid, int) else pid)]
        self.proc = self.procs[0]
        self.cores = psutil.cpu_count() or 1
        for proc in self.procs:
            proc.cpu_percent(None)  # starts the first interval
        self.last_ns = time.monotonic_ns()

    def sample(self) -> list[dict[str, Any]]:
        busy, rss, stopped = [], [], False
        for proc in self.procs:
            with proc.oneshot():
                busy.append(proc.cpu_percent(None) / 100.0)
                rss.append(proc.memory_info().rss)
                stopped = stopped or _stopped(proc)
        now = time.monotonic_ns()
        mid, self.last_ns = (self.last_ns + now) // 2, now  # cpu_percent covers the interval since the last call
        out = dict(t_ns=mid, util=min(sum(busy) / self.cores, 1.0), busy_cores=sum(busy), proc_mem=max(rss),
                   stopped=stopped)
        if len(self.procs) > 1:
            out.update(replica_busy_cores=busy, replica_mem=rss)
        return [out]

    def close(self) -> None:
        pass


def _run_queue() -> int | None:
    """Tasks runnable right now, the machine's run queue (Linux's /proc/stat `procs_running`; ours included)."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"procs_running "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class HostLoad:
    """The CPU the machine spent outside our processes: psutil's system-wide busy time less the CPU
    time of the worker's process tree and of this (the harness's) process alone, over each interval. It is
    what a busy machine takes from a benchmark; `steal` is what a virtual machine's host took.
    The tree is re-listed every TREE_EVERY_S, since listing every process costs more than a sample."""
    TREE_EVERY_S = 1.0

    def __init__(self, pids: list[int]) -> None:
        self.roots = [psutil.Process(p) for p in pids]
        self.harness = psutil.Process()  # alone: its other children (a hog, another session) are not ours
        self.cores = psutil.cpu_count() or 1
        self.tree: dict[int, psutil.Process] = {}
        self.listed_ns = 0
        self.last = self._read()

    def _list_tree(self, now_ns: int) -> None:
        tree = {p.pid: p for p in (*self.roots, self.harness)}
        for root in self.roots:
            try:
                tree.update({c.pid: self.tree.get(c.pid, c) for c in root.children(recursive=True)})
            except psutil.Error:
                pass
        self.tree, self.listed_ns = tree, now_ns

    def _read(self) -> tuple[int, float, float, float, dict[int, float]]:
        now = time.monotonic_ns()
        if now - self.listed_ns > self.TREE_EVERY_S * 1e9:
            self._list_tree(now)
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        ours = {}
        for pid, proc in self.tree.items():
            try:
                c = proc.cpu_times()
                ours[pid] = c.user + c.system
            except psutil.Error:  # ended: its time leaves the sums on both sides
                pass
        return now, time.time(), busy, getattr(t, "steal", 0.0), ours

    def sample(self) -> dict[str, Any]:
        t0, wall0, busy0, steal0, ours0 = self.last
        self.last = t1, _, busy1, steal1, ours1 = self._read()
        seconds = max((t1 - t0) / 1e9, 1e-9)
        # Ours: what each process of the tree used since the last read; one new since then, all of its time.
        ours = sum(v - ours0[p] if p in ours0 else v * self._new(p, wall0) for p, v in ours1.items())
        other = max(busy1 - busy0 - ours, 0.0) / seconds
        return dict(t_ns=(t0 + t1) // 2, other_cores=other, other_share=min(other / self.cores, 1.0),
                    steal_share=min(max(steal1 - steal0, 0.0) / seconds / self.cores, 1.0),
                    run_queue=_run_queue(), cores=self.cores)

    def _new(self, pid: int, since_wall: float) -> int:
        try:
            return int(self.tree[pid].create_time() >= since_wall)
        except (psutil.Error, KeyError):
            return 0


class ReplicaSampler:
    """One NVML sampler per replica (each on its own GPU); every sample says whose it is."""

    def __init__(self, samplers: list[Any]) -> None:
        self.samplers = samplers
        self.name = samplers[0].name
        self.buffered = samplers[0].buffered
        self.proc = samplers[0].proc

    @property
    def process_listed(self) -> bool | None:
        return self.samplers[0].process_listed

    def sample(self) -> list[dict[str, Any]]:
        return [dict(s, replica=r) for r, sampler in enumerate(self.samplers) for s in sampler.sample()]

    def close(self) -> None:
        for sampler in self.samplers:
            sampler.close()


class NvmlSampler:
    """Device utilisation from the driver's own buffered samples (with their timestamps) where the
    GPU supports it, else polled; the worker's GPU memory; SM clock, power and temperature."""
    name = "nvml"

    def __init__(self, pid: int, index: int = 0) -> None:
        import pynvml  # ImportError when nvidia-ml-py is missing: the caller falls back
        self.nvml, self.pid, self.proc = pynvml, pid, psutil.Process(pid)
        pynvml.nvmlInit()
        try:
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except pynvml.NVMLError:
            pynvml.nvmlShutdown()
            raise
        self.offset_ns = time.monotonic_ns() - time.time_ns()  # NVML stamps wall-clock microseconds
        self.last_us = time.time_ns() // 1000
        self.buffered = True
        try:
            pynvml.nvmlDeviceGetSamples(self.handle, pynvml.NVML_GPU_UTILIZATION_SAMPLES, self.last_us)
        except pynvml.NVMLError as e:
            self.buffered = isinstance(e, pynvml.NVMLError_NotFound)  # NotFound = no new samples yet
        self.process_listed: bool | None = None

    def _util(self) -> list[dict[str, Any]]:
        nv = self.nvml
        if not self.buffered:
            return [dict(t_ns=time.monotonic_ns(), util=nv.nvmlDeviceGetUtilizationRates(self.handle).gpu / 100)]
        try:
            _, samples = nv.nvmlDeviceGetSamples(self.handle, nv.NVML_GPU_UTILIZATION_SAMPLES, self.last_us)
        except nv.NVMLError_NotFound:
            return []
        out = []
        for s in samples:
            if s.timeStamp > self.last_us:
                out.append(dict(t_ns=s.timeStamp * 1000 + self.offset_ns, util=s.sampleValue.uiVal / 100))
        if samples:
            self.last_us = max(self.last_us, max(s.timeStamp for s in samples))
        return out

    def sample(self) -> list[dict[str, Any]]:
        nv = self.nvml
        out = self._util()
        mem: dict[str, Any] = dict(t_ns=time.monotonic_ns(), device_mem=nv.nvmlDeviceGetMemoryInfo(self.handle).used,
                                   stopped=_stopped(self.proc))
        procs = nv.nvmlDeviceGetComputeRunningProcesses(self.handle)
        mine = [p.usedGpuMemory for p in procs if p.pid == self.pid and p.usedGpuMemory is not None]
        self.process_listed = bool(mine) or bool(self.process_listed)
        mem["proc_mem"] = sum(mine) if mine else None  # None: not listed (e.g. inside a container's PID namespace)
        # Other processes computing on this GPU: they share its SMs and memory with the worker. Where the
        # worker is not listed (another PID namespace), one listed process is taken to be it.
        others = [p for p in procs if p.pid != self.pid][(0 if mine or not procs else 1):]
        mem["other_procs"] = len(others)
        mem["other_proc_mem"] = sum(p.usedGpuMemory or 0 for p in others)
        for key, read in (("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(self.handle, nv.NVML_CLOCK_SM)),
                          ("power_w", lambda: nv.nvmlDeviceGetPowerUsage(self.handle) / 1000),
                          ("temp_c", lambda: nv.nvmlDeviceGetTemperature(self.handle, nv.NVML_TEMPERATURE_GPU))):
            try:
                mem[key] = read()
            except nv.NVMLError:
                pass
        return out + [mem]

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass


def make_sampler(pid: int | list[int], device: str, gpu_index: int | list[int] = 0) -> tuple[Any, str]:
    """NVML for a GPU run, psutil otherwise or when NVML fails; the reason for a fallback is kept.
    A list of PIDs (a case's replicas) goes with a list of GPU indices, one each."""
    if device == "gpu":
        try:
            if isinstance(pid, list):
                indices = gpu_index if isinstance(gpu_index, list) else list(range(len(pid)))
                return ReplicaSampler([NvmlSampler(p, i) for p, i in zip(pid, indices)]), ""
            return NvmlSampler(pid, gpu_index), ""
        except ImportError:
            reason = "nvidia-ml-py (pynvml) not installed"
        except Exception as e:  # NVMLError: library missing, no such device, driver mismatch
            reason = f"NVML failed ({e})"
        return PsutilSampler(pid), f"fell back to psutil: {reason}"
    return PsutilSampler(pid), ""


class Monitor:
    """Samples a worker every `interval` seconds on a thread of this (the parent) process."""

    def __init__(self, pid: int | list[int], device: str, interval: float = 0.05,
                 gpu_index: int | list[int] = 0) -> None:
        self.pid, self.device, self.interval, self.gpu_index = pid, device, interval, gpu_index
        self.samples: list[dict[str, Any]] = []
        self.host_samples: list[dict[str, Any]] = []  # the machine's load that is not ours (HostLoad)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sampler: Any = None
        self.host: HostLoad | None = None  # the machine's load that is not ours
        self.meter: Any = None  # the devices' energy counters (energy.py); None: not measured, see energy_info
        self.energy_info: dict[str, Any] = energy.meter_info(None, "not measured: the monitor was not started")
        self.energy_reads: list[dict[str, Any]] = []
        self.note = ""
        self.polls: list[int] = []  # monotonic ns of every sampling pass that succeeded
        self.busy_s = 0.0           # time this thread spent sampling: its own cost
        self.started_ns = self.stopped_ns = 0

    def start(self) -> "Monitor":
        self.sampler, self.note = make_sampler(self.pid, self.device, self.gpu_index)
        self.host = HostLoad(self.pid if isinstance(self.pid, list) else [self.pid])
        indices = self.gpu_index if isinstance(self.gpu_index, list) else \
            [self.gpu_index] if not isinstance(self.pid, list) else list(range(len(self.pid)))
        try:
            self.meter, reason = energy.make_meter(self.device, indices)
        except Exception as e:  # noqa: BLE001 - the energy figure's reason; the case goes on
            self.meter, reason = None, f"not measured: the energy meter failed to start ({type(e).__name__}: {e})"
        self.energy_info = energy.meter_info(self.meter, reason)
        self._read_energy()  # the first read before the timed region starts
        self._stop.clear()
        self.started_ns = time.monotonic_ns()
        self._thread = threading.Thread(target=self._run, name=f"monitor-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def _take(self) -> bool:
        start = time.perf_counter()
        try:
            self.samples.extend(self.sampler.sample())
            if self.host is not None:
                self.host_samples.append(self.host.sample())
            self.polls.append(time.monotonic_ns())
            return True
        except psutil.NoSuchProcess:
            self.errors.append("worker exited")
        except Exception as e:
            self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            self._read_energy()  # the devices' counters, whatever happened to the worker's samples
            self.busy_s += time.perf_counter() - start
        return False

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                if not self._take():
                    return
        except BaseException as e:  # recorded, so a dead thread never passes for a quiet worker
            self.errors.append(f"monitor thread died: {type(e).__name__}: {e}")
            raise

    def stop(self) -> "Monitor":
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._take()
            self.stopped_ns = time.monotonic_ns()
            self.sampler.close()
            if self.meter is not None:
                self.meter.close()
        return self

    def _read_energy(self) -> None:
        """One read of every energy counter; a read that fails is kept as a hole (None), which
        fails the energy figure and nothing else."""
        if self.meter is None:
            return
        try:
            self.energy_reads.append(self.meter.read())
        except Exception:
            self.energy_reads.append(dict(t_ns=time.monotonic_ns(), values=[None] * len(self.meter.domains)))

    def longest_gap_s(self) -> float:
        """The longest stretch without a sample between start and stop: a thread that died, or one
        starved of the CPU, leaves a hole that the summaries would otherwise paper over."""
        marks = [self.started_ns, *self.polls, self.stopped_ns or time.monotonic_ns()]
        return max((b - a for a, b in zip(marks, marks[1:])), default=0) / 1e9

    def sampling_share(self) -> float:
        """The fraction of the monitored time this thread spent sampling (the harness's own cost)."""
        elapsed = ((self.stopped_ns or time.monotonic_ns()) - self.started_ns) / 1e9
        return self.busy_s / elapsed if elapsed > 0 else 0.0

    def info(self) -> dict[str, Any]:
        return dict(backend=getattr(self.sampler, "name", None), interval_s=self.interval,
                    samples=len(self.samples), host_samples=len(self.host_samples), note=self.note, errors=self.errors[:5],
                    longest_gap_s=round(self.longest_gap_s(), 4), sampling_share=round(self.sampling_share(), 4),
                    buffered=getattr(self.sampler, "buffered", None),
                    processes=len(self.pid) if isinstance(self.pid, list) else 1,
                    energy_source=self.energy_info["source"], energy_reads=len(self.energy_reads),
                    process_listed=getattr(self.sampler, "process_listed", None))

    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --------------------------------------------------------------------------- summaries

def _within(samples: list[dict], key: str, windows: list[tuple[int, int]]) -> np.ndarray:
    vals = [s[key] for s in samples if s.get(key) is not None
            and any(a <= s["t_ns"] < b for a, b in windows)]
    return np.asarray(vals, dtype=float)


def summarize_util(samples: list[dict], windows: list[tuple[int, int]]) -> dict[str, Any]:
    """mean, p50, p95 and the idle fraction of utilisation samples falling in WINDOWS."""
    v = _within(samples, "util", windows)
    if v.size == 0:
        return dict(samples=0, mean=None, p50=None, p95=None, idle_fraction=None)
    return dict(samples=int(v.size), mean=float(v.mean()), p50=float(np.percentile(v, 50)),
                p95=float(np.percentile(v, 95)), idle_fraction=float(np.mean(v < IDLE_BELOW)))


def peak(samples: list[dict], key: str, windows: list[tuple[int, int]] | None = None) -> int | None:
    v = _within(samples, key, windows) if windows is not None else \
        np.asarray([s[key] for s in samples if s.get(key) is not None], dtype=float)
    return int(v.max()) if v.size else None


# --------------------------------------------------------------------------- trust

IDLE_SHARE_FLAG = 0.5       # steps idle in more than half their samples
SAMPLING_SHARE_FLAG = 0.05  # the monitor itself busy more than 5% of the time


def judge(mon: "Monitor | None", steps: list[tuple[int, int]], timed: list[tuple[int, int]]
          ) -> tuple[list[str], list[str]]:
    """(problems, flags) for what a monitor saw: STEPS are the training steps' windows, TIMED the
    whole measured region. A problem means the figures (or the times) cannot be trusted and fails
    the case; a flag is a finding worth a look."""
    if mon is None:
        return [], []
    problems = [f"monitor: {e} (after {len(mon.samples)} samples)" for e in mon.errors]
    gap, limit = mon.longest_gap_s(), max(20 * mon.interval, 2.0)
    if gap > limit:
        problems.append(f"monitor: no sample for {gap:.1f} s (interval {mon.interval:g} s): utilisation and "
                        f"memory of that stretch are not measured")
    stopped = [s for s in mon.samples if s.get("stopped") and any(a <= s["t_ns"] < b for a, b in timed)]
    if stopped:
        problems.append(f"the worker was stopped (SIGSTOP, Ctrl-Z or a debugger) in {len(stopped)} samples of the "
                        f"timed region, about {len(stopped) * mon.interval:.1f} s: its times include the pause")
    flags = []
    if getattr(mon.sampler, "name", None) == "psutil":
        # A CPU worker that does not keep even 5% of one core busy is not training (whatever the core count).
        busy = _within(mon.samples, "busy_cores", steps)
        idle = float(np.mean(busy < IDLE_BELOW)) if busy.size else None
        if idle is not None and idle > IDLE_SHARE_FLAG:
            problems.append(f"the steps used under {IDLE_BELOW:.0%} of a core in {idle:.0%} of their samples: the "
                            f"worker was not computing (stopped, or starved of the CPU)")
    else:
        idle = summarize_util(mon.samples, steps)["idle_fraction"]
        if idle is not None and idle > IDLE_SHARE_FLAG:
            flags.append(f"the GPU was idle (utilisation < {IDLE_BELOW:.0%}) in {idle:.0%} of the steps' samples: "
                         f"it waited on the host (input pipeline, launches or synchronisation)")
    share = mon.sampling_share()
    if share > SAMPLING_SHARE_FLAG:
        flags.append(f"the monitor was busy {share:.0%} of the time at --monitor-interval {mon.interval:g}: it "
                     f"competes with the training it measures; raise the interval")
    return problems, flags


# --------------------------------------------------------------------------- other load

DISTURBANCE_VERSION = 1
# A case is disturbed when load that is not ours held more than this share of the machine's CPU over
# its timed region (of at least EPOCH_MIN_S), or over one epoch of at least EPOCH_MIN_S: a worker that can use every core then
# loses up to that share of its time, as much as the gate's 10% time threshold. A quiet machine here
# measured 0-2% (the kernel, the harness's own tree excluded), a one-core hog on 2 cores 30-50%.
DISTURBED_SHARE = 0.10
EPOCH_MIN_S = 2.0  # shorter windows (an epoch, or a smoke run's few timed steps) hold too few clock ticks
#                    (10 ms each) for a share this small: one train_step region of 0.3 s read 16% on a quiet run


def _mean(v: np.ndarray) -> float | None:
    return float(v.mean()) if v.size else None


def disturbance(mon: "Monitor | None", timed: list[tuple[int, int]], epochs: list[tuple[int, int] | None],
                gaps: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """What else used the machine while the case was timed: the CPU outside our processes (with a
    VM's steal), the run queue, and on a GPU other processes computing on it. TIMED is the measured
    region, EPOCHS each epoch's window or None (judged on their own, so a load that came for one
    epoch shows), GAPS the windows between epochs (the GPU's utilisation there, when the worker waits)."""
    threshold = dict(other_share=DISTURBED_SHARE, epoch_min_s=EPOCH_MIN_S, gpu_other_processes=0)
    out: dict[str, Any] = dict(version=DISTURBANCE_VERSION, disturbed=False, reasons=[], threshold=threshold,
                               cpu=None, gpu=None, epochs=[])
    samples = [*mon.samples, *mon.host_samples] if mon is not None else []
    other = _within(samples, "other_share", timed) + _within(samples, "steal_share", timed)
    if other.size:
        queue = _within(samples, "run_queue", timed)
        steal = _within(samples, "steal_share", timed)
        out["cpu"] = dict(samples=int(other.size), other_share_mean=float(other.mean()),
                          other_share_p95=float(np.percentile(other, 95)),
                          steal_share_mean=float(steal.mean()), run_queue_mean=_mean(queue),
                          cores=next((s["cores"] for s in samples if "cores" in s), None))
        seconds = sum(b - a for a, b in timed) / 1e9
        out["cpu"].update(seconds=seconds, judged=seconds >= EPOCH_MIN_S)
        if seconds >= EPOCH_MIN_S and other.mean() > DISTURBED_SHARE:  # shorter: too few ticks to judge 10%
            out["reasons"].append(f"other processes used {other.mean():.0%} of the machine's CPU while it was timed "
                                  f"(over {DISTURBED_SHARE:.0%}; steal {steal.mean():.0%}, run queue "
                                  f"{_mean(queue) or 0:.1f} on {out['cpu']['cores']} cores)")
    for k, window in enumerate(epochs):
        if window is None:
            out["epochs"].append(dict(epoch=k, seconds=None, other_share_mean=None, judged=False, disturbed=False))
            continue
        share = _within(samples, "other_share", [window]) + _within(samples, "steal_share", [window])
        seconds = (window[1] - window[0]) / 1e9
        judged = seconds >= EPOCH_MIN_S and share.size > 0
        hit = bool(judged and share.mean() > DISTURBED_SHARE)
        out["epochs"].append(dict(epoch=k, seconds=seconds, other_share_mean=_mean(share), judged=judged,
                                  disturbed=hit))
        if hit:
            out["reasons"].append(f"epoch {k}: other processes used {share.mean():.0%} of the machine's CPU")
    listed = [s for s in samples if "other_procs" in s and any(a <= s["t_ns"] < b for a, b in timed)]
    if listed:
        most = max(s["other_procs"] for s in listed)
        out["gpu"] = dict(samples=len(listed), other_processes_max=most,
                          other_memory_peak=max(s.get("other_proc_mem") or 0 for s in listed),
                          util_between_epochs=summarize_util(samples, gaps or [])["mean"])
        if most > 0:
            out["reasons"].append(f"{most} other process{'es' if most > 1 else ''} computed on the GPU while it was "
                                  f"timed (up to {out['gpu']['other_memory_peak'] / 2**20:,.0f} MiB)")
    out["measured"] = out["cpu"] is not None
    out["disturbed"] = bool(out["reasons"])
    return out
