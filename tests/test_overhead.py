"""The standalone harness-overhead script, end to end on torch (the benchmark
`test_harness_overhead` runs the same cycles in both frameworks). Ratios are reported, not
asserted: a timed assert on a shared 2-core machine would measure the neighbours."""
import pytest

from bench_fixtures import overhead
from bench_fixtures.config import resolve


@pytest.mark.torch
def test_standalone_overhead_measures_all_three_ratios():
    cfg = resolve(dict(profile="smoke", device="cpu", step_count=1, step_rounds=2, step_warmup=0), 0)
    row = overhead.measure("torch", "mobilenet_v2", cfg)
    assert [len(row["step_s"][k]) for k in ("off", "on", "bare")] == [2, 2, 2]
    for key in ("bare_step_s", "suite_step_s", "monitor_on_step_s", "input_batch_s"):
        assert row[key] > 0
    assert row["suite_over_bare"] == pytest.approx(row["suite_step_s"] / row["bare_step_s"])
    assert row["input_headroom"] == pytest.approx(row["suite_step_s"] / row["input_batch_s"])
    assert "torch-mobilenet_v2" in overhead.format_results([row])
