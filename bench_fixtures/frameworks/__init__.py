"""The backend protocol (`protocol.py`), one backend module per framework, the Keras half two of them
share (`keras_common.py`, `keras_port.py`) and the bare reference steps (`bare.py`).

Nothing here imports a framework. The registry lives in `bench_fixtures/registry.py`, below the
backends; its names are re-exported here for the modules above that still import them from here.
"""
from __future__ import annotations

from ..registry import FRAMEWORKS, NAMES, Framework, backend_module, installed, load_backend, unavailable

__all__ = ["FRAMEWORKS", "NAMES", "Framework", "backend_module", "installed", "load_backend", "unavailable"]
