"""The benchmark's settings: one row per setting, everything else derives from this table.

A row says the setting's type, its default (one value, or one per profile), its choices or range
and why that range, its help, whether two runs that differ in it compare different work
(`comparable`), and what runs recorded before it existed ran with (`absent`). From it come the
pytest options and their help (plugin), the profiles and every one-setting check (config.resolve,
which keeps only the rules across settings), the caps the run-file readers apply, and the
comparability lists of the gate, the findings and the report.

Framework settings whose defaults differ between torch, TensorFlow and JAX carry `matched`: the
value the *matched* setup aligns them to; the *defaults* setup leaves each framework its own
(None: the worker sets nothing and reads back what the framework uses).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROFILE_NAMES = ("smoke", "seed", "quick")
MODELS = ("resnet50", "vgg19", "mobilenet_v2")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")  # fp32 (TF32 off), fp32 with TF32, mixed bf16 / fp16
UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET"})()  # a column left empty


@dataclass(frozen=True)
class Setting:
    name: str                   # the BenchConfig field and the key in a run file's bench_config
    kind: type                  # int, float, str or bool (a flag: given = on)
    help: str                   # what it does; the defaults are appended from the columns below
    default: Any = None         # the value in every profile without its own (None: not set, see help)
    profiles: dict[str, Any] = field(default_factory=dict)  # profile -> its own default
    matched: Any = UNSET        # a framework setting: the matched setup's value (defaults: each framework's)
    framework_defaults: str = ""  # what each framework ships with, for the help of a matched setting
    choices: tuple[Any, ...] = ()
    low: float | None = None    # the range [low, high] (low excluded when low_open), and why it ends there
    low_open: bool = False
    high: float | None = None
    unit: str = ""
    why: str = ""
    zero: str = ""              # 0 is also allowed and means this ("all", "no limit"), below `low`
    comparable: bool = False    # runs that differ in it compare different work (gate, findings)
    absent: Any = UNSET         # what a run file from before this setting existed ran with
    option: str | None = ""     # the pytest option ("" = --name-with-dashes; None = no option)
    folder: bool = False        # its value is a folder (DIR in --help)

    @property
    def flag(self) -> str | None:
        return ("--" + self.name.replace("_", "-")) if self.option == "" else self.option

    @property
    def metavar(self) -> str:
        if self.folder:
            return "DIR"
        return "{" + ",".join(map(str, self.choices)) + "}" if self.choices else "N" if self.kind is int else "X"

    def default_for(self, profile: str) -> Any:
        return self.profiles.get(profile, self.default)

    def help_text(self) -> str:
        """The help with the defaults the table holds (as pytest-benchmark derives help from defaults)."""
        shown = {p: _shown(self.default_for(p), self.kind) for p in PROFILE_NAMES}
        if self.matched is not UNSET:
            own = "; defaults: " + (self.framework_defaults or "each framework's own")
            by_profile = "".join(f"; {p} {v}" for p, v in self.profiles.items())
            return f"{self.help} (matched: {_shown(self.matched, self.kind)}{own}{by_profile})"
        if self.default is None and not self.profiles:
            return self.help  # nothing set by default: the help says what happens
        if len(set(shown.values())) == 1:
            return f"{self.help} (default: {shown[PROFILE_NAMES[0]]})"
        return f"{self.help} ({', '.join(f'{p} {v}' for p, v in shown.items())})"


def _shown(value: Any, kind: type) -> str:
    if kind is bool:
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


_READERS = "the gate and the report refuse run files beyond it"

SETTINGS: tuple[Setting, ...] = (
    # --- the experiment
    Setting("profile", str, "auto (seed on a GPU, smoke on a CPU), smoke (synthetic data, small sizes, random "
            "init), seed (the experiment: full CIFAR-10, 5 epochs, ImageNet weights) or quick (real CIFAR-10, "
            "10,000 training images, 5 epochs: the GPU runner's check)", default="auto",
            choices=("auto", *PROFILE_NAMES), comparable=True, option="--bench-profile"),
    Setting("dataset", str, "cifar10 or synthetic (learnable patterns in CIFAR's format)",
            profiles=dict(smoke="synthetic", seed="cifar10", quick="cifar10"), choices=("cifar10", "synthetic"),
            comparable=True),
    Setting("data_dir", str, "folder holding cifar-10-batches-py/ (env CIFAR10_DIR; default "
            "~/.cache/bench_fixtures/cifar10, downloaded when absent)", folder=True),
    Setting("train_size", int, "training images, stratified and seeded; 0 = all",
            profiles=dict(smoke=256, seed=0, quick=10000), low=0, comparable=True),
    Setting("test_size", int, "test images, stratified and seeded; 0 = all",
            profiles=dict(smoke=100, seed=0, quick=0), low=10, zero="all",
            why="the test subset is stratified over the 10 classes", comparable=True),
    Setting("epochs", int, "fine-tuning epochs", profiles=dict(smoke=2, seed=5, quick=5), low=1, high=10_000,
            why=_READERS, comparable=True),
    Setting("batch_size", int, "batch size for training and evaluation (per replica)", default=32, low=1,
            comparable=True),
    Setting("lr", float, "learning rate (default: sgd 0.01, adam 0.001)", low=0, low_open=True, comparable=True),
    Setting("optimizer", str, "sgd (momentum 0.9, torch form) or adam", default="sgd", choices=("sgd", "adam"),
            comparable=True),
    Setting("momentum", float, "SGD momentum (torch form: v = m v + g)", default=0.9, low=0, comparable=True),
    Setting("weights", str, "imagenet (each framework's own ImageNet checkpoint), same (torchvision's in both: "
            "ported into Keras), none (random init), or a folder = imagenet from that staged folder",
            profiles=dict(smoke="none", seed="imagenet", quick="imagenet"), choices=("imagenet", "none", "same"),
            comparable=True),
    Setting("weights_dir", str, "a staged folder of the weight files under their usual names "
            "(`bench weights fetch DIR` fills one); default: each framework's cache", folder=True),
    Setting("device", str, "auto, cpu or gpu (auto: gpu when NVML sees one)", default="auto",
            choices=("auto", "cpu", "gpu"), comparable=True),
    Setting("seed", int, "seed for subsets, epoch order, head init and framework RNGs", default=0, low=0,
            high=2**32 - 1, why="TensorFlow's runs seed NumPy's 32-bit legacy generator, and every framework "
            "gets the same seed"),
    Setting("min_accuracy_gain", float, "test_finetune fails unless accuracy_after >= accuracy_before + this",
            profiles=dict(smoke=0.05, seed=0.10, quick=0.10), low=-1, high=1,
            why="it is a fraction of the test set (0.05 = 5 points)"),
    # --- the harness
    Setting("worker_timeout", float, "seconds a worker may take for one request",
            profiles=dict(smoke=900.0, seed=7200.0, quick=1800.0), low=1, high=2_147_483, unit=" s",
            why="a worker takes longer than 1 s to start, and the OS timer waits at most 2147483 s (24.8 days)"),
    Setting("worker_memory_limit", int, "MiB of host memory each worker may allocate (RLIMIT_DATA); past it "
            "the case fails as out of memory instead of the machine swapping (0 = none)", default=0, low=1024,
            unit=" MiB", zero="no limit", why="a framework alone needs more"),
    Setting("finetune_rounds", int, "test_finetune rounds, each a fresh model with the same seed",
            profiles=dict(smoke=1, seed=3, quick=1), low=1, high=100_000, why=_READERS),
    Setting("step_rounds", int, "test_train_step rounds", profiles=dict(smoke=3, seed=10, quick=5), low=1,
            high=100_000, why=_READERS),
    Setting("step_count", int, "training steps per test_train_step round", profiles=dict(smoke=1, seed=50, quick=50),
            low=1, high=10**6, why="a round is seconds to minutes of training, not days"),
    Setting("step_warmup", int, "untimed steps before test_train_step rounds",
            profiles=dict(smoke=1, seed=20, quick=20), low=0, high=10**6,
            why="a warm-up is seconds to minutes of training, not days"),
    Setting("image_size", int, "input size the backbone sees; CIFAR's 32 px are resized on the device", default=32,
            low=32, high=2048, why="CIFAR's 32 px are resized to it, and beyond it one image's activations "
            "outgrow any device's memory", comparable=True),
    # --- fairness: the setups and the framework settings they align
    Setting("setup", str, "matched (the framework settings below aligned), defaults (each framework as it ships: "
            "what a user gets) or both (each case in each setup, ids end in -matched / -defaults)",
            default="matched", choices=("matched", "defaults", "both"), comparable=True, absent="matched"),
    Setting("precision", str, "fp32, tf32, or bf16 / fp16 mixed precision (torch autocast, Keras mixed_* policy; "
            "float32 logits and loss; fp16 with dynamic loss scaling), set alike in every framework",
            matched="fp32", choices=PRECISIONS, comparable=True),
    Setting("channels_last", bool, "torch: train in the channels-last (NHWC) memory format, as Keras always does",
            default=False, comparable=True, absent=False),
    Setting("compile", str, "off, or on = XLA jit_compile in Keras and torch.compile", matched="off",
            framework_defaults="Keras jit_compile='auto', torch eager", choices=("off", "on"), comparable=True),
    Setting("preprocess", str, "auto, cifar (shared CIFAR mean/std) or native (each weights' own preprocessing; "
            "same: torchvision's in both); auto = native with pretrained weights", default="auto",
            choices=("auto", "cifar", "native")),
    Setting("bn_momentum", float, "BatchNorm momentum, torch convention; Keras gets 1 - m", matched=0.1,
            framework_defaults="torch 0.1, Keras 0.01", profiles=dict(smoke=0.5), low=1e-6, high=1,
            why="below 1e-6 the running statistics never move in any run's length; a momentum is at most 1 "
            "(torch convention)"),
    Setting("bn_eps", float, "BatchNorm epsilon in every framework (pretrained backbones keep their own)",
            matched=1e-5, low=0, low_open=True, high=1,
            why="an epsilon above 1 outweighs what it guards (a variance)"),
    Setting("adam_eps", float, "Adam epsilon in every framework", matched=1e-8,
            framework_defaults="torch 1e-8, Keras 1e-7", low=0, low_open=True, high=1,
            why="an epsilon above 1 outweighs what it guards (a second moment)"),
    Setting("eval_every_epoch", bool, "evaluate on the test split after every epoch (Keras validation_data; "
            "a torch eval loop)", profiles=dict(smoke=False, seed=True, quick=True)),
    Setting("train_layers", str, "all (fine-tune the whole network) or head (only the new head: the backbone "
            "frozen, its BatchNorm in inference mode)", default="all", choices=("all", "head"), comparable=True,
            absent="all"),
    Setting("target_accuracy", float, "report the training and wall seconds until the test accuracy first reaches "
            "this fraction (needs --eval-every-epoch); the gate judges it", low=0, low_open=True, high=1,
            why="a fraction of the test set (0.2 = 20%)", comparable=True, absent=None),
    Setting("peak_tflops", float, "the device's dense peak TFLOP/s at the run's precision, for MFU (default: the "
            "table of NVIDIA GPUs by NVML name; none for a CPU)", low=1e-3, high=1e5, unit=" TFLOP/s",
            why="a CPU core's peak is above 0.001, no device's dense peak is near 100000"),
    Setting("replicas", int, "data-parallel replicas of each case, one process each: torch DistributedDataParallel, "
            "TensorFlow MultiWorkerMirroredStrategy; --batch-size is per replica (global batch = N x it), lr is "
            "not scaled", default=1, low=1, high=1024, why="one process per replica on this host; for more, run "
            "the same command on more hosts (docs/replicas.md)", comparable=True, absent=1),
    Setting("price_per_hour", float, "the device's price per hour (a cloud GPU's, in any currency): the report "
            "gives each fine-tune's cost and a 50-epoch run's (from the overhead projection) next to its joules",
            low=0, low_open=True, high=1e6, unit=" per hour", why="no device rents for a million an hour"),
    Setting("monitor_interval", float, "seconds between utilisation/memory samples, taken from this process by "
            "the worker's PID", default=0.05, low=0.01, high=60.0, unit=" s",
            why="below 0.01 s the sampling thread takes a visible share of a core from the training it measures; "
            "above 60 s epochs get no sample of their own"),
)
SETTING: dict[str, Setting] = {s.name: s for s in SETTINGS}

# The settings that make two runs comparable: runs differing in one compare different work.
COMPARABLE: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.comparable)
# What runs recorded before a setting existed ran with (their bench_config lacks the key).
ABSENT: dict[str, Any] = {s.name: s.absent for s in SETTINGS if s.absent is not UNSET}
