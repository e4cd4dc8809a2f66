"""One process per case, importing one framework; driven by the pytest process over a socket.

Parent side: `Worker` starts `python -m bench_fixtures.runner.worker FD`, sends requests, waits for each
answer at most `timeout` seconds, and turns a crash, a hang or an exception into a `WorkerError`
naming the exit code or signal, the phase and the tail of the worker's output. The config crosses
the pipe as a dict (`BenchConfig.as_dict()`). Child side: `serve` rebuilds the typed config
(`BenchConfig.from_dict`), hands it to the framework's backend (the `Backend` protocol) and answers
requests with the backend's results plus the timeline events recorded meanwhile.
The worker synchronises the device before it answers, so the parent can time around a request.
"""
from __future__ import annotations

import faulthandler
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, NoReturn

from ..config import BenchConfig

if TYPE_CHECKING:
    from ..frameworks.protocol import Backend

ROOT = Path(__file__).resolve().parents[2]  # the folder that holds bench_fixtures/
TAIL_CHARS = 3000


_LIVE: dict[int, subprocess.Popen] = {}  # every worker started and not yet reaped, by PID


def kill_all() -> list[int]:
    """SIGKILL every live worker's process group (an interrupted session); returns their PIDs."""
    pids = list(_LIVE)
    for pid, proc in list(_LIVE.items()):
        if proc.poll() is None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        _LIVE.pop(pid, None)
    return pids


class WorkerError(RuntimeError):
    """A case's worker failed; the message says how (exit code/signal/timeout/exception) and when.
    KIND says it for code: "died", "stopped" (hung while stopped), "hung", "failed" (it answered
    with an error), or "" (not a worker's own failure)."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


def hide_for_worker_errors(excinfo: Any) -> bool:
    """pytest's `__tracebackhide__`: a case that failed in its worker shows the test's line and the
    worker's account, not the harness frames that carried it (a harness bug still shows them)."""
    return excinfo.errisinstance(WorkerError)


__tracebackhide__ = hide_for_worker_errors


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# Signals with which native code dies when an allocation fails and it does not raise (a NULL it
# dereferences, std::bad_alloc that aborts): under --worker-memory-limit, most likely out of memory.
NATIVE_CRASHES = ("SIGSEGV", "SIGABRT", "SIGBUS")


