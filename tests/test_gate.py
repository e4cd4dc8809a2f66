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
    assert v.verdict == "ok" and "Mann-Whitney" in v.rule and "p=" in v.note


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


def test_the_setups_are_never_compared_with_each_other():
    """matched and defaults answer different questions; runs from before `setup` existed were matched."""
    old = run_of([bench("a", [1.0])], config={k: v for k, v in CONFIG.items() if k != "setup"})
    matched = run_of([bench("a", [1.0])], config=dict(CONFIG, setup="matched"))
    defaults = run_of([bench("a", [1.0])], config=dict(CONFIG, setup="defaults"))
    assert gate.mismatches(old, matched, "versions") == []
    assert gate.mismatches(matched, defaults, "versions") == ["bench_config.setup: 'matched' vs 'defaults'"]


# --------------------------------------------------------------------------- end to end

ROOT = Path(__file__).resolve().parents[1]


def gate_cli(*args) -> subprocess.CompletedProcess:
    """`bench gate ARGS` on real saved runs. They were measured on this shared machine, perhaps beside
    other work, so they may be marked disturbed: these tests judge other things (tests/test_validation.py
    judges the disturbed cases), so they pass --allow-disturbed."""
    return subprocess.run([sys.executable, "-m", "bench_fixtures", "gate", *map(str, args), "--allow-disturbed"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


LOOSE = ["--threshold", "time=0.5", "--threshold", "throughput=0.5", "--threshold", "time_to_first_step=1",
         "--threshold", "peak_memory=0.25"]  # two runs on a shared 2-core machine: noise, not regressions


def scaled(b: dict, k: float) -> dict:
    """Benchmark B with every time of its rounds K times longer: pytest-benchmark's stats and the
    case's own record of the same rounds alike (the validator refuses one edited without the other)."""
    stats = b["stats"]
    stats["data"] = [t * k for t in stats.get("data") or []]
    for key in ("median", "min", "max", "mean"):
        if key in stats:
            stats[key] *= k
    e = b["extra_info"]
    for r in e.get("rounds") if isinstance(e.get("rounds"), list) else []:
        r["finetune_s"] *= k
    if e.get("finetune_s") is not None:
        e["finetune_s"] *= k
    return b


def test_gate_passes_a_real_run_within_the_spread_of_its_history(saved_runs, tmp_path):
    """History mode on real runs: a candidate whose times lie halfway between the two stored runs' (the
    second run, retimed; another session) is inside their spread by construction, however noisy this
    machine was between the two sessions (no limit loosened). The second run itself as candidate is
    refused: a baseline that is the candidate's own session would widen the band around itself."""
    runs = [json.loads(p.read_text()) for p in saved_runs]
    first = {b["name"]: b["stats"]["median"] for b in runs[0]["benchmarks"]}
    for b in runs[1]["benchmarks"]:
        scaled(b, (first[b["name"]] + b["stats"]["median"]) / 2 / b["stats"]["median"])
    runs[1]["datetime"] = "2026-12-06T00:00:00+00:00"
    cand = tmp_path / "halfway.json"
    cand.write_text(json.dumps(runs[1]))
    r = gate_cli(*saved_runs, cand, "--github-json", tmp_path / "gh.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test_finetune[torch-mobilenet_v2]" in r.stdout and "PASS" in r.stdout
    assert "(history of 2 runs)" in r.stdout and "noise band" in r.stdout
    smaller = json.loads((tmp_path / "gh.json").read_text())
    bigger = json.loads((tmp_path / "gh.bigger.json").read_text())
    assert any(e["name"].endswith(" time") for e in smaller)
    assert any(e["name"].endswith(" accuracy_after") for e in bigger)
    assert all({"name", "unit", "value"} <= e.keys() for e in smaller + bigger)
    r = gate_cli(*saved_runs, saved_runs[1])
    assert r.returncode == 2 and "hold the same session" in r.stderr, r.stdout + r.stderr


def slowed(run: dict, baselines: list[Path], factor: float, test: str = "test_finetune") -> dict:
    """RUN with its TEST case(s) FACTOR times slower than the slowest baseline's, whatever the
    baselines themselves took: on this shared machine a busy neighbour can make one stored run as
    slow as a 3x slowdown of the other (and its spread then hides a 3x slowdown in history mode)."""
    stored = [{b["name"]: b for b in json.loads(p.read_text())["benchmarks"]} for p in baselines]
    for b in (b for b in run["benchmarks"] if b["name"].startswith(test)):
        scaled(b, factor * max(s[b["name"]]["stats"]["median"] for s in stored) / b["stats"]["median"])
    run["datetime"] = "2026-12-06T00:00:01+00:00"  # another session (a history refuses the candidate's own)
    return run


def test_gate_names_a_slowed_case_and_an_accuracy_drop(saved_runs, tmp_path):
    run = slowed(json.loads(saved_runs[1].read_text()), saved_runs[:1], 3)
    b = next(b for b in run["benchmarks"] if b["name"].startswith("test_finetune"))
    base = next(x for x in json.loads(saved_runs[0].read_text())["benchmarks"] if x["name"] == b["name"])
    b["extra_info"]["accuracy_after"] = max(0.0, base["extra_info"]["accuracy_after"] - 0.2)
    cand = tmp_path / "slow.json"
    cand.write_text(json.dumps(run))
    r = gate_cli(saved_runs[0], cand, *LOOSE)
    assert r.returncode == 1, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert "REGRESSION" in last and "test_finetune[torch-mobilenet_v2] time" in last
    assert "test_finetune[torch-mobilenet_v2] accuracy_after" in last


def test_history_flags_a_real_run_slowed_beyond_the_spread_of_its_history(saved_runs, tmp_path):
    """10x the slowest stored run: beyond twice their spread however far apart they are."""
    run = slowed(json.loads(saved_runs[1].read_text()), saved_runs, 10)
    (tmp_path / "slow.json").write_text(json.dumps(run))
    r = gate_cli(*saved_runs, tmp_path / "slow.json")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("REGRESSION: 1 finding(s) in test_finetune[torch-mobilenet_v2]")


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


# --------------------------------------------------------------------------- garbage in, exit 2 out

def _valid_pair() -> tuple[dict, dict]:
    base = run_of([bench("test_finetune[torch-vgg19]", [1.0, 1.1, 1.2]), bench("test_train_step[torch-vgg19]", [0.5])])
    return base, copy.deepcopy(base)


def _entry(run: dict, i: int) -> dict:
    return run["benchmarks"][i % len(run["benchmarks"])]


# Each mutation makes a run the gate cannot interpret; none of them may ever PASS or traceback.
NAN, INF = float("nan"), float("inf")
MUTATIONS = {
    "median": lambda b, v: b["stats"].__setitem__("median", v),
    "data": lambda b, v: b["stats"].__setitem__("data", v),
    "stats": lambda b, v: b.__setitem__("stats", v),
    "extra_info": lambda b, v: b.__setitem__("extra_info", v),
    "accuracy_after": lambda b, v: b["extra_info"].__setitem__("accuracy_after", v),
    "train_images_per_s": lambda b, v: b["extra_info"].__setitem__("train_images_per_s", v),
    "inter_epoch_gaps_s": lambda b, v: b["extra_info"].__setitem__("inter_epoch_gaps_s", v),
    "memory": lambda b, v: b["extra_info"].__setitem__("memory", v),
    "process_peak": lambda b, v: b["extra_info"]["memory"].__setitem__("process_peak", v),
    "fullname": lambda b, v: b.__setitem__("fullname", v),
    "rounds": lambda b, v: b["stats"].__setitem__("rounds", v),
    "test_size": lambda b, v: b["extra_info"].__setitem__("test_size", v),
    "framework": lambda b, v: b["extra_info"].__setitem__("framework", v),
    "utilization": lambda b, v: b["extra_info"].__setitem__("utilization", v),
}
BAD_VALUES = {
    "median": [NAN, INF, -INF, -1.0, 0.0, 1e-320, None, "1.0", [1.0], {}],
    "data": [[NAN], [1.0, INF], [-1.0], "1,2", 3.0, [], [1e308, 1e308]],
    "stats": [None, [], "fast", 1.0],
    "extra_info": [[], "x", 3],
    "accuracy_after": [NAN, INF, 1.5, -0.1, "0.5", [0.5], True],
    "train_images_per_s": [NAN, -INF, -3.0, "fast", {}],
    "inter_epoch_gaps_s": ["0.2", [NAN], [-1.0], {"a": 1}, 0.2],
    "memory": [[], "1GB", 5],
    "process_peak": [NAN, -1.0, "1GB", [1]],
    "fullname": [None, 3, "", ["x"], "tests/benchmarks/test_cases.py::test_finetune[torch-vgg19] "],
    "rounds": [0, -1, 1.5, "3", True, 10**30],
    "test_size": ["x", -100, 0, 100.5],
    "framework": [3, ["torch"]],
    "utilization": ["x", [1]],
}
malformation = st.sampled_from(sorted(MUTATIONS)).flatmap(
    lambda field: st.tuples(st.just(field), st.sampled_from(BAD_VALUES[field]), st.integers(0, 3), st.booleans()))


@settings(max_examples=120, deadline=None)
@given(st.lists(malformation, min_size=1, max_size=3), st.booleans())
def test_the_gate_never_passes_a_run_it_cannot_read(tmp_path_factory, damage, duplicate):
    """120 malformed runs per CI run (1-3 bad fields each, in the baseline or the candidate, plus
    duplicated tests): always exit 2 with one 'cannot compare' line naming the file, never a pass,
    never a traceback."""
    base, cand = _valid_pair()
    for field, value, index, in_candidate in damage:
        try:
            MUTATIONS[field](_entry(cand if in_candidate else base, index), copy.deepcopy(value))
        except (TypeError, KeyError, AttributeError):
            pass  # an earlier mutation already removed what this one would change
    if duplicate:
        cand["benchmarks"].append(copy.deepcopy(cand["benchmarks"][0]))
    folder = tmp_path_factory.mktemp("malformed")
    paths = []
    for name, run in (("base.json", base), ("cand.json", cand)):
        for b in run["benchmarks"]:  # what pytest-benchmark writes beside the rounds, unless damaged
            if isinstance(b, dict) and isinstance(b.get("stats"), dict) and isinstance(b["stats"].get("data"), list):
                b["stats"].setdefault("rounds", len(b["stats"]["data"]))
        (folder / name).write_text(json.dumps(run))  # NaN/Infinity as JSON writes them
        paths.append(str(folder / name))
    code, out, err = _gate_in_process(paths)
    assert code == gate.CANNOT_COMPARE, out + err
    assert err.startswith("gate: cannot compare: ") and ".json: " in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def _gate_in_process(args: list[str]) -> tuple[int, str, str]:
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = gate.main(args)
    return code, out.getvalue(), err.getvalue()


def test_a_failed_test_never_passes(tmp_path):
    base, cand = _valid_pair()
    cand["benchmarks"][0]["extra_info"]["test_outcome"] = "failed"
    (tmp_path / "b.json").write_text(json.dumps(base))
    (tmp_path / "c.json").write_text(json.dumps(cand))
    code, out, _ = _gate_in_process([str(tmp_path / "b.json"), str(tmp_path / "c.json")])
    assert code == gate.REGRESSION and "FAILED in the candidate: test_finetune[torch-vgg19]" in out
    assert "test_finetune[torch-vgg19] test failed" in out.strip().splitlines()[-1]
    code, out, _ = _gate_in_process([str(tmp_path / "c.json"), str(tmp_path / "b.json")])  # failed baseline
    assert code == gate.CANNOT_COMPARE and "its test failed in the baseline" in out


def test_a_metric_gone_from_the_candidate_is_not_a_pass(tmp_path):
    base, cand = _valid_pair()
    cand["benchmarks"][0]["extra_info"]["accuracy_after"] = None
    (tmp_path / "b.json").write_text(json.dumps(base))
    (tmp_path / "c.json").write_text(json.dumps(cand))
    code, out, _ = _gate_in_process([str(tmp_path / "b.json"), str(tmp_path / "c.json")])
    assert code == gate.CANNOT_COMPARE and "accuracy_after measured in the baseline, not (null)" in out
    code, _, _ = _gate_in_process([str(tmp_path / "b.json"), str(tmp_path / "c.json"), "--allow-missing"])
    assert code == gate.PASS


@pytest.mark.parametrize("toml", ['[thresholds]\ntime = "fast"\n', "[thresholds]\ntime = [1]\n",
                                  "tests = 3\n", '[tests."x"]\ntime = true\n', "thresholds = 1\n"])
def test_a_config_with_wrong_types_is_cannot_compare(tmp_path, toml):
    base, cand = _valid_pair()
    for name, run in (("b.json", base), ("c.json", cand)):
        (tmp_path / name).write_text(json.dumps(run))
    (tmp_path / "gate.toml").write_text(toml)
    code, _, err = _gate_in_process([str(tmp_path / "b.json"), str(tmp_path / "c.json"),
                                     "--config", str(tmp_path / "gate.toml")])
    assert code == gate.CANNOT_COMPARE and "gate.toml" in err and "Traceback" not in err


def test_github_json_into_a_folder_is_cannot_compare(tmp_path):
    base, cand = _valid_pair()
    for name, run in (("b.json", base), ("c.json", cand)):
        (tmp_path / name).write_text(json.dumps(run))
    code, _, err = _gate_in_process([str(tmp_path / "b.json"), str(tmp_path / "c.json"), "--github-json",
                                     str(tmp_path)])
    assert code == gate.CANNOT_COMPARE and "--github-json" in err


# --------------------------------------------------------------------------- history, accuracy, signs

def _history(times_per_run: list[float]) -> list[dict]:
    return [run_of([bench("a", [t] * 5)]) for t in times_per_run]


def test_history_sets_the_noise_band_from_the_stored_runs():
    """Stored runs that differ by up to 12% between sessions: a candidate 15% slower than their
    median is inside 2x that spread (pass); one 40% slower is outside (regression); the verdict says
    which rule decided. With one baseline, the same +15% is flagged: the weakest mode."""
    hist = _history([1.0, 1.12, 0.95, 1.05])
    (inside,) = [v for v in gate.compare(hist, run_of([bench("a", [1.175] * 5)]), gate.Thresholds())[0]
                 if v.metric == "time"]
    assert inside.verdict == "ok" and inside.rule.startswith("limit and noise band ") and "(4 runs)" in inside.rule
    assert ("a", "time") in regressions(hist, run_of([bench("a", [1.4] * 5)]))
    assert ("a", "time") in regressions(hist[0], run_of([bench("a", [1.175] * 5)]))


def test_throughput_is_shown_not_judged():
    """Throughput restates time (its inverse); judging both once gave contradicting verdicts."""
    base = run_of([bench("a", [1.0] * 6, rate=100.0)])
    cand = run_of([bench("a", [1.0] * 6, rate=50.0)])
    verdicts = gate.compare(base, cand, gate.Thresholds())[0]
    (tp,) = [v for v in verdicts if v.metric == "throughput"]
    assert tp.verdict == "shown" and regressions(base, cand) == []


def test_accuracy_needs_a_test_set_that_can_resolve_the_drop():
    def acc_run(acc, n):
        b = bench("a", [1.0] * 6, accuracy=acc)
        b["extra_info"]["test_size"] = n
        return run_of([b])
    (small,) = [v for v in gate.compare(acc_run(0.60, 100), acc_run(0.55, 100), gate.Thresholds())[0]
                if v.metric == "accuracy_after"]
    assert small.verdict == "ok" and "two-proportion test" in small.rule
    assert "100 test images resolve drops of 11.4 pt or more, not 2 pt" in small.note, small.note
    assert ("a", "accuracy_after") in regressions(acc_run(0.60, 10_000), acc_run(0.55, 10_000))


def test_changes_are_signed_as_the_values_moved():
    """'throughput 304 -> 184 img/s' reads as a drop: the change is the value's own, the limit
    column says which direction is worse."""
    base = run_of([bench("a", [1.0] * 6, rate=304.0)])
    cand = run_of([bench("a", [1.0] * 6, rate=184.0, accuracy=0.45)])
    table = gate.format_table(gate.compare(base, cand, gate.Thresholds())[0])
    tp = next(line for line in table.splitlines() if line.strip().startswith("throughput"))
    assert "-39.5%" in tp and "+39.5%" not in tp
    acc = next(line for line in table.splitlines() if line.strip().startswith("accuracy_after"))
    assert "-5.0 pt" in acc and "-2.0 pt" in acc
    time_line = next(line for line in table.splitlines() if line.strip().startswith("time"))
    assert "+10%" in time_line


@pytest.mark.parametrize("name,text", [
    ("nested", "[" * 100_000 + "]" * 100_000),
    ("huge integer", '{"benchmarks": [], "x": ' + "9" * 5000 + "}"),
    ("duplicate key", '{"benchmarks": [], "benchmarks": []}'),
])
def test_json_no_reader_can_trust_is_one_line_exit_2(tmp_path, name, text):
    base, _ = _valid_pair()
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "cand.json").write_text(text)
    code, out, err = _gate_in_process([str(tmp_path / "base.json"), str(tmp_path / "cand.json")])
    assert code == gate.CANNOT_COMPARE and err.startswith("gate: cannot compare: ") and "cand.json: " in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_metric_judged_on_one_side_only_is_not_a_pass():
    """The baseline lacks accuracy (null) and the candidate has it: not silently dropped (either way round)."""
    base, cand = _valid_pair()
    base["benchmarks"][0]["extra_info"]["accuracy_after"] = None
    _, _, missing = gate.unreadable_cases(base, cand)
    assert missing == ["test_finetune[torch-vgg19]: accuracy_after measured in the candidate, not (null) in the baseline"]


def test_a_reader_that_goes_away_keeps_the_verdict(saved_runs, tmp_path):
    """`bench gate ... | head -3`: the rest of the output is dropped, the exit code is the verdict's."""
    run = slowed(json.loads(saved_runs[1].read_text()), saved_runs[:1], 3, test="test_")
    (tmp_path / "slow.json").write_text(json.dumps(run))
    proc = subprocess.Popen([sys.executable, "-m", "bench_fixtures", "gate", str(saved_runs[0]), str(tmp_path / "slow.json"),
                             "--allow-disturbed"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the first line (as `| head -0`; `head -5` once it has 5)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == gate.REGRESSION and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_session_time_outside_the_calendar_stands_for_itself():
    """The gate's session stamp and the history's sorting read one parser (results.instant); a time that
    leaves the calendar in UTC is no instant, not a traceback, and still tells sessions apart."""
    from bench_fixtures.analysis.results import instant
    assert instant("9999-12-31T23:59:59-05:00") is None and instant("garbage") is None
    assert gate._stamp("9999-12-31T23:59:59-05:00") == "9999-12-31T23:59:59-05:00"
    assert gate._stamp("2026-12-06T01:00:00+01:00") == gate._stamp("2026-12-06T00:00:00Z") == "2026-12-06T00:00:00"


# --------------------------------------------------------------------------- energy per image: off by default

ENERGY = "energy_per_image"
NOT_MEASURED = "not measured: no RAPL package zone under /sys/class/powercap (a virtual machine)"


def with_energy(b: dict, per_image: float | None, rounds: list[float] | None = None, source: str = "rapl") -> dict:
    """B with an energy record: PER_IMAGE joules per training image (1,000 images), or not measured
    (None) with its reason; ROUNDS: each fine-tune round's joules (the one-baseline test takes them)."""
    measured = per_image is not None
    b["extra_info"]["energy"] = dict(version=1, measured=measured, source=source if measured else None,
                                     reason=None if measured else NOT_MEASURED,
                                     finetune_j=per_image * 1000 if measured else None, per_image_j=per_image)
    if rounds:
        b["extra_info"]["rounds"] = [dict(energy_j=j) for j in rounds]
    return b


def energy_run(per_image: float | None, rounds: list[float] | None = None) -> dict:
    return run_of([with_energy(bench("a", [1.0] * 6), per_image, rounds)])


def judging(*names: str, **per_metric: float) -> gate.Thresholds:
    return gate.Thresholds(defaults=dict(per_metric), judge=set(names))


def _energy_verdict(base: dict, cand: dict, thresholds: gate.Thresholds | None = None) -> gate.Verdict:
    (v,) = [v for v in gate.compare(base, cand, thresholds or gate.Thresholds())[0] if v.metric == ENERGY]
    return v


def _files(tmp_path: Path, base: dict, cand: dict) -> list[str]:
    for name, run in (("b.json", base), ("c.json", cand)):
        (tmp_path / name).write_text(json.dumps(run))
    return [str(tmp_path / "b.json"), str(tmp_path / "c.json")]


def test_energy_is_shown_never_judged_by_default(tmp_path):
    """Off by default (a driver update moves it): doubled, it is shown with a note saying how to judge
    it, and the run passes on the other metrics."""
    base, cand = energy_run(0.05), energy_run(0.10)
    v = _energy_verdict(base, cand)
    assert v.verdict == "shown" and not v.judged and f"--judge {ENERGY}" in v.note
    line = next(x for x in gate.format_table([v]).splitlines() if x.strip().startswith(ENERGY))
    assert "+100.0%" in line and "–" in line and "shown" in line
    code, out, _ = _gate_in_process(_files(tmp_path, base, cand))
    assert code == gate.PASS and out.strip().splitlines()[-1] == "PASS: 5 metric(s) over 1 case(s)", out


@pytest.mark.parametrize("base_energy, cand_energy", [("absent", 0.05), (0.05, None), (None, 0.05), ("absent", None)])
def test_energy_off_never_refuses_a_run(tmp_path, base_energy, cand_energy):
    """A baseline from before energy existed, or a CPU run that could not measure it: the other metrics
    pass exactly as before, and nothing is said about energy."""
    base = run_of([bench("a", [1.0] * 6)]) if base_energy == "absent" else energy_run(base_energy)
    cand = energy_run(cand_energy)
    assert gate.unreadable_cases(base, cand) == ([], [], [])
    code, out, _ = _gate_in_process(_files(tmp_path, base, cand))
    assert code == gate.PASS and ENERGY not in out and "PASS: 5 metric(s)" in out, out


def test_energy_judged_with_its_own_threshold(tmp_path):
    """--judge energy_per_image: +20% is a regression, +3% is not (10%, as time's); --threshold moves it."""
    base = energy_run(0.05)
    assert _energy_verdict(base, energy_run(0.06), judging(ENERGY)).verdict == "REGRESSION"
    assert _energy_verdict(base, energy_run(0.0515), judging(ENERGY)).verdict == "ok"
    assert _energy_verdict(base, energy_run(0.06), judging(ENERGY, energy_per_image=0.25)).verdict == "ok"
    paths = _files(tmp_path, base, energy_run(0.06))
    code, out, _ = _gate_in_process([*paths, "--judge", ENERGY])
    assert code == gate.REGRESSION and out.strip().splitlines()[-1].endswith(f"a {ENERGY}"), out
    code, out, _ = _gate_in_process([*paths, "--judge", ENERGY, "--threshold", f"{ENERGY}=0.25"])
    assert code == gate.PASS and "PASS: 6 metric(s)" in out, out
    (tmp_path / "gate.toml").write_text(f'[gate]\njudge = ["{ENERGY}"]\n')
    assert _gate_in_process([*paths, "--config", str(tmp_path / "gate.toml")])[0] == gate.REGRESSION


def test_energy_measured_by_other_meters_says_so():
    """NVML's power integrated against its energy counter: the change may be the meter's, and the line
    says so."""
    base = energy_run(0.05)
    cand = run_of([with_energy(bench("a", [1.0] * 6), 0.05, source="nvml_power")])
    assert "measured by other meters: rapl (baseline) vs nvml_power (candidate)" in _energy_verdict(base, cand).note
    assert "other meters" not in _energy_verdict(base, energy_run(0.06)).note


def test_judged_energy_tests_the_rounds_with_one_baseline():
    """As time: with one baseline, its rounds' Mann-Whitney test must show the rise (3 vs 3 rounds)."""
    base = energy_run(0.05, rounds=[49.0, 50.0, 51.0])
    clear = _energy_verdict(base, energy_run(0.06, rounds=[59.0, 60.0, 61.0]), judging(ENERGY))
    assert clear.verdict == "REGRESSION" and "Mann-Whitney" in clear.rule and "3 vs 3 rounds" in clear.note
    mixed = _energy_verdict(base, energy_run(0.06, rounds=[45.0, 60.0, 75.0]), judging(ENERGY))
    assert mixed.verdict == "ok" and "Mann-Whitney" in mixed.rule


def test_judged_energy_measured_on_one_side_is_not_a_pass(tmp_path):
    """On, it never passes a run it cannot read: exit 2 with the unmeasured side's reason, either way
    round; --allow-missing accepts it."""
    paths = _files(tmp_path, energy_run(0.05), energy_run(None))
    code, out, _ = _gate_in_process([*paths, "--judge", ENERGY])
    assert code == gate.CANNOT_COMPARE, out
    assert f"cannot compare: a: {ENERGY} measured in the baseline, not (null) in the candidate ({NOT_MEASURED})" in out
    assert _gate_in_process([*paths, "--judge", ENERGY, "--allow-missing"])[0] == gate.PASS
    old = _files(tmp_path, run_of([bench("a", [1.0] * 6)]), energy_run(0.05))
    code, out, _ = _gate_in_process([*old, "--judge", ENERGY])
    assert code == gate.CANNOT_COMPARE and "(not measured: recorded before energy was measured)" in out, out
    neither = _files(tmp_path, energy_run(None), energy_run(None))
    code, out, _ = _gate_in_process([*neither, "--judge", ENERGY])
    assert code == gate.CANNOT_COMPARE, out
    assert f"{ENERGY}: asked for (--judge, [gate] judge), but measured in neither run (a in the candidate: " in out


@pytest.mark.parametrize("args, toml", [(["--judge", "energy"], None), (["--judge", "time"], None),
                                        ([], '[gate]\njudge = ["energy"]\n'), ([], "[gate]\njudge = \"x\"\n"),
                                        ([], "[gate]\njudged = []\n")])
def test_an_unknown_judge_is_one_line_exit_2(tmp_path, args, toml):
    paths = _files(tmp_path, energy_run(0.05), energy_run(0.05))
    if toml:
        (tmp_path / "gate.toml").write_text(toml)
        args = ["--config", str(tmp_path / "gate.toml")]
    code, out, err = _gate_in_process([*paths, *args])
    assert code == gate.CANNOT_COMPARE and out == "" and len(err.strip().splitlines()) == 1, err
    assert ("--judge" in err if not toml else "gate.toml [gate]" in err) and ENERGY in err, err


def test_github_json_charts_energy_where_measured():
    smaller, _ = gate.github_entries(energy_run(0.05))
    assert {"name": f"a {ENERGY}", "unit": "J", "value": 0.05} in smaller
    assert not any(e["name"].endswith(ENERGY) for e in gate.github_entries(energy_run(None))[0])
