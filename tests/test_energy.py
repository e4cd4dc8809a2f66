"""Energy per case: the meters against a fake NVML and a fake powercap tree, the trace's fault rules
(a wrap, a counter going backwards or stopping, failed reads), the split by the timeline, and a real
case whose energy is measured, or not, without failing the case."""
import os
import statistics
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_fixtures.telemetry import energy
from bench_fixtures.telemetry import timeline as tl

S = 1_000_000_000  # ns per second


def reads(values, dt_s=0.05, t0=S):
    """Energy reads (one domain unless values are lists) DT_S apart."""
    return [dict(t_ns=t0 + int(i * dt_s * S), values=v if isinstance(v, list) else [v]) for i, v in enumerate(values)]


def info(kind="counter", ranges=(None,), source="nvml_energy_counter"):
    return dict(source=source, kind=kind, domains=[f"gpu{i}" for i in range(len(ranges))], ranges=list(ranges),
                reason="")


def events(t0, epochs=2, epoch_s=1.0, gap_s=0.2, first_s=0.3):
    """A fine-tune's timeline from T0: epochs of EPOCH_S, the first step FIRST_S, gaps of GAP_S."""
    ev, t = [dict(name=tl.RUN_START, t_ns=t0)], t0
    for k in range(epochs):
        ev += [dict(name=tl.EPOCH_START, t_ns=t, epoch=k), dict(name=tl.FIRST_STEP_START, t_ns=t + 1, epoch=k),
               dict(name=tl.FIRST_STEP_END, t_ns=t + int(first_s * S), epoch=k),
               dict(name=tl.LAST_STEP_END, t_ns=t + int(epoch_s * S) - 2, epoch=k),
               dict(name=tl.EPOCH_STOP, t_ns=t + int(epoch_s * S), epoch=k)]
        t += int((epoch_s + gap_s) * S)
    return ev + [dict(name=tl.RUN_STOP, t_ns=t - int(gap_s * S))]


# --------------------------------------------------------------------------- the trace

def test_a_steady_counter_gives_power_times_time_split_like_time():
    watts, dt = 250.0, 0.05
    r = reads([1000 + watts * dt * i for i in range(80)], dt)  # 4 s at 250 W
    ev = events(r[2]["t_ns"], epochs=2, epoch_s=1.2, gap_s=0.3)
    rec = energy.energy_record(r, info(), ev, epochs=2, steps_per_epoch=10, images=640)
    run_s = (ev[-1]["t_ns"] - ev[0]["t_ns"]) / S
    assert rec["measured"] and rec["reason"] is None and rec["problems"] == []
    assert rec["finetune_j"] == pytest.approx(watts * run_s, rel=1e-6)
    assert rec["per_image_j"] == pytest.approx(rec["finetune_j"] / 640)
    assert rec["mean_power_w"] == pytest.approx(watts, rel=1e-6)
    assert rec["first_step_j"] == pytest.approx(watts * 0.3, rel=1e-3)
    for p in rec["epoch_phases"]:
        assert p["steps_j"] + p["eval_j"] + p["other_j"] == pytest.approx(p["total_j"])
        assert p["total_j"] == pytest.approx(watts * 1.2, rel=1e-6)
    assert rec["inter_epoch_gaps"][0]["total_j"] == pytest.approx(watts * 0.3, rel=1e-3)
    proj = rec["projection"]
    assert proj["measured"]["total_j"] == pytest.approx(rec["finetune_j"])  # the split reproduces the total
    assert [p["epochs"] for p in proj["projected"]] == list(tl.PROJECTED_EPOCHS)


def test_power_readings_are_integrated_where_a_gpu_has_no_counter():
    r = reads([100.0] * 41, 0.05)  # 2 s at 100 W
    ev = events(r[0]["t_ns"], epochs=1, epoch_s=2.0)
    rec = energy.energy_record(r, info("power", source="nvml_power"), ev, 1, 4, 128)
    assert rec["measured"] and rec["source"] == "nvml_power" and "integrated" in rec["method"]
    assert rec["finetune_j"] == pytest.approx(200.0, rel=1e-3)


