"""One process per case, importing one framework; driven by the pytest process over a socket.

Parent side: `Worker` starts `python -m bench_fixtures.worker FD`, sends requests, waits for each
answer at most `timeout` seconds, and turns a crash, a hang or an exception into a `WorkerError`
naming the exit code or signal, the phase and the tail of the worker's output. Child side:
`serve` answers requests with the backend's results plus the timeline events recorded meanwhile.
The worker synchronises the device before it answers, so the parent can time around a request.
"""
from __future__ import annotations

import faulthandler
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
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
    """A case's worker failed; the message says how (exit code/signal/timeout/exception) and when."""


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


class Worker:
    """A case's worker process. framework=None starts one that imports no framework (protocol only)."""

    def __init__(self, framework: str | None, cfg: dict[str, Any], bundle_dir: str | os.PathLike | None,
                 log_path: str | os.PathLike, timeout: float, name: str | None = None) -> None:
        self.framework, self.timeout, self.name = framework, timeout, name or framework or "protocol"
        self.log_path, self.phase, self.events = Path(log_path), "start", []
        self.on_progress: Any = None  # called with (name, epoch_stop event) while a request runs
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if cfg["device"] == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""  # both frameworks then run on the CPU
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench_fixtures.worker", str(child.fileno())],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=ROOT, start_new_session=True)
        _LIVE[self.proc.pid] = self.proc
        child.close()
        self.conn = Connection(parent.detach())
        self.info = self.request("hello", framework=framework, cfg=cfg, bundle=str(bundle_dir))

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
        timeout = self.timeout if timeout is None else timeout
        self.phase = cmd
        try:
            self.conn.send({"cmd": cmd, **args})
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
            if ready:  # the connection closed: the worker died
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                how = _describe_exit(self.proc.poll())
                self.kill()
                hint = ("; SIGKILL from outside the suite is what the kernel's out-of-memory killer sends "
                        "(see dmesg): --worker-memory-limit turns that into a clean error"
                        if how == "killed by SIGKILL" else "")
                raise WorkerError(f"{self.name} worker died ({how}) during '{cmd}'{hint}{self._tail()}")
            self._dump_stacks()
            self.kill()
            raise WorkerError(f"{self.name} worker hung: no answer to '{cmd}' within {timeout:g} s "
                              f"(--worker-timeout); killed it{self._tail()}")
        self.events.extend(answer.get("events", []))
        if not answer["ok"]:
            self.kill()
            if answer.get("expected"):
                raise WorkerError(f"{self.name}: {answer['error']}")
            raise WorkerError(f"{self.name} worker failed during '{cmd}': {answer['error']}\n"
                              f"{answer.get('traceback', '')}{self._tail()}")
        return answer["result"]

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


def serve(conn: Connection) -> None:
    from .backend import BackendError, load_backend, out_of_memory_error
    from .data import Bundle
    from .timeline import Timeline

    def progress(event: dict) -> None:  # epoch ends reach the parent as they happen
        if event["name"] in ("run_start", "epoch_stop"):
            conn.send({"progress": event})

    timeline, backend, bare, cls, cfg = Timeline(sink=progress), None, None, None, {}
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        cmd = msg.pop("cmd")
        if cmd == "shutdown":
            return
        try:
            if cmd == "hello" and msg["framework"] is None:  # protocol only, no framework
                result = {"framework": None, "pid": os.getpid()}
            elif cmd == "hello":
                cfg = msg["cfg"]
                if cfg.get("worker_memory_limit"):
                    _limit_memory(cfg["worker_memory_limit"])
                start = time.perf_counter()
                cls = load_backend(msg["framework"])  # imports the framework: a fresh process's import time
                import_s = time.perf_counter() - start
                backend = cls(msg["cfg"], Bundle.read(msg["bundle"]), timeline)
                result = dict(backend.info(), import_s=import_s, pid=os.getpid())
            elif backend is None and cmd not in ("crash", "sleep", "raise"):
                raise RuntimeError(f"'{cmd}' before 'hello' with a framework")
            elif cmd == "build":
                result = backend.build(msg["model"])
            elif cmd == "evaluate":
                result = backend.evaluate()
            elif cmd == "fit":
                result = backend.fit(msg["epochs"])
            elif cmd == "train_steps":
                result = backend.train_steps(msg["count"])
            elif cmd == "bare_steps":  # the overhead check's reference loop, in this same process
                if bare is None:
                    from .bare import make_step, timed_rounds
                    cfg = backend.cfg
                    step, sync = make_step(msg["framework"], msg["model"], cfg["batch_size"], cfg["device"],
                                           cfg["image_size"])
                    timed_rounds(step, sync, max(msg.get("warmup", 1), 1), 1)
                    bare = (step, sync, timed_rounds)
                result = {"seconds": bare[2](bare[0], bare[1], msg["count"], 1)[0]}
            elif cmd == "input_pipeline":
                result = backend.input_pipeline(msg["count"])
            elif cmd == "peek_labels":
                result = backend.peek_labels(msg["batches"])
            elif cmd == "crash":  # fault injection for the tests: die the way a real worker would
                os.kill(os.getpid(), getattr(signal, msg.get("signal", "SIGKILL")))
                result = None
            elif cmd == "raise":  # fault injection: an exception inside the worker
                raise RuntimeError(msg.get("message", "injected fault"))
            elif cmd == "sleep":  # fault injection: hang
                time.sleep(msg["seconds"])
                result = None
            else:
                raise ValueError(f"unknown request {cmd!r}")
            conn.send({"ok": True, "result": result, "events": timeline.drain()})
        except BackendError as e:  # complete message: no traceback wall
            conn.send({"ok": False, "error": str(e), "expected": True, "events": timeline.drain()})
        except Exception as e:
            if isinstance(e, MemoryError) or (cls is not None and cls.is_out_of_memory(e)):
                error = out_of_memory_error(cls.framework if cls else "worker", cmd, cfg, e,
                                            _last_epoch(timeline.events))
                conn.send({"ok": False, "error": str(error), "expected": True, "events": timeline.drain()})
                continue
            conn.send({"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                       "events": timeline.drain()})


def main(argv: list[str]) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hung worker's stacks, into its log
    conn = Connection(int(argv[1]))
    try:
        serve(conn)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
