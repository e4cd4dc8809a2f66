"""Reading result files: a pytest-benchmark JSON run, validated once on load against one schema for
every reader (gate, report), and the cases in it.

A reader that cannot interpret a field must not guess: a NaN time, a string where a number belongs,
a test listed twice are refused here with one line naming the file, the test and the field.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from ..config import PEAK_TFLOPS_RANGE

# Outcome of the test around a benchmark (the plugin records it: pytest-benchmark keeps the numbers
# of a test that failed after measuring, e.g. one whose accuracy did not improve).
OUTCOME_KEY = "test_outcome"
OUTCOMES = ("passed", "failed")
FRACTIONS = ("accuracy_before", "accuracy_after", "target_accuracy")  # in 0..1, or null = not measured
NON_NEGATIVE = ("train_images_per_s", "time_to_first_step_s", "finetune_s", "step_time_s", "warmup_s",
                "achieved_flops_per_s", "mfu", "step_images_per_s")
SERIES = ("epoch_times_s", "inter_epoch_gaps_s")             # lists of non-negative numbers or nulls
MEMORY = ("framework_peak", "process_peak", "device_peak", "reserved_peak")
COUNTS = ("test_size", "train_size", "batch_size", "epochs", "steps_per_epoch")  # integers >= 1, or null
NAMES = ("framework", "model")                                # strings, or null
OBJECTS = ("utilization", "monitor", "memory", "time_to_accuracy", "rounds_summary", "flops_per_image")  # or null
MIN_TIME_S = 1e-9  # a round faster than a nanosecond was not timed: no timer resolves it


class ResultsError(Exception):
    """A run file that cannot be read; the message names the file and what is wrong."""


def load_run(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        run = json.loads(path.read_text(), object_pairs_hook=_no_duplicate_keys)
    except IsADirectoryError:
        raise ResultsError(f"{path}: is a folder, not a run file; give the --benchmark-json file") from None
    except OSError as e:
        raise ResultsError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not a text file; give the --benchmark-json file") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); the file is truncated or "
                           f"corrupt, rerun the benchmark with --benchmark-json") from None
    except (RecursionError, ValueError) as e:  # nested thousands deep; an integer of thousands of digits
        why = "nested too deeply" if isinstance(e, RecursionError) else " ".join(str(e).split())[:80]
        raise ResultsError(f"{path}: not a run file this suite wrote ({why}); rerun the benchmark with "
                           f"--benchmark-json") from None
    problem = validate(run)
    if problem:
        raise ResultsError(f"{path}: {problem}; the file was not written by this suite or was edited since: "
                           f"rerun the benchmark with --benchmark-json")
    return run


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A key given twice in one object: JSON readers silently keep the last; which one counts?"""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def _number_problem(value: Any, low: float = 0.0, high: float = math.inf) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, found {type(value).__name__} {value!r:.40}"
    if isinstance(value, int) and abs(value) > 2**63:  # float() of it overflows: no measurement is this big
        return f"must lie in {low:g}..{high:g}, found a {len(str(abs(value)))}-digit number"
    if not math.isfinite(value):
        return f"must be finite, found {value}"
    if not low <= value <= high:
        return f"must lie in {low:g}..{high:g}, found {value:g}"
    return None


def _numbers_problem(values: Any, nulls: bool) -> str | None:
    """What is wrong with a list of non-negative numbers (None entries allowed when NULLS)."""
    if not isinstance(values, list):
        return f"must be a list of numbers, found {type(values).__name__}"
    bad = next((p for p in (_number_problem(v) for v in values if not (nulls and v is None)) if p), None)
    return f"has an entry that {bad}" if bad else None


