"""The one small protocol both framework backends implement, and how a worker picks one.

Nothing here imports a framework: the parent process never loads torch or TensorFlow.
"""
from __future__ import annotations

import importlib
from typing import Any, Protocol

from .data import Bundle
from .timeline import Timeline

BACKEND_MODULES = {"torch": "bench_fixtures.torch_backend", "tensorflow": "bench_fixtures.tf_backend"}
BACKEND_CLASSES = {"torch": "TorchBackend", "tensorflow": "TensorFlowBackend"}


class BackendError(RuntimeError):
    """An expected failure with a complete one-line message (no traceback needed)."""


def nonfinite_error(framework: str, epoch: int | None, step: int) -> BackendError:
    where = f"epoch {epoch}, step {step}" if epoch is not None else f"step {step} of a train_steps round"
    return BackendError(f"{framework}: the loss became NaN/inf at {where} (0-based); the run diverged: "
                        f"lower --lr or check the data")


class WeightsError(BackendError):
    """Pretrained weights unavailable (offline, no cached file); the message names the cache and the fix."""


class Backend(Protocol):
    framework: str

    def __init__(self, cfg: dict[str, Any], bundle: Bundle, timeline: Timeline) -> None: ...

    def info(self) -> dict[str, Any]:
        """Versions, device, precision and threading as the framework reports them."""

    def build(self, model: str) -> dict[str, Any]:
        """A fresh model and optimizer; returns `describe`: parameter counts, BN, optimizer, loss."""

    def evaluate(self) -> dict[str, Any]:
        """Accuracy and loss on the test split (inference mode)."""

    def fit(self, epochs: int) -> dict[str, Any]:
        """Fine-tune over the shared order, recording timeline events; synchronised at the end."""

    def train_steps(self, count: int) -> dict[str, Any]:
        """COUNT training steps, synchronised; for steady-state throughput."""

    def input_pipeline(self, count: int) -> dict[str, Any]:
        """COUNT batches through the input path alone, to show it outruns the model."""

    def peek_labels(self, batches: int) -> list[list[int]]:
        """Labels of the first training batches as `fit` would feed them (to prove the shared order)."""


def load_backend(framework: str) -> type:
    module = importlib.import_module(BACKEND_MODULES[framework])
    return getattr(module, BACKEND_CLASSES[framework])
