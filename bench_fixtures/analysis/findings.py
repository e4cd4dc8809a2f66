"""The answer first: the report's findings, in plain sentences, from the run's own figures.

The experiment asked four questions: is TensorFlow worth using, would PyTorch be sufficient, what
are the real advantages and disadvantages, and how much do they matter in a typical project. Each
sentence here carries its uncertainty and says "no measurable difference" when the data cannot
separate the frameworks:
- steady throughput: the rounds' min-max ranges (test_train_step); apart = measurable;
- accuracy: the 95% margin of a difference of two proportions at the test set's size;
- a figure measured once (time to first step, gaps, memory, import time): within NOISE of each
  other is no measurable difference, NOISE being how far this suite's repeated runs moved.
Every number is one a table of the report shows, or a ratio of two of them.
"""
from __future__ import annotations

import math
import statistics
from typing import Any

from ..frameworks import FRAMEWORKS as REGISTRY
from ..models import REFERENCE
from .results import models_in

FRAMEWORKS = tuple(REGISTRY)
NOISE = 0.20  # repeated runs of one case on the shared 2-core CI machine moved by up to 20% (#18's note)
GAP_FLOOR_S = 0.05  # gaps shorter than this are below what one run can compare
Z95 = 1.96
# What makes two runs different experiments (their times then compare different work).
HISTORY_KEYS = ("profile", "dataset", "train_size", "test_size", "epochs", "batch_size", "weights", "device",
                "setup", "precision", "compile", "image_size", "replicas", "train_layers")
# The caveat each setup and each start brings to every figure.
SETUP_CAVEATS = {
    "matched": "Setup matched: precision, BatchNorm, optimizer epsilon, XLA and memory growth aligned; "
               "`--setup defaults` shows each framework as it ships.",
    "defaults": "Setup defaults: each framework as it ships; its settings differ (see the parity table).",
    "both": "Both setups: matched (settings aligned) and defaults (each framework as it ships)."}
WEIGHTS_CAVEATS = {
    "imagenet": "Each framework starts from its own ImageNet checkpoint: accuracy differences include the "
                "checkpoints'.",
    "same": "Every framework starts from torchvision's checkpoint (`--weights same`).",
    "none": "Random initialisation, torchvision's scheme in every framework."}


def _name(fw: str) -> str:
    return REGISTRY[fw].title if fw in REGISTRY and REGISTRY[fw].title else fw


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------- the figures

def round_rates(ts: dict | None) -> list[float]:
    """Images/s of each test_train_step round as the worker timed it (`round_images_per_s`, whose
    median is the table's steady images/s); runs recorded before it: pytest-benchmark's round times."""
    if not ts:
        return []
    e = ts.get("extra_info") or {}
    rates = e.get("round_images_per_s")
    if isinstance(rates, list):
        return [r for r in rates if _num(r) and r > 0]
    data = (ts.get("stats") or {}).get("data") or []
    images = (e.get("steps_per_round") or 0) * (e.get("global_batch_size") or e.get("batch_size") or 0)
    return [images / t for t in data if _num(t) and t > 0] if images else []


def peak_memory(e: dict) -> float | None:
    """The table's peak memory: the framework's own peak where it reports one, else the process's."""
    mem = e.get("memory") or {}
    v = mem.get("framework_peak") or mem.get("process_peak")
    return v if _num(v) else None


def accuracy_margin(p1: float, p2: float, n: int) -> float:
    """95% margin of the difference of two accuracies measured on N images each."""
    return Z95 * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)


def once_differ(a: float, b: float, floor: float = 0.0) -> bool:
    """Two figures measured once each: apart by more than NOISE (and FLOOR, absolute)."""
    return abs(a - b) > max(floor, NOISE * max(abs(a), abs(b)))


# --------------------------------------------------------------------------- the sentences

