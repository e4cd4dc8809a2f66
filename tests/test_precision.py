"""Issue 15's axes: mixed precision and memory layout read back, FLOPs counted by each framework's
own tools, MFU against a known peak, time to accuracy, and the spread of repeated rounds."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_fixtures import peaks
from bench_fixtures.config import ConfigError, resolve
from bench_fixtures.runner import experiment
from bench_fixtures.runner.worker import Worker
from bench_fixtures.telemetry import timeline as tl
from tests.helpers import tiny_bundle


# -- configuration ----------------------------------------------------------------------------------
def test_precisions_rounds_and_the_target_are_options_with_one_line_errors():
    cfg = resolve(dict(profile="smoke", precision="bf16", channels_last=True), gpu_count=0)
    assert (cfg.precision, cfg.channels_last, cfg.overrides["precision"]) == ("bf16", True, "bf16")
    assert cfg.for_setup("defaults").precision == "bf16"  # given: the same in both setups
    assert resolve(dict(profile="seed"), gpu_count=0).finetune_rounds == 3
    assert resolve(dict(profile="smoke"), gpu_count=0).finetune_rounds == 1
    with pytest.raises(ConfigError, match=r"^--precision 'fp8': choose one of fp32, tf32, bf16, fp16$"):
        resolve(dict(profile="smoke", precision="fp8"), gpu_count=0)
    with pytest.raises(ConfigError, match="--target-accuracy 0.2 needs .* add --eval-every-epoch"):
        resolve(dict(profile="smoke", target_accuracy=0.2), gpu_count=0)
    with pytest.raises(ConfigError, match=r"--target-accuracy 1.5: must lie in \(0, 1\]"):
        resolve(dict(profile="seed", target_accuracy=1.5), gpu_count=0)
    with pytest.raises(ConfigError, match=r"--peak-tflops 0: must lie in \[0.001, 100,000\] TFLOP/s"):
        resolve(dict(profile="smoke", peak_tflops=0), gpu_count=0)
    with pytest.raises(ConfigError, match=r"--peak-tflops 1e-12: must lie in \[0.001, 100,000\] TFLOP/s"):
        resolve(dict(profile="smoke", peak_tflops=1e-12), gpu_count=0)
    assert resolve(dict(profile="seed", target_accuracy=0.2), gpu_count=0).target_accuracy == 0.2


# -- MFU ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,row", [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100.*PCIe"),
                                      ("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA H200", "(?<!G)H200"),
                                      ("NVIDIA A100-SXM4-80GB", r"\bA100\b"), ("NVIDIA A100 80GB PCIe", r"\bA100\b"),
                                      ("NVIDIA RTX A1000 6GB Laptop GPU", None), ("Quadro GV100", None),
                                      ("NVIDIA L4", r"\bL4\b"), ("NVIDIA L40S", "L40S"), ("NVIDIA A10", r"\bA10\b"),
                                      ("Tesla T4", r"\bT4\b"), ("Tesla V100-SXM2-16GB", "(?<!G)V100"),
                                      ("Tesla V100S-PCIE-32GB", "(?<!G)V100S"), ("NVIDIA GH200 480GB", None),
                                      ("NVIDIA GeForce RTX 4090", None)])
def test_the_peak_table_is_keyed_by_the_names_nvml_reports(name, row):
    found = peaks.lookup(name)
    assert (found.pattern if found else None) == row
    if found:  # dense tensor-core rates are above the CUDA-core fp32 rate, and every row cites its source
        assert found.source.startswith("https://www.nvidia.com") or found.source.startswith("https://images.nvidia")
        assert all(v > found.tflops["fp32"] for k, v in found.tflops.items() if k != "fp32")


def test_mfu_from_a_faked_nvml_name_and_a_fake_step_time(monkeypatch):
    """1 GFLOP per image, 32 images per 10 ms step = 3.2 TFLOP/s achieved; an H100 SXM's dense bf16
    peak is 989.5 TFLOP/s (half the datasheet's 1,979 with sparsity)."""
    monkeypatch.setattr("bench_fixtures.machine.nvml_gpus", lambda: ([dict(name="NVIDIA H100 80GB HBM3")], ""))
    name = experiment.gpu_name("gpu", {"device_name": "from the framework"})
    assert name == "NVIDIA H100 80GB HBM3"
    u = peaks.utilization(1e9, 32 / 0.010, "gpu", name, "bf16")
    assert u["achieved_flops_per_s"] == pytest.approx(3.2e12)
    assert u["peak_tflops"] == 989.5 and u["mfu"] == pytest.approx(3.2 / 989.5) and u["mfu_reason"] is None
    assert peaks.utilization(1e9, 3200, "gpu", name, "fp32")["mfu"] == pytest.approx(3.2 / 67)
    monkeypatch.setattr("bench_fixtures.machine.nvml_gpus", lambda: ([], "NVML unavailable"))
    assert experiment.gpu_name("gpu", {"device_name": "NVIDIA L4"}) == "NVIDIA L4"  # the framework's name then
    assert experiment.gpu_name("cpu", {"device_name": "cpu"}) is None


def test_mfu_is_null_with_the_reason_where_no_peak_is_known():
    cpu = peaks.utilization(2e9, 100.0, "cpu", None, "fp32")
    assert cpu["achieved_flops_per_s"] == pytest.approx(2e11) and cpu["mfu"] is None
    assert "no peak figure for a CPU: give --peak-tflops" in cpu["mfu_reason"]
    assert peaks.utilization(2e9, 100.0, "cpu", None, "fp32", peak_tflops=1.0)["mfu"] == pytest.approx(0.2)
    t4 = peaks.utilization(2e9, 100.0, "gpu", "Tesla T4", "bf16")
    assert t4["mfu"] is None and "no bf16 tensor-core peak" in t4["mfu_reason"]
    no_tf32 = peaks.utilization(2e9, 100.0, "gpu", "Tesla T4", "tf32")  # no TF32 units: the maths runs as fp32
    assert no_tf32["mfu_precision"] == "fp32" and no_tf32["mfu"] == pytest.approx(0.2 / 8.1)
    assert peaks.utilization(2e9, math.nan, "gpu", "NVIDIA H200", "bf16")["mfu"] is None
    odd = peaks.utilization(2e9, 100.0, "gpu", "NVIDIA GeForce RTX 4090", "fp16")
    assert odd["mfu"] is None and "not in the peak table" in odd["mfu_reason"]
    assert peaks.utilization(None, 100.0, "gpu", "NVIDIA H200", "fp16")["mfu_reason"].startswith("no FLOP count")
    # the defaults setup asks for no precision: the convolutions' read-back TF32 decides the peak
    assert peaks.effective_precision(None, {"tf32_conv": True}) == "tf32"
    assert peaks.effective_precision(None, {"tf32_conv": False}) == "fp32"
    assert peaks.effective_precision("bf16", {"tf32_conv": True}) == "bf16"


# -- time to accuracy ------------------------------------------------------------------------------
def _events(steps_s: list[float], gap_s: float, eval_s: float, accuracies: list[float]) -> list[dict]:
    t, ns, out = 0.0, lambda x: int(round(x * 1e9)), []
    out.append(dict(name=tl.RUN_START, t_ns=0))
    for k, (steps, acc) in enumerate(zip(steps_s, accuracies)):
        out += [dict(name=tl.EPOCH_START, epoch=k, t_ns=ns(t)), dict(name=tl.FIRST_STEP_START, epoch=k, t_ns=ns(t))]
        t += steps
        out += [dict(name=tl.LAST_STEP_END, epoch=k, t_ns=ns(t)), dict(name=tl.EVAL_START, epoch=k, t_ns=ns(t))]
        t += eval_s
        out += [dict(name=tl.EVAL_STOP, epoch=k, t_ns=ns(t))]
        t += gap_s
        out += [dict(name=tl.EPOCH_STOP, epoch=k, t_ns=ns(t), val_accuracy=acc)]
    return out + [dict(name=tl.RUN_STOP, t_ns=ns(t))]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 50), st.floats(0, 1)), min_size=1, max_size=8),
       st.floats(0, 5), st.floats(0, 5), st.floats(0.01, 1))
