"""One validator for every reader (#29): `bench gate` and `bench report` refuse the same hostile run
and timeline files with the same one line (the file, the field as a JSON path, the fix), exit 2,
never a traceback, a hang or a partial output; the gate's own holes (duplicates by name, --alpha,
zero figures) and disturbed cases. Everything runs on crafted runs (no worker), mostly in-process."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bench_fixtures.analysis import gate, report
from bench_fixtures.analysis.results import MAX_RUN_BYTES, MAX_TELEMETRY_BYTES, SCHEMA_KEY, SCHEMA_VERSION

from .test_report import crafted_run

ROOT = Path(__file__).resolve().parents[1]
REASON = "other processes used 41% of the machine's CPU while it was timed (over 10%; steal 0%, run queue 4.1 on 2 cores)"
DISTURBED = dict(version=1, disturbed=True, reasons=[REASON, "epoch 1: other processes used 44% of the machine's CPU"],
                 threshold=dict(other_share=0.1, epoch_min_s=2.0, gpu_other_processes=0),
                 cpu=dict(samples=30, other_share_mean=0.41, other_share_p95=0.6, steal_share_mean=0.0,
                          run_queue_mean=4.1, cores=2),
                 gpu=None, epochs=[dict(epoch=0, seconds=1.0, other_share_mean=0.4, judged=False, disturbed=False)],
                 measured=True)
QUIET = dict(DISTURBED, disturbed=False, reasons=[], cpu=dict(DISTURBED["cpu"], other_share_mean=0.01))


def call(main, args: list[str]) -> tuple[int, str, str]:
    """A tool's main(argv) as `bench TOOL` runs it: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def valid(folder: Path) -> tuple[Path, dict]:
    """A crafted run both tools accept (torch and tensorflow, mobilenet_v2, timelines beside it)."""
    path = Path(crafted_run(folder, ["matched"]))
    run = json.loads(path.read_text())
    for b in run["benchmarks"]:
        b["extra_info"]["memory"] = dict(process_peak=2**30, framework_peak=None)
    path.write_text(json.dumps(run))
    return path, run


def write(path: Path, run: dict) -> Path:
    path.write_text(json.dumps(run))  # NaN and Infinity as Python's json writes them
    return path


