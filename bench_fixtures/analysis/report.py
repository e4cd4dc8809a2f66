"""`bench report RUN.json [RUN2.json ...] --out DIR`: the seed's graphs and tables.

From the last run: accuracy before/after, training time, utilisation, memory and power over time
per model (every framework on one figure, aligned at run start, epoch gaps shaded), throughput
and time to first step, and DIR/report.md with the side-by-side tables, the overhead projection
(fixed vs per-epoch cost), energy and cost (joules measured, money at --price-per-hour), the
parity columns, the developer-experience table, machine info and the command line. A `--setup both` run puts matched and defaults side by side per model, lists
the settings that differ between them, and draws the timelines of both. Several runs add a
history table and a trend plot. Cases without telemetry get a note, not a crash.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..config import MODELS
from ..files import OutputError as Unwritable, check_writable, folder_problem
from .parity import gflops, start_text
from ..registry import NAMES
from ..settings import COMPARABLE
from ..telemetry.energy import HORIZON_EPOCHS, source_label
from ..telemetry.timeline import PROJECTED_EPOCHS
from .figures import (ByCase, plot_accuracy, plot_accuracy_curves, plot_history, plot_overhead_share,
                      plot_scaling, plot_throughput, plot_time, plot_timelines, plot_trend, short_reason)
from .findings import findings
from .history import ALPHA, METRICS_FOLLOWED, MIN_SIZE, analyse_runs, summary
from .history import missing as history_missing
from .html import to_html
from .results import Case, ResultsError, Run, is_number, models_in, read_run, significant


class OutputError(ResultsError):
    """The report's folder cannot take the report; the message names it and the fix."""


def _in_order(ft: ByCase) -> list[tuple[tuple[str, str], Case]]:
    """FT's cases by model, then framework, in the suite's order (as the tables list them)."""
    return [((fw, m), ft[(fw, m)]) for m in MODELS for fw in NAMES if (fw, m) in ft]


def _share_points(p: dict) -> list[tuple[int, float]]:
    """(epochs, overhead share) of the measured run and its projections, those that are numbers."""
    rows = [p.get("measured")] + list(p.get("projected") or [])
    pts = {(r["epochs"], r["overhead_share"]) for r in rows if isinstance(r, dict)
           and all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                   for k in ("epochs", "overhead_share")) and r["epochs"] > 0}
    return sorted(pts)


def _below_noise(p: dict | None) -> bool:
    """A negative one-time cost: the run's epochs varied by more than its fixed cost."""
    one_time = (p or {}).get("one_time_s")
    return isinstance(one_time, (int, float)) and one_time < 0


def overhead_shares(fts: dict[str, ByCase]) -> dict[str, dict[tuple[str, str], list[tuple[int, float]]]]:
    """Per setup, each case's (epochs, overhead share) points for overhead_share.png, in the tables'
    order; a case whose fixed cost is below the noise has none (its shares are not figures)."""
    shares: dict[str, dict[tuple[str, str], list[tuple[int, float]]]] = {}
    for setup, ft in fts.items():
        shares[setup] = {}
        for key, c in _in_order(ft):
            pts = [] if _below_noise(c.projection) else _share_points(c.projection or {})
            if pts:
                shares[setup][key] = pts
    return shares


def scaling_points(runs: list[Run], setup: str) -> dict[tuple[str, str], dict[int, float]]:
    """(framework, model) -> {replicas: global steady images/s} over every run given (a later run
    replaces an earlier one's figure for the same replica count); only cases measured at two or
    more replica counts. The steady rate leaves the first steps (tracing, compilation) out."""
    points: dict[tuple[str, str], dict[int, float]] = {}
    for run in runs:
        for key, c in run.select("test_finetune", setup).items():
            rate, n = c.extra_info.get("step_images_per_s"), c.extra_info.get("replicas")
            if is_number(rate) and isinstance(n, int) and n >= 1 and rate > 0:
                points.setdefault(key, {})[n] = float(rate)
    return {k: v for k, v in points.items() if len(v) > 1}


# What must match for runs' images/s to be compared across replica counts: every setting that makes
# runs comparable but the replica count (what varies), the training and test subsets (smoke's training
# subset grows with the replicas; neither changes a step's speed), the setup (the points are read per
# setup, and a `both` run holds matched too) and the target accuracy (it judges accuracy, not speed).
SCALING_KEYS = tuple(k for k in COMPARABLE
                     if k not in ("replicas", "train_size", "test_size", "setup", "target_accuracy"))


def scaling_mismatch(runs: list[Run]) -> str | None:
    """Why the runs' scaling figures cannot be compared (a setting or the machine differs), or None."""
    def signature(run: Run) -> dict:
        cfg, mi = run.bench_config, run.machine_info
        return {**{k: cfg.get(k) for k in SCALING_KEYS}, "machine": (mi.get("cpu_model"), mi.get("gpu_name"))}
    suite = [r for r in runs if any(c.key for c in r.cases)]  # each of their cases records its replica count
    first = signature(suite[0]) if suite else {}
    for run in suite[1:]:
        other = signature(run)
        diff = [k for k in first if first[k] != other[k]]
        if diff:
            return (f"the runs differ in {', '.join(diff)} ({first[diff[0]]!r} vs {other[diff[0]]!r}): their images/s "
                    f"are not a scaling curve, so the data-parallel scaling section is left out")
    return None


def efficiency(by_n: dict[int, float], n: int) -> float | None:
    """Scaling efficiency at N replicas: images/s with N / (N x images/s with 1); None without a
    one-replica figure."""
    return by_n[n] / (n * by_n[1]) if 1 in by_n and n in by_n else None


