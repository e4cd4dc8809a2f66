"""`bench parity [--setup matched|defaults] [--weights none|imagenet|same|DIR] [--weights-dir DIR]
[--train-layers all|head] [--image-size N]`: the parity table.

Builds each model in every installed framework (in their own worker processes) and prints trainable and
non-trainable parameters, BatchNorm and optimizer settings as the frameworks report them back,
the framework settings of the setup (read back: TF32, cuDNN autotuning, XLA, allocator, tf.data
autotuning, BatchNorm, Adam epsilon), then any parity problem; exit 1 if there is one. In the
defaults setup the settings differ by design and are listed, not counted as problems. With
`--weights same` it also compares the frameworks' logits on the same test images: the same start,
checked (exit 1 beyond models.SAME_START_TOLERANCE).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from typing import Any

import numpy as np

from ..config import ConfigError, resolve
from ..data import LABEL_NAMES, NUM_CLASSES, Cifar10, make_bundle, make_synthetic
from ..models import FIRST_STEP_TOLERANCE, PARITY_TOLERANCE, REFERENCE, SAME_START_TOLERANCE, SPECS
from ..registry import FRAMEWORKS, installed, unavailable
from ..runner.experiment import describe_models
from ..runner.worker import WorkerError
from ..weights import verdict

# The audit (parity_rows from the workers' descriptions, parity_problems, the notes and the table) holds
# the frameworks to the facts of models.py; `main` (below) is `bench parity`.


def logit_gap(a: Any, b: Any) -> float | None:
    """max |a - b| / max |a| over two frameworks' logits for the same images; None without both."""
    if a is None or b is None:
        return None
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.size == 0:
        return float("inf")
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-12))


def parity_rows(descriptions: list[dict]) -> list[dict]:
    """One row per (model, framework) from the workers' `describe` answers, plus a verdict per model."""
    rows = []
    by_model: dict[str, dict[str, dict]] = {}
    for d in descriptions:
        by_model.setdefault(d["model"], {})[d["framework"]] = d
    for model in sorted(by_model):
        pair = by_model[model]
        counts = [pair[f]["trainable_params"] for f in pair]
        rel = (max(counts) - min(counts)) / max(counts) if len(counts) >= 2 else None
        for framework in sorted(pair):
            d = pair[framework]
            rows.append(dict(model=model, framework=framework,
                             trainable_params=d["trainable_params"],
                             non_trainable_params=d["non_trainable_params"],
                             bn=d["batchnorm"], optimizer=d["optimizer"], loss=d["loss"],
                             input_transform=d["input_transform"], precision=d["precision"],
                             settings=d.get("settings") or {}, trainable_rel_diff=rel, flops=d.get("flops") or {},
                             train_layers=d.get("train_layers", "all"), frozen_params=d.get("frozen_params"),
                             start=d.get("start") or {}, logits=d.get("logits"),
                             accuracy_before=d.get("accuracy_before"), first_step_loss=d.get("first_step_loss"),
                             explained="; ".join(SPECS[model].differences)))
    return rows


def _bn_momentum(bn: Any) -> Any:
    return sorted({m for m, _ in bn}) if isinstance(bn, list) else bn


def _by_model(rows: list[dict]) -> dict[str, list[dict]]:
    """Parity rows grouped by model, in their order."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["model"], []).append(r)
    return out


def _finite(v: Any) -> bool:
    """A real number (not a bool, NaN or inf)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def reference(group: list[dict]) -> dict:
    """The row the others of a model are compared with: REFERENCE's where it ran, else the first."""
    return next((r for r in group if r["framework"] == REFERENCE), group[0])


def first_step_gap(a: Any, b: Any) -> float | None:
    """|a - b| relative to |b|; None when either is not a finite number."""
    return abs(a - b) / max(abs(b), 1e-30) if _finite(a) and _finite(b) else None


