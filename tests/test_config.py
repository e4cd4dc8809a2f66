"""Option resolution: profiles, overrides, auto choices, and bad values rejected up front."""
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_fixtures.config import (MAX_SEED, MAX_WORKER_TIMEOUT_S, MIN_WORKER_MEMORY_MIB, MONITOR_INTERVAL_RANGE,
                                   OPTION, PROFILES, ConfigError, resolve)


def test_auto_profile_follows_the_gpu():
    cpu = resolve({}, gpu_count=0, gpu_reason="NVML unavailable")
    assert (cpu.profile, cpu.device) == ("smoke", "cpu") and "NVML unavailable" in cpu.profile_reason
    gpu = resolve({}, gpu_count=1)
    assert (gpu.profile, gpu.device, gpu.dataset, gpu.epochs, gpu.batch_size, gpu.weights) == \
        ("seed", "gpu", "cifar10", 5, 32, "imagenet")
    assert resolve({"device": "cpu"}, gpu_count=1).profile == "smoke"


def test_every_profile_value_can_be_overridden():
    cfg = resolve({"profile": "seed", "epochs": 2, "dataset": "synthetic", "train_size": 64,
                   "weights": "none", "lr": 0.1, "bn_momentum": 0.2}, gpu_count=0)
    assert (cfg.profile, cfg.epochs, cfg.dataset, cfg.train_size, cfg.weights, cfg.lr, cfg.bn_momentum) == \
        ("seed", 2, "synthetic", 64, "none", 0.1, 0.2)
    assert cfg.device == "cpu" and cfg.preprocess == "cifar"


def test_preprocess_and_lr_defaults():
    assert resolve({"profile": "seed"}, 1).preprocess == "native"
    assert resolve({"optimizer": "adam"}, 0).lr == 0.001
    assert resolve({}, 0).lr == 0.01


@pytest.mark.parametrize("options,needle", [
    ({"profile": "fast"}, "--bench-profile 'fast': choose one of auto, smoke, seed"),
    ({"dataset": "mnist"}, "--dataset 'mnist'"),
    ({"weights": "random"}, "--weights random: choose one of imagenet, none, same, or give a folder"),
    ({"device": "tpu"}, "--device 'tpu'"),
    ({"optimizer": "rmsprop"}, "--optimizer"),
    ({"epochs": 0}, "--epochs 0: must be an integer >= 1"),
    ({"batch_size": -4}, "--batch-size -4"),
    ({"train_size": -1}, "--train-size -1"),
    ({"lr": 0.0}, "--lr 0.0: must be a number > 0"),
    ({"lr": float("nan")}, "--lr nan"),
    ({"image_size": 16}, "--image-size 16"),
    ({"train_size": 16, "batch_size": 32}, "--batch-size 32 is larger than --train-size 16"),
    ({"bn_momentum": 1.5}, "--bn-momentum 1.5"),
    ({"worker_timeout": 0.001}, "--worker-timeout 0.001: must lie in [1, 2,147,483] s: a worker takes longer than 1 s to start"),
    ({"image_size": 100000}, "--image-size 100000: must be at most 2,048: CIFAR's 32 px are resized to it"),
    ({"test_size": 1}, "--test-size 1: must be 0 (all) or at least 10"),
    ({"bn_eps": 1e300}, "--bn-eps 1e+300: must lie in (0, 1]"),
    ({"bn_momentum": 1e-320}, "--bn-momentum 1e-320: must lie in [1e-06, 1]: below 1e-6 the running statistics never move"),
    ({"min_accuracy_gain": 1.0000001}, "--min-accuracy-gain 1.0000001: must lie in [-1, 1]"),
    ({"data_dir": ""}, "--data-dir is empty"),
    ({"epochs": 10**400}, "--epochs: a 401-digit number is out of any range it can run with"),
])
def test_bad_values_name_the_option(options, needle):
    with pytest.raises(ConfigError) as e:
        resolve(options, gpu_count=0)
    assert needle in str(e.value)