def scaling_section(points: dict[tuple[str, str], dict[int, float]], runs: list[Run]) -> list[str]:
    threads = {}
    for run in runs:
        for (fw, m), c in run.select("test_finetune").items():
            e = c.extra_info
            threads[(fw, m, e.get("replicas"))] = e.get("distributed") or {"cpu_threads": e.get("cpu_threads")}
    lines = ["## Data-parallel scaling", "",
             "Global steady images/s (first steps left out) with N replicas, one process each; efficiency = "
             "images/s with N / (N x images/s with 1). Per-replica batch as given, global batch N times it, "
             "lr not scaled.", "",
             "| case | replicas | images/s | efficiency | engine (collective) | threads per replica | "
             "set-up (s) |", "|---|---|---|---|---|---|---|"]
    for (fw, m), by_n in sorted(points.items(), key=lambda kv: (MODELS.index(kv[0][1]), NAMES.index(kv[0][0]))):
        for n in sorted(by_n):
            d = threads.get((fw, m, n)) or {}
            eff = efficiency(by_n, n)
            engine = f"{d['engine']} ({d['collective']})" if d.get("engine") else "one process"
            threads_n = d.get("threads_per_replica", d.get("cpu_threads"))
            lines.append(f"| {fw}-{m} | {n} | {by_n[n]:.1f} | {'–' if eff is None else f'{eff:.2f}'} | {engine} | "
                         f"{'–' if threads_n is None else threads_n} | {_f(d.get('setup_s'), '.2f')} |")
    return lines + [""]


