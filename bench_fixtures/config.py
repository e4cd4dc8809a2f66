"""The benchmark's settings: two profiles, every value overridable, validated before anything runs."""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .files import folder_problem, size, size_pair

MODELS = ("resnet50", "vgg19", "mobilenet_v2")

PROFILES: dict[str, dict[str, Any]] = {
    # Small enough to run all six cases on 2 CPU cores within a few minutes, big enough to learn:
    # 16 steps from random init, with BN running statistics that catch up that fast (momentum 0.5).
    "smoke": dict(dataset="synthetic", train_size=256, test_size=100, epochs=2, batch_size=32, bn_momentum=0.5,
                  weights="none", image_size=32, finetune_rounds=1, step_rounds=3, step_count=1,
                  step_warmup=1, min_accuracy_gain=0.05, eval_every_epoch=False, worker_timeout=900.0),
    # The seed experiment: full CIFAR-10, 5 epochs at batch 32, fine-tuning ImageNet weights; three
    # fine-tune rounds (each a fresh model, same seed), so every figure comes with its spread.
    "seed": dict(dataset="cifar10", train_size=0, test_size=0, epochs=5, batch_size=32,
                 weights="imagenet", image_size=32, finetune_rounds=3, step_rounds=10, step_count=50,
                 step_warmup=20, min_accuracy_gain=0.10, eval_every_epoch=True, worker_timeout=7200.0),
    # The GPU runner's short check (.ci/gpu): real CIFAR-10, a 10,000-image training subset, the full
    # test set, the seed's 5 epochs at batch 32; all six cases within about 6 minutes on an H100-class GPU.
    "quick": dict(dataset="cifar10", train_size=10000, test_size=0, epochs=5, batch_size=32,
                  weights="imagenet", image_size=32, finetune_rounds=1, step_rounds=5, step_count=50,
                  step_warmup=20, min_accuracy_gain=0.10, eval_every_epoch=True, worker_timeout=1800.0),
}
MATCHED_BN_MOMENTUM = 0.1  # torch's default; Keras 0.9
# A profile on the other data set: smoke on real CIFAR-10 needs more steps than 16 to show a gain
# (and BN statistics at the usual momentum); applied before explicit options.
DATASET_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    ("smoke", "cifar10"): dict(train_size=2000, test_size=1000, bn_momentum=MATCHED_BN_MOMENTUM),
}
# Smoke with --train-layers head: a head trained alone on a frozen backbone needs more than 16 steps to
# show the gain (measured on staged test files: VGG19 10% -> 10% in 2 epochs, 61% in 4); each of its
# steps is a forward pass of the backbone plus the head's update, so 4 epochs cost less than 2 full ones.
TRAIN_LAYERS_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {("smoke", "head"): dict(epochs=4)}
COMMON: dict[str, Any] = dict(optimizer="sgd", lr=None, momentum=0.9, seed=0, device="auto",
                              data_dir=None, preprocess="auto", monitor_interval=0.05,
                              worker_memory_limit=0, setup="matched", channels_last=False,
                              target_accuracy=None, peak_tflops=None, train_layers="all",
                              weights_dir=None, replicas=1)
# The framework settings whose defaults differ between torch, TensorFlow and JAX. `matched` aligns them
# to these values; `defaults` leaves each framework's own (None: the worker sets nothing and reads
# back what the framework uses). A value given by an option, or by the profile (smoke's BatchNorm
# momentum, which 16 steps from random init need), is applied in both setups.
MATCHED: dict[str, Any] = dict(precision="fp32", compile="off", bn_momentum=MATCHED_BN_MOMENTUM, bn_eps=1e-5,
                               adam_eps=1e-8)
