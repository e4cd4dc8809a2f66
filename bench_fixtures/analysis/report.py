"""`bench report RUN.json [RUN2.json ...] --out DIR`: the seed's graphs and tables.

From the last run: accuracy before/after, training time, utilisation and memory over time per
model (torch and TensorFlow on one figure, aligned at run start, epoch gaps shaded), throughput
and time to first step, and DIR/report.md with the side-by-side tables, the parity columns, the
developer-experience table, machine info and the command line. Several runs add a history table
and a trend plot. Cases without telemetry get a note, not a crash.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..config import MODELS  # noqa: E402
from ..frameworks import FRAMEWORKS as REGISTRY  # noqa: E402
from ..telemetry.timeline import EPOCH_START, EPOCH_STOP, RUN_START, step_intervals  # noqa: E402
from .results import ResultsError, cases, failed, load_run  # noqa: E402

FRAMEWORKS = tuple(REGISTRY)
COLORS = {f.name: f.color for f in REGISTRY.values()}
LIGHT = {f.name: f.light for f in REGISTRY.values()}


def _models(cases: dict) -> list[str]:
    return [m for m in MODELS if any((fw, m) in cases for fw in FRAMEWORKS)]


def _telemetry(b: dict, base: Path) -> dict | None:
    path = (b.get("extra_info") or {}).get("telemetry_file")
    if not path:
        return None
    for candidate in (Path(path), base / path, base / Path(path).name):
        try:
            return json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
    return None


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_accuracy(ft: dict, out: Path) -> str:
    models = _models(ft)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.2
    for i, fw in enumerate(FRAMEWORKS):
        for j, (key, label) in enumerate((("accuracy_before", "before"), ("accuracy_after", "after"))):
            xs = [k + (2 * i + j - 1.5) * width for k in range(len(models))]
            vals = [100 * _num(ft[(fw, m)]["extra_info"].get(key)) if (fw, m) in ft else 0 for m in models]
            ax.bar(xs, vals, width, color=COLORS[fw] if j else LIGHT[fw], label=f"{fw} {label}")
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy before and after fine-tuning")
    ax.legend(fontsize=8)
    return _save(fig, out / "accuracy.png")


def plot_time(ft: dict, out: Path) -> str:
    models = _models(ft)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (title, get) in zip(axes, (
            ("Total fine-tuning time (s)", lambda b: b["stats"]["median"]),
            ("Median epoch time (s)", lambda b: _median(b["extra_info"].get("epoch_times_s"))))):
        for i, fw in enumerate(FRAMEWORKS):
            vals = [get(ft[(fw, m)]) if (fw, m) in ft else 0 for m in models]
            ax.bar([k + (i - 0.5) * 0.38 for k in range(len(models))], vals, 0.38, color=COLORS[fw], label=fw)
        ax.set_xticks(range(len(models)), models)
        ax.set_title(title)
        ax.legend(fontsize=8)
    return _save(fig, out / "training_time.png")


def _series(tel: dict, key: str) -> tuple[list[float], list[float], int]:
    start = next((e["t_ns"] for e in tel["events"] if e["name"] == RUN_START), None)
    if start is None:
        start = min((s["t_ns"] for s in tel["samples"]), default=0)
    pts = [((s["t_ns"] - start) / 1e9, s[key]) for s in tel["samples"] if s.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts], start


def _mark_epochs(ax, tel: dict, start: int, epochs: int) -> None:
    _, gaps = step_intervals(tel["events"], epochs)
    for a, b in gaps:
        ax.axvspan((a - start) / 1e9, (b - start) / 1e9, color="grey", alpha=0.25, lw=0)
    for e in tel["events"]:
        if e["name"] == EPOCH_START:
            ax.axvline((e["t_ns"] - start) / 1e9, color="black", lw=0.6, ls=":")


def plot_timelines(ft: dict, base: Path, out: Path, notes: list[str]) -> list[str]:
    """Per model: utilisation and memory over time, both frameworks, epoch gaps shaded."""
    files = []
    for m in _models(ft):
        tels = {}
        for fw in FRAMEWORKS:
            if (fw, m) not in ft:
                continue
            tel = _telemetry(ft[(fw, m)], base)
            if tel is None:
                notes.append(f"{fw}-{m}: no telemetry file (run without telemetry or file moved); "
                             f"utilisation and memory plots omit it")
            else:
                tels[fw] = (tel, ft[(fw, m)]["extra_info"].get("epochs", 0))
        if not tels:
            continue
        for kind, key, ylabel, scale in (("utilization", "util", "utilisation (%)", 100),
                                         ("memory", "proc_mem", "process memory (MiB)", 1 / 2**20)):
            fig, axes = plt.subplots(len(tels), 1, figsize=(10, 2.6 * len(tels)), squeeze=False)
            for ax, (fw, (tel, epochs)) in zip(axes[:, 0], tels.items()):
                xs, ys, start = _series(tel, key)
                ax.plot(xs, [y * scale for y in ys], color=COLORS[fw], lw=1, label=f"{fw} ({tel['monitor'].get('backend')})")
                if kind == "memory":
                    for e in tel["events"]:
                        peak = (e.get("memory") or {}).get("peak") if e["name"] == EPOCH_STOP else None
                        if peak:
                            ax.plot((e["t_ns"] - start) / 1e9, peak * scale, "v", color="black", ms=6)
                _mark_epochs(ax, tel, start, epochs)
                if kind == "utilization":
                    ax.set_ylim(0, 105)
                ax.set_ylabel(ylabel)
                ax.legend(loc="upper right", fontsize=8)
            axes[-1, 0].set_xlabel("seconds since run start (dotted: epoch start; shaded: inter-epoch gap)")
            axes[0, 0].set_title(f"{m}: {kind} over time" + (" (triangles: framework peak per epoch)" if kind == "memory" else ""))
            files.append(_save(fig, out / f"{kind}_{m}.png"))
    return files


def plot_throughput(ft: dict, ts: dict, out: Path) -> str:
    models = _models(ft) or _models(ts)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (title, src, key) in zip(axes, (("Steady-state throughput (images/s)", ts, "train_images_per_s"),
                                            ("Time to first step (s)", ft, "time_to_first_step_s"))):
        for i, fw in enumerate(FRAMEWORKS):
            vals = [(src[(fw, m)]["extra_info"].get(key) or 0) if (fw, m) in src else 0 for m in models]
            ax.bar([k + (i - 0.5) * 0.38 for k in range(len(models))], vals, 0.38, color=COLORS[fw], label=fw)
        ax.set_xticks(range(len(models)), models)
        ax.set_title(title)
        ax.legend(fontsize=8)
    return _save(fig, out / "throughput.png")


def plot_trend(runs: list[dict], out: Path) -> str:
    fig, ax = plt.subplots(figsize=(10, 4))
    keys = sorted({k for r in runs for k in cases(r, "test_finetune")})
    for fw, m in keys:
        ys = [(cases(r, "test_finetune").get((fw, m)) or {}).get("stats", {}).get("median") for r in runs]
        ax.plot(range(1, len(runs) + 1), ys, "o-", color=COLORS[fw], alpha=0.4 + 0.2 * MODELS.index(m), label=f"{fw}-{m}")
    ax.set_xlabel("run")
    ax.set_ylabel("fine-tuning time (s)")
    ax.set_title("Fine-tuning time across runs")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out / "trend.png")


def _num(v: Any) -> float:
    """A figure for a plot: null (not measured) is drawn as nothing."""
    return math.nan if v is None else float(v)


def _median(xs: list | None) -> float:
    xs = [x for x in xs or [] if x is not None]
    return statistics.median(xs) if xs else math.nan


def _f(v: Any, fmt: str) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _mean(xs: list | None) -> float | None:
    xs = [x for x in xs or [] if x is not None]
    return statistics.fmean(xs) if xs else None


def case_rows(ft: dict, ts: dict, model: str) -> list[tuple[str, list[str]]]:
    def get(fw: str, f) -> str:
        b = ft.get((fw, model))
        try:
            return f(b["extra_info"], b, ts.get((fw, model))) if b else "–"
        except (KeyError, TypeError, statistics.StatisticsError):
            return "–"
    mem = lambda e: (e.get("memory") or {}).get("framework_peak") or (e.get("memory") or {}).get("process_peak")  # noqa: E731
    rows = [
        ("test outcome", lambda e, b, t: "FAILED (numbers are not a result)" if failed(b) else "passed"),
        ("accuracy before", lambda e, b, t: f"{100 * e['accuracy_before']:.1f}%"),
        ("accuracy after", lambda e, b, t: f"{100 * e['accuracy_after']:.1f}%"),
        ("total fine-tune (s)", lambda e, b, t: f"{b['stats']['median']:.2f}"),
        ("median epoch (s)", lambda e, b, t: f"{statistics.median(x for x in e['epoch_times_s'] if x):.2f}"),
        ("mean inter-epoch gap (s)", lambda e, b, t: _f(_mean(e.get("inter_epoch_gaps_s")), ".3f")),
        ("mean utilisation in steps", lambda e, b, t: _f((e["utilization"]["steps"]["mean"] or 0) * 100, ".0f") + "%"),
        ("peak memory (MiB)", lambda e, b, t: _f(mem(e) / 2**20 if mem(e) else None, ".0f")),
        ("steady images/s", lambda e, b, t: _f(t["extra_info"]["train_images_per_s"] if t else None, ".1f")),
        ("time to first step (s)", lambda e, b, t: f"{e['time_to_first_step_s']:.2f}"),
        ("trainable / non-trainable", lambda e, b, t: f"{e['trainable_params']:,} / {e['non_trainable_params']:,}"),
    ]
    return [(name, [get(fw, f) for fw in FRAMEWORKS]) for name, f in rows]


def _gpu_libraries(d: dict) -> str:
    if d.get("gpu_libraries_bytes") is None:
        return f"– ({d.get('gpu_libraries_note') or 'not recorded'})"
    return (f"{d['gpu_libraries_bytes'] / 2**20:,.0f} ({d.get('gpu_libraries_packages')} pkgs, "
            f"{d.get('gpu_libraries_source')})")


def dx_rows(dx: dict) -> list[str]:
    lines = ["| | " + " | ".join(FRAMEWORKS) + " |", "|---|" + "---:|" * len(FRAMEWORKS)]
    fields = [("import time (s, median of fresh processes)", lambda d: _f(d.get("import_s"), ".2f") + f" (n={d.get('import_samples')})"),
              ("install footprint (MiB, own packages, without GPU libraries)",
               lambda d: f"{d['footprint_bytes'] / 2**20:,.0f} ({d['footprint_packages']} pkgs)"),
              ("GPU libraries (MiB; how they are installed)", _gpu_libraries),
              ("time to first step (s, median)", lambda d: _f(d.get("time_to_first_step_s"), ".2f")),
              ("GPUs visible / seen by NVML", lambda d: f"{d.get('gpus_visible')} / {d.get('gpus_nvml')}"),
              ("lines of backend code here", lambda d: str(d.get("backend_loc")))]
    for name, f in fields:
        lines.append(f"| {name} | " + " | ".join(f(dx[fw]) if fw in dx else "–" for fw in FRAMEWORKS) + " |")
    return lines


def write_report(paths: list[str], out: str | Path) -> Path:
    """OUT/report.md and its figures, whole or not at all: everything is drawn into a temporary
    folder beside OUT and moved in at the end, report.md last."""
    final = Path(out)
    if final.exists() and not final.is_dir():
        raise ResultsError(f"--out {final}: is a file, not a folder; give a folder for the report")
    runs = [load_run(p) for p in paths]  # every run validated before anything is written
    empty = [p for p, r in zip(paths, runs) if not r["benchmarks"]]
    if empty:
        raise ResultsError(f"{empty[0]}: holds no benchmark (the session measured none: --benchmark-skip, "
                           f"or every case deselected); nothing to report")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
    try:
        _write_report(paths, runs, tmp)
        final.mkdir(exist_ok=True)
        for f in sorted(tmp.iterdir(), key=lambda p: p.name == "report.md"):
            os.replace(f, final / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "report.md"


def _write_report(paths: list[str], runs: list[dict], out: Path) -> None:
    run, base = runs[-1], Path(paths[-1]).parent
    ft, ts = cases(run, "test_finetune"), cases(run, "test_train_step")
    notes: list[str] = []
    figures = []
    if ft:
        figures += [plot_accuracy(ft, out), plot_time(ft, out)]
        figures += plot_timelines(ft, base, out, notes)
        figures.append(plot_throughput(ft, ts, out))
    else:
        notes.append("no test_finetune case in the run: accuracy, time and timeline figures omitted")
    if len(runs) > 1:
        figures.append(plot_trend(runs, out))
    for test, by_case in (("test_finetune", ft), ("test_train_step", ts)):
        for (fw, m), b in sorted(by_case.items()):
            e = b.get("extra_info") or {}
            notes += [f"{fw}-{m} {test}: {text}" for text in e.get("telemetry_problems") or []]
            notes += [f"{fw}-{m} {test} (flag): {text}" for text in e.get("telemetry_flags") or []]
    cfg = run.get("bench_config") or {}
    mi = run.get("machine_info") or {}
    md = ["# PyTorch vs TensorFlow: fine-tuning report", "",
          f"Run: `{paths[-1]}` ({run.get('datetime', 'unknown time')})", "",
          f"Command: `{run.get('command', 'not recorded')}`", "",
          f"Profile **{cfg.get('profile')}** on **{cfg.get('device')}**: dataset {cfg.get('dataset')}, "
          f"{cfg.get('epochs')} epochs at batch {cfg.get('batch_size')}, weights {cfg.get('weights')}, "
          f"precision {cfg.get('precision')}, compile {cfg.get('compile')}, optimizer {cfg.get('optimizer')} "
          f"lr {cfg.get('lr')}, BN momentum {cfg.get('bn_momentum')} eps {cfg.get('bn_eps')}.", ""]
    for m in _models(ft):
        md += [f"## {m}", "", "| | " + " | ".join(FRAMEWORKS) + " |", "|---|" + "---:|" * len(FRAMEWORKS)]
        md += [f"| {name} | " + " | ".join(vals) + " |" for name, vals in case_rows(ft, ts, m)]
        md.append("")
    if ft:
        md += ["## Parity", "", "| case | trainable | non-trainable | input transform | optimizer | lr | BN momentum / eps | precision |",
               "|---|---:|---:|---|---|---:|---|---|"]
        for (fw, m), b in sorted(ft.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            e = b["extra_info"]
            md.append(f"| {fw}-{m} | {_f(e.get('trainable_params'), ',')} | {_f(e.get('non_trainable_params'), ',')} | "
                      f"{e.get('input_transform')} | {e.get('optimizer')} | {e.get('lr')} | "
                      f"{e.get('bn_momentum')} / {e.get('bn_eps')} | {e.get('precision')} |")
        md.append("")
    if run.get("dx"):
        md += ["## Developer experience", ""] + dx_rows(run["dx"]) + [""]
    else:
        notes.append("no developer-experience figures in this run (recorded by the pytest session)")
    md += ["## Machine", "", f"- GPU: {mi.get('gpu_name') or 'none'} ({mi.get('gpu_reason') or 'NVML'})",
           f"- CPU: {mi.get('cpu_model')} x {mi.get('cpu_count')}",
           f"- packages: {', '.join(f'{k} {v}' for k, v in (mi.get('packages') or {}).items())}"]
    for fw, info in (mi.get("framework_builds") or {}).items():
        md.append(f"- {fw}: {info.get('framework_version')} on {info.get('device_name')}, CUDA build "
                  f"{info.get('cuda_build')}, cuDNN {info.get('cudnn_version')}, TF32 matmul/conv "
                  f"{info.get('tf32_matmul')}/{info.get('tf32_conv')}, threads {info.get('cpu_threads')}")
    md.append("")
    if len(runs) > 1:
        md += ["## History", "", "| run | " + " | ".join(f"{fw}-{m}" for m in MODELS for fw in FRAMEWORKS) + " |",
               "|---|" + "---:|" * (len(MODELS) * len(FRAMEWORKS))]
        for p, r in zip(paths, runs):
            c = cases(r, "test_finetune")
            cells = [f"{c[(fw, m)]['stats']['median']:.1f}s / "
                     f"{_f(_num(c[(fw, m)]['extra_info'].get('accuracy_after')) * 100, '.0f')}%"
                     f"{' FAILED' if failed(c[(fw, m)]) else ''}"
                     if (fw, m) in c else "–" for m in MODELS for fw in FRAMEWORKS]
            md.append(f"| `{Path(p).name}` | " + " | ".join(cells) + " |")
        md += ["", "Cells: fine-tuning time / accuracy after.", ""]
    md += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    (out / "report.md").write_text("\n".join(md))


def main(argv: list[str] | None = None, prog: str = "bench report") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="pytest-benchmark JSON files, oldest first")
    p.add_argument("--out", required=True, help="folder for the PNGs and report.md")
    a = p.parse_args(argv)
    try:
        path = write_report(a.runs, a.out)
    except ResultsError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m bench_fixtures.analysis.report"))
