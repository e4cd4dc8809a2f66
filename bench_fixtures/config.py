"""The benchmark's settings: two profiles, every value overridable, validated before anything runs."""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .files import folder_problem, size, size_pair

from .settings import MODELS, PRECISIONS, PROFILE_NAMES, SETTING, SETTINGS, UNSET, Setting  # noqa: F401  (MODELS, PRECISIONS: for the layers above)

# Everything below derives from the settings table (settings.py): one row per setting.
PROFILES: dict[str, dict[str, Any]] = {p: {s.name: s.profiles[p] for s in SETTINGS if p in s.profiles}
                                       for p in PROFILE_NAMES}
COMMON: dict[str, Any] = {s.name: s.default for s in SETTINGS
                          if s.name != "profile" and s.matched is UNSET and not s.profiles}
# The framework settings whose defaults differ between torch, TensorFlow and JAX: `matched` aligns them
# to these values; `defaults` leaves each framework's own (None). A value given by an option, or by the
# profile (smoke's BatchNorm momentum, which 16 steps from random init need), applies in both setups.
MATCHED: dict[str, Any] = {s.name: s.matched for s in SETTINGS if s.matched is not UNSET}
CHOICES: dict[str, tuple[Any, ...]] = {s.name: s.choices for s in SETTINGS if s.choices}
OPTION: dict[str, str] = {s.name: s.flag or s.name for s in SETTINGS}  # what an error names
MATCHED_BN_MOMENTUM = MATCHED["bn_momentum"]
# A profile on the other data set: smoke on real CIFAR-10 needs more steps than 16 to show a gain
# (and BN statistics at the usual momentum); applied before explicit options.
DATASET_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    ("smoke", "cifar10"): dict(train_size=2000, test_size=1000, bn_momentum=MATCHED_BN_MOMENTUM),
}
# Smoke with --train-layers head: a head trained alone on a frozen backbone needs more than 16 steps to
# show the gain (measured on staged test files: VGG19 10% -> 10% in 2 epochs, 61% in 4); each of its
# steps is a forward pass of the backbone plus the head's update, so 4 epochs cost less than 2 full ones.
TRAIN_LAYERS_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {("smoke", "head"): dict(epochs=4)}
SETUPS = ("matched", "defaults")
PRETRAINED = ("imagenet", "same")  # --weights values that load a checkpoint
DEFAULT_LR = {"sgd": 0.01, "adam": 0.001}
# The caps the run-file readers hold files to, as the table's ranges say them.
MIN_WORKER_MEMORY_MIB = int(SETTING["worker_memory_limit"].low)
MAX_SEED = int(SETTING["seed"].high)
MAX_WORKER_TIMEOUT_S = SETTING["worker_timeout"].high
MAX_EPOCHS = int(SETTING["epochs"].high)
MAX_ROUNDS = int(SETTING["finetune_rounds"].high)
MAX_REPLICAS = int(SETTING["replicas"].high)
MONITOR_INTERVAL_RANGE = (SETTING["monitor_interval"].low, SETTING["monitor_interval"].high)
PEAK_TFLOPS_RANGE = (SETTING["peak_tflops"].low, SETTING["peak_tflops"].high)
# Host memory one replica's worker takes, for --replicas N at startup. Measured peaks (VmHWM) of one
# smoke fine-tune here, 32 px at batch 32: torch 0.8-1.2 GiB, TensorFlow 1.1-1.5 GiB (ResNet50 the
# largest), Keras on JAX 1.2-1.4 GiB; most of it the framework's runtime, the same at any image size.
REPLICA_BASE_MIB = 1600
# ... plus, on a CPU (where activations live in host memory), per image of a batch and per 32x32 px
# of its area: from 32 px to 96 px at batch 32, peaks grew 1.4-2.0 MiB per image and tile (VGG19,
# ResNet50; torch and TensorFlow), so 224 px at batch 32 adds about 4 GiB.
REPLICA_MIB_PER_IMAGE_TILE = 2.5


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
    price_per_hour: float | None = None  # the device's price per hour: cost per fine-tune (None: not priced)
    replicas: int = 1      # data-parallel replicas of each case on this host, one process each
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # MATCHED settings given by option/profile

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "BenchConfig":
        """The config back from `as_dict()` (the worker's copy, a run file's bench_config): every field
        present and no other, so a reader on the far side of a pipe or a file reads attributes."""
        fields = {f.name for f in dataclasses.fields(cls)}
        missing, unknown = fields - values.keys() - {"replicas", "overrides", "price_per_hour"}, values.keys() - fields
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
        raise ConfigError(f"{OPTION[field]} {value!r}: choose one of {', '.join(map(str, CHOICES[field]))}")