def test_time_to_accuracy_is_the_first_evaluated_epoch_at_the_target(epochs, gap, ev, target):
    steps, accs = [e[0] for e in epochs], [e[1] for e in epochs]
    curve = tl.accuracy_curve(_events(steps, gap, ev, accs), len(epochs))
    assert [p["epoch"] for p in curve] == list(range(1, len(epochs) + 1))
    assert all(a["train_s"] < b["train_s"] and a["wall_s"] < b["wall_s"] for a, b in zip(curve, curve[1:]))
    assert all(p["train_s"] <= p["wall_s"] + 1e-6 for p in curve)  # wall includes evaluations and gaps
    t = tl.time_to_accuracy(curve, target)
    first = next((k for k, a in enumerate(accs) if a >= target), None)
    assert t["reached"] == (first is not None) and t["evaluated_epochs"] == len(epochs)
    if first is None:
        assert t["epoch"] is t["train_s"] is t["wall_s"] is None
    else:
        assert t["epoch"] == first + 1
        assert t["train_s"] == pytest.approx(sum(steps[:first + 1]), rel=1e-6, abs=1e-6)
        assert t["wall_s"] == pytest.approx(sum(steps[:first + 1]) + (first + 1) * ev + first * gap, rel=1e-6,
                                            abs=1e-6)


