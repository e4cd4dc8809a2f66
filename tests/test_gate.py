"""The regression gate: decisions as properties, and end to end on real saved runs."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_fixtures.analysis import gate

MACHINE = {"gpu_name": None, "cpu_model": "AMD EPYC", "packages": {"torch": "2.14.1", "tensorflow": "2.21.0"}}
CONFIG = {"profile": "smoke", "device": "cpu", "dataset": "synthetic", "epochs": 2, "batch_size": 32}


def bench(name: str, times: list[float], accuracy: float = 0.5, memory: float = 1e9, rate: float = 100.0) -> dict:
    return {"fullname": f"tests/benchmarks/test_cases.py::{name}", "name": name,
            "stats": {"median": float(np.median(times)), "data": list(times)},
            "extra_info": {"accuracy_after": accuracy, "train_images_per_s": rate,
                           "memory": {"framework_peak": None, "process_peak": memory},
                           "time_to_first_step_s": 1.0, "inter_epoch_gaps_s": [0.2, 0.2]}}


def run_of(benches: list[dict], machine=MACHINE, config=CONFIG) -> dict:
    return {"machine_info": copy.deepcopy(machine), "bench_config": dict(config), "benchmarks": benches}


times_st = st.lists(st.floats(0.5, 2.0), min_size=6, max_size=12, unique=True)


def regressions(base, cand, thresholds=None):
    verdicts, _, _ = gate.compare(base, cand, thresholds or gate.Thresholds())
    return [(v.case, v.metric) for v in verdicts if v.verdict == "REGRESSION"]


@settings(max_examples=40, deadline=None)
@given(times_st, st.floats(0, 1))
def test_identical_runs_pass(times, acc):
    run = run_of([bench("test_finetune[torch-vgg19]", times, acc)])
    assert regressions(run, copy.deepcopy(run)) == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(1.0, 1.1), min_size=8, max_size=15), st.floats(1.2, 5))
def test_slower_beyond_threshold_with_enough_rounds_fails(times, factor):
    """Enough rounds = more than the noise: 8+ rounds within 10% of each other, slowed by 20%+."""
    base = run_of([bench("a", times), bench("b", times)])
    cand = run_of([bench("a", [t * factor for t in times]), bench("b", [t * factor for t in times])])
    assert {("a", "time"), ("b", "time")} <= set(regressions(base, cand))


@settings(max_examples=40, deadline=None)
@given(times_st, st.floats(0.2, 1.0), st.floats(0, 0.5), st.floats(0.1, 1.0))
def test_improvements_never_fail(times, speedup, acc, mem_factor):
    base = run_of([bench("a", times, acc, 1e9, 100)])
    cand = run_of([bench("a", [t * speedup for t in times], min(acc + 0.1, 1), 1e9 * mem_factor, 100 / speedup)])
    assert regressions(base, cand) == []


@settings(max_examples=40, deadline=None)
@given(st.floats(0.1, 1.0), st.floats(0.021, 0.1))
def test_accuracy_drop_beyond_threshold_fails(acc, drop):
    base = run_of([bench("a", [1.0] * 6, acc)])
    cand = run_of([bench("a", [1.0] * 6, acc - drop)])
    assert ("a", "accuracy_after") in regressions(base, cand)
    assert ("a", "accuracy_after") not in regressions(base, run_of([bench("a", [1.0] * 6, acc - 0.019)]))


@settings(max_examples=40, deadline=None)
@given(times_st, st.floats(0.8, 3), st.floats(0, 0.3), st.floats(0, 0.3), st.floats(0, 0.3))
def test_thresholds_are_monotonic(times, factor, acc_drop, t1, t2):
    """If a metric fails at a threshold, it fails at every stricter (smaller) one."""
    base = run_of([bench("a", times, 0.8, 1e9, 100)])
    cand = run_of([bench("a", [t * factor for t in times], 0.8 - acc_drop, 1e9 * factor, 100 / factor)])
    lo, hi = sorted((t1, t2))
    loose, strict = gate.Thresholds(), gate.Thresholds()
    for metric in gate.METRICS:
        loose.defaults[metric] = hi * (100 if metric == "accuracy_after" else 1)
        strict.defaults[metric] = lo * (100 if metric == "accuracy_after" else 1)
    assert set(regressions(base, cand, loose)) <= set(regressions(base, cand, strict))


def test_time_is_not_significant_on_overlapping_noise():
    base = run_of([bench("a", [1.0, 1.5, 1.1, 1.4, 1.2, 1.3])])
    cand = run_of([bench("a", [1.45, 1.05, 1.6, 1.15, 1.35, 1.25])])  # median +12%, same spread
    (v,) = [v for v in gate.compare(base, cand, gate.Thresholds())[0] if v.metric == "time"]
    assert v.verdict == "ok" and "Mann-Whitney" in v.note


def test_thresholds_per_test_from_toml(tmp_path):
    cfg = tmp_path / "gate.toml"
    cfg.write_text('[thresholds]\ntime = 0.5\n[tests."a"]\ntime = 0.05\naccuracy_after = 10\n')
    t = gate.Thresholds()
    t.load(str(cfg))
    assert (t.get("a", "time"), t.get("b", "time"), t.get("a", "accuracy_after"), t.get("b", "peak_memory")) == \
        (0.05, 0.5, 10, 0.10)
    cfg.write_text('[thresholds]\nspeed = 1\n')
    with pytest.raises(gate.GateError, match="unknown metric 'speed'"):
        gate.Thresholds().load(str(cfg))


def test_mismatch_rules():
    base = run_of([bench("a", [1.0])])
    upgraded = run_of([bench("a", [1.0])], machine=dict(MACHINE, packages={"torch": "2.15.0", "tensorflow": "2.21.0"}))
    assert gate.mismatches(base, upgraded, "none") == ["machine_info.packages.torch: '2.14.1' vs '2.15.0'"]
    assert gate.mismatches(base, upgraded, "versions") == []
    other_gpu = run_of([bench("a", [1.0])], machine=dict(MACHINE, gpu_name="NVIDIA T4"))
    assert gate.mismatches(base, other_gpu, "versions") == ["machine_info.gpu_name: None vs 'NVIDIA T4'"]
    assert gate.mismatches(base, other_gpu, "all") == []


# --------------------------------------------------------------------------- end to end

ROOT = Path(__file__).resolve().parents[1]


def gate_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench_fixtures.gate", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


LOOSE = ["--threshold", "time=0.5", "--threshold", "throughput=0.5", "--threshold", "time_to_first_step=1",
         "--threshold", "peak_memory=0.25"]  # two runs on a shared 2-core machine: noise, not regressions


def test_gate_passes_two_real_runs(saved_runs, tmp_path):
    r = gate_cli(*saved_runs, *LOOSE, "--github-json", tmp_path / "gh.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test_finetune[torch-mobilenet_v2]" in r.stdout and "PASS" in r.stdout
    smaller = json.loads((tmp_path / "gh.json").read_text())
    bigger = json.loads((tmp_path / "gh.bigger.json").read_text())
    assert any(e["name"].endswith(" time") for e in smaller)
    assert any(e["name"].endswith(" accuracy_after") for e in bigger)
    assert all({"name", "unit", "value"} <= e.keys() for e in smaller + bigger)


def test_gate_names_a_slowed_case_and_an_accuracy_drop(saved_runs, tmp_path):
    run = json.loads(saved_runs[1].read_text())
    b = next(b for b in run["benchmarks"] if b["name"].startswith("test_finetune"))
    b["stats"]["data"] = [t * 3 for t in b["stats"]["data"]]
    b["stats"]["median"] *= 3
    b["extra_info"]["accuracy_after"] -= 0.2
    cand = tmp_path / "slow.json"
    cand.write_text(json.dumps(run))
    r = gate_cli(saved_runs[0], cand, *LOOSE)
    assert r.returncode == 1, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert "REGRESSION" in last and "test_finetune[torch-mobilenet_v2] time" in last
    assert "test_finetune[torch-mobilenet_v2] accuracy_after" in last


def test_gate_refuses_another_machine(saved_runs, tmp_path):
    run = json.loads(saved_runs[1].read_text())
    run["machine_info"]["gpu_name"] = "NVIDIA A100-SXM4-80GB"
    cand = tmp_path / "a100.json"
    cand.write_text(json.dumps(run))
    r = gate_cli(saved_runs[0], cand)
    assert r.returncode == 2 and "machine_info.gpu_name" in r.stderr and "--allow-mismatch" in r.stderr


def test_gate_refuses_a_truncated_file(saved_runs, tmp_path):
    text = saved_runs[1].read_text()
    cand = tmp_path / "truncated.json"
    cand.write_text(text[: len(text) // 2])
    r = gate_cli(saved_runs[0], cand)
    assert r.returncode == 2
    assert "truncated.json: not valid JSON" in r.stderr and "Traceback" not in r.stderr


def test_gate_missing_case_is_cannot_compare(saved_runs, tmp_path):
    run = json.loads(saved_runs[1].read_text())
    run["benchmarks"] = []
    cand = tmp_path / "empty.json"
    cand.write_text(json.dumps(run))
    r = gate_cli(saved_runs[0], cand, *LOOSE)
    assert r.returncode == 2 and "MISSING from the candidate: test_finetune[torch-mobilenet_v2]" in r.stdout
    assert "MISSING from the candidate: test_train_step[torch-mobilenet_v2]" in r.stdout


def test_pytest_benchmark_compare_reads_the_storage(saved_runs):
    store = saved_runs[0].parent.parent
    r = subprocess.run([sys.executable, "-m", "pytest_benchmark", "--storage", f"file://{store}", "compare"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("test_finetune[torch-mobilenet_v2]") == 2
    assert r.stdout.count("test_train_step[torch-mobilenet_v2]") == 2
