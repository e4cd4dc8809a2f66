"""The report's figures: one function per PNG, each drawing what it is given and returning the file's name.

Every framework in its registry colour (strong: after, light: before), every figure headed by what
it shows (`where`: profile, data, device, setup). `report.py` decides which figures a run gets and
lists them in report.md; the tables and sections are its own.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..config import MODELS  # noqa: E402
from ..registry import FRAMEWORKS as REGISTRY, NAMES  # noqa: E402
from ..telemetry.energy import source_label, trace  # noqa: E402
from ..telemetry.timeline import (EPOCH_START, EPOCH_STOP, FIRST_STEP_END, RUN_START, RUN_STOP,  # noqa: E402
                                  step_intervals)
from .results import Case, Run, load_telemetry, models_in, significant  # noqa: E402

ByCase = dict[tuple[str, str], Case]  # one test's cases in one setup, by (framework, model)

COLORS = {f.name: f.color for f in REGISTRY.values()}
LIGHT = {f.name: f.light for f in REGISTRY.values()}
HATCHES = ("//", "\\\\", "xx", "..")
def _save(fig, path: Path, where: str = "") -> str:
    """PATH from FIG, headed by WHERE: the profile, device and setup it shows (every figure says it)."""
    if where:
        fig.suptitle(where, fontsize=9, color="#444444")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _ran(*sources: dict) -> list[str]:
    """The frameworks with a case in any of SOURCES, in registry order (one bar each per model)."""
    return [fw for fw in NAMES if any(f == fw for src in sources for f, _ in src)]


def _offsets(n: int, span: float = 0.8) -> tuple[list[float], float]:
    """Bar offsets around each model's tick for N bars side by side, and their width."""
    width = span / max(n, 1)
    return [(i - (n - 1) / 2) * width for i in range(n)], width


def _plotted(v: float | None) -> float:
    """A figure as a plot takes it: one not measured (None) is drawn as nothing (NaN)."""
    return math.nan if v is None else float(v)


def _median(xs: list | None) -> float:
    xs = [x for x in xs or [] if x is not None]
    return statistics.median(xs) if xs else math.nan


# -- bars and curves per model -------------------------------------------------------------------

def plot_accuracy(ft: ByCase, out: Path, setup: str, where: str = "") -> str:
    models = models_in(ft)
    fig, ax = plt.subplots(figsize=(8, 4))
    fws = _ran(ft)
    offsets, width = _offsets(2 * len(fws))
    for i, fw in enumerate(fws):
        for j, (get, label) in enumerate(((lambda c: c.accuracy_before, "before"),
                                          (lambda c: c.accuracy_after, "after"))):
            xs = [k + offsets[2 * i + j] for k in range(len(models))]
            vals = [100 * _plotted(get(ft[(fw, m)])) if (fw, m) in ft else 0 for m in models]
            ax.bar(xs, vals, width, color=COLORS[fw] if j else LIGHT[fw], label=f"{fw} {label}")
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy before and after fine-tuning (setup: {setup})")
    ax.legend(fontsize=8)
    return _save(fig, out / "accuracy.png", where)


def plot_accuracy_curves(ft: ByCase, out: Path, setup: str, where: str = "", target: float | None = None
                         ) -> str | None:
    """Test accuracy after each epoch over the training seconds so far, per model and framework
    (the time-to-accuracy view; TARGET as a line). None without per-epoch evaluation."""
    models = [m for m in models_in(ft) if any(len(ft[(fw, m)].extra_info.get("accuracy_curve") or []) >= 1
                                            for fw in NAMES if (fw, m) in ft)]
    if not models:
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.8), squeeze=False)
    for ax, m in zip(axes[0], models):
        for fw in NAMES:
            curve = (ft[(fw, m)].extra_info.get("accuracy_curve") or []) if (fw, m) in ft else []
            pts = [(p["train_s"], 100 * p["accuracy"]) for p in curve if isinstance(p, dict)]
            if pts:
                ax.plot([0] + [p[0] for p in pts], [100 * _plotted(ft[(fw, m)].accuracy_before)]
                        + [p[1] for p in pts], marker="o", color=COLORS[fw], label=fw)
        if target is not None:
            ax.axhline(100 * target, color="grey", linestyle="--", linewidth=1, label=f"target {100 * target:.0f}%")
        ax.set_xlabel("training seconds (steps only)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{m}: accuracy over training time ({setup})", fontsize=9)
        ax.legend(fontsize=8)
    return _save(fig, out / "accuracy_curve.png", where)


