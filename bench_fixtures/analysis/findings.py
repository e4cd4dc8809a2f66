"""The answer first: the report's findings, in plain sentences, from the run's own figures.

The experiment asked four questions: is TensorFlow worth using, would PyTorch be sufficient, what
are the real advantages and disadvantages, and how much do they matter in a typical project. Each
sentence here carries its uncertainty and says "no measurable difference" when the data cannot
separate the frameworks:
- steady throughput: the rounds' min-max ranges (test_train_step); apart = measurable;
- the whole fine-tune's time and its energy: the same ranges over its rounds, and NOISE between
  the medians (one round each: NOISE alone); energy not measured is said with its reason, never 0;
- accuracy: the 95% margin of a difference of two proportions at the test set's size;
- a figure measured once (time to first step, gaps, memory, import time): within NOISE of each
  other is no measurable difference, NOISE being how far this suite's repeated runs moved.
Every number is one a table of the report shows, or a ratio of two of them.
"""
from __future__ import annotations

import math
import statistics

from ..models import REFERENCE
from ..registry import FRAMEWORKS as REGISTRY, NAMES
from ..settings import COMPARABLE
from ..telemetry.energy import SOURCES
from .results import (Case, Run, as_case, as_run, is_number, models_in, round_rates,  # noqa: F401 (report's import)
                      significant)

NOISE = 0.20  # repeated runs of one case on the shared 2-core CI machine moved by up to 20% (#18's note)
LEAD = "whole fine-tune time"  # the seed's first metric: each answer opens with it
GAP_FLOOR_S = 0.05  # gaps shorter than this are below what one run can compare
Z95 = 1.96
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


# --------------------------------------------------------------------------- the figures

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


def finetune_line(model: str, ft: dict[tuple[str, str], Case], ev: Evidence) -> str | None:
    """The seed's first metric: the whole fine-tune (every epoch, its gaps and first steps), as the
    user waits for it."""
    times = {fw: ft[(fw, model)].finetune_times for fw in NAMES if (fw, model) in ft}
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


def throughput_line(model: str, ts: dict[tuple[str, str], Case], ev: Evidence) -> str | None:
    rates = {fw: ts[(fw, model)].round_rates for fw in NAMES if (fw, model) in ts}
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


def _why_first_step(fw: str, c: Case) -> str:
    """What the first step paid for: the framework's own (its registry record), or what the run's
    settings add to it (torch.compile, XLA)."""
    why = REGISTRY[fw].first_step if fw in REGISTRY else ""
    if c.settings.get("torch_compile"):
        return "torch.compile"
    return why + (" and XLA compilation" if c.settings.get("xla") and "XLA" not in why else "")


def first_step_line(model: str, ft: dict[tuple[str, str], Case], ev: Evidence) -> str | None:
    vals = {fw: ft[(fw, model)].time_to_first_step for fw in NAMES if (fw, model) in ft}
    vals = {fw: v for fw, v in vals.items() if v is not None}
    if REFERENCE not in vals or len(vals) < 2:
        return None
    ref, parts, same = vals[REFERENCE], [], []
    for fw, v in vals.items():
        parts.append(f"{_name(fw)} {v:.2f} s ({_why_first_step(fw, ft[(fw, model)])})")
        if fw != REFERENCE:
            differ = once_differ(v, ref)
            ev.add(fw, "time to first step", model, (1 if v < ref else -1) if differ else 0, f"{v:.2f} s vs {ref:.2f} s")
            if not differ:
                same.append(_name(fw))
    tail = f"; {', '.join(same)} and {_name(REFERENCE)}: no measurable difference (within {NOISE:.0%})" if same else ""
    return f"- **Time to first step, {model}:** {', '.join(parts)}; one measurement each, paid once per process{tail}."


def gap_line(model: str, ft: dict[tuple[str, str], Case], ev: Evidence) -> str | None:
    vals = {fw: ft[(fw, model)].mean_gap for fw in NAMES if (fw, model) in ft}
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


def memory_line(model: str, ft: dict[tuple[str, str], Case], ev: Evidence, device: str) -> str | None:
    mib = {fw: ft[(fw, model)].peak_memory() for fw in NAMES if (fw, model) in ft}
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


