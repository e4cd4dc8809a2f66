"""The worker's event timeline (MLPerf-style names) and what is derived from it.

Events carry `time.monotonic_ns()`, a clock the parent process shares, so the parent's monitor
samples and the worker's events line up without translation.
"""
from __future__ import annotations

import time
from typing import Any


class Timeline:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, name: str, **attrs: Any) -> None:
        self.events.append({"name": name, "t_ns": time.monotonic_ns(), **attrs})

    def drain(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events


def _first(events: list[dict], name: str, **match: Any) -> int | None:
    for e in events:
        if e["name"] == name and all(e.get(k) == v for k, v in match.items()):
            return e["t_ns"]
    return None


def epoch_times(events: list[dict], epochs: int) -> list[float | None]:
    """Seconds from epoch_start to epoch_stop of each epoch; None where an event is missing."""
    out: list[float | None] = []
    for e in range(epochs):
        start, stop = _first(events, "epoch_start", epoch=e), _first(events, "epoch_stop", epoch=e)
        out.append(None if start is None or stop is None else (stop - start) / 1e9)
    return out


def time_to_first_step(events: list[dict]) -> float | None:
    """run_start to the end of the first (synchronised) training step: tracing and autotuning included."""
    start, first = _first(events, "run_start"), _first(events, "first_step_end", epoch=0)
    return None if start is None or first is None else (first - start) / 1e9
