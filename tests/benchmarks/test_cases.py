"""The benchmark cases: framework x model, for every framework in the registry. Thin: the
experiment lives in bench_fixtures.runner.experiment, the session in bench_fixtures.plugin."""
import pytest

from bench_fixtures.analysis import overhead
from bench_fixtures.config import MODELS
from bench_fixtures.registry import NAMES
from bench_fixtures.runner.experiment import telemetry_problems

CASES = [pytest.param(fw, model, id=f"{fw}-{model}", marks=getattr(pytest.mark, fw))
         for fw in NAMES for model in MODELS]


@pytest.mark.parametrize("framework,model", CASES)
def test_finetune(benchmark, bench_runner, bench_config, bench_setup, framework, model):
    """One round = the whole fine-tune of a fresh model; accuracy before and after on the test split."""
    benchmark.group = f"finetune-{model}"  # both frameworks (and setups) side by side
    exp = bench_runner.get(framework, model, bench_setup)
    benchmark.pedantic(exp.fine_tune, setup=exp.start_round, rounds=bench_config.finetune_rounds,
                       iterations=1)
    exp.predict_after()
    info = exp.finetune_info()
    benchmark.extra_info.update(info)
    problems = telemetry_problems(info, "finetune")
    assert not problems, f"{framework}-{model}: untrustworthy figures: " + "; ".join(problems)
    short = [f"round {n + 1}: {r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f}"
             for n, r in enumerate(info["rounds"])
             if not r["accuracy_after"] >= r["accuracy_before"] + bench_config.min_accuracy_gain]
    assert not short, (f"{framework}-{model}: accuracy {'; '.join(short)}, less than the required gain of "
                       f"{bench_config.min_accuracy_gain} (--min-accuracy-gain)")


@pytest.mark.parametrize("framework,model", CASES)
def test_train_step(benchmark, bench_runner, bench_config, bench_setup, framework, model):
    """Steady-state throughput: R rounds of K steps after untimed, reported warm-up steps."""
    benchmark.group = f"train_step-{model}"
    exp = bench_runner.get(framework, model, bench_setup)
    if not exp.description:
        exp.init()
    exp.warm_up()
    with exp.monitoring():
        benchmark.pedantic(exp.train_steps, rounds=bench_config.step_rounds, iterations=1)
    info = exp.train_step_info()
    benchmark.extra_info.update(info)
    problems = telemetry_problems(info, "train_step")
    assert not problems, f"{framework}-{model}: untrustworthy figures: " + "; ".join(problems)


OVERHEAD_CASES = [c for c in CASES if c.values[1] == "mobilenet_v2"]


@pytest.mark.parametrize("framework,model", OVERHEAD_CASES)
def test_harness_overhead(benchmark, bench_runner, bench_config, bench_setup, framework, model):
    """Suite vs a bare hand-written loop, monitor on vs off, input headroom: alternated rounds in
    the case's own worker. One benchmark round = one cycle of the three kinds."""
    if bench_config.replicas > 1:
        pytest.skip(f"the overhead check compares one process's loop with a bare one in that process; "
                    f"--replicas {bench_config.replicas} runs several (run it with --replicas 1)")
    benchmark.group = f"overhead-{model}"
    exp = bench_runner.get(framework, model, bench_setup)
    if not exp.description:
        exp.init()
    exp.warm_up()
    overhead.prepare(exp)
    times, cycles = {}, iter(range(10**6))
    benchmark.pedantic(lambda: overhead.cycle(exp, next(cycles), times), rounds=bench_config.step_rounds,
                       iterations=1)
    info = overhead.summarize(exp, times)
    benchmark.extra_info.update(info)
    assert all(info[k] > 0 for k in ("suite_over_bare", "monitor_on_over_off", "input_headroom"))
    intervals = info["ratio_intervals"]  # each ratio with its spread over the rounds, and whether it means anything
    assert all(intervals[k]["low"] <= intervals[k]["high"] and intervals[k]["note"] for k in intervals)
    assert set(info["unresolved"]) == {k for k, v in intervals.items() if not v["resolved"]}