def accuracy_line(model: str, ft: dict[tuple[str, str], Case], ev: Evidence, weights: str | None) -> str | None:
    """The margin is the test set's sampling only: each framework trained once (its rounds' spread
    is shown when there were several). From random initialisation the frameworks start from
    different numbers, so a gap in accuracy is not judged a framework difference."""
    cs = {fw: ft[(fw, model)] for fw in NAMES if (fw, model) in ft}
    after = {fw: c.accuracy_after for fw, c in cs.items() if c.accuracy_after is not None}
    if REFERENCE not in after or len(after) < 2:
        return None
    ref, n = after[REFERENCE], cs[REFERENCE].test_size
    values = ", ".join(f"{_name(fw)} {100 * p:.1f}%" for fw, p in after.items())
    verdicts = [_accuracy_verdict(fw, model, ref, p, n, cs[fw].test_size, weights, ev)
                for fw, p in after.items() if fw != REFERENCE]
    rounds = min(len(cs[fw].rounds) or 1 for fw in after)
    once = "one training run each, its spread not in the margin" if rounds < 2 else \
        f"{rounds} training rounds each (their spread: the table's accuracy over rounds)"
    return f"- **Accuracy after fine-tuning, {model}:** {values}; {once}. {'; '.join(verdicts)}."


def _accuracy_verdict(fw: str, model: str, ref: float, p: float, n: int | None, n_fw: int | None,
                      weights: str | None, ev: Evidence) -> str:
    """FW's accuracy P against the reference's REF, both on N test images: judged by the margin."""
    if not (n is not None and n > 0 and n_fw == n):
        return f"{_name(fw)}: test sets differ, not compared"
    margin = accuracy_margin(ref, p, n)
    diff = p - ref
    if abs(diff) <= margin:
        ev.add(fw, "accuracy", model, 0, f"{100 * diff:+.1f} points")
        return f"{_name(fw)}: no difference the test set can resolve (±{100 * margin:.1f} points at n = {n:,})"
    if weights == "none":
        return (f"{_name(fw)} {100 * abs(diff):.1f} points {'ahead' if diff > 0 else 'behind'} (±"
                f"{100 * margin:.1f} at n = {n:,}), not judged: from random initialisation each "
                f"framework starts from other numbers")
    ev.add(fw, "accuracy", model, 1 if diff > 0 else -1, f"{100 * diff:+.1f} points")
    return (f"{_name(fw)} {'ahead' if diff > 0 else 'behind'} by {100 * abs(diff):.1f} points "
            f"(±{100 * margin:.1f} at n = {n:,})")


def project_line(model: str, ft: dict[tuple[str, str], Case], alone: bool = False) -> str | None:
    """What a user waits for: the whole fine-tune, and how much of it is paid once; of two frameworks
    or more, or ALONE of the one that has a case. Priced (`--price-per-hour`): what it costs, per
    fine-tune and per 50-epoch run (projected), in the price's own currency."""
    parts, prices = [], set()
    for fw in NAMES:
        c = ft.get((fw, model))
        if not c or c.median is None:
            continue
        p = c.projection or {}
        text = f"{_name(fw)} {c.median:.2f} s"
        one_time, projected = p.get("one_time_s"), {x.get("epochs"): x for x in p.get("projected") or []}
        if is_number(one_time) and one_time > 0 and is_number(p.get("measured_total_s")) and p["measured_total_s"] > 0:
            share = (projected.get(50) or {}).get("overhead_share")
            text += (f" ({one_time:.3f} s of it paid once"
                     + (f"; overhead {100 * share:.1f}% of a 50-epoch run, projected" if is_number(share) else "") + ")")
        money = _money_of(c)
        if money:
            text += f" = {money}"
            prices.add(c.cost["price_per_hour"])
        parts.append(text)
    if len(parts) < (1 if alone else 2):
        return None
    # a priced part holds commas of its own: the parts are then set apart by semicolons
    price = f" At {next(iter(prices)):g} per hour (--price-per-hour)." if len(prices) == 1 else ""
    return f"- **What a fine-tune costs, {model}:** {('; ' if prices else ', ').join(parts)}.{price}"


