"""Bad input through the real command line: `pytest` stops at startup with one `ERROR:` line naming
the option or file and the fix, before any worker starts, and writes nothing."""
import hashlib
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bench_fixtures import data
from tests.test_data import Exploit, http_server  # noqa: F401  (http_server: a fixture)

ROOT = Path(__file__).resolve().parents[1]


def run_pytest(tmp_path: Path, *args: str, env: dict | None = None, max_file_bytes: int | None = None
               ) -> subprocess.CompletedProcess:
    """`pytest tests/benchmarks --collect-only` (collection is where the data is read) with every
    output pointed into tmp_path/out, and the temporary folder into tmp_path/tmp. MAX_FILE_BYTES: the
    kernel refuses to grow any file past it (RLIMIT_FSIZE; EFBIG, as a full disk gives ENOSPC)."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    out = tmp_path / "out"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/benchmarks", "--collect-only", "-q", "-p", "no:cacheprovider",
         f"--benchmark-storage=file://{out}/store", f"--telemetry-dir={out}/telemetry", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "TMPDIR": str(tmp_path / "tmp"), **(env or {})},
        preexec_fn=None if max_file_bytes is None else lambda: _limit_file_size(max_file_bytes))


def _limit_file_size(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def assert_one_line_usage_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def assert_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], list(out.rglob("*"))
    assert list((tmp_path / "tmp").iterdir()) == []  # the session's work folder is gone too


OPTION_CASES = [
    (["--bench-profile=fast"], ["--bench-profile 'fast': choose one of auto, smoke, seed"]),
    (["--dataset=imagenet"], ["--dataset 'imagenet': choose one of cifar10, synthetic"]),
    (["--weights=random"], ["--weights random: choose one of imagenet, none, same, or give a folder of staged weight files"]),
    (["--device=tpu"], ["--device 'tpu': choose one of auto, cpu, gpu"]),
    (["--epochs=0"], ["--epochs 0: must be an integer >= 1"]),
    (["--batch-size=0"], ["--batch-size 0: must be an integer >= 1"]),
    (["--train-size=-5"], ["--train-size -5: must be an integer >= 0"]),
    (["--image-size=8"], ["--image-size 8: must be an integer >= 32"]),
    (["--train-size=64", "--batch-size=128"], ["--batch-size 128 is larger than --train-size 64"]),
    (["--worker-memory-limit=100"], ["--worker-memory-limit 100: must be 0 (no limit) or at least 1,024 MiB"]),
    (["--lr=-1"], ["--lr -1.0: must be a number > 0"]),
    # Every option to its real range: values that used to pass startup and fail deep in a worker.
    (["--seed=4294967296"], ["--seed 4294967296: must be at most 4,294,967,295: TensorFlow's", "32-bit"]),
    (["--worker-timeout=1e7"], ["--worker-timeout 10000000.0: must lie in [1, 2,147,483] s", "OS timer"]),
    (["--monitor-interval=0.0001"], ["--monitor-interval 0.0001: must lie in [0.01, 60] s", "share of a core"]),
    (["--epochs=1000000000"], ["--epochs 1000000000: must be at most 10,000: the gate and the report refuse"]),
    (["--epochs=10000", "--train-size=200000"], [
        "--epochs 10000 x --train-size 200000: the per-epoch shuffle orders take",
        "of memory available, and the data may take half of it (",
        "): the training needs the other half; lower --epochs or --train-size"]),
    (["--dataset=synthetic", "--train-size=100000000"], ["for the data set it is taken from", "of memory available"]),
    (["--data-dir=pytest.ini"], ["--data-dir pytest.ini: a file, not a folder; give the folder that holds"]),
    # One process per replica: bounded by this host's cores (a CPU run), GPUs (a GPU run) and memory.
    (["--replicas=100"], ["--replicas 100", "; give at most "]),
    (["--bench-report="], ["--bench-report is empty; give a folder, or leave the option out"]),
]


def canonical(folder: Path) -> Path:
    train, test = data.make_synthetic(50, 20, seed=0)
    return data.write_canonical(folder / data.BATCHES_DIR, train, test, 5)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _batch(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


CORRUPTIONS = {  # name: (how to damage the canonical folder, file, what the message says)
    "truncated": (lambda d, m: _truncate(d / "data_batch_3"), "data_batch_3", "not a valid CIFAR-10 pickle"),
    "code-executing pickle": (lambda d, m: (d / "data_batch_2").write_bytes(
        _batch({"data": Exploit(m), "labels": [0]})), "data_batch_2", "refused global posix.system"),
    "labels out of range": (lambda d, m: (d / "data_batch_1").write_bytes(
        _batch({b"data": np.zeros((10, 3072), np.uint8), b"labels": [12] * 10, b"batch_label": b"x"})),
        "data_batch_1", "labels must lie in 0..9"),
    "wrong shape": (lambda d, m: (d / "test_batch").write_bytes(
        _batch({b"data": np.zeros((20, 1024), np.uint8), b"labels": [0] * 20})), "test_batch", "must be uint8 of shape"),
    "wrong count": (lambda d, m: (d / "data_batch_5").write_bytes(
        _batch({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0] * 3})), "data_batch_5", "batches.meta says"),
    "missing batch": (lambda d, m: (d / "data_batch_4").unlink(), "data_batch_4", "missing"),
}


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """Every bad-option and bad-data session of this module, started at once (three at a time):
    each is a whole `pytest` start-up, mostly imports, and they are independent."""
    pool = ThreadPoolExecutor(3)
    runs = {}
    for n, (args, _) in enumerate(OPTION_CASES):
        tmp = tmp_path_factory.mktemp("option")
        runs[n] = (tmp, pool.submit(run_pytest, tmp, *args), None)
    loop = tmp_path_factory.mktemp("loop")
    (loop / "a").symlink_to(loop / "b")
    (loop / "b").symlink_to(loop / "a")
    runs["symlink loop"] = (loop, pool.submit(run_pytest, loop, f"--data-dir={loop / 'a'}"), None)
    home = tmp_path_factory.mktemp("home")
    canonical(home / "cifar")
    runs["tilde"] = (home, pool.submit(run_pytest, home, "--dataset=cifar10", "--data-dir=~/cifar", "--train-size=0",
                                       "--test-size=0", "--batch-size=10", env={"HOME": str(home)}), None)
    full = tmp_path_factory.mktemp("full")
    runs["full disk"] = (full, pool.submit(run_pytest, full, f"--data-dir={full / 'data'}", "--train-size=2000",
                                           max_file_bytes=4 << 20), None)
    for name, (damage, _, _) in CORRUPTIONS.items():
        tmp = tmp_path_factory.mktemp("data")
        folder = canonical(tmp / "data")
        damage(folder, tmp / "pwned")
        before = {p: p.read_bytes() for p in folder.iterdir()}
        runs[name] = (tmp, pool.submit(run_pytest, tmp, "--dataset=cifar10", f"--data-dir={tmp / 'data'}"), before)
    yield runs
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("n", range(len(OPTION_CASES)), ids=[" ".join(a) for a, _ in OPTION_CASES])
def test_bad_options_stop_the_session_at_startup(sessions, n):
    tmp, session, _ = sessions[n]
    assert_one_line_usage_error(session.result(), *OPTION_CASES[n][1])
    assert_nothing_written(tmp)


def test_data_dir_symlink_loop_is_named(sessions):
    tmp, session, _ = sessions["symlink loop"]
    assert_one_line_usage_error(session.result(), f"--data-dir {tmp / 'a'}: a symlink loop; give the folder")
    assert_nothing_written(tmp)


def test_tilde_in_data_dir_is_the_home_folder(sessions):
    home, session, _ = sessions["tilde"]
    proc = session.result()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "dataset=cifar10" in proc.stdout and "test_finetune" in proc.stdout
    assert not (ROOT / "~").exists()  # not a folder literally named "~"
    assert_nothing_written(home)


def test_full_disk_while_writing_the_bundle_is_one_line_with_the_sizes(sessions):
    """A real write failure: the kernel refuses to grow a file past 4 MiB (RLIMIT_FSIZE) while the
    6 MiB training images of the bundle are written."""
    tmp, session, _ = sessions["full disk"]
    line = assert_one_line_usage_error(session.result(), "/bundle: no room for the data bundle (File too large): "
                                                         "it needs 6.2 MiB, ", " are free; set TMPDIR to a folder "
                                                         "on a larger disk")
    assert "INTERNALERROR" not in line
    assert_nothing_written(tmp)  # the half-written bundle went with the work folder


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_bad_data_stops_the_session_naming_the_file(sessions, name):
    _, filename, needle = CORRUPTIONS[name]
    tmp, session, before = sessions[name]
    folder = tmp / "data" / data.BATCHES_DIR
    line = assert_one_line_usage_error(session.result(), str(folder / filename) if name != "missing batch"
                                       else filename, needle)
    assert "; " in line  # ... and what to do about it
    assert not (tmp / "pwned").exists()  # the pickle was refused, never run
    assert {p: p.read_bytes() for p in folder.iterdir()} == before
    assert_nothing_written(tmp)


def test_no_data_and_no_download_is_one_line_with_the_fixes(tmp_path, http_server):  # noqa: F811
    _, url = http_server
    empty = tmp_path / "data"
    empty.mkdir()
    proc = run_pytest(tmp_path, "--dataset=cifar10", f"--data-dir={empty}",
                      env={"CIFAR10_URL": f"{url}/cifar-10-python.tar.gz"})
    assert_one_line_usage_error(proc, "cannot download CIFAR-10 from http://127.0.0.1:", "(File not found)",
                                f"under {empty}", "--data-dir", "CIFAR10_DIR", "--dataset synthetic")
    assert [p.name for p in empty.iterdir()] == [".cifar10.lock"]  # no partial archive left behind
    assert_nothing_written(tmp_path)


def test_corrupt_download_is_refused_and_leaves_nothing(tmp_path, http_server):  # noqa: F811
    root, url = http_server
    (root / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b" + os.urandom(4096))  # a truncated/garbled archive
    digest = hashlib.md5((root / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    empty = tmp_path / "data"
    empty.mkdir()
    (empty / ".cifar10-extract-abc").mkdir()  # a half-extracted earlier attempt
    (empty / ".cifar10-x.tar.gz.part").write_bytes(b"half")
    proc = run_pytest(tmp_path, "--dataset=cifar10", f"--data-dir={empty}",
                      env={"CIFAR10_URL": f"{url}/cifar-10-python.tar.gz"})
    assert_one_line_usage_error(proc, f"md5 {digest} != expected {data.CIFAR10_MD5}")
    assert [p.name for p in empty.iterdir()] == [".cifar10.lock"]  # the stale attempt cleaned up, the bad
    #                                                                  download not kept
    assert_nothing_written(tmp_path)


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nobody may write into, root included (root ignores mode bits: `chattr +i`)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                            capture_output=True).returncode:
            pytest.skip("running as root where `chattr +i` is unavailable: no folder is read-only for root")
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    yield folder
    subprocess.run(undo, check=True)


@pytest.mark.parametrize("option", ["--benchmark-storage", "--telemetry-dir", "--bench-report", "--benchmark-json"])
def test_unwritable_output_folder_stops_the_session_at_startup(tmp_path, readonly_dir, option):
    """Found before an hour of benchmarking, not when the results are to be saved."""
    value = {"--benchmark-storage": f"file://{readonly_dir}/store", "--telemetry-dir": f"{readonly_dir}/telemetry",
             "--bench-report": f"{readonly_dir}/report", "--benchmark-json": f"{readonly_dir}/run.json"}[option]
    proc = run_pytest(tmp_path, f"{option}={value}", "--benchmark-autosave")
    if option == "--benchmark-json" and "argument --benchmark-json: can't open" in proc.stderr:
        # pytest-benchmark < 5.3 opens it itself while parsing (argparse FileType); later ones take a path
        assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    else:
        assert_one_line_usage_error(proc, f"{option}: cannot write to {readonly_dir}", f"give {option} a writable folder")
    assert list(readonly_dir.iterdir()) == []
    assert_nothing_written(tmp_path)


def test_the_tools_have_two_doors_bench_and_python_m_bench_fixtures():
    """`bench TOOL` and `python -m bench_fixtures TOOL`; the per-module shims (`python -m
    bench_fixtures.gate`, `.report`, `.parity`, `.overhead`) are gone, and the help names no other door."""
    import importlib.util
    r = subprocess.run([sys.executable, "-m", "bench_fixtures", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "`python -m bench_fixtures TOOL` runs the same tools." in r.stdout
    assert "bench_fixtures.<tool>" not in r.stdout and "bench report RUN.json" in r.stdout
    for tool in ("gate", "report", "parity", "overhead"):
        assert importlib.util.find_spec(f"bench_fixtures.{tool}") is None, tool