class Evidence:
    """Per metric and model, for each framework against the reference: +1 ahead, -1 behind, 0 no
    measurable difference, with the figure that says how much; the question sections summarise these."""

    def __init__(self) -> None:
        self.verdicts: list[tuple[str, str, str, int, str]] = []  # (framework, metric, model, verdict, figure)

    def add(self, fw: str, metric: str, model: str, verdict: int, figure: str = "") -> None:
        self.verdicts.append((fw, metric, model, verdict, figure))

    def of(self, fw: str, verdict: int) -> list[str]:
        """'metric (model figure, model figure)' for each metric with that verdict, in the order first seen."""
        by_metric: dict[str, list[str]] = {}
        for f, metric, model, v, figure in self.verdicts:
            if f == fw and v == verdict:
                by_metric.setdefault(metric, []).append(f"{model} {figure}".strip())
        return [f"{metric} ({', '.join(models)})" for metric, models in by_metric.items()]

    def compared(self, fw: str) -> int:
        return sum(1 for v in self.verdicts if v[0] == fw)


def throughput_line(model: str, ts: dict, ev: Evidence) -> str | None:
    rates = {fw: round_rates(ts.get((fw, model))) for fw in FRAMEWORKS if (fw, model) in ts}
    rates = {fw: r for fw, r in rates.items() if r}
    if REFERENCE not in rates or len(rates) < 2:
        return None
    ref = rates[REFERENCE]
    parts, verdicts = [], []
    for fw, r in rates.items():
        parts.append(f"{_name(fw)} {statistics.median(r):.1f} images/s ({len(r)} round{'s' if len(r) > 1 else ''}, "
                     f"{min(r):.1f}–{max(r):.1f})")
        if fw == REFERENCE:
            continue
        ratio = statistics.median(r) / statistics.median(ref)
        if len(r) < 2 or len(ref) < 2:
            verdicts.append(f"{_name(fw)} {ratio:.2f}× {_name(REFERENCE)}, one round: not resolved")
            continue
        apart = min(r) > max(ref) or max(r) < min(ref)
        beyond = abs(ratio - 1) > NOISE  # rounds in one process do not hold the run-to-run noise
        v = (1 if ratio > 1 else -1) if apart and beyond else 0
        ev.add(fw, "steady throughput", model, v, f"{ratio:.2f}×")
        verdicts.append(f"{_name(fw)} {ratio:.2f}× {_name(REFERENCE)}" +
                        ("" if v else ": no measurable difference (" + ("the rounds overlap" if not apart else
                                                                         f"within {NOISE:.0%}") + ")"))
    return f"- **Steady throughput, {model}:** {'; '.join(parts)}. {'; '.join(verdicts)}."


def _why_first_step(fw: str, e: dict) -> str:
    """What the first step paid for: the framework's own (its registry record), or what the run's
    settings add to it (torch.compile, XLA)."""
    settings, why = e.get("settings") or {}, REGISTRY[fw].first_step if fw in REGISTRY else ""
    if settings.get("torch_compile"):
        return "torch.compile"
    return why + (" and XLA compilation" if settings.get("xla") and "XLA" not in why else "")


def first_step_line(model: str, ft: dict, ev: Evidence) -> str | None:
    vals = {fw: ft[(fw, model)]["extra_info"].get("time_to_first_step_s") for fw in FRAMEWORKS if (fw, model) in ft}
    vals = {fw: v for fw, v in vals.items() if _num(v)}
    if REFERENCE not in vals or len(vals) < 2:
        return None
    ref, parts, same = vals[REFERENCE], [], []
    for fw, v in vals.items():
        why = _why_first_step(fw, ft[(fw, model)]["extra_info"])
        parts.append(f"{_name(fw)} {v:.2f} s ({why})")
        if fw != REFERENCE:
            differ = once_differ(v, ref)
            ev.add(fw, "time to first step", model, (1 if v < ref else -1) if differ else 0, f"{v:.2f} s vs {ref:.2f} s")
            if not differ:
                same.append(_name(fw))
    tail = f"; {', '.join(same)} and {_name(REFERENCE)}: no measurable difference (within {NOISE:.0%})" if same else ""
    return f"- **Time to first step, {model}:** {', '.join(parts)}; one measurement each, paid once per process{tail}."