def _benchmark_problem(b: Any) -> str | None:
    """What is wrong with one benchmark entry (None: nothing the readers rely on)."""
    if not isinstance(b, dict):
        return f"a benchmark entry is a {type(b).__name__}, not an object"
    if not isinstance(b.get("fullname"), str) or not b["fullname"].strip():
        return "a benchmark entry has no 'fullname' string"
    if b["fullname"] != b["fullname"].strip():
        return f"{b['fullname'].strip()}: 'fullname' has leading or trailing spaces (another test, or the same?)"
    case = case_name(b)
    if "name" in b and not isinstance(b["name"], str):
        return f"{case}: 'name' must be a string"
    stats = b.get("stats")
    if not isinstance(stats, dict):
        return f"{case}: 'stats' must be an object, found {type(stats).__name__}"
    if "median" not in stats or stats["median"] is None:
        return f"{case}: 'stats.median' is missing or null"
    problem = _number_problem(stats["median"], MIN_TIME_S)
    if problem:
        return f"{case}: 'stats.median' {problem}"
    rounds = stats.get("rounds")
    if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= 10**9):
        return f"{case}: 'stats.rounds' must be a whole number of rounds >= 1, found {rounds!r:.40}"
    data = stats.get("data")
    if data is not None:
        problem = _numbers_problem(data, nulls=False)
        if problem:
            return f"{case}: 'stats.data' (the round times) {problem}"
        if rounds is not None and len(data) != rounds:
            return f"{case}: 'stats.data' holds {len(data)} round times, 'stats.rounds' says {rounds}"
        if data and not math.isclose(statistics.median(data), stats["median"], rel_tol=1e-6):
            return f"{case}: 'stats.median' {stats['median']:g} is not the median of 'stats.data' " \
                   f"({statistics.median(data):g})"
    extra = b.get("extra_info", {})
    if extra is None:
        return None
    if not isinstance(extra, dict):
        return f"{case}: 'extra_info' must be an object, found {type(extra).__name__}"
    checks = [(k, 0.0, 1.0) for k in FRACTIONS] + [(k, 0.0, math.inf) for k in NON_NEGATIVE]
    for key, low, high in checks:
        if extra.get(key) is not None:
            problem = _number_problem(extra[key], low, high)
            if problem:
                return f"{case}: 'extra_info.{key}' {problem}"
    for key in COUNTS:
        value = extra.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            return f"{case}: 'extra_info.{key}' must be a whole number >= 1, found {value!r:.40}"
    for key in NAMES:
        if extra.get(key) is not None and not isinstance(extra[key], str):
            return f"{case}: 'extra_info.{key}' must be a string, found {extra[key]!r:.40}"
    for key in OBJECTS:
        if extra.get(key) is not None and not isinstance(extra[key], dict):
            return f"{case}: 'extra_info.{key}' must be an object, found {type(extra[key]).__name__}"
    rounds_info = extra.get("rounds")
    if rounds_info is not None and not (isinstance(rounds_info, int) and not isinstance(rounds_info, bool)) \
            and not (isinstance(rounds_info, list) and all(isinstance(r, dict) for r in rounds_info)):
        return f"{case}: 'extra_info.rounds' must be a list of objects (or a count)"
    for key in SERIES:
        problem = None if extra.get(key) is None else _numbers_problem(extra[key], nulls=True)
        if problem:
            return f"{case}: 'extra_info.{key}' {problem}"
    memory = extra.get("memory")
    if memory is not None:
        if not isinstance(memory, dict):
            return f"{case}: 'extra_info.memory' must be an object, found {type(memory).__name__}"
        for key in MEMORY:
            if memory.get(key) is not None:
                problem = _number_problem(memory[key])
                if problem:
                    return f"{case}: 'extra_info.memory.{key}' {problem}"
    problem = _rounds_and_rates_problem(extra)
    if problem:
        return f"{case}: {problem}"
    start = extra.get("start")  # the gate compares start.sha256; the report prints the rest as text
    if start is not None and not (isinstance(start, dict) and isinstance(start.get("sha256"), (str, type(None)))):
        return f"{case}: 'extra_info.start' must be an object whose 'sha256' is a string or null"
    if extra.get(OUTCOME_KEY) is not None and extra[OUTCOME_KEY] not in OUTCOMES:
        return f"{case}: 'extra_info.{OUTCOME_KEY}' must be one of {', '.join(OUTCOMES)}"
    return None


def _fields_problem(where: str, item: Any, fields: dict[str, tuple[float, float]], nulls: bool = False) -> str | None:
    """ITEM must be an object whose FIELDS are numbers in their ranges (null allowed when NULLS)."""
    if not isinstance(item, dict):
        return f"'{where}' must be an object, found {type(item).__name__}"
    for key, (low, high) in fields.items():
        if nulls and item.get(key) is None:
            continue
        problem = _number_problem(item.get(key), low, high)
        if problem:
            return f"'{where}.{key}' {problem}"
    return None


