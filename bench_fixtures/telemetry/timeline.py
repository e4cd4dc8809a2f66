"""The worker's event timeline (MLPerf-style names) and what is derived from it.

Events carry `time.monotonic_ns()`, a clock the parent process shares, so the parent's monitor
samples and the worker's events line up without translation.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

# Event names, as MLPerf's logging names its keys: one constant each, used by every recorder and reader.
RUN_START = "run_start"                # fit() called
RUN_STOP = "run_stop"                  # fit() returned
EPOCH_START = "epoch_start"            # epoch=k
EPOCH_STOP = "epoch_stop"              # epoch=k; carries memory, loss, val_accuracy
FIRST_STEP_START = "first_step_start"  # epoch=k: the first training step is dispatched
FIRST_STEP_END = "first_step_end"      # epoch=k: ... and finished (synchronised)
LAST_STEP_END = "last_step_end"        # epoch=k: the last training step finished (synchronised)
EVAL_START = "eval_start"              # epoch=k: per-epoch validation
EVAL_STOP = "eval_stop"
USER_WORK_START = "user_work_start"    # epoch=k, at=where: a user's own per-epoch work (the tests' stand-in)
USER_WORK_STOP = "user_work_stop"
EVENTS = (RUN_START, RUN_STOP, EPOCH_START, EPOCH_STOP, FIRST_STEP_START, FIRST_STEP_END, LAST_STEP_END,
          EVAL_START, EVAL_STOP)
PROGRESS_EVENTS = (RUN_START, EPOCH_STOP)  # forwarded to the parent as they happen


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
        start, stop = _first(events, EPOCH_START, epoch=e), _first(events, EPOCH_STOP, epoch=e)
        out.append(None if start is None or stop is None else (stop - start) / 1e9)
    return out


Amount = Callable[[int, int], float]  # what accrued from one instant (ns) to another: seconds, or joules


def seconds(a_ns: int, b_ns: int) -> float:
    return (b_ns - a_ns) / 1e9


def time_to_first_step(events: list[dict], amount: Amount = seconds) -> float | None:
    """run_start to the end of the first (synchronised) training step: tracing and autotuning
    included (AMOUNT: its seconds, or what else accrued, as its joules)."""
    start, first = _first(events, RUN_START), _first(events, FIRST_STEP_END, epoch=0)
    return None if start is None or first is None else amount(start, first)


def _events_by_epoch(events: list[dict]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for e in events:
        if "epoch" in e:
            out.setdefault((e["name"], e["epoch"]), e["t_ns"])
    return out


def epoch_phases(events: list[dict], epochs: int, amount: Amount = seconds, unit: str = "s"
                 ) -> tuple[list[dict | None], list[str]]:
    """Per epoch: steps (first step start -> last step end), eval, other (epoch hooks, metrics,
    iterator set-up); they add up to the epoch exactly. Missing or out-of-order events make that
    epoch None and are listed, never guessed. AMOUNT measures a stretch (seconds; the energy
    figures pass joules, keys ending in UNIT)."""
    at = _events_by_epoch(events)
    phases: list[dict | None] = []
    problems: list[str] = []
    for k in range(epochs):
        need = [EPOCH_START, FIRST_STEP_START, LAST_STEP_END, EPOCH_STOP]
        missing = [n for n in need if (n, k) not in at]
        has_eval = (EVAL_START, k) in at or (EVAL_STOP, k) in at
        if has_eval:
            missing += [n for n in (EVAL_START, EVAL_STOP) if (n, k) not in at]
        if missing:
            problems.append(f"epoch {k}: missing {', '.join(missing)}")
            phases.append(None)
            continue
        chain = [at[EPOCH_START, k], at[FIRST_STEP_START, k], at[LAST_STEP_END, k]]
        if has_eval:
            chain += [at[EVAL_START, k], at[EVAL_STOP, k]]
        chain.append(at[EPOCH_STOP, k])
        if any(b < a for a, b in zip(chain, chain[1:])):
            problems.append(f"epoch {k}: events out of order")
            phases.append(None)
            continue
        total = amount(chain[0], chain[-1])
        steps = amount(at[FIRST_STEP_START, k], at[LAST_STEP_END, k])
        ev = amount(at[EVAL_START, k], at[EVAL_STOP, k]) if has_eval else 0.0
        phases.append({"epoch": k, f"total_{unit}": total, f"steps_{unit}": steps, f"eval_{unit}": ev,
                       f"other_{unit}": total - steps - ev})
    return phases, problems


def inter_epoch_gaps(events: list[dict], epochs: int, amount: Amount = seconds, unit: str = "s"
                     ) -> tuple[list[dict | None], list[str]]:
    """Gap k: last step of epoch k -> first step of epoch k+1, split into eval (per-epoch
    validation), callbacks (epoch hooks and the next epoch's set-up before its first step: the
    framework's own between-epoch work) and unaccounted; the parts add up to the gap (AMOUNT and
    UNIT as in epoch_phases)."""
    at = _events_by_epoch(events)
    gaps: list[dict | None] = []
    problems: list[str] = []
    for k in range(epochs - 1):
        need = [(LAST_STEP_END, k), (EPOCH_STOP, k), (EPOCH_START, k + 1), (FIRST_STEP_START, k + 1)]
        has_eval = (EVAL_START, k) in at or (EVAL_STOP, k) in at
        if has_eval:
            need[1:1] = [(EVAL_START, k), (EVAL_STOP, k)]
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
        total = amount(at[LAST_STEP_END, k], at[FIRST_STEP_START, k + 1])
        ev = amount(at[EVAL_START, k], at[EVAL_STOP, k]) if has_eval else 0.0
        after_steps = at[EVAL_STOP, k] if has_eval else at[LAST_STEP_END, k]
        callbacks = amount(after_steps, at[EPOCH_STOP, k]) + amount(at[EPOCH_START, k + 1], at[FIRST_STEP_START, k + 1])
        gaps.append({"after_epoch": k, f"total_{unit}": total, f"eval_{unit}": ev, f"callbacks_{unit}": callbacks,
                     f"unaccounted_{unit}": total - ev - callbacks})
    return gaps, problems


def step_intervals(events: list[dict], epochs: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(steps, gaps) as [start_ns, end_ns) windows: inside each epoch's steps, and between epochs."""
    at = _events_by_epoch(events)
    steps = [(at[FIRST_STEP_START, k], at[LAST_STEP_END, k]) for k in range(epochs)
             if (FIRST_STEP_START, k) in at and (LAST_STEP_END, k) in at]
    gaps = [(at[LAST_STEP_END, k], at[FIRST_STEP_START, k + 1]) for k in range(epochs - 1)
            if (LAST_STEP_END, k) in at and (FIRST_STEP_START, k + 1) in at]
    return steps, gaps


