"""Fixtures shared by the end-to-end tests: saved runs (the gate, the report), staged weight files."""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_DIRS: dict[str, Path] = {}


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory) -> Path:
    """One JAX persistent compilation cache for this test session (new each session, so a run on a
    clean machine is measured as one)."""
    return tmp_path_factory.mktemp("jax-compilation-cache")


@pytest.fixture(autouse=True)
def suite_environment(request, jax_cache, monkeypatch):
    """What the workers and the nested `pytest` sessions that a test starts share, outside the
    benchmark cases themselves (a timed case must not read what an earlier one compiled), from the
    test on (session- and module-scoped fixtures, set up before it, start theirs without):
    - one JAX compilation cache: every JAX worker builds the same few models, and JAX compiles each
      initializer and step anew (MobileNetV2's build takes 6 s cold, 1 s warm; its first epoch 9.5 s
      and 3.6 s). The worker records it (`settings.compilation_cache`), as it would a user's;
    - no hypothesis plugin in the nested sessions: they run or collect the benchmark cases, which use
      none, and importing it is a third of a session's start-up (0.7 of 2.1 s)."""
    if "bench_runner" in request.fixturenames:  # a benchmark case (as the plugin tells them)
        return
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(jax_cache))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # its default keeps only >= 1 s
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")  # no size limit, none set for us
    monkeypatch.setenv("PYTEST_ADDOPTS", " ".join(filter(None, [os.environ.get("PYTEST_ADDOPTS"),
                                                                "-p no:hypothesispytest"])))


@pytest.fixture(scope="session")
def saved_runs(tmp_path_factory):
    """Two real smoke runs of the torch-mobilenet_v2 case (fine-tune and train steps, evaluated
    every epoch, time to 20% accuracy; the second priced at 2.5 per hour), autosaved
    with their raw rounds into a storage folder, telemetry kept beside. Path options are written
    with a space and point at existing folders outside the project, as users write them."""
    store = tmp_path_factory.mktemp("storage")
    telemetry = tmp_path_factory.mktemp("telemetry")
    report = tmp_path_factory.mktemp("report")
    data = tmp_path_factory.mktemp("data")
    for i in range(2):
        r = subprocess.run([sys.executable, "-m", "pytest", "tests/benchmarks", "-q", "-p", "no:cacheprovider",
                            "--benchmark-only", "-k", "torch-mobilenet_v2 and (test_finetune or test_train_step)",
                            "--benchmark-autosave", "--benchmark-save-data", "--benchmark-storage", f"file://{store}",
                            "--telemetry-dir", str(telemetry), "--data-dir", str(data),
                            "--eval-every-epoch", "--target-accuracy", "0.2"]
                           + (["--bench-report", str(report), "--price-per-hour", "2.5"] if i else []),
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(store.glob("*/*.json"))
    assert len(files) == 2, files
    assert (files[0].parent / ".save.lock").is_file()  # autosave went through save_numbered
    assert "bench: report written to" in r.stdout
    _DIRS["report"] = report
    return files


@pytest.fixture(scope="session")
def bench_report_dir(saved_runs):
    """Where the second saved run wrote its --bench-report."""
    return _DIRS["report"]


@pytest.fixture(scope="session")
def staged():
    """A staged weights folder made here (tests/staged_weights.py): all six files, three models in
    two zoos, each zoo in its own process. Built once into the cache, keyed by the maker's source
    and the framework versions (as the real CIFAR-10 subset is), so a warm machine pays nothing."""
    from bench_fixtures.data import cache_dir
    from bench_fixtures.weights import FILES
    maker = ROOT / "tests" / "staged_weights.py"
    versions = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; print([m.version(p) for p in "
                               "('torch', 'torchvision', 'keras', 'h5py')])"], capture_output=True, text=True).stdout
    key = hashlib.sha256(maker.read_bytes() + versions.encode()).hexdigest()[:12]
    folder = cache_dir() / f"staged-weights-{key}"
    if not all((folder / f.name).is_file() for f in FILES.values()):
        part = folder.with_name(folder.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        procs = [subprocess.Popen([sys.executable, "-m", "tests.staged_weights", zoo, str(part)], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for zoo in ("torch", "tensorflow")]
        outs = [p.communicate(timeout=300)[0] for p in procs]  # both end before any failure is raised
        for p, out in zip(procs, outs):
            assert p.returncode == 0, out[-2000:]
        shutil.rmtree(folder, ignore_errors=True)
        part.rename(folder)
        for old in folder.parent.glob("staged-weights-*"):  # an older maker's or framework's files
            if old != folder and not old.name.endswith(".part"):  # (another session may be making one)
                shutil.rmtree(old, ignore_errors=True)
    return folder