SETUPS = ("matched", "defaults")
PRETRAINED = ("imagenet", "same")  # --weights values that load a checkpoint
MIN_WORKER_MEMORY_MIB = 1024  # torch or TensorFlow imported, before any model
# The real ranges, each with the reason a value outside it cannot run (said in the error).
MAX_SEED = 2**32 - 1  # Keras' set_random_seed seeds NumPy's legacy generator: 32 bits
MAX_WORKER_TIMEOUT_S = 2_147_483  # epoll_wait takes the wait in int milliseconds: < 2**31 ms (24.8 days)
MIN_WORKER_TIMEOUT_S = 1.0  # a worker needs longer than this to start and answer 'hello'
MAX_IMAGE_SIZE = 2048  # 7 times ImageNet's 299: beyond, a single image's activations outgrow any device
MIN_TEST_SIZE = 10  # the test subset is stratified over the 10 classes: one image each at least
MAX_REPLICAS = 1024  # data-parallel replicas on this host (one process each)
MAX_EPOCHS = 10_000  # the seed runs 5; the readers of a run file walk every epoch
MAX_STEPS = 10**6  # training steps in one train_step round or its warm-up: a round is seconds to minutes, not days
MAX_ROUNDS = 100_000  # timed rounds of one case; the gate's exact test costs ~0.4 s at this count, 25 s at 10x
# Host memory one replica's worker takes, for --replicas N at startup. Measured peaks (VmHWM) of one
# smoke fine-tune here, 32 px at batch 32: torch 0.8-1.2 GiB, TensorFlow 1.1-1.5 GiB (ResNet50 the
# largest), Keras on JAX 1.2-1.4 GiB; most of it the framework's runtime, the same at any image size.
REPLICA_BASE_MIB = 1600
# ... plus, on a CPU (where activations live in host memory), per image of a batch and per 32x32 px
# of its area: from 32 px to 96 px at batch 32, peaks grew 1.4-2.0 MiB per image and tile (VGG19,
# ResNet50; torch and TensorFlow), so 224 px at batch 32 adds about 4 GiB.
REPLICA_MIB_PER_IMAGE_TILE = 2.5
MONITOR_INTERVAL_RANGE = (0.01, 60.0)  # below 10 ms sampling takes a visible share of a core; above
#                                        a minute a fine-tune's epochs get no sample of their own
# fp32 (TF32 off), tf32 (fp32 with TF32 on), and mixed precision: bf16 / fp16 compute with float32
# weights, logits and loss (torch autocast, Keras' mixed_* policies), fp16 with dynamic loss scaling.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
PEAK_TFLOPS_RANGE = (1e-3, 1e5)  # --peak-tflops, in TFLOP/s; the run validator holds files to it too
DEFAULT_LR = {"sgd": 0.01, "adam": 0.001}
CHOICES = {"profile": ("auto", "smoke", "seed", "quick"), "dataset": ("cifar10", "synthetic"),
           "weights": ("imagenet", "none", "same"), "device": ("auto", "cpu", "gpu"),
           "optimizer": ("sgd", "adam"), "precision": PRECISIONS, "compile": ("off", "on"),
           "preprocess": ("auto", "cifar", "native"), "setup": ("matched", "defaults", "both"),
           "train_layers": ("all", "head")}
# Option name for each field, so an error names what the user typed.
OPTION = {f: "--" + f.replace("_", "-") for f in (*PROFILES["smoke"], *COMMON, *MATCHED)}
OPTION["profile"] = "--bench-profile"


class ConfigError(ValueError):
    """A bad option value; the message names the option and what is accepted."""