def _money_of(c: Case) -> str:
    """'0.00106 per fine-tune (3 rounds 0.00101–0.00112), 0.0258 for 50 epochs (projected)' of a priced
    case; "" when not priced."""
    cost = c.cost or {}
    if not is_number(cost.get("finetune")) or not is_number(cost.get("price_per_hour")):
        return ""
    text = f"{significant(cost['finetune'], 2)} per fine-tune"
    times = c.finetune_times
    if len(times) > 1:  # the rounds' spread, as the time's
        price = cost["price_per_hour"] / 3600
        text += f" ({len(times)} rounds {significant(min(times) * price, 2)}–{significant(max(times) * price, 2)})"
    if is_number(cost.get("horizon")) and is_number(cost.get("horizon_epochs")):
        text += f", {significant(cost['horizon'], 2)} for {cost['horizon_epochs']:g} epochs (projected)"
    return text


def _meter(source: str | None) -> str | None:
    """The meter family of an energy source: figures of one family compare, of two do not."""
    return SOURCES[source].meter if source in SOURCES else None


def _why_not(c: Case) -> str:
    """Why C has no energy figure, without the record's 'not measured: ' ("" when it gives none)."""
    return (c.energy_reason or "").removeprefix("not measured").removeprefix(":").strip()


def _not_measured(cases: dict[tuple[str, str], Case]) -> str:
    """'not measured: why' of CASES, the reason once where they share it, else each case's."""
    reasons: dict[str, list[str]] = {}
    for (fw, m), c in cases.items():
        reasons.setdefault(_why_not(c), []).append(f"{_name(fw)} {m}")
    if len(reasons) == 1:
        why = next(iter(reasons))
        return f"not measured: {why}" if why else "not measured"
    return "not measured. " + "; ".join(f"{', '.join(names)}: {why or 'no reason recorded'}"
                                        for why, names in reasons.items())


def energy_lines(ft: dict[tuple[str, str], Case], alone: bool = False) -> list[str]:
    """The energy of a fine-tune per model, judged as its time is (the rounds' ranges, else NOISE),
    with the meter said once; where nothing was measured, one line saying why (never a zero, never
    a ratio). A run from before energy was recorded has no energy line. ALONE: of one framework too."""
    cases = {k: c for k, c in ft.items() if c.energy is not None}
    if not cases or (not alone and len({fw for fw, _ in cases}) < 2):
        return []
    if all(c.energy_j is None for c in cases.values()):
        return [f"- **Energy of a fine-tune:** {_not_measured(cases)}."]
    said: set[str] = set()
    return [line for m in models_in(cases) if (line := energy_line(m, cases, said, alone))]


def energy_line(model: str, cases: dict[tuple[str, str], Case], said: set[str], alone: bool = False) -> str | None:
    """MODEL's joules per fine-tune (the round with the median joules; the rounds' min–max), per image, and each
    framework's against the reference's. SAID: the meters already described (each is, once)."""
    cs = {fw: cases[(fw, model)] for fw in NAMES if (fw, model) in cases}
    if len(cs) < (1 if alone else 2):
        return None
    if all(c.energy_j is None for c in cs.values()):
        return f"- **Energy of a fine-tune, {model}:** {_not_measured({(fw, model): c for fw, c in cs.items()})}."
    meters = {_meter(c.energy["source"]) for c in cs.values() if c.energy_j is not None}
    counts = {x.meter: x.counts for x in SOURCES.values()}  # what each family's figure holds, said once
    new = [counts[k] for k in sorted(meters - said, key=str) if k in counts]
    said |= meters
    parts, joules = [], {}
    for fw, c in cs.items():
        if c.energy_j is None:
            parts.append(f"{_name(fw)} not measured" + (f": {_why_not(c)}" if _why_not(c) else ""))
            continue
        joules[fw] = j = c.energy_rounds if len(c.energy_rounds) > 1 else [c.energy_j]
        spread = f", {len(j)} rounds {significant(min(j))}–{significant(max(j))}" if len(j) > 1 else ", one round"
        per_image = f", {significant(c.energy_per_image)} J per image" if c.energy_per_image is not None else ""
        parts.append(f"{_name(fw)} {significant(c.energy_j)} J{spread}{per_image}")
    head = f"- **Energy of a fine-tune, {model}** ({'; '.join(new)}):" if new else \
        f"- **Energy of a fine-tune, {model}:**"
    return f"{head} {'; '.join(parts)}.{_energy_verdicts(joules, cs)}"