def gap_line(model: str, ft: dict, ev: Evidence) -> str | None:
    def mean_gap(e: dict) -> float | None:
        g = [x for x in e.get("inter_epoch_gaps_s") or [] if _num(x)]
        return sum(g) / len(g) if g else None
    vals = {fw: mean_gap(ft[(fw, model)]["extra_info"]) for fw in FRAMEWORKS if (fw, model) in ft}
    vals = {fw: v for fw, v in vals.items() if v is not None}
    if REFERENCE not in vals or len(vals) < 2:
        return None
    ref = vals[REFERENCE]
    verdicts = []
    for fw, v in vals.items():
        if fw == REFERENCE:
            continue
        differ = once_differ(v, ref, GAP_FLOOR_S)
        ev.add(fw, "gap between epochs", model, (1 if v < ref else -1) if differ else 0, f"{v:.3f} s vs {ref:.3f} s")
        verdicts.append(f"{_name(fw)} {'shorter' if v < ref else 'longer'}" if differ else
                        f"{_name(fw)}: no measurable difference (under {GAP_FLOOR_S:g} s apart or within {NOISE:.0%})")
    values = ", ".join(f"{_name(fw)} {v:.3f} s" for fw, v in vals.items())
    return f"- **Between epochs, {model}:** mean gap {values}; one run. {'; '.join(verdicts)}."


def memory_line(model: str, ft: dict, ev: Evidence, device: str) -> str | None:
    mib = {fw: peak_memory(ft[(fw, model)]["extra_info"]) for fw in FRAMEWORKS if (fw, model) in ft}
    mib = {fw: round(v / 2**20) for fw, v in mib.items() if v is not None}  # as the table shows them
    if REFERENCE not in mib or len(mib) < 2:
        return None
    ref, verdicts = mib[REFERENCE], []
    for fw, v in mib.items():
        if fw == REFERENCE:
            continue
        differ = once_differ(v, ref)
        ev.add(fw, "peak memory", model, (1 if v < ref else -1) if differ else 0, f"{v / ref:.2f}×")
        verdicts.append(f"{_name(fw)} {v / ref:.2f}× {_name(REFERENCE)}" if differ else
                        f"{_name(fw)}: no measurable difference (within {NOISE:.0%})")
    kind = "the framework's own peak where it reports one, else the worker's GPU memory" if device == "gpu" \
        else "the worker's resident host memory"
    values = ", ".join(f"{_name(fw)} {v} MiB" for fw, v in mib.items())
    return f"- **Peak memory, {model}** ({kind}): {values}; one run. {'; '.join(verdicts)}."


