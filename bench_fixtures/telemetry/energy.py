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
MAX_POWER_W = 5_000.0  # per domain: no GPU board (about 1.4 kW at most today) or CPU package draws 5 kW

HORIZON_EPOCHS = 50  # the longer run a fine-tune's cost and energy are projected to


@dataclass(frozen=True)
class Source:
    """One way of reading energy: every reader (validator, report, figure, findings) takes it from here."""
    label: str   # a table cell or a legend
    method: str  # how the joules were read, as the report says it
    meter: str   # the family: figures of one family compare, of two do not
    counts: str  # what its figure holds, said once in the findings


_NVML_COUNTS = "NVML: the GPU board alone, not the host's CPU"
SOURCES = {
    "nvml_energy_counter": Source(
        "NVML counter", "NVML's total-energy counter of each GPU, read at every sample and interpolated at the "
        "timeline's boundaries", "nvml", _NVML_COUNTS),
    "nvml_power": Source(
        "NVML power, integrated", "NVML's power readings of each GPU integrated over time (trapezoids): this GPU "
        "has no energy counter (before Volta)", "nvml", _NVML_COUNTS),
    "rapl": Source(
        "RAPL (whole CPU packages)", "RAPL's energy counters of the CPU packages (and DRAM) under "
        "/sys/class/powercap: every process on those CPUs, not the worker's alone", "rapl",
        "RAPL: the whole CPU package, every process on it; on a shared machine the others' draw is included"),
}


def source_label(source: str | None) -> str:
    """SOURCE as a table cell or a legend says it (an unknown name as it is)."""
    return SOURCES[source].label if source in SOURCES else str(source)


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


def rapl_zones(root: Path = POWERCAP) -> tuple[list[Path], list[str]]:
    """The package zones (intel-rapl:N, named package-N; AMD's too) and their DRAM subzones: the
    cores and uncore subzones are inside the package's figure, psys would count the packages twice.
    Also the zones whose name could not be read (a reason must not blame a missing driver)."""
    zones, unnamed = [], []
    for top in sorted(root.glob("intel-rapl:*")):
        if top.name.count(":") != 1:
            continue
        name = _name(top)
        if name is None:
            unnamed.append(str(top / "name"))
        elif name.startswith("package"):
            zones.append(top)
            zones += [sub for sub in sorted(top.glob(f"{top.name}:*")) if _name(sub) == "dram"]
    return zones, unnamed


def _name(zone: Path) -> str | None:
    try:
        return (zone / "name").read_text().strip()
    except (OSError, ValueError):  # unreadable, or not text
        return None


def _microjoules(path: Path) -> int:
    """A whole number of microjoules from a powercap file; ValueError naming the file otherwise."""
    text = path.read_text().strip()
    if not text.isdigit() or len(text) > 20:  # a 64-bit counter has at most 20 digits
        raise ValueError(f"{path}: {text[:40]!r} is not a whole number of microjoules")
    return int(text)


