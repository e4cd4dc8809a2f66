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

IDLE_BELOW = 0.05  # utilisation under 5% counts as idle


class PsutilSampler:
    """The worker's CPU use as a fraction of all cores, and its resident memory."""
    name = "psutil"

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.cores = psutil.cpu_count() or 1
        self.proc.cpu_percent(None)  # starts the first interval
        self.last_ns = time.monotonic_ns()

    def sample(self) -> list[dict[str, Any]]:
        with self.proc.oneshot():
            cpu = self.proc.cpu_percent(None) / 100.0 / self.cores
            rss = self.proc.memory_info().rss
        now = time.monotonic_ns()
        mid, self.last_ns = (self.last_ns + now) // 2, now  # cpu_percent covers the interval since the last call
        return [dict(t_ns=mid, util=min(cpu, 1.0), proc_mem=rss)]

    def close(self) -> None:
        pass


class NvmlSampler:
    """Device utilisation from the driver's own buffered samples (with their timestamps) where the
    GPU supports it, else polled; the worker's GPU memory; SM clock, power and temperature."""
    name = "nvml"

    def __init__(self, pid: int, index: int = 0) -> None:
        import pynvml  # ImportError when nvidia-ml-py is missing: the caller falls back
        self.nvml, self.pid = pynvml, pid
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
        mem: dict[str, Any] = dict(t_ns=time.monotonic_ns(), device_mem=nv.nvmlDeviceGetMemoryInfo(self.handle).used)
        procs = nv.nvmlDeviceGetComputeRunningProcesses(self.handle)
        mine = [p.usedGpuMemory for p in procs if p.pid == self.pid and p.usedGpuMemory is not None]
        self.process_listed = bool(mine) or bool(self.process_listed)
        mem["proc_mem"] = sum(mine) if mine else None  # None: not listed (e.g. inside a container's PID namespace)
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


def make_sampler(pid: int, device: str, gpu_index: int = 0) -> tuple[Any, str]:
    """NVML for a GPU run, psutil otherwise or when NVML fails; the reason for a fallback is kept."""
    if device == "gpu":
        try:
            return NvmlSampler(pid, gpu_index), ""
        except ImportError:
            reason = "nvidia-ml-py (pynvml) not installed"
        except Exception as e:  # NVMLError: library missing, no such device, driver mismatch
            reason = f"NVML failed ({e})"
        return PsutilSampler(pid), f"fell back to psutil: {reason}"
    return PsutilSampler(pid), ""


class Monitor:
    """Samples a worker every `interval` seconds on a thread of this (the parent) process."""

    def __init__(self, pid: int, device: str, interval: float = 0.05, gpu_index: int = 0) -> None:
        self.pid, self.device, self.interval, self.gpu_index = pid, device, interval, gpu_index
        self.samples: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sampler: Any = None
        self.note = ""

    def start(self) -> "Monitor":
        self.sampler, self.note = make_sampler(self.pid, self.device, self.gpu_index)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"monitor-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def _take(self) -> bool:
        try:
            self.samples.extend(self.sampler.sample())
            return True
        except psutil.NoSuchProcess:
            self.errors.append("worker exited")
        except Exception as e:
            self.errors.append(f"{type(e).__name__}: {e}")
        return False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._take():
                return

    def stop(self) -> "Monitor":
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._take()
            self.sampler.close()
        return self

    def info(self) -> dict[str, Any]:
        return dict(backend=getattr(self.sampler, "name", None), interval_s=self.interval,
                    samples=len(self.samples), note=self.note, errors=self.errors[:5],
                    buffered=getattr(self.sampler, "buffered", None),
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
