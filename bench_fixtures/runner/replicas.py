"""A case's N data-parallel replicas: one worker process each, launched the way `torchrun` does.

Every replica gets its rank, the world size and a rendezvous address in its environment (torch:
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; TensorFlow: TF_CONFIG with one cluster
entry per replica) and, on a GPU host, its own GPU as its only visible device. Every request goes
to every replica; the answer is replica 0's, with all of them kept (`answers`). If any replica
dies, hangs or fails, the others are ended at once and the case fails naming that replica's rank
with its log tail. A rendezvous port that turns out to be taken is retried on fresh ports.

Across hosts: set MASTER_ADDR / MASTER_PORT, NNODES and NODE_RANK (torch), or TF_CONFIG listing
every replica of every host with this host's first replica as `task.index` (TensorFlow), and run
the same command on each host (README). Nothing is chosen for you then, and nothing is retried.
"""
from __future__ import annotations

import json
import os
import queue
import socket
import threading
from pathlib import Path
from typing import Any

from ..registry import FRAMEWORKS
from .worker import Worker, WorkerError

PORT_ATTEMPTS = 3
# What a rendezvous that lost its port race says (torch's TCPStore; TensorFlow's gRPC server).
PORT_IN_USE = ("address already in use", "eaddrinuse", "failed to bind", "could not start grpc server")
SETTLE_S = 3.0  # after a first failure, how long to wait for the other replicas' own accounts
TF_CONFIG_SHAPE = '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": N}}'


class RendezvousError(WorkerError):
    """The environment's rendezvous (TF_CONFIG; MASTER_ADDR, MASTER_PORT, NNODES, NODE_RANK) cannot
    describe this host's replicas; the message names the variable and the fix (found at startup)."""


def tf_config(environ: dict[str, str]) -> tuple[int, list[str]]:
    """TF_CONFIG's (task index, cluster workers), or RendezvousError saying what is wrong with it."""
    text = environ["TF_CONFIG"]
    try:
        given = json.loads(text)
        workers, index = given["cluster"]["worker"], given["task"]["index"]
        if not (isinstance(workers, list) and workers and all(isinstance(w, str) and w for w in workers)):
            raise ValueError("cluster.worker must list the workers' host:port")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(workers):
            raise ValueError(f"task.index must be a worker's number, 0..{len(workers) - 1}")
    except (ValueError, KeyError, TypeError) as e:
        why = f"no {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
        raise RendezvousError(f"TF_CONFIG={text[:120]!r}: not a cluster this host's replicas can join ({why}); "
                              f"give {TF_CONFIG_SHAPE}, or unset it to run every replica here") from None
    return index, workers