def _bound(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() and abs(x) >= 1000 else f"{x:g}"


def check(row: Setting, value: Any) -> None:
    """VALUE against ROW's choices or range (ConfigError naming the option, the range and why)."""
    if row.choices:
        return _check_choice(row.name, value)
    if row.kind not in (int, float):
        return
    option, what = OPTION[row.name], "n integer" if row.kind is int else " number"
    if isinstance(value, int) and abs(value) > 2**63 - 1:  # float() of it would overflow
        raise ConfigError(f"{option}: a {len(str(abs(value)))}-digit number is out of any range it can run with")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (row.kind is int and not float(value).is_integer()):
        low = "" if row.low is None else f" {'>' if row.low_open else '>='} {_bound(row.low)}"
        raise ConfigError(f"{option} {value!r}: must be a{what}{low}")
    if row.zero and value == 0:
        return
    below = row.low is not None and (value < row.low or (row.low_open and value == row.low))
    above = row.high is not None and value > row.high
    why = f": {row.why}" if row.why else ""
    if row.kind is float and row.low is not None and row.high is not None and (below or above):
        opening = "(" if row.low_open else "["
        raise ConfigError(f"{option} {value!r}: must lie in {opening}{_bound(row.low)}, {_bound(row.high)}]"
                          f"{row.unit}{why}")
    if below and row.zero:
        raise ConfigError(f"{option} {value!r}: must be 0 ({row.zero}) or at least {_bound(row.low)}{row.unit}{why}")
    if below:
        raise ConfigError(f"{option} {value!r}: must be a{what} {'>' if row.low_open else '>='} {_bound(row.low)}")
    if above:
        raise ConfigError(f"{option} {value!r}: must be at most {_bound(row.high)}{row.unit}{why}")


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
    elsewhere = ", or run the rest on another host (docs/replicas.md)"
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
    profile, profile_reason = _profile(given.pop("profile", "auto"), given.get("device", "auto"), gpu_count,
                                       gpu_reason)
    unknown = set(given) - SETTING.keys()
    if unknown:
        raise ConfigError(f"unknown setting(s) {sorted(unknown)}")
    values = _defaults(profile, given)
    _check_choice("setup", values["setup"])
    _check_choice("train_layers", values["train_layers"])
    _weights(values)  # first: a staged folder means imagenet, which keeps the backbones' BatchNorm epsilon
    values.update(setup_values("matched" if values["setup"] == "both" else values["setup"], values["overrides"],
                               values["weights"]))
    if values["device"] == "auto":
        values["device"] = "gpu" if gpu_count else "cpu"
        device_reason = f"auto: {gpu_count} GPU(s) seen by NVML" if gpu_count else "auto: " + (gpu_reason or "no GPU")
    else:
        device_reason = "--device"
    if values["lr"] is None:
        values["lr"] = DEFAULT_LR.get(values["optimizer"])
    for row in SETTINGS[1:]:  # each setting alone, as the table says (None: left to the framework or unset)
        if values[row.name] is not None and not row.folder:
            check(row, values[row.name])
    _across(values, gpu_count)
    values.update({s.name: s.kind(values[s.name]) for s in SETTINGS
                   if s.kind in (int, bool) and values[s.name] is not None and s.name != "profile"})
    return BenchConfig(profile=profile, profile_reason=profile_reason, device_reason=device_reason,
                       **{k: values[k] for k in values if k != "profile"})


def _profile(profile: str, device: str, gpu_count: int, gpu_reason: str) -> tuple[str, str]:
    """The profile and why: auto is seed where a GPU will run the cases, smoke elsewhere."""
    _check_choice("profile", profile)
    _check_choice("device", device)
    if profile != "auto":
        return profile, "--bench-profile"
    if gpu_count and device != "cpu":
        return "seed", "auto: a GPU is visible"
    if device == "cpu":
        return "smoke", "auto: --device cpu"
    return "smoke", "auto: no GPU" + (f", {gpu_reason}" if gpu_reason else "")


def _defaults(profile: str, given: dict[str, Any]) -> dict[str, Any]:
    """The table's defaults for PROFILE, then the data set's and the layers' own, then GIVEN; the
    framework settings set explicitly (`overrides`), which apply in every setup."""
    dataset = given.get("dataset", PROFILES[profile]["dataset"])
    layers = given.get("train_layers", COMMON["train_layers"])
    by_dataset = DATASET_OVERRIDES.get((profile, dataset), {})
    values = {**COMMON, **dict.fromkeys(MATCHED), **PROFILES[profile], **by_dataset,
              **TRAIN_LAYERS_OVERRIDES.get((profile, layers), {}), **given}
    if profile == "smoke" and "train_size" not in given and isinstance(values.get("replicas"), int) \
            and values["replicas"] > 1 and values["train_size"]:
        # Smoke's subset grows with the replicas on this host, so an epoch has as many steps as with
        # one (its 16 steps are what it needs to learn): each replica does the single process's work.
        # --train-size fixes it instead; the other profiles keep theirs (fewer steps per epoch).
        values["train_size"] *= values["replicas"]
    # Set explicitly: by an option, or by the profile unless the data set's own values replace it
    # (smoke on real CIFAR-10 goes back to the usual momentum: matched's, or each framework's own).
    values["overrides"] = {k: values[k] for k in MATCHED
                           if k in given or (k in PROFILES[profile] and k not in by_dataset)}
    return values


def _across(values: dict[str, Any], gpu_count: int) -> None:
    """The rules that join several settings, or a setting and this machine."""
    if values["data_dir"] is not None:
        if not str(values["data_dir"]).strip():
            raise ConfigError("--data-dir is empty; give a folder, or leave the option out for the default")
        values["data_dir"] = _data_dir(str(values["data_dir"]))
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
    if values["target_accuracy"] is not None and not values["eval_every_epoch"]:
        raise ConfigError(f"--target-accuracy {values['target_accuracy']:g} needs the test accuracy after every "
                          f"epoch: add --eval-every-epoch (on by default in the seed and quick profiles)")