@dataclass(frozen=True)
class BenchConfig:
    profile: str
    profile_reason: str
    device: str            # resolved: "cpu" or "gpu"
    device_reason: str
    dataset: str
    data_dir: str | None
    train_size: int        # 0 = all
    test_size: int
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weights: str           # imagenet (each framework's own checkpoint), same (torchvision's in both), none
    weights_dir: str | None  # a staged folder of the weight files (--weights-dir, or --weights DIR)
    image_size: int
    preprocess: str        # resolved: "cifar" or "native"
    setup: str             # "matched", "defaults", or "both" (a session that runs each case in both)
    # The MATCHED settings; None = the framework's own default (setup defaults), read back by the worker.
    precision: str | None
    compile: str | None
    bn_momentum: float | None  # torch convention; Keras gets 1 - this
    bn_eps: float | None       # None with matched + imagenet weights too: each backbone keeps its own
    adam_eps: float | None
    seed: int
    min_accuracy_gain: float
    worker_timeout: float
    finetune_rounds: int
    step_rounds: int
    step_count: int
    step_warmup: int
    eval_every_epoch: bool
    channels_last: bool    # torch only: NHWC memory format (Keras is NHWC already)
    target_accuracy: float | None  # time to this test accuracy (needs eval_every_epoch)
    peak_tflops: float | None      # the device's dense peak for MFU; None = the table in peaks.py
    train_layers: str      # "all" (the whole network) or "head" (backbone frozen, its BatchNorm in inference mode)
    monitor_interval: float  # seconds between utilisation/memory samples
    worker_memory_limit: int  # MiB of host memory a worker may map (RLIMIT_DATA); 0 = no limit
    replicas: int = 1      # data-parallel replicas of each case on this host, one process each
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # MATCHED settings given by option/profile

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "BenchConfig":
        """The config back from `as_dict()` (the worker's copy, a run file's bench_config): every field
        present and no other, so a reader on the far side of a pipe or a file reads attributes."""
        fields = {f.name for f in dataclasses.fields(cls)}
        missing, unknown = fields - values.keys() - {"replicas", "overrides"}, values.keys() - fields
        if missing or unknown:
            raise ConfigError(f"not a bench config: missing {sorted(missing)}, unknown {sorted(unknown)}")
        return cls(**values)

    @property
    def setups(self) -> tuple[str, ...]:
        return SETUPS if self.setup == "both" else (self.setup,)

    def for_setup(self, setup: str) -> "BenchConfig":
        """This session's config for one case in SETUP: the framework settings that setup implies."""
        return dataclasses.replace(self, setup=setup, **setup_values(setup, self.overrides, self.weights))

    def headline(self) -> str:
        return (f"bench: profile={self.profile} ({self.profile_reason}); device={self.device} "
                f"({self.device_reason}); dataset={self.dataset}; epochs={self.epochs} "
                f"batch={self.batch_size} weights={self.weights} setup={self.setup}"
                + (f" precision={self.precision}" if self.precision else "")
                + (" (fp16 on a CPU: emulated, several times slower than fp32; a GPU precision)"
                   if self.precision == "fp16" and self.device == "cpu" else "")
                + (" channels_last" if self.channels_last else "")
                + (f" weights_dir={self.weights_dir}" if self.weights_dir else "")
                + (f" train_layers={self.train_layers}" if self.train_layers != "all" else "")
                + (f" target_accuracy={self.target_accuracy:g}" if self.target_accuracy is not None else "")
                + (f" replicas={self.replicas} on this host (batch {self.batch_size} each)" if self.replicas > 1 else ""))


def setup_values(setup: str, overrides: Mapping[str, Any], weights: str) -> dict[str, Any]:
    """The MATCHED settings under SETUP: aligned (matched), the framework's own (defaults: None),
    and in both the values given explicitly. Pretrained backbones keep the BatchNorm epsilon their
    weights were trained with (Keras' MobileNetV2 1e-3, torchvision 1e-5): forcing one changes
    what the weights compute; momentum only shapes training and is aligned."""
    values = dict(MATCHED) if setup == "matched" else dict.fromkeys(MATCHED)
    if weights in PRETRAINED:
        values["bn_eps"] = None
    return {**values, **overrides}


def _check_choice(field: str, value: Any) -> None:
    if value not in CHOICES[field]:
        raise ConfigError(f"{OPTION[field]} {value!r}: choose one of {', '.join(CHOICES[field])}")


def _check_number(field: str, value: Any, kind: type, low: float, low_ok: bool = True) -> None:
    if isinstance(value, int) and abs(value) > 2**63 - 1:  # float() of it would overflow
        raise ConfigError(f"{OPTION[field]}: a {len(str(abs(value)))}-digit number is out of any range it can run with")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or value < low or (value == low and not low_ok):
        bound = f">= {low}" if low_ok else f"> {low}"
        raise ConfigError(f"{OPTION[field]} {value!r}: must be a{'n integer' if kind is int else ' number'} {bound}")


def _data_dir(given: str) -> str:
    """`~` expanded; a path that exists must be a folder."""
    path = os.path.expanduser(given)
    problem = folder_problem(path)
    if problem:
        raise ConfigError(f"--data-dir {given}: {problem}; give the folder that holds (or will hold) "
                          f"cifar-10-batches-py/")
    return path


