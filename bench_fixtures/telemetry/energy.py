"""The energy a case's devices drew, from their own counters, read by the parent process.

GPU: NVML's total-energy counter (millijoules since the driver loaded; Volta and later), one per GPU
the case uses (each replica's included). A GPU without the counter: its power samples integrated
over time (trapezoids), and `source` says so. CPU: RAPL's package (and DRAM) counters under
/sys/class/powercap, where this user may read them. Anywhere else: not measured, with the reason;
never zero.

A meter is read on every pass of the monitor's sampling thread, stamped with `time.monotonic_ns()`
(the timeline's clock). The counters are cumulative, so the energy between two instants of the
timeline (run start, first step, each epoch's steps, evaluation, gaps) is the difference of the
counter interpolated linearly at them: the error is at most what one sampling interval holds.

Why not Zeus (zeus-ml): its `ZeusMonitor` reads the same NVML and RAPL counters, but from windows the
training code opens and closes in its own process (with a device synchronisation each), where our
rule is that nothing samples inside the worker, and our boundaries are the worker's timeline events
already; it would add pandas, scikit-learn, pydantic, rich, tyro, httpx and amdsmi to the
requirements for about 100 lines here. Its practices are kept: the counter on Volta and later,
power integration before it, RAPL's wrap at `max_energy_range_uj` undone.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

ENERGY_VERSION = 1
POWERCAP = Path("/sys/class/powercap")
POWERCAP_ENV = "BENCH_POWERCAP_DIR"  # another powercap tree: /sys mounted elsewhere in a container, or a test's
STALL_S = 2.0  # a counter that has not moved for this long is stopped (NVML updates every 20-100 ms;
#                a device at idle still draws watts, so a working counter always moves)
MAX_POWER_W = 20_000.0  # per domain: no GPU or CPU package draws 20 kW; above it a reading is garbage

SOURCES = {
    "nvml_energy_counter": "NVML's total-energy counter of each GPU, read at every sample and interpolated at "
                           "the timeline's boundaries",
    "nvml_power": "NVML's power readings of each GPU integrated over time (trapezoids): this GPU has no "
                  "energy counter (before Volta)",
    "rapl": "RAPL's energy counters of the CPU packages (and DRAM) under /sys/class/powercap: every process "
            "on those CPUs, not the worker's alone",
}


# --------------------------------------------------------------------------- meters

class NvmlMeter:
    """NVML on the GPUs at INDICES: the energy counter of each (joules), or where any GPU lacks it,
    the power of each (watts), which `Trace` integrates."""

    def __init__(self, indices: list[int]) -> None:
        import pynvml  # ImportError when nvidia-ml-py is missing: make_meter says so
        self.nvml = nv = pynvml
        nv.nvmlInit()
        try:
            self.handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in indices]
            self.domains = [f"gpu{i}" for i in indices]
            try:
                for h in self.handles:
                    nv.nvmlDeviceGetTotalEnergyConsumption(h)
                self.source, self.kind = "nvml_energy_counter", "counter"
            except nv.NVMLError:
                for h in self.handles:
                    nv.nvmlDeviceGetPowerUsage(h)  # neither: NVMLError to make_meter, the reason kept
                self.source, self.kind = "nvml_power", "power"
        except Exception:
            nv.nvmlShutdown()
            raise
        self.ranges: list[float | None] = [None] * len(self.handles)  # a 64-bit counter: no wrap in a lifetime

    def read(self) -> dict[str, Any]:
        nv, values = self.nvml, []
        for h in self.handles:
            try:
                values.append(nv.nvmlDeviceGetTotalEnergyConsumption(h) / 1000 if self.kind == "counter"
                              else nv.nvmlDeviceGetPowerUsage(h) / 1000)
            except nv.NVMLError:
                values.append(None)  # a missed read: a hole the trace reports, never a zero
        return dict(t_ns=time.monotonic_ns(), values=values)

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass


def rapl_zones(root: Path = POWERCAP) -> list[Path]:
    """The package zones (intel-rapl:N, named package-N; AMD's too) and their DRAM subzones: the
    cores and uncore subzones are inside the package's figure, psys would count the packages twice."""
    zones = []
    for top in sorted(root.glob("intel-rapl:*")):
        if top.name.count(":") != 1 or not _name(top).startswith("package"):
            continue
        zones.append(top)
        zones += [sub for sub in sorted(top.glob(f"{top.name}:*")) if _name(sub) == "dram"]
    return zones


def _name(zone: Path) -> str:
    try:
        return (zone / "name").read_text().strip()
    except OSError:
        return ""


class RaplMeter:
    """RAPL's counters (microjoules, wrapping at max_energy_range_uj) of ZONES, in joules."""
    source, kind = "rapl", "counter"

    def __init__(self, zones: list[Path]) -> None:
        self.files = [z / "energy_uj" for z in zones]
        self.domains = [_name(z) + ("" if _name(z).startswith("package") else f"({z.name})") for z in zones]
        self.ranges = [int((z / "max_energy_range_uj").read_text()) / 1e6 for z in zones]
        for f in self.files:
            int(f.read_text())  # PermissionError / ValueError to make_meter, with the file named

    def read(self) -> dict[str, Any]:
        values: list[float | None] = []
        for f in self.files:
            try:
                values.append(int(f.read_text()) / 1e6)
            except (OSError, ValueError):
                values.append(None)
        return dict(t_ns=time.monotonic_ns(), values=values)

    def close(self) -> None:
        pass


def make_meter(device: str, gpu_indices: list[int], root: Path | None = None) -> tuple[Any, str]:
    """(meter, "") or (None, why energy is not measured here): NVML on a GPU run, RAPL on a CPU run
    (under ROOT, else $BENCH_POWERCAP_DIR, else /sys/class/powercap)."""
    root = Path(root or os.environ.get(POWERCAP_ENV) or POWERCAP)
    if device == "gpu":
        try:
            return NvmlMeter(gpu_indices), ""
        except ImportError:
            return None, "not measured: nvidia-ml-py (pynvml) is not installed; pip install nvidia-ml-py"
        except Exception as e:  # NVMLError: no driver, no such GPU, neither counter nor power readable
            return None, f"not measured: NVML gave neither an energy counter nor power ({e})"
    zones = rapl_zones(root)
    if not zones:
        return None, (f"not measured: no RAPL package zone under {root} (no powercap driver: a virtual machine, "
                      f"a container without /sys, or a CPU without RAPL)")
    try:
        return RaplMeter(zones), ""
    except PermissionError as e:
        return None, (f"not measured: {e.filename} is not readable by this user (root only since Linux 5.10, "
                      f"CVE-2020-8694); run as root, or `sudo chmod o+r {root}/intel-rapl:*/energy_uj`")
    except (OSError, ValueError) as e:
        return None, f"not measured: RAPL under {root} cannot be read ({e})"


def meter_info(meter: Any, reason: str) -> dict[str, Any]:
    """What a trace needs to know of its meter (kept in the timeline file beside the reads)."""
    if meter is None:
        return dict(source=None, kind=None, domains=[], ranges=[], reason=reason)
    return dict(source=meter.source, kind=meter.kind, domains=list(meter.domains), ranges=list(meter.ranges),
                reason="")


# --------------------------------------------------------------------------- the trace

@dataclass
class Trace:
    """Cumulative joules per domain at each read (since the first read), wraps undone; `at(t)`
    interpolates between reads, `between(a, b)` is what was drawn from a to b."""
    t_ns: np.ndarray
    joules: np.ndarray  # shape (reads, domains)
    wraps: int = 0
    problems: list[str] = field(default_factory=list)

    def at(self, t_ns: int, domain: int | None = None) -> float | None:
        if not len(self.t_ns) or t_ns < self.t_ns[0] or t_ns > self.t_ns[-1]:
            return None
        cols = self.joules if domain is None else self.joules[:, [domain]]
        return float(sum(np.interp(t_ns, self.t_ns, cols[:, d]) for d in range(cols.shape[1])))

    def between(self, a_ns: int, b_ns: int, domain: int | None = None) -> float | None:
        a, b = self.at(a_ns, domain), self.at(b_ns, domain)
        return None if a is None or b is None else b - a

    def power(self) -> tuple[np.ndarray, np.ndarray]:
        """(midpoints in ns, watts of all domains) between consecutive reads: the figure's curve."""
        total = self.joules.sum(axis=1)
        dt = np.diff(self.t_ns) / 1e9
        keep = dt > 0
        return ((self.t_ns[1:] + self.t_ns[:-1])[keep] / 2, (np.diff(total)[keep] / dt[keep]))


def trace(reads: list[dict[str, Any]], info: dict[str, Any], start_ns: int | None = None,
          stop_ns: int | None = None) -> Trace:
    """The meter's READS as a cumulative trace. A counter that went backwards (with no known range,
    or by more than one wrap could explain), that stopped for STALL_S, a read that failed, or power
    beyond any device: each is a problem, and a trace with problems gives no figure. START_NS and
    STOP_NS bound where a stopped counter counts (the timed region)."""
    n = len(info.get("domains") or [])
    reads = sorted((r for r in reads if isinstance(r.get("values"), list) and len(r["values"]) == n),
                   key=lambda r: r["t_ns"])
    out = Trace(np.asarray([r["t_ns"] for r in reads], dtype=np.int64), np.zeros((len(reads), n)))
    if len(reads) < 2 or not n:
        out.problems.append(f"{len(reads)} energy read(s): too few to measure anything")
        return out
    for d in range(n):
        values = [r["values"][d] for r in reads]
        if any(v is None for v in values):
            missed = sum(v is None for v in values)
            out.problems.append(f"{info['domains'][d]}: {missed} of {len(values)} energy reads failed")
            continue
        col = _cumulative(np.asarray(values, dtype=float), out.t_ns, info["kind"], info["ranges"][d],
                          info["domains"][d], out)
        if col is not None:
            out.joules[:, d] = col
            _stalls(out, d, info["domains"][d], start_ns, stop_ns)
    return out


def _cumulative(v: np.ndarray, t_ns: np.ndarray, kind: str, span: float | None, name: str, out: Trace
                ) -> np.ndarray | None:
    dt = np.diff(t_ns) / 1e9
    if kind == "power":
        if (v < 0).any() or (v > MAX_POWER_W).any():
            out.problems.append(f"{name}: a power reading outside 0..{MAX_POWER_W:g} W ({v.min():g}..{v.max():g} W)")
            return None
        return np.concatenate([[0.0], np.cumsum((v[1:] + v[:-1]) / 2 * dt)])
    steps = np.diff(v)
    for i in np.flatnonzero(steps < 0):
        # A wrap is undone where the range is known and what it implies was drawn between the two
        # reads is a power a device can draw; anything else went backwards (a reset, a driver reload).
        if span and 0 <= steps[i] + span <= MAX_POWER_W * dt[i]:
            steps[i] += span
            out.wraps += 1
        else:
            what = "with no known range: a wrap, a reset or a driver reload" if not span else \
                "more than a wrap at any real power explains: a reset"
            out.problems.append(f"{name}: the energy counter went backwards by {-steps[i]:.3f} J between two reads "
                                f"{dt[i]:.3f} s apart ({what})")
            return None
    if (steps / np.maximum(dt, 1e-9) > MAX_POWER_W).any():
        out.problems.append(f"{name}: the energy counter jumped faster than {MAX_POWER_W:g} W: not a reading")
        return None
    return np.concatenate([[0.0], np.cumsum(steps)])


def _stalls(out: Trace, d: int, name: str, start_ns: int | None, stop_ns: int | None) -> None:
    """A counter that did not move for STALL_S inside [start, stop] has stopped: no device draws nothing."""
    t, col = out.t_ns, out.joules[:, d]
    lo, hi = start_ns if start_ns is not None else t[0], stop_ns if stop_ns is not None else t[-1]
    moves = [t[0], *t[1:][np.diff(col) > 0], t[-1]]  # the reads where it had moved, and the ends
    inside, whole = max(((min(b, hi) - max(a, lo), b - a) for a, b in zip(moves, moves[1:])), default=(0, 0))
    if inside / 1e9 >= STALL_S:
        out.problems.append(f"{name}: the energy counter stopped for {whole / 1e9:.1f} s (no device draws nothing)")


# --------------------------------------------------------------------------- the figures of a case

def energy_record(reads: list[dict[str, Any]], info: dict[str, Any], events: list[dict[str, Any]], epochs: int,
                  steps_per_epoch: int, images: int | None, util_samples: list[dict[str, Any]] | None = None
                  ) -> dict[str, Any]:
    """extra_info's `energy` for one fine-tune round: where it came from, the joules of the fine-tune
    and per image, split by the timeline as time is (first step, each epoch's steps / evaluation /
    rest, each gap, idle), projected like the overhead; or why it was not measured. A figure that
    cannot be trusted is None with its problems, and never fails the case."""
    from .timeline import RUN_START, RUN_STOP, epoch_phases, inter_epoch_gaps, project_overhead, time_to_first_step
    out: dict[str, Any] = dict(version=ENERGY_VERSION, measured=False, source=info.get("source"),
                               method=SOURCES.get(info.get("source") or "", ""), domains=info.get("domains") or [],
                               reason=info.get("reason") or None, problems=[], wraps=0, finetune_j=None,
                               per_image_j=None, mean_power_w=None, domain_finetune_j=None, first_step_j=None,
                               idle_j=None, epoch_phases=None, inter_epoch_gaps=None, projection=None)
    if info.get("source") is None:
        out["reason"] = out["reason"] or "not measured: no energy meter"
        return out
    run = {e["name"]: e["t_ns"] for e in events if e["name"] in (RUN_START, RUN_STOP)}
    if len(run) < 2:
        out.update(reason="not measured: the fine-tune's run_start/run_stop events are missing")
        return out
    tr = trace(reads, info, run[RUN_START], run[RUN_STOP])
    out["wraps"] = tr.wraps
    total = tr.between(run[RUN_START], run[RUN_STOP])
    if total is None and not tr.problems:
        tr.problems.append("the energy reads do not cover the fine-tune (run_start to run_stop)")
    if tr.problems:
        out.update(problems=tr.problems, reason="not measured: " + tr.problems[0])
        return out
    amount: Callable[[int, int], float] = lambda a, b: tr.between(a, b)  # noqa: E731 (inside the covered span)
    seconds = (run[RUN_STOP] - run[RUN_START]) / 1e9
    phases, _ = epoch_phases(events, epochs, amount=amount, unit="j")
    gaps, _ = inter_epoch_gaps(events, epochs, amount=amount, unit="j")
    first = time_to_first_step(events, amount=amount)
    out.update(measured=True, reason=None, finetune_j=total, per_image_j=total / images if images else None,
               mean_power_w=total / seconds if seconds > 0 else None,
               domain_finetune_j=[tr.between(run[RUN_START], run[RUN_STOP], d) for d in range(len(out["domains"]))],
               first_step_j=first, epoch_phases=phases, inter_epoch_gaps=gaps,
               projection=project_overhead(events, epochs, steps_per_epoch, amount=amount, unit="j"),
               idle_j=_idle(tr, util_samples, run[RUN_START], run[RUN_STOP]) if util_samples is not None else None)
    return out


IDLE_BELOW = 0.05  # the monitor's rule: utilisation under 5% is idle


def _idle(tr: Trace, samples: list[dict[str, Any]], start: int, stop: int) -> float | None:
    """Joules drawn while the GPU sat idle (utilisation < 5%: waiting on the host) during the
    fine-tune: each utilisation sample stands for the stretch since the one before it, per GPU."""
    by_gpu: dict[int, list[dict]] = {}
    for s in samples:
        if s.get("util") is not None and start <= s["t_ns"] <= stop:
            by_gpu.setdefault(int(s.get("replica", 0)), []).append(s)
    if not by_gpu:
        return None
    idle = 0.0
    for d, ss in by_gpu.items():
        if d >= tr.joules.shape[1]:
            return None
        ss.sort(key=lambda s: s["t_ns"])
        for prev, cur in zip([dict(t_ns=start)] + ss, ss):
            if cur["util"] < IDLE_BELOW:
                idle += tr.between(prev["t_ns"], cur["t_ns"], d) or 0.0
    return idle


def cost_record(price_per_hour: float | None, finetune_s: float | None, projection: dict[str, Any] | None,
                horizon: int = 50) -> dict[str, Any] | None:
    """extra_info's `cost`: the device's price per hour times the fine-tune's wall time, and a
    HORIZON-epoch run's from the overhead projection (a projection, not a measurement)."""
    if price_per_hour is None:
        return None
    rows = {p.get("epochs"): p for p in ((projection or {}).get("projected") or [])}
    long_s = (rows.get(horizon) or {}).get("total_s")
    return dict(price_per_hour=price_per_hour, finetune=finetune_s * price_per_hour / 3600 if finetune_s else None,
                horizon_epochs=horizon, horizon=long_s * price_per_hour / 3600 if long_s else None,
                basis=f"price per hour x the fine-tune's wall time; {horizon} epochs from the overhead projection")

