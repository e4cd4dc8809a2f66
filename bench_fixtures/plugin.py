"""The pytest plugin (entry point `pytest11`): options, session state, hooks and fixtures.

All the experiment's logic lives in the package; this module wires it to pytest and
pytest-benchmark. It is installed, so its options are known before pytest reads the command line.
It stays inert in a session that collects none of its cases (tests that use the `bench_runner`
fixture): no config resolved, nothing printed, nothing of pytest-benchmark's touched.
"""
from __future__ import annotations

import os
import time
from copy import copy
from pathlib import Path
from typing import Any

import pytest

from . import benchmark_compat as compat
from . import machine
from .config import BenchConfig, ConfigError, resolve
from .files import FolderClaim, OutputError, WorkFolder, check_writable, interrupt_on_termination, save_numbered
from .frameworks import FRAMEWORKS, unavailable
from .weights import startup_problem

# (option, dest, type, help); defaults come from the profile (None = "profile decides").
OPTIONS = [
    ("--bench-profile", "profile", str, "auto (seed on a GPU, smoke on a CPU), smoke, seed, or quick (real "
                                        "CIFAR-10, 10,000 training images, 5 epochs: the GPU runner's check)"),
    ("--dataset", "dataset", str, "cifar10 or synthetic (profile: smoke=synthetic, seed=cifar10)"),
    ("--data-dir", "data_dir", str, "folder holding cifar-10-batches-py/ (env CIFAR10_DIR; "
                                    "default ~/.cache/bench_fixtures/cifar10, downloaded when absent)"),
    ("--train-size", "train_size", int, "training images, stratified and seeded; 0 = all (smoke 256, seed 0)"),
    ("--test-size", "test_size", int, "test images, stratified and seeded; 0 = all (smoke 100, seed 0)"),
    ("--epochs", "epochs", int, "fine-tuning epochs (smoke 2, seed 5)"),
    ("--batch-size", "batch_size", int, "batch size for training and evaluation (32)"),
    ("--lr", "lr", float, "learning rate (sgd 0.01, adam 0.001)"),
    ("--optimizer", "optimizer", str, "sgd (momentum 0.9, torch form) or adam"),
    ("--weights", "weights", str, "imagenet (each framework's own ImageNet checkpoint), same (torchvision's "
                                  "in both: ported into Keras), none (random init), or a folder = imagenet "
                                  "from that staged folder (smoke none, seed imagenet)"),
    ("--weights-dir", "weights_dir", str, "a staged folder of the weight files under their usual names "
                                          "(`bench weights fetch DIR` fills one); default: each framework's cache"),
    ("--device", "device", str, "auto, cpu or gpu (auto: gpu when NVML sees one)"),
    ("--seed", "seed", int, "seed for subsets, epoch order, head init and framework RNGs (0)"),
    ("--min-accuracy-gain", "min_accuracy_gain", float,
     "test_finetune fails unless accuracy_after >= accuracy_before + this (smoke 0.05, seed 0.10)"),
    ("--worker-timeout", "worker_timeout", float, "seconds a worker may take for one request (smoke 900, seed 7200)"),
    ("--worker-memory-limit", "worker_memory_limit", int, "MiB of host memory each worker may allocate "
                                                          "(RLIMIT_DATA); past it the case fails as out of "
                                                          "memory instead of the machine swapping (0 = none)"),
    ("--finetune-rounds", "finetune_rounds", int, "test_finetune rounds, each a fresh model with the same seed "
                                                "(smoke 1, seed 3)"),
    ("--step-rounds", "step_rounds", int, "test_train_step rounds (smoke 3, seed 10)"),
    ("--step-count", "step_count", int, "training steps per test_train_step round (smoke 1, seed 50)"),
    ("--step-warmup", "step_warmup", int, "untimed steps before test_train_step rounds (smoke 1, seed 20)"),
    ("--image-size", "image_size", int, "input size the backbone sees; CIFAR's 32 px are resized on the device (32)"),
    ("--setup", "setup", str, "matched (the framework settings below aligned), defaults (each framework as "
                              "it ships: what a user gets) or both (each case in each setup, ids end in "
                              "-matched / -defaults) (matched)"),
    ("--precision", "precision", str, "fp32, tf32, or bf16 / fp16 mixed precision (torch autocast, Keras "
                                      "mixed_* policy; float32 logits and loss; fp16 with dynamic loss "
                                      "scaling), set alike in every framework (matched: fp32; defaults: each "
                                      "framework's own)"),
    ("--channels-last", "channels_last", None, "torch: train in the channels-last (NHWC) memory format, as "
                                               "Keras always does (default: torch's NCHW)"),
    ("--compile", "compile", str, "off, or on = XLA jit_compile in Keras and torch.compile (matched: off; "
                                  "defaults: Keras jit_compile='auto', torch eager)"),
    ("--preprocess", "preprocess", str, "auto, cifar (shared CIFAR mean/std) or native (each weights' own "
                                        "preprocessing; same: torchvision's in both); auto = native with "
                                        "pretrained weights"),
    ("--bn-momentum", "bn_momentum", float, "BatchNorm momentum, torch convention; Keras gets 1 - m "
                                            "(smoke 0.5; seed: 0.1 matched, each framework's own with defaults)"),
    ("--bn-eps", "bn_eps", float, "BatchNorm epsilon in every framework (matched 1e-5, except pretrained "
                                  "backbones, which keep their own; defaults: each framework's own)"),
    ("--adam-eps", "adam_eps", float, "Adam epsilon in every framework (matched 1e-8; defaults: torch 1e-8, "
                                      "Keras 1e-7)"),
    ("--eval-every-epoch", "eval_every_epoch", None, "evaluate on the test split after every epoch "
                                                     "(Keras validation_data; a torch eval loop; seed: on)"),
    ("--train-layers", "train_layers", str, "all (fine-tune the whole network) or head (only the new head: the "
                                            "backbone frozen, its BatchNorm in inference mode) (all)"),
    ("--target-accuracy", "target_accuracy", float, "report the training and wall seconds until the test "
                                                    "accuracy first reaches this fraction (needs "
                                                    "--eval-every-epoch); the gate judges it"),
    ("--peak-tflops", "peak_tflops", float, "the device's dense peak TFLOP/s at the run's precision, for MFU "
                                            "(default: the table of NVIDIA GPUs by NVML name; none for a CPU)"),
    ("--replicas", "replicas", int, "data-parallel replicas of each case, one process each: torch "
                                    "DistributedDataParallel, TensorFlow MultiWorkerMirroredStrategy; "
                                    "--batch-size is per replica (global batch = N x it), lr is not scaled (1)"),
    ("--monitor-interval", "monitor_interval", float, "seconds between utilisation/memory samples, taken "
                                                      "from this process by the worker's PID (0.05)"),
]
# Options whose value is a folder (shown as DIR in --help).
PATH_OPTIONS = ("--data-dir", "--bench-report", "--telemetry-dir", "--weights-dir")


