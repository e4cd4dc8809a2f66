"""Issue #29's red-team findings, as classes: output folders two sessions share, files other users
cannot read, sizes that read as if they fitted, and `--replicas` beyond what the host can hold."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_fixtures import config
from bench_fixtures.config import ConfigError, replica_memory, replicas_problem, resolve
from bench_fixtures.files import FolderClaim, size_pair
from bench_fixtures.registry import installed
from tests.test_gate import _valid_pair

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30


# --------------------------------------------------------------------------- sizes that do not fit

def _bytes(shown: str) -> float:
    number, unit = shown.rsplit(" ", 1)
    return float(number.replace(",", "")) * {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 2**50), st.integers(1, 2**40))
def test_a_need_above_the_room_always_reads_above_it(limit, extra):
    """"needs 1 MiB, 1 MiB are free" cannot happen: both in one unit, with the decimals it takes."""
    need, room = size_pair(limit + extra, limit)
    assert need.rsplit(" ", 1)[1] == room.rsplit(" ", 1)[1]
    assert _bytes(need) > _bytes(room), (need, room)


# --------------------------------------------------------------------------- --replicas N on this host

@settings(max_examples=500, deadline=None)
@given(replicas=st.integers(2, 4096), device=st.sampled_from(["cpu", "gpu"]), gpus=st.integers(0, 16),
       hidden=st.integers(0, 16), cores=st.integers(1, 256), available=st.integers(0, 2**42),
       per_replica=st.integers(2**28, 2**35))
def test_replicas_fit_the_host_or_the_line_says_how_many_do(replicas, device, gpus, hidden, cores, available,
                                                            per_replica):
    """Refused exactly when a bound is crossed (a GPU each on a GPU run, none seen included, a core each
    on a CPU run, their memory); the one line names the option as typed and a number that fits every bound."""
    visible = max(gpus - hidden, 0)
    problem = replicas_problem(replicas, device, gpus, visible, cores, available, per_replica)
    crossed = (device == "gpu" and replicas > visible) or (device == "cpu" and replicas > cores) \
        or replicas * per_replica > available
    assert bool(problem) == bool(crossed)
    if problem:
        assert problem.startswith(f"--replicas {replicas}") and "\n" not in problem
        fits = int(re.search(r"give at most (\d+)", problem).group(1))
        assert fits < replicas
        assert fits == 0 or replicas_problem(fits, device, gpus, visible, cores, available, per_replica) is None


def test_replicas_beyond_this_host_s_memory_are_refused_at_resolve(monkeypatch):
    monkeypatch.setattr(config, "usable_cores", lambda: 64)
    monkeypatch.setattr(config, "available_memory", lambda: 8 * GiB)
    with pytest.raises(ConfigError, match=r"^--replicas 8: each replica's worker takes about 1\.6\d GiB of memory, "
                                          r"1[23]\.\d\d GiB for 8, and this machine has 8\.00 GiB available; "
                                          r"give at most 4, or free memory"):
        resolve({"device": "cpu", "replicas": 8}, 0)
    assert resolve({"device": "cpu", "replicas": 4}, 0).replicas == 4
    # a worker capped by --worker-memory-limit takes at most that
    assert resolve({"device": "cpu", "replicas": 6, "worker_memory_limit": 1024}, 0).replicas == 6
    # activations grow with the batch and the image on a CPU, not on a GPU (they live on the device)
    assert replica_memory("cpu", 32, 224) > 4 * replica_memory("gpu", 32, 224) / 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(ConfigError, match="NVML sees 4, of which CUDA_VISIBLE_DEVICES leaves 1; give at most 1"):
        resolve({"device": "gpu", "replicas": 2}, 4)


@pytest.mark.parametrize("env,needle", [
    ({"TF_CONFIG": "not json"}, "TF_CONFIG='not json': not a cluster this host's replicas can join (Expecting value"),
    ({"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}, "task": {"index": 5}}'}, "task.index must be a worker's number"),
    ({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "NNODES": "two"},
     "NNODES='two': must be an integer in [1, "),
    ({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "99999"}, "MASTER_PORT='99999': must be an integer in [1, 65535]"),
])
def test_a_rendezvous_environment_that_cannot_be_read_stops_the_session_at_startup(tmp_path, env, needle):
    """With --replicas, the multi-host rendezvous comes from the environment: a malformed one is one
    line naming the variable (it was an INTERNALERROR traceback), before any data or worker."""
    from tests.test_cli_errors import assert_nothing_written, assert_one_line_usage_error, run_pytest
    proc = run_pytest(tmp_path, "--replicas=2", env=env)
    assert_one_line_usage_error(proc, needle)
    assert_nothing_written(tmp_path)


def test_the_suite_s_own_two_replicas_fit_this_machine():
    """tests/test_replicas.py and tests/test_faults.py run two replicas of smoke on 2 cores."""
    assert resolve({"device": "cpu", "replicas": 2, "worker_timeout": 300}, 0).replicas == 2


# --------------------------------------------------------------------------- nested pytest sessions

CASE = '''
import os, time
from pathlib import Path
import pytest

@pytest.mark.parametrize("framework,model", [("{framework}", "mobilenet_v2")])
def test_case(benchmark, bench_runner, framework, model):
    """A benchmark case to the plugin (it uses bench_runner), with no worker: a session in seconds."""
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    hold = os.environ.get("HOLD")
    if hold:  # stay inside the session until the test says go
        Path(hold + ".ready").touch()
        end = time.monotonic() + 120
        while not Path(hold + ".go").exists() and time.monotonic() < end:
            time.sleep(0.05)
'''
CONFTEST = '''
import sys
if "bench_fixtures.plugin" not in sys.modules:  # not installed as an entry point
    pytest_plugins = ["bench_fixtures.plugin"]
'''


@pytest.fixture
def project(tmp_path):
    """A folder with one benchmark case of an installed framework, where nested sessions run."""
    if not installed():
        pytest.skip("no framework installed")
    (tmp_path / "test_case.py").write_text(CASE.replace("{framework}", installed()[0]))
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "tmp").mkdir()
    return tmp_path


def session(project: Path, *args: str, umask: int | None = None, env: dict | None = None,
            wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    """`pytest test_case.py ARGS` in PROJECT (this checkout's package, its temporary folder inside)."""
    cmd = [sys.executable, "-m", "pytest", "test_case.py", "-q", "-p", "no:cacheprovider",
           f"--benchmark-storage=file://{project / 'store'}", *args]
    environ = {**os.environ, "TMPDIR": str(project / "tmp"), **(env or {}),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    kw = dict(cwd=project, env=environ, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
              preexec_fn=None if umask is None else lambda: os.umask(umask))
    if not wait:
        return subprocess.Popen(cmd, **kw)
    return subprocess.run(cmd, timeout=300, **kw)


def _wait_until(condition, what: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def test_two_live_sessions_never_share_a_report_folder(project):
    """The second session given a folder the first is writing its report into stops at startup with
    one line naming the option and the fix; once the first has ended, the folder is free again, and
    no lock file is left in it."""
    report = project / "report"
    hold = project / "hold"
    first = session(project, f"--bench-report={report}", env={"HOLD": str(hold)}, wait=False)
    try:
        _wait_until(lambda: Path(f"{hold}.ready").exists() or first.poll() is not None, "the first session's case")
        assert first.poll() is None, first.communicate()
        second = session(project, f"--bench-report={report}")
        assert second.returncode == pytest.ExitCode.USAGE_ERROR, second.stdout[-2000:] + second.stderr[-2000:]
        errors = [ln for ln in second.stderr.splitlines() if ln.startswith("ERROR:")]
        assert errors == [f"ERROR: --bench-report: another session (PID {first.pid}) is writing into {report} now, "
                          f"and one would replace the other's files; give each session its own folder"], second.stderr
        other = session(project, f"--bench-report={project / 'other'}")  # another folder: no conflict
        assert other.returncode == 0, other.stdout[-2000:] + other.stderr[-2000:]
    finally:
        Path(f"{hold}.go").touch()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out[-2000:] + err[-2000:]
    assert (report / "run.json").is_file()
    again = session(project, f"--bench-report={report}")  # the same folder later: the normal re-run
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert not (report / FolderClaim.LOCK).exists()


def test_a_telemetry_folder_held_by_a_live_session_is_refused(project):
    telemetry = project / "telemetry"
    claim = FolderClaim(telemetry, "--telemetry-dir")  # as a live session holds it (this process)
    try:
        r = session(project, f"--telemetry-dir={telemetry}")
    finally:
        claim.release()
    assert r.returncode == pytest.ExitCode.USAGE_ERROR, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"ERROR: --telemetry-dir: another session (PID {os.getpid()}) is writing into {telemetry} now" in r.stderr
    assert not telemetry.exists()  # released: the claim made the folder, nothing was written in it


def test_run_files_honour_the_umask(project):
    """--benchmark-json, autosave and --bench-report's run file are written atomically (a temporary
    file renamed), with the mode any other file gets (0o666 less the umask), not mkstemp's 0600."""
    r = session(project, f"--benchmark-json={project / 'out.json'}", "--benchmark-autosave", umask=0o027)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = session(project, f"--bench-report={project / 'report'}", umask=0o002)
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    modes = {f: oct(f.stat().st_mode & 0o777) for f in (project / "out.json", *(project / "store").glob("*/0001_*.json"),
                                                       project / "report" / "run.json")}
    assert list(modes.values()) == ["0o640", "0o640", "0o664"], modes
    assert not list(project.rglob("*.part"))


@pytest.mark.parametrize("umask", [0o027, 0o002])
def test_github_json_honours_the_umask(tmp_path, umask):
    base, cand = _valid_pair()
    for name, run in (("b.json", base), ("c.json", cand)):
        (tmp_path / name).write_text(json.dumps(run))
    r = subprocess.run([sys.executable, "-m", "bench_fixtures", "gate", str(tmp_path / "b.json"),
                        str(tmp_path / "c.json"), "--github-json", str(tmp_path / "gh.json")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(umask))
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("gh.json", "gh.bigger.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("value,count", [("", 0), ("-1", 0), ("0,0,0", 1), ("0,1", 2), ("1,-1,0", 1), ("0,7", 1),
                                         ("GPU-1234,0", 2), (" 0 , 1 ", 2)])
def test_cuda_visible_devices_is_read_as_cuda_reads_it(value, count):
    """In order, up to the first entry that names no device; a device named twice is one device."""
    assert config.visible_gpus(4, {"CUDA_VISIBLE_DEVICES": value}) == count


def test_an_interpreter_that_hangs_is_refused_and_its_children_go_with_it(tmp_path, monkeypatch):
    """A --candidate-python wrapper script whose child hangs: refused at the probe's timeout, and the
    child (its own process group) is killed, not left behind."""
    from bench_fixtures.analysis import ab
    marker = tmp_path / "child.pid"
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {marker}\nwait\n")
    wrapper.chmod(0o755)
    monkeypatch.setattr(ab, "PROBE_TIMEOUT_S", 1)
    line = ab.probe_python(str(wrapper), "--candidate-python", ["torch"], {})
    assert line == "--candidate-python: importing this project there took over 1 s; check that interpreter"
    pid = int(marker.read_text())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and \
            Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