def _weights(values: dict[str, Any]) -> None:
    """--weights DIR is --weights imagenet --weights-dir DIR; a staged folder must exist; only a
    pretrained start can be frozen (a random backbone's features carry nothing to train a head on)."""
    weights, folder = values["weights"], values["weights_dir"]
    if weights not in CHOICES["weights"]:
        path = os.path.expanduser(str(weights))
        if not os.path.isdir(path):
            raise ConfigError(f"--weights {weights}: choose one of {', '.join(CHOICES['weights'])}, or give a "
                              f"folder of staged weight files (`bench weights fetch DIR` makes one)"
                              + (f"; {folder_problem(path)}" if os.path.lexists(path) else "; no such folder"))
        if folder is not None:
            raise ConfigError(f"--weights {weights} and --weights-dir {folder}: give the folder once "
                              f"(--weights DIR means --weights imagenet --weights-dir DIR)")
        values["weights"], folder = "imagenet", path
    if folder is not None:
        path = os.path.expanduser(str(folder))
        problem = folder_problem(path) or (None if os.path.isdir(path) else "no such folder")
        if problem:
            raise ConfigError(f"--weights-dir {folder}: {problem}; give the folder holding the weight files "
                              f"(`bench weights fetch DIR` makes one)")
        if values["weights"] not in PRETRAINED:
            raise ConfigError(f"--weights-dir {folder} with --weights {values['weights']}: a staged folder is for "
                              f"pretrained starts; add --weights imagenet (or same), or drop --weights-dir")
        values["weights_dir"] = os.path.abspath(path)
    if values["train_layers"] == "head" and values["weights"] not in PRETRAINED:
        raise ConfigError(f"--train-layers head with --weights {values['weights']}: a frozen random backbone is not "
                          f"transfer learning (its features carry nothing to train a head on); give pretrained "
                          f"weights (--weights imagenet, same, or a staged folder) or --train-layers all")


def rename_options(message: str, names: Mapping[str, str] | None) -> str:
    """MESSAGE with each setting's option (OPTION) written as NAMES calls it: a tool whose own options
    map onto these settings (`bench ab --steps` is --step-count) names what its user typed."""
    for field, name in (names or {}).items():
        message = re.sub(rf"(?<![\w-]){re.escape(OPTION[field])}(?![\w-])", name, message)
    return message


def visible_gpus(nvml_count: int, environ: Mapping[str, str] | None = None) -> int:
    """The GPUs a worker can use: NVML's count, narrowed by CUDA_VISIBLE_DEVICES where it is set."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" not in environ:
        return nvml_count
    seen: list[str] = []
    for token in (t.strip() for t in environ["CUDA_VISIBLE_DEVICES"].split(",")):
        # As CUDA reads it: in order, up to the first entry that names no device (`-1`, `x`, an index
        # past the last GPU, an empty one); a device named twice is one device.
        index_ok = token.isdigit() and int(token) < nvml_count
        if not (index_ok or token.startswith(("GPU-", "MIG-"))):
            break
        if token not in seen:
            seen.append(token)
    return min(nvml_count, len(seen))


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's or taskset's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def available_memory() -> int:
    """Bytes of memory available to new processes now (free plus reclaimable cache)."""
    import psutil
    return psutil.virtual_memory().available


def replica_memory(device: str, batch_size: int, image_size: int, limit_mib: int = 0) -> int:
    """Bytes of host memory one replica's worker is expected to take (REPLICA_BASE_MIB; on a CPU,
    plus its batch's activations); a --worker-memory-limit caps it (past it the worker fails cleanly)."""
    mib = REPLICA_BASE_MIB
    if device == "cpu":
        mib += REPLICA_MIB_PER_IMAGE_TILE * batch_size * (image_size / 32) ** 2
    if limit_mib:
        mib = min(mib, limit_mib)
    return int(mib * 2**20)