class BenchState:
    """What one pytest session of benchmark cases holds: the resolved config, the data, the runner."""

    def __init__(self, cfg: BenchConfig, missing: dict[str, str]) -> None:
        self.cfg, self.missing = cfg, missing  # missing: framework -> why its cases are skipped
        self.work: WorkFolder | None = None  # the session's scratch folder (the data bundle, worker logs)
        self.runner: Any = None
        self.bundle_meta: dict[str, Any] | None = None
        self.json_path: Path | None = None
        self.claims: list[FolderClaim] = []  # the output folders this session writes into, held till its end

    def claim(self, folder: str | Path, option: str, fix: str = "give each session its own folder") -> None:
        """Refuse an output folder another live session is writing into (UsageError), else hold it."""
        folder = Path(folder).expanduser().absolute()
        if any(c.folder == folder for c in self.claims):
            return
        try:
            self.claims.append(FolderClaim(folder, option, fix))
        except OutputError as e:
            raise pytest.UsageError(str(e)) from None


STATE = pytest.StashKey[BenchState]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bench", "PyTorch vs TensorFlow (and Keras on JAX) fine-tuning benchmark")
    group.addoption("--bench-report", dest="bench_report", default=None, metavar="DIR",
                    help="write the report (PNGs + report.md, bench report) into DIR at the end of the session")
    group.addoption("--telemetry-dir", dest="bench_telemetry_dir", default=None, metavar="DIR",
                    help="where each case's raw timeline + samples JSON goes (default: beside "
                         "--benchmark-json as NAME.telemetry/, else .benchmarks/telemetry/TIMESTAMP/)")
    for flag, dest, kind, help_ in OPTIONS:
        if kind is None:
            group.addoption(flag, dest=f"bench_{dest}", action="store_const", const=True, default=None, help=help_)
        else:
            group.addoption(flag, dest=f"bench_{dest}", type=kind, default=None, help=help_,
                            metavar="DIR" if flag in PATH_OPTIONS else None)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    _rootdir_from_options(early_config, parser, args)