def parity_problems(rows: list[dict], setup: str = "matched", weights: str = "none") -> list[str]:
    """What breaks parity: parameter counts beyond tolerance without an explanation, or BN,
    optimizer or loss settings that the frameworks do not share (each compared with `reference`).
    In the defaults setup the settings differ by design (see `parity_notes`); pretrained backbones
    keep their own BatchNorm epsilon, so with ImageNet weights only the momentum must agree.
    Frameworks that start from the same parameters must take the same first step (when measured)."""
    problems = []
    for model, group in _by_model(rows).items():
        if len(group) < 2:
            problems.append(f"{model}: described by {len(group)} framework(s), need two or more")
            continue
        b = reference(group)
        others = [r for r in group if r is not b]
        for a in others if weights == "same" else ():
            gap = logit_gap(a.get("logits"), b.get("logits"))
            if not (gap is not None and gap <= SAME_START_TOLERANCE):  # unmeasured, NaN: fail
                problems.append(f"{model}: --weights same, but {a['framework']}'s and {b['framework']}'s logits on "
                                f"the same images differ by {'an unmeasured amount' if gap is None else f'{gap:.2e}'} "
                                f"(> {SAME_START_TOLERANCE:g} of the largest): not the same start")
            if a.get("accuracy_before") != b.get("accuracy_before"):
                problems.append(f"{model}: --weights same, but accuracy before training differs: {a['framework']} "
                                f"{a.get('accuracy_before')} vs {b['framework']} {b.get('accuracy_before')}")
        head = SPECS[model].feature_dim * NUM_CLASSES + NUM_CLASSES
        for r in group if b.get("train_layers") == "head" else ():
            if r["trainable_params"] != head:
                problems.append(f"{model}: --train-layers head, but {r['framework']} trains {r['trainable_params']:,} "
                                f"parameters, not the head's {head:,}")
        if b["trainable_rel_diff"] > PARITY_TOLERANCE and not SPECS[model].differences:
            problems.append(f"{model}: trainable parameters " + " vs ".join(str(r["trainable_params"]) for r in group)
                            + f" differ by {b['trainable_rel_diff']:.2%} (> {PARITY_TOLERANCE:.1%}) with no "
                              f"explanation in models.SPECS")
        for a in others:
            for key in ("bn", "optimizer", "loss", "precision") if setup == "matched" else ("loss",):
                va, vb = a[key], b[key]
                if key == "bn" and weights == "imagenet":  # same: one checkpoint, so one epsilon
                    va, vb = _bn_momentum(va), _bn_momentum(vb)
                if va != vb:
                    problems.append(f"{model}: {key} differs: {a['framework']} {va} vs {b['framework']} {vb}")
        keras = [r for r in group if FRAMEWORKS.get(r["framework"]) and FRAMEWORKS[r["framework"]].zoo == "keras"]
        for a, c in zip(keras, keras[1:]):  # one Keras model on two runtimes: nothing may differ, in either setup
            for key in ("trainable_params", "non_trainable_params", "bn", "optimizer", "loss", "input_transform"):
                if a[key] != c[key]:
                    problems.append(f"{model}: the Keras model differs between runtimes: {key} {a['framework']} "
                                    f"{a[key]} vs {c['framework']} {c[key]}")
        for a, c in _same_start_pairs(group):
            if not all(_exact_fp32(r) for r in (a, c)):  # TF32, bf16 or fp16: a note, not a check
                continue
            gap = first_step_gap(a["first_step_loss"], c["first_step_loss"])
            if gap is None or gap > FIRST_STEP_TOLERANCE:
                problems.append(f"{model}: {a['framework']} and {c['framework']} start from the same parameters, but "
                                f"their first-step losses {a['first_step_loss']} vs {c['first_step_loss']} differ by "
                                f"{'an unmeasured amount' if gap is None else f'{gap:.2e}'} (> "
                                f"{FIRST_STEP_TOLERANCE:g} relative)")
    return problems


def _exact_fp32(r: dict) -> bool:
    """fp32 without TF32: where 1e-4 holds (TF32 and mixed precision round at 1e-3 and coarser)."""
    s = r.get("settings") or {}
    return r.get("precision") == "fp32" and not s.get("tf32_matmul") and not s.get("tf32_conv")


def _same_start_pairs(group: list[dict]) -> list[tuple[dict, dict]]:
    """Pairs of rows with a measured first step that start from the same parameters (hash)."""
    measured = [r for r in group if r.get("first_step_loss") is not None
                and (r.get("start") or {}).get("params_sha256")]
    return [(a, c) for i, a in enumerate(measured) for c in measured[i + 1:]
            if a["start"]["params_sha256"] == c["start"]["params_sha256"]]