def accuracy_line(model: str, ft: dict, ev: Evidence, weights: str | None) -> str | None:
    """The margin is the test set's sampling only: each framework trained once (its rounds' spread
    is shown when there were several). From random initialisation the frameworks start from
    different numbers, so a gap in accuracy is not judged a framework difference."""
    es = {fw: ft[(fw, model)]["extra_info"] for fw in FRAMEWORKS if (fw, model) in ft}
    es = {fw: e for fw, e in es.items() if _num(e.get("accuracy_after"))}
    if REFERENCE not in es or len(es) < 2:
        return None
    ref, n = es[REFERENCE]["accuracy_after"], es[REFERENCE].get("test_size")
    values = ", ".join(f"{_name(fw)} {100 * e['accuracy_after']:.1f}%" for fw, e in es.items())
    verdicts = []
    for fw, e in es.items():
        if fw == REFERENCE:
            continue
        p = e["accuracy_after"]
        if not (isinstance(n, int) and n > 0 and e.get("test_size") == n):
            verdicts.append(f"{_name(fw)}: test sets differ, not compared")
            continue
        margin = accuracy_margin(ref, p, n)
        diff = p - ref
        if abs(diff) <= margin:
            ev.add(fw, "accuracy", model, 0, f"{100 * diff:+.1f} points")
            verdicts.append(f"{_name(fw)}: no difference the test set can resolve (±{100 * margin:.1f} points at "
                            f"n = {n:,})")
        elif weights == "none":
            verdicts.append(f"{_name(fw)} {100 * abs(diff):.1f} points {'ahead' if diff > 0 else 'behind'} (±"
                            f"{100 * margin:.1f} at n = {n:,}), not judged: from random initialisation each "
                            f"framework starts from other numbers")
        else:
            ev.add(fw, "accuracy", model, 1 if diff > 0 else -1, f"{100 * diff:+.1f} points")
            verdicts.append(f"{_name(fw)} {'ahead' if diff > 0 else 'behind'} by {100 * abs(diff):.1f} points "
                            f"(±{100 * margin:.1f} at n = {n:,})")
    rounds = min(len(e.get("rounds") or [0]) for e in es.values())
    once = "one training run each, its spread not in the margin" if rounds < 2 else \
        f"{rounds} training rounds each (their spread: the table's accuracy over rounds)"
    return f"- **Accuracy after fine-tuning, {model}:** {values}; {once}. {'; '.join(verdicts)}."


def project_line(model: str, ft: dict) -> str | None:
    """What a user waits for: the whole fine-tune, and how much of it is paid once."""
    parts = []
    for fw in FRAMEWORKS:
        b = ft.get((fw, model))
        if not b:
            continue
        total = (b.get("stats") or {}).get("median")
        p = (b.get("extra_info") or {}).get("overhead_projection") or {}
        if not _num(total):
            continue
        text = f"{_name(fw)} {total:.2f} s"
        one_time, projected = p.get("one_time_s"), {x.get("epochs"): x for x in p.get("projected") or []}
        if _num(one_time) and one_time > 0 and _num(p.get("measured_total_s")) and p["measured_total_s"] > 0:
            later = projected.get(50) or {}
            share = later.get("overhead_share")
            text += (f" ({one_time:.3f} s of it paid once"
                     + (f"; overhead {100 * share:.1f}% of a 50-epoch run, projected" if _num(share) else "") + ")")
        parts.append(text)
    if len(parts) < 2:
        return None
    return f"- **The whole fine-tune, {model}:** {', '.join(parts)}."


def dx_lines(dx: dict, ran: set[str]) -> list[str]:
    lines = []
    dx = {fw: d for fw, d in dx.items() if fw in ran}
    imports = {fw: d.get("import_s") for fw, d in dx.items() if _num(d.get("import_s"))}
    if len(imports) > 1:
        lines.append("- **Import:** " + ", ".join(f"{_name(fw)} {v:.2f} s" for fw, v in imports.items())
                     + " (median of fresh worker processes).")
    sizes = {fw: d.get("footprint_bytes") for fw, d in dx.items() if _num(d.get("footprint_bytes"))}
    if len(sizes) > 1:
        lines.append("- **Install footprint** (own packages, without GPU libraries): "
                     + ", ".join(f"{_name(fw)} {v / 2**20:,.0f} MiB" for fw, v in sizes.items()) + ".")
    return lines


