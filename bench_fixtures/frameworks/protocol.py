"""The one small protocol every framework backend implements (`Backend`, what the worker calls; its
module's `BackendModule`), and the errors it raises.

Nothing here imports a framework: the parent process never loads torch or TensorFlow.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..config import BenchConfig
from ..data import Bundle
from ..telemetry.timeline import Timeline


class BackendError(RuntimeError):
    """An expected failure with a complete one-line message (no traceback needed)."""


def nonfinite_error(framework: str, epoch: int | None, step: int) -> BackendError:
    where = f"epoch {epoch}, step {step}" if epoch is not None else f"step {step} of a train_steps round"
    return BackendError(f"{framework}: the loss became NaN/inf at {where} (0-based); the run diverged: "
                        f"lower --lr or check the data")


def out_of_memory_message(framework: str | None, cmd: str, detail: str, epoch: int | None, *, device: str | None,
                          batch_size: int | None, image_size: int | None, limit_mib: int = 0,
                          memory: str | None = None) -> str:
    """One line for an allocation failure: where, at what size, what was seen (DETAIL), the fix.
    MEMORY is "GPU" or "host"; by default the device's. The sizes come as values, not a config: the
    parent says this too, from the settings it sent a worker that died."""
    memory = memory or ("GPU" if device == "gpu" else "host")
    cap = f" (--worker-memory-limit {limit_mib} MiB)" if limit_mib and memory == "host" else ""
    where = f"'{cmd}'" + (f", epoch {epoch}" if epoch is not None else "")
    return (f"{framework}: out of {memory} memory{cap} during {where} at --batch-size {batch_size} "
            f"--image-size {image_size}: {detail}; lower --batch-size or --image-size"
            f"{', or raise --worker-memory-limit' if cap else ''}")


def out_of_memory_error(framework: str, cmd: str, cfg: BenchConfig | None, exc: BaseException,
                        epoch: int | None) -> BackendError:
    """The framework raised an allocation failure: its own line that says so, in the one format
    (CFG None: a worker that has no config yet, as a protocol-only one)."""
    noise = r"\x1b\[[0-9;]*m|\{\{[^}]*\}\}|\[enforce fail at [^\]]*\]\s*err == 0\.\s*"
    lines = [re.sub(noise, "", ln).strip() for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln] or [type(exc).__name__]
    detail = next((ln for ln in lines if re.search(r"OOM|allocat|out of memory", ln, re.I)), lines[0])[:200]
    if cfg is None:
        return BackendError(out_of_memory_message(framework, cmd, detail, epoch, device=None, batch_size=None,
                                                  image_size=None))
    return BackendError(out_of_memory_message(framework, cmd, detail, epoch, device=cfg.device,
                                              batch_size=cfg.batch_size, image_size=cfg.image_size,
                                              limit_mib=cfg.worker_memory_limit))


@dataclass(frozen=True)
class Replica:
    """This worker's place among a case's data-parallel replicas (rank 0 of 1 without --replicas)."""
    rank: int = 0
    world: int = 1
    local: int = 1  # replicas on this host, which share its CPU cores

    @property
    def threads(self) -> int:
        """CPU threads for this replica's kernels: the host's cores split evenly among its replicas."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.local)

    def describe(self, engine: str, collective: str, setup_s: float, threads: int) -> dict[str, Any]:
        """The `distributed` record every backend reports the same way (info and settings)."""
        return dict(engine=engine, collective=collective, rank=self.rank, world_size=self.world,
                    replicas_on_host=self.local, threads_per_replica=threads, setup_s=setup_s,
                    shard="slice RANK of every global batch of the shared order (replica_shard)",
                    lr_rule="not scaled with the replicas (the global batch grows N-fold)",
                    batchnorm="batch statistics and running statistics per replica (not synchronised); "
                              "each replica evaluates its own")


COLLECTIVE_TIMEOUT_MARGIN_S = 60  # collectives outwait a request (--worker-timeout) by this much


