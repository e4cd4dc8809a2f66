"""The overhead ratios' spread: stats.median_interval (the order-statistic interval for a median) and
overhead.summarize's ratio_intervals, which mark a ratio its rounds cannot decide."""
import json
import math
import statistics
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_fixtures.analysis import overhead
from bench_fixtures.analysis.stats import median_interval

values_st = st.lists(st.floats(1e-4, 1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=60)
level_st = st.sampled_from([0.5, 0.8, 0.9, 0.95, 0.99])


def exact_coverage(n: int, k: int) -> float:
    """P(x(k) <= median <= x(n+1-k)): between k and n-k of N values fall below the median."""
    return sum(math.comb(n, j) for j in range(k, n - k + 1)) / 2 ** n


def min_n(level: float) -> int:
    """The fewest values whose full range reaches LEVEL: 1 - 2 * 0.5**n >= level."""
    return next(n for n in range(1, 100) if 1 - 2 * 0.5 ** n >= level)


# --- median_interval ---------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(values_st, level_st)
def test_interval_holds_the_sample_median_within_the_range(values, level):
    low, high, coverage = median_interval(values, level)
    assert min(values) <= low <= statistics.median(values) <= high <= max(values)
    assert 0.0 <= coverage < 1.0
    assert low in values and high in values  # order statistics, not interpolations


@settings(max_examples=100, deadline=None)
@given(values_st, level_st)
def test_coverage_is_the_exact_binomial_one_and_the_pair_the_narrowest(values, level):
    n = len(values)
    low, high, coverage = median_interval(values, level)
    xs = sorted(values)
    ks = [k for k in range(1, n // 2 + 1) if exact_coverage(n, k) >= level]
    k = max(ks) if ks else 1  # the narrowest symmetric pair reaching LEVEL, or the full range
    assert (low, high) == (xs[k - 1], xs[n - k])
    assert coverage == pytest.approx(exact_coverage(n, k) if n > 1 else 0.0, abs=1e-9)


@pytest.mark.parametrize("n,expected", [(1, 0.0), (2, 0.5), (3, 0.75), (4, 0.875), (5, 0.9375)])
def test_too_few_values_give_the_full_range_and_its_actual_coverage(n, expected):
    values = [3.0, 1.0, 5.0, 2.0, 4.0][:n]
    assert median_interval(values, 0.95) == (min(values), max(values), pytest.approx(expected))
    assert expected == pytest.approx(1 - 2 * 0.5 ** n)


@settings(max_examples=60, deadline=None)
@given(level_st, st.integers(1, 300))
def test_enough_values_always_reach_the_level(level, n):
    """Once N is past the smallest N whose full range reaches LEVEL, more data never gives less."""
    _, _, coverage = median_interval([float(i) for i in range(n)], level)
    if n >= min_n(level):
        assert coverage >= level - 1e-9
    else:
        assert coverage == pytest.approx(1 - 2 * 0.5 ** n)


def test_known_ranks_for_a_hundred_values():
    """The textbook 95% interval for n = 100: the 40th and 61st values."""
    assert median_interval(list(range(1, 101)))[:2] == (40, 61)


def test_one_value_and_bad_input():
    assert median_interval([2.5]) == (2.5, 2.5, 0.0)
    assert median_interval([7.0, 7.0, 7.0, 7.0, 7.0, 7.0]) == (7.0, 7.0, pytest.approx(0.96875))
    with pytest.raises(ValueError):
        median_interval([])
    with pytest.raises(ValueError):
        median_interval([1.0, math.nan])
    with pytest.raises(ValueError):
        median_interval([1.0, 2.0], level=1.0)


# --- overhead.summarize -----------------------------------------------------------------------

class FakeExperiment:
    """What summarize reads: cfg, framework, model, and the input_pipeline request."""

    def __init__(self, seconds=0.004, batches=1):
        self.cfg = SimpleNamespace(step_count=1, batch_size=32, device="cpu", monitor_interval=0.05)
        self.framework, self.model = "tensorflow", "mobilenet_v2"
        self.pipe = {"seconds": seconds, "batches": batches}
        self.requests = []

    def request(self, cmd, **kw):
        self.requests.append((cmd, kw))
        assert cmd == "input_pipeline"
        return dict(self.pipe)


OLD_KEYS = {"framework", "model", "device", "batch_size", "steps_per_round", "rounds", "monitor_interval_s",
            "bare_step_s", "suite_step_s", "monitor_on_step_s", "input_batch_s", "suite_over_bare",
            "monitor_on_over_off", "input_headroom", "targets", "step_s"}
RATIOS = ("suite_over_bare", "monitor_on_over_off", "input_headroom")

# the smoke run's kind of numbers: 3 cycles of 1 step on a busy machine
NOISY = {"off": [0.100, 0.080, 0.130], "bare": [0.100, 0.101, 0.092], "on": [0.126, 0.070, 0.140]}


def tight(n=10, suite=1.01, monitor=1.002):
    """N cycles with drift between them but a steady ratio within each."""
    drift = [1 + 0.3 * math.sin(i) for i in range(n)]
    bare = [0.1 * d for d in drift]
    off = [b * suite for b in bare]
    return {"off": off, "bare": bare, "on": [o * monitor for o in off]}


def test_existing_keys_and_values_are_unchanged():
    exp = FakeExperiment()
    info = overhead.summarize(exp, NOISY)
    assert OLD_KEYS | {"ratio_intervals", "unresolved"} == set(info)
    off, on, bare = (statistics.median(NOISY[k]) for k in ("off", "on", "bare"))
    assert info["suite_over_bare"] == off / bare
    assert info["monitor_on_over_off"] == on / off
    assert info["input_headroom"] == off / 0.004
    assert (info["bare_step_s"], info["suite_step_s"], info["monitor_on_step_s"]) == (bare, off, on)
    assert info["input_batch_s"] == 0.004 and info["rounds"] == 3 and info["steps_per_round"] == 1
    assert info["targets"] == overhead.TARGETS and info["step_s"] is NOISY
    assert exp.requests == [("input_pipeline", {"count": 1})]
    json.dumps(info, allow_nan=False)  # stored as JSON (benchmark extra_info, --out)


def test_a_wide_spread_is_unresolved_with_a_note():
    info = overhead.summarize(FakeExperiment(), NOISY)
    ivs = info["ratio_intervals"]
    assert set(ivs) == set(RATIOS)
    sob = ivs["suite_over_bare"]
    assert set(sob) == {"median", "low", "high", "coverage", "n", "target", "resolved", "note"}
    assert sob["n"] == 3 and sob["coverage"] == pytest.approx(0.75) and sob["target"] == 1.03
    assert sob["low"] == pytest.approx(0.080 / 0.101) and sob["high"] == pytest.approx(0.130 / 0.092)
    assert sob["median"] == pytest.approx(1.0)
    assert not sob["resolved"] and not ivs["monitor_on_over_off"]["resolved"]
    assert "3 rounds" in sob["note"] and "straddle" in sob["note"] and "1.03" in sob["note"]
    assert "--step-rounds" in sob["note"] and "\n" not in sob["note"]
    # headroom 20x-32.5x lies above its "at least 10" target, but 3 rounds (75%) settle nothing
    hr = ivs["input_headroom"]
    assert not hr["resolved"] and hr["low"] == pytest.approx(20.0) and "too weak to settle it" in hr["note"]
    assert info["unresolved"] == ["suite_over_bare", "monitor_on_over_off", "input_headroom"]


def test_a_tight_spread_is_resolved_whatever_the_drift():
    info = overhead.summarize(FakeExperiment(), tight())
    ivs = info["ratio_intervals"]
    assert info["unresolved"] == []
    for name in RATIOS:
        assert ivs[name]["resolved"] and ivs[name]["n"] == 10 and ivs[name]["coverage"] >= 0.95
    assert ivs["suite_over_bare"]["median"] == pytest.approx(1.01)
    assert ivs["monitor_on_over_off"]["high"] == pytest.approx(1.002)
    assert "within" in ivs["suite_over_bare"]["note"]


def test_a_clear_miss_is_resolved_too():
    """Over the target with its whole interval: a finding (the harness does distort), not noise."""
    ivs = overhead.summarize(FakeExperiment(seconds=0.05), tight(suite=1.2, monitor=1.05))["ratio_intervals"]
    assert ivs["suite_over_bare"]["resolved"] and ivs["suite_over_bare"]["low"] > 1.03
    assert ivs["monitor_on_over_off"]["resolved"] and "beyond" in ivs["monitor_on_over_off"]["note"]
    head = ivs["input_headroom"]  # ~2x, below "at least 10" with the whole interval
    assert head["resolved"] and head["high"] < 10 and "beyond" in head["note"]


def test_headroom_straddling_its_at_least_target_is_unresolved():
    times = tight()
    times["off"] = [0.08, 0.09, 0.1, 0.11, 0.12, 0.13]
    ivs = overhead.summarize(FakeExperiment(seconds=0.01), times)["ratio_intervals"]
    assert ivs["input_headroom"]["low"] < 10 < ivs["input_headroom"]["high"]
    assert not ivs["input_headroom"]["resolved"] and "target >= 10" in ivs["input_headroom"]["note"]


def test_one_round_has_no_spread_to_judge_by():
    info = overhead.summarize(FakeExperiment(), {"off": [0.1], "bare": [0.1], "on": [0.1]})
    for iv in info["ratio_intervals"].values():
        assert not iv["resolved"] and iv["coverage"] == 0.0 and "1 round:" in iv["note"]
    assert info["unresolved"] == list(RATIOS)


def test_zero_and_negative_times_do_not_crash():
    times = {"off": [0.1, 0.0, 0.1, 0.1], "bare": [0.1, 0.1, -0.1, 0.0], "on": [0.1, 0.1, 0.1, 0.1]}
    info = overhead.summarize(FakeExperiment(), times)
    sob = info["ratio_intervals"]["suite_over_bare"]
    assert sob["n"] == 1 and not sob["resolved"] and "3 of 4 rounds" in sob["note"]
    # nothing usable at all: a ratio that cannot be computed, and an input path that timed no batch
    info = overhead.summarize(FakeExperiment(batches=0), {"off": [0.0, 0.0], "bare": [0.1, 0.1], "on": [0.1, 0.1]})
    for name in RATIOS:
        iv = info["ratio_intervals"][name]
        assert not iv["resolved"] and iv["n"] == 0 and iv["median"] is None and "cannot be computed" in iv["note"]
    assert math.isnan(info["input_batch_s"]) and math.isnan(info["monitor_on_over_off"])
    assert "n/a" in overhead.format_results([info])


def test_missing_kinds_or_uneven_rounds_pair_what_there_is():
    """A cycle cut short (an error mid-cycle) leaves the kinds uneven: only whole pairs count."""
    times = tight(8)
    times["on"] = times["on"][:5]
    ivs = overhead.summarize(FakeExperiment(), times)["ratio_intervals"]
    assert ivs["monitor_on_over_off"]["n"] == 5 and ivs["suite_over_bare"]["n"] == 8


def test_table_shows_intervals_and_marks_the_unresolved():
    noisy = overhead.summarize(FakeExperiment(), NOISY)
    steady = overhead.summarize(FakeExperiment(), tight())
    text = overhead.format_results([noisy, steady])
    lines = text.splitlines()
    noisy_row, steady_row = lines[2], lines[3]
    assert "1.000 [0.792-1.413] ?" in noisy_row and "1.260 [0.875-1.260] ?" in noisy_row
    assert "25x [20-32] ? |" in noisy_row and "| 3 (75%) |" in noisy_row
    assert "?" not in steady_row and "1.010 [1.010-1.010]" in steady_row and "10 (98%)" in steady_row
    assert all(line.count("|") == lines[0].count("|") for line in lines[:4])
    assert "targets: suite/bare <= 1.03, monitor on/off <= 1.01, input headroom >= 10x" in text
    assert any(line.startswith("? = unresolved") for line in lines)
    assert any("suite_over_bare: 3 rounds" in line for line in lines)
    assert any("input_headroom: 3 rounds" in line and "too weak" in line for line in lines)  # unresolved: noted
    assert sum("suite_over_bare:" in line for line in lines) == 1  # the steady row's resolved ratios: no note


def test_table_of_rows_stored_before_the_intervals():
    info = overhead.summarize(FakeExperiment(), NOISY)
    for key in ("ratio_intervals", "unresolved"):
        del info[key]
    text = overhead.format_results([info])
    assert "| 1.000 | 1.260 | 25x | 3 |" in text and "?" not in text