class RaplMeter:
    """RAPL's counters (microjoules, wrapping at max_energy_range_uj) of ZONES, in joules."""
    source, kind = "rapl", "counter"

    def __init__(self, zones: list[Path]) -> None:
        self.files = [z / "energy_uj" for z in zones]
        self.domains = [(_name(z) or z.name) + ("" if (_name(z) or "").startswith("package") else f"({z.name})")
                        for z in zones]
        # a range of 0 says nothing: no wrap can be undone (a step back then fails the figure)
        self.ranges = [(_microjoules(z / "max_energy_range_uj") / 1e6) or None for z in zones]
        for f in self.files:
            _microjoules(f)  # PermissionError / ValueError to make_meter, with the file named

    def read(self) -> dict[str, Any]:
        values: list[float | None] = []
        for f in self.files:
            try:
                values.append(_microjoules(f) / 1e6)
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
    zones, unnamed = rapl_zones(root)
    if not zones and unnamed:
        return None, (f"not measured: {unnamed[0]} cannot be read, so no RAPL zone can be told a package; "
                      f"check the powercap tree's permissions")
    if not zones:
        return None, (f"not measured: no RAPL package zone under {root} (no powercap driver: a virtual machine, "
                      f"a container without /sys, or a CPU without RAPL)")
    try:
        return RaplMeter(zones), ""
    except PermissionError as e:
        name = Path(e.filename or "energy_uj").name
        return None, (f"not measured: {e.filename} is not readable by this user (root only since Linux 5.10, "
                      f"CVE-2020-8694); run as root, or `sudo chmod o+r {root}/intel-rapl:*/{name} "
                      f"{root}/intel-rapl:*/intel-rapl:*/{name}`")
    except (OSError, ValueError) as e:
        return None, f"not measured: RAPL under {root} cannot be read ({e}); {POWERCAP_ENV} may point at another tree"


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
    kind, ranges = info.get("kind"), list(info.get("ranges") or [])
    usable = [r for r in reads if isinstance(r.get("values"), list) and len(r["values"]) == n]
    by_time: dict[int, dict] = {}
    for r in sorted(usable, key=lambda r: r["t_ns"]):
        by_time.setdefault(r["t_ns"], r)  # two reads at one instant: the first (no time passed between them)
    out = Trace(np.asarray(list(by_time), dtype=np.int64), np.zeros((len(by_time), n)))
    if len(usable) < len(reads) or kind not in ("counter", "power") or len(ranges) != n:
        out.problems.append(f"the energy meter's record ({n} domain(s), kind {kind!r}, {len(ranges)} range(s)) does "
                            f"not match its reads ({len(reads) - len(usable)} of {len(reads)} hold another count)")
        return out
    reads = list(by_time.values())
    if len(reads) < 2 or not n:
        out.problems.append(f"{len(reads)} energy read(s): too few to measure anything")
        return out
    for d in range(n):
        values = [r["values"][d] for r in reads]
        failed = sum(isinstance(v, bool) or not (isinstance(v, (int, float)) and np.isfinite(v)) for v in values)
        if failed:
            out.problems.append(f"{info['domains'][d]}: {failed} of {len(values)} energy reads failed")
            continue
        col = _cumulative(np.asarray(values, dtype=float), out.t_ns, kind, ranges[d], info["domains"][d], out)
        if col is not None:
            out.joules[:, d] = col
            if kind == "counter":
                _stalls(out, np.asarray(values, dtype=float), info["domains"][d], start_ns, stop_ns)
            else:
                _holes(out, info["domains"][d], start_ns, stop_ns)
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
        # A wrap is undone where the range is known, the reads are close enough that at most one wrap
        # fits between them even at MAX_POWER_W, and the energy it implies is one a device can draw.
        most = MAX_POWER_W * dt[i]
        if span and span > most and 0 <= steps[i] + span <= most:
            steps[i] += span
            out.wraps += 1
            continue
        if span and span <= most:
            what = f"reads {dt[i]:.1f} s apart, long enough for more than one wrap of its {span:g} J range"
        elif span:
            what = "more than a wrap at any real power explains: a reset"
        else:
            what = "with no known range: a wrap, a reset or a driver reload"
        out.problems.append(f"{name}: the energy counter went backwards by {-steps[i]:.3f} J between two reads "
                            f"{dt[i]:.3f} s apart ({what})")
        return None
    cum = np.concatenate([[0.0], np.cumsum(steps)])
    burst = np.flatnonzero(steps > MAX_POWER_W * (dt + CHUNK_S))
    if burst.size:  # more than any device draws in the time, even with a whole chunk of updates in it
        k = int(burst[0])
        out.problems.append(f"{name}: the energy counter rose by {steps[k]:,.1f} J between two reads {dt[k]:.3f} s "
                            f"apart, more than any device draws ({MAX_POWER_W:g} W): not a reading")
        return None
    rate, window = _fastest(t_ns, cum)
    if rate > MAX_POWER_W:
        out.problems.append(f"{name}: the energy counter rose at {rate:,.0f} W over {window:.2g} s, faster than "
                            f"any device ({MAX_POWER_W:g} W): not a reading")
        return None
    return cum


RATE_WINDOW_S = 1.0  # a driver updates its counter in chunks (NVML every 20-100 ms): rates are judged over 1 s
CHUNK_S = 0.1        # ... and one step between two reads may hold a whole chunk (100 ms) besides their spacing