def collective_timeout_s(cfg: BenchConfig) -> float:
    """How long a replica's collectives wait: longer than a request may take, so that a peer that
    stops is reported as the harness sees it (stopped, hung), not as this replica's collective
    timing out first."""
    return cfg.worker_timeout + COLLECTIVE_TIMEOUT_MARGIN_S


def replica_from_env(cfg: BenchConfig, rendezvous: str) -> Replica:
    """Rank and world size as the launcher (runner/replicas.py, or torchrun-style variables on another
    host) put them in the environment for the framework's RENDEZVOUS kind (its registry record):
    TF_CONFIG for "tf_config", RANK / WORLD_SIZE for "torchrun" (each reads only its own: a session
    may carry both)."""
    if cfg.replicas <= 1:
        return Replica()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.replicas))
    if rendezvous == "tf_config":
        tf_config = json.loads(os.environ["TF_CONFIG"])
        return Replica(int(tf_config["task"]["index"]), len(tf_config["cluster"]["worker"]), local)
    return Replica(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), local)


class WeightsError(BackendError):
    """Pretrained weights unavailable (offline, no cached file); the message names the cache and the fix."""


class Backend(Protocol):
    """What the worker (runner/worker.py) calls on a backend: each request is one of these methods."""
    framework: str  # the registry's name (registry.FRAMEWORKS)

    def __init__(self, cfg: BenchConfig, bundle: Bundle, timeline: Timeline) -> None: ...

    def info(self) -> dict[str, Any]:
        """Versions, device, precision and threading as the framework reports them."""

    def build(self, model: str) -> dict[str, Any]:
        """A fresh model and optimizer; returns `describe`: parameter counts, BN, optimizer, loss."""

    def evaluate(self) -> dict[str, Any]:
        """Accuracy and loss on the test split (inference mode)."""

    def fit(self, epochs: int) -> dict[str, Any]:
        """Fine-tune over the shared order, recording timeline events; synchronised at the end."""

    def logits(self, count: int) -> list[list[float]]:
        """The model's logits for the first COUNT test images (inference mode): `--weights same` is
        checked by comparing them across frameworks."""

    def train_steps(self, count: int) -> dict[str, Any]:
        """COUNT training steps, synchronised; for steady-state throughput."""

    def weights_digest(self) -> str:
        """sha256 of the trainable parameters now: replicas after a step must agree."""

    def input_pipeline(self, count: int) -> dict[str, Any]:
        """COUNT batches through the input path alone, to show it outruns the model."""

    def peek_labels(self, batches: int) -> list[list[int]]:
        """Labels of the first training batches as `fit` would feed them (to prove the shared order)."""

    def count_flops(self) -> dict[str, Any]:
        """FLOPs per image of a training step and of a forward pass of the model as built, counted by
        the framework's own means (never run; after the timed work): counter, forward_per_image,
        train_per_image, train_all_ops_per_image, by_op, uncounted_ops."""

    @property
    def compiled(self) -> bool:
        """Whether the steps run compiled (XLA, torch.compile): the bare reference loop follows it."""

    def add_sleep_hooks(self, epoch_end_s: float, eval_begin_s: float) -> None:
        """The tests' stand-in for a user's per-epoch work (reachable through fault injection only)."""

    @staticmethod
    def is_out_of_memory(exc: BaseException) -> bool:
        """Whether EXC is this framework's allocation failure (host or device)."""


class BackendModule(Protocol):
    """What a backend's module offers beside its class (registry.backend_module names it): the
    process-wide settings of a setup and the overhead check's bare step (frameworks/bare.py)."""

    def configure(self, cfg: BenchConfig) -> None:
        """Set the setup's process-wide settings (TF32, autotuning, allocator, dtype policy)."""

    def bare_step(self, model: str, batch: int, device: str, size: int, compiled: bool = False,
                  precision: str | None = None, channels_last: bool = False,
                  train_layers: str = "all") -> tuple[Callable[[], None], Callable[[], None]]:
        """One hand-written training step on a device-resident batch, and the device sync."""
