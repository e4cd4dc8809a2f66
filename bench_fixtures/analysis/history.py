"""`bench history`: not "did this run regress?" but "when did a figure change, and what changed then".

Stored runs (files or folders, any order) are sorted by their own time and split into series of
comparable runs: one machine, the same comparable settings (settings.COMPARABLE) — runs of another
profile, setup, precision or replica count are never one series. Per case and gate metric, change
points come from `ruptures` (PELT on the series, the log of it for relative metrics; a metric the gate
keeps off by default, energy_per_image, only with --metric); each is kept
only if the runs on either side differ by Student's t-test at --alpha and by more than the smallest
change the metric means (MIN_CHANGE, and the gate's floor). At each kept change point, the runs on
either side are diffed: package versions, framework builds (CUDA, cuDNN), driver, GPU, CPU, Python,
commit, the settings and every framework setting read back — what an infra team needs to act.

Why ruptures: Apache Otava (E-Divisive, Hunter) pins numpy 2.2 and scipy < 1.17 and pulls BigQuery,
Postgres and Slack clients; MongoDB's signal-processing-algorithms needs numpy < 2. Both conflict
with the frameworks' pins. ruptures needs numpy and scipy only; the significance test on top is
Otava's rule (a change point stands when the segments differ at p < alpha).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..files import OutputError, check_writable, write_text_atomic
from ..settings import COMPARABLE
from .gate import METRICS, Metric
from .results import ResultsError, Run, instant, read_run, same_memory_kind

ALPHA = 0.001           # Otava's default max p-value: a change point stands at p below this
MIN_CHANGE = {"relative": 0.02, "points": 0.01}  # smaller changes never stand (2%, 1 accuracy point)
MIN_SIZE = 3            # runs a level holds at least: two slow runs in a row are a blip, not a level (and a
#                         figure measured in steps, as accuracy is, repeats itself by chance twice far more often)
PENALTY = 3.0           # PELT's penalty per change point, in units of the series' noise variance x log(n)
NEW_RUNS = MIN_SIZE     # a change point whose level starts within the newest NEW_RUNS runs is news of this run
MACHINE_IGNORE = ("node", "cpu", "framework_builds.*.import_s", "framework_builds.*.pid", "gpu_reason")
EXIT_OK, EXIT_CANNOT = 0, 2
# The gate's judged metrics, as it judges them by default; --metric also offers those off by default
# (energy_per_image: it mostly restates a change in time, and a driver update moves it, so following it
# always would double the change points and their warnings).
METRICS_FOLLOWED = tuple(m for m in METRICS if METRICS[m].judged and METRICS[m].default_on)
METRICS_OFFERED = tuple(m for m in METRICS if METRICS[m].judged)


class HistoryError(Exception):
    """Nothing to analyse (no readable run); the message names what and the fix."""


def missing() -> str | None:
    """Why change points cannot be found here (ruptures not installed), or None."""
    import importlib.util
    if importlib.util.find_spec("ruptures") is None:
        return "change points need the Python package 'ruptures'; pip install -r requirements.txt"
    return None


# --------------------------------------------------------------------------- change points

def change_points(values: Sequence[float], mode: str = "relative", alpha: float = ALPHA,
                  min_change: float | None = None, floor: float = 0.0) -> list[tuple[int, float]]:
    """The indices where a new level starts in VALUES, each with its p-value: PELT proposes, Student's
    t-test between neighbouring segments keeps (Bonferroni-corrected for the split's possible places;
    the weakest is dropped until every one stands)."""
    import ruptures
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if mode == "relative":
        x = np.log(x)
    n = len(x)
    if n < 2 * MIN_SIZE:
        return []
    noise = float(np.median(np.abs(np.diff(x)))) / (0.6745 * math.sqrt(2))  # robust sd of the noise
    noise = max(noise, 1e-3)  # 0.1% (a log) or 0.1 point: flat figures still pay a penalty per change
    proposed = ruptures.Pelt(model="l2", min_size=MIN_SIZE, jump=1).fit(x.reshape(-1, 1)) \
        .predict(pen=PENALTY * noise ** 2 * math.log(n))[:-1]
    smallest = MIN_CHANGE[mode] if min_change is None else min_change
    kept = list(proposed)
    while kept:
        bounds = [0, *kept, n]
        tests = []
        for i, cp in enumerate(kept):
            before, after = x[bounds[i]:cp], x[cp:bounds[i + 2]]
            # Bonferroni over the places a change could split this span: the split is the best of
            # them, so its own p-value overstates how rare it is (noise then passes for a step).
            places = bounds[i + 2] - bounds[i] - 2 * MIN_SIZE + 1
            p = min(1.0, _t_test_p(before, after, stats) * places)
            size = _effect(np.asarray(values[bounds[i]:cp]), np.asarray(values[cp:bounds[i + 2]]), mode)
            stands = (p < alpha and abs(size) > smallest * (1 + 1e-9)  # "more than": 2% exactly does not stand
                      and _absolute(values, bounds[i], cp, bounds[i + 2]) > floor)
            tests.append((stands, p, cp))
        if all(t[0] for t in tests):
            return [(cp, p) for _, p, cp in tests]
        weakest = max((t for t in tests if not t[0]), key=lambda t: t[1])
        kept.remove(weakest[2])
    return []


def _t_test_p(a: np.ndarray, b: np.ndarray, stats: Any) -> float:
    """The two-sided p-value of Student's t-test with pooled variance: a benchmark's noise is the same
    (multiplicative) noise on both sides of a change, so two runs on one side still carry weight,
    where Welch's test leaves them about one degree of freedom. Two flat segments differ surely (0)
    or not at all (1)."""
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 0.0 if a[0] != b[0] else 1.0
    with warnings.catch_warnings():  # nearly equal runs: scipy warns of precision; the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(a, b, equal_var=True).pvalue)
    return 1.0 if math.isnan(p) else p


def _effect(before: np.ndarray, after: np.ndarray, mode: str) -> float:
    """The change from BEFORE to AFTER: relative (of the medians) or in points (fractions)."""
    return _change(float(np.median(before)), float(np.median(after)), mode)


def _change(before: float, after: float, mode: str) -> float:
    return after / before - 1 if mode == "relative" else after - before


def _absolute(values: Sequence[float], start: int, cp: int, end: int) -> float:
    return abs(float(np.median(values[cp:end])) - float(np.median(values[start:cp])))


# --------------------------------------------------------------------------- series

@dataclass
class Series:
    """Runs that measure the same thing: one machine, the same comparable settings."""
    key: tuple
    settings: dict[str, Any]
    machine: str
    runs: list[Run] = field(default_factory=list)


@dataclass(frozen=True)
class Change:
    series: int
    case: str
    metric: str
    at: int            # the first run of the new level (index into the series' runs)
    before: float      # medians of the levels on either side
    after: float
    p: float
    what_changed: tuple[str, ...]

    @property
    def size(self) -> float:
        return _change(self.before, self.after, METRICS[self.metric].mode)

    def size_text(self, digits: int = 1) -> str:
        """The change as it reads: +25.6% (relative metrics) or -4.0 pt (accuracy)."""
        if METRICS[self.metric].mode == "relative":
            return f"{self.size:+.{digits}%}"
        return f"{100 * self.size:+.1f} pt"


def load(paths: Iterable[str], lines: list[str]) -> list[Run]:
    """Every readable run under PATHS (files, or folders of *.json), sorted by its own time; a file
    that cannot be read, or holds no time, is refused with one line in LINES."""
    runs, seen = [], {}
    for path in _expand(paths, lines):
        try:
            run = read_run(path)
        except ResultsError as e:
            lines.append(f"refused: {e}")
            continue
        when = _when(run)
        if when is None:
            lines.append(f"refused: {path}: no 'datetime' (when it ran): rerun it, or leave the file out")
        elif when in seen:
            lines.append(f"refused: {path}: the same session as {seen[when]} (same datetime): leave one out")
        else:
            seen[when] = path
            runs.append(run)
    return sorted(runs, key=_when)


def _expand(paths: Iterable[str], lines: list[str]) -> list[Path]:
    out = []
    for given in paths:
        p = Path(given).expanduser()
        if p.is_dir():  # run files, not the timelines kept beside them (NAME.telemetry/, .benchmarks/telemetry/)
            found = sorted(q for q in p.rglob("*.json") if q.is_file() and not q.name.startswith(".")
                           and not any(part.endswith("telemetry") for part in q.relative_to(p).parts[:-1]))
            out += found
            if not found:
                lines.append(f"refused: {p}: a folder with no run file (*.json) in it")
        elif p.is_file():
            out.append(p)
        else:
            lines.append(f"refused: {p}: no such file or folder")
    return out


def _when(run: Run) -> datetime | None:
    return instant(run.datetime)


def split(runs: list[Run]) -> list[Series]:
    """RUNS into series of comparable runs, in order of their first run."""
    series: dict[tuple, Series] = {}
    for run in runs:
        settings = {k: run.bench_config.get(k) for k in COMPARABLE}
        key = (run.machine, *map(repr, settings.values()))
        series.setdefault(key, Series(key, settings, run.machine or "unknown machine")).runs.append(run)
    return list(series.values())


def _apart(series: list[Series]) -> list[str]:
    """The keys whose values tell the series apart (machine and comparable settings)."""
    return [k for k in ("machine", *COMPARABLE)
            if len({(s.machine if k == "machine" else repr(s.settings[k])) for s in series}) > 1]


def series_title(s: Series, series: list[Series]) -> str:
    """SERIES' machine, profile, setup and precision, and whatever else sets it apart from the others."""
    keys = dict.fromkeys(["profile", "setup", "precision", *(k for k in _apart(series) if k != "machine")])
    return s.machine + ", " + ", ".join(f"{k} {s.settings.get(k)}" for k in keys)