def replicas_problem(replicas: int, device: str, gpus: int, visible: int, cores: int, available: int,
                     per_replica: int) -> str | None:
    """Why REPLICAS processes cannot run side by side on this host (one line: the tightest bound, how
    many fit and the fix), or None: each needs its own GPU on a GPU run (of the VISIBLE of the GPUS
    NVML sees), its own core on a CPU run, and its memory (PER_REPLICA
    of AVAILABLE bytes)."""
    elsewhere = ", or run the rest on another host (README)"
    bounds = []  # (how many fit, the option and why, the fix)
    if device == "gpu":
        narrowed = f", of which CUDA_VISIBLE_DEVICES leaves {visible}" if visible < gpus else ""
        bounds.append((visible, f" on a GPU host: each replica needs its own GPU and NVML sees {gpus}{narrowed}",
                       elsewhere))
    if device == "cpu":
        bounds.append((cores, f" on a CPU run: each replica needs at least a core of its own, and this process may "
                              f"use {cores}", elsewhere))
    fits = available // per_replica
    need, have = size_pair(replicas * per_replica, available)
    bounds.append((fits, f": each replica's worker takes about {size(per_replica)} of memory, {need} for {replicas}, "
                         f"and this machine has {have} available",
                   (", or free memory" if fits else ": free memory first")
                   + (" (or lower --batch-size / --image-size)" if device == "cpu" else "")))
    fits, why, fix = min(bounds, key=lambda b: b[0])
    if replicas <= fits:
        return None
    return f"--replicas {replicas}{why}; give at most {fits}{fix}"


def resolve(options: Mapping[str, Any], gpu_count: int, gpu_reason: str = "",
            names: Mapping[str, str] | None = None) -> BenchConfig:
    """Profile defaults, then explicit options (None = not given); auto choices resolved and said why.
    NAMES: field -> the option its caller's user typed, where it is not OPTION's (errors name it)."""
    try:
        return _resolve(options, gpu_count, gpu_reason)
    except ConfigError as e:
        raise ConfigError(rename_options(str(e), names)) from None