def after_first_steps(events: list[dict], epochs: int, steps_per_epoch: int) -> tuple[float, int] | None:
    """(seconds, steps) from each epoch's first step's end to its last step's end: the steps of a
    fine-tune without the first of each epoch (graph tracing, autotuning, a fresh iterator). None
    when an epoch's events are missing or it has a single step."""
    at = _events_by_epoch(events)
    if steps_per_epoch < 2 or any((n, k) not in at for k in range(epochs) for n in (FIRST_STEP_END, LAST_STEP_END)):
        return None
    seconds = sum(at[LAST_STEP_END, k] - at[FIRST_STEP_END, k] for k in range(epochs)) / 1e9
    return (seconds, epochs * (steps_per_epoch - 1)) if seconds > 0 else None


def fit_teardown(events: list[dict], epochs: int) -> float | None:
    """Seconds from the last epoch's end to fit() returning: what the framework does once training
    is over (TensorFlow with tf.data autotuning waits here for the autotuner's thread)."""
    stop, last = _first(events, RUN_STOP), _first(events, EPOCH_STOP, epoch=epochs - 1)
    return None if stop is None or last is None else (stop - last) / 1e9


PROJECTED_EPOCHS = (5, 50, 500)


def project_overhead(events: list[dict], epochs: int, steps_per_epoch: int,
                     horizons: tuple[int, ...] = PROJECTED_EPOCHS, amount: Amount = seconds, unit: str = "s"
                     ) -> dict[str, Any] | None:
    """The fixed and the per-epoch cost of this run, and the overhead share of total time projected
    to longer runs: a projection from the measured figures, not a measurement.

    Work is the training steps at their steady speed and the validation; overhead is the rest.
    The per-epoch work is the median steps time of epochs 1.. (epoch 0 holds the first step's
    tracing; with one epoch, its steps less the first step's excess over a steady step). The
    recurring overhead is the mean gap between epochs less its validation; the one-time overhead is
    what remains of the measured total (time to first step beyond a steady step, the first epoch's
    set-up, fit's teardown). So total(E) = one_time + E * (steps + eval) + (E - 1) * gap, which
    reproduces the measured total at the measured E. None when events are missing. With AMOUNT
    and UNIT (joules, "j"), the same split of the energy: paid once, per epoch, per gap."""
    phases, problems = epoch_phases(events, epochs, amount, unit)
    gaps, gap_problems = inter_epoch_gaps(events, epochs, amount, unit)
    start, stop = _first(events, RUN_START), _first(events, RUN_STOP)
    first_start, first_end = _first(events, FIRST_STEP_START, epoch=0), _first(events, FIRST_STEP_END, epoch=0)
    if problems or gap_problems or None in (start, stop, first_start, first_end) or not phases or steps_per_epoch < 1:
        return None
    u = unit
    total = amount(start, stop)
    first_step = amount(first_start, first_end)
    if epochs > 1:
        per_epoch = statistics.median(p[f"steps_{u}"] for p in phases[1:])
    elif steps_per_epoch > 1:
        per_epoch = (phases[0][f"steps_{u}"] - first_step) * steps_per_epoch / (steps_per_epoch - 1)
    else:
        per_epoch = phases[0][f"steps_{u}"]
    evals = [p[f"eval_{u}"] for p in phases]
    eval_per_epoch = sum(evals) / len(evals)
    gap = sum(g[f"total_{u}"] - g[f"eval_{u}"] for g in gaps) / len(gaps) if gaps else 0.0
    one_time = total - epochs * (per_epoch + eval_per_epoch) - (epochs - 1) * gap

    def at(n: int) -> dict[str, float]:
        overhead = one_time + (n - 1) * gap
        run = overhead + n * (per_epoch + eval_per_epoch)
        return {"epochs": n, f"total_{u}": run, f"overhead_{u}": overhead,
                "overhead_share": overhead / run if run > 0 else None}

    return {"measured_epochs": epochs, f"measured_total_{u}": total, f"one_time_{u}": one_time,
            f"per_epoch_steps_{u}": per_epoch, f"per_epoch_eval_{u}": eval_per_epoch, f"per_gap_{u}": gap,
            f"first_step_{u}": first_step, f"step_{u}": per_epoch / steps_per_epoch, "measured": at(epochs),
            "projected": [at(n) for n in horizons],
            "note": "projected from this run's own figures (one-time + per-epoch + per-gap costs); "
                    "assumes later epochs cost what the measured ones did"}


