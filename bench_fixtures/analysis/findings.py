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
LEAD = "whole fine-tune time"  # the seed's first metric: each answer opens with it
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

    def of(self, fw: str, verdict: int, skip: str | None = None) -> list[str]:
        """'metric (model figure, model figure)' for each metric with that verdict (but SKIP), in the
        order first seen."""
        by_metric: dict[str, list[str]] = {}
        for f, metric, model, v, figure in self.verdicts:
            if f == fw and v == verdict and metric != skip:
                by_metric.setdefault(metric, []).append(f"{model} {figure}".strip())
        return [f"{metric} ({', '.join(models)})" for metric, models in by_metric.items()]

    def lead(self, fw: str, metric: str) -> str:
        """METRIC's verdict per model, as a sentence that opens an answer ("" when it was not judged)."""
        words = {1: "faster", -1: "slower", 0: "no measurable difference"}
        per_model = [f"{model} {figure} {_name(REFERENCE)}'s ({words[v]})"
                     for f, m, model, v, figure in self.verdicts if f == fw and m == metric]
        return f"{metric[0].upper()}{metric[1:]}: {', '.join(per_model)}. " if per_model else ""

    def compared(self, fw: str) -> int:
        return sum(1 for v in self.verdicts if v[0] == fw)


def finetune_rounds(b: dict) -> list[float]:
    """Seconds of each fine-tune round (each a fresh model, same seed): the case's own record, else
    pytest-benchmark's saved round times; their median is the table's fine-tune time."""
    e = b.get("extra_info") or {}
    rounds = e.get("rounds") if isinstance(e.get("rounds"), list) else []
    times = [r.get("finetune_s") for r in rounds if isinstance(r, dict)]
    times = [t for t in times if _num(t) and t > 0]
    if times:
        return times
    data = (b.get("stats") or {}).get("data") or []
    times = [t for t in data if _num(t) and t > 0] if isinstance(data, list) else []
    median = (b.get("stats") or {}).get("median")
    return times or ([median] if _num(median) and median > 0 else [])


def judge_times(fw_times: list[float], ref_times: list[float]) -> tuple[int, str]:
    """Lower is better. Several rounds on both sides: measurable when the ranges do not overlap and
    the medians are more than NOISE apart (rounds in one process do not hold the run-to-run noise);
    measured once: more than NOISE apart. (+1 faster, -1 slower, 0 not measurable; why.)"""
    a, b = statistics.median(fw_times), statistics.median(ref_times)
    if len(fw_times) > 1 and len(ref_times) > 1:
        apart = min(fw_times) > max(ref_times) or max(fw_times) < min(ref_times)
        if not apart:
            return 0, "the rounds overlap"
    if not once_differ(a, b):
        return 0, f"within {NOISE:.0%}"
    return (1 if a < b else -1), ""


def finetune_line(model: str, ft: dict, ev: Evidence) -> str | None:
    """The seed's first metric: the whole fine-tune (every epoch, its gaps and first steps), as the
    user waits for it."""
    times = {fw: finetune_rounds(ft[(fw, model)]) for fw in FRAMEWORKS if (fw, model) in ft}
    times = {fw: t for fw, t in times.items() if t}
    if REFERENCE not in times or len(times) < 2:
        return None
    ref = times[REFERENCE]
    parts, verdicts = [], []
    for fw, t in times.items():
        spread = f", {len(t)} rounds {min(t):.2f}–{max(t):.2f}" if len(t) > 1 else ", one round"
        parts.append(f"{_name(fw)} {statistics.median(t):.2f} s{spread}")
        if fw == REFERENCE:
            continue
        ratio = statistics.median(t) / statistics.median(ref)
        v, why = judge_times(t, ref)
        ev.add(fw, LEAD, model, v, f"{ratio:.2f}×")
        verdicts.append(f"{_name(fw)} {ratio:.2f}× {_name(REFERENCE)}'s time" +
                        (f", {'faster' if v > 0 else 'slower'}" if v else f": no measurable difference ({why})"))
    return f"- **The whole fine-tune, {model}:** {'; '.join(parts)}. {'; '.join(verdicts)}."


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
    mib = {fw: round(v / 2**20) for fw, v in mib.items() if v is not None and v >= 2**20}  # as the table shows them
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


def project_line(model: str, ft: dict, alone: bool = False) -> str | None:
    """What a user waits for: the whole fine-tune, and how much of it is paid once; of two frameworks
    or more, or ALONE of the one that has a case."""
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
    if len(parts) < (1 if alone else 2):
        return None
    return f"- **What a fine-tune costs, {model}:** {', '.join(parts)}."


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


# Options left to the framework (None: its default) and the read-back settings that say what it ran with.
READ_BACK = {"precision": ("compute_dtype",), "compile": ("xla", "torch_compile")}


