"""pytest layer: options, session set-up (config, data, one worker per case), machine_info hooks.

All logic lives in bench_fixtures; this file only wires it to pytest and pytest-benchmark.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from bench_fixtures import config as bench_config_mod
from bench_fixtures.config import BenchConfig, ConfigError
from bench_fixtures.data import DataError
from bench_fixtures.experiment import CaseRunner, prepare_data
from bench_fixtures.files import AtomicOutput, OutputError, check_writable, save_numbered
from bench_fixtures import machine

CONFIG_KEY = pytest.StashKey[BenchConfig]()
STATE_KEY = pytest.StashKey[dict]()

# (option, dest, type, help); defaults come from the profile (None = "profile decides").
OPTIONS = [
    ("--bench-profile", "profile", str, "auto (seed on a GPU, smoke on a CPU), smoke or seed"),
    ("--dataset", "dataset", str, "cifar10 or synthetic (profile: smoke=synthetic, seed=cifar10)"),
    ("--data-dir", "data_dir", str, "folder holding cifar-10-batches-py/ (env CIFAR10_DIR; "
                                    "default ~/.cache/bench_fixtures/cifar10, downloaded when absent)"),
    ("--train-size", "train_size", int, "training images, stratified and seeded; 0 = all (smoke 256, seed 0)"),
    ("--test-size", "test_size", int, "test images, stratified and seeded; 0 = all (smoke 100, seed 0)"),
    ("--epochs", "epochs", int, "fine-tuning epochs (smoke 2, seed 5)"),
    ("--batch-size", "batch_size", int, "batch size for training and evaluation (32)"),
    ("--lr", "lr", float, "learning rate (sgd 0.01, adam 0.001)"),
    ("--optimizer", "optimizer", str, "sgd (momentum 0.9, torch form) or adam"),
    ("--weights", "weights", str, "imagenet or none (smoke none, seed imagenet)"),
    ("--device", "device", str, "auto, cpu or gpu (auto: gpu when NVML sees one)"),
    ("--seed", "seed", int, "seed for subsets, epoch order, head init and framework RNGs (0)"),
    ("--min-accuracy-gain", "min_accuracy_gain", float,
     "test_finetune fails unless accuracy_after >= accuracy_before + this (smoke 0.05, seed 0.10)"),
    ("--worker-timeout", "worker_timeout", float, "seconds a worker may take for one request (smoke 900, seed 7200)"),
    ("--worker-memory-limit", "worker_memory_limit", int, "MiB of host memory each worker may allocate "
                                                          "(RLIMIT_DATA); past it the case fails as out of "
                                                          "memory instead of the machine swapping (0 = none)"),
    ("--finetune-rounds", "finetune_rounds", int, "test_finetune rounds, each with a fresh model (1)"),
    ("--step-rounds", "step_rounds", int, "test_train_step rounds (smoke 3, seed 10)"),
    ("--step-count", "step_count", int, "training steps per test_train_step round (smoke 1, seed 50)"),
    ("--step-warmup", "step_warmup", int, "untimed steps before test_train_step rounds (smoke 1, seed 20)"),
    ("--image-size", "image_size", int, "input size the backbone sees; CIFAR's 32 px are resized on the device (32)"),
    ("--precision", "precision", str, "fp32 or tf32, set alike in both frameworks (fp32)"),
    ("--compile", "compile", str, "off, or on = XLA jit_compile in Keras and torch.compile (off)"),
    ("--preprocess", "preprocess", str, "auto, cifar (shared CIFAR mean/std) or native (each weights' own "
                                        "preprocessing); auto = native with imagenet weights"),
    ("--bn-momentum", "bn_momentum", float, "BatchNorm momentum, torch convention; Keras gets 1 - m "
                                            "(smoke 0.5, seed 0.1)"),
    ("--bn-eps", "bn_eps", float, "BatchNorm epsilon in both frameworks (1e-5)"),
    ("--adam-eps", "adam_eps", float, "Adam epsilon in both frameworks (1e-8)"),
    ("--eval-every-epoch", "eval_every_epoch", None, "evaluate on the test split after every epoch "
                                                     "(Keras validation_data; a torch eval loop; seed: on)"),
    ("--monitor-interval", "monitor_interval", float, "seconds between utilisation/memory samples, taken "
                                                      "from this process by the worker's PID (0.05)"),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bench", "PyTorch vs TensorFlow fine-tuning benchmark")
    group.addoption("--bench-report", dest="bench_report", default=None, metavar="DIR",
                    help="write the report (PNGs + report.md, python -m bench_fixtures.report) into DIR "
                         "at the end of the session")
    group.addoption("--telemetry-dir", dest="bench_telemetry_dir", default=None,
                    help="where each case's raw timeline + samples JSON goes (default: beside "
                         "--benchmark-json as NAME.telemetry/, else .benchmarks/telemetry/TIMESTAMP/)")
    for flag, dest, kind, help_ in OPTIONS:
        if kind is None:
            group.addoption(flag, dest=f"bench_{dest}", action="store_const", const=True, default=None, help=help_)
        else:
            group.addoption(flag, dest=f"bench_{dest}", type=kind, default=None, help=help_)


DEFAULT_STORAGE = "file://./.benchmarks"


def pytest_configure(config: pytest.Config) -> None:
    # Histories of different hardware never share a folder: .benchmarks/<gpu or cpu model>/...
    # (pytest-benchmark's own machine id ignores the GPU). An explicit --benchmark-storage wins.
    if getattr(config.option, "benchmark_storage", None) == DEFAULT_STORAGE:
        config.option.benchmark_storage = f"{DEFAULT_STORAGE}/{machine.storage_slug()}"
    _atomic_json(config)
    report = config.getoption("bench_report", None)
    if report:
        _require_writable(report, "--bench-report")
    json_out = getattr(config.option, "benchmark_json", None)
    if json_out is not None:
        _require_writable(Path(json_out.name).parent, "--benchmark-json")
    if report and getattr(config.option, "benchmark_json", None) is None:  # the report is made from the JSON
        config.option.benchmark_json = AtomicOutput(Path(report) / "run.json")
    options = {dest: config.getoption(f"bench_{dest}") for _, dest, _, _ in OPTIONS}
    gpus, reason = machine.nvml_gpus()
    try:
        config.stash[CONFIG_KEY] = bench_config_mod.resolve(options, len(gpus), reason)
    except ConfigError as e:
        raise pytest.UsageError(str(e)) from None
    config.stash[STATE_KEY] = {}
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # SIGTERM stops the run like Ctrl-C
        signal.signal(signal.SIGTERM, _terminate)


def _atomic_json(config: pytest.Config) -> None:
    """pytest-benchmark's `--benchmark-json` is an argparse FileType: opened (and emptied) while the
    command line is parsed, written in place at the end. Swap it for a file written beside its
    target and renamed into place, so a failed or interrupted session leaves no empty or partial
    JSON. (What the path held before is already gone by then: use a fresh path per run.)"""
    opened = getattr(config.option, "benchmark_json", None)
    if opened is None or isinstance(opened, AtomicOutput):
        return
    path = Path(opened.name)
    opened.close()
    if path.is_file() and path.stat().st_size == 0:
        path.unlink()
    config.option.benchmark_json = AtomicOutput(path)


def _require_writable(folder: str | Path, option: str, hint: str = "") -> None:
    """Outputs are checked at startup, not when an hour of results is to be saved."""
    try:
        check_writable(folder, option)
    except OutputError as e:
        raise pytest.UsageError(f"{e}{hint}") from None


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    """An interrupted run saves nothing: its workers are killed at once and pytest-benchmark is left
    with no results to write, so no partial JSON or history file appears."""
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        runner = session.config.stash.get(STATE_KEY, {}).get("runner")
        if runner is not None:
            runner.kill()
        bench_session = getattr(session.config, "_benchmarksession", None)
        if bench_session is not None:
            bench_session.benchmarks[:] = []
    yield


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(session.config.stash[CONFIG_KEY].headline())
    _guard_storage(session.config)


def _guard_storage(config: pytest.Config) -> None:
    """A run that is to be saved must be savable: check the storage folder now, not after the run;
    and save through `save_numbered` (next free number under a lock, whole file or none), so
    concurrent sessions sharing a storage folder never take each other's number or file."""
    bench_session = getattr(config, "_benchmarksession", None)
    storage = getattr(bench_session, "storage", None)
    if storage is None or not hasattr(storage, "get") or not (bench_session.save or bench_session.autosave):
        return
    _require_writable(storage.path, "--benchmark-storage", " (file://DIR)")

    def save(output_json: dict, name: str) -> None:
        from pytest_benchmark.utils import safe_dumps
        folder = storage.get("x").parent  # STORAGE/<machine id>/
        path = save_numbered(folder, name, safe_dumps(output_json, ensure_ascii=True, indent=4).encode())
        storage.logger.info(f"Saved benchmark data in: {path}")

    storage.save = save


