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
from .registry import FRAMEWORKS, unavailable
from .settings import SETTINGS
from .weights import startup_problem

# The options are the settings table's rows (settings.py): flag, type and help with its defaults.
OPTIONS = [s for s in SETTINGS if s.flag]


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


def pytest_configure(config: pytest.Config) -> None:
    """A marker per framework of the registry (`-m torch`), so adding one needs no pytest.ini line."""
    for name, fw in FRAMEWORKS.items():
        config.addinivalue_line("markers", f"{name}: a {fw.title or name} benchmark case")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bench", "PyTorch vs TensorFlow (and Keras on JAX) fine-tuning benchmark")
    group.addoption("--bench-report", dest="bench_report", default=None, metavar="DIR",
                    help="write the report (PNGs + report.md, bench report) into DIR at the end of the session")
    group.addoption("--telemetry-dir", dest="bench_telemetry_dir", default=None, metavar="DIR",
                    help="where each case's raw timeline + samples JSON goes (default: beside "
                         "--benchmark-json as NAME.telemetry/, else .benchmarks/telemetry/TIMESTAMP/)")
    for row in OPTIONS:  # default None: "not given", so resolve() applies the profile's
        if row.kind is bool:
            group.addoption(row.flag, dest=f"bench_{row.name}", action="store_const", const=True, default=None,
                            help=row.help_text())
        else:
            group.addoption(row.flag, dest=f"bench_{row.name}", type=row.kind, default=None, help=row.help_text(),
                            metavar=row.metavar)


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
    options = {row.name: config.getoption(f"bench_{row.name}") for row in OPTIONS}
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
    from .data import DataError, prepare_data
    from .runner.experiment import CaseRunner
    from .runner.replicas import world_size
    telemetry = telemetry_dir(config)
    _require_writable(telemetry, "--telemetry-dir")
    if (claim := _telemetry_claim(config)) is not None:
        state.claim(telemetry, *claim)
    try:
        state.work = WorkFolder()  # sweeps what sessions killed before their cleanup left behind
    except OutputError as e:
        raise pytest.UsageError(str(e)) from None
    try:
        bundle_dir, state.bundle_meta = prepare_data(state.cfg, state.work.path, world_size(state.cfg.replicas))
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
    from .analysis.results import SCHEMA_KEY, SCHEMA_VERSION
    output_json[SCHEMA_KEY] = SCHEMA_VERSION
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