class Worker:
    """A case's worker process. framework=None starts one that imports no framework (protocol only);
    faults=True lets the tests send it the fault-injection requests (crash, raise, sleep). PYTHON runs
    it with another interpreter (another venv: the parent never imports a framework, so one session
    can drive two framework versions); ENV adds to its environment. CFG is the case's BenchConfig,
    or its `as_dict()` (what crosses the pipe); a worker with no framework needs only what the
    parent reads of it (device, and for an out-of-memory account worker_memory_limit and the sizes)."""

    def __init__(self, framework: str | None, cfg: BenchConfig | Mapping[str, Any],
                 bundle_dir: str | os.PathLike | None,
                 log_path: str | os.PathLike, timeout: float, name: str | None = None, faults: bool = False,
                 python: str | None = None, env: dict[str, str] | None = None, defer_hello: bool = False) -> None:
        self.framework, self.timeout, self.name = framework, timeout, name or framework or "protocol"
        self.cfg: dict[str, Any] = cfg.as_dict() if isinstance(cfg, BenchConfig) else dict(cfg)
        self.log_path, self.phase, self.events = Path(log_path), "start", []
        self._kill_lock = threading.Lock()
        self.on_progress: Any = None  # called with (name, epoch_stop event) while a request runs
        parent, child = socket.socketpair()
        extra_env, env = env, dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.pop(FAULTS_ENV, None)
        if faults:
            env[FAULTS_ENV] = "1"
        if self.cfg["device"] == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""  # every framework then runs on the CPU
        env.update(extra_env or {})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [python or sys.executable, "-m", "bench_fixtures.runner.worker", str(child.fileno()), str(os.getpid())],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=ROOT, start_new_session=True)
        _LIVE[self.proc.pid] = self.proc
        child.close()
        self.conn = Connection(parent.detach())
        self.hello_args = dict(framework=framework, cfg=self.cfg, bundle=str(bundle_dir))
        self.info: dict[str, Any] = {}
        if not defer_hello:  # a replica group says hello to all its workers at once (they rendezvous)
            self.info = self.request("hello", **self.hello_args)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _tail(self) -> str:
        try:
            text = self.log_path.read_bytes()[-TAIL_CHARS:].decode("utf-8", "replace").strip()
        except OSError:
            return ""
        return f"\n--- last output of the worker ({self.log_path}) ---\n{text}" if text else ""

    def request(self, cmd: str, timeout: float | None = None, **args: Any) -> Any:
        """Send CMD, wait for its answer; any failure kills the worker and raises WorkerError."""
        self.send(cmd, **args)
        return self.receive(timeout)

    def send(self, cmd: str, **args: Any) -> None:
        """The request half: a worker that is already gone shows up in `receive`."""
        self.phase = cmd
        try:
            self.conn.send({"cmd": cmd, **args})
        except OSError:
            pass

    def receive(self, timeout: float | None = None) -> Any:
        """The answer to the request sent last (see `request`)."""
        timeout = self.timeout if timeout is None else timeout
        cmd = self.phase
        try:
            deadline = time.monotonic() + timeout
            while True:
                ready = self.conn.poll(max(deadline - time.monotonic(), 0))
                answer = self.conn.recv() if ready else None
                if answer is None or "progress" not in answer:
                    break
                if self.on_progress is not None:
                    self.on_progress(self.name, answer["progress"])
        except (EOFError, OSError):
            ready, answer = True, None
        if answer is None:
            raise self._died(cmd) if ready else self._hung(cmd, timeout)  # ready: the connection closed
        self.events.extend(answer.get("events", []))
        if not answer["ok"]:
            self.kill()
            if answer.get("expected"):
                raise WorkerError(f"{self.name}: {answer['error']}", "failed")
            raise WorkerError(f"{self.name} worker failed during '{cmd}': {answer['error']}\n"
                              f"{answer.get('traceback', '')}{self._tail()}", "failed")
        return answer["result"]

    def _died(self, cmd: str) -> WorkerError:
        """The worker is gone during CMD: how (exit code, signal), killed and reaped; under a memory
        cap a native crash is most likely an allocation that failed, and says so in one line."""
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        how = _describe_exit(self.proc.poll())
        self.kill()
        limit = self.cfg.get("worker_memory_limit")
        if limit and how.removeprefix("killed by ") in NATIVE_CRASHES:
            from ..frameworks.protocol import out_of_memory_message
            detail = (f"most likely; the worker was {how} (native code that cannot allocate often "
                      f"crashes instead of raising; worker log {self.log_path})")
            error = WorkerError(f"{self.name}: " + out_of_memory_message(
                self.framework, cmd, detail, _last_epoch(self.events), device=self.cfg.get("device"),
                batch_size=self.cfg.get("batch_size"), image_size=self.cfg.get("image_size"), limit_mib=limit,
                memory="host"), "died")
            if self._tail():  # one line to read; the crash's own account below it in pytest's output
                error.add_note(self._tail().lstrip("\n"))
            return error
        hint = ("; SIGKILL from outside the suite is what the kernel's out-of-memory killer sends "
                "(see dmesg): --worker-memory-limit turns that into a clean error"
                if how == "killed by SIGKILL" else "")
        return WorkerError(f"{self.name} worker died ({how}) during '{cmd}'{hint}{self._tail()}", "died")

    def _hung(self, cmd: str, timeout: float) -> WorkerError:
        """No answer to CMD within TIMEOUT: its stacks into the log, then killed."""
        stopped = self._stopped()
        self._dump_stacks()
        self.kill()
        why = " (it was stopped: SIGSTOP, Ctrl-Z or a debugger)" if stopped else ""
        return WorkerError(f"{self.name} worker hung{why}: no answer to '{cmd}' within {timeout:g} s "
                           f"(--worker-timeout); killed it{self._tail()}", "stopped" if stopped else "hung")

    def _stopped(self) -> bool:
        """Whether the process is stopped rather than busy or waiting (a replica whose peers wait on it)."""
        from ..telemetry.monitor import STOPPED
        try:
            import psutil
            return psutil.Process(self.proc.pid).status() in STOPPED
        except Exception:  # gone, or no psutil: not known to be stopped
            return False

    def _dump_stacks(self, wait: float = 1.0) -> None:
        """Ask a hung worker for its Python stacks (faulthandler, SIGUSR1): the log tail then says
        where it hung. A stopped or wedged process just does not answer in time."""
        def size() -> int:
            return self.log_path.stat().st_size if self.log_path.exists() else 0
        before = size()
        try:
            os.kill(self.proc.pid, signal.SIGUSR1)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while time.monotonic() < end and size() == before:
            time.sleep(0.05)
        time.sleep(0.1)  # the rest of the dump

    def kill(self) -> None:
        with self._kill_lock:  # a replica group's thread and its main thread may both end a worker
            self._kill()

    def _kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        else:
            _LIVE.pop(self.proc.pid, None)
        self.conn.close()

    def close(self) -> None:
        """Ask politely, then make sure: no worker outlives its case."""
        if self.proc.poll() is None and not self.conn.closed:
            try:
                self.conn.send({"cmd": "shutdown"})
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- child side

