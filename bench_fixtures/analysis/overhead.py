"""Does the harness distort what it measures? Three ratios, measured side by side in one run.

    bench overhead --framework torch --model mobilenet_v2 [--device cpu|gpu]

1. suite / bare: the suite's steady-state step time (parent-timed rounds, input pipeline from the
   shared arrays) over a hand-written loop on a device-resident batch (frameworks/bare.py), run in
   the same worker process; target <= 1.03.
2. monitor on / off: the suite's rounds with the parent-side monitor sampling or not; target <= 1.01.
The three kinds of round alternate (order rotated every cycle), so drift hits all alike.
3. input headroom: step time over the time the input path alone needs for one batch; target >= 10.
Median over rounds everywhere. Each ratio also gets an interval: the order-statistic interval
(stats.median_interval) for the median of its per-cycle paired ratios; a ratio whose interval
straddles its target is unresolved (`?` in the table): noise at this many rounds, not a finding.
Prints a table; `--out FILE` writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config import MODELS, BenchConfig, resolve
from ..data import LABEL_NAMES, Cifar10, make_bundle, make_synthetic
from ..files import write_json_atomic
from ..registry import NAMES, installed, unavailable
from ..machine import nvml_gpus
from ..runner.experiment import Experiment
from .stats import median_interval

TARGETS = {"suite_over_bare": 1.03, "monitor_on_over_off": 1.01, "input_headroom": 10.0}
# "<=": the target is a most, ">=": a least
DIRECTION = {"suite_over_bare": "<=", "monitor_on_over_off": "<=", "input_headroom": ">="}
MIN_COVERAGE = 0.9  # below it (fewer than 5 rounds) no interval settles a ratio either way
LEVEL = 0.95  # wanted coverage of each ratio's interval; fewer rounds get the full range and say so
MORE = "more --step-rounds / --rounds needed"


KINDS = ("off", "bare", "on")


def prepare(exp: Experiment) -> None:
    """Build and warm the bare reference loop inside the case's worker."""
    exp.request("bare_steps", framework=exp.framework, model=exp.model, count=1, warmup=exp.cfg.step_warmup)


def cycle(exp: Experiment, r: int, times: dict[str, list[float]]) -> None:
    """One round of each kind (suite with monitor off, bare, suite with monitor on), the order
    rotated by R; appends the per-step seconds of each to TIMES."""
    cfg = exp.cfg
    for kind in KINDS[r % 3:] + KINDS[:r % 3]:
        if kind == "on":
            exp.start_monitor()
        start = time.perf_counter()
        if kind == "bare":
            exp.request("bare_steps", framework=exp.framework, model=exp.model, count=cfg.step_count)
        else:
            exp.train_steps()
        times.setdefault(kind, []).append((time.perf_counter() - start) / cfg.step_count)
        if kind == "on":
            exp.stop_monitor()


def summarize(exp: Experiment, times: dict[str, list[float]]) -> dict[str, Any]:
    """The three ratios from alternated rounds, plus the input path timed alone; RATIO_INTERVALS
    gives each its spread over the cycles and whether that spread leaves the target decided."""
    cfg = exp.cfg
    pipe = exp.request("input_pipeline", count=cfg.step_count)
    batch_s = _div(pipe["seconds"], pipe["batches"])
    off, on, bare = (_median(times.get(k, [])) for k in ("off", "on", "bare"))
    intervals = ratio_intervals(times, batch_s)
    return dict(framework=exp.framework, model=exp.model, device=cfg.device, batch_size=cfg.batch_size,
                steps_per_round=cfg.step_count, rounds=len(times.get("off", [])),
                monitor_interval_s=cfg.monitor_interval,
                bare_step_s=bare, suite_step_s=off, monitor_on_step_s=on, input_batch_s=batch_s,
                suite_over_bare=_div(off, bare), monitor_on_over_off=_div(on, off),
                input_headroom=_div(off, batch_s), targets=TARGETS, step_s=times,
                ratio_intervals=intervals, unresolved=[k for k, v in intervals.items() if not v["resolved"]])


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def _div(a: float, b: float) -> float:
    """A / B, NaN where B is not a positive finite number (a time that cannot be one)."""
    return a / b if isinstance(b, (int, float)) and 0 < b < math.inf else math.nan


def ratio_intervals(times: dict[str, list[float]], batch_s: float) -> dict[str, dict[str, Any]]:
    """Per ratio: the median of its per-cycle paired ratios (off_r/bare_r, on_r/off_r, off_r/BATCH_S),
    the order-statistic interval for that median, and whether the interval decides the target."""
    off, on, bare = (times.get(k, []) for k in ("off", "on", "bare"))
    pairs = {"suite_over_bare": list(zip(off, bare)), "monitor_on_over_off": list(zip(on, off)),
             "input_headroom": [(t, batch_s) for t in off]}
    return {name: _interval(name, ps) for name, ps in pairs.items()}