def refused_alike(path: Path, folder: Path, *more: str) -> str:
    """Gate (PATH against itself) and report (PATH) both refuse it: exit 2, one line naming the file,
    no traceback, nothing written. Returns the line."""
    gh, out = folder / "gh.json", folder / "out"
    g = call(gate.main, [str(path), str(path), "--github-json", str(gh), *more])
    r = call(report.main, [str(path), "--out", str(out)])
    for code, stdout, err in (g, r):
        assert code == 2, (code, stdout, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and str(path) in err, err
    assert g[2].removeprefix("gate: cannot compare: ") == r[2].removeprefix("report: ")  # the same words
    assert not out.exists() and not gh.exists()
    return r[2]


# --------------------------------------------------------------------------- run files

def _set(run: dict, dotted: str, value) -> None:
    """Set a field by its path in the run: `0.extra_info.memory.process_peak` (0: benchmarks[0])."""
    *parents, last = dotted.split(".")
    node = run["benchmarks"] if parents and parents[0].isdigit() else run
    for key in parents:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    node[last] = value


def _nested(depth: int):
    v = 1
    for _ in range(depth):
        v = [v]
    return v


MEASURED = dict(version=1, measured=True, source="rapl", method="RAPL (crafted)", domains=["package-0"], reason=None,
                problems=[], wraps=0, finetune_j=60.0, images=128, per_image_j=60.0 / 128, mean_power_w=20.0,
                domain_finetune_j=[60.0])  # an energy record the suite could write (no rounds_j: none to match)

HOSTILE = [  # (field to set, value, what the line must name)
    ("0.extra_info.energy", dict(MEASURED, finetune_j=0.0), "'extra_info.energy.finetune_j' must be above 0"),
    ("0.extra_info.energy", dict(MEASURED, measured=False, reason="not measured: x"),
     "'extra_info.energy.finetune_j' is set, but 'measured' is false"),
    ("0.extra_info.energy", dict(MEASURED, projection="x"), "'extra_info.energy.projection' must be an object"),
    ("0.extra_info.energy", dict(MEASURED, projection=dict(measured="x")),
     "'extra_info.energy.projection.measured' must be an object"),
    ("0.extra_info.energy", dict(MEASURED, method=5), "'extra_info.energy.method' must be text"),
    ("0.extra_info.energy", dict(MEASURED, domain_finetune_j=[30.0, 30.0]), "holds 2 figure(s) for 1 domain(s)"),
    ("0.extra_info.energy", dict(MEASURED, per_image_j=500.0), "but finetune_j / images is 0.46875"),
    ("0.extra_info.energy", dict(MEASURED, version=99), "newer than this suite reads"),
    ("0.extra_info.energy", dict(MEASURED, source="smart-plug"), "'extra_info.energy.source' must be an energy source"),
    ("0.extra_info.energy", dict(MEASURED, rounds_j=[55.0]), "60 is none of the rounds' joules (rounds_j)"),
    ("0.extra_info.cost", dict(price_per_hour=-1.0), "'extra_info.cost.price_per_hour' must be above 0"),
    ("bench_config.price_per_hour", "free", "'bench_config.price_per_hour' must be a number"),
    ("0.extra_info.overhead_projection", [1], "'extra_info.overhead_projection' must be an object"),
    ("0.extra_info.telemetry_file", 3, "'extra_info.telemetry_file' must be a non-empty string"),
    ("dx", "x", "'dx' must be an object"),
    ("dx.torch", dict(import_s="1.2"), "'dx.torch.import_s' must be a number"),
    ("machine_info.gpus", "x", "'machine_info.gpus' must be a list"),
    ("machine_info.packages", dict(torch=2.1), "'machine_info.packages.torch' must be a version string"),
    ("0.extra_info.telemetry_problems", 3, "'extra_info.telemetry_problems' must be a list"),
    ("0.extra_info.telemetry_flags", [3], "'extra_info.telemetry_flags[0]' must be a string"),
    ("0.extra_info.setup", ["matched"], "'extra_info.setup' must be a setup's name"),
    ("0.extra_info.epochs", 10**400, "'extra_info.epochs' must be a whole number in 1..10,000, found a 401-digit"),
    ("0.extra_info.epochs", 2.0, "'extra_info.epochs' must be a whole number"),
    ("0.extra_info.test_size", 10**400, "'extra_info.test_size' must be a whole number"),
    ("0.extra_info.memory.process_peak", 0, "'extra_info.memory.process_peak' must be above 0"),
    ("0.extra_info.memory.framework_peak", 3, "'extra_info.memory.framework_peak' must be at least 1 MiB"),
    ("0.extra_info.time_to_first_step_s", 0, "'extra_info.time_to_first_step_s' must be above 0"),
    ("0.extra_info.train_images_per_s", -3.0, "'extra_info.train_images_per_s' must be above 0"),
    ("0.extra_info.accuracy_after", True, "'extra_info.accuracy_after' must be a number, found true"),
    ("0.extra_info.epoch_times_s", [3.0, math.nan], "'extra_info.epoch_times_s[1]' must be finite"),
    ("0.extra_info.framework", "mxnet", "'extra_info.framework' must be a framework this suite runs"),
    ("0.extra_info.model", "alexnet", "'extra_info.model' must be a model this suite runs"),
    ("0.stats", dict(median=1e308, rounds=1, data=[1e308]), "'stats.median' must lie in"),
    ("0.stats.median", "20", "'stats.median' must be a number"),
    ("0.extra_info.rounds_summary", dict(finetune_s=dict(n=1, min=1.0, max=1.0, spread=0.0)),
     "'extra_info.rounds_summary.finetune_s.median' must be a number, found nothing (the key is missing)"),
    ("0.extra_info.time_to_accuracy", dict(wall_s=3.0), "'extra_info.time_to_accuracy.reached' must be true or false"),
    ("0.extra_info.disturbance", dict(DISTURBED, disturbed="yes"), "'extra_info.disturbance.disturbed' must be true"),
    ("0.extra_info.disturbance", dict(DISTURBED, reasons="busy"), "'extra_info.disturbance.reasons' must be a list"),
    ("0.extra_info.disturbance", dict(DISTURBED, cpu=dict(other_share_mean=math.inf)),
     "'extra_info.disturbance.cpu.other_share_mean' must be finite"),
    ("0.extra_info.distributed", "DDP", "'extra_info.distributed' must be an object"),
    ("0.extra_info.steps_per_round", "10", "'extra_info.steps_per_round' must be a whole number"),
    ("0.extra_info.settings", dict(bn_eps=_nested(40)), "nests deeper than any file this suite writes"),
    ("0.extra_info.something_new", -math.inf, "'extra_info.something_new' must be finite, found -inf"),
    ("0.name", "test_finetune[torch-vgg19]", "'name' is the string 'test_finetune[torch-vgg19]', but 'fullname'"),
    ("bench_config.replicas", "2", "'bench_config.replicas' must be a whole number"),
    ("bench_config.setup", ["matched"], "'bench_config.setup' must be a non-empty string"),
    ("bench_config.overrides", [1], "'bench_config.overrides' must be an object"),
    ("datetime", 5, "'datetime' must be a string"),
]


@pytest.mark.parametrize("field,value,named", HOSTILE, ids=[f"{f}={str(v)[:12]}" for f, v, _ in HOSTILE])
def test_a_hostile_run_is_refused_alike_by_the_gate_and_the_report(tmp_path, field, value, named):
    path, run = valid(tmp_path / "run")
    _set(run, field, value)
    line = refused_alike(write(path, run), tmp_path)
    assert named in line, line
    assert "rerun the benchmark" in line  # the fix
    if field[0].isdigit():  # a field inside a benchmark: its test, and its full JSON path
        assert "test_finetune[" in line and f"(at benchmarks[{field[0]}]." in line, line


def test_a_measured_energy_record_and_its_cost_are_read_back(tmp_path):
    """The base the energy rows above break: accepted, and read through the accessors."""
    from bench_fixtures.analysis.results import read_run
    path, run = valid(tmp_path / "run")
    _set(run, "0.extra_info.energy", MEASURED)
    _set(run, "0.extra_info.cost", dict(price_per_hour=2.5, finetune=0.01, horizon_epochs=50, horizon=0.2))
    c = read_run(write(path, run)).cases[0]
    assert c.energy_j == 60.0 and c.energy_per_image == pytest.approx(60.0 / 128) and c.cost["horizon"] == 0.2


def test_a_run_from_a_newer_suite_is_refused_with_the_fix(tmp_path):
    """A schema this suite does not know yet: refused alike before any field is judged (its fields may
    be new), one line naming the file and the fix; a schema key that is no version is a bad field."""
    path, run = valid(tmp_path / "run")
    run[SCHEMA_KEY] = SCHEMA_VERSION + 1
    run["benchmarks"][0]["extra_info"]["memory"] = "a shape this suite does not know"
    line = refused_alike(write(path, run), tmp_path)
    assert f"'{SCHEMA_KEY}' is {SCHEMA_VERSION + 1}: written by a newer version of this suite" in line, line
    assert "upgrade the suite" in line and "memory" not in line, line
    run[SCHEMA_KEY] = "2"
    assert f"'{SCHEMA_KEY}' must be a whole number" in refused_alike(write(path, run), tmp_path)


def test_an_old_run_is_upgraded_in_one_place_and_reads_as_a_new_one(tmp_path):
    """A run without the schema key is version 1: what its config and cases lack ran with
    settings.ABSENT, and its train-step rounds get rates from pytest-benchmark's round times. The
    gate then finds nothing to tell it from the same run written today."""
    from bench_fixtures.analysis.results import Run, read_run, upgrade
    from bench_fixtures.settings import ABSENT
    path, run = valid(tmp_path / "run")
    run["bench_config"].update(ABSENT)  # as today's plugin writes it: every setting
    for b in run["benchmarks"]:
        b["extra_info"].update(setup="matched", replicas=1, train_layers="all")
    new = write(tmp_path / "new.json", dict(run, **{SCHEMA_KEY: SCHEMA_VERSION}))
    old = copy.deepcopy(run)
    for key in ABSENT:
        old["bench_config"].pop(key, None)
    for b in old["benchmarks"]:
        for key in ("setup", "replicas", "train_layers"):
            b["extra_info"].pop(key, None)
    old = write(tmp_path / "old.json", old)
    old_run, new_run = read_run(old), read_run(new)
    assert (old_run.schema, new_run.schema) == (1, SCHEMA_VERSION)
    assert {k: old_run.bench_config[k] for k in ABSENT} == ABSENT
    assert old_run.setups == ["matched"] and all(c.setup == "matched" for c in old_run.cases)
    assert [c.extra_info["replicas"] for c in old_run.cases] == [1] * len(old_run.cases)
    assert gate.mismatches(old_run, new_run, "none") == []
    assert call(gate.main, [str(old), str(new)])[0] == gate.PASS
    steps = {"stats": {"median": 2.0, "data": [1.0, 2.0, 4.0]}, "fullname": "t::test_train_step[torch-vgg19]",
             "extra_info": {"framework": "torch", "model": "vgg19", "steps_per_round": 10, "batch_size": 32}}
    (case,) = Run.from_doc({"benchmarks": [steps]}).cases
    assert case.round_rates == [320.0, 160.0, 80.0]
    current = upgrade(dict(run, **{SCHEMA_KEY: SCHEMA_VERSION}))
    assert upgrade(current) is current  # nothing to do for a current run


def test_a_test_listed_twice_under_two_paths_cannot_hide_a_slowdown(tmp_path):
    """Cases are compared by name: the same test from another file 100x slower is not a second case."""
    base, run = valid(tmp_path / "run")
    slow = copy.deepcopy(run["benchmarks"][0])
    slow["fullname"] = "tests/other/test_copy.py::" + slow["name"]
    slow["stats"] = dict(median=2000.0, rounds=1, data=[2000.0])
    run["benchmarks"].insert(0, slow)
    cand = write(tmp_path / "cand.json", run)
    code, out, err = call(gate.main, [str(base), str(cand)])
    assert code == gate.CANNOT_COMPARE and "listed twice" in err and "PASS" not in out, out + err
    assert "'benchmarks[0]'" in err and "'benchmarks[1]'" in err
    same_case = copy.deepcopy(run["benchmarks"][1])  # another name, but the same case for the report
    same_case["name"] = same_case["name"].replace("]", "-copy]")
    same_case["fullname"] = same_case["fullname"].replace("]", "-copy]")
    run["benchmarks"][0] = same_case
    line = refused_alike(write(cand, run), tmp_path)
    assert "again" in line and "which one counts?" in line


@pytest.mark.parametrize("alpha", ["nan", "0", "-1", "7", "inf", "0.51", "1e-300"])
def test_alpha_outside_a_significance_level_is_refused(tmp_path, alpha):
    """--alpha 0, 7 or 1e-300 (no test reaches it) turned a 20-point accuracy drop into PASS; now it is
    exit 2 naming the option."""
    base, run = valid(tmp_path / "run")
    for b in run["benchmarks"]:
        b["extra_info"]["accuracy_after"] -= 0.2
    cand = write(tmp_path / "cand.json", run)
    code, out, err = call(gate.main, [str(base), str(cand), f"--alpha={alpha}"])
    assert code == gate.CANNOT_COMPARE and err.startswith(f"gate: cannot compare: --alpha {float(alpha):g}: ")
    assert len(err.strip().splitlines()) == 1 and out == ""
    assert call(gate.main, [str(base), str(cand), "--alpha", "0.5"])[0] == gate.REGRESSION


@pytest.mark.parametrize("field", ["memory.process_peak", "time_to_first_step_s"])
def test_a_zero_figure_in_the_candidate_is_cannot_compare_never_a_verdict(tmp_path, field):
    base, run = valid(tmp_path / "run")
    _set(run, f"0.extra_info.{field}", 0)
    code, out, err = call(gate.main, [str(base), str(write(tmp_path / "cand.json", run))])
    assert code == gate.CANNOT_COMPARE and f"'extra_info.{field}' must be above 0" in err and out == ""


# --------------------------------------------------------------------------- timeline files

def _timeline(folder: Path) -> tuple[Path, dict, Path]:
    path, run = valid(folder)
    tel = folder / run["benchmarks"][0]["extra_info"]["telemetry_file"]
    return path, run, tel


TIMELINES = [  # (what the timeline holds, what the line must name)
    ({"events": "x", "samples": []}, "'events' must be a list"),
    ({"events": [{"name": "run_start", "t_ns": "12"}], "samples": []}, "'events[0].t_ns' must be a whole number"),
    ({"events": [{"name": 3, "t_ns": 12}], "samples": []}, "'events[0].name' must be a non-empty string"),
    ({"events": [{"name": "epoch_start", "t_ns": 1, "epoch": [0]}], "samples": []}, "'events[0].epoch'"),
    ({"events": [{"name": "epoch_stop", "t_ns": 1, "epoch": 0, "memory": {"peak": "1GB"}}], "samples": []},
     "'events[0].memory.peak' must be a number"),
    ({"events": [], "samples": [{"t_ns": 1, "util": "busy"}]}, "'samples[0].util' must be a number"),
    ({"events": [], "samples": [{"t_ns": 1, "util": 0.5, "proc_mem": -1}]}, "'samples[0].proc_mem' must lie in"),
    ({"events": [], "samples": ["x"]}, "'samples[0]' must be an object"),
    ({"events": [], "samples": [{"util": 0.5}]}, "'samples[0].t_ns' must be a whole number"),
    ({"events": []}, "'samples' must be a list, found nothing"),
    ({"events": [], "samples": [], "monitor": "nvml"}, "'monitor' must be an object"),
    ([1, 2], "must be an object with 'events' and 'samples'"),
]


@pytest.mark.parametrize("content,named", TIMELINES, ids=[n.split("'")[1] if "'" in n else n[:20] for _, n in TIMELINES])
def test_a_hostile_timeline_is_refused_alike(tmp_path, content, named):
    path, run, tel = _timeline(tmp_path / "run")
    tel.write_text(json.dumps(content))
    line = refused_alike(path, tmp_path)
    assert named in line and str(tel) in line and "'extra_info.telemetry_file'" in line, line
    assert "(at benchmarks[0].extra_info.telemetry_file)" in line and "move the timeline file away" in line


@pytest.mark.parametrize("kind", ["a folder", "/dev/zero", "/dev/null", "too large", "not JSON", "a 5000-digit t_ns",
                                  "a NUL in its name", "a symlink loop"])
def test_a_timeline_that_is_no_timeline_file_is_refused_without_reading_it(tmp_path, kind):
    path, run, tel = _timeline(tmp_path / "run")
    if kind == "a folder":
        tel.unlink()
        tel.mkdir()
    elif kind.startswith("/dev/") or kind == "a NUL in its name":
        run["benchmarks"][0]["extra_info"]["telemetry_file"] = kind if kind.startswith("/") else "tel\0.json"
        write(path, run)
    elif kind == "a symlink loop":
        tel.unlink()
        tel.symlink_to(tel)
    elif kind == "too large":  # sparse: refused by its size, never read
        with open(tel, "r+b") as f:
            f.truncate(MAX_TELEMETRY_BYTES + 1)
    elif kind == "not JSON":
        tel.write_text("{\"events\": [")
    else:
        tel.write_text('{"events": [{"name": "run_start", "t_ns": ' + "9" * 5000 + '}], "samples": []}')
    line = refused_alike(path, tmp_path)
    expect = {"a folder": "is a folder, not a file", "/dev/zero": "is a character device, not a file",
              "/dev/null": "is a character device, not a file", "too large": "more than any file this suite writes",
              "not JSON": "not valid JSON", "a 5000-digit t_ns": "not a file this suite wrote",
              "a NUL in its name": "not a file name", "a symlink loop": "cannot read"}[kind]
    assert expect in line, line


def test_a_fifo_as_timeline_or_run_file_is_refused_at_once_not_waited_on(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: the tools hung. Through the real
    entry points, with a timeout so that a regression fails instead of hanging."""
    path, run, tel = _timeline(tmp_path / "run")
    tel.unlink()
    os.mkfifo(tel)
    fifo_run = tmp_path / "fifo.json"
    os.mkfifo(fifo_run)
    for args in (["gate", str(path), str(path)], ["report", str(path), "--out", str(tmp_path / "out")],
                 ["gate", str(fifo_run), str(path)]):
        r = subprocess.run([sys.executable, "-m", "bench_fixtures", *args], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and "is a FIFO (named pipe), not a file" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_run_file_that_is_too_large_or_a_device_is_refused(tmp_path):
    path, _ = valid(tmp_path / "run")
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(MAX_RUN_BYTES + 1)
    for bad, expect in ((big, "more than any file this suite writes"), (Path("/dev/zero"), "a character device")):
        code, out, err = call(gate.main, [str(path), str(bad)])
        assert code == 2 and expect in err and str(bad) in err, err
        code, out, err = call(report.main, [str(bad), "--out", str(tmp_path / "out")])
        assert code == 2 and expect in err and not (tmp_path / "out").exists(), err


# --------------------------------------------------------------------------- disturbed cases

def _with_disturbance(folder: Path, torch: dict | None, tensorflow: dict | None = QUIET) -> Path:
    path, run = valid(folder)
    for b, d in zip(run["benchmarks"], (torch, tensorflow)):
        if d is not None:
            b["extra_info"]["disturbance"] = copy.deepcopy(d)
    return write(path, run)


def test_a_disturbed_case_is_not_judged_unless_allowed(tmp_path):
    quiet = _with_disturbance(tmp_path / "quiet", QUIET)
    busy = _with_disturbance(tmp_path / "busy", DISTURBED)
    for base, cand in ((quiet, busy), (busy, quiet)):  # in the candidate or in a baseline
        code, out, err = call(gate.main, [str(base), str(cand)])
        assert code == gate.CANNOT_COMPARE and out == "", out
        assert err.strip() == (f"gate: cannot compare: disturbed: {busy} test_finetune[torch-mobilenet_v2-matched]: "
                               f"{REASON} (its times are not a clean measurement: rerun it on a quiet machine, or "
                               f"--allow-disturbed to judge it anyway)")
        code, out, err = call(gate.main, [str(base), str(cand), "--allow-disturbed"])
        assert code == gate.PASS, out + err
        assert f"WARNING: disturbed: {busy} test_finetune[torch-mobilenet_v2-matched]: {REASON}; judged anyway " \
               f"(--allow-disturbed)" in out.splitlines()
    code, out, _ = call(gate.main, [str(quiet), str(quiet)])
    assert code == gate.PASS and "WARNING" not in out and "not measured" not in out


def test_a_run_without_disturbance_records_is_judged_and_said_not_measured(tmp_path):
    old = _with_disturbance(tmp_path / "old", None, None)  # a run from before the key existed
    code, out, _ = call(gate.main, [str(old), str(old)])
    assert code == gate.PASS
    assert f"note: {old}: 2 compared case(s) without a disturbance record" in out


def test_the_report_marks_a_disturbed_case_first_and_in_its_table(tmp_path):
    path = _with_disturbance(tmp_path / "run", DISTURBED, QUIET)
    code, out, err = call(report.main, [str(path), "--out", str(tmp_path / "out")])
    assert code == 0, err
    md = (tmp_path / "out" / "report.md").read_text()
    top = md.split("## Findings")[0]
    assert f"**⚠ disturbed** (1 of 2 benchmarks)" in top and f"`test_finetune[torch-mobilenet_v2-matched]`: {REASON}; " \
                                                             f"epoch 1: other processes" in top
    lines = md.split("## mobilenet_v2\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert lines[0] == "| | torch ⚠ disturbed | tensorflow |"
    assert "| other load while timed | ⚠ disturbed: fine-tune | none above the threshold |" in lines
    old = _with_disturbance(tmp_path / "old", None, None)
    assert call(report.main, [str(old), "--out", str(tmp_path / "old-out")])[0] == 0
    md = (tmp_path / "old-out" / "report.md").read_text()
    assert "⚠" not in md and "| other load while timed | not measured | not measured |" in md


# --------------------------------------------------------------------------- the report's --out

@pytest.mark.parametrize("kind", ["an existing file", "inside a file", "an unwritable folder"])
def test_an_out_that_cannot_take_the_report_is_one_line_and_nothing_written(tmp_path, kind):
    path, _ = valid(tmp_path / "run")
    keep = tmp_path / "keep.txt"
    keep.write_text("keep me")
    if kind == "an existing file":
        out = keep
    elif kind == "inside a file":
        out = keep / "report"
    elif os.geteuid() == 0:  # root writes through mode bits: sysfs refuses even root
        out = Path("/sys/bench-report-test")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "report"
    before = sorted(p.name for p in tmp_path.iterdir())
    r = subprocess.run([sys.executable, "-m", "bench_fixtures", "report", str(path), "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("report: --out") and str(out) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""
    assert keep.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == before
    assert not out.exists() or out == keep


def test_a_failure_while_drawing_leaves_no_folder_behind(tmp_path, monkeypatch):
    """Whole or not at all: a disk that fills up while the figures are written (here: the first
    figure's write fails) leaves neither report files nor the folder this call made."""
    path, _ = valid(tmp_path / "run")

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("bench_fixtures.analysis.figures._save", full)  # every figure is written there
    code, _, err = call(report.main, [str(path), "--out", str(tmp_path / "new" / "out")])
    assert code == 2 and "No space left on device" in err and "--out" in err
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- any value, anywhere

DELETE = "<delete the key>"
WRONG = [DELETE, 0.5, 3, None, "1", 2**31, False, 0, -1, "", [1], {}, True, 0.0, [], {"a": 1}, math.nan, math.inf,
         -math.inf, 1e308, 10**400]  # some a reader may take (a fraction, a count, null = not measured), most it must not


def _leaves(node, path=()) -> list[tuple]:
    """The path of every value in NODE (a run or a timeline), objects and lists included."""
    out = [path] if path else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):  # a few items of each list: the rest are alike
            out += _leaves(v, (*path, i))
    return out


def _put(node, path: tuple, value) -> None:
    for key in path[:-1]:
        node = node[key]
    if value == DELETE:  # a missing key, nested or not
        del node[path[-1]]
    else:
        node[path[-1]] = value


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_wrong_value_anywhere_is_refused_alike_or_read_by_both(tmp_path_factory, data):
    """A valid run (or one of its timelines) with 1-2 values replaced by wrong types and absurd
    values, or removed: the gate and the report never traceback, and either both refuse the file with the same
    line or the report draws it and the gate compares it."""
    folder = tmp_path_factory.mktemp("anywhere")
    path, run = valid(folder / "run")
    tel_path = folder / "run" / run["benchmarks"][0]["extra_info"]["telemetry_file"]
    target, doc = data.draw(st.sampled_from([(path, run), (tel_path, json.loads(tel_path.read_text()))]))
    rnd = data.draw(st.randoms(use_true_random=False))  # uniform over the fields (sampled_from favours the first)
    for _ in range(rnd.randint(1, 2)):
        with contextlib.suppress(KeyError, IndexError, TypeError):  # an earlier change removed its parent
            _put(doc, rnd.choice(_leaves(doc)), copy.deepcopy(rnd.choice(WRONG)))
    write(target, doc)
    base = folder / "base"
    valid(base)
    g = call(gate.main, [str(base / "run.json"), str(path)])
    r = call(report.main, [str(path), "--out", str(folder / "out")])
    assert r[0] in (0, 2) and g[0] in (0, 1, 2)
    refused = r[0] == 2
    event("refused by both" if refused else "read by both")
    assert g[2].startswith(f"gate: cannot compare: {path}: ") == refused, (g, r)
    if refused:
        assert g[2].removeprefix("gate: cannot compare: ") == r[2].removeprefix("report: ")
        assert len(r[2].strip().splitlines()) == 1 and not (folder / "out").exists()
    else:
        assert (folder / "out" / "report.md").is_file()


@pytest.mark.parametrize("target", ["a folder", "a FIFO"])
def test_github_json_never_replaces_what_is_not_a_file(tmp_path, target):
    """The atomic write renames over its target: a FIFO (or /dev/full, as root) would be replaced."""
    path, _ = valid(tmp_path / "run")
    out = tmp_path / "gh.json"
    out.mkdir() if target == "a folder" else os.mkfifo(out)
    code, _, err = call(gate.main, [str(path), str(path), "--github-json", str(out)])
    assert code == gate.CANNOT_COMPARE and f"--github-json {out}: {out} is a" in err, err
    assert len(err.strip().splitlines()) == 1 and (out.is_dir() or out.is_fifo())


def test_a_reason_with_line_breaks_stays_one_line(tmp_path):
    """Reasons are quoted in one-line messages: their own line breaks and runs of spaces fold."""
    path = _with_disturbance(tmp_path / "run", dict(DISTURBED, reasons=["other load\n  41%", "x"]))
    code, _, err = call(gate.main, [str(path), str(path)])
    assert code == gate.CANNOT_COMPARE and len(err.strip().splitlines()) == 1
    assert "test_finetune[torch-mobilenet_v2-matched]: other load 41% (its times" in err


def test_counts_that_would_stall_a_reader_are_refused(tmp_path):
    """A million saved rounds (the gate's exact test would take minutes), a timeline with more epoch
    starts than any run has epochs (the report draws a line at each)."""
    path, run = valid(tmp_path / "run")
    _set(run, "0.stats", dict(median=20.0, rounds=10**6, data=[20.0] * 10**6))
    assert "'stats.rounds' must be a whole number in 1..100,000" in refused_alike(write(path, run), tmp_path)
    path, run, tel = _timeline(tmp_path / "run2")
    tel.write_text(json.dumps({"events": [{"name": "epoch_start", "t_ns": i, "epoch": 0} for i in range(10_001)],
                               "samples": []}))
    assert "'events' holds 10,001 epoch starts" in refused_alike(path, tmp_path)


# --------------------------------------------------------------------------- the second red team's holes

def test_a_median_left_alone_while_its_rounds_are_100x_is_refused(tmp_path):
    """The case's own rounds and pytest-benchmark's median time the same calls: one edited alone
    (the rounds 100x slower, the median kept) hid a 100x slowdown."""
    _, run = valid(tmp_path / "run")
    e = run["benchmarks"][0]["extra_info"]
    e["rounds"] = [dict(r, finetune_s=100 * r["finetune_s"]) for r in e.get("rounds") or
                   [dict(finetune_s=run["benchmarks"][0]["stats"]["median"])]]
    e["finetune_s"] = e["rounds"][-1]["finetune_s"]
    line = refused_alike(write(tmp_path / "cand.json", run), tmp_path)
    assert "is not 'stats.median'" in line and ".rounds" in line, line


def test_a_case_relabelled_as_another_framework_is_refused(tmp_path):
    _, run = valid(tmp_path / "run")
    b = run["benchmarks"][0]
    other = "tensorflow" if b["extra_info"]["framework"] == "torch" else "torch"
    b["extra_info"]["framework"] = other
    line = refused_alike(write(tmp_path / "cand.json", run), tmp_path)
    assert "are not the case" in line, line


def test_peak_memory_compares_one_quantity_on_both_sides(tmp_path):
    """A candidate with a small framework peak beside a huge process peak, against a baseline with only
    a process peak: the process peaks are compared (a 100x growth), not 10 MiB against 1 GiB."""
    base, run = valid(tmp_path / "run")
    for b in run["benchmarks"]:
        b["extra_info"]["memory"] = dict(framework_peak=10 * 2**20, process_peak=100 * 2**30)
    code, out, err = call(gate.main, [str(base), str(write(tmp_path / "cand.json", run))])
    assert code == gate.REGRESSION, out + err
    line = next(x for x in out.splitlines() if x.strip().startswith("peak_memory"))
    assert "REGRESSION" in line and "memory.process_peak" in line, line


def test_a_history_holding_the_candidate_or_a_session_twice_is_refused(tmp_path):
    """`bench gate .benchmarks/*/*.json cand.json` after an autosave: the candidate's own session in its
    history widened the band around itself (a 100x slowdown passed). One baseline that is the
    candidate compares a run with itself, and stays allowed."""
    base, run = valid(tmp_path / "run")
    run["datetime"] = "2026-12-06T10:00:00.000001+00:00"
    first = write(tmp_path / "first.json", run)
    slow = copy.deepcopy(run)
    for b in slow["benchmarks"]:
        b["stats"]["data"] = [100 * t for t in b["stats"].get("data") or [b["stats"]["median"]]]
        b["stats"]["median"] *= 100
        b["extra_info"].pop("rounds", None), b["extra_info"].pop("finetune_s", None)
    slow["datetime"] = "2026-12-06T11:00:00.000001+00:00"
    cand = write(tmp_path / "cand.json", slow)
    autosave = write(tmp_path / "autosave.json", slow)
    other_zone = write(tmp_path / "other_zone.json", dict(slow, datetime="2026-12-06T12:00:00.000001+01:00"))
    later = copy.deepcopy(slow)
    later["datetime"] = "2026-12-06T11:00:00.000002+00:00"  # a copy stamped a microsecond later: its figures
    later = write(tmp_path / "later.json", later)
    for args in ([first, autosave, cand], [first, first, cand], [first, cand, cand], [first, other_zone, cand],
                 [first, later, cand]):
        code, out, err = call(gate.main, list(map(str, args)))
        assert code == gate.CANNOT_COMPARE and "hold the same session" in err, (args, out, err)
    assert call(gate.main, [str(cand), str(cand)])[0] == gate.PASS


def test_an_empty_out_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    path, _ = valid(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    code, out, err = call(report.main, [str(path), "--out", ""])
    assert code == 2 and err == "report: --out is empty; give a folder for the report\n", err
    assert sorted(os.listdir(tmp_path)) == before
