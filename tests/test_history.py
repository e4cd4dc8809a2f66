"""`bench history`: change points found where they are, attributed to what changed, never in noise."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_fixtures.analysis import history
from tests.test_gate import bench, run_of, scaled, with_energy

ROOT = Path(__file__).resolve().parent.parent
FINETUNE = "test_finetune[torch-mobilenet_v2]"
START = datetime(2026, 11, 1, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- the detector alone

# The detector's errors are rare, not impossible (measured over 3,000 random series each: 2 false alarms
# on flat ones, 1 step placed wrong): the examples are fixed (derandomize), so the suite never flakes.
@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(8, 30), st.floats(1e-3, 1e3), st.integers(0, 2**32 - 1))
def test_a_flat_series_has_no_change_point(n, level, seed):
    noise = np.random.default_rng(seed).normal(0, 0.01, n)  # 1% noise around one level
    assert history.change_points(list(level * np.exp(noise))) == []


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(8, 30), st.data(), st.floats(0.25, 1.0), st.floats(1e-3, 1e3), st.integers(0, 2**32 - 1))
def test_a_clear_step_is_found_at_its_run(n, data, step, level, seed):
    at = data.draw(st.integers(history.MIN_SIZE, n - history.MIN_SIZE))
    noise = np.random.default_rng(seed).normal(0, 0.01, n)
    values = level * np.exp(noise) * np.where(np.arange(n) >= at, 1 + step, 1.0)
    found = history.change_points(list(values))
    assert [i for i, _ in found] == [at] and found[0][1] < history.ALPHA


def test_a_step_below_the_smallest_change_never_stands():
    values = [1.0] * 6 + [1.01] * 6  # flat levels (p = 0) but a 1% move: under MIN_CHANGE
    assert history.change_points(values) == []
    assert [i for i, _ in history.change_points([1.0] * 6 + [1.05] * 6)] == [6]


def test_a_step_of_exactly_the_smallest_change_does_not_stand():
    assert history.change_points([1.0] * 8 + [1.02] * 8) == []
    assert history.change_points([0.30] * 8 + [0.31] * 8, "points") == []


def test_a_step_is_found_whatever_the_unit():
    """A flat 3% step in bytes (peak memory, ~2**30) is found as in seconds: the noise floor is 0.1% of
    the figure, not of its logarithm."""
    for level in (1.0, 600.0, 800 * 2**20):
        assert [i for i, _ in history.change_points([level] * 8 + [level * 1.03] * 8)] == [8], level


def test_two_slow_runs_in_a_row_are_a_blip_not_two_changes():
    values = [1.0, 1.01, 0.99, 1.0, 1.02, 1.0, 0.99, 1.5, 1.51, 1.0, 1.01, 0.99, 1.0, 1.02, 1.0, 0.99]
    assert history.change_points(values) == []


def test_points_metrics_move_in_points():
    acc = [0.60, 0.61, 0.60, 0.61, 0.55, 0.54, 0.55, 0.54]
    assert [i for i, _ in history.change_points(acc, "points")] == [4]


# --------------------------------------------------------------------------- real runs, planted changes

def _history_of(template: dict, factors: list[float], tmp: Path, torch_from: int | None = None,
                precision_from: int | None = None) -> list[Path]:
    """Runs made of TEMPLATE (a real run), the i-th FACTORS[i] times slower, an hour apart; torch
    2.15.0 from run TORCH_FROM on; bf16 precision from PRECISION_FROM on."""
    paths = []
    for i, k in enumerate(factors):
        run = copy.deepcopy(template)
        for b in run["benchmarks"]:
            scaled(b, k)
            if isinstance(b["extra_info"].get("disturbance"), dict):  # the template's load is not this test's
                b["extra_info"]["disturbance"].update(disturbed=False, reasons=[])
        run["datetime"] = (START + timedelta(hours=i)).isoformat()
        if torch_from is not None and i >= torch_from:
            run["machine_info"]["packages"]["torch"] = "2.15.0"
        if precision_from is not None and i >= precision_from:
            run["bench_config"]["precision"] = "bf16"
        path = tmp / f"run{i:02d}.json"
        path.write_text(json.dumps(run))
        paths.append(path)
    return paths


def _noise(n: int, seed: int = 0, sd: float = 0.02) -> list[float]:
    return list(np.exp(np.random.default_rng(seed).normal(0, sd, n)))


def test_a_planted_step_is_found_at_its_run_and_attributed_to_the_versions_that_changed(saved_runs, tmp_path):
    template = json.loads(saved_runs[0].read_text())
    factors = [k * (1.25 if i >= 5 else 1.0) for i, k in enumerate(_noise(10))]
    paths = _history_of(template, factors, tmp_path, torch_from=5)
    lines: list[str] = []
    series, changes = history.analyse([str(p) for p in reversed(paths)], history.ALPHA, ["time"], lines)
    assert len(series) == 1 and [r.path for r in series[0].runs] == paths  # sorted by their own time
    found = [c for c in changes if c.case == FINETUNE]
    assert [(c.metric, c.at) for c in found] == [("time", 5)]
    assert 0.15 < found[0].size < 0.35
    assert any(w.startswith("packages.torch '2.14.1' → '2.15.0'") or "packages.torch" in w
               for w in found[0].what_changed), found[0].what_changed


def test_identical_runs_give_no_change_point(saved_runs, tmp_path):
    template = json.loads(saved_runs[0].read_text())
    paths = _history_of(template, _noise(12, seed=3, sd=0.03), tmp_path)
    (tmp_path / "run00.telemetry").mkdir()
    (tmp_path / "run00.telemetry" / "finetune-torch-mobilenet_v2.json").write_text("{}")  # a timeline, not a run
    lines: list[str] = []
    _, changes = history.analyse([str(tmp_path)], history.ALPHA, list(history.METRICS_FOLLOWED), lines)
    assert changes == [] and lines == []
    assert len(paths) == 12


def test_runs_of_another_precision_are_another_series_said_in_one_line(saved_runs, tmp_path):
    template = json.loads(saved_runs[0].read_text())
    paths = _history_of(template, [1.0] * 4 + [1.6] * 4, tmp_path, precision_from=4)
    lines: list[str] = []
    series, changes = history.analyse([str(p) for p in paths], history.ALPHA, ["time"], lines)
    assert len(series) == 2 and changes == []  # a new precision is another experiment, not a regression
    split = history.split_lines(series)
    assert split[0].startswith("split into 2 series") and "by precision" in split[0]


def test_a_time_outside_the_calendar_is_refused_in_one_line_and_news_is_the_newest_runs(saved_runs, tmp_path):
    template = json.loads(saved_runs[0].read_text())
    (tmp_path / "a").mkdir()
    fp32 = _history_of(template, [1.0] * 4 + [1.5] * 4, tmp_path / "a", torch_from=4)
    odd = json.loads(fp32[0].read_text())
    odd["datetime"] = "9999-12-31T23:59:59-05:00"  # past the year 9999 in UTC
    (tmp_path / "a" / "odd.json").write_text(json.dumps(odd))
    later = copy.deepcopy(template)
    later["bench_config"]["precision"] = "bf16"
    later["datetime"] = (START + timedelta(days=1)).isoformat()
    (tmp_path / "a" / "bf16.json").write_text(json.dumps(later))
    lines: list[str] = []
    series, changes = history.analyse([str(tmp_path / "a")], history.ALPHA, ["time"], lines)
    assert [line for line in lines if "odd.json" in line][0].startswith("refused:")
    assert len(series) == 2 and any(c.at == 4 for c in changes)
    assert not any(history.is_new(c, series) for c in changes)  # the newest run is the bf16 one: not their news


def test_malformed_and_disturbed_runs_are_refused_or_left_out_with_one_line_each(saved_runs, tmp_path):
    template = json.loads(saved_runs[0].read_text())
    paths = _history_of(template, _noise(6), tmp_path)
    paths[1].write_text(paths[1].read_text()[:200])  # truncated
    busy = json.loads(paths[2].read_text())
    b = next(b for b in busy["benchmarks"] if b["name"] == FINETUNE)
    b["extra_info"]["disturbance"].update(disturbed=True, reasons=["other processes used 50% of the machine's CPU"])
    paths[2].write_text(json.dumps(busy))
    lines: list[str] = []
    series, _ = history.analyse([str(tmp_path)], history.ALPHA, ["time"], lines)
    assert len(series[0].runs) == 5
    refused = [line for line in lines if line.startswith("refused:")]
    left = [line for line in lines if line.startswith("left out:")]
    assert len(refused) == 1 and "run01.json" in refused[0] and "\n" not in refused[0]
    assert len(left) == 1 and FINETUNE in left[0] and "disturbed" in left[0]


def test_the_command_writes_the_summary_the_figures_and_warns_on_a_new_change(saved_runs, tmp_path):
    template = json.loads(saved_runs[0].read_text())
    folder = tmp_path / "stored"
    folder.mkdir()
    factors = [k * (1.5 if i >= 5 else 1.0) for i, k in enumerate(_noise(8, seed=1))]
    _history_of(template, factors, folder, torch_from=5)
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    r = subprocess.run([sys.executable, "-m", "bench_fixtures", "history", str(folder), "--out", str(tmp_path / "h"),
                        "--summary", str(summary), "--metric", "time", "peak_memory"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={**_env(), "GITHUB_ACTIONS": "true"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "::warning title=Change point::" + FINETUNE in r.stdout
    md = (tmp_path / "h" / "history.md").read_text()
    assert "| " + FINETUNE + " | time | run 6" in md and "**new**" in md and "packages.torch" in md
    assert "Figures of this history: `history_time.png`" in md
    assert summary.read_text().startswith("# earlier step\n## Benchmark history")
    assert (tmp_path / "h" / "history_time.png").stat().st_size > 10_000
    assert (tmp_path / "h" / "history_peak_memory.png").is_file()


@pytest.mark.parametrize("args, needle", [
    (["/nonexistent/run.json"], "no run file could be read (refused: /nonexistent/run.json: no such file"),
    (["--alpha", "0.5", "x.json"], "argument --alpha: 0.5: must lie in [1e-09, 0.1]"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle):
    r = subprocess.run([sys.executable, "-m", "bench_fixtures", "history", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=_env())
    assert r.returncode == 2 and needle in r.stderr.strip().splitlines()[-1], r.stdout + r.stderr
    assert r.stdout == ""  # nothing half-done: no summary of a history that was not read


def _env() -> dict:
    import os
    return {k: v for k, v in os.environ.items() if k != "GITHUB_ACTIONS"}


def test_a_report_of_several_runs_shows_the_change_points(saved_runs, tmp_path):
    template = json.loads(saved_runs[0].read_text())
    factors = [k * (1.3 if i >= 4 else 1.0) for i, k in enumerate(_noise(8, seed=2))]
    paths = _history_of(template, factors, tmp_path, torch_from=4)
    r = subprocess.run([sys.executable, "-m", "bench_fixtures", "report", *map(str, paths), "--out",
                        str(tmp_path / "rep")], cwd=ROOT, capture_output=True, text=True, timeout=600, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "### Benchmark history: change points" in md and "| " + FINETUNE + " | time | run 5" in md
    assert "![history_time.png](history_time.png)" in md and (tmp_path / "rep" / "history_time.png").is_file()


def test_energy_per_image_is_followed_when_asked(tmp_path, capsys):
    """Off by default as in the gate (it mostly restates a change in time); --metric energy_per_image
    follows it: a 20% step in joules per image, at constant time, is found at its run."""
    assert "energy_per_image" not in history.METRICS_FOLLOWED and "energy_per_image" in history.METRICS_OFFERED
    for i, joules in enumerate([0.050, 0.051, 0.049, 0.050, 0.060, 0.061, 0.059, 0.060]):
        case = with_energy(bench(FINETUNE, [1.0] * 3), joules)
        case["extra_info"].update(framework="torch", model="mobilenet_v2")
        run = run_of([case])
        run["datetime"] = (START + timedelta(hours=i)).isoformat()
        (tmp_path / f"run{i}.json").write_text(json.dumps(run))
    assert history.main([str(tmp_path)]) == 0
    assert "No change point" in capsys.readouterr().out
    assert history.main([str(tmp_path), "--metric", "energy_per_image"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {FINETUNE} |")]
    assert len(rows) == 1 and rows[0].startswith(f"| {FINETUNE} | energy_per_image | run 5 ("), rows
    assert "0.05 J → 0.06 J | +20.0% |" in rows[0], rows