def _interval(name: str, pairs: list[tuple[float, float]]) -> dict[str, Any]:
    target, direction = TARGETS[name], DIRECTION[name]
    ratios = [a / b for a, b in pairs if _usable(a) and _usable(b) and math.isfinite(a / b)]
    dropped = len(pairs) - len(ratios)
    out: dict[str, Any] = dict(median=None, low=None, high=None, coverage=0.0, n=len(ratios), target=target,
                               resolved=False)
    left_out = f" ({dropped} of {len(pairs)} rounds without a usable time left out)" if dropped else ""
    if not ratios:
        out["note"] = f"cannot be computed: no round with positive times{left_out}"
        return out
    low, high, coverage = median_interval(ratios, LEVEL)
    out.update(median=statistics.median(ratios), low=low, high=high, coverage=coverage)
    n = len(ratios)
    rounds = f"{n} round{'s' * (n != 1)}"
    if n < 2:
        out["note"] = f"{rounds}: no spread to judge it by; {MORE}{left_out}"
        return out
    met = high <= target if direction == "<=" else low >= target
    missed = low > target if direction == "<=" else high < target
    weak = coverage < MIN_COVERAGE  # 2-4 rounds: even their full range covers the median at 50-88% only
    out["resolved"] = (met or missed) and not weak
    verdict = "within" if met else "beyond" if missed else "straddle"
    spread = f"{rounds}: paired ratios {low:.3g}-{high:.3g} ({coverage:.0%} interval for the median)"
    out["note"] = (f"{spread} {verdict} the target {direction} {target:g}"
                   + (f", but {coverage:.0%} is too weak to settle it (5 rounds reach 94%)" if weak and (met or missed)
                      else "")
                   + ("" if out["resolved"] else f"; {MORE}") + left_out)
    return out


def _usable(t: Any) -> bool:
    return isinstance(t, (int, float)) and 0 < t < math.inf


def measure(framework: str, model: str, cfg: BenchConfig) -> dict[str, Any]:
    """Standalone: a worker of its own on synthetic data, CFG.step_rounds alternation cycles."""
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        train, test = make_synthetic(max(512, cfg.batch_size * 4), 64, seed=cfg.seed)
        bundle = make_bundle(Cifar10(train, test, LABEL_NAMES, "synthetic"), 0, 0, cfg.batch_size, 2, cfg.seed)
        exp = Experiment(framework, model, cfg, bundle.write(Path(tmp) / "bundle"), tmp)
        try:
            exp.load()
            exp.init()
            exp.warm_up()
            prepare(exp)
            times: dict[str, list[float]] = {}
            for r in range(cfg.step_rounds):
                cycle(exp, r, times)
            return summarize(exp, times)
        finally:
            exp.close()


def format_results(rows: list[dict[str, Any]]) -> str:
    """The table; each ratio as `value [low-high]`, a trailing `?` where the interval straddles the
    target, then a line on the intervals and each unresolved ratio's note."""
    lines = ["| case | device | bare step | suite step | suite/bare | monitor on/off | input headroom | rounds |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for r in rows:
        ivs = r.get("ratio_intervals", {})
        covs = sorted({(iv["n"], iv["coverage"]) for iv in ivs.values()})
        rounds = ", ".join(f"{n} ({c:.0%})" for n, c in covs) if covs else str(r.get("rounds", ""))
        lines.append(f"| {r['framework']}-{r['model']} | {r['device']} | {r['bare_step_s'] * 1e3:.1f} ms | "
                     f"{r['suite_step_s'] * 1e3:.1f} ms | {_cell(r, 'suite_over_bare', '.3f')} | "
                     f"{_cell(r, 'monitor_on_over_off', '.3f')} | {_cell(r, 'input_headroom', '.0f', 'x')} | "
                     f"{rounds} |")
        notes += [f"  {r['framework']}-{r['model']} {k}: {ivs[k]['note']}" for k in r.get("unresolved", []) if k in ivs]
    lines.append("targets: " + ", ".join(f"{label} {DIRECTION[k]} {TARGETS[k]:g}{'x' * (k == 'input_headroom')}"
                                         for k, label in (("suite_over_bare", "suite/bare"),
                                                          ("monitor_on_over_off", "monitor on/off"),
                                                          ("input_headroom", "input headroom"))))
    if any("ratio_intervals" in r for r in rows):
        lines.append("[low-high]: distribution-free (order-statistic) interval for the median of the per-cycle "
                     "paired ratios; its coverage is in the rounds column.")
        lines.append("? = unresolved: the interval straddles the target, or covers the median at under 90% (fewer "
                     "than 5 rounds), so the ratio is noise at this many rounds, not a finding.")
        lines += notes
    return "\n".join(lines)


def _cell(row: dict[str, Any], key: str, fmt: str, unit: str = "") -> str:
    value = row[key]
    text = f"{value:{fmt}}{unit}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"
    iv = row.get("ratio_intervals", {}).get(key)
    if iv is None:
        return text
    if iv["low"] is not None:
        text += f" [{iv['low']:{fmt}}-{iv['high']:{fmt}}]"
    return text + ("" if iv["resolved"] else " ?")


def main(argv: list[str] | None = None, prog: str = "bench overhead") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", nargs="+", default=None, choices=NAMES, help="(default: the installed ones)")
    p.add_argument("--model", nargs="+", default=["mobilenet_v2"], choices=MODELS)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="steps per round")
    p.add_argument("--rounds", type=int, default=5, help="rounds per condition")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--monitor-interval", type=float, default=0.05)
    p.add_argument("--out", help="write the results as JSON")
    a = p.parse_args(argv)
    gpus, reason = nvml_gpus()
    cfg = resolve(dict(profile="smoke", device=a.device, batch_size=a.batch_size, step_count=a.steps,
                       step_rounds=a.rounds, step_warmup=a.warmup, monitor_interval=a.monitor_interval,
                       train_size=0), len(gpus), reason)
    if a.framework is None:
        for reason in unavailable().values():
            print(reason, file=sys.stderr)
        a.framework = list(installed())
    rows = [measure(fw, m, cfg) for m in a.model for fw in a.framework]
    print(format_results(rows))
    if a.out:
        write_json_atomic(a.out, rows)
    return 0