def accuracy_curve(events: list[dict], epochs: int) -> list[dict[str, Any]]:
    """Per epoch with a test evaluation: the accuracy, the training seconds so far (the steps of
    the epochs up to it: what a faster step shortens) and the wall seconds since fit started, to
    the end of that evaluation (everything: tracing, gaps, evaluations). Stops at the first epoch
    whose events are incomplete: a later point would be measured from a gap."""
    phases, _ = epoch_phases(events, epochs)
    at = _events_by_epoch(events)
    stops = {e.get("epoch"): e for e in events if e["name"] == EPOCH_STOP}
    run_start = _first(events, RUN_START)
    curve, train_s = [], 0.0
    for k in range(epochs):
        accuracy = (stops.get(k) or {}).get("val_accuracy")
        if phases[k] is None or run_start is None or accuracy is None:
            break
        train_s += phases[k]["steps_s"]
        end = at.get((EVAL_STOP, k), at.get((EPOCH_STOP, k)))
        curve.append(dict(epoch=k + 1, accuracy=float(accuracy), train_s=train_s, wall_s=(end - run_start) / 1e9))
    return curve


def time_to_accuracy(curve: list[dict[str, Any]], target: float, before: float | None = None) -> dict[str, Any]:
    """The first point of CURVE at or above TARGET: its epoch (1-based), training and wall seconds;
    epoch 0 and 0 s when the accuracy BEFORE training already met it; reached False and the times
    None if no evaluated epoch got there."""
    start = [dict(epoch=0, train_s=0.0, wall_s=0.0, accuracy=before)] if before is not None else []
    hit = next((p for p in start + curve if p["accuracy"] >= target), None)
    return dict(target=target, reached=hit is not None, epoch=hit and hit["epoch"],
                train_s=hit and hit["train_s"], wall_s=hit and hit["wall_s"], evaluated_epochs=len(curve))
