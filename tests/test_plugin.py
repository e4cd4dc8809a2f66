"""The installed plugin, the `bench` command, the storage layout `pytest-benchmark compare` reads,
and the package's structure (one registry, layers, named events), through real entry points."""
import ast
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench_fixtures import benchmark_compat, machine
from bench_fixtures.registry import FRAMEWORKS, NAMES, backend_module, unavailable
from bench_fixtures.runner.worker import Worker, WorkerError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bench_fixtures"


def _installed() -> bool:
    """pip put the `bench` command beside this interpreter (an install, editable or not)."""
    return (Path(sys.executable).parent / "bench").is_file()


# Run with PYTHONPATH=. where nothing can be installed (a GPU image): no entry point, no `bench` command.
needs_install = pytest.mark.skipif(not _installed(), reason="the project is not pip-installed here (PYTHONPATH=.): "
                                                            "no pytest11 entry point, no bench command")
BIN = Path(sys.executable).parent  # where pip put the console scripts of this interpreter


def script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: the project is not installed (pip install -r requirements.txt)")
    return str(path)


# --------------------------------------------------------------------------- pytest-benchmark's internals

def test_the_pytest_benchmark_internals_we_use_are_still_there(pytestconfig):
    """Fails loudly the day pytest-benchmark changes what benchmark_compat relies on."""
    assert benchmark_compat.check(pytestconfig) == []
    for attr in ("_rootpath", "_inipath", "_inicfg", "_inicache"):  # plugin._rootdir_from_options
        assert hasattr(pytestconfig, attr), attr
    from _pytest.config.findpaths import determine_setup
    rootpath, inipath, _, _ = determine_setup(inifile=None, override_ini=None, args=[str(ROOT / "tests")],
                                              rootdir_cmd_arg=None, invocation_dir=ROOT)
    assert (rootpath, inipath) == (ROOT, ROOT / "pytest.ini")