def _asked(run: dict, key: str) -> str:
    """KEY of RUN's config as it ran: the value asked for, or, left to each framework's default, what
    the frameworks read back (e.g. `precision default (read back: torch float32, …)`)."""
    value = (run.get("bench_config") or {}).get(key)
    if value is not None or key not in READ_BACK:
        return repr(value)
    from .results import cases
    seen: dict[str, set[str]] = {}
    for (fw, _), b in cases(run, "test_finetune").items():
        settings = (b.get("extra_info") or {}).get("settings") or {}
        for k in READ_BACK[key]:
            if isinstance(settings, dict) and settings.get(k) is not None:
                seen.setdefault(fw, set()).add(f"{k} {settings[k]}")
    if not seen:
        return "each framework's default (not read back in this run)"
    return "each framework's default (read back: " + ", ".join(
        f"{fw} {'/'.join(sorted(v))}" for fw, v in seen.items()) + ")"


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
    changed = [f"{k} {_asked(runs[-2], k)} → {_asked(runs[-1], k)}" for k in HISTORY_KEYS
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


def disturbed(b: dict) -> list[str]:
    """Why this case's figures were taken on a busy machine; empty: quiet, or not measured."""
    from .results import disturbance_of
    status, reasons = disturbance_of(b)
    return reasons if status else []


def bn_diagnosis(e: dict) -> str | None:
    """What the case's read-back BatchNorm momentum (torch's convention: the new batch's weight)
    leaves of the moving statistics' starting values after its training steps: from random
    initialisation, statistics still near their start normalise evaluation with the wrong numbers."""
    momenta = [m for m in ((e.get("settings") or {}).get("bn_momentum") or []) if _num(m) and 0 < m <= 1] \
        if isinstance((e.get("settings") or {}).get("bn_momentum"), list) else []
    steps = (e.get("epochs") or 0) * (e.get("steps_per_epoch") or 0) if _num(e.get("epochs")) and \
        _num(e.get("steps_per_epoch")) else 0
    if not momenta or not steps or steps > 10**7:
        return None
    m = min(momenta)
    kept = (1 - m) ** steps
    if kept < 0.25:
        return None
    return (f"BatchNorm momentum {m:g} (torch's convention, read back): after {steps:,} training steps its moving "
            f"statistics still hold {kept:.0%} of their initial values, so evaluation normalises with statistics "
            f"that have barely seen the data" + (" (from random initialisation)" if e.get("weights") == "none" else ""))


def failure_lines(bad: list[dict], cfg: dict, fts: dict[str, dict]) -> list[str]:
    """Each failed case: in which setup, what failed (from its own figures), and what its read-back
    settings say about why, beside the same model's passing case in the same setup."""
    from .results import case_name, failed
    gain = cfg.get("min_accuracy_gain")
    lines = []
    for b in bad:
        e = b.get("extra_info") or {}
        passed = {k: x for k, x in (fts.get(e.get("setup") or "matched") or {}).items() if not failed(x)}
        what = []
        before, after = e.get("accuracy_before"), e.get("accuracy_after")
        if _num(before) and _num(after):
            short = _num(gain) and after < before + gain
            what.append(f"accuracy {100 * before:.1f}% → {100 * after:.1f}%"
                        + (f", under the required gain of {100 * gain:.0f} points" if short else ""))
        problems = e.get("telemetry_problems")
        if isinstance(problems, list) and problems:
            what.append(f"untrustworthy figures: {problems[0]}")
        why = bn_diagnosis(e)
        same = [(fw, x.get("extra_info") or {}) for (fw, m), x in passed.items() if m == e.get("model")]
        if why and same:
            fw, other = same[0]
            kept = bn_diagnosis(other)
            mo = (other.get("settings") or {}).get("bn_momentum")
            why += (f"; {_name(fw)}'s passing case: momentum {mo[0]:g}" if isinstance(mo, list) and mo and _num(mo[0])
                    else "") + (" with the same problem" if kept else "")
        lines.append(f"- **{case_name(b)}** (setup {e.get('setup') or 'matched'}): "
                     + ("; ".join(what) or "the test failed (see its log)") + (f". Why, from its settings: {why}" if why
                                                                              else "") + ".")
    return lines


def findings(fts: dict[str, dict], tss: dict[str, dict], runs: list[dict]) -> list[str]:
    """The findings section (markdown lines) of the last run, its first setup; the other setups and
    the previous run are compared in their own subsections. A FAILED case's numbers are no result,
    and a disturbed one's (measured on a busy machine) are not judged: both are left out of the
    comparisons, named, and every question says what can still be answered without them."""
    from .results import case_name, failed
    run = runs[-1]
    cfg = run.get("bench_config") or {}
    setup = next(iter(fts))
    every = [b for src in (fts[setup], tss[setup]) for b in src.values()]
    bad = [b for src in (*fts.values(), *tss.values()) for b in src.values() if failed(b)]  # in every setup
    shaken = [(case_name(b), why) for b in every if not failed(b) and (why := disturbed(b))]
    ok = lambda b: not failed(b) and not disturbed(b)  # noqa: E731
    ft = {k: b for k, b in fts[setup].items() if ok(b)}
    ts = {k: b for k, b in tss[setup].items() if ok(b)}
    ev = Evidence()
    evidence: list[str] = []
    for m in models_in(ft):
        evidence += [line for line in (finetune_line(m, ft, ev), accuracy_line(m, ft, ev, cfg.get("weights")),
                                       throughput_line(m, ts, ev), first_step_line(m, ft, ev), gap_line(m, ft, ev),
                                       memory_line(m, ft, ev, cfg.get("device") or "cpu")) if line]
    ran = {fw for fw, _ in ft}
    others = [fw for fw in FRAMEWORKS if fw != REFERENCE and fw in ran]
    md = ["## Findings", "", f"From this run's figures (setup {setup}); the tables below hold every number "
          f"(ratios and margins are computed from them). What they are:", ""]
    if shaken:
        md.append(f"- **Disturbed, not judged:** " + "; ".join(f"{n}: {why[0]}" for n, why in shaken)
                  + ". Something else used the machine while they were timed; their figures are in the tables, "
                    "marked, and left out of every comparison below.")
    md += [f"- {c}" for c in caveats(cfg, run, ft or {k: b for k, b in fts[setup].items()})]
    md += [f"- Left out, their numbers are no result: {', '.join(case_name(b) for b in bad)} (FAILED)."] if bad else []
    md += [""]
    if bad:
        md += ["### Cases that failed", ""] + failure_lines(bad, cfg, fts) + [""]
    missing = unanswered(ft, bad, shaken)
    md += ["### Is TensorFlow worth using?", ""]
    for fw in others:
        if not ev.compared(fw):
            md.append(f"- **{_name(fw)}:** not compared (no case of it beside {_name(REFERENCE)}'s).")
            continue
        md.append(f"- **{_name(fw)}:** {ev.lead(fw, LEAD)}Measurably ahead of {_name(REFERENCE)}: "
                  f"{_list(ev.of(fw, 1, skip=LEAD))}. Behind: {_list(ev.of(fw, -1, skip=LEAD))}. No measurable "
                  f"difference: {_list(ev.of(fw, 0, skip=LEAD))}.")
    if not others:
        md.append(f"- Not answered: {missing}")
    md += ["", "### Would PyTorch be sufficient?", ""]
    for fw in others:
        acc = [v for f, metric, _, v, _ in ev.verdicts if f == fw and metric == "accuracy"]
        if not ev.compared(fw):
            continue
        same = sum(1 for v in acc if v == 0)
        accuracy = (f"the same accuracy (no difference the test set resolves) on {same} of {len(acc)} judged models"
                    if acc else "accuracy not judged (random initialisation, or no paired case)")
        md.append(f"- Against {_name(fw)}: {accuracy}; PyTorch measurably behind on: {_list(ev.of(fw, 1))}.")
    if not any(ev.compared(fw) for fw in others):
        md.append(f"- Not answered: {missing}")
    md += ["", "### The real advantages and disadvantages", ""] + (evidence or [f"- Not answered: {missing}"])
    md += ["", "### How much do the differences matter in a typical project?", ""]
    cost = [line for m in models_in(ft) if (line := project_line(m, ft))] + dx_lines(run.get("dx") or {}, ran)
    alone = [line for m in models_in(ft) if (line := project_line(m, ft, alone=True))] if not cost else []
    md += (cost or [f"- Not compared: {missing}"] + [f"{x} Nothing to compare it with." for x in alone]) + [""]
    md += setup_changes({s: {k: b for k, b in f.items() if ok(b)} for s, f in fts.items()},
                        {s: {k: b for k, b in t.items() if ok(b)} for s, t in tss.items()})
    md += history_changes(runs, setup)
    return md


def unanswered(ft: dict, bad: list[dict], shaken: list[tuple[str, list[str]]]) -> str:
    """Why a question has no comparison to answer it: what passed on a quiet machine, and what did not."""
    from .results import case_name
    judged = sorted({_name(fw) for fw, _ in ft})
    parts = [f"{_name(REFERENCE)}, the reference every finding compares with, has no case that passed on a quiet "
             f"machine" if not any(fw == REFERENCE for fw, _ in ft) else
             f"no other framework has a case that passed on a quiet machine beside {_name(REFERENCE)}'s"]
    parts.append(f"passed and quiet: {', '.join(judged) if judged else 'none'}")
    if bad:
        parts.append(f"failed: {', '.join(case_name(b) for b in bad)} (see Cases that failed)")
    if shaken:
        parts.append(f"disturbed: {', '.join(n for n, _ in shaken)}")
    return "; ".join(parts) + "."