def caveats(cfg: dict, run: dict, ft: dict) -> list[str]:
    """What the figures are, in one list: profile, data, device, setup, starting weights, replicas."""
    out = []
    profile, device = cfg.get("profile"), cfg.get("device")
    e = next((b.get("extra_info") or {} for b in ft.values()), {})
    sizes = f"{e.get('train_size', '?'):,} training and {e.get('test_size', '?'):,} test images" \
        if _num(e.get("train_size")) and _num(e.get("test_size")) else "its training and test images"
    if profile == "smoke":
        out.append(f"Smoke profile: {cfg.get('dataset')} data, {sizes}, {cfg.get('epochs')} epochs. It checks "
                   f"that the suite works; the seed profile (full CIFAR-10, 5 epochs, ImageNet weights) answers "
                   f"the question.")
    elif profile:
        out.append(f"Profile {profile}: {cfg.get('dataset')}, {sizes}, {cfg.get('epochs')} epochs at batch "
                   f"{cfg.get('batch_size')}.")
    gpu = (run.get("machine_info") or {}).get("gpu_name")
    out.append((f"On a GPU ({gpu})." if gpu else "On a GPU.") if device == "gpu" else
               "On a CPU: a GPU can rank the frameworks' speed differently, and memory here is host memory.")
    out += [text for text in (SETUP_CAVEATS.get(cfg.get("setup")), WEIGHTS_CAVEATS.get(cfg.get("weights"))) if text]
    if (cfg.get("replicas") or 1) > 1:
        out.append(f"{cfg['replicas']} data-parallel replicas per case.")
    return out


def _list(items: list[str]) -> str:
    return "; ".join(items) if items else "none"


def setup_changes(fts: dict[str, dict], tss: dict[str, dict]) -> list[str]:
    """matched vs defaults: how each framework's steady throughput and first step moved."""
    if len(fts) < 2:
        return []
    names = list(fts)
    lines = [f"### What changed between the setups ({' → '.join(names)})", ""]
    for m in models_in({k: v for ft in fts.values() for k, v in ft.items()}):
        for fw in FRAMEWORKS:
            rates = [round_rates(tss[s].get((fw, m))) for s in names]
            firsts = [(fts[s].get((fw, m)) or {}).get("extra_info", {}).get("time_to_first_step_s") for s in names]
            parts = []
            if all(len(r) > 1 for r in rates):
                a, b = (statistics.median(r) for r in rates[:2])
                moved = (min(rates[0]) > max(rates[1]) or max(rates[0]) < min(rates[1])) and once_differ(a, b)
                parts.append(f"steady {a:.1f} → {b:.1f} images/s" + ("" if moved else " (no measurable change: "
                                                                                         "the rounds overlap or within 20%)"))
            if all(_num(x) for x in firsts[:2]):
                parts.append(f"time to first step {firsts[0]:.2f} → {firsts[1]:.2f} s"
                             + ("" if once_differ(firsts[0], firsts[1]) else f" (within {NOISE:.0%})"))
            if parts:
                lines.append(f"- **{_name(fw)}, {m}:** {'; '.join(parts)}.")
    return lines + [""]


def history_changes(runs: list[dict], setup: str) -> list[str]:
    """The last run against the one before it: each case's fine-tune time."""
    from .results import cases
    if len(runs) < 2:
        return []
    before, after = cases(runs[-2], "test_finetune", setup), cases(runs[-1], "test_finetune", setup)
    machines = [((r.get("machine_info") or {}).get("gpu_name") or (r.get("machine_info") or {}).get("cpu_model"))
                for r in runs[-2:]]
    lines = [f"### What changed since the previous run (run {len(runs) - 1} → {len(runs)})", ""]
    if machines[0] != machines[1]:
        lines.append(f"- **Another machine:** {machines[0] or 'unknown'} → {machines[1] or 'unknown'}: the "
                     f"changes below include the machine's.")
    configs = [r.get("bench_config") or {} for r in runs[-2:]]
    changed = [f"{k} {configs[0].get(k)!r} → {configs[1].get(k)!r}" for k in HISTORY_KEYS
               if configs[0].get(k) != configs[1].get(k)]
    if changed:
        lines.append(f"- **Another experiment:** {', '.join(changed)}: the times below compare different work, "
                     f"not a regression.")
    for (fw, m) in sorted(after.keys() & before.keys()):
        a, b = ((x.get("stats") or {}).get("median") for x in (before[(fw, m)], after[(fw, m)]))
        if _num(a) and _num(b) and a > 0:
            lines.append(f"- **{fw}-{m}:** fine-tune {a:.1f} → {b:.1f} s ({100 * (b - a) / a:+.0f}%"
                         + (")" if once_differ(a, b) else f", within {NOISE:.0%}: no measurable change)") + ".")
    return lines + [""] if len(lines) > 2 else []