def _f(v: Any, fmt: str) -> str:
    """A number as FMT says; "–" for anything else (null, NaN, or what an unvalidated key holds)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
        return "–"
    return format(v, fmt)


def _rounds(e: dict, key: str, scale: float, fmt: str, unit: str) -> str:
    """median (min–max) over the fine-tune rounds; the value alone for one round."""
    r = (e.get("rounds_summary") or {}).get(key)
    if not isinstance(r, dict) or not r.get("n"):
        return "–"
    if r["n"] == 1:
        return f"{_f(r['median'] * scale, fmt)}{unit} (1 round)"
    return (f"{_f(r['median'] * scale, fmt)}{unit} ({_f(r['min'] * scale, fmt)}–{_f(r['max'] * scale, fmt)}, "
            f"{r['n']} rounds)")


def _mfu(e: dict) -> str:
    if isinstance(e.get("mfu"), (int, float)):
        return f"{100 * e['mfu']:.1f}% of {_f(e.get('peak_tflops'), 'g')} TFLOP/s ({e.get('mfu_precision')})"
    return "– (" + str(e.get("mfu_reason") or "not recorded") + ")"


def _tta(e: dict) -> str:
    t = e.get("time_to_accuracy")
    if not isinstance(t, dict):
        return "–"
    if not t.get("reached"):
        return f"not reached in {t.get('evaluated_epochs')} epochs"
    return f"{_f(t.get('wall_s'), '.1f')} s wall / {_f(t.get('train_s'), '.1f')} s training (epoch {t.get('epoch')})"


def case_rows(ft: ByCase, ts: ByCase, model: str) -> list[tuple[str, list[str]]]:
    """The model table's rows: each a name and a cell per framework (its fine-tune case C, its
    train-step case T); a figure a case lacks is "–"."""
    def get(fw: str, f) -> str:
        c = ft.get((fw, model))
        try:
            return f(c.extra_info, c, ts.get((fw, model))) if c else "–"
        except (KeyError, TypeError, ValueError, statistics.StatisticsError):
            return "–"
    rows = [
        ("test outcome", lambda e, c, t: "FAILED (numbers are not a result)" if c.failed else "passed"),
        ("other load while timed", lambda e, c, t: _disturbance_cell(c, t)),
        ("accuracy before", lambda e, c, t: f"{100 * c.accuracy_before:.1f}%"),
        ("accuracy after", lambda e, c, t: f"{100 * c.accuracy_after:.1f}%"),
        ("total fine-tune (s)", lambda e, c, t: f"{c.median:.2f}"),
        ("fine-tune time over rounds (s)", lambda e, c, t: _rounds(e, "finetune_s", 1, ".2f", "")),
        ("accuracy after over rounds", lambda e, c, t: _rounds(e, "accuracy_after", 100, ".1f", "%")),
        *([(f"time to accuracy {_f(100 * e0, '.0f')}%", lambda e, c, t: _tta(e))] if (e0 := _target(ft)) else []),
        ("median epoch (s)", lambda e, c, t: f"{statistics.median(x for x in e['epoch_times_s'] if x):.2f}"),
        ("mean inter-epoch gap (s)", lambda e, c, t: _f(c.mean_gap, ".3f")),
        ("fit teardown (s)", lambda e, c, t: _f(e.get("fit_teardown_s"), ".3f")),
        ("mean utilisation in steps", lambda e, c, t: _f((e["utilization"]["steps"]["mean"] or 0) * 100, ".0f") + "%"),
        ("peak memory (MiB)", lambda e, c, t: _f(c.peak_memory() / 2**20 if c.peak_memory() else None, ".0f")),
        ("energy per fine-tune (J)", lambda e, c, t: _energy_cell(c)),
        ("energy per image (J)", lambda e, c, t: _measured(c, c.energy_per_image)),
        ("mean power (W)", lambda e, c, t: _measured(c, (c.energy or {}).get("mean_power_w"))),
        ("energy measured by", lambda e, c, t: _source_cell(c)),
        *_cost_rows(ft),
        ("steady images/s", lambda e, c, t: _f(t.train_images_per_s if t else None, ".1f")),
        ("steady images/s by round: median (min–max)", lambda e, c, t: _rate_range(t.round_rates if t else [])),
        ("time to first step (s)", lambda e, c, t: f"{c.time_to_first_step:.2f}"),
        ("training GFLOPs / image (own counter)", lambda e, c, t: gflops((e.get("flops_per_image") or {})
                                                                         .get("train_per_image"), 3)),
        ("achieved GFLOP/s (steady steps)", lambda e, c, t: gflops(t.extra_info.get("achieved_flops_per_s")
                                                                    if t else None, 3)),
        ("MFU (steady steps)", lambda e, c, t: _mfu(t.extra_info) if t else "–"),
        ("trainable / non-trainable", lambda e, c, t: f"{e['trainable_params']:,} / {e['non_trainable_params']:,}"),
    ]
    return [(name, [get(fw, f) for fw in NAMES]) for name, f in rows]


def _energy_cell(c: Case) -> str:
    """The fine-tune's joules (the rounds' median, their min–max when several); "not measured"
    (never a 0; the reason is the source row's), "–" for a run from before energy was measured."""
    if c.energy is None:
        return "–"
    if c.energy_j is None:
        return "not measured"
    rounds = c.energy_rounds
    if len(rounds) < 2:
        return significant(c.energy_j)
    return f"{significant(c.energy_j)} ({significant(min(rounds))}–{significant(max(rounds))}, {len(rounds)} rounds)"


def _measured(c: Case, v: Any) -> str:
    """An energy figure of C: "–" where the run predates energy, "not measured" where it was not."""
    if c.energy is None:
        return "–"
    return significant(v) if c.energy_j is not None and is_number(v) else "not measured"


def _source_cell(c: Case) -> str:
    """Where the joules came from (the devices, when several), or why they were not measured (short:
    the notes hold the whole reason)."""
    if c.energy is None:
        return "–"
    if c.energy_j is None:
        return short_reason(c.energy_reason or "not measured")
    source, domains = c.energy.get("source"), c.energy.get("domains") or []
    return source_label(source) + (f": {', '.join(domains)}" if len(domains) > 1 else "")


def _priced(cases: Any) -> dict | None:
    """The first of CASES' cost records (a run has one price): None when the run was not priced."""
    return next((c.cost for c in cases if c.cost), None)


def _cost_rows(ft: ByCase) -> list[tuple[str, Any]]:
    """The model table's cost rows where the run was priced (--price-per-hour): none otherwise."""
    cost = _priced(ft.values())
    if cost is None:
        return []
    return [(f"cost per fine-tune (at {cost['price_per_hour']:g} per hour)",
             lambda e, c, t: significant((c.cost or {}).get("finetune"), 2)),
            (f"cost per {cost.get('horizon_epochs')} epochs (projected)",
             lambda e, c, t: significant((c.cost or {}).get("horizon"), 2))]


def _rate_range(rates: list[float]) -> str:
    """The rounds as pytest-benchmark timed them (the findings' figures): median (min–max, n)."""
    return f"{statistics.median(rates):.1f} ({min(rates):.1f}–{max(rates):.1f}, n={len(rates)})" if rates else "–"


def _target(ft: ByCase) -> float | None:
    """The target accuracy the run's cases were timed to (None: no target)."""
    targets = (c.extra_info.get("target_accuracy") for c in ft.values())
    return next((t for t in targets if is_number(t)), None)


def side_by_side_rows(fts: dict[str, ByCase], tss: dict[str, ByCase], model: str) -> list[tuple[str, list[str]]]:
    """`case_rows` with one column per framework and setup (torch matched, torch defaults, ...):
    what each framework's own defaults change, next to the aligned run."""
    cells = {s: {name: dict(zip(NAMES, vals)) for name, vals in case_rows(fts[s], tss[s], model)} for s in fts}
    names = list(dict.fromkeys(name for by_name in cells.values() for name in by_name))  # a row one setup lacks: "–"
    return [(name, [cells[s].get(name, {}).get(fw, "–") for fw in NAMES for s in fts]) for name in names]


def model_table(fts: dict[str, ByCase], tss: dict[str, ByCase], model: str) -> list[str]:
    """One model's table: a column per framework that ran it, or per framework and setup when there are several."""
    ran = [fw in {f for s in fts for f, m in fts[s] if m == model} for fw in NAMES]
    mark = {(fw, s): f" {DISTURBED}" if _disturbed(fts[s].get((fw, model)), tss[s].get((fw, model))) else ""
            for fw in NAMES for s in fts}
    if len(fts) == 1:
        setup = next(iter(fts))
        heads, rows = [f"{fw}{mark[fw, setup]}" for fw in NAMES], case_rows(fts[setup], tss[setup], model)
        keep = ran
    else:
        heads = [f"{fw} {s}{mark[fw, s]}" for fw in NAMES for s in fts]
        rows, keep = side_by_side_rows(fts, tss, model), [r for r in ran for _ in fts]
    heads, rows = [h for h, k in zip(heads, keep) if k], [(n, [v for v, k in zip(vals, keep) if k]) for n, vals in rows]
    lines = ["| | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    return lines + [f"| {name} | " + " | ".join(vals) + " |" for name, vals in rows]


# The settings the setups differ in, as `settings` reads them back, in the order they are listed.
SETTING_LABELS = {"compute_dtype": "compute dtype", "loss_scale": "loss scaling", "memory_format": "memory format",
                  "tf32_matmul": "TF32 matmul", "tf32_conv": "TF32 convolutions", "xla": "XLA",
                  "torch_compile": "torch.compile", "memory_growth": "memory growth",
                  "memory_allocator": "memory allocator", "cudnn_autotune": "cuDNN autotune",
                  "input_autotune": "tf.data autotune", "prefetch": "prefetch", "bn_momentum": "BatchNorm momentum",
                  "bn_eps": "BatchNorm epsilon", "adam_eps": "Adam epsilon",
                  "compilation_cache": "compilation cache"}
NOT_COMPARED = ("setup", "compile_requested")  # the setup's name; what was asked for is shown with XLA / compile


def _value(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return format(v, "g") if isinstance(v, float) else str(v)


def _setting(settings: dict, key: str) -> str:
    """A read-back setting as the report shows it; compilation with what was requested, since Keras'
    `auto` may or may not compile."""
    text = _value(settings.get(key))
    return f"{text} (requested {settings.get('compile_requested')})" if key in ("xla", "torch_compile") else text


def _settings_of(ft: ByCase, fw: str) -> dict[str, dict]:
    """Per model, the read-back settings of FW's case in FT (models without them left out)."""
    return {m: ft[(fw, m)].settings for m in MODELS
            if (fw, m) in ft and isinstance(ft[(fw, m)].extra_info.get("settings"), dict)}


def setting_changes(fts: dict[str, ByCase]) -> list[str]:
    """One line per framework and setting whose read-back value differs between the first setup and
    each other one; per model where the models differ (BatchNorm values can)."""
    first, lines = next(iter(fts)), []
    for other in list(fts)[1:]:
        for fw in NAMES:
            a, b = _settings_of(fts[first], fw), _settings_of(fts[other], fw)
            models = [m for m in a if m in b]
            if not a and not b and not any(k[0] == fw for k in (*fts[first], *fts[other])):
                continue  # the framework did not run
            if not models:
                lines.append(f"{fw}: settings not recorded in both setups (no case ran in both, or an older run)")
                continue
            keys = [k for k in SETTING_LABELS if any(k in a[m] or k in b[m] for m in models)]
            keys += sorted({k for m in models for k in (*a[m], *b[m])} - set(SETTING_LABELS) - set(NOT_COMPARED))
            found = False
            for key in keys:
                pairs = {m: (_setting(a[m], key), _setting(b[m], key)) for m in models}
                changed = {m: p for m, p in pairs.items() if p[0] != p[1]}
                label = SETTING_LABELS.get(key, key)
                if changed and len(set(pairs.values())) == 1:
                    lines.append(f"{fw}: {label} {pairs[models[0]][0]} → {pairs[models[0]][1]}")
                else:
                    lines += [f"{fw} ({m}): {label} {x} → {y}" for m, (x, y) in changed.items()]
                found = found or bool(changed)
            if not found:
                lines.append(f"{fw}: no setting differs")
    return lines


def changes_section(fts: dict[str, ByCase], cfg: dict) -> list[str]:
    """What the setups change, read back from the frameworks (not what was asked for)."""
    given = cfg.get("overrides") or {}
    md = ["## What the setups change", "",
          f"Read back from each framework (`settings`), {' → '.join(fts)}:", ""]
    md += [f"- {line}" for line in setting_changes(fts)]
    if given:
        md += ["", "Set explicitly (by an option or the profile), so the same in every setup: "
               + ", ".join(f"{k} {_value(v)}" for k, v in given.items()) + "."]
    return md + [""]


def overhead_row(label: str, c: Case) -> str:
    """One case's fixed and per-epoch costs and its overhead share, measured and projected."""
    p = c.projection or {}
    measured = p.get("measured") if isinstance(p.get("measured"), dict) else {}
    projected = {r["epochs"]: r for r in p.get("projected") or []
                 if isinstance(r, dict) and isinstance(r.get("epochs"), int)}
    seconds = [c.time_to_first_step, p.get("one_time_s"), p.get("per_epoch_steps_s"), p.get("per_gap_s"),
               p.get("per_epoch_eval_s"), c.extra_info.get("fit_teardown_s")]
    cells = [_f(v, ".3f") for v in seconds]
    cells.append(f"{_f(measured.get('overhead_share'), '.1%')} ({measured.get('epochs', '–')} epochs)" if measured else "–")
    cells += [_f((projected.get(n) or {}).get("overhead_share"), ".1%") for n in PROJECTED_EPOCHS]
    return f"| {label} | " + " | ".join(cells) + " |"


def overhead_section(fts: dict[str, ByCase]) -> list[str]:
    """Per case and setup: the fixed cost, the per-epoch cost, and the overhead share measured and
    projected to longer runs (stated as a projection), with caveats where a figure cannot hold."""
    multi = len(fts) > 1
    heads = ["time to first step", "one-time", "steps per epoch", "per gap", "eval per epoch", "fit teardown",
             "overhead share, measured"] + [f"projected, {n} epochs" for n in PROJECTED_EPOCHS]
    md = ["## Overhead: fixed vs per-epoch cost (projection)", "",
          "| case | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    caveats, note = [], None
    for setup, ft in fts.items():
        for (fw, m), c in _in_order(ft):
            label = f"{fw}-{m}" + (f"-{setup}" if multi else "")
            md.append(overhead_row(label + (f" {DISTURBED}" if _disturbed(c) else ""), c))
            p = c.projection
            if p is None:
                caveats.append(f"{label}: no projection (not recorded, or its timeline lacks events)")
                continue
            note = note or p.get("note")
            if _below_noise(p):
                caveats.append(f"{label}: the one-time cost came out at {p['one_time_s']:.2f} s: the fixed cost is "
                               f"below the epoch-to-epoch noise of this run (its epochs differed by more), so its "
                               f"shares say only that the fixed cost is small; left out of overhead_share.png")
    md += ["", "Seconds. Overhead is all but the training steps at their steady speed and the validation: the "
               "one-time cost (time to first step beyond a steady step, the first epoch's set-up, fit's teardown) "
               "and the per-gap cost between epochs. The shares at 5, 50 and 500 epochs are a **projection**, "
               "not a measurement: " + (note or "projected from each run's own figures") + "."]
    if caveats:
        md += [""] + [f"- {c}" for c in caveats]
    return md + [""]


def _labelled(fts: dict[str, ByCase]) -> list[tuple[str, Case]]:
    """Every fine-tune case with its label (framework-model, and the setup when there are several),
    in the tables' order."""
    multi = len(fts) > 1
    return [(f"{fw}-{m}" + (f"-{setup}" if multi else ""), c)
            for setup, ft in fts.items() for (fw, m), c in _in_order(ft)]


def _split(c: Case) -> list[Any]:
    """The fine-tune's joules split like the overhead projection: first step, paid once, steps and
    evaluation per epoch, per gap, idle, and the horizon's total (projected)."""
    en = c.energy or {}
    p = en.get("projection") if isinstance(en.get("projection"), dict) else {}
    projected = {r.get("epochs"): r for r in p.get("projected") or [] if isinstance(r, dict)}
    return [en.get("first_step_j"), p.get("one_time_j"), p.get("per_epoch_steps_j"), p.get("per_epoch_eval_j"),
            p.get("per_gap_j"), en.get("idle_j"), (projected.get(HORIZON_EPOCHS) or {}).get("total_j")]




def energy_section(fts: dict[str, ByCase]) -> list[str]:
    """Per case and setup: the fine-tune's joules, per image, their split like the overhead
    projection's (paid once, per epoch, per gap, idle) and the cost where priced; where nothing was
    measured, one line with the reason and, where priced, the cost (time x price) alone. Empty for
    a run from before energy was measured."""
    cases = [(label, c) for label, c in _labelled(fts) if c.energy is not None]
    if not cases:
        return []
    cost = _priced(c for _, c in cases)
    measured = [c for _, c in cases if c.energy_j is not None]
    md = ["## Energy and cost", ""]
    price = ([f"cost per fine-tune (at {cost['price_per_hour']:g} per hour)",
              f"cost per {cost.get('horizon_epochs')} epochs (projected)"] if cost else [])
    if not measured:
        reasons = list(dict.fromkeys(short_reason(c.energy_reason or "").removeprefix("not measured: ")
                                     for _, c in cases))
        md.append(f"Energy not measured in this run: {'; '.join(reasons)} (every case; the whole reason is in "
                  f"the notes).")
        if cost:
            md += ["", "| case | fine-tune (s) | " + " | ".join(price) + " |", "|---|---:|" + "---:|" * len(price)]
            md += [f"| {label} | {_f(c.median, '.2f')} | {significant((c.cost or {}).get('finetune'), 2)} | "
                   f"{significant((c.cost or {}).get('horizon'), 2)} |" for label, c in cases]
            md += ["", f"Money in the currency of --price-per-hour: {cost.get('basis')}."]
        return md + [""]
    heads = (["fine-tune (J)", "per image (J)", "mean power (W)", "first step", "one-time", "steps per epoch",
              "eval per epoch", "per gap", "idle", f"projected, {HORIZON_EPOCHS} epochs"] + price)
    md += ["| case | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    caveats = []
    for label, c in cases:
        if c.energy_j is None:
            cells = [short_reason(c.energy_reason or "not measured")] + ["–"] * (len(heads) - len(price) - 1)
        else:
            split = _split(c)
            cells = [_energy_cell(c), significant(c.energy_per_image), significant((c.energy or {}).get("mean_power_w"))]
            cells += [significant(v) for v in split]
            one_time = split[1]
            if is_number(one_time) and one_time < 0:
                caveats.append(f"{label}: the one-time energy came out at {one_time:.1f} J: below the "
                               f"epoch-to-epoch noise of this run, so it says only that the fixed cost is small")
        if cost:
            cells += [significant((c.cost or {}).get("finetune"), 2), significant((c.cost or {}).get("horizon"), 2)]
        md.append(f"| {label}{f' {DISTURBED}' if _disturbed(c) else ''} | " + " | ".join(cells) + " |")
    sources = list(dict.fromkeys((c.energy or {}).get("source") for c in measured))
    how = "; ".join(next(c.energy.get("method") or source_label(s) for c in measured
                         if c.energy.get("source") == s) for s in sources)
    spacing = [x for c in measured if is_number(x := (c.energy or {}).get("read_spacing_s"))]
    reads = (f" The counters were read at most {max(spacing):.2g} s apart: each boundary is interpolated between "
             f"two reads, so a phase shorter than that is an estimate from the power around it." if spacing else "")
    domains = [f"{label}: " + ", ".join(f"{d} {significant(j)} J" for d, j in zip(names, per))
               for label, c in cases if c.energy_j is not None
               and len(per := c.energy.get("domain_finetune_j") or []) > 1
               and len(names := c.energy.get("domains") or []) == len(per)]
    md += ["", "Joules, **measured** (not estimated) from the devices' own readings, taken by the parent process at "
           "every sample: " + how + "." + reads + " "
           "The fine-tune's figure is its round with the median joules, whole; the split is by the worker's "
           "timeline, as the "
           "overhead's seconds are: first step (run start to the end of the first step), one-time (paid once), "
           "steps and evaluation per epoch, per gap between epochs, idle (while the GPU's utilisation was under "
           "5%; – on a CPU). The "
           f"{HORIZON_EPOCHS}-epoch figure is a **projection** from this run's own figures, not a measurement."]
    if domains:
        md += ["", "Per device (each replica's GPU, or each CPU package and its DRAM): " + "; ".join(domains) + "."]
    if cost:
        md += ["", f"Money in the currency of --price-per-hour: {cost.get('basis')}."]
    if caveats:
        md += [""] + [f"- {c}" for c in caveats]
    return md + [""]


def energy_notes(fts: dict[str, ByCase]) -> list[str]:
    """Each distinct reason energy was not measured, whole, once, with the cases it holds for (the
    tables give it short); a run from before energy was measured: one note that it has none."""
    cases = _labelled(fts)
    if cases and all(c.energy is None for _, c in cases):
        return ["no energy figures in this run (recorded since energy was measured): the energy and cost "
                "section is omitted"]
    by_reason: dict[str, list[str]] = {}
    for label, c in cases:
        if c.energy is not None and c.energy_j is None:
            problems = [p for p in c.energy.get("problems") or [] if p not in (c.energy_reason or "")]
            why = (c.energy_reason or "not measured") + (f" (also: {'; '.join(problems)})" if problems else "")
            by_reason.setdefault(why, []).append(label)
    return [f"{', '.join(labels)}: energy {why}" for why, labels in by_reason.items()]


def _gpu_libraries(d: dict) -> str:
    if d.get("gpu_libraries_bytes") is None:
        return f"– ({d.get('gpu_libraries_note') or 'not recorded'})"
    return (f"{d['gpu_libraries_bytes'] / 2**20:,.0f} ({d.get('gpu_libraries_packages')} pkgs, "
            f"{d.get('gpu_libraries_source')})")


def dx_rows(dx: dict) -> list[str]:
    lines = ["| | " + " | ".join(NAMES) + " |", "|---|" + "---:|" * len(NAMES)]
    fields = [("import time (s, median of fresh processes)", lambda d: _f(d.get("import_s"), ".2f") + f" (n={d.get('import_samples')})"),
              ("install footprint (MiB, own packages, without GPU libraries)",
               lambda d: "not installed" if d.get("footprint_bytes") is None else
               f"{d['footprint_bytes'] / 2**20:,.0f} ({d['footprint_packages']} pkgs)"),
              ("GPU libraries (MiB; how they are installed)", _gpu_libraries),
              ("time to first step (s, median)", lambda d: _f(d.get("time_to_first_step_s"), ".2f")),
              ("GPUs visible / seen by NVML", lambda d: f"{d.get('gpus_visible')} / {d.get('gpus_nvml')}"),
              ("lines of backend code here", lambda d: str(d.get("backend_loc")))]
    for name, f in fields:
        lines.append(f"| {name} | " + " | ".join(f(dx[fw]) if fw in dx else "–" for fw in NAMES) + " |")
    return lines


def write_report(paths: list[str], out: str | Path) -> Path:
    """OUT/report.md and its figures, whole or not at all: every run (and timeline) is validated
    first, everything is drawn into a temporary folder inside OUT and moved into place at the end,
    report.md last; on any failure the temporary folder, and OUT itself if this call made it, go.
    An OUT that cannot take the report raises OutputError (a ResultsError: one line, exit 2)."""
    if not str(out).strip():  # Path("") is the current folder: the report would land among the user's files
        raise OutputError("--out is empty; give a folder for the report")
    final = Path(out)
    problem = folder_problem(final)
    if problem:
        raise OutputError(f"--out {final}: {'is ' if problem.startswith('a file') else ''}{problem}; give a "
                          f"folder for the report")
    try:
        check_writable(final, "--out")  # a read-only disk, a folder we may not write: said before any work
    except Unwritable as e:
        raise OutputError(str(e)) from None
    runs = [read_run(p) for p in paths]  # every run validated (and upgraded) before anything is written
    empty = [p for p, r in zip(paths, runs) if not r.cases]
    if empty:
        raise ResultsError(f"{empty[0]}: holds no benchmark (the session measured none: --benchmark-skip, "
                           f"or every case deselected); nothing to report")
    made = next((p for p in reversed((final, *final.parents)) if not p.exists()), None)  # the top folder we make
    done, tmp = False, None
    try:
        final.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".report.", suffix=".part", dir=final))
        _write_report(paths, runs, tmp)
        for f in sorted(tmp.iterdir(), key=lambda p: p.name == "report.md"):
            os.replace(f, final / f.name)
        done = True
    except OSError as e:
        raise OutputError(f"--out {final}: cannot write the report there ({e.strerror or e}); nothing was "
                          f"written: give --out a writable folder with room") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not done and made is not None:
            shutil.rmtree(made, ignore_errors=True)
    return final / "report.md"


DISTURBED = "⚠ disturbed"


def _disturbed(*measured: Case | None) -> bool:
    return any(c is not None and c.disturbance[0] for c in measured)


def disturbance_section(run: Run) -> list[str]:
    """The cases other load on the machine disturbed while they were timed, with their reasons, as
    the report's first word (their times are kept but are not a clean measurement; the gate refuses
    them). A case without a record (an older run) says "not measured" in its table."""
    hit = [f"`{c.name}`: {'; '.join(c.disturbance[1])}" for c in run.cases if c.disturbance[0]]
    if not hit:
        return []
    return [f"**{DISTURBED}** ({len(hit)} of {len(run.cases)} benchmarks): other load on the machine "
            f"crossed the threshold while they were timed, so their times are not a clean measurement (kept, "
            f"marked {DISTURBED} in the tables; `bench gate` refuses them without --allow-disturbed): "
            + "; ".join(hit) + ".", ""]


def _disturbance_cell(c: Case, t: Case | None) -> str:
    """The model table's 'other load while timed' cell: which of the case's measurements were disturbed."""
    parts = [(name, x.disturbance[0]) for name, x in (("fine-tune", c), ("train steps", t)) if x is not None]
    hit = [name for name, status in parts if status]
    if hit:
        return f"{DISTURBED}: {', '.join(hit)}"
    return "none above the threshold" if all(status is False for _, status in parts) else "not measured"


def _given(v: Any) -> Any:
    return "each framework's default" if v is None else v


def header(path: str, run: Run, names: list[str]) -> list[str]:
    """Which run, how it was started, and what it ran: profile, device, setup(s), the options."""
    cfg = run.bench_config
    if len(names) == 1:
        setup = f"setup **{names[0]}**"
    else:
        setup = "setups " + " and ".join(f"**{s}**" for s in names) + " side by side"
    options = (f"precision {_given(cfg.get('precision'))}, compile {_given(cfg.get('compile'))}, "
               f"optimizer {cfg.get('optimizer')} lr {cfg.get('lr')}, BN momentum {_given(cfg.get('bn_momentum'))} "
               f"eps {_given(cfg.get('bn_eps'))}")
    if len(names) > 1:
        options += " (in matched; defaults keeps each framework's own, except options given explicitly)"
    return ["# PyTorch vs TensorFlow (and Keras on JAX): fine-tuning report", "",
            f"Run: `{path}` ({'unknown time' if run.datetime is None else run.datetime})", "",
            f"Command: `{'not recorded' if run.command is None else run.command}`", "",
            f"Profile **{cfg.get('profile')}** on **{cfg.get('device')}**, {setup}: "
            f"dataset {cfg.get('dataset')}, "
            f"{cfg.get('epochs')} epochs at batch {cfg.get('batch_size')}, weights {cfg.get('weights')}, {options}.", ""]


def _bn(e: dict) -> str:
    """BatchNorm momentum / epsilon as read back (a setup may leave them to the framework), else as set."""
    s = e.get("settings") if isinstance(e.get("settings"), dict) else {}
    return f"{_value(s.get('bn_momentum', e.get('bn_momentum')))} / {_value(s.get('bn_eps', e.get('bn_eps')))}"


def parity_section(fts: dict[str, ByCase]) -> list[str]:
    multi = len(fts) > 1
    md = ["## Parity", "", "| case | trained layers | trainable | non-trainable (frozen) | input transform | optimizer "
                           "| lr | BN momentum / eps | precision | GFLOPs / image, forward / training (own counter) "
                           "| weights: the start |",
          "|---|---|---:|---:|---|---|---:|---|---|---:|---|"]
    for setup, ft in fts.items():
        for (fw, m), c in sorted(ft.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            e = c.extra_info
            frozen = f" ({_f(e.get('frozen_params'), ',')})" if e.get("frozen_params") else ""
            md.append(f"| {fw}-{m}{f'-{setup}' if multi else ''} | {e.get('train_layers')} | "
                      f"{_f(e.get('trainable_params'), ',')} | {_f(e.get('non_trainable_params'), ',')}{frozen} | "
                      f"{e.get('input_transform')} | {e.get('optimizer')} | {e.get('lr')} | {_bn(e)} | "
                      f"{e.get('precision')} | {_flops_cell(e)} | {start_text(e.get('start'))} |")
    return md + ["", "FLOPs: each framework's own counter on its model as built (torch FlopCounterMode, TensorFlow's "
                     "profiler on the traced step, JAX: the step's jaxpr), convolutions and matmuls at 2 per "
                     "multiply-add.", ""]


def _flops_cell(e: dict) -> str:
    f = e.get("flops_per_image") if isinstance(e.get("flops_per_image"), dict) else {}
    return f"{gflops(f.get('forward_per_image'), 3)} / {gflops(f.get('train_per_image'), 3)}"


def machine_section(mi: dict) -> list[str]:
    md = ["## Machine", "", f"- GPU: {mi.get('gpu_name') or 'none'} ({mi.get('gpu_reason') or 'NVML'})",
          f"- CPU: {mi.get('cpu_model')} x {mi.get('cpu_count')}",
          f"- packages: {', '.join(f'{k} {v}' for k, v in (mi.get('packages') or {}).items())}"]
    for fw, info in (mi.get("framework_builds") or {}).items():  # "torch", or "torch/defaults" with both setups
        md.append(f"- {fw}: {info.get('framework_version')} on {info.get('device_name')}, CUDA build "
                  f"{info.get('cuda_build')}, cuDNN {info.get('cudnn_version')}, TF32 matmul/conv "
                  f"{info.get('tf32_matmul')}/{info.get('tf32_conv')}, threads {info.get('cpu_threads')}")
    return md + [""]


def history_section(paths: list[str], runs: list[Run], setup: str) -> list[str]:
    """Fine-tuning time and accuracy per case across runs, in one setup (like for like)."""
    md = [f"## History (setup {setup})", "",
          "| run | " + " | ".join(f"{fw}-{m}" for m in MODELS for fw in NAMES) + " |",
          "|---|" + "---:|" * (len(MODELS) * len(NAMES))]
    for p, r in zip(paths, runs):
        ft = r.select("test_finetune", setup)
        cells = [_history_cell(ft[(fw, m)]) if (fw, m) in ft else "–" for m in MODELS for fw in NAMES]
        md.append(f"| `{Path(p).name}` | " + " | ".join(cells) + " |")
    return md + ["", "Cells: fine-tuning time / accuracy after; ⚠: disturbed by other load while timed.", ""]


def change_points_section(runs: list[Run], out: Path, files: list[str]) -> list[str]:
    """`bench history` over the report's runs: its summary, one level down, and a figure per metric."""
    lines: list[str] = []
    series, changes = analyse_runs(runs, lines=lines)
    for metric in METRICS_FOLLOWED:
        files += plot_history(series, changes, metric, out)
    text = summary(series, changes, lines, ALPHA)
    return ["#" + line if line.startswith("#") else line for line in text]


def _history_cell(c: Case) -> str:
    """Fine-tuning time / accuracy after, and the case's marks (failed, disturbed)."""
    accuracy = None if c.accuracy_after is None else c.accuracy_after * 100
    return (f"{c.median:.1f}s / {_f(accuracy, '.0f')}%{' FAILED' if c.failed else ''}"
            f"{' ⚠' if _disturbed(c) else ''}")


def device_notes(run: Run, names: list[str]) -> list[str]:
    """What the run's device can and cannot show of the setups' memory and numeric settings."""
    if run.bench_config.get("device") != "cpu" or "defaults" not in names:
        return []
    return ["a CPU run cannot show what the defaults setup changes on a GPU: TensorFlow's up-front reservation "
            "of GPU memory (no memory growth), JAX's preallocation of 75% of it and torch's caching allocator act "
            "on GPU memory; on a CPU the "
            "memory plots show the worker's resident host memory, and the TF32 and cuDNN settings have no effect"]


def where_line(run: Run, setup: str) -> str:
    """What every figure shows, in its heading: profile, data, device and setup."""
    cfg, mi = run.bench_config, run.machine_info
    device = f"GPU {mi.get('gpu_name')}" if cfg.get("device") == "gpu" and mi.get("gpu_name") else \
        ("CPU" + (f" {mi.get('cpu_model')}" if mi.get("cpu_model") else "")) if cfg.get("device") == "cpu" else "device ?"
    replicas = f", {cfg['replicas']} replicas" if isinstance(cfg.get("replicas"), int) and cfg["replicas"] > 1 else ""
    return (f"profile {cfg.get('profile', '?')} ({cfg.get('dataset', '?')}, {cfg.get('epochs', '?')} epochs, batch "
            f"{cfg.get('batch_size', '?')}{replicas}) · {device} · setup {setup}")


def figures(fts: dict[str, ByCase], tss: dict[str, ByCase], runs: list[Run], base: Path, out: Path,
            notes: list[str]) -> list[str]:
    """The first setup's figures as a one-setup run draws them; the other setups' timelines beside
    them (`_<setup>` file names); the overhead share; the trend across runs. Each headed by what it
    shows (`where_line`); drawn by figures.py."""
    first, multi, files = next(iter(fts)), len(fts) > 1, []
    ft, ts = fts[first], tss[first]
    where = where_line(runs[-1], first)
    if ft:
        files += [plot_accuracy(ft, out, first, where), plot_time(ft, out, first, where)]
        curves = plot_accuracy_curves(ft, out, first, where, _target(ft))
        files += [curves] if curves else []
        files += plot_timelines(ft, base, out, notes, first, label=f"-{first}" if multi else "", where=where)
        files.append(plot_throughput(ft, ts, out, first, where))
    for setup in list(fts)[1:]:
        files += plot_timelines(fts[setup], base, out, notes, setup, suffix=f"_{setup}", label=f"-{setup}",
                                where=where_line(runs[-1], setup))
    if not any(fts.values()):
        notes.append("no test_finetune case in the run: accuracy, time and timeline figures omitted")
    share = plot_overhead_share(overhead_shares(fts), out, where_line(runs[-1], " and ".join(fts)))
    files += [share] if share else []
    if len(runs) > 1:
        files.append(plot_trend(runs, out, first, where))
    points = scaling_points(runs, first) if not scaling_mismatch(runs) else {}
    if points:
        device = runs[-1].bench_config.get("device") or "?"
        files.append(plot_scaling(points, out, first, device, where))
    return files


def _telemetry_notes(fts: dict[str, ByCase], tss: dict[str, ByCase]) -> list[str]:
    notes, multi = [], len(fts) > 1
    for setup in fts:
        for test, by_case in (("test_finetune", fts[setup]), ("test_train_step", tss[setup])):
            for (fw, m), c in sorted(by_case.items()):
                name = f"{fw}-{m}" + (f"-{setup}" if multi else "")
                notes += [f"{name} {test}: {text}" for text in c.telemetry_problems]
                notes += [f"{name} {test} (flag): {text}" for text in c.extra_info.get("telemetry_flags") or []]
    return notes


def _write_report(paths: list[str], runs: list[Run], out: Path) -> None:
    run, base = runs[-1], Path(paths[-1]).parent
    names = run.setups
    fts = {s: run.select("test_finetune", s) for s in names}
    tss = {s: run.select("test_train_step", s) for s in names}
    notes: list[str] = []
    files = figures(fts, tss, runs, base, out, notes)
    notes += _telemetry_notes(fts, tss) + device_notes(run, names)
    md = header(paths[-1], run, names)
    md += disturbance_section(run)
    md += findings(fts, tss, runs)
    for m in models_in({k: c for ft in fts.values() for k, c in ft.items()}):
        md += [f"## {m}", ""] + model_table(fts, tss, m) + [""]
    if len(names) > 1:
        md += changes_section(fts, run.bench_config)
    if any(c.projection for ft in fts.values() for c in ft.values()):
        md += overhead_section(fts)
    elif any(fts.values()):
        notes.append("no overhead projection in this run (recorded since the setups exist): the fixed vs "
                     "per-epoch cost section is omitted")
    md += energy_section(fts)
    notes += energy_notes(fts)
    if any(fts.values()):
        md += parity_section(fts)
    if run.dx:
        md += ["## Developer experience", ""] + dx_rows(run.dx) + [""]
    else:
        notes.append("no developer-experience figures in this run (recorded by the pytest session)")
    md += machine_section(run.machine_info)
    mismatch = scaling_mismatch(runs)
    points = scaling_points(runs, names[0])
    if points and mismatch:
        notes.append(mismatch)
    elif points:
        md += scaling_section(points, runs)
    if len(runs) > 1:
        md += history_section(paths, runs, names[0])
    if len(runs) >= 2 * MIN_SIZE and history_missing():
        notes.append(f"no change points: {history_missing()}")
    elif len(runs) >= 2 * MIN_SIZE:  # enough runs for a change point on either side
        md += change_points_section(runs, out, files)
    md += ["## Figures", ""] + [f"![{f}]({f})" for f in files] + [""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    text = "\n".join(md)
    (out / "report.html").write_text(to_html(text, out, md[0].lstrip("# ") if md else "bench report"))
    (out / "report.md").write_text(text)


def main(argv: list[str] | None = None, prog: str = "bench report") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="pytest-benchmark JSON files, oldest first")
    p.add_argument("--out", required=True, help="folder for the PNGs and report.md")
    a = p.parse_args(argv)
    try:
        path = write_report(a.runs, a.out)
    except ResultsError as e:  # a run or timeline no reader can interpret, or an --out that cannot take it
        print(f"report: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # anything the disk says that write_report did not name itself
        print(f"report: --out {a.out}: cannot write the report ({e.strerror or e}); give --out a writable folder",
              file=sys.stderr)
        return 2
    print(path)
    return 0

