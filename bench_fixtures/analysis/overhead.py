"""Does the harness distort what it measures? Three ratios, measured side by side in one run.

    bench overhead --framework torch --model mobilenet_v2 [--device cpu|gpu]

1. suite / bare: the suite's steady-state step time (parent-timed rounds, input pipeline from the
   shared arrays) over a hand-written loop on a device-resident batch (frameworks/bare.py), run in
   the same worker process; target <= 1.03.
2. monitor on / off: the suite's rounds with the parent-side monitor sampling or not; target <= 1.01.
The three kinds of round alternate (order rotated every cycle), so drift hits all alike.
3. input headroom: step time over the time the input path alone needs for one batch; target >= 10.
Median over rounds everywhere. Prints a table; `--out FILE` writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config import MODELS, BenchConfig, resolve
from ..data import LABEL_NAMES, Cifar10, make_bundle, make_synthetic
from ..files import write_json_atomic
from ..frameworks import NAMES
from ..machine import nvml_gpus
from ..runner.experiment import Experiment

TARGETS = {"suite_over_bare": 1.03, "monitor_on_over_off": 1.01, "input_headroom": 10.0}


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
    """The three ratios from alternated rounds, plus the input path timed alone."""
    cfg = exp.cfg
    pipe = exp.request("input_pipeline", count=cfg.step_count)
    batch_s = pipe["seconds"] / pipe["batches"]
    off, on, bare = (statistics.median(times[k]) for k in ("off", "on", "bare"))
    return dict(framework=exp.framework, model=exp.model, device=cfg.device, batch_size=cfg.batch_size,
                steps_per_round=cfg.step_count, rounds=len(times["off"]), monitor_interval_s=cfg.monitor_interval,
                bare_step_s=bare, suite_step_s=off, monitor_on_step_s=on, input_batch_s=batch_s,
                suite_over_bare=off / bare, monitor_on_over_off=on / off, input_headroom=off / batch_s,
                targets=TARGETS, step_s=times)


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
    lines = ["| case | device | bare step | suite step | suite/bare | monitor on/off | input headroom |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['framework']}-{r['model']} | {r['device']} | {r['bare_step_s'] * 1e3:.1f} ms | "
                     f"{r['suite_step_s'] * 1e3:.1f} ms | {r['suite_over_bare']:.3f} | "
                     f"{r['monitor_on_over_off']:.3f} | {r['input_headroom']:.0f}x |")
    lines.append(f"targets: suite/bare <= {TARGETS['suite_over_bare']}, monitor on/off <= "
                 f"{TARGETS['monitor_on_over_off']}, input headroom >= {TARGETS['input_headroom']:.0f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "bench overhead") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", nargs="+", default=list(NAMES), choices=NAMES)
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
    rows = [measure(fw, m, cfg) for m in a.model for fw in a.framework]
    print(format_results(rows))
    if a.out:
        write_json_atomic(a.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m bench_fixtures.analysis.overhead"))