def _case_key(item: pytest.Item) -> tuple | None:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return (params["framework"], params["model"]) if "framework" in params and "model" in params else None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Put each case's tests next to each other (they share a worker); prepare the data up front,
    so a bad data set stops the run before any worker starts."""
    cfg = config.stash[CONFIG_KEY]
    cases = [k for k in dict.fromkeys(_case_key(i) for i in items) if k is not None]
    rank = {k: n for n, k in enumerate(cases)}
    first = next((n for n, i in enumerate(items) if _case_key(i)), len(items))
    bench = sorted((i for i in items if _case_key(i)), key=lambda i: rank[_case_key(i)])
    items[:] = [i for i in items[:first] if not _case_key(i)] + bench + \
        [i for i in items[first:] if not _case_key(i)]
    for item in bench:
        if cfg.device == "gpu":
            item.add_marker(pytest.mark.gpu)
    if bench and not config.getoption("benchmark_skip", False):
        telemetry = telemetry_dir(config)
        _require_writable(telemetry, "--telemetry-dir")
        work = tempfile.mkdtemp(prefix="bench-")
        state = config.stash[STATE_KEY]
        state["work_dir"] = work
        try:
            bundle_dir, meta = prepare_data(cfg, work)
        except DataError as e:
            raise pytest.UsageError(str(e)) from None
        state["runner"] = runner = CaseRunner(cfg, bundle_dir, meta, work, telemetry)
        runner.progress = Progress(config, cfg.epochs)
        state["bundle_meta"] = meta


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """A case's worker lives as long as its tests (they are adjacent): it must not sit on memory or
    CPU while other cases or tests run."""
    key = _case_key(item)
    if key is not None and (nextitem is None or _case_key(nextitem) != key):
        runner = item.config.stash.get(STATE_KEY, {}).get("runner")
        if runner is not None:
            runner.close()


class Progress:
    """One line per epoch per case through pytest's terminal reporter (not captured output)."""

    def __init__(self, config: pytest.Config, epochs: int) -> None:
        self.reporter = config.pluginmanager.get_plugin("terminalreporter")
        self.capture = config.pluginmanager.get_plugin("capturemanager")
        self.epochs, self.start = epochs, {}

    def __call__(self, name: str, event: dict) -> None:
        if event["name"] == "run_start":
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
        return Path(given)
    json_out = config.getoption("benchmark_json", None)
    if json_out is not None:
        name = Path(getattr(json_out, "name", str(json_out)))
        return name.with_name(name.stem + ".telemetry")
    return Path(".benchmarks") / "telemetry" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def pytest_unconfigure(config: pytest.Config) -> None:
    report = config.getoption("bench_report", None)
    json_out = getattr(config.option, "benchmark_json", None)
    if report and json_out is not None and Path(json_out.name).is_file():
        from bench_fixtures.report import write_report
        path = write_report([json_out.name], report)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"bench: report written to {path}")
    state = config.stash.get(STATE_KEY, {})
    if "runner" in state:
        state["runner"].close()
    if "work_dir" in state:
        shutil.rmtree(state["work_dir"], ignore_errors=True)