def test_a_rapl_wrap_is_undone_with_the_zones_range():
    span, watts, dt = 1000.0, 50.0, 0.05
    values = [(990 + watts * dt * i) % span for i in range(40)]  # crosses the top once
    tr = energy.trace(reads(values, dt), info(ranges=(span,), source="rapl"))
    assert tr.problems == [] and tr.wraps == 1
    assert tr.between(tr.t_ns[0], tr.t_ns[-1]) == pytest.approx(watts * dt * 39)


@pytest.mark.parametrize("values, ranges, words", [
    ([10.0, 20.0, 30.0, 5.0, 15.0], (None,), "went backwards by 25.000 J"),      # NVML: no range to undo it
    ([500.0, 510.0, 520.0, 3.0, 13.0], (1e6,), "more than a wrap"),              # RAPL, far from the top: a reset
    ([100.0, 101.0, 51.0, 52.0], (10.0,), "more than one wrap"),                 # a range that fits many times
    ([0.0, 50.0] + [50.0 + 5 * i for i in range(1, 5)], (1e6,), None),            # (control: no step back)
])
def test_a_counter_that_goes_backwards_fails_the_figure(values, ranges, words):
    r = reads(values, 0.05)
    rec = energy.energy_record(r, info(ranges=ranges), events(r[0]["t_ns"], 1, 0.2), 1, 4, 64)
    if words is None:
        assert rec["measured"], rec
        return
    assert not rec["measured"] and rec["finetune_j"] is None
    assert words in rec["problems"][0] and rec["reason"].startswith("not measured: ")


def test_a_counter_that_stops_fails_the_figure():
    values = [float(i) for i in range(20)] + [19.0] * 60 + [20.0 + i for i in range(20)]  # 3 s flat
    r = reads(values, 0.05)
    rec = energy.energy_record(r, info(), events(r[0]["t_ns"], 1, 4.9), 1, 4, 64)
    assert not rec["measured"] and "stopped for 3.0 s" in rec["problems"][0]


def test_a_stall_outside_the_fine_tune_is_not_its_problem():
    values = [1.0] * 60 + [1.0 + i for i in range(40)]  # flat for 3 s, then moving
    r = reads(values, 0.05)
    rec = energy.energy_record(r, info(), events(r[62]["t_ns"], 1, 1.0), 1, 4, 64)
    assert rec["measured"], rec["problems"]


def test_failed_reads_and_impossible_power_fail_the_figure():
    r = reads([1.0, 2.0, None, 4.0], 0.05)
    rec = energy.energy_record(r, info(), events(r[0]["t_ns"], 1, 0.1), 1, 4, 64)
    assert not rec["measured"] and "1 of 4 energy reads failed" in rec["reason"]
    r = reads([1.0, 2.0, 5000.0, 5001.0], 0.05)  # 100 kW between two reads
    assert "more than any device draws" in energy.energy_record(r, info(), events(r[0]["t_ns"], 1, 0.1), 1, 4, 64)["reason"]
    r = reads([100.0, -5.0, 100.0], 0.05)
    assert "power reading outside" in energy.energy_record(r, info("power"), events(r[0]["t_ns"], 1, 0.05), 1, 1,
                                                           64)["reason"]


def test_reads_far_apart_with_a_moving_counter_are_no_stall():
    """--monitor-interval up to 60 s: reads 5 s apart of a counter at 250 W measure 250 W."""
    r = reads([250.0 * 5 * i for i in range(6)], 5.0)
    rec = energy.energy_record(r, info(), events(r[0]["t_ns"], 2, 10.0, gap_s=1.0), 2, 4, 64)
    assert rec["measured"] and rec["mean_power_w"] == pytest.approx(250.0), rec["problems"]