def split_lines(series: list[Series]) -> list[str]:
    """How the runs were split: per series, what sets it apart from the others."""
    if len(series) < 2:
        return []
    keys = _apart(series)
    out = [f"split into {len(series)} series of comparable runs, by {', '.join(keys)}:"]
    for i, s in enumerate(series, 1):
        what = ", ".join(f"{k}={s.machine if k == 'machine' else s.settings[k]}" for k in keys)
        out.append(f"  series {i}: {len(s.runs)} run(s), {what}")
    return out


# --------------------------------------------------------------------------- per case and metric

def values_of(series: Series, case: str, metric: Metric, lines: list[str],
              allow_disturbed: bool = False) -> list[tuple[int, float]]:
    """(run index, value) of CASE's METRIC along SERIES: runs where the case failed, was disturbed
    (unless ALLOW_DISTURBED) or lacks the figure are left out (the first two with a line each)."""
    cases = [run.by_name().get(case) for run in series.runs]
    if metric.name == "peak_memory":
        kind = same_memory_kind([c for c in cases if c is not None])
        extract = (lambda c: c.peak_memory(kind))
    else:
        extract = metric.extract
    out = []
    for i, c in enumerate(cases):
        if c is None:
            continue
        if c.failed or (c.disturbance[0] and not allow_disturbed):
            why = "failed" if c.failed else "disturbed: " + "; ".join(c.disturbance[1])
            line = f"left out: {case} in run {i + 1} ({series.runs[i].path}): {why}"
            if line not in lines:
                lines.append(line)
            continue
        v = extract(c)
        if v is not None and math.isfinite(v) and (metric.mode != "relative" or v > 0):
            out.append((i, float(v)))
    return out


