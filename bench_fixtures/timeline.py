"""The worker's event timeline (MLPerf-style names) and what is derived from it.

Events carry `time.monotonic_ns()`, a clock the parent process shares, so the parent's monitor
samples and the worker's events line up without translation.
"""
from __future__ import annotations

import time
from typing import Any, Callable


class Timeline:
    def __init__(self, sink: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.sink = sink

    def record(self, name: str, **attrs: Any) -> None:
        event = {"name": name, "t_ns": time.monotonic_ns(), **attrs}
        self.events.append(event)
        if self.sink is not None:
            self.sink(event)

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


def _events_by_epoch(events: list[dict]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for e in events:
        if "epoch" in e:
            out.setdefault((e["name"], e["epoch"]), e["t_ns"])
    return out


def epoch_phases(events: list[dict], epochs: int) -> tuple[list[dict | None], list[str]]:
    """Per epoch: steps (first step start -> last step end), eval, other (epoch hooks, metrics,
    iterator set-up); they add up to the epoch exactly. Missing or out-of-order events make that
    epoch None and are listed, never guessed."""
    at = _events_by_epoch(events)
    phases: list[dict | None] = []
    problems: list[str] = []
    for k in range(epochs):
        need = ["epoch_start", "first_step_start", "last_step_end", "epoch_stop"]
        missing = [n for n in need if (n, k) not in at]
        has_eval = ("eval_start", k) in at or ("eval_stop", k) in at
        if has_eval:
            missing += [n for n in ("eval_start", "eval_stop") if (n, k) not in at]
        if missing:
            problems.append(f"epoch {k}: missing {', '.join(missing)}")
            phases.append(None)
            continue
        chain = [at["epoch_start", k], at["first_step_start", k], at["last_step_end", k]]
        if has_eval:
            chain += [at["eval_start", k], at["eval_stop", k]]
        chain.append(at["epoch_stop", k])
        if any(b < a for a, b in zip(chain, chain[1:])):
            problems.append(f"epoch {k}: events out of order")
            phases.append(None)
            continue
        total = chain[-1] - chain[0]
        steps = at["last_step_end", k] - at["first_step_start", k]
        ev = at["eval_stop", k] - at["eval_start", k] if has_eval else 0
        phases.append(dict(epoch=k, total_s=total / 1e9, steps_s=steps / 1e9, eval_s=ev / 1e9,
                           other_s=(total - steps - ev) / 1e9))
    return phases, problems


def inter_epoch_gaps(events: list[dict], epochs: int) -> tuple[list[dict | None], list[str]]:
    """Gap k: last step of epoch k -> first step of epoch k+1, split into eval (per-epoch
    validation), callbacks (epoch hooks and the next epoch's set-up before its first step: the
    framework's own between-epoch work) and unaccounted; the parts add up to the gap."""
    at = _events_by_epoch(events)
    gaps: list[dict | None] = []
    problems: list[str] = []
    for k in range(epochs - 1):
        need = [("last_step_end", k), ("epoch_stop", k), ("epoch_start", k + 1), ("first_step_start", k + 1)]
        has_eval = ("eval_start", k) in at or ("eval_stop", k) in at
        if has_eval:
            need[1:1] = [("eval_start", k), ("eval_stop", k)]
        missing = [f"{n}[{e}]" for n, e in need if (n, e) not in at]
        if missing:
            problems.append(f"gap {k}->{k + 1}: missing {', '.join(missing)}")
            gaps.append(None)
            continue
        chain = [at[key] for key in need]
        if any(b < a for a, b in zip(chain, chain[1:])):
            problems.append(f"gap {k}->{k + 1}: events out of order")
            gaps.append(None)
            continue
        total = at["first_step_start", k + 1] - at["last_step_end", k]
        ev = at["eval_stop", k] - at["eval_start", k] if has_eval else 0
        after_steps = at["eval_stop", k] if has_eval else at["last_step_end", k]
        callbacks = (at["epoch_stop", k] - after_steps) + (at["first_step_start", k + 1] - at["epoch_start", k + 1])
        gaps.append(dict(after_epoch=k, total_s=total / 1e9, eval_s=ev / 1e9, callbacks_s=callbacks / 1e9,
                         unaccounted_s=(total - ev - callbacks) / 1e9))
    return gaps, problems


def step_intervals(events: list[dict], epochs: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(steps, gaps) as [start_ns, end_ns) windows: inside each epoch's steps, and between epochs."""
    at = _events_by_epoch(events)
    steps = [(at["first_step_start", k], at["last_step_end", k]) for k in range(epochs)
             if ("first_step_start", k) in at and ("last_step_end", k) in at]
    gaps = [(at["last_step_end", k], at["first_step_start", k + 1]) for k in range(epochs - 1)
            if ("last_step_end", k) in at and ("first_step_start", k + 1) in at]
    return steps, gaps