def _env_int(environ: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    """Integer variable NAME of the rendezvous, in [LOW, HIGH], or RendezvousError naming it."""
    text = environ.get(name) or str(default)
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise RendezvousError(f"{name}={text!r}: must be an integer in [{low}, {high}]; set it as torchrun would, "
                              f"or unset MASTER_ADDR to run every replica here")
    return value


def torchrun_world(environ: dict[str, str]) -> tuple[int, int]:
    """(NNODES, NODE_RANK) of a rendezvous MASTER_ADDR names, checked."""
    nodes = _env_int(environ, "NNODES", 1, 1, 1 << 20)
    return nodes, _env_int(environ, "NODE_RANK", 0, 0, nodes - 1)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """COUNT ports the kernel had free a moment ago (held together, so they differ). Another process
    can still take one before a replica binds it: the group then retries (PORT_IN_USE)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def rendezvous_env(framework: str, replicas: int, gpu: bool, environ: dict[str, str] | None = None,
                   ports: list[int] | None = None) -> tuple[list[dict[str, str]], str]:
    """The environment of each local replica, and where the rendezvous is (for messages). From
    ENVIRON (default os.environ) when it names one (another host's rank 0), else on this host."""
    environ = dict(os.environ if environ is None else environ)
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    envs: list[dict[str, str]] = []
    for local in range(replicas):
        env = {"LOCAL_RANK": str(local), "LOCAL_WORLD_SIZE": str(replicas)}
        if gpu:  # one GPU per replica, the way launchers do it; it is cuda:0 / GPU:0 inside
            if visible and local >= len(visible):
                raise WorkerError(f"--replicas {replicas}: CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']} "
                                  f"shows {len(visible)} GPU(s); each replica needs its own")
            env["CUDA_VISIBLE_DEVICES"] = visible[local] if visible else str(local)
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA numbers the GPUs as NVML (the monitor) does
        envs.append(env)
    if FRAMEWORKS[framework].rendezvous == "tf_config":
        if environ.get("TF_CONFIG"):
            given = json.loads(environ["TF_CONFIG"])
            first, workers = tf_config(environ)
            if first + replicas > len(workers):
                raise RendezvousError(f"TF_CONFIG lists {len(workers)} workers; this host's replicas are "
                                      f"task.index {first}..{first + replicas - 1}: list one entry per replica")
            for local, env in enumerate(envs):
                env["TF_CONFIG"] = json.dumps(dict(given, task=dict(type="worker", index=first + local)))
            return envs, f"TF_CONFIG (workers {', '.join(workers)})"
        ports = ports or free_ports(replicas)
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        for local, env in enumerate(envs):
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": local}})
        return envs, f"127.0.0.1 ports {', '.join(map(str, ports))}"
    addr = environ.get("MASTER_ADDR")
    if not addr:
        nodes, node = 1, 0
        port = (ports or free_ports(1))[0]
        addr = "127.0.0.1"
    elif not environ.get("MASTER_PORT"):
        raise RendezvousError("MASTER_ADDR is set but MASTER_PORT is not: give the rendezvous port too")
    else:
        nodes, node = torchrun_world(environ)
        port = _env_int(environ, "MASTER_PORT", 0, 1, 65535)
    for local, env in enumerate(envs):
        env.update(MASTER_ADDR=addr, MASTER_PORT=str(port), WORLD_SIZE=str(nodes * replicas),
                   RANK=str(node * replicas + local), GROUP_RANK=str(node))
    return envs, f"{addr}:{port}"


def world_size(replicas: int, environ: dict[str, str] | None = None) -> int:
    """All replicas of a case over every host: this host's REPLICAS, or the environment's rendezvous
    (TF_CONFIG's workers; NNODES x REPLICAS with MASTER_ADDR). The global batch is per-replica x this.
    A rendezvous that cannot be read is a RendezvousError naming the variable (at startup)."""
    environ = os.environ if environ is None else environ
    if replicas <= 1:  # one process: whatever the environment says (as the backends read it)
        return 1
    worlds = set()
    if environ.get("TF_CONFIG"):
        worlds.add(len(tf_config(dict(environ))[1]))
    if environ.get("MASTER_ADDR"):
        worlds.add(torchrun_world(dict(environ))[0] * replicas)
        if environ.get("MASTER_PORT"):
            _env_int(dict(environ), "MASTER_PORT", 0, 1, 65535)
    if len(worlds) > 1:
        raise RendezvousError(f"TF_CONFIG and MASTER_ADDR/NNODES describe different worlds ({sorted(worlds)} "
                              f"replicas); run one framework per multi-host session (-m torch or -m tensorflow)")
    return worlds.pop() if worlds else replicas


def _chosen_here(framework: str, environ: dict[str, str]) -> bool:
    return not (environ.get("TF_CONFIG") if FRAMEWORKS[framework].rendezvous == "tf_config"
                else environ.get("MASTER_ADDR"))


class ReplicaGroup:
    """The workers of one case's replicas, used where a `Worker` is (same request/close interface)."""

    def __init__(self, framework: str, cfg: dict[str, Any], bundle_dir: str | os.PathLike,
                 log_path: str | os.PathLike, timeout: float, name: str | None = None,
                 python: str | None = None, env: dict[str, str] | None = None, faults: bool = False) -> None:
        self.framework, self.cfg, self.timeout = framework, cfg, timeout
        self.name = name or framework
        self.replicas = int(cfg["replicas"])
        self.log_path = Path(log_path)
        self.workers: list[Worker] = []
        self.answers: list[Any] = []
        self.on_progress: Any = None
        environ = {**os.environ, **(env or {})}
        for attempt in range(1, PORT_ATTEMPTS + 1):
            envs, self.rendezvous = rendezvous_env(framework, self.replicas, cfg["device"] == "gpu", environ)
            # NVML's numbers of the replicas' GPUs (none when given as UUIDs: the monitor then samples 0..N-1)
            self.gpus = [int(e["CUDA_VISIBLE_DEVICES"]) for e in envs if e.get("CUDA_VISIBLE_DEVICES", "").isdigit()]
            self.workers = [Worker(framework, cfg, bundle_dir, self._log(r), timeout, name=f"{self.name} replica {r}",
                                   faults=faults, python=python, env={**(env or {}), **envs[r]}, defer_hello=True)
                            for r in range(self.replicas)]
            try:
                infos = self._all("hello", workers_args=[w.hello_args for w in self.workers])
                break
            except WorkerError as e:
                accounts = [str(x).lower() for x in getattr(e, "failures", {}).values()] or [str(e).lower()]
                if attempt == PORT_ATTEMPTS or not _chosen_here(framework, environ) or \
                        not any(s in a for a in accounts for s in PORT_IN_USE):
                    raise
        self.info = dict(infos[0], replica_infos=infos, replica_pids=self.pids, rendezvous=self.rendezvous,
                         port_attempts=attempt)

    def _log(self, rank: int) -> Path:
        return self.log_path.with_name(f"{self.log_path.stem}-replica{rank}{self.log_path.suffix}")

    # -- what Experiment uses of a Worker ---------------------------------------------------
    @property
    def pid(self) -> int:
        return self.workers[0].pid

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    @property
    def proc(self) -> Any:
        return self.workers[0].proc

    @property
    def events(self) -> list[dict]:
        return self.workers[0].events

    def clear_events(self) -> None:
        for w in self.workers:
            w.events.clear()

    def request(self, cmd: str, timeout: float | None = None, **args: Any) -> Any:
        """CMD to every replica; replica 0's answer (all of them in `answers`)."""
        self.answers = self._all(cmd, timeout, args=args)
        return self.answers[0]

    def _all(self, cmd: str, timeout: float | None = None, args: dict | None = None,
             workers_args: list[dict] | None = None) -> list[Any]:
        """Send to all, then wait for all on threads. At the first failure each replica's state is
        read before anything is ended (dead, stopped or running); the others get SETTLE_S to give
        their own account; then every replica is ended and the failure is raised with its rank."""
        for r, w in enumerate(self.workers):
            w.on_progress = self.on_progress if r == 0 else None
            w.send(cmd, **(workers_args[r] if workers_args else args or {}))
        done: queue.Queue = queue.Queue()

        def wait(r: int, w: Worker) -> None:
            try:
                done.put((r, True, w.receive(timeout)))
            except BaseException as e:  # noqa: BLE001 - carried to the main thread
                done.put((r, False, e))

        threads = [threading.Thread(target=wait, args=(r, w), daemon=True, name=f"replica-{r}")
                   for r, w in enumerate(self.workers)]
        for t in threads:
            t.start()
        results: dict[int, Any] = {}
        failures: dict[int, BaseException] = {}  # in the order they arrived
        states: list[str] = []
        while len(results) + len(failures) < len(self.workers):
            try:
                r, ok, value = done.get(timeout=SETTLE_S if failures else None)
            except queue.Empty:  # the others still wait on the failed one's collectives
                break
            if ok:
                results[r] = value
                continue
            if not failures:
                states = [self._state(w) for w in self.workers]
            failures[r] = value
        if failures:  # the replicas still waiting are ended here: their own "killed" is not the cause
            for w in self.workers:
                w.kill()
            for t in threads:
                t.join(timeout=30)
            raise self._blame(cmd, failures, states)
        return [results[r] for r in range(len(self.workers))]

    @staticmethod
    def _state(w: Worker) -> str:
        if w.proc.poll() is not None:
            return "dead"
        return "stopped" if w._stopped() else "running"

    def _blame(self, cmd: str, failures: dict[int, BaseException], states: list[str]) -> WorkerError:
        """The replica that caused it: one already dead when the first failure came, then one stopped,
        then the first to die, the first to hang, the first to fail (a replica that dies or stops
        makes its peers' collectives fail or hang after it)."""
        kind = {r: getattr(e, "kind", "") for r, e in failures.items()}
        order = list(failures)
        # (a replica that hung or failed is killed by the harness before its failure arrives: not "dead")
        dead = [r for r in range(self.replicas) if states and states[r] == "dead" and kind.get(r, "died") == "died"]
        candidates = (dead,
                      [r for r in range(self.replicas) if states and states[r] == "stopped"] +
                      [r for r in order if kind[r] == "stopped"],
                      [r for r in order if kind[r] == "died"], [r for r in order if kind[r] == "hung"], order)
        r = next(c[0] for c in candidates if c)
        account = failures.get(r) or f"it had exited ({self.workers[r].proc.returncode}){self.workers[r]._tail()}"
        others = sorted(set(range(self.replicas)) - {r})
        error = WorkerError(f"{self.name}: replica {r} of {self.replicas} failed during '{cmd}' (rendezvous "
                            f"{self.rendezvous}); replica(s) {', '.join(map(str, others))} ended with it: {account}",
                            kind.get(r, "died"))
        error.failures = failures  # every replica's own account (a taken port may be in any of them)
        return error

    def kill(self) -> None:
        for w in self.workers:
            w.kill()

    def close(self) -> None:
        for w in self.workers:  # shutdown to all first: a replica may wait on its peers to leave
            if w.proc.poll() is None and not w.conn.closed:
                try:
                    w.conn.send({"cmd": "shutdown"})
                except OSError:
                    pass
        for w in self.workers:
            w.close()

    def __enter__(self) -> "ReplicaGroup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
