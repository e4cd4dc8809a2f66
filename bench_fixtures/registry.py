"""The framework registry: one record per framework; everything else reads it.

Three frameworks: torch, Keras 3 on TensorFlow (`tensorflow`) and Keras 3 on JAX (`jax`); the two
Keras backends share their Keras half (`frameworks/keras_common.py`), so a difference between them
is the runtime's.

A framework is one backend module in `frameworks/` plus one `Framework` record below. This module
sits in the bottom layer and imports nothing of the package and no framework: the parent process
(pytest, the gate, the report) and the modules the backends import (models, weights) read it
without ever loading torch or TensorFlow; only a worker imports its own backend (`load_backend`).
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Framework:
    name: str                  # the test-id prefix and pytest marker: torch-resnet50, -m torch
    backend: str               # "module:Class" of the backend, in bench_fixtures/frameworks/
    packages: tuple[str, ...]  # the distributions that make it, first the one whose version is its own
    imports: tuple[str, ...]   # top-level modules its backend needs (availability check, no import)
    zoo: str                   # where its backbones and ImageNet weights come from: torchvision or keras
    install: str               # the pip command that installs it as requirements.txt pins it
    gpu_extra: str | None      # the extra whose dependencies are its GPU libraries, when they are opt-in
    color: str                 # report colours: strong (after), light (before)
    light: str
    shared: tuple[str, ...] = ()  # modules of frameworks/ its backend shares with another (Keras' half)
    title: str = ""            # its name in the report's sentences
    first_step: str = ""       # what its first training step pays for, once per process
    data_parallel: str | None = None  # its engine for --replicas N > 1; None: not supported yet (why)
    data_parallel_missing: str = ""
    rendezvous: str = "torchrun"  # how its replicas find each other: "torchrun" (RANK, MASTER_ADDR) or "tf_config"

    def replicas_problem(self, replicas: int) -> str | None:
        """Why this framework's cases cannot run with REPLICAS (one line), or None when they can."""
        if replicas > 1 and self.data_parallel is None:
            return f"{self.name} cases skipped: --replicas {replicas} is not supported yet ({self.data_parallel_missing})"
        return None

    @property
    def backend_file(self) -> str:
        return self.backend.split(":")[0] + ".py"

    def missing(self) -> str | None:
        """Why this framework cannot run here (one line with the fix), or None when it can."""
        for module in self.imports:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):  # a broken or hidden package: as good as absent
                found = False
            if not found:
                return f"{self.name} cases skipped: the Python package '{module}' is not installed; {self.install}"
        return None


FRAMEWORKS: dict[str, Framework] = {f.name: f for f in (
    Framework("torch", "torch_backend:TorchBackend", ("torch", "torchvision"), ("torch", "torchvision"),
              "torchvision", "pip install torch torchvision (the versions pinned in requirements.txt)", None,
              "#ee4c2c", "#f7a99b", title="PyTorch", first_step="eager: nothing to trace",
              data_parallel="torch.distributed DistributedDataParallel"),
    Framework("tensorflow", "tf_backend:TensorFlowBackend", ("tensorflow", "keras"),
              ("tensorflow", "keras"), "keras", "pip install tensorflow keras (the versions pinned in requirements.txt)",
              "and-cuda", "#ff8f00", "#ffd08a", ("keras_common.py", "keras_port.py"), title="TensorFlow",
              first_step="graph tracing", data_parallel="tf.distribute.MultiWorkerMirroredStrategy",
              rendezvous="tf_config"),
    Framework("jax", "jax_backend:JaxBackend", ("jax", "jaxlib", "keras"), ("jax", "jaxlib", "keras"), "keras",
              "pip install jax jaxlib keras (the versions pinned in requirements.txt)", "cuda12",
              "#6a1b9a", "#ce93d8", ("keras_common.py", "keras_port.py"), title="Keras on JAX",
              first_step="XLA compilation", data_parallel_missing="Keras' distribution API on JAX is not wired into the suite; run JAX with "
                                    "--replicas 1, or -m 'not jax'"),
)}
NAMES: tuple[str, ...] = tuple(FRAMEWORKS)


BACKENDS = f"{__package__}.frameworks"  # the folder of the backend modules


def backend_module(framework: str) -> str:
    """The dotted name of FRAMEWORK's backend module (imported by a worker only)."""
    return f"{BACKENDS}.{FRAMEWORKS[framework].backend.split(':')[0]}"


def load_backend(framework: str) -> type:
    """The backend class; imports the framework (inside a worker only)."""
    return getattr(importlib.import_module(backend_module(framework)), FRAMEWORKS[framework].backend.split(":")[1])


def installed() -> tuple[str, ...]:
    """The frameworks that can run here, in registry order."""
    missing = unavailable()
    return tuple(name for name in NAMES if name not in missing)


def unavailable() -> dict[str, str]:
    """The frameworks that cannot run here, each with its one-line reason and fix."""
    return {name: reason for name, f in FRAMEWORKS.items() if (reason := f.missing()) is not None}