def plot_time(ft: ByCase, out: Path, setup: str, where: str = "") -> str:
    models = models_in(ft)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (title, get) in zip(axes, (
            ("Total fine-tuning time (s)", lambda c: c.median),
            ("Median epoch time (s)", lambda c: _median(c.extra_info.get("epoch_times_s"))))):
        fws = _ran(ft)
        offsets, width = _offsets(len(fws))
        for i, fw in enumerate(fws):
            vals = [get(ft[(fw, m)]) if (fw, m) in ft else 0 for m in models]
            ax.bar([k + offsets[i] for k in range(len(models))], vals, width, color=COLORS[fw], label=fw)
        ax.set_xticks(range(len(models)), models)
        ax.set_title(f"{title}, setup: {setup}")
        ax.legend(fontsize=8)
    return _save(fig, out / "training_time.png", where)


def plot_throughput(ft: ByCase, ts: ByCase, out: Path, setup: str, where: str = "") -> str:
    models = models_in(ft) or models_in(ts)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (title, src, get) in zip(axes, (
            ("Steady-state throughput (images/s)", ts, lambda c: c.train_images_per_s),
            ("Time to first step (s)", ft, lambda c: c.time_to_first_step))):
        fws = _ran(src)
        offsets, width = _offsets(len(fws))
        for i, fw in enumerate(fws):
            vals = [(get(src[(fw, m)]) or 0) if (fw, m) in src else 0 for m in models]
            ax.bar([k + offsets[i] for k in range(len(models))], vals, width, color=COLORS[fw], label=fw)
        ax.set_xticks(range(len(models)), models)
        ax.set_title(f"{title}, setup: {setup}")
        if fws:
            ax.legend(fontsize=8)
        else:  # a run without this kind of case (no test_train_step): say so, never an empty legend
            ax.text(0.5, 0.5, "not measured in this run", transform=ax.transAxes, ha="center", va="center")
    return _save(fig, out / "throughput.png", where)


def short_reason(reason: str, width: int = 100) -> str:
    """A 'not measured: ...' reason short enough for a table cell or a figure: its first clause,
    without the explanation in parentheses at its end (the report's notes hold the whole reason)."""
    text = " ".join(reason.split()).split("; ")[0]
    if text.endswith(")"):
        depth = 0
        for i in range(len(text) - 1, -1, -1):  # back to the "(" that opens the last ")"
            depth += {")": 1, "(": -1}.get(text[i], 0)
            if depth == 0:
                text = text[:i].rstrip() or text
                break
    rest = text.replace("not measured: ", "").removeprefix("not measured").strip()  # once, also in "round 2 of 3: ..."
    text = f"not measured: {rest}" if rest else "not measured"
    return text if len(text) <= width else text[:width - 1].rstrip() + "…"


# -- timelines: utilisation, memory and power over time ------------------------------------------

def _series(tel: dict, key: str) -> tuple[list[float], list[float], int]:
    start = next((e["t_ns"] for e in tel["events"] if e["name"] == RUN_START), None)
    if start is None:
        start = min((s["t_ns"] for s in tel["samples"]), default=0)
    pts = [((s["t_ns"] - start) / 1e9, s[key]) for s in tel["samples"] if s.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts], start


def _memory_series(tel: dict) -> tuple[str, str]:
    """Which memory a case's samples hold, and its axis label. NVML lists the worker's own GPU
    memory (where an up-front reservation shows); inside a container's PID namespace it may not
    list the worker, and the whole device's memory is the closest it can see (cases run one at a
    time). psutil sees the worker's resident host memory."""
    if (tel.get("monitor") or {}).get("backend") != "nvml":
        return "proc_mem", "resident host memory (MiB)"
    if any(s.get("proc_mem") is not None for s in tel["samples"]):
        return "proc_mem", "GPU memory, this process (MiB)"
    return "device_mem", "GPU memory, whole device (MiB)"


def _memory_caption(tels: dict) -> str:
    """What the memory plot can show: on a GPU the reservation NVML sees, on a CPU host memory only."""
    if any((tel.get("monitor") or {}).get("backend") == "nvml" for tel, _ in tels.values()):
        return ("GPU memory as NVML sees it: an up-front reservation or block-wise growth shows here\n"
                "triangles: the framework's own peak in use per epoch"
                + (" (JAX's: since its worker started; it cannot reset its peak)" if "jax" in tels else ""))
    return ("the worker's resident host memory (psutil): a CPU run has no GPU memory to reserve\n"
            "triangles, where a framework reports one: its peak per epoch")