def findings(fts: dict[str, dict], tss: dict[str, dict], runs: list[dict]) -> list[str]:
    """The findings section (markdown lines) of the last run, its first setup; the other setups and
    the previous run are compared in their own subsections. A FAILED case's numbers are no result:
    left out, and said so."""
    from .results import case_name, failed
    run = runs[-1]
    cfg = run.get("bench_config") or {}
    setup = next(iter(fts))
    bad = [case_name(b) for src in (fts[setup], tss[setup]) for b in src.values() if failed(b)]
    ft = {k: b for k, b in fts[setup].items() if not failed(b)}
    ts = {k: b for k, b in tss[setup].items() if not failed(b)}
    if not ft:
        return []
    ev = Evidence()
    evidence: list[str] = []
    for m in models_in(ft):
        evidence += [line for line in (accuracy_line(m, ft, ev, cfg.get("weights")), throughput_line(m, ts, ev),
                                       first_step_line(m, ft, ev), gap_line(m, ft, ev),
                                       memory_line(m, ft, ev, cfg.get("device") or "cpu")) if line]
    ran = {fw for fw, _ in ft}
    others = [fw for fw in FRAMEWORKS if fw != REFERENCE and fw in ran]
    md = ["## Findings", "", f"From this run's figures (setup {setup}); the tables below hold every number "
          f"(ratios and margins are computed from them). What they are:", ""]
    md += [f"- {c}" for c in caveats(cfg, run, ft)]
    md += [f"- Left out, their numbers are no result: {', '.join(bad)} (FAILED)."] if bad else []
    md += [""]
    if REFERENCE not in ran:
        md += [f"- Not compared: {_name(REFERENCE)} did not run here (or has no passing case), and every finding "
               f"is a comparison with it.", ""]
    md += ["### Is TensorFlow worth using?", ""]
    for fw in others:
        if not ev.compared(fw):
            md.append(f"- **{_name(fw)}:** not compared (no case of it beside {_name(REFERENCE)}'s).")
            continue
        md.append(f"- **{_name(fw)}** measurably ahead of {_name(REFERENCE)}: {_list(ev.of(fw, 1))}. Behind: "
                  f"{_list(ev.of(fw, -1))}. No measurable difference: {_list(ev.of(fw, 0))}.")
    md += ["", "### Would PyTorch be sufficient?", ""]
    for fw in others:
        acc = [v for f, metric, _, v, _ in ev.verdicts if f == fw and metric == "accuracy"]
        if not ev.compared(fw):
            continue
        same = sum(1 for v in acc if v == 0)
        accuracy = (f"the same accuracy (no difference the test set resolves) on {same} of {len(acc)} judged models"
                    if acc else "accuracy not judged (random initialisation, or no paired case)")
        md.append(f"- Against {_name(fw)}: {accuracy}; PyTorch measurably behind on: {_list(ev.of(fw, 1))}.")
    md += ["", "### The real advantages and disadvantages", ""] + evidence
    md += ["", "### How much do the differences matter in a typical project?", ""]
    md += [line for m in models_in(ft) if (line := project_line(m, ft))]
    md += dx_lines(run.get("dx") or {}, ran) + [""]
    md += setup_changes({s: {k: b for k, b in f.items() if not failed(b)} for s, f in fts.items()},
                        {s: {k: b for k, b in t.items() if not failed(b)} for s, t in tss.items()})
    md += history_changes(runs, setup)
    return md
