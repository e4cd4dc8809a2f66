"""The regression gate: `bench gate BASELINE.json [MORE-BASELINES.json ...] CANDIDATE.json`.

Compares pytest-benchmark JSON files (from --benchmark-json or the storage folder) case by case:
time, accuracy after fine-tuning, peak memory, time to first step, inter-epoch gap (throughput is
shown, not judged: it is the time's inverse). Energy per training image is off by default (a driver
update can move it): shown where both runs measured it, judged with --judge energy_per_image. A
change counts only beyond its limit *and* beyond what the measurement can show, by the rule each
verdict line names:

  one baseline     limit only (time, energy: plus a one-sided Mann-Whitney test on the saved rounds).
                   The weakest mode: nothing says how much identical runs differ between sessions.
  several (history) the baselines' own spread is the noise band: a change must exceed the limit and
                   2x the largest deviation the stored runs show from their median.
  accuracy         also a two-proportion test on the test-set size; the line says when the test set
                   is too small to resolve the limit.
  time to accuracy (--target-accuracy) wall seconds until the target; a candidate that never reaches
                   a target its baseline reached is a regression whatever the limit.

Rounds (--finetune-rounds, 3 in the seed profile) feed the tests: time's Mann-Whitney takes the
saved rounds (pytest-benchmark's, or the case's own record of them), accuracy is their median.

For gating an upgrade, `bench ab` (both environments in one session, rounds alternated) is stronger
than any stored baseline. Exit 0 pass, 1 regression, 2 cannot compare (bad file, machine or config
mismatch, cases missing from the candidate, a case disturbed by other load while it was timed).
"""
from __future__ import annotations

import argparse
import math
import os
import stat
import statistics
import sys
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Collection

from ..files import write_json_atomic
from ..registry import FRAMEWORKS
from ..settings import COMPARABLE
from . import stats
from .results import Case, ResultsError, Run, as_case, as_run, instant, read_run, same_memory_kind

PASS, REGRESSION, CANNOT_COMPARE = 0, 1, 2


class GateError(Exception):
    """The two runs cannot be compared; the message says why and what to do."""


@dataclass(frozen=True)
class Metric:
    name: str
    extract: Callable[[Case], float | None]
    better: str          # "lower" or "higher"
    mode: str            # "relative" (fraction of baseline) or "points" (absolute, x100)
    threshold: float
    unit: str
    floor: float = 0.0   # changes smaller than this (in the metric's own unit) never count
    judged: bool = True  # False: shown and exported, never a verdict (it restates another metric)
    source: str = ""     # where the number comes from, said beside the verdict
    default_on: bool = True  # False: judged only when the run asks (--judge, [gate] judge), else shown
    rounds: Callable[[Case], list[float]] | None = None  # the saved rounds one baseline's Mann-Whitney test takes
    reason: Callable[[Case], str | None] | None = None   # why a case lacks the figure (said when a side lacks it)


def _same_memory(metric: Metric, cases: list[Case]) -> Metric:
    """peak_memory as one quantity on every side: the framework's own peak where every run has it,
    else the process peak (a framework peak against a process peak compares two different things)."""
    kind = same_memory_kind(cases)
    return replace(metric, extract=lambda c: c.peak_memory(kind), source=f"memory.{kind}, last round")


def _time_to_accuracy(b: Case | dict) -> float | None:
    """`Case.time_to_accuracy` (kept for callers holding a benchmark dict)."""
    return as_case(b).time_to_accuracy


METRICS = {m.name: m for m in [
    Metric("time", lambda c: c.median, "lower", "relative", 0.10, "s", source="median of the rounds",
           rounds=lambda c: c.round_times),
    Metric("accuracy_after", lambda c: c.accuracy_after_median, "higher", "points", 2.0, "%",
           source="median of the rounds"),
    Metric("peak_memory", lambda c: c.peak_memory(), "lower", "relative", 0.10, "B", source="last round"),
    Metric("throughput", lambda c: c.train_images_per_s, "higher", "relative", 0.05, "img/s", judged=False,
           source="shown only: the inverse of time (judged there)"),
    Metric("time_to_first_step", lambda c: c.time_to_first_step, "lower", "relative", 0.25, "s", floor=0.05,
           source="last round"),
    Metric("inter_epoch_gap", lambda c: c.mean_gap, "lower", "relative", 0.25, "s", floor=0.05, source="last round"),
    Metric("time_to_accuracy", lambda c: c.time_to_accuracy, "lower", "relative", 0.10, "s", floor=0.05,
           source="wall seconds to --target-accuracy, last round"),
    # Off by default: a driver or firmware update moves it with no change in the software under test.
    # 10% as time's: NVML's counter and RAPL repeat within 1-5% between identical runs, and joules are
    # watts x seconds, so the figure carries the time's noise as well.
    Metric("energy_per_image", lambda c: c.energy_per_image, "lower", "relative", 0.10, "J", default_on=False,
           source="energy.per_image_j: the fine-tune's joules (the round with the median joules) per training image",
           rounds=lambda c: c.energy_rounds, reason=lambda c: c.energy_reason),
]}
OFF_BY_DEFAULT = tuple(m.name for m in METRICS.values() if m.judged and not m.default_on)  # --judge's choices