def _first_step_span(tel: dict, start: int) -> tuple[float, float] | None:
    """Seconds since run start to the end of the first step: tracing, compilation, the first batch."""
    end = next((e["t_ns"] for e in tel["events"] if e["name"] == FIRST_STEP_END and e.get("epoch") == 0), None)
    return None if end is None else (0.0, (end - start) / 1e9)


def _power(tel: dict, c: Case, start: int) -> tuple[list[float], list[float], float | None] | str:
    """The case's power over time (seconds since START, watts of all its domains) from the
    telemetry's energy reads, or why none is drawn: not recorded (a run from before energy), not
    measured (the case's reason), or a trace with problems (its first). Never a zero line."""
    if c.energy is None:
        return "energy not recorded (a run from before energy was measured)"
    if c.energy_j is None:
        return short_reason(c.energy_reason or "not measured")
    if "energy_reads" not in tel or not isinstance(tel.get("energy_meter"), dict):
        return f"{significant(c.energy_j)} J per fine-tune; its telemetry file holds no energy reads to draw"
    run = {e["name"]: e["t_ns"] for e in tel["events"] if e["name"] in (RUN_START, RUN_STOP)}
    try:
        tr = trace(tel["energy_reads"], tel["energy_meter"], run.get(RUN_START), run.get(RUN_STOP))
    except (KeyError, IndexError, TypeError, ValueError, OverflowError) as e:  # a record short of what it names
        return f"not drawn: the telemetry's energy_meter does not describe its reads ({type(e).__name__}: {e})"
    if tr.problems:
        more = f" (and {len(tr.problems) - 1} more)" if len(tr.problems) > 1 else ""
        return short_reason(tr.problems[0]) + more
    t_ns, watts = tr.power()
    if not len(t_ns):
        return "not measured: no two energy reads apart in time"
    drawn = tr.between(run[RUN_START], run[RUN_STOP]) if len(run) == 2 else None  # this round's, as drawn
    return [(t - start) / 1e9 for t in t_ns], [float(w) for w in watts], drawn


def _power_caption(cases: list[Case]) -> str:
    """Where the power panel's watts come from: the sources of the CASES it draws."""
    sources = sorted({(c.energy or {}).get("source") for c in cases} - {None})
    if not sources:
        return "power: none to draw"
    labels = ", ".join(source_label(s) for s in sources)
    rapl = ": every process on the CPU, not the worker alone" if "rapl" in sources else ""
    return f"power between consecutive energy reads, measured by {labels}{rapl}"