def test_a_counter_updated_in_chunks_is_read_at_its_power():
    """NVML updates its counter every 20-100 ms: read every 10 ms, a 700 W board jumps 70 J at a time."""
    values = [70.0 * (i // 10) for i in range(300)]  # 3 s, a chunk every 100 ms
    r = reads(values, 0.01)
    rec = energy.energy_record(r, info(), events(r[0]["t_ns"], 1, 2.9), 1, 4, 64)
    assert rec["measured"] and rec["mean_power_w"] == pytest.approx(700, rel=0.05), rec["problems"]


def test_a_burst_in_the_last_step_is_no_reading():
    """The monitor's final read comes a few ms after its last: a jump there is judged too."""
    r = reads([300.0 * 0.05 * i for i in range(60)], 0.05)
    r.append(dict(t_ns=r[-1]["t_ns"] + 2_000_000, values=[r[-1]["values"][0] + 1e5]))
    rec = energy.energy_record(r, info(), events(r[0]["t_ns"], 1, (r[-1]["t_ns"] - r[0]["t_ns"] - 1) / S), 1, 4, 64)
    assert not rec["measured"] and "more than any device draws" in rec["reason"]


def test_the_read_spacing_counts_the_reads_around_the_boundaries():
    r = reads([100.0 * i for i in range(4)], 1.0)  # reads 1 s apart, a 0.3 s fine-tune between two
    rec = energy.energy_record(r, info(), events(r[1]["t_ns"] + S // 10, 1, 0.3), 1, 4, 64)
    assert rec["measured"] and rec["read_spacing_s"] == pytest.approx(1.0)


def test_short_stalls_that_add_up_stop_the_counter():
    moving = [float(i) for i in range(10)]
    values = moving + [9.0] * 38 + [10.0 + i for i in range(10)] + [19.0] * 38 + [20.0 + i for i in range(10)]
    r = reads(values, 0.05)  # two stalls of 1.9 s in 5.2 s: neither reaches 2 s
    rec = energy.energy_record(r, info(), events(r[0]["t_ns"], 1, 5.2), 1, 4, 64)
    assert not rec["measured"] and "stood still for 3.8 s of the fine-tune's 5.2 s" in rec["reason"]


def test_a_hole_in_power_readings_is_not_integrated():
    r = reads([100.0] * 10, 0.05) + reads([100.0] * 10, 0.05, t0=S + int(3.5 * S))
    rec = energy.energy_record(r, info("power", source="nvml_power"), events(r[0]["t_ns"], 1, 3.9), 1, 4, 64)
    assert not rec["measured"] and "no power reading for 3.0 s" in rec["reason"]


def test_a_counter_that_never_moves_is_no_zero():
    r = reads([7.0, 7.0, 7.0, 7.0], 0.05)  # a coarse counter over a short fine-tune
    rec = energy.energy_record(r, info(), events(r[0]["t_ns"], 1, 0.15), 1, 4, 64)
    assert not rec["measured"] and rec["finetune_j"] is None and "did not move over the fine-tune" in rec["reason"]


def test_many_wraps_between_two_reads_are_not_guessed():
    r = reads([0.5, 0.9, 0.2, 0.7], 1.0)  # a 1 J range with reads 1 s apart: any number of wraps fits
    rec = energy.energy_record(r, info(ranges=(1.0,), source="rapl"), events(r[0]["t_ns"], 1, 2.5), 1, 4, 64)
    assert not rec["measured"] and "more than one wrap" in rec["reason"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "12", True])
def test_a_read_that_is_no_number_is_a_failed_read(bad):
    r = reads([1.0, 2.0, bad, 4.0], 0.05)
    rec = energy.energy_record(r, info(), events(r[0]["t_ns"], 1, 0.1), 1, 4, 64)
    assert not rec["measured"] and "1 of 4 energy reads failed" in rec["reason"]


def test_odd_timelines_and_meter_records_give_a_reason_not_a_wrong_figure():
    r = reads([10.0 * i for i in range(20)], 0.05)
    ev = events(r[0]["t_ns"], 1, 0.5)
    backwards = [dict(e, t_ns=r[0]["t_ns"]) if e["name"] == tl.RUN_STOP else e for e in ev]
    assert "out of order" in energy.energy_record(r, info(), backwards, 1, 4, 64)["reason"]
    twice = [dict(ev[0], t_ns=ev[0]["t_ns"] + 3 * S // 10)] + ev  # a second run_start: the first counts
    rec = energy.energy_record(r, info(), sorted(twice, key=lambda e: e["t_ns"]), 1, 4, 64)
    assert rec["measured"] and rec["first_step_j"] >= 0
    assert rec["projection"]["measured"]["total_j"] == pytest.approx(rec["finetune_j"])
    odd = [dict(x, values=[1.0, 2.0]) if i == 3 else x for i, x in enumerate(r)]
    assert "does not match its reads" in energy.energy_record(odd, info(), ev, 1, 4, 64)["reason"]
    assert "does not match" in energy.energy_record(r, dict(info(), kind=None), ev, 1, 4, 64)["reason"]
    dup = r[:5] + [dict(r[4], values=[999.0])] + r[5:]  # two reads at one instant: the first
    assert energy.energy_record(dup, info(), ev, 1, 4, 64)["measured"]


def test_reads_that_do_not_cover_the_fine_tune_measure_nothing():
    r = reads([1.0, 2.0, 3.0], 0.05)
    rec = energy.energy_record(r, info(), events(r[0]["t_ns"], 1, 5.0), 1, 4, 64)
    assert not rec["measured"] and "do not cover the fine-tune" in rec["reason"]


def test_no_meter_says_why_and_never_zero():
    rec = energy.energy_record([], energy.meter_info(None, "not measured: no RAPL package zone under /x"),
                               events(S), 2, 4, 64)
    assert rec == dict(rec, measured=False, finetune_j=None, per_image_j=None, source=None,
                       reason="not measured: no RAPL package zone under /x")


def test_idle_energy_is_what_was_drawn_while_the_gpu_waited():
    r = reads([100.0 * 0.05 * i for i in range(41)], 0.05)  # 100 W for 2 s
    t0 = r[0]["t_ns"]
    util = [dict(t_ns=t0 + int(0.5 * S * k), util=u) for k, u in enumerate([0.9, 0.0, 0.9, 0.0, 0.9], start=0)]
    rec = energy.energy_record(r, info(), events(t0, 1, 1.99), 1, 4, 64, util_samples=util, idle_below=0.05)
    assert rec["idle_j"] == pytest.approx(100.0, rel=1e-3)  # two idle half-seconds at 100 W


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.floats(0.0, 500.0), min_size=3, max_size=60), st.integers(1, 4),
       st.lists(st.floats(0.01, 0.99), min_size=3, max_size=3))
def test_energies_add_up_between_any_instants(increments, epochs, cuts):
    """Interpolation is additive: a stretch's energy is the sum of its parts, each part >= 0, and
    the phases of every epoch add up to it exactly."""
    values, total = [], 0.0
    for x in increments:
        total += x
        values.append(total)
    tr = energy.trace(reads(values, 0.05), info())
    span = int(tr.t_ns[-1] - tr.t_ns[0])
    a, b, c = sorted(int(tr.t_ns[0] + f * span) for f in cuts)
    assert tr.between(a, b) >= 0 and tr.between(b, c) >= 0
    assert tr.between(a, b) + tr.between(b, c) == pytest.approx(tr.between(a, c), abs=1e-6)
    ev = events(tr.t_ns[0] + 1, epochs, epoch_s=span / S / (epochs * 1.5), gap_s=span / S / (epochs * 3))
    phases, problems = tl.epoch_phases(ev, epochs, amount=tr.between, unit="j")
    assert not problems
    for p in phases:
        assert p["steps_j"] + p["eval_j"] + p["other_j"] == pytest.approx(p["total_j"], abs=1e-6)


# --------------------------------------------------------------------------- a fake NVML

def _fake_nvml(monkeypatch, energy_mj=None, power_mw=None, fail_init=False):
    pynvml = pytest.importorskip("pynvml")

    def unsupported(*a):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def init():
        if fail_init:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    fake = dict(nvmlInit=init, nvmlShutdown=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: f"h{i}",
                nvmlDeviceGetTotalEnergyConsumption=energy_mj or unsupported,
                nvmlDeviceGetPowerUsage=power_mw or unsupported)
    for name, fn in fake.items():
        monkeypatch.setattr(pynvml, name, fn)
    return pynvml


def test_nvml_counter_per_gpu_of_the_case(monkeypatch):
    counts = {"h0": 5_000, "h1": 9_000}

    def energy_mj(h):
        counts[h] += 1000 if h == "h0" else 3000
        return counts[h]

    _fake_nvml(monkeypatch, energy_mj=energy_mj)
    meter, why = energy.make_meter("gpu", [0, 1])
    assert why == "" and meter.source == "nvml_energy_counter" and meter.domains == ["gpu0", "gpu1"]
    rs = [dict(meter.read(), t_ns=k * S // 20) for k in range(5)]  # as the monitor reads them, 50 ms apart
    assert [r["values"] for r in rs[:2]] == [[7.0, 15.0], [8.0, 18.0]]  # joules, each GPU its own
    tr = energy.trace(rs, energy.meter_info(meter, ""))
    assert tr.between(tr.t_ns[0], tr.t_ns[-1], 0) == pytest.approx(4.0)
    assert tr.between(tr.t_ns[0], tr.t_ns[-1]) == pytest.approx(16.0)  # replicas' GPUs summed


def test_nvml_without_the_counter_falls_back_to_power_and_says_so(monkeypatch):
    _fake_nvml(monkeypatch, power_mw=lambda h: 70_000)
    meter, _ = energy.make_meter("gpu", [0])
    assert meter.source == "nvml_power" and meter.kind == "power" and meter.read()["values"] == [70.0]


def test_nvml_wrap_fails_the_figure_not_the_run(monkeypatch):
    seq = iter([2**64 // 1000 - 3000, 2**64 // 1000 - 1000, 500, 2500, 4500])  # a 64-bit wrap: no range known
    _fake_nvml(monkeypatch, energy_mj=lambda h: next(seq))
    meter, _ = energy.make_meter("gpu", [0])
    rs = [dict(meter.read(), t_ns=k * S // 20) for k in range(4)]
    rec = energy.energy_record(rs, energy.meter_info(meter, ""), events(rs[0]["t_ns"], 1, 0.15), 1, 1, 32)
    assert not rec["measured"] and "went backwards" in rec["reason"] and "no known range" in rec["reason"]


def test_nvml_missing_is_not_measured_with_the_reason(monkeypatch):
    _fake_nvml(monkeypatch, fail_init=True)
    meter, why = energy.make_meter("gpu", [0])
    assert meter is None and why.startswith("not measured: NVML gave neither")
    _fake_nvml(monkeypatch)  # the driver answers, but neither counter nor power
    meter, why = energy.make_meter("gpu", [0])
    assert meter is None and "Not Supported" in why


def test_no_pynvml_is_not_measured_with_the_fix(monkeypatch):
    import builtins
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__",
                        lambda name, *a, **k: (_ for _ in ()).throw(ImportError("no")) if name == "pynvml"
                        else real(name, *a, **k))
    meter, why = energy.make_meter("gpu", [0])
    assert meter is None and "pip install nvidia-ml-py" in why


# --------------------------------------------------------------------------- a fake powercap tree

def powercap(root: Path, zones: dict[str, tuple[str, int]], span: int = 262_143_328_850) -> Path:
    """ZONES: directory name -> (name, energy_uj)."""
    for d, (name, uj) in zones.items():
        z = root / d if d.count(":") == 1 else root / d.rsplit(":", 1)[0] / d
        z.mkdir(parents=True, exist_ok=True)
        (z / "name").write_text(name + "\n")
        (z / "energy_uj").write_text(f"{uj}\n")
        (z / "max_energy_range_uj").write_text(f"{span}\n")
    return root


def test_rapl_reads_packages_and_dram_not_cores_or_psys(tmp_path):
    root = powercap(tmp_path, {"intel-rapl:0": ("package-0", 5_000_000), "intel-rapl:0:0": ("core", 1),
                               "intel-rapl:0:1": ("dram", 2_000_000), "intel-rapl:1": ("package-1", 7_000_000),
                               "intel-rapl:2": ("psys", 9)})
    (root / "intel-rapl-mmio:0").mkdir()  # the same package again, through MMIO: not counted
    meter, why = energy.make_meter("cpu", [], root=root)
    assert why == "" and meter.source == "rapl"
    assert meter.domains == ["package-0", "dram(intel-rapl:0:1)", "package-1"]
    assert meter.read()["values"] == [5.0, 2.0, 7.0] and meter.ranges == [262143.32885] * 3


def test_rapl_absent_or_unreadable_says_why_and_how(tmp_path, monkeypatch):
    meter, why = energy.make_meter("cpu", [], root=tmp_path / "none")
    assert meter is None and why.startswith("not measured: no RAPL package zone under")
    root = powercap(tmp_path / "pc", {"intel-rapl:0": ("package-0", 1)})
    real = Path.read_text

    def denied(self, *a, **k):  # as for a user other than root since Linux 5.10 (root here reads anything)
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", denied)
    meter, why = energy.make_meter("cpu", [], root=root)
    assert meter is None and "intel-rapl:0/energy_uj is not readable by this user" in why
    assert why.endswith(f"`sudo chmod o+r {root}/intel-rapl:*/energy_uj {root}/intel-rapl:*/intel-rapl:*/energy_uj`")


def test_rapl_files_that_hold_no_number_or_no_name_are_named(tmp_path, monkeypatch):
    root = powercap(tmp_path / "a", {"intel-rapl:0": ("package-0", 1)})
    (root / "intel-rapl:0" / "energy_uj").write_text("12.5\n")
    meter, why = energy.make_meter("cpu", [], root=root)
    assert meter is None and "intel-rapl:0/energy_uj: '12.5' is not a whole number of microjoules" in why
    root = powercap(tmp_path / "b", {"intel-rapl:0": ("package-0", 1)})
    (root / "intel-rapl:0" / "max_energy_range_uj").write_text("0\n")
    meter, _ = energy.make_meter("cpu", [], root=root)
    assert meter.ranges == [None]  # no range: a step back fails the figure, never a wrap from nothing
    root = powercap(tmp_path / "c", {"intel-rapl:0": ("package-0", 1)})
    (root / "intel-rapl:0" / "name").unlink()
    meter, why = energy.make_meter("cpu", [], root=root)
    assert meter is None and "intel-rapl:0/name cannot be read" in why and "virtual machine" not in why
    (root / "intel-rapl:0" / "name").write_bytes(b"\xff\xfe")  # not text
    assert "intel-rapl:0/name cannot be read" in energy.make_meter("cpu", [], root=root)[1]


def test_this_machine_says_measured_or_why_not():
    """On this project's VMs there is no powercap tree: not measured, with that reason; where RAPL is
    readable, a meter."""
    meter, why = energy.make_meter("cpu", [])
    if not energy.POWERCAP.exists() and not os.environ.get(energy.POWERCAP_ENV):
        assert meter is None and why == ("not measured: no RAPL package zone under /sys/class/powercap (no powercap "
                                         "driver: a virtual machine, a container without /sys, or a CPU without RAPL)")
    else:
        assert (meter is not None and why == "") or (meter is None and why.startswith("not measured: "))


class FakeRapl:
    """A powercap tree whose package counter advances at WATTS, written by a thread, as the kernel would."""

    def __init__(self, root: Path, watts: float) -> None:
        self.zone = powercap(root, {"intel-rapl:0": ("package-0", 0)}) / "intel-rapl:0"
        self.watts, self.uj, self.stop, self.broken = watts, 0.0, threading.Event(), False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.monotonic()
        while not self.stop.wait(0.005):
            now = time.monotonic()
            self.uj += self.watts * (now - last) * 1e6
            last = now
            if not self.broken:
                tmp = self.zone / "energy_uj.tmp"
                tmp.write_text(f"{int(self.uj)}\n")
                os.replace(tmp, self.zone / "energy_uj")

    def __enter__(self) -> "FakeRapl":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


@pytest.mark.torch
def test_a_real_case_measures_energy_and_a_broken_counter_fails_only_the_figure(tmp_path, monkeypatch):
    """torch-mobilenet_v2 on a tiny bundle, two rounds, priced: the first round's joules are the fake
    package's watts times the fine-tune's run; in the second, the counter's file vanishes after the first
    epoch: the energy figure says why it is missing, and the case itself is still sound."""
    pytest.importorskip("torch")
    from bench_fixtures.config import resolve
    from bench_fixtures.runner.experiment import Experiment, telemetry_problems
    from tests.helpers import tiny_bundle
    cfg = resolve(dict(profile="smoke", device="cpu", batch_size=16, epochs=2, price_per_hour=3.6), gpu_count=0)
    bundle = tiny_bundle(tmp_path / "bundle", n_train=64, batch=16, epochs=2)
    monkeypatch.setenv(energy.POWERCAP_ENV, str(tmp_path / "powercap"))
    exp = Experiment("torch", "mobilenet_v2", cfg, bundle, tmp_path)
    with FakeRapl(tmp_path / "powercap", watts=40.0) as rapl:
        def break_counter(name, event):
            if event.get("epoch") == 0 and len(exp.rounds) == 2:
                rapl.broken = True
                (rapl.zone / "energy_uj").unlink()
        try:
            exp.load()
            exp.worker.on_progress = break_counter
            infos = []
            for _ in range(2):
                exp.start_round()
                exp.fine_tune()
                exp.predict_after()
                infos.append(exp.finetune_info())
        finally:
            exp.close()
    first, second = infos
    e1 = first["energy"]
    assert e1["measured"] and e1["source"] == "rapl", e1
    # the fake's watts over the record's own run_start..run_stop (the parent's finetune_s holds the pipe's
    # round trip too); what is left is the writer thread's lag at the two ends
    assert e1["mean_power_w"] == pytest.approx(40.0, rel=0.15)
    assert e1["per_image_j"] == pytest.approx(e1["finetune_j"] / 128)
    assert first["cost"]["finetune"] == pytest.approx(first["finetune_s"] * 3.6 / 3600)
    e2 = second["energy"]
    assert rapl.broken
    assert second["rounds"][1]["energy_j"] is None and second["rounds"][0]["energy_j"] == e1["finetune_j"]
    assert not e2["measured"] and e2["finetune_j"] is None, e2  # one round failed: the case's figure fails
    assert e2["reason"].startswith("round 2 of 2: not measured: package-0: ") and "energy reads failed" in e2["reason"]
    assert not [p for p in telemetry_problems(second, "finetune") if "energy" in p]  # the case stands
    assert second["accuracy_after"] is not None


def test_a_cpu_run_says_why_energy_is_not_measured_and_prices_its_time(saved_runs):
    """The saved smoke runs (this machine, a user's): energy measured where RAPL is readable, else
    'not measured' with the reason and no joules; the second run, priced at 2.5 per hour, costs its
    fine-tune's time and a 50-epoch run's projected time at that price."""
    from bench_fixtures.analysis.results import read_run
    unpriced, priced = (read_run(p).select("test_finetune")[("torch", "mobilenet_v2")] for p in saved_runs)
    for c in (unpriced, priced):
        en = c.energy
        assert en is not None and en["version"] == energy.ENERGY_VERSION
        if en["measured"]:
            assert en["source"] == "rapl" and c.energy_j > 0 and c.energy_per_image > 0
        else:
            assert c.energy_j is None and en["finetune_j"] is None and en["per_image_j"] is None
            assert en["reason"].startswith("not measured: ") and c.energy_reason == en["reason"]
    assert unpriced.cost is None
    cost, times = priced.cost, [r["finetune_s"] for r in priced.rounds]
    assert cost["price_per_hour"] == 2.5 and cost["horizon_epochs"] == 50
    assert cost["finetune"] == pytest.approx(statistics.median(times) * 2.5 / 3600)
    fifty = next(p for p in priced.projection["projected"] if p["epochs"] == 50)
    assert cost["horizon"] == pytest.approx(fifty["total_s"] * 2.5 / 3600)