def _fastest(t_ns: np.ndarray, cum: np.ndarray) -> tuple[float, float]:
    """(watts, seconds): the highest mean power over any RATE_WINDOW_S (the whole trace when shorter):
    between two reads 10 ms apart a counter updated every 100 ms jumps by a whole chunk, at ten
    times its power."""
    span = (t_ns[-1] - t_ns[0]) / 1e9
    if span <= RATE_WINDOW_S:
        return ((cum[-1] - cum[0]) / span if span > 0 else 0.0), span
    j = np.searchsorted(t_ns, t_ns + int(RATE_WINDOW_S * 1e9))  # the first read a window after each
    ok = j < len(t_ns)
    i, j = np.flatnonzero(ok), j[ok]
    rates = (cum[j] - cum[i]) / ((t_ns[j] - t_ns[i]) / 1e9)
    k = int(np.argmax(rates))
    return float(rates[k]), float((t_ns[j[k]] - t_ns[i[k]]) / 1e9)


FROZEN_MIN_S = 0.5    # equal reads for longer than a counter's update period (NVML: 100 ms at most)
FROZEN_SHARE = 0.25   # ... adding up to more than this share of the fine-tune: stopped, if in pieces


def _stalls(out: Trace, values: np.ndarray, name: str, start_ns: int | None, stop_ns: int | None) -> None:
    """A counter that read the same value for STALL_S inside [start, stop], or for FROZEN_MIN_S at a
    time adding up to FROZEN_SHARE of it, has stopped: no device draws nothing. Reads far apart with
    the counter moving are no stall (a long --monitor-interval)."""
    t = out.t_ns
    lo, hi = start_ns if start_ns is not None else t[0], stop_ns if stop_ns is not None else t[-1]
    ends = np.flatnonzero(np.diff(values) != 0)  # the last read of each run of equal reads, but the final run's
    first, last = np.concatenate([[0], ends + 1]), np.concatenate([ends, [len(t) - 1]])
    a, b = t[first], t[last]
    inside = np.maximum(np.minimum(b, hi) - np.maximum(a, lo), 0) / 1e9
    k = int(np.argmax(inside))
    frozen = float(inside[inside >= FROZEN_MIN_S].sum())
    if inside[k] >= STALL_S:
        out.problems.append(f"{name}: the energy counter stopped for {(b[k] - a[k]) / 1e9:.1f} s (no device draws "
                            f"nothing)")
    elif hi > lo and frozen > FROZEN_SHARE * (hi - lo) / 1e9:
        out.problems.append(f"{name}: the energy counter stood still for {frozen:.1f} s of the fine-tune's "
                            f"{(hi - lo) / 1e9:.1f} s, in stretches of {FROZEN_MIN_S:g} s or more")


def _holes(out: Trace, name: str, start_ns: int | None, stop_ns: int | None) -> None:
    """Power readings integrate only where they are dense: a hole of STALL_S inside the fine-tune is
    energy nobody read."""
    t = out.t_ns
    lo, hi = start_ns if start_ns is not None else t[0], stop_ns if stop_ns is not None else t[-1]
    gaps = [(min(b, hi) - max(a, lo)) / 1e9 for a, b in zip(t, t[1:])]
    if gaps and max(gaps) >= STALL_S:
        out.problems.append(f"{name}: no power reading for {max(gaps):.1f} s of the fine-tune (power is integrated "
                            f"only where read densely; --monitor-interval below {STALL_S:g} s)")


# --------------------------------------------------------------------------- the figures of a case