def check_judge(names: Collection[str], where: str) -> None:
    """Only a metric off by default can be turned on (GateError otherwise): every other one is judged
    always, and a misspelt name must not leave the metric silently unjudged."""
    for name in names:
        if name not in OFF_BY_DEFAULT:
            raise GateError(f"{where} {name!r}: choose from {', '.join(OFF_BY_DEFAULT)} (the metrics off by "
                            f"default; every other metric is judged always)")


def run_metrics(judge: Collection[str] = ()) -> dict[str, Metric]:
    """METRICS as one run judges them: a metric off by default is judged only when JUDGE names it
    (--judge, [gate] judge); otherwise it is shown, with a note saying how to judge it."""
    return {name: m if m.default_on or name in judge else
            replace(m, judged=False, source=f"{m.source}; shown only (off by default): --judge {name} to judge it")
            for name, m in METRICS.items()}


HARDWARE_KEYS = ("gpu_name", "cpu_model")
VERSION_KEYS = tuple(dict.fromkeys(p for f in FRAMEWORKS.values() for p in f.packages))  # keras once


@dataclass
class Verdict:
    case: str
    metric: str
    baseline: float
    candidate: float
    change: float        # relative (fraction) or points, signed so that > 0 is worse
    threshold: float
    verdict: str         # ok, improved, REGRESSION, shown (not judged)
    note: str = ""
    rule: str = ""       # what decided: the limit alone, a test, a noise band

    @property
    def judged(self) -> bool:
        """A verdict, not a figure shown only (whether a metric is judged can differ from run to run)."""
        return self.verdict != "shown"

    @property
    def delta(self) -> float:
        """The signed change of the value itself (relative, or points): -39.5% = it fell."""
        m = METRICS[self.metric]
        if m.mode == "points":
            return (self.candidate - self.baseline) * 100
        return (self.candidate - self.baseline) / self.baseline if self.baseline else math.inf