def _energy_verdicts(joules: dict[str, list[float]], cs: dict[str, Case]) -> str:
    """' TensorFlow 6.72× PyTorch's energy, more; ...' (less is better, as time is), or why none."""
    if len(cs) == 1:
        return " Nothing to compare it with."
    if REFERENCE not in joules:
        return f" No ratio: {_name(REFERENCE)}'s was not measured." if REFERENCE in cs else ""
    ref, verdicts = joules[REFERENCE], []
    if statistics.median(ref) <= 0:
        return ""  # no ratio to a zero (a counter never reads one: stopped counters give no figure)
    for fw, j in joules.items():
        if fw == REFERENCE:
            continue
        if _meter(cs[fw].energy["source"]) != _meter(cs[REFERENCE].energy["source"]):
            verdicts.append(f"{_name(fw)}: measured by another meter than {_name(REFERENCE)}'s, not compared")
            continue
        ratio = statistics.median(j) / statistics.median(ref)
        v, why = judge_times(j, ref)
        singles = [_name(x) for x, r in ((fw, j), (REFERENCE, ref)) if len(r) < 2]  # judged on NOISE alone
        once = "one measurement each" if len(singles) == 2 else \
            f"one measurement of {singles[0]}'s" if singles else ""
        text = f"{_name(fw)} {ratio:.2f}× {_name(REFERENCE)}'s energy"
        if v:
            verdicts.append(f"{text}, {'less' if v > 0 else 'more'}" + (f" ({once})" if once else ""))
        else:
            verdicts.append(f"{text}: no measurable difference ({'; '.join(x for x in (why, once) if x)})")
    return f" {'; '.join(verdicts)}." if verdicts else ""


def dx_lines(dx: dict, ran: set[str]) -> list[str]:
    lines = []
    dx = {fw: d for fw, d in dx.items() if fw in ran}
    imports = {fw: d.get("import_s") for fw, d in dx.items() if is_number(d.get("import_s"))}
    if len(imports) > 1:
        lines.append("- **Import:** " + ", ".join(f"{_name(fw)} {v:.2f} s" for fw, v in imports.items())
                     + " (median of fresh worker processes).")
    sizes = {fw: d.get("footprint_bytes") for fw, d in dx.items() if is_number(d.get("footprint_bytes"))}
    if len(sizes) > 1:
        lines.append("- **Install footprint** (own packages, without GPU libraries): "
                     + ", ".join(f"{_name(fw)} {v / 2**20:,.0f} MiB" for fw, v in sizes.items()) + ".")
    return lines


def caveats(cfg: dict, run: Run, ft: dict[tuple[str, str], Case]) -> list[str]:
    """What the figures are, in one list: profile, data, device, setup, starting weights, replicas."""
    out = []
    profile, device = cfg.get("profile"), cfg.get("device")
    e = next((c.extra_info for c in ft.values()), {})
    sizes = f"{e.get('train_size', '?'):,} training and {e.get('test_size', '?'):,} test images" \
        if is_number(e.get("train_size")) and is_number(e.get("test_size")) else "its training and test images"
    if profile == "smoke":
        out.append(f"Smoke profile: {cfg.get('dataset')} data, {sizes}, {cfg.get('epochs')} epochs. It checks "
                   f"that the suite works; the seed profile (full CIFAR-10, 5 epochs, ImageNet weights) answers "
                   f"the question.")
    elif profile:
        out.append(f"Profile {profile}: {cfg.get('dataset')}, {sizes}, {cfg.get('epochs')} epochs at batch "
                   f"{cfg.get('batch_size')}.")
    gpu = run.machine_info.get("gpu_name")
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
        for fw in NAMES:
            rates = [round_rates(tss[s].get((fw, m))) for s in names]
            firsts = [c.time_to_first_step if (c := fts[s].get((fw, m))) else None for s in names]
            parts = []
            if all(len(r) > 1 for r in rates):
                a, b = (statistics.median(r) for r in rates[:2])
                moved = (min(rates[0]) > max(rates[1]) or max(rates[0]) < min(rates[1])) and once_differ(a, b)
                parts.append(f"steady {a:.1f} → {b:.1f} images/s" + ("" if moved else " (no measurable change: "
                                                                                         "the rounds overlap or within 20%)"))
            if all(x is not None for x in firsts[:2]):
                parts.append(f"time to first step {firsts[0]:.2f} → {firsts[1]:.2f} s"
                             + ("" if once_differ(firsts[0], firsts[1]) else f" (within {NOISE:.0%})"))
            if parts:
                lines.append(f"- **{_name(fw)}, {m}:** {'; '.join(parts)}.")
    return lines + [""]