def test_a_target_met_before_training_is_reached_at_zero_seconds():
    curve = tl.accuracy_curve(_events([1.0, 1.0], 0.1, 0.2, [0.3, 0.4]), 2)
    assert tl.time_to_accuracy(curve, 0.2, before=0.25) == dict(target=0.2, reached=True, epoch=0, train_s=0.0,
                                                                 wall_s=0.0, evaluated_epochs=2)
    assert tl.time_to_accuracy(curve, 0.35, before=0.25)["epoch"] == 2


def test_an_epoch_without_its_evaluation_ends_the_curve():
    events = _events([1.0, 1.0, 1.0], 0.1, 0.2, [0.1, 0.3, 0.5])
    events = [e for e in events if not (e["name"] == tl.EPOCH_STOP and e["epoch"] == 1)]
    assert [p["epoch"] for p in tl.accuracy_curve(events, 3)] == [1]


# -- rounds ----------------------------------------------------------------------------------------
def test_the_rounds_summary_gives_median_extremes_and_spread():
    rounds = [dict(finetune_s=10.0, accuracy_after=0.50), dict(finetune_s=12.0, accuracy_after=0.46),
              dict(finetune_s=11.0, accuracy_after=0.52)]
    s = experiment.rounds_summary(rounds)
    assert s["finetune_s"] == dict(n=3, median=11.0, min=10.0, max=12.0, spread=pytest.approx(2 / 11),
                                   spread_kind="relative")
    assert s["accuracy_after"]["median"] == 0.50 and s["accuracy_after"]["spread"] == pytest.approx(0.06)
    assert experiment.spread([None], relative=True) is None


# -- FLOPs: torch's counter, with the grouped-convolution weight gradient counted right ------------
@pytest.mark.torch
def test_a_depthwise_convolution_trains_at_three_times_its_forward_flops():
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bench_fixtures.frameworks.torch_backend import _conv_backward_flop
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False).to("meta")
    x = torch.zeros((8, 64, 16, 16), device="meta", requires_grad=True)
    with FlopCounterMode(display=False) as fwd:
        conv(x)
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as train:
        conv(x).sum().backward()
    forward = 8 * 64 * 16 * 16 * 9 * 2
    assert fwd.get_total_flops() == forward
    assert train.get_total_flops() == 3 * forward  # forward, input gradient, weight gradient