def find(series: list[Series], alpha: float, metrics: Sequence[str], lines: list[str],
         allow_disturbed: bool = False) -> list[Change]:
    """Every change point in every series, case and metric, with what changed there."""
    changes = []
    for s_index, s in enumerate(series):
        names = sorted({c.name for run in s.runs for c in run.cases if c.key is not None})
        for case in names:
            for name in metrics:
                metric = METRICS[name]
                points = values_of(s, case, metric, lines, allow_disturbed)
                vals = [v for _, v in points]
                found = change_points(vals, metric.mode, alpha, floor=metric.floor)
                bounds = [0, *(at for at, _ in found), len(vals)]
                for i, (at, p) in enumerate(found):  # each level: from the change before to the one after
                    first, last_before = points[at][0], points[at - 1][0]
                    changes.append(Change(s_index, case, name, first, float(np.median(vals[bounds[i]:at])),
                                          float(np.median(vals[at:bounds[i + 2]])), p,
                                          tuple(what_changed(s.runs[last_before], s.runs[first], case))))
    return changes


# --------------------------------------------------------------------------- attribution

def what_changed(a: Run, b: Run, case: str) -> list[str]:
    """What differs between runs A and B that could move CASE's figures: the machine's packages,
    builds, driver and hardware, the commit, the settings, and what the framework read back."""
    out = []
    ma, mb = _flat(a.machine_info), _flat(b.machine_info)
    out += _diff(ma, mb, lambda k: not any(_match(k, pat) for pat in MACHINE_IGNORE))
    out += _diff({"commit": _commit(a)}, {"commit": _commit(b)})
    out += _diff(_flat(a.bench_config, "setting"), _flat(b.bench_config, "setting"))
    xa, xb = a.by_name().get(case), b.by_name().get(case)
    if xa is not None and xb is not None:
        keep = ("framework_version", "cpu_threads", "device_name", "distributed", "start", "input_transform")
        out += _diff(_flat({k: xa.extra_info.get(k) for k in keep}, "case"),
                     _flat({k: xb.extra_info.get(k) for k in keep}, "case"))
        out += _diff(_flat(xa.settings, "read back"), _flat(xb.settings, "read back"))
    return out or ["nothing recorded changed between these two runs (something unrecorded did: the machine's "
                   "load, its clocks, another tenant)"]