# Options left to the framework (None: its default) and the read-back settings that say what it ran with.
READ_BACK = {"precision": ("compute_dtype",), "compile": ("xla", "torch_compile")}


def _asked(run: Run, key: str) -> str:
    """KEY of RUN's config as it ran: the value asked for, or, left to each framework's default, what
    the frameworks read back (e.g. `precision default (read back: torch float32, …)`)."""
    value = run.bench_config.get(key)
    if value is not None or key not in READ_BACK:
        return repr(value)
    seen: dict[str, set[str]] = {}
    for (fw, _), c in run.select("test_finetune").items():
        for k in READ_BACK[key]:
            if c.settings.get(k) is not None:
                seen.setdefault(fw, set()).add(f"{k} {c.settings[k]}")
    if not seen:
        return "each framework's default (not read back in this run)"
    return "each framework's default (read back: " + ", ".join(
        f"{fw} {'/'.join(sorted(v))}" for fw, v in seen.items()) + ")"


def history_changes(runs: list[Run], setup: str) -> list[str]:
    """The last run against the one before it: each case's fine-tune time, and what else changed:
    the machine, and any setting that makes two runs compare different work (settings.COMPARABLE)."""
    if len(runs) < 2:
        return []
    (before_run, after_run) = runs[-2:]
    before, after = before_run.select("test_finetune", setup), after_run.select("test_finetune", setup)
    lines = [f"### What changed since the previous run (run {len(runs) - 1} → {len(runs)})", ""]
    if before_run.machine != after_run.machine:
        lines.append(f"- **Another machine:** {before_run.machine or 'unknown'} → {after_run.machine or 'unknown'}: "
                     f"the changes below include the machine's.")
    changed = [f"{k} {_asked(before_run, k)} → {_asked(after_run, k)}" for k in COMPARABLE
               if before_run.bench_config.get(k) != after_run.bench_config.get(k)]
    if changed:
        lines.append(f"- **Another experiment:** {', '.join(changed)}: the times below compare different work, "
                     f"not a regression.")
    for (fw, m) in sorted(after.keys() & before.keys()):
        a, b = before[(fw, m)].median, after[(fw, m)].median
        if a is not None and b is not None and a > 0:
            lines.append(f"- **{fw}-{m}:** fine-tune {a:.1f} → {b:.1f} s ({100 * (b - a) / a:+.0f}%"
                         + (")" if once_differ(a, b) else f", within {NOISE:.0%}: no measurable change)") + ".")
    return lines + [""] if len(lines) > 2 else []


def disturbed(c: Case) -> list[str]:
    """Why this case's figures were taken on a busy machine; empty: quiet, or not measured."""
    status, reasons = c.disturbance
    return reasons if status else []