@needs_install
def test_the_plugin_is_installed_and_inert_elsewhere(tmp_path):
    """In another project's session the plugin's options exist (installed), but it does nothing:
    no headline, no config check, nothing written (pytest-benchmark itself makes an empty .benchmarks/)."""
    (tmp_path / "test_other.py").write_text("def test_ok():\n    assert True\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--epochs=0",
                        "--benchmark-json", "out.json", "test_other.py"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bench:" not in r.stdout + r.stderr and "1 passed" in r.stdout
    assert [p for p in tmp_path.rglob("*") if p.name not in ("test_other.py", "__pycache__", ".benchmarks")
            and "__pycache__" not in p.parts] == []
    help_ = subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert "--data-dir=DIR" in help_.stdout and "--bench-profile" in help_.stdout


def test_path_options_with_a_space_keep_the_project_root(tmp_path):
    """`pytest --benchmark-only -k vgg19 --data-dir /abs/dir` from the project root, no test path:
    pytest first takes /abs/dir for a test path (and for its root folder); the plugin puts the
    root back, so pytest.ini (testpaths, markers, addopts) is read. Same for an existing
    `--benchmark-json FILE` (pytest-benchmark's option) and for a foreign project's ini file."""
    data = tmp_path / "elsewhere" / "data"
    data.mkdir(parents=True)
    (tmp_path / "elsewhere" / "pyproject.toml").write_text("[tool.pytest.ini_options]\naddopts = '-x'\n")
    old = tmp_path / "old.json"
    old.write_text("{}")
    r = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "--benchmark-only",
                        "-k", "vgg19", "--data-dir", str(data), "--benchmark-json", str(old)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    ids = [ln for ln in r.stdout.splitlines() if "::" in ln]
    assert ids == [f"tests/benchmarks/test_cases.py::{t}[{fw}-vgg19]" for fw in NAMES
                   for t in ("test_finetune", "test_train_step")], r.stdout
    assert "PytestUnknownMarkWarning" not in r.stdout + r.stderr  # pytest.ini's markers were read
    header = subprocess.run([sys.executable, "-m", "pytest", "--co", "-p", "no:cacheprovider", "-k", "vgg19",
                             "--data-dir", str(data)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert f"rootdir: {ROOT}" in header.stdout and "configfile: pytest.ini" in header.stdout, header.stdout


def test_benchmark_compare_reads_the_hardware_folder(saved_runs):
    """--benchmark-compare loads its runs before this suite names the storage folder: reloaded."""
    store = saved_runs[0].parent.parent
    # From the storage's parent: pytest-benchmark's own warning about differing machine_info prints
    # the storage relative to the working folder and crashes when it lies outside (its bug, not ours).
    r = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "tests" / "benchmarks"), "-q", "-p",
                        "no:cacheprovider", "--benchmark-only", "-k", "torch-mobilenet_v2 and test_train_step",
                        "--step-rounds=2", "--benchmark-storage", f"file://{store}", "--benchmark-compare=0001"],
                       cwd=store.parent, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # (pytest-benchmark's own first load, at configure time, still warns that the plain folder is empty)
    assert f"Comparing against benchmarks from: {saved_runs[0].parent.name}/0001_" in r.stdout + r.stderr
    assert "NOW" in r.stdout


# --------------------------------------------------------------------------- storage and compare

def test_runs_are_stored_where_pytest_benchmark_compare_looks(saved_runs, tmp_path):
    """`.benchmarks/<machine id>-<GPU or CPU model>/NNNN_*.json`: one level, as pytest-benchmark
    expects, with the hardware in the folder's name so two GPU models never share a history."""
    from pytest_benchmark.utils import get_machine_id
    assert {p.parent.name for p in saved_runs} == {f"{get_machine_id()}-{machine.storage_slug()}"}
    shutil.copytree(saved_runs[0].parent.parent, tmp_path / ".benchmarks")
    listed = subprocess.run([script("pytest-benchmark"), "compare"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("test_finetune[torch-mobilenet_v2]") == 2, listed.stdout
    pair = subprocess.run([script("pytest-benchmark"), "compare", "0001", "0002", "--group-by=group"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert pair.returncode == 0, pair.stderr
    assert pair.stdout.count("test_train_step[torch-mobilenet_v2]") == 2, pair.stdout


# --------------------------------------------------------------------------- the bench command

@needs_install
@pytest.mark.parametrize("tool", ["gate", "report", "parity", "overhead", "machine"])
def test_bench_tool_help(tool):
    r = subprocess.run([script("bench"), tool, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith(f"usage: bench {tool}"), r.stdout + r.stderr


@needs_install
def test_bench_without_a_tool_lists_them():
    r = subprocess.run([script("bench")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and all(f"bench {t}" in r.stdout for t in ("gate", "report", "parity", "machine"))
    bad = subprocess.run([script("bench"), "gates"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown command 'gates'" in bad.stderr


@needs_install
def test_bench_gate_and_report_on_real_runs(saved_runs, tmp_path):
    r = subprocess.run([script("bench"), "gate", "--allow-mismatch", *map(str, saved_runs), "--threshold", "time=9",
                        "--threshold", "throughput=9", "--threshold", "time_to_first_step=9",
                        "--threshold", "peak_memory=9", "--threshold", "time_to_accuracy=9",
                        "--threshold", "inter_epoch_gap=9", "--allow-disturbed"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr  # the bare --allow-mismatch did not swallow a file
    out = subprocess.run([script("bench"), "report", str(saved_runs[0]), "--out", str(tmp_path / "rep")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "rep" / "report.md").is_file() and (tmp_path / "rep" / "accuracy.png").is_file()
    machine_out = subprocess.run([sys.executable, "-m", "bench_fixtures", "machine", "--slug"], capture_output=True,
                                 text=True, timeout=60)
    assert machine_out.stdout.strip() == machine.storage_slug()


# --------------------------------------------------------------------------- worker faults

def test_native_crash_under_a_memory_cap_says_out_of_memory(tmp_path):
    """Native code that cannot allocate often dies (SIGSEGV, SIGABRT) instead of raising: with a cap
    set, the case says it most likely ran out of memory, with the sizes and the fix."""
    cfg = {"device": "cpu", "worker_memory_limit": 1024, "batch_size": 16, "image_size": 512}
    w = Worker(None, cfg, None, tmp_path / "w.log", 30, name="tensorflow-mobilenet_v2", faults=True)
    w.framework = "tensorflow"
    with pytest.raises(WorkerError) as e:
        w.request("crash", signal="SIGSEGV")
    msg = str(e.value)
    assert msg.startswith("tensorflow-mobilenet_v2: tensorflow: out of host memory (--worker-memory-limit 1024 MiB) "
                          "during 'crash' at --batch-size 16 --image-size 512: most likely; the worker was killed "
                          "by SIGSEGV"), msg
    assert msg.endswith("lower --batch-size or --image-size, or raise --worker-memory-limit") and "\n" not in msg


def test_fault_injection_is_unreachable_in_a_normal_worker(tmp_path):
    with Worker(None, {"device": "cpu"}, None, tmp_path / "w.log", 30) as w:
        with pytest.raises(WorkerError, match="unknown request 'crash'"):
            w.request("crash", signal="SIGKILL")


# --------------------------------------------------------------------------- structure

def test_one_registry_names_every_framework_and_its_backend():
    for name, f in FRAMEWORKS.items():
        assert (PACKAGE / "frameworks" / f.backend_file).is_file()
        assert importlib.util.find_spec(backend_module(name)).origin.endswith(f.backend_file)  # no import
        assert f"class {f.backend.split(':')[1]}" in (PACKAGE / "frameworks" / f.backend_file).read_text()
    for name, reason in unavailable().items():  # only a framework whose package is not installed (a torch-only
        package = FRAMEWORKS[name].packages[0]  # GPU image); requirements.txt installs every one
        assert reason.startswith(f"{name} cases skipped: the Python package ")
        with pytest.raises(importlib.metadata.PackageNotFoundError):
            importlib.metadata.version(package)
    assert NAMES == ("torch", "tensorflow", "jax")
    r = subprocess.run([sys.executable, "-c", "import sys, bench_fixtures.plugin, bench_fixtures.cli, "
                        "bench_fixtures.analysis.gate, bench_fixtures.analysis.report, bench_fixtures.runner.experiment; "
                        "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules))"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr  # the parent never imports a framework


LAYERS = [  # lowest first; a module may import its own layer and the ones below
    {"files", "settings", "config", "machine", "peaks", "registry"},
    {"data"},
    {"models", "weights"},
    {"telemetry"},
    {"frameworks"},
    {"runner"},
    {"analysis"},
    {"plugin", "cli", "benchmark_compat", "__main__"},
]


def _layer(module: str) -> int:
    """MODULE as a path inside the package, without .py (e.g. 'runner/worker', 'frameworks/__init__')."""
    for rank, names in enumerate(LAYERS):
        if module in names or module.split("/")[0] in names:
            return rank
    raise AssertionError(f"{module} is in no layer")


def _module(parts: list[str]) -> str:
    """The package-relative module PARTS name: a module file, else a package's __init__."""
    path = "/".join(parts)
    return path if (PACKAGE / f"{path}.py").is_file() else f"{path}/__init__".lstrip("/")


def _imports(path: Path) -> set[str]:
    """Package-internal imports of PATH, as package-relative module paths."""
    here = path.relative_to(PACKAGE).with_suffix("").parts
    package = list(here[:-1])  # the package PATH belongs to (its own folder for an __init__)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            if node.module:
                out.add(_module(base + node.module.split(".")))
            else:  # from . import a, b: submodules, or names of the package itself
                out.update(_module(base + [a.name]) if (PACKAGE.joinpath(*base, f"{a.name}.py")).is_file()
                           or (PACKAGE.joinpath(*base, a.name)).is_dir() else _module(base) for a in node.names)
        elif isinstance(node, (ast.ImportFrom, ast.Import)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            out.update(_module(n.split(".")[1:]) for n in names if (n or "").startswith("bench_fixtures."))
    return out


def test_each_layer_imports_only_the_ones_below():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = str(path.relative_to(PACKAGE).with_suffix(""))
        if me == "__init__":
            continue
        for target in _imports(path):
            if target == "__init__":
                continue
            if _layer(target) > _layer(me):
                bad.append(f"{me} imports {target}")
    assert bad == []


def test_timeline_event_names_are_named_constants():
    from bench_fixtures.telemetry.timeline import EVENTS
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "timeline.py":
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(PACKAGE)}: {name!r}" for name in EVENTS if f'"{name}"' in text]
    assert offenders == []