def _commit(run: Run) -> str | None:
    info = run.commit_info or {}
    cid = info.get("id")
    return None if cid is None else str(cid)[:12] + (" (dirty)" if info.get("dirty") else "")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, list) and d and all(isinstance(v, dict) for v in d):
        out = {}
        for i, v in enumerate(d):
            out.update(_flat(v, f"{prefix}[{i}]"))
        return out
    return {prefix: d}


def _match(key: str, pattern: str) -> bool:
    parts, pats = key.split("."), pattern.split(".")
    return len(parts) >= len(pats) and all(p == "*" or p == q for p, q in zip(pats, parts))


def _diff(a: dict[str, Any], b: dict[str, Any], keep: Any = None) -> list[str]:
    return [f"{k} {a.get(k)!r} → {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and (keep is None or keep(k))]


# --------------------------------------------------------------------------- the summary

def _fmt(value: float, metric: Metric) -> str:
    if metric.mode == "points":
        return f"{100 * value:.1f}%"
    if metric.unit == "B":
        return f"{value / 2**20:,.0f} MiB"
    return f"{value:.3g} {metric.unit}"


def _run_label(run: Run, index: int) -> str:
    when = _when(run)
    commit = _commit(run)
    return f"run {index + 1} ({when:%Y-%m-%d %H:%M} UTC{', ' + commit if commit else ''})"


def is_new(change: Change, series: list[Series]) -> bool:
    """A change point whose level starts within the newest NEW_RUNS runs of its series, in the series
    that holds the newest run of all: news of this run (another series' change is not)."""
    mine = series[change.series]
    newest = max((s.runs[-1] for s in series), key=_when)
    return mine.runs[-1] is newest and change.at >= len(mine.runs) - NEW_RUNS


def summary(series: list[Series], changes: list[Change], lines: list[str], alpha: float) -> list[str]:
    """The Markdown summary: per series, its runs and every change point with what changed there."""
    total = sum(len(s.runs) for s in series)
    out = ["## Benchmark history: change points", "",
           f"{total} run(s) in {len(series)} series; change points from ruptures (PELT), each kept at "
           f"p < {alpha:g} (Student's t-test between the levels) and a change over "
           f"{MIN_CHANGE['relative']:.0%} ({100 * MIN_CHANGE['points']:.0f} point for accuracy).", ""]
    out += [f"- {line.strip()}" for line in split_lines(series)]
    for i, s in enumerate(series):
        mine = [c for c in changes if c.series == i]
        first, last = _when(s.runs[0]), _when(s.runs[-1])
        out += ["", f"### Series {i + 1}: {series_title(s, series)}", "",
                f"{len(s.runs)} runs, {first:%Y-%m-%d} → {last:%Y-%m-%d}."]
        if len(s.runs) < 2 * MIN_SIZE:
            out.append(f"Too few runs to find a change point: it needs {MIN_SIZE} runs on each side "
                       f"({2 * MIN_SIZE} in all); the gate judges each run against the last ones meanwhile.")
            continue
        if not mine:
            out.append("No change point: every figure held its level over these runs.")
            continue
        out += ["", "| case | metric | at | before → after | change | p | what changed between the runs |",
                "|---|---|---|---|---:|---:|---|"]
        for c in sorted(mine, key=lambda c: (c.at, c.case, c.metric)):
            m = METRICS[c.metric]
            size = c.size_text()
            new = " **new**" if is_new(c, series) else ""
            out.append(f"| {c.case} | {c.metric} | {_run_label(s.runs[c.at], c.at)}{new} | {_fmt(c.before, m)} → "
                       f"{_fmt(c.after, m)} | {size} | {c.p:.1g} | {'; '.join(c.what_changed)} |")
    if lines:
        out += ["", "### Runs and cases left out", ""] + [f"- {line}" for line in lines]
    return out + [""]


# --------------------------------------------------------------------------- the command

def main(argv: list[str] | None = None, prog: str = "bench history") -> int:
    a = _parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    a.metric = list(dict.fromkeys(a.metric or METRICS_FOLLOWED))
    lines: list[str] = []
    if missing():
        print(f"{prog}: {missing()}", file=sys.stderr)
        return EXIT_CANNOT
    try:
        _check_out(a.out)
        series, changes = analyse(a.runs, a.alpha, a.metric, lines, a.allow_disturbed)
    except (HistoryError, OutputError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_CANNOT
    text = summary(series, changes, lines, a.alpha)
    print("\n".join(text))
    try:
        _write(a, series, changes, text)
    except OutputError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_CANNOT
    except OSError as e:  # --out or --summary that cannot take the file
        where = e.filename or a.summary or a.out
        print(f"{prog}: cannot write {where}: {e.strerror}; give a writable file or folder", file=sys.stderr)
        return EXIT_CANNOT
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for c in changes:
            if is_new(c, series):
                print(f"::warning title=Change point::{c.case} {c.metric}: {c.size_text()} from "
                      f"{_run_label(series[c.series].runs[c.at], c.at)}; changed: {'; '.join(c.what_changed)[:300]}")
    return EXIT_OK


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run files or folders of them (*.json), any order")
    p.add_argument("--out", metavar="DIR", help="write history.md and a figure per metric into DIR")
    p.add_argument("--summary", metavar="FILE",
                   help="append the Markdown summary to FILE (the workflow gives $GITHUB_STEP_SUMMARY; "
                        "empty: none, as an unset variable gives)")
    p.add_argument("--alpha", type=_alpha, default=ALPHA, help=f"a change point stands at p below this ({ALPHA:g})")
    p.add_argument("--allow-disturbed", action="store_true",
                   help="keep cases measured on a busy machine in the series (default: left out, one line each)")
    p.add_argument("--metric", action="extend", nargs="+", choices=METRICS_OFFERED, metavar="METRIC",
                   help=f"a gate metric to follow, repeatable ({', '.join(METRICS_OFFERED)}; default: all but "
                        f"{', '.join(m for m in METRICS_OFFERED if m not in METRICS_FOLLOWED)}, off by default as "
                        f"in the gate)")
    return p


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1e-9 <= value <= 0.1:
        raise argparse.ArgumentTypeError(f"{text}: must lie in [1e-09, 0.1] (a change point's p-value bound)")
    return value


def analyse(paths: Sequence[str], alpha: float, metrics: Sequence[str], lines: list[str],
            allow_disturbed: bool = False) -> tuple[list[Series], list[Change]]:
    """Load, split and search: the series and their change points (LINES: what was refused or left out)."""
    runs = load(paths, lines)
    if not runs:
        raise HistoryError("no run file could be read" + (f" ({lines[0]})" if lines else "")
                           + "; give run files written by this suite (pytest --benchmark-json or --benchmark-autosave)")
    return analyse_runs(runs, alpha, metrics, lines, allow_disturbed)


def analyse_runs(runs: Sequence[Run], alpha: float = ALPHA, metrics: Sequence[str] = METRICS_FOLLOWED,
                 lines: list[str] | None = None, allow_disturbed: bool = False) -> tuple[list[Series], list[Change]]:
    """RUNS (read already: the report's) in time order, split and searched."""
    lines = [] if lines is None else lines
    series = split(sorted((r for r in runs if _when(r) is not None), key=_when))
    if allow_disturbed:
        lines.append("--allow-disturbed: cases measured on a busy machine are in the series (marked nowhere else)")
    return series, find(series, alpha, metrics, lines, allow_disturbed)


def _check_out(out: str | None) -> None:
    """--out is checked before anything is read or drawn (OutputError: one line naming it)."""
    if out is not None:
        if not out.strip():
            raise OutputError("--out is empty; give a folder for the history")
        check_writable(Path(out).expanduser(), "--out")


def _write(a: argparse.Namespace, series: list[Series], changes: list[Change], text: list[str]) -> None:
    if a.out is not None:
        out = Path(a.out).expanduser()
        from .figures import plot_history
        files = [f for name in a.metric for f in plot_history(series, changes, name, out, a.allow_disturbed)]
        figures = ["", "Figures of this history: " + (", ".join(f"`{f}`" for f in files) or "none"), ""]
        write_text_atomic(out / "history.md", "\n".join(text + figures))
    if a.summary:
        with open(a.summary, "a") as f:  # the job summary is appended to, as GitHub's own steps do
            f.write("\n".join(text) + "\n")