def plot_timelines(ft: ByCase, base: Path, out: Path, notes: list[str], setup: str, suffix: str = "",
                   label: str = "", where: str = "") -> list[str]:
    """Per model, one figure: utilisation on top, memory below it, power at the bottom (from the
    energy reads, each framework's fine-tune joules in the legend; where it was not measured, the
    reason as text, never a zero line), every framework on the same time axis (seconds since its
    run start), its first step (tracing, compilation) marked as a band in its colour, its
    inter-epoch gaps shaded and epoch starts dotted; files end in SUFFIX (another setup's figures
    beside the first's), case names in notes in LABEL."""
    files = []
    for m in models_in(ft):
        tels = {}
        for fw in NAMES:
            if (fw, m) not in ft:
                continue
            tel = load_telemetry(ft[(fw, m)].entry, base)
            if tel is None:
                notes.append(f"{fw}-{m}{label}: no telemetry file (run without telemetry or file moved); "
                             f"utilisation, memory and power plots omit it")
            else:
                tels[fw] = (tel, ft[(fw, m)].extra_info.get("epochs") or 0)
        if not tels:
            continue
        fig, (util_ax, mem_ax, power_ax) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
        labels, unmeasured, drawn = [], [], []
        for i, (fw, (tel, epochs)) in enumerate(tels.items()):
            xs, ys, start = _series(tel, "util")
            span = _first_step_span(tel, start)
            first = f"; first step {span[1]:.2f} s" if span else ""
            util_ax.plot(xs, [100 * y for y in ys], color=COLORS[fw], lw=1,
                         label=f"{fw} ({(tel.get('monitor') or {}).get('backend')}{first})")
            key, mem_label = _memory_series(tel)
            xs, ys, _ = _series(tel, key)
            mem_ax.plot(xs, [y / 2**20 for y in ys], color=COLORS[fw], lw=1.2, label=fw)
            labels.append(mem_label)
            for e in tel["events"]:
                peak = (e.get("memory") or {}).get("peak") if e["name"] == EPOCH_STOP else None
                if peak:
                    mem_ax.plot((e["t_ns"] - start) / 1e9, peak / 2**20, "v", color=COLORS[fw], ms=6)
            c = ft[(fw, m)]
            power = _power(tel, c, start)
            if isinstance(power, str):
                unmeasured.append((fw, power))
            else:
                xs, watts, joules = power
                power_ax.plot(xs, watts, color=COLORS[fw], lw=1,
                              label=f"{fw}: {significant(joules)} J this fine-tune" if joules is not None else fw)
                drawn.append(c)
            _, gaps = step_intervals(tel["events"], epochs)
            for ax in (util_ax, mem_ax, power_ax):
                if span:  # a hatch of its own per framework: torch's and TensorFlow's colours are close
                    ax.axvspan(*span, facecolor="none", edgecolor=matplotlib.colors.to_rgba(COLORS[fw], 0.35), lw=0.8,
                               hatch=HATCHES[i % len(HATCHES)])
                for a, b in gaps:
                    ax.axvspan((a - start) / 1e9, (b - start) / 1e9, color=LIGHT[fw], alpha=0.45, lw=0)
                for e in tel["events"]:
                    if e["name"] == EPOCH_START:
                        ax.axvline((e["t_ns"] - start) / 1e9, color=COLORS[fw], lw=0.6, ls=":")
        util_ax.set_ylim(0, 105)
        util_ax.set_ylabel("utilisation (%)")
        util_ax.legend(loc="lower right", fontsize=8)
        util_ax.set_title(f"{m}: utilisation, memory and power over time, setup {setup}\n(hatched: first step, "
                          f"tracing or compilation; shaded: between epochs; dotted: epoch start)", fontsize=9)
        mem_ax.set_ylabel(labels[0] if len(set(labels)) == 1 else "memory (MiB)")
        mem_ax.legend(loc="lower right", fontsize=8)
        mem_ax.set_title(_memory_caption(tels), fontsize=8)
        power_ax.set_ylabel("power (W)")
        power_ax.set_xlabel("seconds since each framework's run start")
        power_ax.set_title(_power_caption(drawn), fontsize=8)
        if drawn:
            power_ax.set_ylim(bottom=0)
            power_ax.legend(loc="lower right", fontsize=8)
        else:
            power_ax.set_yticks([])
        for k, (fw, why) in enumerate(unmeasured):  # said in the panel, where a curve would be
            power_ax.text(0.01, 0.92 - 0.14 * k, f"{fw}: {why}", transform=power_ax.transAxes, va="top",
                          fontsize=8, color=COLORS[fw], bbox=dict(facecolor="white", edgecolor="none", alpha=0.85))
        files.append(_save(fig, out / f"timeline_{m}{suffix}.png", where))
    return files


# -- across runs and run lengths -------------------------------------------------------------------

def plot_trend(runs: list[Run], out: Path, setup: str, where: str = "") -> str:
    fig, ax = plt.subplots(figsize=(10, 4))
    by_run = [r.select("test_finetune", setup) for r in runs]
    for fw, m in sorted({k for ft in by_run for k in ft}):
        ys = [ft[(fw, m)].median if (fw, m) in ft else None for ft in by_run]
        ax.plot(range(1, len(runs) + 1), ys, "o-", color=COLORS[fw], alpha=0.4 + 0.6 * MODELS.index(m) / max(1, len(MODELS) - 1), label=f"{fw}-{m}")
    ax.set_xlabel("run")
    ax.set_ylabel("fine-tuning time (s)")
    ax.set_title(f"Fine-tuning time across runs (setup: {setup})")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out / "trend.png", where)


