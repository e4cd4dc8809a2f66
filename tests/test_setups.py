"""The two setups (matched, defaults), the between-epoch work booked where it happens, and the
overhead projection."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_fixtures.config import MATCHED, resolve
from bench_fixtures.runner.worker import Worker
from bench_fixtures.telemetry import timeline as tl
from tests.helpers import tiny_bundle


# -- config ------------------------------------------------------------------------------------
def test_matched_aligns_and_defaults_leaves_each_framework_its_own():
    matched = resolve(dict(profile="seed"), gpu_count=1)
    assert matched.setup == "matched" and matched.setups == ("matched",)
    # pretrained backbones keep the epsilon their weights were trained with; momentum is aligned
    assert (matched.precision, matched.compile, matched.bn_momentum, matched.bn_eps, matched.adam_eps) == \
        ("fp32", "off", 0.1, None, 1e-8)
    defaults = resolve(dict(profile="seed", setup="defaults"), gpu_count=1)
    assert all(getattr(defaults, k) is None for k in MATCHED)
    scratch = resolve(dict(profile="seed", weights="none"), gpu_count=1)
    assert scratch.bn_eps == 1e-5  # nothing pretrained: aligned
    assert "setup=defaults" in defaults.headline() and "precision" not in defaults.headline()


def test_smoke_on_real_data_goes_back_to_the_usual_momentum_in_each_setup():
    """Smoke's momentum 0.5 is for 16 synthetic steps; on real CIFAR-10 the data set's values replace
    it: matched's 0.1, and in defaults each framework's own (not an override)."""
    cfg = resolve(dict(profile="smoke", dataset="cifar10", setup="both"), gpu_count=0)
    assert cfg.overrides == {}
    assert (cfg.for_setup("matched").bn_momentum, cfg.for_setup("defaults").bn_momentum) == (0.1, None)


def test_both_runs_each_setup_and_explicit_values_hold_in_both():
    cfg = resolve(dict(profile="smoke", setup="both", precision="tf32"), gpu_count=0)
    assert cfg.setups == ("matched", "defaults")
    m, d = cfg.for_setup("matched"), cfg.for_setup("defaults")
    assert (m.setup, d.setup) == ("matched", "defaults")
    assert m.precision == d.precision == "tf32"  # given: the same in both
    assert m.bn_momentum == d.bn_momentum == 0.5  # the smoke profile's: 16 steps from scratch need it
    assert (m.bn_eps, d.bn_eps, m.compile, d.compile) == (1e-5, None, "off", None)
    assert d.overrides == {"precision": "tf32", "bn_momentum": 0.5}


@settings(max_examples=40, deadline=None)
@given(st.sets(st.sampled_from(sorted(MATCHED))), st.sampled_from(["matched", "defaults", "both"]),
       st.sampled_from(["none", "imagenet"]))
def test_a_setting_is_aligned_default_or_given_never_anything_else(explicit, setup, weights):
    values = dict(precision="tf32", compile="on", bn_momentum=0.3, bn_eps=1e-4, adam_eps=1e-6)
    cfg = resolve(dict(profile="seed", setup=setup, weights=weights, **{k: values[k] for k in explicit}),
                  gpu_count=1)
    for name in cfg.setups:
        case = cfg.for_setup(name)
        for key in MATCHED:
            got = getattr(case, key)
            if key in explicit:
                assert got == values[key]
            elif name == "defaults" or (key == "bn_eps" and weights == "imagenet"):
                assert got is None
            else:
                assert got == MATCHED[key]


def test_a_bad_setup_is_one_line():
    from bench_fixtures.config import ConfigError
    with pytest.raises(ConfigError, match=r"^--setup 'fast': choose one of matched, defaults, both$"):
        resolve(dict(setup="fast"), gpu_count=0)


# -- the overhead projection ---------------------------------------------------------------------
def events_for(epochs: int, steps_s: float, first_extra_s: float, gap_s: float, eval_s: float,
               setup_s: float = 0.5, teardown_s: float = 0.2) -> list[dict]:
    """A crafted timeline: set-up, then per epoch the first step (slower by FIRST_EXTRA_S), the
    other steps, validation and the between-epoch work."""
    t, out = 0.0, []

    def at(name, **kw):
        out.append(dict(name=name, t_ns=int(round(t * 1e9)), **kw))
    at(tl.RUN_START)
    for k in range(epochs):
        at(tl.EPOCH_START, epoch=k)
        t += setup_s if k == 0 else gap_s / 2
        at(tl.FIRST_STEP_START, epoch=k)
        t += steps_s / 4 + (first_extra_s if k == 0 else 0)
        at(tl.FIRST_STEP_END, epoch=k)
        t += steps_s * 3 / 4
        at(tl.LAST_STEP_END, epoch=k)
        if eval_s:
            at(tl.EVAL_START, epoch=k)
            t += eval_s
            at(tl.EVAL_STOP, epoch=k)
        t += gap_s / 2 if k < epochs - 1 else 0
        at(tl.EPOCH_STOP, epoch=k)
    t += teardown_s
    at(tl.RUN_STOP)
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.floats(0.1, 100), st.floats(0, 30), st.floats(0, 5), st.floats(0, 10))
def test_the_projection_reproduces_the_measured_run_and_splits_its_costs(epochs, steps, first_extra, gap, ev):
    events = events_for(epochs, steps, first_extra, gap, ev)
    p = tl.project_overhead(events, epochs, steps_per_epoch=4)
    total = (events[-1]["t_ns"] - events[0]["t_ns"]) / 1e9
    assert p["measured"]["total_s"] == pytest.approx(total, rel=1e-6, abs=1e-6)
    assert p["per_epoch_steps_s"] == pytest.approx(steps, rel=1e-6, abs=1e-6)
    assert p["per_epoch_eval_s"] == pytest.approx(ev, rel=1e-6, abs=1e-6)
    assert p["per_gap_s"] == pytest.approx(gap if epochs > 1 else 0, rel=1e-6, abs=1e-6)
    assert p["one_time_s"] == pytest.approx(0.5 + first_extra + 0.2, rel=1e-6, abs=1e-5)
    shares = [r["overhead_share"] for r in p["projected"]]
    assert [r["epochs"] for r in p["projected"]] == [5, 50, 500]
    # the one-time cost fades; the per-gap cost does not: the share moves towards gap / (gap + epoch)
    g = p["per_gap_s"]
    limit = g / (g + steps + ev)
    fading = p["one_time_s"] >= g
    assert all((b <= a + 1e-9) if fading else (b >= a - 1e-9) for a, b in zip(shares, shares[1:]))
    assert all((s >= limit - 1e-9) if fading else (s <= limit + 1e-9) for s in shares)


def test_the_projection_refuses_a_timeline_with_missing_events():
    events = [e for e in events_for(3, 1.0, 2.0, 0.5, 0.0) if not (e["name"] == tl.LAST_STEP_END and e["epoch"] == 1)]
    assert tl.project_overhead(events, 3, 4) is None
    assert tl.fit_teardown(events_for(2, 1.0, 0.0, 0.0, 0.0, teardown_s=0.25), 2) == pytest.approx(0.25)


# -- between-epoch work is booked between epochs, in both frameworks ------------------------------
@pytest.mark.parametrize("framework", [pytest.param("torch", marks=pytest.mark.torch),
                                       pytest.param("tensorflow", marks=pytest.mark.tensorflow),
                                       pytest.param("jax", marks=pytest.mark.jax)])
def test_work_after_the_last_step_lands_in_the_gap_not_the_steps(framework, tmp_path):
    """A user's callback that sleeps 0.3 s at each epoch end and 0.3 s as validation starts: both
    fall after the epoch's last step (synchronised where it finished) and before the next epoch's
    first; the gap holds them. Runs in the defaults setup, whose settings it also reads back."""
    cfg = resolve(dict(profile="smoke", device="cpu", batch_size=16, epochs=2, eval_every_epoch=True,
                       setup="defaults"), gpu_count=0)
    bundle = tiny_bundle(tmp_path / "bundle", n_train=64, n_test=16, batch=16, epochs=2)
    with Worker(framework, cfg, bundle, tmp_path / "w.log", 300, faults=True) as w:
        # the cheapest model of each: TensorFlow traces VGG19 5x faster than MobileNetV2; torch runs MobileNetV2
        # faster, and so does JAX (XLA's CPU convolutions: VGG19 steps take seconds)
        described = w.request("build", model="vgg19" if framework == "tensorflow" else "mobilenet_v2")
        w.request("sleep_hooks", epoch_end_s=0.3, eval_begin_s=0.3)
        w.events.clear()
        w.request("fit", epochs=2)
        events = w.events[:]
    settings_ = described["settings"]
    assert settings_["setup"] == "defaults"
    if framework == "tensorflow":  # Keras' own: tf.data autotuning, TF32 on; no XLA on a CPU (Keras 3.15)
        assert settings_["input_autotune"] is True and settings_["prefetch"] == "AUTOTUNE"
        assert settings_["tf32_matmul"] is True and settings_["xla"] is False
        assert settings_["compile_requested"] == "auto"
    elif framework == "jax":  # JAX's own: XLA always, preallocation (nothing to preallocate on a CPU), its precision
        assert settings_["xla"] is True and settings_["matmul_precision"] == "default"
        assert settings_["compilation_cache"].startswith("on, ")  # the suite's (tests/conftest.py), recorded
        assert settings_["memory_growth"] is None and settings_["input_autotune"] is False
    else:  # torch's: cuDNN autotuning off, TF32 for convolutions only
        assert settings_["cudnn_autotune"] is False
        assert settings_["tf32_conv"] is True and settings_["tf32_matmul"] is False
    at = {(e["name"], e.get("epoch"), e.get("at")): e["t_ns"] for e in events}
    for k in (0, 1):
        last_step = at[tl.LAST_STEP_END, k, None]
        for where in ("eval_begin", "epoch_end"):
            assert at[tl.USER_WORK_START, k, where] >= last_step, (k, where)
            assert at[tl.USER_WORK_STOP, k, where] - at[tl.USER_WORK_START, k, where] >= 0.3e9
    assert at[tl.USER_WORK_STOP, 0, "epoch_end"] <= at[tl.FIRST_STEP_START, 1, None]
    gaps, problems = tl.inter_epoch_gaps(events, 2)
    assert not problems and gaps[0]["total_s"] >= 0.6
    phases, _ = tl.epoch_phases(events, 2)
    for p in phases:  # the validation's sleep in the evaluation, not the steps (the epoch end's: the gap)
        assert p["eval_s"] >= 0.3, p
    for k in (0, 1):  # no user work inside an epoch's steps: told by the events' order, not by a time bound
        steps = (at[tl.FIRST_STEP_START, k, None], at[tl.LAST_STEP_END, k, None])
        for where in ("eval_begin", "epoch_end"):
            assert at[tl.USER_WORK_START, k, where] >= steps[1] or at[tl.USER_WORK_STOP, k, where] <= steps[0]
        assert phases[k]["steps_s"] == (steps[1] - steps[0]) / 1e9