@dataclass
class Thresholds:
    """The run's limits, and the metrics off by default that it judges: what --threshold, --judge and
    --config set."""
    defaults: dict[str, float] = field(default_factory=dict)
    per_test: dict[str, dict[str, float]] = field(default_factory=dict)
    judge: set[str] = field(default_factory=set)  # metrics off by default that this run judges

    def metrics(self) -> dict[str, Metric]:
        return run_metrics(self.judge)

    def get(self, case: str, metric: str) -> float:
        for table in (self.per_test.get(case, {}), self.defaults):
            if metric in table:
                return table[metric]
        return METRICS[metric].threshold

    def set(self, spec: str) -> None:
        """METRIC=VALUE for all cases, or TEST:METRIC=VALUE for one (TEST as pytest names it)."""
        try:
            target, value = spec.rsplit("=", 1)
            case, _, metric = target.rpartition(":")
            value_f = float(value)
        except ValueError:
            raise GateError(f"--threshold {spec!r}: expected METRIC=VALUE or TEST:METRIC=VALUE") from None
        self._put(case, metric, value_f, f"--threshold {spec!r}")

    def _put(self, case: str, metric: str, value: float, where: str) -> None:
        if metric not in METRICS:
            raise GateError(f"{where}: unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        if not (math.isfinite(value) and value >= 0):
            raise GateError(f"{where}: threshold must be a number >= 0")
        (self.per_test.setdefault(case, {}) if case else self.defaults)[metric] = value

    def load(self, path: str) -> None:
        """TOML: [thresholds] METRIC = VALUE, [tests."TEST"] METRIC = VALUE, and [gate] judge = [METRIC, ...]."""
        try:
            doc = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise GateError(f"{path}: cannot read thresholds ({e})") from None
        self._load_judge(doc.get("gate"), f"{path} [gate]")
        tables = [("", doc.get("thresholds") or {}, f"{path} [thresholds]")]
        tests = doc.get("tests") or {}
        if not isinstance(tests, dict):
            raise GateError(f"{path}: 'tests' must be a table of [tests.\"TEST\"] tables")
        tables += [(case, table, f"{path} [tests.{case!r}]") for case, table in tests.items()]
        for case, table, where in tables:
            if not isinstance(table, dict):
                raise GateError(f"{where}: must be a table of METRIC = NUMBER")
            for metric, value in table.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise GateError(f"{where}: {metric} = {value!r}: the threshold must be a number")
                self._put(case, metric, float(value), where)

    def _load_judge(self, table: object, where: str) -> None:
        """[gate] judge = ["energy_per_image"]: the config's --judge."""
        if table is None:
            return
        example = f'judge = ["{OFF_BY_DEFAULT[0]}"]'
        if not isinstance(table, dict):
            raise GateError(f"{where}: must be a table holding {example}")
        unknown = sorted(table.keys() - {"judge"})
        if unknown:
            raise GateError(f"{where}: unknown key {unknown[0]!r}; the table holds {example}")
        names = table.get("judge", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise GateError(f"{where} judge = {names!r}: must be a list of metric names, {example}")
        check_judge(names, f"{where} judge:")
        self.judge.update(names)


def mismatches(base: Run | dict, cand: Run | dict, allow: str) -> list[str]:
    """What differs between the runs' machines and configs, minus what ALLOW permits. A run recorded
    before a setting existed ran with settings.ABSENT (the upgrade on load fills it in)."""
    base, cand = as_run(base), as_run(cand)
    if allow == "all":
        return []
    bm, cm, bc, cc = base.machine_info, cand.machine_info, base.bench_config, cand.bench_config
    out = [f"machine_info.{key}: {bm.get(key)!r} vs {cm.get(key)!r}" for key in HARDWARE_KEYS
           if bm.get(key) != cm.get(key)]
    out += [f"bench_config.{key}: {bc.get(key)!r} vs {cc.get(key)!r}" for key in COMPARABLE
            if bc.get(key) != cc.get(key)]
    bs, cs = _checkpoints(base), _checkpoints(cand)
    out += [f"{name}: started from another weights file (sha256 {bs[name]} vs {cs[name]}): accuracy would compare "
            f"the checkpoints, not the upgrade" for name in sorted(bs.keys() & cs.keys()) if bs[name] != cs[name]]
    if allow == "none":
        bp, cp = bm.get("packages") or {}, cm.get("packages") or {}
        out += [f"machine_info.packages.{key}: {bp.get(key)!r} vs {cp.get(key)!r}" for key in VERSION_KEYS
                if bp.get(key) != cp.get(key)]
    return out


def _checkpoints(run: Run) -> dict[str, str]:
    """Per case, the sha256 of the weights file it started from (cases that loaded one)."""
    return {c.name: c.start_sha256 for c in run.cases if c.start_sha256 is not None}


def _min_p(n1: int, n2: int) -> float:
    return 1 / math.comb(n1 + n2, n1)  # integer true division: no float overflow at hundreds of rounds


def _significant(p: float, alpha: float) -> bool:
    """p <= alpha, as the test's definition has it (3 vs 3 rounds reach exactly 0.05), with room for
    the last bit of a float p."""
    return p <= alpha * (1 + 1e-9)


def compare_metric(case: str, metric: Metric, bases: list[Case], c: Case, threshold: float, alpha: float
                   ) -> Verdict | None:
    """One metric of one case: the candidate C against the baselines BASES (one, or a history)."""
    values = [v for v in (metric.extract(b) for b in bases) if v is not None]
    vc = metric.extract(c)
    if not values or vc is None:
        return None
    if metric.name == "time_to_accuracy":
        settled = _target_verdict(case, metric, values, vc, threshold)
        if settled is not None:
            return settled
        values = [v for v in values if math.isfinite(v)]  # the baselines that reached it set the time
    vb = statistics.median(values)
    if metric.mode == "points":
        worse = (vb - vc) * 100 if metric.better == "higher" else (vc - vb) * 100
    else:
        diff = (vc - vb) if metric.better == "lower" else (vb - vc)
        worse = diff / vb if vb else (0.0 if diff == 0 else math.inf)
    notes = [metric.source] if metric.source else []
    if metric.name == "energy_per_image":
        notes += _meters(bases, c)
    band, rule, shown = _noise_rule(metric, values, bases[0], c, threshold, alpha, worse, notes)
    beyond = worse > threshold and abs(vc - vb) > metric.floor and shown
    if metric.name == "accuracy_after":
        test, resolved = _accuracy_test(bases, c, vb, vc, threshold, alpha, notes)
        rule, beyond = rule + test, beyond and resolved
    if not metric.judged:
        verdict, rule = "shown", ""
    else:
        verdict = "REGRESSION" if beyond else ("improved" if worse < -band else "ok")
    return Verdict(case, metric.name, vb, vc, worse, threshold, verdict, "; ".join(notes), rule)


def _meters(bases: list[Case], c: Case) -> list[str]:
    """A note when the runs' energy meters differ (NVML's counter, NVML's power integrated, RAPL): the
    change may then be the meter's, not the software's."""
    def meter(x: Case) -> str | None:
        return (x.energy or {}).get("source")
    base_meters = sorted({m for m in map(meter, bases) if m is not None})
    if base_meters in ([], [meter(c)]):
        return []
    return [f"measured by other meters: {', '.join(base_meters)} (baseline) vs {meter(c)} (candidate): the change "
            f"may be the meter's"]


def _target_verdict(case: str, metric: Metric, values: list[float], vc: float, threshold: float) -> Verdict | None:
    """time_to_accuracy when a side missed the target (inf) or met it before training; None: both
    reached it, judged as a time by the baselines that reached it."""
    reached = [v for v in values if math.isfinite(v)]
    vb = statistics.median(values)
    if math.isinf(vc) and reached:  # any baseline (or the last) reached it: a miss is a regression
        return Verdict(case, metric.name, statistics.median(reached), vc, math.inf, threshold, "REGRESSION",
                       f"the candidate never reached the target; {len(reached)} of {len(values)} baseline(s) did",
                       "target missed")
    if math.isinf(vc):
        return Verdict(case, metric.name, vb, vc, 0.0, threshold, "ok", "neither reached the target", "missed both")
    if not reached:
        return Verdict(case, metric.name, vb, vc, -math.inf, threshold, "improved",
                       "the candidate reached a target no baseline reached", "target reached")
    if min(reached) == 0 or vc == 0:
        return Verdict(case, metric.name, statistics.median(reached), vc, 0.0, threshold, "ok",
                       "the target was met before training: nothing to time (choose a target above the "
                       "accuracy before)", "not judged")
    return None


def _noise_rule(metric: Metric, values: list[float], base: Case, c: Case, threshold: float, alpha: float,
                worse: float, notes: list[str]) -> tuple[float, str, bool]:
    """(band, rule, whether the measurement shows the change): a history's own spread as the noise
    band; one baseline: a Mann-Whitney test on the saved rounds (time, energy), else the limit alone."""
    if len(values) >= 2:  # history: what identical runs already show
        spread = stats.noise(values, relative=metric.mode == "relative") * (100 if metric.mode == "points" else 1)
        band = max(threshold, stats.NOISE_FACTOR * spread)
        shown = f"{band:.1f} pt" if metric.mode == "points" else f"{band:.1%}"
        return band, f"limit and noise band {shown} ({len(values)} runs)", worse > band
    if metric.rounds is None:
        return threshold, "limit only (one baseline)", True
    db, dc = metric.rounds(base), metric.rounds(c)
    if len(db) >= 2 and len(dc) >= 2 and _significant(_min_p(len(db), len(dc)), alpha):
        from scipy.stats import mannwhitneyu
        worse_side = "greater" if metric.better == "lower" else "less"
        p = float(mannwhitneyu(dc, db, alternative=worse_side).pvalue)
        notes.append(f"p={p:.3g}, {len(db)} vs {len(dc)} rounds")
        return threshold, "limit + Mann-Whitney (one baseline)", _significant(p, alpha)
    return threshold, "limit only (one baseline" + (", too few rounds)" if db and dc else ", no saved rounds)"), True


def _accuracy_test(bases: list[Case], c: Case, vb: float, vc: float, threshold: float, alpha: float,
                   notes: list[str]) -> tuple[str, bool]:
    """(the rule's words, whether a drop is significant): the two-proportion test on the test sets,
    and a note when the test set is too small to resolve the limit; ("", True) without test sizes."""
    n_b, n_c = [b.test_size for b in bases], c.test_size
    if not all(n is not None and n > 0 for n in [*n_b, n_c]):
        return "", True
    p = stats.accuracy_drop_p(vb, int(statistics.median(n_b)), vc, n_c)
    resolves = stats.resolvable_drop(vb, n_c, alpha) * 100
    if resolves > threshold:
        notes.append(f"{n_c} test images resolve drops of {resolves:.1f} pt or more, not {threshold:g} pt: "
                     f"use a larger --test-size to gate accuracy this finely")
    return f" + two-proportion test (p={p:.3g}, n={n_c})", p < alpha


def compare(bases: Run | dict | list[Run | dict], cand: Run | dict, thresholds: Thresholds, alpha: float = 0.05
            ) -> tuple[list[Verdict], list[str], list[str]]:
    """Verdicts for every case in the candidate and the (last) baseline, and the cases only in the
    baseline / candidate. BASES: one run, or several (history, oldest first)."""
    bases = [bases] if isinstance(bases, (dict, Run)) else bases
    per_run = [as_run(base).by_name() for base in bases]
    bb, cb = per_run[-1], as_run(cand).by_name()
    verdicts, metrics = [], thresholds.metrics()
    for case in sorted(bb.keys() & cb.keys()):
        history = [run[case] for run in per_run if case in run and not run[case].failed] or [bb[case]]
        for metric in metrics.values():
            if metric.name == "peak_memory":
                metric = _same_memory(metric, [*history, cb[case]])
            v = compare_metric(case, metric, history, cb[case], thresholds.get(case, metric.name), alpha)
            if v is not None:
                verdicts.append(v)
    return verdicts, sorted(bb.keys() - cb.keys()), sorted(cb.keys() - bb.keys())


def unreadable_cases(base: Run | dict, cand: Run | dict, judge: Collection[str] = ()
                     ) -> tuple[list[str], list[str], list[str]]:
    """Cases whose test failed in the candidate (never a pass); cases whose baseline test failed (no
    reference to compare with); judged metrics measured on one side only, and a metric JUDGE turned on
    that no case measured at all (asked for by name, it must not pass unjudged)."""
    bb, cb = as_run(base).by_name(), as_run(cand).by_name()
    common = sorted(bb.keys() & cb.keys())
    failed_now, failed_before, missing = [], [], []
    for case in common:
        if cb[case].failed:
            failed_now.append(case)
        if bb[case].failed:
            failed_before.append(f"{case}: its test failed in the baseline; record a baseline whose tests pass")
    for metric in (m for m in run_metrics(judge).values() if m.judged):
        seen = False
        for case in common:
            here, there = metric.extract(bb[case]) is not None, metric.extract(cb[case]) is not None
            seen = seen or here or there
            if here != there:  # either way round, a metric judged on one side only is not judged at all
                had, lacks = ("baseline", "candidate") if here else ("candidate", "baseline")
                why = metric.reason(cb[case] if here else bb[case]) if metric.reason else None
                missing.append(f"{case}: {metric.name} measured in the {had}, not (null) in the {lacks}"
                               + (f" ({why})" if why else ""))
        if metric.name in judge and common and not seen:
            reasons = [(case, metric.reason(cb[case])) for case in common] if metric.reason else []
            first = next((f" ({case} in the candidate: {why})" for case, why in reasons if why), "")
            missing.append(f"{metric.name}: asked for (--judge, [gate] judge), but measured in neither run{first}")
    return failed_now, failed_before, missing


def _fmt(value: float, metric: Metric) -> str:
    if math.isinf(value):
        return "missed"
    if metric.unit == "%":
        return f"{value * 100:.1f}%"
    if metric.unit == "B":
        return f"{value / 2**20:.1f} MiB"
    return f"{value:.4g} {metric.unit}"


def format_table(verdicts: list[Verdict]) -> str:
    """Signed changes of the values themselves; the limit carries the direction that is worse."""
    lines = []
    for case in dict.fromkeys(v.case for v in verdicts):
        lines += ["", case, f"  {'metric':<20} {'baseline':>14} {'candidate':>14} {'change':>10} {'worse if':>10}  "
                            f"verdict (rule)"]
        for v in (v for v in verdicts if v.case == case):
            m = METRICS[v.metric]
            sign = "+" if m.better == "lower" else "-"
            change = f"{v.delta:+.1f} pt" if m.mode == "points" else f"{v.delta:+.1%}" if math.isfinite(v.delta) else "–"
            limit = f"{sign}{v.threshold:.1f} pt" if m.mode == "points" else f"{sign}{v.threshold:.0%}"
            if not v.judged:
                limit = "–"
            tail = "".join(f"  [{x}]" for x in (v.rule, v.note) if x)
            lines.append(f"  {v.metric:<20} {_fmt(v.baseline, m):>14} {_fmt(v.candidate, m):>14} {change:>10} "
                         f"{limit:>10}  {v.verdict}{tail}")
    return "\n".join(lines)


def github_entries(cand: Run | dict) -> tuple[list[dict], list[dict]]:
    """github-action-benchmark 'customSmallerIsBetter' and 'customBiggerIsBetter' entries."""
    smaller, bigger = [], []
    for c in as_run(cand).cases:
        for metric in METRICS.values():
            value = metric.extract(c)
            if value is None or not math.isfinite(value):  # a missed target has no value to chart
                continue
            unit = {"%": "fraction"}.get(metric.unit, metric.unit)
            entry = dict(name=f"{c.name} {metric.name}", unit=unit, value=value)
            (smaller if metric.better == "lower" else bigger).append(entry)
    return smaller, bigger


MISMATCH_CHOICES = ("none", "versions", "all")
ALPHA_RANGE = (1e-4, 0.5)  # inclusive: see --alpha's help


def check_alpha(alpha: float) -> None:
    """--alpha is the chance of calling identical runs a regression: below 1e-4 neither the rounds'
    test nor the accuracy test of any run here reaches it (nothing would ever be flagged); above 0.5 a one-sided test flags a change that is more
    likely noise than not; NaN compares false with everything."""
    low, high = ALPHA_RANGE
    if not (math.isfinite(alpha) and low <= alpha <= high):
        raise GateError(f"--alpha {alpha:g}: must be a significance level in [{low:g}, {high:g}] (0.05 is usual): "
                        f"below {low:g} no test these runs' rounds and test sets allow can reach it, so no change "
                        f"would ever be flagged; above 0.5 noise is more often flagged than not")


def disturbed_cases(paths: list[str], runs: list[Run], cand_path: str, cand: Run) -> tuple[list[str], list[str]]:
    """(disturbed, unmeasured): for every case the gate compares (in the candidate and the last
    baseline), each run holding it in which other load crossed the threshold while it was timed:
    '<file> <case>: <first reason>'; and the files with compared cases whose disturbance was not
    measured (runs recorded before it was)."""
    compared = cand.by_name().keys() & runs[-1].by_name().keys()
    disturbed, unmeasured = [], []
    for path, run in [*zip(paths, runs), (cand_path, cand)]:
        blind = 0
        for c in (c for c in run.cases if c.name in compared):
            status, reasons = c.disturbance
            if status:
                disturbed.append(f"{path} {c.name}: {reasons[0]}")
            blind += status is None
        if blind:
            unmeasured.append(f"{path}: {blind} compared case(s) without a disturbance record (a run from before it "
                              f"was recorded, or no CPU figures): other load on the machine was not measured")
    return list(dict.fromkeys(disturbed)), list(dict.fromkeys(unmeasured))  # a file given twice: said once


def _stamp(value: object) -> str | None:
    """pytest-benchmark's session time as one instant (UTC, to the microsecond), however it is written;
    a text that is no time on the calendar stands for itself."""
    t = instant(value)
    if t is not None:
        return t.replace(tzinfo=None).isoformat()
    return value.strip() if isinstance(value, str) and value.strip() else None


def same_sessions(paths: list[str], bases: list[Run], cand_path: str, cand: Run) -> None:
    """In history mode (two baselines or more), refuse a baseline that is the candidate's own session
    (its --benchmark-json beside its autosave, or a copy: it widens the noise band around itself and
    once hid a 100x slowdown) or one session given twice (it claims a band of no noise). A session is
    its file, the instant pytest-benchmark stamped it with (`datetime`, in any time zone), or its
    figures: every case's rounds to the last digit (no two sessions time alike). One baseline that
    is the candidate compares a run with itself: allowed, it hides nothing."""
    if len(bases) < 2:
        return
    seen: dict[object, str] = {}
    for path, run in [*zip(paths, bases), (cand_path, cand)]:
        keys = [("file", os.path.realpath(path)),
                ("the same figures", tuple(sorted((c.name, tuple(c.round_times) or c.median) for c in run.cases)))]
        if _stamp(run.datetime):
            keys.append(("datetime", _stamp(run.datetime)))
        for kind, key in keys:
            if (kind, key) in seen:
                what = "the candidate's own session" if path == cand_path else "a session given twice"
                said = kind if kind == "the same figures" else f"{kind} {key!r:.80}"
                raise GateError(f"{seen[(kind, key)]} and {path} hold the same session ({said}): in a history, "
                                f"{what} is no evidence of the noise; give each stored session once, and the "
                                f"candidate's only as the candidate")
            seen[(kind, key)] = path


def _not_a_file(path: Path) -> str | None:
    """What PATH is when it exists and is no regular file: the atomic write renames over it, and a
    device or FIFO replaced by a file is never what was meant."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    return "a folder" if stat.S_ISDIR(mode) else "a device, FIFO or socket, not a file"


def _bare_allow_mismatch(argv: list[str]) -> list[str]:
    """`--allow-mismatch` given bare means 'all'. argparse's optional value would swallow the next
    word (`--allow-mismatch base.json cand.json` took base.json as the value): say it explicitly."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--allow-mismatch" and (i + 1 == len(out) or out[i + 1] not in MISMATCH_CHOICES):
            out[i] = "--allow-mismatch=all"
    return out


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("baseline", nargs="+", help="one run, or several stored runs of the same configuration "
                                                "(oldest first): their spread becomes the noise band")
    p.add_argument("candidate")
    p.add_argument("--threshold", action="append", default=[], metavar="[TEST:]METRIC=VALUE",
                   help="relative for time/peak_memory/throughput/time_to_first_step/inter_epoch_gap/"
                        "time_to_accuracy/energy_per_image "
                        "(0.10 = 10%%), percentage points for accuracy_after")
    p.add_argument("--judge", action="append", default=[], metavar="METRIC",
                   help=f"judge a metric that is off by default, repeatable ({', '.join(OFF_BY_DEFAULT)}: a driver "
                        f"update can move it); off, it is shown where both runs measured it and never refuses a run")
    p.add_argument("--config", help="TOML file: [thresholds] and [tests.\"TEST\"] tables, and [gate] judge = "
                                    "[METRIC, ...] (as --judge)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="significance level of the time and accuracy tests, in [0.0001, 0.5] (0.05): the chance "
                        "of calling identical runs a regression; below, no test of these runs could reach it, above "
                        "0.5 noise is flagged more often than not")
    p.add_argument("--allow-mismatch", default="none", choices=MISMATCH_CHOICES,
                   help="compare anyway: 'versions' lets framework versions differ (an upgrade), "
                        "'all' (the default when given bare) also hardware and config")
    p.add_argument("--allow-missing", action="store_true", help="cases missing from the candidate are not an error")
    p.add_argument("--allow-disturbed", action="store_true",
                   help="judge cases that other load on the machine disturbed while they were timed (their "
                        "extra_info.disturbance), with a warning line each; without it such a case in the candidate "
                        "or a baseline is cannot compare (exit 2)")
    p.add_argument("--github-json", metavar="OUT", help="write github-action-benchmark JSON: OUT "
                   "(customSmallerIsBetter) and OUT with .bigger before .json (customBiggerIsBetter)")
    return p


def _load(a: argparse.Namespace) -> tuple[list[Run], Run, Thresholds]:
    """The runs and thresholds the arguments name, or GateError / ResultsError: they cannot be compared."""
    check_alpha(a.alpha)
    thresholds = Thresholds()
    if a.config:
        thresholds.load(a.config)
    for spec in a.threshold:
        thresholds.set(spec)
    check_judge(a.judge, "--judge")
    thresholds.judge.update(a.judge)
    bases, cand = [read_run(b) for b in a.baseline], read_run(a.candidate)
    same_sessions(a.baseline, bases, a.candidate, cand)
    problems = [f"{path}: {p}" if len(bases) > 1 else p for path, b in zip(a.baseline, bases)
                for p in mismatches(b, cand, a.allow_mismatch)]
    if problems:
        raise GateError("the runs are not comparable (pass --allow-mismatch versions for an upgrade, "
                        "--allow-mismatch to force):\n  " + "\n  ".join(problems))
    return bases, cand, thresholds


@dataclass
class Outcome:
    """What the comparison found, as the gate prints it and decides its exit code from it."""
    verdicts: list[Verdict]
    removed: list[str]        # cases missing from the candidate
    added: list[str]          # cases with no baseline
    failed_now: list[str]     # cases whose test failed in the candidate
    failed_before: list[str]  # cases whose test failed in the baseline: nothing to compare with
    missing: list[str]        # metrics measured on one side only
    disturbed: list[str]
    unmeasured: list[str]

    @property
    def judged(self) -> list[Verdict]:
        """The verdicts, without the figures shown only (as this run chose: --judge)."""
        return [v for v in self.verdicts if v.judged]


def _outcome(bases: list[Run], cand: Run, thresholds: Thresholds, alpha: float, disturbed: list[str],
             unmeasured: list[str]) -> Outcome:
    verdicts, removed, added = compare(bases, cand, thresholds, alpha)
    failed_now, failed_before, missing = unreadable_cases(bases[-1], cand, thresholds.judge)
    return Outcome(verdicts, removed, added, failed_now, failed_before, missing, disturbed, unmeasured)


def _print_outcome(a: argparse.Namespace, bases: list[Run], o: Outcome) -> None:
    mode = f"history of {len(bases)} runs" if len(bases) > 1 else "one baseline: the weakest mode (bench gate --help)"
    print(f"gate: {' '.join(a.baseline)} -> {a.candidate} ({mode})")
    for line in o.disturbed:
        print(f"WARNING: disturbed: {line}; judged anyway (--allow-disturbed)")
    for line in o.unmeasured:
        print(f"note: {line}")
    print(format_table(o.verdicts))
    for case in o.added:
        print(f"added (no baseline): {case}")
    for case in o.removed:
        print(f"MISSING from the candidate: {case}")
    for case in o.failed_now:
        print(f"FAILED in the candidate: {case} (its test failed; its numbers are not a result)")
    for line in o.failed_before + o.missing:
        print(f"cannot compare: {line}")


def _write_github(out: Path, cand: Run) -> None:
    """OUT and OUT.bigger for github-action-benchmark (OSError: they cannot be written there)."""
    targets = (out, out.with_name(out.stem + ".bigger" + out.suffix))
    for target in targets:
        why = _not_a_file(target)
        if why:
            raise OSError(f"{target} is {why}; give a file name")
    smaller, bigger = github_entries(cand)
    write_json_atomic(targets[0], smaller)
    write_json_atomic(targets[1], bigger)


def _verdict(a: argparse.Namespace, o: Outcome) -> int:
    """The last line and the exit code: a regression first, then what keeps the gate from a pass."""
    regressions = [v for v in o.judged if v.verdict == "REGRESSION"]
    if regressions or o.failed_now:
        named = [f"{v.case} {v.metric}" for v in regressions] + [f"{case} test failed" for case in o.failed_now]
        print(f"\nREGRESSION: {len(named)} finding(s) in "
              f"{', '.join(dict.fromkeys(n.rsplit(' ', 1)[0].removesuffix(' test') for n in named))}: "
              f"{', '.join(named)}")
        return REGRESSION
    if o.removed and not a.allow_missing:
        print(f"\ncannot compare: {len(o.removed)} case(s) missing from the candidate (--allow-missing to accept)")
        return CANNOT_COMPARE
    if o.failed_before or (o.missing and not a.allow_missing):
        print(f"\ncannot compare: {len(o.failed_before) + len(o.missing)} problem(s) above"
              f"{' (--allow-missing accepts missing metrics)' if o.missing else ''}")
        return CANNOT_COMPARE
    if not o.judged:
        print("\ncannot compare: no case in common")
        return CANNOT_COMPARE
    print(f"\nPASS: {len(o.judged)} metric(s) over {len(set(v.case for v in o.judged))} case(s)")
    return PASS


def main(argv: list[str] | None = None, prog: str = "bench gate") -> int:
    a = _parser(prog).parse_args(_bare_allow_mismatch(sys.argv[1:] if argv is None else argv))
    try:
        bases, cand, thresholds = _load(a)
    except (GateError, ResultsError) as e:
        print(f"gate: cannot compare: {e}", file=sys.stderr)
        return CANNOT_COMPARE
    disturbed, unmeasured = disturbed_cases(a.baseline, bases, a.candidate, cand)
    if disturbed and not a.allow_disturbed:
        for line in disturbed:
            print(f"gate: cannot compare: disturbed: {line} (its times are not a clean measurement: rerun it on a "
                  f"quiet machine, or --allow-disturbed to judge it anyway)", file=sys.stderr)
        return CANNOT_COMPARE
    outcome = _outcome(bases, cand, thresholds, a.alpha, disturbed, unmeasured)
    _print_outcome(a, bases, outcome)
    if a.github_json:
        try:
            _write_github(Path(a.github_json), cand)
        except OSError as e:
            print(f"gate: cannot compare: --github-json {a.github_json}: {e.strerror or e}", file=sys.stderr)
            return CANNOT_COMPARE
    return _verdict(a, outcome)