# -- in the workers: precision, layout and loss scaling read back; the step runs -------------------
@pytest.mark.torch
def test_torch_bf16_channels_last_and_fp16_loss_scaling_are_read_back(tmp_path):
    """In this process (torch's backend only; a worker adds nothing here but start-up time)."""
    from bench_fixtures.data import Bundle
    from bench_fixtures.frameworks.torch_backend import TorchBackend
    bundle = Bundle.read(tiny_bundle(tmp_path / "bundle", n_train=64, n_test=16, batch=16))
    cfg = resolve(dict(profile="smoke", device="cpu", batch_size=16, precision="bf16", channels_last=True),
                  gpu_count=0)
    backend = TorchBackend(cfg, bundle, tl.Timeline())
    s = backend.build("mobilenet_v2")["settings"]
    assert (s["compute_dtype"], s["memory_format"], s["loss_scale"]) == ("bfloat16", "channels_last (NHWC)", None)
    assert s["head_dtype"].startswith("float32") and s["tf32_conv"] is False
    assert math.isfinite(backend.train_steps(1)["loss"])
    flops = backend.count_flops()
    assert flops["train_per_image"] == pytest.approx(3 * flops["forward_per_image"], rel=0.02)
    cfg = resolve(dict(profile="smoke", device="cpu", batch_size=16, precision="fp16"), gpu_count=0)
    s = TorchBackend(cfg, bundle, tl.Timeline()).build("mobilenet_v2")["settings"]
    assert s["compute_dtype"] == "float16" and s["memory_format"] == "contiguous (NCHW)"
    assert s["loss_scale"]["initial"] == 2.0 ** 15 and s["loss_scaler"] == "torch.amp.GradScaler"  # Keras' start


@pytest.mark.tensorflow
def test_keras_mixed_float16_keeps_the_head_in_float32_and_scales_the_loss(tmp_path):
    bundle = tiny_bundle(tmp_path / "bundle", n_train=32, n_test=16, batch=8)  # fp16 on a CPU is slow
    cfg = resolve(dict(profile="smoke", device="cpu", batch_size=8, precision="fp16"), gpu_count=0)
    with Worker("tensorflow", cfg, bundle, tmp_path / "w.log", 300) as w:
        d = w.request("build", model="vgg19")
        s = d["settings"]
        assert (s["policy"], s["compute_dtype"], s["memory_format"]) == ("mixed_float16", "float16",
                                                                         "channels_last (NHWC)")
        assert s["head_dtype"].startswith("float32") and s["loss_scale"]["initial"] == 2.0 ** 15
        assert d["optimizer"]["name"] == "sgd" and d["optimizer"]["momentum"] == 0.9  # the inner optimizer's
        assert math.isfinite(w.request("train_steps", count=1)["loss"])
        flops = w.request("count_flops")
    # VGG19 has no depthwise layers: every dense op is counted, and forward + 2 gradients = 3x forward
    assert flops["uncounted_ops"] == [] and flops["train_per_image"] == pytest.approx(3 * flops["forward_per_image"],
                                                                                      rel=0.01)