def _limit_memory(mib: int) -> None:
    """RLIMIT_DATA (heap and private mappings) rather than RLIMIT_AS: both frameworks reserve
    far more address space than they touch. An allocation past it fails inside the framework."""
    import resource
    resource.setrlimit(resource.RLIMIT_DATA, (mib << 20, mib << 20))


def _last_epoch(events: list[dict]) -> int | None:
    return next((e["epoch"] for e in reversed(events) if e.get("epoch") is not None), None)


class _Session:
    """The worker's state between requests: its framework's backend, once `hello` has named it."""

    def __init__(self, conn: Connection) -> None:
        from ..telemetry.timeline import PROGRESS_EVENTS, Timeline

        def progress(event: dict) -> None:  # run start and epoch ends reach the parent as they happen
            if event["name"] in PROGRESS_EVENTS:
                conn.send({"progress": event})

        self.timeline = Timeline(sink=progress)
        self.backend: Backend | None = None
        self.cls: type[Backend] | None = None
        self.cfg: BenchConfig | None = None  # the case's, typed again from the dict that crossed the pipe
        self.bare: Any = None

    def hello(self, msg: dict) -> dict[str, Any]:
        if msg["framework"] is None:  # protocol only, no framework
            return {"framework": None, "pid": os.getpid()}
        from ..data import Bundle
        from ..registry import load_backend
        self.cfg = cfg = BenchConfig.from_dict(msg["cfg"])
        if cfg.worker_memory_limit:
            _limit_memory(cfg.worker_memory_limit)
        start = time.perf_counter()
        self.cls = load_backend(msg["framework"])  # imports the framework: a fresh process's import time
        import_s = time.perf_counter() - start
        self.backend = self.cls(cfg, Bundle.read(msg["bundle"]), self.timeline)
        return dict(self.backend.info(), import_s=import_s, pid=os.getpid())

    def bare_steps(self, msg: dict) -> dict[str, Any]:
        """The overhead check's reference loop, built once, in this same process."""
        from ..frameworks.bare import make_step, timed_rounds
        if self.bare is None:
            cfg = self.cfg
            step, sync = make_step(msg["framework"], msg["model"], cfg.batch_size, cfg.device, cfg.image_size,
                                   compiled=self.backend.compiled, precision=cfg.precision,
                                   channels_last=cfg.channels_last, train_layers=cfg.train_layers)
            timed_rounds(step, sync, max(msg.get("warmup", 1), 1), 1)
            self.bare = (step, sync)
        return {"seconds": timed_rounds(*self.bare, msg["count"], 1)[0]}