def energy_record(reads: list[dict[str, Any]], info: dict[str, Any], events: list[dict[str, Any]], epochs: int,
                  steps_per_epoch: int, images: int | None, util_samples: list[dict[str, Any]] | None = None,
                  idle_below: float | None = None) -> dict[str, Any]:
    """extra_info's `energy` for one fine-tune round: where it came from, the joules of the fine-tune
    and per image, split by the timeline as time is (first step, each epoch's steps / evaluation /
    rest, each gap, idle), projected like the overhead; or why it was not measured. A figure that
    cannot be trusted is None with its problems, and never fails the case. UTIL_SAMPLES (a GPU's)
    with IDLE_BELOW (the monitor's idle threshold) give the joules drawn while the GPU sat idle."""
    from .timeline import RUN_START, RUN_STOP, epoch_phases, inter_epoch_gaps, project_overhead, time_to_first_step
    out: dict[str, Any] = dict(version=ENERGY_VERSION, measured=False, source=info.get("source"),
                               method=SOURCES[info["source"]].method if info.get("source") in SOURCES else "", domains=info.get("domains") or [],
                               reason=info.get("reason") or None, problems=[], wraps=0, finetune_j=None,
                               per_image_j=None, mean_power_w=None, domain_finetune_j=None, first_step_j=None,
                               idle_j=None, epoch_phases=None, inter_epoch_gaps=None, projection=None)
    if info.get("source") is None:
        out["reason"] = out["reason"] or "not measured: no energy meter"
        return out
    start, stop = (next((e["t_ns"] for e in events if e["name"] == n), None) for n in (RUN_START, RUN_STOP))
    if start is None or stop is None or stop <= start:
        out.update(reason="not measured: the fine-tune's run_start/run_stop events are missing or out of order")
        return out
    tr = trace(reads, info, start, stop)
    out["wraps"] = tr.wraps
    total = tr.between(start, stop)
    if total is None and not tr.problems:
        tr.problems.append("the energy reads do not cover the fine-tune (run_start to run_stop)")
    elif total is not None and not total > 0 and not tr.problems:
        tr.problems.append(f"the energy counter did not move over the fine-tune ({(stop - start) / 1e9:.3f} s): "
                           f"too coarse or stopped")
    if tr.problems:
        out.update(problems=tr.problems, reason="not measured: " + tr.problems[0])
        return out
    inside = [e for e in events if start <= e["t_ns"] <= stop]  # the reads cover these, and only these
    amount: Callable[[int, int], float] = lambda a, b: tr.between(a, b)  # noqa: E731
    phases, _ = epoch_phases(inside, epochs, amount=amount, unit="j")
    gaps, _ = inter_epoch_gaps(inside, epochs, amount=amount, unit="j")
    lo = max(int(np.searchsorted(tr.t_ns, start, side="right")) - 1, 0)  # the reads around the boundaries
    hi = min(int(np.searchsorted(tr.t_ns, stop, side="left")), len(tr.t_ns) - 1)
    spacing = np.diff(tr.t_ns[lo:hi + 1]) / 1e9 if hi > lo else np.asarray([(stop - start) / 1e9])
    out.update(measured=True, reason=None, finetune_j=total, images=images, read_spacing_s=float(spacing.max()),
               per_image_j=total / images if images else None, mean_power_w=total / ((stop - start) / 1e9),
               domain_finetune_j=[tr.between(start, stop, d) for d in range(len(out["domains"]))],
               first_step_j=time_to_first_step(inside, amount=amount), epoch_phases=phases, inter_epoch_gaps=gaps,
               projection=project_overhead(inside, epochs, steps_per_epoch, amount=amount, unit="j"),
               idle_j=_idle(tr, util_samples, start, stop, idle_below)
               if util_samples is not None and idle_below is not None else None)
    return out


def _idle(tr: Trace, samples: list[dict[str, Any]], start: int, stop: int, idle_below: float) -> float | None:
    """Joules drawn while the GPU sat idle (utilisation under IDLE_BELOW: waiting on the host) during
    the fine-tune: each utilisation sample stands for the stretch since the one before it, per GPU."""
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
            if cur["util"] < idle_below:
                idle += tr.between(prev["t_ns"], cur["t_ns"], d) or 0.0
    return idle


def cost_record(price_per_hour: float | None, finetune_s: float | None, projection: dict[str, Any] | None,
                horizon: int = HORIZON_EPOCHS) -> dict[str, Any] | None:
    """extra_info's `cost`: the device's price per hour times the fine-tune's wall time, and a
    HORIZON-epoch run's from the overhead projection (a projection, not a measurement)."""
    if price_per_hour is None:
        return None
    rows = {p.get("epochs"): p for p in ((projection or {}).get("projected") or [])}
    long_s = (rows.get(horizon) or {}).get("total_s")
    return dict(price_per_hour=price_per_hour, finetune=finetune_s * price_per_hour / 3600 if finetune_s else None,
                horizon_epochs=horizon, horizon=long_s * price_per_hour / 3600 if long_s else None,
                basis=f"price per hour x the fine-tune's wall time; {horizon} epochs from the overhead projection")