def _rounds_and_rates_problem(extra: dict) -> str | None:
    """The rounds, their summary, the accuracy curve, time to accuracy, FLOPs and MFU: what the gate
    and the report compute with."""
    if extra.get("mfu") is not None and extra.get("peak_tflops") is None:
        return "'extra_info.peak_tflops' is missing (an MFU needs the peak it was computed against)"
    if extra.get("peak_tflops") is not None:
        problem = _number_problem(extra["peak_tflops"], *PEAK_TFLOPS_RANGE)
        if problem:
            return f"'extra_info.peak_tflops' {problem}"
    flops = extra.get("flops_per_image")
    if isinstance(flops, dict):
        problem = _fields_problem("extra_info.flops_per_image", flops, dict(forward_per_image=(0, math.inf),
                                                                            train_per_image=(0, math.inf)), nulls=True)
        if problem:
            return problem
    tta = extra.get("time_to_accuracy")
    if tta is not None:
        if not isinstance(tta.get("reached"), bool):
            return "'extra_info.time_to_accuracy.reached' must be true or false"
        if tta["reached"]:
            problem = _fields_problem("extra_info.time_to_accuracy", tta,
                                      dict(wall_s=(0, math.inf), train_s=(0, math.inf), epoch=(0, math.inf)))
            if problem:
                return problem
    if isinstance(extra.get("rounds"), int) and not isinstance(extra.get("rounds"), bool) and extra["rounds"] < 1:
        return f"'extra_info.rounds' must be a count >= 1 or a list of rounds, found {extra['rounds']}"
    for n, r in enumerate(extra.get("rounds") if isinstance(extra.get("rounds"), list) else []):
        problem = _fields_problem(f"extra_info.rounds[{n}]", r, dict(finetune_s=(0, math.inf), accuracy_before=(0, 1),
                                                                      accuracy_after=(0, 1)), nulls=True)
        if problem:
            return problem
    summary = extra.get("rounds_summary")
    for key in ("finetune_s", "accuracy_after") if isinstance(summary, dict) else ():
        if summary.get(key) is not None:
            problem = _fields_problem(f"extra_info.rounds_summary.{key}", summary[key],
                                      dict(n=(1, math.inf), median=(0, math.inf), min=(0, math.inf),
                                           max=(0, math.inf), spread=(0, math.inf)))
            if problem:
                return problem
            if not isinstance(summary[key]["n"], int):
                return f"'extra_info.rounds_summary.{key}.n' must be a whole number of rounds"
    curve = extra.get("accuracy_curve")
    if curve is not None and not isinstance(curve, list):
        return f"'extra_info.accuracy_curve' must be a list, found {type(curve).__name__}"
    for n, point in enumerate(curve or []):
        problem = _fields_problem(f"extra_info.accuracy_curve[{n}]", point,
                                  dict(epoch=(0, math.inf), accuracy=(0, 1), train_s=(0, math.inf), wall_s=(0, math.inf)))
        if problem:
            return problem
    return None


def validate(run: Any) -> str | None:
    """The first thing in RUN that no reader can interpret, or None."""
    if not isinstance(run, dict) or not isinstance(run.get("benchmarks"), list):
        return "not a pytest-benchmark JSON file (no 'benchmarks' list)"
    for key in ("machine_info", "bench_config"):
        if run.get(key) is not None and not isinstance(run[key], dict):
            return f"'{key}' must be an object, found {type(run[key]).__name__}"
    packages = (run.get("machine_info") or {}).get("packages")
    if packages is not None and not isinstance(packages, dict):
        return "'machine_info.packages' must be an object"
    seen: set[str] = set()
    for b in run["benchmarks"]:
        problem = _benchmark_problem(b)
        if problem:
            return problem
        if b["fullname"] in seen:
            return f"{case_name(b)}: listed twice (which one counts?)"
        seen.add(b["fullname"])
    return None


def models_in(by_case: dict) -> list[str]:
    """The models with a case in BY_CASE ((framework, model) -> benchmark), in the suite's order."""
    from ..config import MODELS
    return [m for m in MODELS if any(model == m for _, model in by_case)]


def failed(b: dict) -> bool:
    """Whether the test around this benchmark failed (its numbers are kept, its verdict is not)."""
    return (b.get("extra_info") or {}).get(OUTCOME_KEY) == "failed"


def case_name(b: dict) -> str:
    """The test as pytest names it: `test_finetune[torch-resnet50]`."""
    return b["fullname"].split("::")[-1]


def cases(run: dict, test: str, setup: str | None = None) -> dict[tuple[str, str], dict]:
    """TEST's benchmarks in RUN by (framework, model); with SETUP, only that setup's (a `--setup both`
    run holds each case twice). A benchmark recorded before setups existed ran `matched`."""
    out = {}
    for b in run["benchmarks"]:
        e = b.get("extra_info") or {}
        if b.get("name", case_name(b)).startswith(test + "[") and "framework" in e and "model" in e \
                and setup in (None, e.get("setup") or "matched"):
            out[(e["framework"], e["model"])] = b
    return out


def setups(run: dict) -> list[str]:
    """The setups RUN's benchmarks ran in, matched first, then defaults (the order of the report's
    columns); a benchmark without `setup` ran matched."""
    found = {(b.get("extra_info") or {}).get("setup") or "matched" for b in run["benchmarks"]}
    return sorted(found, key=lambda s: (s != "matched", s != "defaults", str(s)))