# What the parent may ask; each takes the session and the request's arguments.
COMMANDS: dict[str, Callable[[_Session, dict], Any]] = {
    "hello": _Session.hello,
    "build": lambda s, m: s.backend.build(m["model"]),
    "evaluate": lambda s, m: s.backend.evaluate(),
    "fit": lambda s, m: s.backend.fit(m["epochs"]),
    "train_steps": lambda s, m: s.backend.train_steps(m["count"]),
    "bare_steps": _Session.bare_steps,
    "input_pipeline": lambda s, m: s.backend.input_pipeline(m["count"]),
    "peek_labels": lambda s, m: s.backend.peek_labels(m["batches"]),
    "count_flops": lambda s, m: s.backend.count_flops(),
    "logits": lambda s, m: s.backend.logits(m["count"]),
    "weights_digest": lambda s, m: s.backend.weights_digest(),
}


def _sleep(s: _Session, m: dict) -> None:
    time.sleep(m["seconds"])


def _raise(s: _Session, m: dict) -> None:
    raise RuntimeError(m.get("message", "injected fault"))


def _crash(s: _Session, m: dict) -> None:
    os.kill(os.getpid(), getattr(signal, m.get("signal", "SIGKILL")))


# Fault injection for the tests: die, raise or hang the way a real worker would. Reachable only in a
# worker started with faults=True (FAULTS_ENV set), never in a benchmark run.
FAULTS: dict[str, Callable[[_Session, dict], Any]] = {
    "crash": _crash, "raise": _raise, "sleep": _sleep,
    "sleep_hooks": lambda s, m: s.backend.add_sleep_hooks(m["epoch_end_s"], m["eval_begin_s"])}
FAULTS_ENV = "BENCH_WORKER_FAULTS"


def serve(conn: Connection) -> None:
    from ..frameworks.protocol import BackendError, out_of_memory_error
    session = _Session(conn)
    commands = {**COMMANDS, **(FAULTS if os.environ.get(FAULTS_ENV) == "1" else {})}
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        cmd = msg.pop("cmd")
        if cmd == "shutdown":
            return
        try:
            if cmd not in commands:
                raise ValueError(f"unknown request {cmd!r}")
            if session.backend is None and cmd != "hello" and cmd not in FAULTS:
                raise RuntimeError(f"'{cmd}' before 'hello' with a framework")
            result = commands[cmd](session, msg)
            conn.send({"ok": True, "result": result, "events": session.timeline.drain()})
        except BackendError as e:  # complete message: no traceback wall
            conn.send({"ok": False, "error": str(e), "expected": True, "events": session.timeline.drain()})
        except Exception as e:
            cls = session.cls
            if isinstance(e, MemoryError) or (cls is not None and cls.is_out_of_memory(e)):
                error = out_of_memory_error(cls.framework if cls else "worker", cmd, session.cfg, e,
                                            _last_epoch(session.timeline.events))
                conn.send({"ok": False, "error": str(error), "expected": True, "events": session.timeline.drain()})
                continue
            conn.send({"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                       "events": session.timeline.drain()})


def _die_with_parent(parent: int) -> None:
    """However the parent dies (SIGKILL included, which runs no cleanup of its own), the kernel kills
    this worker too: Linux's PR_SET_PDEATHSIG. Elsewhere a thread watches for re-parenting. (The
    signal comes when the *thread* that started the worker ends: the harness starts a case's workers
    from its main thread, and a thread that starts one, as `describe_models` does, ends it first.)"""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        armed = False
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    if not armed:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)
        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> NoReturn:
    _die_with_parent(int(argv[2]))
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hung worker's stacks, into its log
    conn = Connection(int(argv[1]))
    try:
        serve(conn)
    finally:
        conn.close()
    # Done (asked to shut down, or the parent is gone): nothing is left to save, and the interpreter's
    # own exit, which tears down the framework's runtime (0.8 s for torch and JAX, 1.7 s for TensorFlow
    # here), would only hold up the next case, whose worker the parent starts once this one is gone.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