def test_profiles_share_their_keys():
    """Except the framework settings that the setups decide: a profile that sets one (smoke's BN
    momentum) sets it in both setups."""
    from bench_fixtures.config import MATCHED
    assert PROFILES["smoke"].keys() - MATCHED.keys() == PROFILES["seed"].keys() - MATCHED.keys()


def test_bad_option_stops_pytest_before_any_worker(tmp_path):
    """A usage error, not a failing case: pytest exits 4 with the option named."""
    r = subprocess.run([sys.executable, "-m", "pytest", "--benchmark-only", "--epochs", "0", "-k", "mobilenet"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 4
    assert "--epochs 0: must be an integer >= 1" in r.stderr


def test_smoke_on_real_cifar_gets_sizes_that_can_learn():
    cfg = resolve({"dataset": "cifar10"}, gpu_count=0)
    assert (cfg.profile, cfg.train_size, cfg.test_size, cfg.bn_momentum) == ("smoke", 2000, 1000, 0.1)
    assert resolve({"dataset": "cifar10", "train_size": 500}, gpu_count=0).train_size == 500


NUMERIC = ["train_size", "test_size", "epochs", "batch_size", "lr", "momentum", "seed", "min_accuracy_gain",
           "worker_timeout", "worker_memory_limit", "finetune_rounds", "step_rounds", "step_count",
           "step_warmup", "image_size", "bn_momentum", "bn_eps", "adam_eps", "monitor_interval"]
HOSTILE = st.one_of(st.none(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, -1, 2**32, 2**31, 1e-300, 1e300, 10**400, -10**400, "7", [], True]))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(NUMERIC), HOSTILE, max_size=6))
def test_any_option_values_resolve_within_range_or_fail_with_the_option_named(options):
    """Every option to its real range: whatever comes in, resolve() returns a config whose values all
    lie in what the workers can run with, or raises ConfigError naming an option, never anything else."""
    try:
        cfg = resolve(options, gpu_count=0)
    except ConfigError as e:
        assert str(e).startswith("--") and "\n" not in str(e), str(e)
        return
    assert 0 <= cfg.seed <= MAX_SEED and 1 <= cfg.worker_timeout <= MAX_WORKER_TIMEOUT_S
    assert 32 <= cfg.image_size <= 2048 and (cfg.test_size == 0 or cfg.test_size >= 10)
    assert 0 < cfg.bn_eps <= 1 and 0 < cfg.adam_eps <= 1 and cfg.bn_momentum >= 1e-6
    assert MONITOR_INTERVAL_RANGE[0] <= cfg.monitor_interval <= MONITOR_INTERVAL_RANGE[1]
    assert cfg.epochs >= 1 and cfg.batch_size >= 1 and cfg.image_size >= 32 and -1 <= cfg.min_accuracy_gain <= 1
    assert cfg.train_size == 0 or cfg.train_size >= cfg.batch_size
    assert all(math.isfinite(v) for v in (cfg.lr, cfg.momentum, cfg.bn_eps, cfg.adam_eps)) and 0 < cfg.bn_momentum <= 1
    assert cfg.worker_memory_limit == 0 or cfg.worker_memory_limit >= MIN_WORKER_MEMORY_MIB


def test_data_dir_that_cannot_be_a_folder_says_why(tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"--data-dir .*dangling: a dangling symlink \(to .*nowhere, which does "
                                          r"not exist\); give the folder"):
        resolve({"data_dir": str(tmp_path / "dangling")}, 0)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ConfigError, match="a symlink loop"):
        resolve({"data_dir": str(tmp_path / "loop")}, 0)


AB_NAMES = {"step_count": "--steps", "step_warmup": "--warmup", "step_rounds": "--pairs"}  # bench ab's


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(AB_NAMES)), HOSTILE, min_size=1, max_size=3))
def test_a_caller_s_own_option_names_are_the_ones_errors_use(options):
    """A tool that sets these settings under its own options (bench ab's --steps) gets errors naming
    those, never the pytest option its user did not type."""
    try:
        resolve(options, gpu_count=0, names=AB_NAMES)
    except ConfigError as e:
        assert str(e).split(" ")[0].rstrip(":") in AB_NAMES.values(), str(e)
        assert not any(OPTION[field] in str(e) for field in AB_NAMES), str(e)