def _resolve(options: Mapping[str, Any], gpu_count: int, gpu_reason: str) -> BenchConfig:
    given = {k: v for k, v in options.items() if v is not None}
    profile = given.pop("profile", "auto")
    _check_choice("profile", profile)
    device = given.get("device", "auto")
    _check_choice("device", device)
    if profile == "auto":
        profile = "seed" if gpu_count and device != "cpu" else "smoke"
        profile_reason = ("auto: a GPU is visible" if profile == "seed"
                          else "auto: no GPU" + (f", {gpu_reason}" if gpu_reason else "") if device != "cpu"
                          else "auto: --device cpu")
    else:
        profile_reason = "--bench-profile"
    unknown = set(given) - set(PROFILES[profile]) - set(COMMON) - set(MATCHED)
    if unknown:
        raise ConfigError(f"unknown setting(s) {sorted(unknown)}")
    dataset = given.get("dataset", PROFILES[profile]["dataset"])
    layers = given.get("train_layers", COMMON["train_layers"])
    values = {**COMMON, **PROFILES[profile], **DATASET_OVERRIDES.get((profile, dataset), {}),
              **TRAIN_LAYERS_OVERRIDES.get((profile, layers), {}), **given}
    if profile == "smoke" and "train_size" not in given and isinstance(values.get("replicas"), int) \
            and values["replicas"] > 1 and values["train_size"]:
        # Smoke's subset grows with the replicas on this host, so an epoch has as many steps as with
        # one (its 16 steps are what it needs to learn): each replica does the single process's work.
        # --train-size fixes it instead; the other profiles keep theirs (fewer steps per epoch).
        values["train_size"] *= values["replicas"]
    _check_choice("setup", values["setup"])
    _check_choice("train_layers", values["train_layers"])
    _weights(values)
    # Set explicitly: by an option, or by the profile unless the data set's own values replace it
    # (smoke on real CIFAR-10 goes back to the usual momentum: matched's, or each framework's own).
    by_dataset = DATASET_OVERRIDES.get((profile, dataset), {})
    values["overrides"] = {k: values[k] for k in MATCHED
                           if k in given or (k in PROFILES[profile] and k not in by_dataset)}
    values.update(setup_values(values["setup"] if values["setup"] != "both" else "matched",
                               values["overrides"], values.get("weights", "")))
    if device == "auto":
        values["device"] = "gpu" if gpu_count else "cpu"
        device_reason = f"auto: {gpu_count} GPU(s) seen by NVML" if gpu_count else "auto: " + (gpu_reason or "no GPU")
    else:
        device_reason = "--device"

    for field in ("dataset", "weights", "optimizer", "precision", "compile", "preprocess", "train_layers"):
        if values[field] is not None:
            _check_choice(field, values[field])
    for field in ("train_size", "test_size", "step_warmup", "worker_memory_limit"):
        _check_number(field, values[field], int, 0)
    for field in ("epochs", "batch_size", "finetune_rounds", "step_rounds", "step_count", "replicas"):
        _check_number(field, values[field], int, 1)
    readers = "the gate and the report refuse run files beyond it"
    for field, most, why in (("epochs", MAX_EPOCHS, readers), ("finetune_rounds", MAX_ROUNDS, readers),
                             ("step_rounds", MAX_ROUNDS, readers),
                             ("step_count", MAX_STEPS, "a round is seconds to minutes of training, not days"),
                             ("step_warmup", MAX_STEPS, "a warm-up is seconds to minutes of training, not days")):
        if values[field] > most:
            raise ConfigError(f"{OPTION[field]} {values[field]}: must be at most {most:,}: {why}")
    if values["replicas"] > MAX_REPLICAS:
        raise ConfigError(f"--replicas {values['replicas']}: must be at most {MAX_REPLICAS} (one process per "
                          f"replica on this host); for more, run the same command on more hosts (README)")
    _check_number("image_size", values["image_size"], int, 32)
    if values["image_size"] > MAX_IMAGE_SIZE:
        raise ConfigError(f"--image-size {values['image_size']}: must be at most {MAX_IMAGE_SIZE}: CIFAR's 32 px are "
                          f"resized to it, and beyond it one image's activations outgrow any device's memory")
    if 0 < values["test_size"] < MIN_TEST_SIZE:
        raise ConfigError(f"--test-size {values['test_size']}: must be 0 (all) or at least {MIN_TEST_SIZE}: the test "
                          f"subset is stratified over the 10 classes")
    _check_number("seed", values["seed"], int, 0)
    if values["seed"] > MAX_SEED:
        raise ConfigError(f"--seed {values['seed']}: must be at most {MAX_SEED} (2**32 - 1): TensorFlow's "
                          f"runs seed NumPy's 32-bit legacy generator, and every framework gets the same seed")
    if values["lr"] is None:
        values["lr"] = DEFAULT_LR[values["optimizer"]]
    _check_number("lr", values["lr"], float, 0, low_ok=False)
    _check_number("momentum", values["momentum"], float, 0)
    _check_number("worker_timeout", values["worker_timeout"], float, 0, low_ok=False)
    if values["worker_timeout"] < MIN_WORKER_TIMEOUT_S:
        raise ConfigError(f"--worker-timeout {values['worker_timeout']!r}: must be at least {MIN_WORKER_TIMEOUT_S:g} s: "
                          f"a worker takes longer than that to start")
    if values["worker_timeout"] > MAX_WORKER_TIMEOUT_S:
        raise ConfigError(f"--worker-timeout {values['worker_timeout']:g}: must be at most {MAX_WORKER_TIMEOUT_S} s "
                          f"(24.8 days, the longest wait the OS timer takes)")
    _check_number("min_accuracy_gain", values["min_accuracy_gain"], float, -1)
    if values["min_accuracy_gain"] > 1:
        raise ConfigError(f"--min-accuracy-gain {values['min_accuracy_gain']!r}: must lie in [-1, 1]: it is a "
                          f"fraction of the test set (0.05 = 5 points)")
    for field in ("bn_momentum", "bn_eps", "adam_eps", "monitor_interval"):
        if values[field] is not None:
            _check_number(field, values[field], float, 0, low_ok=False)
    low, high = MONITOR_INTERVAL_RANGE
    if not low <= values["monitor_interval"] <= high:
        raise ConfigError(f"--monitor-interval {values['monitor_interval']:g}: must lie in [{low:g}, {high:g}] s: "
                          f"below {low:g} s the sampling thread takes a visible share of a core from the "
                          f"training it measures; above {high:g} s epochs get no sample of their own")
    if values["data_dir"] is not None:
        if not str(values["data_dir"]).strip():
            raise ConfigError("--data-dir is empty; give a folder, or leave the option out for the default")
        values["data_dir"] = _data_dir(str(values["data_dir"]))
    for field in ("bn_eps", "adam_eps"):
        if values[field] is not None and values[field] > 1:
            raise ConfigError(f"{OPTION[field]} {values[field]!r}: must lie in (0, 1]: an epsilon above 1 outweighs "
                              f"what it guards (a variance, a second moment)")
    if values["bn_momentum"] is not None and values["bn_momentum"] < 1e-6:
        raise ConfigError(f"--bn-momentum {values['bn_momentum']!r}: must be at least 1e-6: below that the running "
                          f"statistics never move in any run's length")
    if values["bn_momentum"] is not None and values["bn_momentum"] > 1:
        raise ConfigError(f"--bn-momentum {values['bn_momentum']}: must lie in (0, 1] (torch convention)")
    if 0 < values["worker_memory_limit"] < MIN_WORKER_MEMORY_MIB:
        raise ConfigError(f"--worker-memory-limit {values['worker_memory_limit']}: a framework alone needs more; "
                          f"give at least {MIN_WORKER_MEMORY_MIB} MiB, or 0 for no limit")
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    if values["worker_memory_limit"] > physical:
        raise ConfigError(f"--worker-memory-limit {values['worker_memory_limit']}: more than this machine's "
                          f"{physical} MiB of memory; give at most {physical}, or 0 for no limit")
    if 0 < values["train_size"] < values["batch_size"] * values["replicas"]:
        per = f" x --replicas {values['replicas']}" if values["replicas"] > 1 else ""
        raise ConfigError(f"--batch-size {values['batch_size']}{per} is larger than --train-size "
                          f"{values['train_size']}: no full (global) batch to train on")
    if values["replicas"] > 1:  # one process each, side by side on this host: before any starts
        per_replica = replica_memory(values["device"], int(values["batch_size"]), int(values["image_size"]),
                                     int(values["worker_memory_limit"]))
        problem = replicas_problem(int(values["replicas"]), values["device"], gpu_count, visible_gpus(gpu_count),
                                   usable_cores(), available_memory(), per_replica)
        if problem:
            raise ConfigError(problem)
    if values["preprocess"] == "auto":
        values["preprocess"] = "native" if values["weights"] in PRETRAINED else "cifar"
    values["eval_every_epoch"] = bool(values["eval_every_epoch"])
    values["channels_last"] = bool(values["channels_last"])
    if values["target_accuracy"] is not None:
        _check_number("target_accuracy", values["target_accuracy"], float, 0, low_ok=False)
        if values["target_accuracy"] > 1:
            raise ConfigError(f"--target-accuracy {values['target_accuracy']!r}: must lie in (0, 1]: a fraction of "
                              f"the test set (0.2 = 20%)")
        if not values["eval_every_epoch"]:
            raise ConfigError(f"--target-accuracy {values['target_accuracy']:g} needs the test accuracy after every "
                              f"epoch: add --eval-every-epoch (on by default in the seed and quick profiles)")
    if values["peak_tflops"] is not None:
        _check_number("peak_tflops", values["peak_tflops"], float, 0, low_ok=False)
        low, high = PEAK_TFLOPS_RANGE
        if not low <= values["peak_tflops"] <= high:
            raise ConfigError(f"--peak-tflops {values['peak_tflops']:g}: must lie in [{low:g}, {high:g}] TFLOP/s: "
                              f"a CPU core's peak is above {low:g}, no device's dense peak is near {high:g}")
    ints = ("train_size", "test_size", "epochs", "batch_size", "image_size", "seed",
            "finetune_rounds", "step_rounds", "step_count", "step_warmup", "worker_memory_limit", "replicas")
    values.update({k: int(values[k]) for k in ints})
    return BenchConfig(profile=profile, profile_reason=profile_reason, device_reason=device_reason,
                       **{k: values[k] for k in values if k != "profile"})