@pytest.fixture(scope="session")
def bench_config(pytestconfig: pytest.Config) -> BenchConfig:
    return pytestconfig.stash[CONFIG_KEY]


@pytest.fixture(scope="session")
def bench_runner(pytestconfig: pytest.Config) -> CaseRunner:
    runner = pytestconfig.stash[STATE_KEY].get("runner")
    if runner is None:
        pytest.skip("benchmark data not prepared (--benchmark-skip, or collected without cases)")
    yield runner
    runner.close()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    runner = config.stash.get(STATE_KEY, {}).get("runner")
    machine_info.update(machine.machine_info(runner.framework_builds if runner else {}))


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict) -> None:
    output_json["bench_config"] = config.stash[CONFIG_KEY].as_dict()
    output_json["command"] = " ".join(["pytest", *config.invocation_params.args])
    runner = config.stash.get(STATE_KEY, {}).get("runner")
    if runner is not None and runner.worker_infos:
        from bench_fixtures import dx
        ttfs: dict[str, list[float]] = {}
        for b in output_json.get("benchmarks", []):
            e = b.get("extra_info") or {}
            if e.get("time_to_first_step_s") is not None:
                ttfs.setdefault(e["framework"], []).append(e["time_to_first_step_s"])
        output_json["dx"] = dx.summarize(runner.worker_infos, len(machine.nvml_gpus()[0]), ttfs)
    output_json["bench_data"] = config.stash.get(STATE_KEY, {}).get("bundle_meta")