def bn_diagnosis(c: Case) -> str | None:
    """What the case's read-back BatchNorm momentum (torch's convention: the new batch's weight)
    leaves of the moving statistics' starting values after its training steps: from random
    initialisation, statistics still near their start normalise evaluation with the wrong numbers."""
    listed = c.settings.get("bn_momentum")
    momenta = [m for m in listed if is_number(m) and 0 < m <= 1] if isinstance(listed, list) else []
    epochs, per_epoch = c.extra_info.get("epochs"), c.extra_info.get("steps_per_epoch")
    steps = (epochs or 0) * (per_epoch or 0) if is_number(epochs) and is_number(per_epoch) else 0
    if not momenta or not steps or steps > 10**7:
        return None
    m = min(momenta)
    kept = (1 - m) ** steps
    if kept < 0.25:
        return None
    return (f"BatchNorm momentum {m:g} (torch's convention, read back): after {steps:,} training steps its moving "
            f"statistics still hold {kept:.0%} of their initial values, so evaluation normalises with statistics "
            f"that have barely seen the data" + (" (from random initialisation)" if c.extra_info.get("weights") == "none"
                                                  else ""))


def failure_lines(bad: list[Case], cfg: dict, fts: dict[str, dict[tuple[str, str], Case]]) -> list[str]:
    """Each failed case: in which setup, what failed (from its own figures), and what its read-back
    settings say about why, beside the same model's passing case in the same setup."""
    gain = cfg.get("min_accuracy_gain")
    lines = []
    for c in bad:
        passed = {k: x for k, x in (fts.get(c.setup) or {}).items() if not x.failed}
        what = []
        before, after = c.accuracy_before, c.accuracy_after
        if before is not None and after is not None:
            short = is_number(gain) and after < before + gain
            what.append(f"accuracy {100 * before:.1f}% → {100 * after:.1f}%"
                        + (f", under the required gain of {100 * gain:.0f} points" if short else ""))
        if c.telemetry_problems:
            what.append(f"untrustworthy figures: {c.telemetry_problems[0]}")
        why = bn_diagnosis(c)
        same = [(fw, x) for (fw, m), x in passed.items() if m == c.model]
        if why and same:
            fw, other = same[0]
            mo = other.settings.get("bn_momentum")
            why += (f"; {_name(fw)}'s passing case: momentum {mo[0]:g}" if isinstance(mo, list) and mo and is_number(mo[0])
                    else "") + (" with the same problem" if bn_diagnosis(other) else "")
        lines.append(f"- **{c.name}** (setup {c.setup}): "
                     + ("; ".join(what) or "the test failed (see its log)") + (f". Why, from its settings: {why}" if why
                                                                              else "") + ".")
    return lines


def _as_cases(by_setup: dict[str, dict]) -> dict[str, dict[tuple[str, str], Case]]:
    return {s: {k: as_case(b) for k, b in by_case.items()} for s, by_case in by_setup.items()}


def findings(fts: dict[str, dict], tss: dict[str, dict], runs: list[Run | dict]) -> list[str]:
    """The findings section (markdown lines) of the last run, its first setup; the other setups and
    the previous run are compared in their own subsections. A FAILED case's numbers are no result,
    and a disturbed one's (measured on a busy machine) are not judged: both are left out of the
    comparisons, named, and every question says what can still be answered without them.
    FTS / TSS: setup -> (framework, model) -> Case (or its benchmark dict); RUNS: oldest first."""
    fts, tss, runs = _as_cases(fts), _as_cases(tss), [as_run(r) for r in runs]
    run, setup = runs[-1], next(iter(fts))
    every = [c for src in (fts[setup], tss[setup]) for c in src.values()]
    bad = [c for src in (*fts.values(), *tss.values()) for c in src.values() if c.failed]  # in every setup
    shaken = [(c.name, why) for c in every if not c.failed and (why := disturbed(c))]
    quiet = {s: {k: c for k, c in by_case.items() if not c.failed and not disturbed(c)} for s, by_case in fts.items()}
    quiet_ts = {s: {k: c for k, c in by_case.items() if not c.failed and not disturbed(c)} for s, by_case in tss.items()}
    ft, ts = quiet[setup], quiet_ts[setup]
    ev = Evidence()
    evidence = _evidence(ft, ts, ev, run.bench_config)
    md = _opening(run, setup, shaken, bad, ft or fts[setup])
    if bad:
        md += ["### Cases that failed", ""] + failure_lines(bad, run.bench_config, fts) + [""]
    md += _answers(ev, ft, run, evidence, unanswered(ft, bad, shaken))
    return md + setup_changes(quiet, quiet_ts) + history_changes(runs, setup)