def first_step_notes(rows: list[dict]) -> list[str]:
    """Per model, the first-step losses of frameworks that start from the same parameters."""
    out = []
    for model, group in sorted(_by_model(rows).items()):
        for a, c in _same_start_pairs(group):
            gap = first_step_gap(a["first_step_loss"], c["first_step_loss"])
            out.append(f"- {model}: {a['framework']} and {c['framework']} start from the same parameters; first-step "
                       f"loss {a['first_step_loss']:.7g} vs {c['first_step_loss']:.7g}, "
                       + ("unmeasured" if gap is None else f"{gap:.1e} apart")
                       + f" (tolerance {FIRST_STEP_TOLERANCE:g})")
    return out


SETTING_KEYS = ("compute_dtype", "loss_scale", "memory_format", "tf32_matmul", "tf32_conv", "matmul_precision",
                "cudnn_autotune", "xla", "compile_requested", "memory_growth", "memory_allocator", "memory_peak_scope",
                "input_autotune", "prefetch", "bn_momentum", "bn_eps", "adam_eps", "compilation_cache")


def parity_notes(rows: list[dict], setup: str = "matched", weights: str = "none") -> list[str]:
    """The settings as each framework read them back, one line each, marking where they differ
    and why that is expected (the defaults setup; a pretrained backbone's own epsilon)."""
    by_fw: dict[str, dict] = {}
    for r in rows:
        by_fw.setdefault(r["framework"], r.get("settings") or {})
    lines = []
    for key in SETTING_KEYS:
        values = {fw: s.get(key) for fw, s in sorted(by_fw.items())}
        if all(v is None for v in values.values()):
            continue
        same = len({repr(v) for v in values.values()}) == 1
        why = "" if same else (" (each framework's default: setup defaults)" if setup == "defaults" else
                               " (each pretrained backbone keeps the epsilon it was trained with)"
                               if key == "bn_eps" and weights == "imagenet" else
                               " (a persistent compilation cache: JAX's first steps and builds are not cold)"
                               if key == "compilation_cache" else
                               " (the frameworks differ here by nature)" if key in ("xla", "compile_requested",
                                                                                    "memory_allocator", "input_autotune",
                                                                                    "prefetch", "memory_format",
                                                                                    "matmul_precision", "memory_growth",
                                                                                    "memory_peak_scope")
                               else "")
        lines.append(f"- {key}: " + ", ".join(f"{fw} {v}" for fw, v in values.items())
                     + ("" if same else " — differs" + why))
    return lines


def gflops(v: Any, digits: int = 4) -> str:
    """FLOPs as GFLOPs to DIGITS significant digits; "–" for anything not a finite number."""
    return f"{v / 1e9:.{digits}g}" if _finite(v) else "–"


def start_text(start: Any) -> str:
    """The "weights: the start" cell: the checkpoint (file, sha256, whether it is the published file)
    or random init, and the hash of the initial parameters."""
    if not isinstance(start, dict) or not start:
        return "–"
    parts = [str(start.get("source"))]
    if start.get("file"):
        parts.append(f"{start['file']} sha256 {start.get('sha256')} ({verdict(start)})")
    parts.append(f"parameters sha256 {start.get('params_sha256')}")
    return "; ".join(parts)


def flops_notes(rows: list[dict]) -> list[str]:
    """Per model, how far the frameworks' training FLOPs per image differ, and what each counter
    could not count."""
    notes, by_model = [], {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["framework"]] = r.get("flops") or {}
    for model, counts in by_model.items():
        train = {fw: c.get("train_per_image") for fw, c in sorted(counts.items()) if c.get("train_per_image")}
        if len(train) >= 2:
            low, high = min(train.values()), max(train.values())
            notes.append(f"- {model}: training FLOPs per image " + ", ".join(f"{fw} {gflops(v)} G" for fw, v in
                                                                          train.items())
                         + f" ({(high - low) / low:.2%} apart)")
        for fw, c in sorted(counts.items()):
            if c.get("uncounted_ops"):
                notes.append(f"- {model}, {fw}: its counter has no formula for {', '.join(c['uncounted_ops'])} "
                             f"(not in its count)")
    return notes