# -- the gate: time to accuracy, and the rounds -----------------------------------------------------
def _run(tta: dict | None, rounds: list[dict] | None = None, target: float | None = 0.2, data=None) -> dict:
    extra = dict(accuracy_after=0.5, time_to_accuracy=tta, target_accuracy=target, test_size=1000)
    if rounds is not None:
        extra["rounds"] = rounds
    times = [r["finetune_s"] for r in rounds] if rounds else [10.0]
    b = {"fullname": "tests/benchmarks/test_cases.py::test_finetune[torch-mobilenet_v2]",
         "name": "test_finetune[torch-mobilenet_v2]", "stats": {"median": sorted(times)[len(times) // 2]},
         "extra_info": extra}
    if data:
        b["stats"]["data"] = data
    return {"machine_info": {"cpu_model": "x"}, "bench_config": {"target_accuracy": target}, "benchmarks": [b]}


def _verdicts(base: dict, cand: dict) -> dict:
    from bench_fixtures.analysis import gate
    verdicts, _, _ = gate.compare(base, cand, gate.Thresholds())
    return {v.metric: v for v in verdicts}


def test_the_gate_flags_a_candidate_that_misses_a_target_its_baseline_reached():
    reached = dict(target=0.2, reached=True, epoch=2, train_s=30.0, wall_s=40.0)
    missed = dict(target=0.2, reached=False, epoch=None, train_s=None, wall_s=None, evaluated_epochs=2)
    v = _verdicts(_run(reached), _run(missed))["time_to_accuracy"]
    assert v.verdict == "REGRESSION" and "never reached" in v.note
    assert _verdicts(_run(missed), _run(reached))["time_to_accuracy"].verdict == "improved"
    assert _verdicts(_run(missed), _run(missed))["time_to_accuracy"].verdict == "ok"
    assert _verdicts(_run(reached), _run(dict(reached, wall_s=50.0)))["time_to_accuracy"].verdict == "REGRESSION"
    assert _verdicts(_run(reached), _run(dict(reached, wall_s=42.0)))["time_to_accuracy"].verdict == "ok"
    assert "time_to_accuracy" not in _verdicts(_run(None, target=None), _run(None, target=None))


def test_against_a_history_a_miss_is_judged_by_the_baselines_that_reached_the_target():
    hit, miss = dict(target=0.2, reached=True, epoch=2, train_s=1.0, wall_s=1.5), dict(target=0.2, reached=False)
    from bench_fixtures.analysis import gate
    verdict = lambda bases, cand: next(v for v in gate.compare([_run(t) for t in bases], _run(cand),  # noqa: E731
                                                               gate.Thresholds())[0] if v.metric == "time_to_accuracy")
    v = verdict([miss, hit], miss)
    assert v.verdict == "REGRESSION" and "1 of 2 baseline(s) did" in v.note
    assert verdict([hit, miss, miss], hit).verdict == "ok"  # against the time of the run that reached it
    assert verdict([miss, miss], hit).verdict == "improved"
    zero = dict(hit, epoch=0, train_s=0.0, wall_s=0.0)  # met before training: nothing to time
    assert verdict([zero], hit).verdict == "ok" and "before training" in verdict([zero], hit).note
    cut = dict(miss, evaluated_epochs=1)  # a curve cut short by missing events: not measured, not a miss
    run = _run(cut)
    run["benchmarks"][0]["extra_info"]["epochs"] = 2
    assert gate._time_to_accuracy(run["benchmarks"][0]) is None


def test_hundreds_of_rounds_and_giant_numbers_are_read_not_crashed_on():
    from bench_fixtures.analysis import gate
    from bench_fixtures.analysis.results import _benchmark_problem
    assert 0 <= gate._min_p(520, 520) < 1e-300
    entry = lambda extra: {"fullname": "t::a", "stats": {"median": 1.0}, "extra_info": extra}  # noqa: E731
    assert "401-digit number" in _benchmark_problem(entry(dict(achieved_flops_per_s=10**400)))
    assert "flops_per_image.train_per_image" in _benchmark_problem(entry(dict(flops_per_image=dict(
        train_per_image=10**400))))
    assert "peak_tflops" in _benchmark_problem(entry(dict(mfu=1e9, peak_tflops=1e-12)))
    assert "rounds_summary.finetune_s.n' must be a whole number" in _benchmark_problem(entry(dict(
        rounds_summary=dict(finetune_s=dict(n=2.5, median=1.0, min=1.0, max=1.0, spread=0.0)))))
    assert "'extra_info.rounds' must be a count >= 1" in _benchmark_problem(entry(dict(rounds=-5)))


def test_a_missed_target_in_the_history_does_not_widen_the_noise_band():
    reached = dict(target=0.2, reached=True, epoch=2, train_s=30.0, wall_s=10.0)
    history = [_run(reached), _run(dict(reached, wall_s=11.0)), _run(dict(reached=False, target=0.2))]
    from bench_fixtures.analysis import gate
    verdicts, _, _ = gate.compare(history, _run(dict(reached, wall_s=30.0)), gate.Thresholds())
    v = next(v for v in verdicts if v.metric == "time_to_accuracy")
    assert v.verdict == "REGRESSION" and "2 runs" in v.rule and "inf" not in v.rule


def test_malformed_new_keys_are_one_line_errors_not_reader_crashes():
    from bench_fixtures.analysis.results import _benchmark_problem
    entry = lambda extra: {"fullname": "t::a", "stats": {"median": 1.0}, "extra_info": extra}  # noqa: E731
    assert "an MFU needs the peak" in _benchmark_problem(entry(dict(mfu=0.5)))
    assert "rounds[0].finetune_s' must be finite" in _benchmark_problem(entry(dict(rounds=[dict(finetune_s=math.nan)])))
    assert "rounds[0].accuracy_after' must lie in 0..1" in _benchmark_problem(entry(dict(rounds=[dict(accuracy_after=42)])))
    assert "rounds_summary.finetune_s.median" in _benchmark_problem(
        entry(dict(rounds_summary=dict(finetune_s=dict(n=1, median=None)))))
    assert "accuracy_curve[0].accuracy" in _benchmark_problem(entry(dict(accuracy_curve=[dict(epoch=1)])))
    assert "time_to_accuracy.reached" in _benchmark_problem(entry(dict(time_to_accuracy=dict(wall_s=3))))
    assert _benchmark_problem(entry(dict(mfu=0.5, peak_tflops=989.5, rounds=3))) is None


def test_the_gate_refuses_runs_with_different_targets_and_reads_a_miss_in_its_table(tmp_path, capsys):
    from bench_fixtures.analysis import gate
    from bench_fixtures.files import write_json_atomic
    reached = dict(target=0.2, reached=True, epoch=2, train_s=30.0, wall_s=40.0)
    base, cand, other = tmp_path / "b.json", tmp_path / "c.json", tmp_path / "o.json"
    write_json_atomic(base, _run(reached))
    write_json_atomic(cand, _run(dict(reached=False, target=0.2, evaluated_epochs=2)))
    write_json_atomic(other, _run(dict(reached, target=0.3), target=0.3))
    assert gate.main([str(base), str(cand)]) == gate.REGRESSION
    out = capsys.readouterr().out
    assert "time_to_accuracy" in out and "missed" in out and "REGRESSION" in out
    assert gate.main([str(base), str(other)]) == gate.CANNOT_COMPARE
    assert "bench_config.target_accuracy: 0.2 vs 0.3" in capsys.readouterr().err


def test_the_gate_tests_time_and_accuracy_on_the_rounds():
    """Without pytest-benchmark's saved data, Mann-Whitney takes the case's own rounds; accuracy is
    their median (one unlucky round is not the case's accuracy)."""
    base = [dict(finetune_s=t, accuracy_after=a) for t, a in ((10.0, 0.50), (10.2, 0.51), (10.1, 0.49))]
    slow = [dict(finetune_s=t * 1.5, accuracy_after=a) for t, a in ((10.0, 0.50), (10.2, 0.10), (10.1, 0.49))]
    v = _verdicts(_run(None, base, target=None), _run(None, slow, target=None))
    assert v["time"].verdict == "REGRESSION" and "Mann-Whitney" in v["time"].rule and "3 vs 3 rounds" in v["time"].note
    assert v["accuracy_after"].candidate == 0.49 and v["accuracy_after"].verdict == "ok"


def test_the_fine_tunes_step_rate_leaves_out_each_epochs_first_step():
    events = _events([2.0, 2.0], 0.1, 0.2, [0.1, 0.2])
    for e in list(events):  # the first step of each epoch ends 1.5 s in (tracing), the rest take 0.5 s
        if e["name"] == tl.FIRST_STEP_START:
            events.append(dict(name=tl.FIRST_STEP_END, epoch=e["epoch"], t_ns=e["t_ns"] + int(1.5e9)))
    assert tl.after_first_steps(events, 2, steps_per_epoch=4) == (pytest.approx(1.0), 6)
    assert tl.after_first_steps(events, 2, steps_per_epoch=1) is None
    assert tl.after_first_steps(events[:3], 2, steps_per_epoch=4) is None