def _evidence(ft: dict, ts: dict, ev: Evidence, cfg: dict) -> list[str]:
    """Every comparison per model, in the order the report's tables list them; each adds its verdicts to EV."""
    lines: list[str] = []
    for m in models_in(ft):
        lines += [line for line in (finetune_line(m, ft, ev), accuracy_line(m, ft, ev, cfg.get("weights")),
                                    throughput_line(m, ts, ev), first_step_line(m, ft, ev), gap_line(m, ft, ev),
                                    memory_line(m, ft, ev, cfg.get("device") or "cpu")) if line]
    return lines


def _opening(run: Run, setup: str, shaken: list[tuple[str, list[str]]], bad: list[Case], ft: dict) -> list[str]:
    """The heading and what the figures are: disturbed cases first, then the caveats, then the failed."""
    md = ["## Findings", "", f"From this run's figures (setup {setup}); the tables below hold every number "
          f"(ratios and margins are computed from them). What they are:", ""]
    if shaken:
        md.append("- **Disturbed, not judged:** " + "; ".join(f"{n}: {why[0]}" for n, why in shaken)
                  + ". Something else used the machine while they were timed; their figures are in the tables, "
                    "marked, and left out of every comparison below.")
    md += [f"- {c}" for c in caveats(run.bench_config, run, ft)]
    md += [f"- Left out, their numbers are no result: {', '.join(c.name for c in bad)} (FAILED)."] if bad else []
    return md + [""]


def _answers(ev: Evidence, ft: dict, run: Run, evidence: list[str], missing: str) -> list[str]:
    """The four questions, each answered from EV's verdicts (or said why it cannot be)."""
    others = [fw for fw in NAMES if fw != REFERENCE and fw in {fw for fw, _ in ft}]
    md = ["### Is TensorFlow worth using?", ""]
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
    for fw in (fw for fw in others if ev.compared(fw)):
        acc = [v for f, metric, _, v, _ in ev.verdicts if f == fw and metric == "accuracy"]
        same = sum(1 for v in acc if v == 0)
        accuracy = (f"the same accuracy (no difference the test set resolves) on {same} of {len(acc)} judged models"
                    if acc else "accuracy not judged (random initialisation, or no paired case)")
        md.append(f"- Against {_name(fw)}: {accuracy}; PyTorch measurably behind on: {_list(ev.of(fw, 1))}.")
    if not any(ev.compared(fw) for fw in others):
        md.append(f"- Not answered: {missing}")
    md += ["", "### The real advantages and disadvantages", ""] + (evidence or [f"- Not answered: {missing}"])
    md += ["", "### How much do the differences matter in a typical project?", ""]
    cost = [line for m in models_in(ft) if (line := project_line(m, ft))] + energy_lines(ft) \
        + dx_lines(run.dx, {fw for fw, _ in ft})
    if cost:
        return md + cost + [""]
    alone = [f"{line} Nothing to compare it with." for m in models_in(ft) if (line := project_line(m, ft, alone=True))]
    return md + [f"- Not compared: {missing}"] + alone + energy_lines(ft, alone=True) + [""]


def unanswered(ft: dict, bad: list[Case], shaken: list[tuple[str, list[str]]]) -> str:
    """Why a question has no comparison to answer it: what passed on a quiet machine, and what did not."""
    judged = sorted({_name(fw) for fw, _ in ft})
    parts = [f"{_name(REFERENCE)}, the reference every finding compares with, has no case that passed on a quiet "
             f"machine" if not any(fw == REFERENCE for fw, _ in ft) else
             f"no other framework has a case that passed on a quiet machine beside {_name(REFERENCE)}'s"]
    parts.append(f"passed and quiet: {', '.join(judged) if judged else 'none'}")
    if bad:
        parts.append(f"failed: {', '.join(c.name for c in bad)} (see Cases that failed)")
    if shaken:
        parts.append(f"disturbed: {', '.join(n for n, _ in shaken)}")
    return "; ".join(parts) + "."