def _rootdir_from_options(config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """pytest picks its root folder (and so pytest.ini) from the command line *before* it loads
    installed plugins: in `--data-dir /data/cifar`, `/data/cifar` then looks like a test path, the
    root becomes /data/cifar and pytest.ini is never read. Now that every option is known, decide
    again from the real test paths, and if that changes the answer, take the right ini file."""
    from _pytest.config.findpaths import determine_setup
    ns = config.known_args_namespace
    if ns.rootdir or ns.inifilename:
        return  # chosen on purpose
    try:
        rootpath, inipath, inicfg, _ = determine_setup(
            inifile=None, override_ini=ns.override_ini, args=ns.file_or_dir, rootdir_cmd_arg=None,
            invocation_dir=config.invocation_params.dir)
    except TypeError:  # another pytest's signature: leave pytest's own choice (tests/test_plugin.py)
        return
    if (rootpath, inipath) == (config.rootpath, config.inipath):
        return
    for attr in ("_rootpath", "_inipath", "_inicfg", "_inicache"):  # checked by tests/test_plugin.py
        if not hasattr(config, attr):
            return
    wrong_addopts = list(config.getini("addopts"))  # what the wrong ini file added in front
    if args[:len(wrong_addopts)] == wrong_addopts:
        del args[:len(wrong_addopts)]
    config._rootpath, config._inipath, config._inicfg = rootpath, inipath, inicfg
    config._inicache.clear()
    parser.extra_info.update(rootdir=str(rootpath), inifile=str(inipath))
    args[:] = list(config.getini("addopts")) + args
    config.known_args_namespace = parser.parse_known_args(args, namespace=copy(config.option))
    if config.known_args_namespace.confcutdir is None:
        config.known_args_namespace.confcutdir = str(inipath.parent if inipath else rootpath)


def _case_key(item: pytest.Item) -> tuple[str, str, str | None] | None:
    """(framework, model, setup) of a benchmark case: a test that uses `bench_runner`, parametrised
    by framework and model (and by setup in a `--setup both` session; else None)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "bench_runner" in getattr(item, "fixturenames", ()) and "framework" in params and "model" in params:
        return params["framework"], params["model"], params.get("bench_setup")
    return None


@pytest.hookimpl(trylast=True)  # after the parametrize marks: the setup's id comes last
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`--setup both`: every case that takes `bench_setup` runs in each setup, ids ending in
    -matched / -defaults. With one setup the ids stay as they are (the fixture gives it)."""
    from .config import SETUPS
    if "bench_setup" in metafunc.fixturenames and metafunc.config.getoption("bench_setup", None) == "both":
        metafunc.parametrize("bench_setup", SETUPS, ids=SETUPS)


def _require_writable(folder: str | Path, option: str, hint: str = "") -> None:
    """Outputs are checked at startup, not when an hour of results is to be saved."""
    try:
        check_writable(Path(folder).expanduser(), option)
    except OutputError as e:
        raise pytest.UsageError(f"{e}{hint}") from None


def _start(config: pytest.Config) -> BenchState:
    """The session collected benchmark cases: resolve and check everything before any worker starts."""
    options = {dest: config.getoption(f"bench_{dest}") for _, dest, _, _ in OPTIONS}
    from .runner.replicas import RendezvousError, world_size
    gpus, reason = machine.nvml_gpus()
    try:
        cfg = resolve(options, len(gpus), reason)
        world_size(cfg.replicas)  # a multi-host rendezvous in the environment, read as every replica will
    except (ConfigError, RendezvousError) as e:
        raise pytest.UsageError(str(e)) from None
    missing = unavailable()
    for name, fw in FRAMEWORKS.items():  # a framework without a data-parallel engine, with --replicas N
        if name not in missing and (why := fw.replicas_problem(cfg.replicas)):
            missing[name] = why
    state = BenchState(cfg, missing)
    for option, dest in (("--bench-report", "bench_report"), ("--telemetry-dir", "bench_telemetry_dir")):
        if config.getoption(dest) is not None and not config.getoption(dest).strip():
            raise pytest.UsageError(f"{option} is empty; give a folder, or leave the option out")
    report = config.getoption("bench_report")
    if report:
        _require_writable(report, "--bench-report")
    state.json_path = compat.atomic_json(config, Path(report).expanduser() / "run.json" if report else None)
    if state.json_path is not None:
        _require_writable(state.json_path.parent, "--benchmark-json")
    compat.set_machine_id(config, machine.storage_machine_id)
    store = compat.storage_folder(config)
    if store is not None:
        _require_writable(store, "--benchmark-storage", " (file://DIR)")
        compat.save_with(config, save_numbered)
    if report:  # last: the session's end releases it once the state is stashed
        state.claim(report, "--bench-report")
    interrupt_on_termination()  # a CI runner's stop, a closed terminal: like Ctrl-C
    return state


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Put each case's tests next to each other (they share a worker); prepare the data up front,
    so a bad option or data set stops the run before any worker starts."""
    keys = {id(i): _case_key(i) for i in items}
    cases = [k for k in dict.fromkeys(keys.values()) if k is not None]
    if not cases:
        return  # inert: not a benchmark session
    state = config.stash[STATE] = _start(config)
    rank = {k: n for n, k in enumerate(cases)}
    first = next(n for n, i in enumerate(items) if keys[id(i)])
    bench = sorted((i for i in items if keys[id(i)]), key=lambda i: rank[keys[id(i)]])
    items[:] = [i for i in items[:first] if not keys[id(i)]] + bench + \
        [i for i in items[first:] if not keys[id(i)]]
    problem = startup_problem(state.cfg.weights, state.cfg.weights_dir, state.cfg.image_size,
                              {k[:2] for k in cases if k[0] not in state.missing})
    if problem:  # a staged file missing, torch missing for --weights same: before any worker starts
        raise pytest.UsageError(problem)
    for item in bench:
        framework = keys[id(item)][0]
        if framework in state.missing:
            item.add_marker(pytest.mark.skip(reason=state.missing[framework]))
        elif state.cfg.device == "gpu":
            item.add_marker(pytest.mark.gpu)
    if {keys[id(i)][0] for i in bench} - state.missing.keys() and not config.getoption("benchmark_skip", False):
        _prepare(config, state)


def _prepare(config: pytest.Config, state: BenchState) -> None:
    from .data import DataError
    from .runner.experiment import CaseRunner, prepare_data
    telemetry = telemetry_dir(config)
    _require_writable(telemetry, "--telemetry-dir")
    if (claim := _telemetry_claim(config)) is not None:
        state.claim(telemetry, *claim)
    try:
        state.work = WorkFolder()  # sweeps what sessions killed before their cleanup left behind
    except OutputError as e:
        raise pytest.UsageError(str(e)) from None
    try:
        bundle_dir, state.bundle_meta = prepare_data(state.cfg, state.work.path)
    except DataError as e:
        raise pytest.UsageError(str(e)) from None
    state.runner = CaseRunner(state.cfg, bundle_dir, state.bundle_meta, state.work.path, telemetry)
    state.runner.progress = Progress(config, state.cfg.epochs)


def pytest_report_collectionfinish(config: pytest.Config) -> list[str]:
    """The run's own first line: which profile, device and data set ran, and why."""
    state = config.stash.get(STATE, None)
    return [] if state is None else [state.cfg.headline(), *(f"bench: {n}" for n in state.missing.values())]


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    """An interrupted run saves nothing: its workers are killed at once and pytest-benchmark is left
    with no results to write, so no partial JSON or history file appears."""
    state = session.config.stash.get(STATE, None)
    if state is not None and exitstatus == pytest.ExitCode.INTERRUPTED:
        if state.runner is not None:
            state.runner.kill()
        compat.drop_results(session.config)
    yield


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """A case's worker lives as long as its tests (they are adjacent): it must not sit on memory or
    CPU while other cases or tests run."""
    key = _case_key(item)
    state = item.config.stash.get(STATE, None)
    if key is not None and state is not None and state.runner is not None \
            and (nextitem is None or _case_key(nextitem) != key):
        state.runner.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """pytest-benchmark keeps the numbers of a test that failed after measuring (accuracy did not
    improve, telemetry inconsistent): record the outcome beside them, so no reader takes them for a
    result (the gate fails such a candidate, the report marks it)."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and _case_key(item) is not None and item.config.stash.get(STATE, None) is not None:
        fixture = getattr(item, "funcargs", {}).get("benchmark")
        if fixture is not None and hasattr(fixture, "extra_info"):
            from .analysis.results import OUTCOME_KEY
            fixture.extra_info[OUTCOME_KEY] = "failed" if report.failed else "passed"


class Progress:
    """One line per epoch per case through pytest's terminal reporter (not captured output)."""

    def __init__(self, config: pytest.Config, epochs: int) -> None:
        self.reporter = config.pluginmanager.get_plugin("terminalreporter")
        self.capture = config.pluginmanager.get_plugin("capturemanager")
        self.epochs, self.start = epochs, {}

    def __call__(self, name: str, event: dict) -> None:
        from .telemetry.timeline import RUN_START
        if event["name"] == RUN_START:
            self.start[name] = event["t_ns"]
            return
        if self.reporter is None or self.capture is None:
            return
        elapsed = (event["t_ns"] - self.start.get(name, event["t_ns"])) / 1e9
        loss = f" loss {event['loss']:.3f}" if event.get("loss") is not None else ""
        acc = f" val_acc {event['val_accuracy']:.3f}" if event.get("val_accuracy") is not None else ""
        with self.capture.global_and_fixture_disabled():  # or the line lands in the captured output
            self.reporter.ensure_newline()
            self.reporter.write_line(f"  {name}: epoch {event['epoch'] + 1}/{self.epochs} at {elapsed:.1f}s{loss}{acc}")


def telemetry_dir(config: pytest.Config) -> Path:
    given = config.getoption("bench_telemetry_dir")
    if given:
        return Path(given).expanduser()
    state = config.stash.get(STATE, None)
    if state is not None and state.json_path is not None:
        return state.json_path.with_name(state.json_path.stem + ".telemetry")
    return Path(".benchmarks") / "telemetry" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def _telemetry_claim(config: pytest.Config) -> tuple[str, str] | None:
    """The option that chose the telemetry folder, and the fix, for a message about that folder; None
    for the default folder, which is the session's own (a timestamp and its PID)."""
    state = config.stash.get(STATE, None)
    if config.getoption("bench_telemetry_dir"):
        return "--telemetry-dir", "give each session its own folder"
    if state is not None and state.json_path is not None:
        given = "--bench-report" if config.getoption("bench_report") else "--benchmark-json"
        return f"{given} (the telemetry folder beside its run file)", f"give each session its own {given}"
    return None


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None:
        compat.discard_empty_json(config)
        return
    report = config.getoption("bench_report")
    try:
        if report and state.json_path is not None and state.json_path.is_file():
            from .analysis.report import write_report
            from .analysis.results import ResultsError
            reporter = config.pluginmanager.get_plugin("terminalreporter")
            try:
                line = f"bench: report written to {write_report([str(state.json_path)], Path(report).expanduser())}"
            except ResultsError as e:  # the run is kept; only the report could not be drawn from it
                line = f"bench: no report: {e}"
            if reporter is not None:
                reporter.write_line(line)
    finally:
        _cleanup(state)


def _cleanup(state: BenchState) -> None:
    try:
        if state.runner is not None:
            state.runner.close()
        if state.work is not None:
            state.work.remove()
    finally:
        for claim in state.claims:
            claim.release()


@pytest.fixture(scope="session")
def bench_config(pytestconfig: pytest.Config) -> BenchConfig:
    state = pytestconfig.stash.get(STATE, None)
    if state is None:
        pytest.skip("no benchmark case collected in this session")
    return state.cfg


@pytest.fixture(scope="session")
def bench_setup(bench_config: BenchConfig) -> str:
    """The case's setup: the session's one (with `--setup both`, the parametrisation gives it)."""
    return bench_config.setups[0]


@pytest.fixture(scope="session")
def bench_runner(pytestconfig: pytest.Config):
    state = pytestconfig.stash.get(STATE, None)
    if state is None or state.runner is None:
        pytest.skip("benchmark data not prepared (--benchmark-skip, or collected without cases)")
    yield state.runner
    state.runner.close()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    state = config.stash.get(STATE, None)
    if state is not None:
        machine_info.update(machine.machine_info(state.runner.framework_builds if state.runner else {}))


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict) -> None:
    state = config.stash.get(STATE, None)
    if state is None:
        return
    output_json["bench_config"] = state.cfg.as_dict()
    output_json["command"] = " ".join(["pytest", *config.invocation_params.args])
    runner = state.runner
    if runner is not None and runner.worker_infos:
        from .analysis import dx
        ttfs: dict[str, list[float]] = {}
        for b in output_json.get("benchmarks", []):
            e = b.get("extra_info") or {}
            if e.get("time_to_first_step_s") is not None:
                ttfs.setdefault(e["framework"], []).append(e["time_to_first_step_s"])
        output_json["dx"] = dx.summarize(runner.worker_infos, len(machine.nvml_gpus()[0]), ttfs)
    output_json["bench_data"] = state.bundle_meta