def same_start_notes(rows: list[dict]) -> list[str]:
    """Per model run with `--weights same`: how far each framework's logits on the same images are
    from the reference framework's (see `reference`)."""
    out = []
    for model, group in sorted(_by_model([r for r in rows if r.get("logits") is not None]).items()):
        b = reference(group)
        for a in (r for r in group if r is not b):
            gap = logit_gap(a["logits"], b["logits"])
            acc = [a.get("accuracy_before"), b.get("accuracy_before")]
            out.append(f"- {model}: same start: {a['framework']} and {b['framework']} logits on "
                       f"{len(b['logits'])} test images differ by at most "
                       + ("an unmeasured amount" if gap is None else f"{gap:.2e}") + " of the largest "
                       f"(tolerance {SAME_START_TOLERANCE:g}); accuracy before training "
                       + (f"{acc[0]:.4f} in both" if acc[0] == acc[1] and acc[0] is not None else
                          f"{acc[0]} vs {acc[1]}")
                       + (f" ({SPECS[model].keras_same_note})" if SPECS[model].keras_same_note else ""))
    return out


def format_parity(rows: list[dict]) -> str:
    lines = ["| model | framework | trainable | non-trainable (frozen) | diff | BN (momentum, eps) | optimizer | "
             "precision | GFLOPs/image forward | GFLOPs/image training | weights: the start |",
             "|---|---|---:|---:|---:|---|---|---|---:|---:|---|"]
    for r in rows:
        diff = "" if r["trainable_rel_diff"] is None else f"{r['trainable_rel_diff']:.3%}"
        f = r.get("flops") or {}
        frozen = f" ({r['frozen_params']:,})" if r.get("frozen_params") else ""
        lines.append(f"| {r['model']} | {r['framework']} | {r['trainable_params']:,} | "
                     f"{r['non_trainable_params']:,}{frozen} | {diff} | {r['bn']} | {r['optimizer']} | {r['precision']} | "
                     f"{gflops(f.get('forward_per_image'))} | {gflops(f.get('train_per_image'))} | "
                     f"{start_text(r.get('start'))} |")
    notes = sorted({f"- {r['model']}: {r['explained']}" for r in rows if r["explained"]})
    notes += same_start_notes(rows) + first_step_notes(rows)
    counters = sorted({f"- {r['framework']} FLOPs: {r['flops']['counter']}" for r in rows if (r.get("flops") or {}).get("counter")})
    return "\n".join(lines + ([""] + notes if notes else []) + ([""] + counters + flops_notes(rows) if counters else []))


def main(argv: list[str] | None = None, prog: str = "bench parity") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="none", help="none, imagenet, same, or a staged folder (as the suite's)")
    p.add_argument("--weights-dir", default=None, metavar="DIR", help="a staged folder of weight files")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    p.add_argument("--setup", default="matched", choices=("matched", "defaults"))
    p.add_argument("--train-layers", default="all", choices=("all", "head"))
    p.add_argument("--first-step", action="store_true",
                   help="also take one training step per model: frameworks that start from the same parameters "
                        "(Keras on TensorFlow and on JAX) must agree on its loss")
    a = p.parse_args(argv)
    # The seed profile's settings (smoke's BatchNorm momentum 0.5 is only for 16 steps from scratch).
    try:
        cfg = resolve(dict(profile="seed", device="cpu", weights=a.weights, weights_dir=a.weights_dir,
                           image_size=a.image_size, optimizer=a.optimizer, setup=a.setup,
                           train_layers=a.train_layers), gpu_count=0)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        train, test = make_synthetic(64, 32)
        bundle = make_bundle(Cifar10(train, test, LABEL_NAMES, "synthetic"), 0, 0, 32, 1, 0).write(f"{tmp}/b")
        for reason in unavailable().values():
            print(reason, file=sys.stderr)
        try:
            rows = parity_rows(describe_models(cfg, bundle, tmp, frameworks=installed(), first_step=a.first_step))
        except WorkerError as e:  # a weights file missing or unusable, a framework that cannot build
            print(f"{prog}: {e}", file=sys.stderr)
            return 2
    print(format_parity(rows))
    print(f"\nSettings read back ({a.setup} setup):")
    print("\n".join(parity_notes(rows, a.setup, cfg.weights)))
    problems = parity_problems(rows, a.setup, cfg.weights)
    for line in problems:
        print("PARITY PROBLEM:", line)
    return 1 if problems else 0