def plot_overhead_share(shares: dict[str, dict[tuple[str, str], list[tuple[int, float]]]], out: Path,
                        where: str = "") -> str | None:
    """Overhead share of total time vs epochs (log x), per case and setup: the fixed cost fading
    (or a per-gap cost staying) as runs get longer. SHARES: per setup, each case's (epochs, share)
    points, measured first (`report.overhead_shares`). None when no case has a point to draw."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    styles, drawn = ("-", "--", ":", "-."), False
    for i, (setup, by_case) in enumerate(shares.items()):
        for (fw, m), pts in by_case.items():
            ax.plot([x for x, _ in pts], [100 * y for _, y in pts], marker="osd^"[MODELS.index(m) % 4],
                    ls=styles[i % 4], color=COLORS[fw], label=f"{fw}-{m} ({setup})")
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_xlabel("epochs (first point: measured; the others projected from it)")
    ax.set_ylabel("overhead share of total time (%)")
    ax.set_title(f"Overhead share vs run length, projected (setup: {', '.join(shares)})")
    ax.legend(fontsize=8)
    return _save(fig, out / "overhead_share.png", where)


def plot_scaling(points: dict[tuple[str, str], dict[int, float]], out: Path, setup: str, device: str, where: str = "") -> str:
    """Images/s against replicas per framework, one panel per model, with the ideal line (N times
    the one-replica figure, or the smallest count's, scaled)."""
    models = [m for m in MODELS if any(k[1] == m for k in points)]
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        for (fw, model), by_n in points.items():
            if model != m:
                continue
            ns = sorted(by_n)
            ax.plot(ns, [by_n[n] for n in ns], "o-", color=COLORS[fw], label=fw)
            base = ns[0]
            ax.plot(ns, [by_n[base] * n / base for n in ns], ":", color=COLORS[fw], alpha=0.7,
                    label=f"{fw} ideal")
        ax.set_xticks(sorted({n for (fw, model), by_n in points.items() if model == m for n in by_n}))
        ax.set_xlabel("replicas")
        ax.set_ylabel("global images/s (steady)")
        ax.set_title(f"{m}: scaling ({device}, setup {setup})")
        ax.legend(fontsize=8)
    return _save(fig, out / "scaling.png", where)


def plot_history(series: list, changes: list, metric: str, out: Path, allow_disturbed: bool = False) -> list[str]:
    """history_METRIC[_sN].png per series: one panel per case, its runs in time order, each level
    between change points with its median and band (median ± 2 robust sd of the level), and the change
    points marked with their size."""
    import os

    import numpy as np

    from .gate import METRICS
    from .history import series_title, values_of
    m, names = METRICS[metric], []
    out.mkdir(parents=True, exist_ok=True)
    for s_index, s in enumerate(series):
        cases = sorted({c.name for run in s.runs for c in run.cases if c.key is not None})
        drawn = [(case, values_of(s, case, m, [], allow_disturbed)) for case in cases]
        drawn = [(case, pts) for case, pts in drawn if pts]
        if not drawn:
            continue
        cols = min(3, len(drawn))
        rows = math.ceil(len(drawn) / cols)
        # wide enough for the heading even with one panel
        fig, axes = plt.subplots(rows, cols, figsize=(max(8.0, 4.2 * cols), 2.8 * rows + 0.4), squeeze=False)
        scale = 100 if m.mode == "points" else (2**-20 if m.unit == "B" else 1)
        unit = "%" if m.mode == "points" else ("MiB" if m.unit == "B" else m.unit)
        for ax, (case, pts) in zip(axes.flat, drawn):
            xs, ys = [i + 1 for i, _ in pts], [v * scale for _, v in pts]
            mine = sorted((c for c in changes if c.series == s_index and c.case == case and c.metric == metric),
                          key=lambda c: c.at)
            edges = [0, *(next(k for k, (i, _) in enumerate(pts) if i == c.at) for c in mine), len(pts)]
            for a, b in zip(edges, edges[1:]):
                level = np.asarray(ys[a:b])
                mid = float(np.median(level))
                sd = float(np.median(np.abs(level - mid))) / 0.6745 if len(level) > 1 else 0.0
                ax.hlines(mid, xs[a] - 0.4, xs[b - 1] + 0.4, color="#333333", lw=1)
                ax.fill_between([xs[a] - 0.4, xs[b - 1] + 0.4], mid - 2 * sd, mid + 2 * sd, color="#999999",
                                alpha=0.25, lw=0)
            ax.plot(xs, ys, "o", ms=4, color=COLORS.get(case.split("[")[-1].split("-")[0], "#1f77b4"))
            for c in mine:
                ax.axvline(c.at + 0.5, color="#c62828", ls="--", lw=1)
                ax.annotate(c.size_text(0), (c.at + 0.55, ax.get_ylim()[1]), va="top", fontsize=8, color="#c62828")
            ax.set_title(case, fontsize=8)
            ax.set_xlabel("run (in time order)", fontsize=7)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_ylabel(f"{metric} ({unit})", fontsize=7)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(drawn):]:
            ax.set_visible(False)
        name = f"history_{metric}" + (f"_s{s_index + 1}" if len(series) > 1 else "") + ".png"
        tmp = out / f".{name}.{os.getpid()}.{id(fig)}.png"  # this drawing's own: renamed over NAME when whole
        try:
            _save(fig, tmp, f"{metric}: series {s_index + 1} ({series_title(s, series)}), change points "
                            f"dashed, each level's median and band")
            os.replace(tmp, out / name)
        finally:
            tmp.unlink(missing_ok=True)
        names.append(name)
    return names
