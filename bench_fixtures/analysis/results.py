"""Reading result files: a pytest-benchmark JSON run and the telemetry (timeline) files its cases
name, validated once on load against one schema for every reader (gate, report, findings), old runs
upgraded in one place, and the cases in it as typed records.

A reader that cannot interpret a field must not guess: a NaN time, a string where a number belongs,
a zero peak, a test listed twice, a FIFO where a timeline file belongs are refused here with one line
naming the file, the field as a JSON path (`benchmarks[3].extra_info.memory.process_peak`) and the
fix. Every field a reader uses is checked for its type and a sane range; every other number in the
file must still be finite, and nothing may nest deeper than any file this suite writes. Files are
read only when they are regular files, and only up to a size cap: never a hang, never a huge read.

Schema: a run file carries `bench_schema` (SCHEMA_VERSION) at its top level; a file without it is
version 1. `upgrade(doc)` brings an older one to the current version, keyed on the version (v1 -> v2:
the settings it lacks ran with `settings.ABSENT`); a newer one is refused (upgrade the suite).

The records (frozen; their dicts are the file's own, read-only by convention):
    read_run(path) -> Run          validated, upgraded, typed (load_run(path): the same as a dict)
    Run.from_doc(doc, path=None)   a run already in memory (upgraded here; not validated)
    Run: path, schema (as written), datetime, command, machine_info, bench_config (every ABSENT
         setting present), dx, cases (tuple[Case]); .by_name() {test name: Case};
         .select(test, setup=None) {(framework, model): Case}; .setups (matched first); .machine
    Case.from_entry(entry)         one `benchmarks` entry
    Case: name, test, framework, model, setup, outcome, stats, extra_info, entry (the raw dict);
         .key (framework, model); .failed; .median (stats.median); .disturbance (disturbed, reasons)
         .accuracy_before / .accuracy_after (the last round); .accuracy_after_median (over rounds)
         .peak_memory(kind=None) (framework peak where measured, else the process peak; or KIND);
         .memory_kind; same_memory_kind(cases): the one quantity every side has
         .round_times (pytest-benchmark's saved rounds, else the case's own: the gate's test)
         .finetune_times (the case's own fine-tune rounds, else pytest-benchmark's, else the median)
         .rounds (the fine-tune round records); .round_rates (images/s per test_train_step round)
         .train_images_per_s, .time_to_first_step, .mean_gap, .time_to_accuracy (inf: missed),
         .test_size, .settings, .projection, .start_sha256, .telemetry_problems
    is_number(v): a finite int or float, not a bool (the one check readers use before arithmetic)
    Compatibility while the readers move onto the records: cases(doc, test, setup) and setups(doc)
    on dicts, failed / disturbance_of / round_rates on a dict or a Case, load_run -> dict.
"""
from __future__ import annotations

import json
import math
import os
import re
import stat
import statistics
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..config import MAX_EPOCHS, MAX_REPLICAS, MAX_ROUNDS, MODELS, PEAK_TFLOPS_RANGE
from ..registry import NAMES as FRAMEWORK_NAMES
from ..settings import ABSENT
from ..telemetry.energy import ENERGY_VERSION, SOURCES
from ..telemetry.timeline import EPOCH_START

# Outcome of the test around a benchmark (the plugin records it: pytest-benchmark keeps the numbers
# of a test that failed after measuring, e.g. one whose accuracy did not improve).
OUTCOME_KEY = "test_outcome"
# The run file's schema: written at the top level of every run file (plugin), read by every reader.
# Files without the key are version 1 (written before it existed) and are upgraded on load.
SCHEMA_KEY = "bench_schema"
SCHEMA_VERSION = 2
OUTCOMES = ("passed", "failed")

# Sane ranges. Each is far beyond anything this suite can measure, and small enough that every
# reader can compute with it (float() of it, a loop over it, a table cell of it).
MIN_TIME_S = 1e-9        # a round faster than a nanosecond was not timed: no timer resolves it
MAX_SECONDS = 1e7        # ~116 days; one worker request times out after at most 2,147,483 s (24.8 days)
MAX_BYTES = 2**50        # 1 PiB of memory
MAX_RATE = 1e9           # images per second
MAX_FLOPS = 1e16         # FLOPs per image (VGG19 at 2048 px trains with ~1e12)
MAX_FLOP_RATE = 1e20     # FLOP/s (100 EFLOP/s)
MAX_COUNT = 10**9        # images, batch sizes, steps, rounds
MAX_EVENTS = 20 * MAX_EPOCHS  # timeline events: about 9 per epoch
MAX_PARAMS = 10**13      # parameters of a model
MAX_CASES = 10_000       # benchmarks in one run file
MAX_DEPTH = 32           # nesting of objects and lists; this suite writes at most 8
MAX_INT = 2**63          # beyond, an integer is no measurement (float() of it may overflow)
MAX_RUN_BYTES = 64 * 2**20         # a run file (a seed run with saved rounds: well under 1 MiB)
MAX_TELEMETRY_BYTES = 256 * 2**20  # a timeline file (2 h sampled every 10 ms: about 100 MiB)

RUN_FIX = "the file was not written by this suite or was edited since: rerun the benchmark with --benchmark-json"
TELEMETRY_FIX = ("rerun the benchmark, or move the timeline file away (the report then notes it missing and draws "
                 "no timeline for that case)")

_MISSING = object()  # a key that is not there (told apart from null in messages)


class ResultsError(Exception):
    """A run file (or a file it names) that cannot be read; the message names the file, the field
    and what to do."""


class Invalid(Exception):
    """The first field no reader can interpret: its JSON path and what is wrong with it."""

    def __init__(self, where: str, what: str) -> None:
        self.where, self.what = where.lstrip("."), what  # a path from the top: `stats.median`, not `.stats.median`
        super().__init__(f"'{self.where}' {what}" if self.where else what)


# --------------------------------------------------------------------------- reading files

def _kind(mode: int) -> str:
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


def read_json_file(path: str | Path, limit: int) -> Any:
    """The JSON in PATH, which must be a regular file of at most LIMIT bytes: a FIFO would block the
    reader forever, /dev/zero would never end. Raises Invalid('', why) for anything unreadable."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise Invalid("", f"cannot read ({getattr(e, 'strerror', None) or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise Invalid("", f"is {_kind(st.st_mode)}, not a file")
    if st.st_size > limit:
        raise Invalid("", f"is {st.st_size / 2**20:,.0f} MiB, more than any file this suite writes "
                          f"({limit / 2**20:,.0f} MiB)")
    try:  # O_NONBLOCK: if the path was swapped for a FIFO since the stat, opening it does not block
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise Invalid("", "is not a regular file")
            chunks, left = [], limit + 1
            while left > 0 and (chunk := os.read(fd, min(left, 2**20))):
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
    except OSError as e:
        raise Invalid("", f"cannot read ({e.strerror or e})") from None
    data = b"".join(chunks)
    if len(data) > limit:
        raise Invalid("", f"holds more than any file this suite writes ({limit / 2**20:,.0f} MiB)")
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError:
        raise Invalid("", "not a text file") from None
    except json.JSONDecodeError as e:
        raise Invalid("", f"not valid JSON ({e.msg} at line {e.lineno}); the file is truncated or corrupt") from None
    except RecursionError:
        raise Invalid("", "not a file this suite wrote (nested too deeply)") from None
    except ValueError as e:  # a key given twice; an integer of thousands of digits
        raise Invalid("", f"not a file this suite wrote ({' '.join(str(e).split())[:80]})") from None


def load_run(path: str | Path) -> dict[str, Any]:
    """The run in PATH as a dict: validated (and every timeline file it names that exists, too: the
    gate and the report refuse the same files, for the same reasons), upgraded to SCHEMA_VERSION."""
    return upgrade(_validated(Path(path)))


def read_run(path: str | Path) -> Run:
    """The run in PATH as a typed record: validated, upgraded (its `schema` says as what it was written)."""
    return Run.from_doc(_validated(Path(path)), Path(path))


def _validated(path: Path) -> dict[str, Any]:
    """The run in PATH as written, checked: every reader's one door (ResultsError: one line)."""
    try:
        run = read_json_file(path, MAX_RUN_BYTES)
    except Invalid as e:
        if str(e).startswith("is a folder"):
            raise ResultsError(f"{path}: is a folder, not a run file; give the --benchmark-json file") from None
        fix = "rerun the benchmark with --benchmark-json" if "JSON" in str(e) or "wrote" in str(e) \
            else "give the --benchmark-json file"
        raise ResultsError(f"{path}: {e}; {fix}") from None
    newer = _newer_schema(run)  # before the checks: a newer file may hold what this validator does not know
    if newer:
        raise ResultsError(f"{path}: {newer}")
    problem = validate(run)
    if problem:
        raise ResultsError(f"{path}: {problem}; {RUN_FIX}")
    for i, b in enumerate(run["benchmarks"]):
        found = None
        try:
            found = find_telemetry(b, path.parent)
            if found is not None:
                check_telemetry(read_json_file(found, MAX_TELEMETRY_BYTES))
        except Invalid as e:
            at = f" {found}" if found else ""
            raise ResultsError(f"{path}: {case_name(b)}: 'extra_info.telemetry_file'{at}: {e} (at benchmarks[{i}]."
                               f"extra_info.telemetry_file); {TELEMETRY_FIX}") from None
    return run


def find_telemetry(b: dict, base: Path) -> Path | None:
    """The timeline file a case names: as written, under BASE (the run file's folder), or its name
    under BASE (a run moved with its telemetry folder flattened). None when none exists (the report
    then notes it); Invalid when one exists but cannot be looked at."""
    raw = (b.get("extra_info") or {}).get("telemetry_file")
    if raw is None:
        return None
    for candidate in (Path(raw), base / raw, base / Path(raw).name):
        try:
            os.stat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise Invalid("", f"{candidate}: cannot read ({e.strerror or e})") from None
        except ValueError:  # a NUL in the name: no file has it
            raise Invalid("", f"{raw!r:.80}: not a file name (it holds a NUL character)") from None
        return candidate
    return None


def load_telemetry(b: dict, base: Path) -> dict | None:
    """The case's timeline, validated (None: the run names none, or it is not there)."""
    found = None
    try:
        found = find_telemetry(b, base)
        if found is None:
            return None
        tel = read_json_file(found, MAX_TELEMETRY_BYTES)
        check_telemetry(tel)
        return tel
    except Invalid as e:
        at = f" {found}" if found else ""
        raise ResultsError(f"{case_name(b)}: telemetry file{at}: {e}; {TELEMETRY_FIX}") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A key given twice in one object: JSON readers silently keep the last; which one counts?"""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r:.60} appears twice in one object")
        out[key] = value
    return out


# --------------------------------------------------------------------------- field checks

def _found(v: Any) -> str:
    """V as a message shows it: short, on one line, JSON's words."""
    if v is _MISSING:
        return "nothing (the key is missing)"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int) and abs(v) >= 10**16:
        return f"a {int(math.log10(abs(v))) + 1}-digit number"
    if isinstance(v, (int, float)):
        return format(v, "g")
    if isinstance(v, str):
        return f"the string {v!r:.40}"
    if isinstance(v, dict):
        return f"an object with {len(v)} key{'s' * (len(v) != 1)}"
    if isinstance(v, list):
        return f"a list of {len(v)} item{'s' * (len(v) != 1)}"
    return type(v).__name__


def _number(v: Any, where: str, low: float = 0.0, high: float = math.inf, *, above: bool = False,
            null: bool = True) -> float | None:
    """A finite number in [LOW, HIGH] ((LOW, HIGH] when ABOVE: a measured time, peak or rate is never
    zero); null (or missing) when NULL allows it."""
    if null and (v is None or v is _MISSING):
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Invalid(where, f"must be a number, found {_found(v)}")
    span = f"({low:g}, {high:g}]" if above else f"{low:g}..{high:g}"
    if isinstance(v, int) and abs(v) > MAX_INT:
        raise Invalid(where, f"must lie in {span}, found {_found(v)}")
    if not math.isfinite(v):
        raise Invalid(where, f"must be finite, found {v}")
    if above and v <= low:
        raise Invalid(where, f"must be above {low:g}, found {v:g}: a measured figure is never zero or negative "
                             f"(null means not measured), so nothing can be compared with it")
    if not low <= v <= high:
        raise Invalid(where, f"must lie in {span}, found {_found(v)}")
    return v


def _count(v: Any, where: str, low: int = 1, high: int = MAX_COUNT, *, null: bool = True) -> int | None:
    """A whole number in LOW..HIGH (null when NULL allows it)."""
    if null and (v is None or v is _MISSING):
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        shown = "2**63" if high == MAX_INT else f"{high:,}"
        raise Invalid(where, f"must be a whole number in {low:,}..{shown}, found {_found(v)}")
    return v


def _text(v: Any, where: str, *, null: bool = True) -> str | None:
    if null and (v is None or v is _MISSING):
        return None
    if not isinstance(v, str) or not v.strip():
        raise Invalid(where, f"must be a non-empty string, found {_found(v)}")
    return v


def _choice(v: Any, where: str, choices: tuple[str, ...], what: str) -> str | None:
    if v is None or v is _MISSING:
        return None
    if not isinstance(v, str) or v not in choices:
        raise Invalid(where, f"must be {what} ({', '.join(choices)}), found {_found(v)}")
    return v


def _flag(v: Any, where: str, *, null: bool = True) -> bool | None:
    if null and (v is None or v is _MISSING):
        return None
    if not isinstance(v, bool):
        raise Invalid(where, f"must be true or false, found {_found(v)}")
    return v


def _object(v: Any, where: str, *, null: bool = True) -> dict:
    """V as an object ({} for null when NULL allows it)."""
    if null and (v is None or v is _MISSING):
        return {}
    if not isinstance(v, dict):
        raise Invalid(where, f"must be an object, found {_found(v)}")
    return v


def _list(v: Any, where: str, *, null: bool = True, most: int | None = None) -> list:
    """V as a list ([] for null when NULL allows it) of at most MOST items."""
    if null and (v is None or v is _MISSING):
        return []
    if not isinstance(v, list):
        raise Invalid(where, f"must be a list, found {_found(v)}")
    if most is not None and len(v) > most:
        raise Invalid(where, f"must hold at most {most:,} items, found {len(v):,}")
    return v


def _texts(v: Any, where: str, *, null: bool = True) -> list[str]:
    items = _list(v, where, null=null)
    for i, x in enumerate(items):
        if not isinstance(x, str):
            raise Invalid(f"{where}[{i}]", f"must be a string, found {_found(x)}")
    return items


def _numbers(v: Any, where: str, low: float, high: float, *, above: bool = False, nulls: bool = True,
             most: int | None = None, null: bool = True) -> list:
    items = _list(v, where, most=most, null=null)
    for i, x in enumerate(items):
        _number(x, f"{where}[{i}]", low, high, above=above, null=nulls)
    return items


def _fields(obj: dict, where: str, fields: dict[str, tuple[float, float]], *, null: bool = True,
            above: bool = False) -> None:
    """OBJ's FIELDS are numbers in their ranges (null allowed when NULL)."""
    for key, (low, high) in fields.items():
        _number(obj.get(key, _MISSING), f"{where}.{key}", low, high, above=above, null=null)


def _key(key: str) -> str:
    """An object key in a JSON path: `.name`, or `['odd key']` for anything else."""
    return f".{key}" if key.isidentifier() else f"[{key!r:.40}]"


def _walk_problem(doc: Any, where: str) -> Invalid | None:
    """Any number anywhere in DOC that is not finite (or too large to be a measurement), and any
    nesting deeper than MAX_DEPTH: what no reader may meet even in a field it only prints. A fast
    pass first; the path is traced only when something is wrong."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth >= MAX_DEPTH:
                break
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
        elif isinstance(v, float) and not math.isfinite(v) or \
                isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT:
            break
    else:
        return None
    traced: list[tuple[Any, str, int]] = [(doc, where, 0)]
    while traced:
        v, path, depth = traced.pop()
        if isinstance(v, (dict, list)):
            if depth >= MAX_DEPTH:
                return Invalid(path, f"nests deeper than any file this suite writes ({MAX_DEPTH} levels)")
            traced.extend((x, f"{path}{_key(str(k))}", depth + 1) for k, x in v.items()) if isinstance(v, dict) \
                else traced.extend((x, f"{path}[{i}]", depth + 1) for i, x in enumerate(v))
        elif isinstance(v, float) and not math.isfinite(v):
            return Invalid(path, f"must be finite, found {v}")
        elif isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT:
            return Invalid(path, f"must be a measurement, found {_found(v)}")
    return None


# --------------------------------------------------------------------------- one benchmark

FRACTIONS = ("accuracy_before", "accuracy_after", "target_accuracy")  # in 0..1, or null = not measured
POSITIVE = {"time_to_first_step_s": MAX_SECONDS, "finetune_s": MAX_SECONDS, "step_time_s": MAX_SECONDS,
            "train_images_per_s": MAX_RATE, "step_images_per_s": MAX_RATE, "achieved_flops_per_s": MAX_FLOP_RATE}
NON_NEGATIVE = {"warmup_s": MAX_SECONDS, "fit_teardown_s": MAX_SECONDS, "mfu": 1e6}
COUNTS = {"test_size": (1, MAX_COUNT), "train_size": (1, MAX_COUNT), "batch_size": (1, MAX_COUNT),
          "global_batch_size": (1, MAX_COUNT), "steps_per_epoch": (1, MAX_COUNT), "steps_per_round": (1, MAX_COUNT),
          "epochs": (1, MAX_EPOCHS), "replicas": (1, MAX_REPLICAS), "image_size": (1, MAX_COUNT),
          "cpu_threads": (1, MAX_COUNT), "warmup_steps": (0, MAX_COUNT), "trainable_params": (0, MAX_PARAMS),
          "non_trainable_params": (0, MAX_PARAMS), "frozen_params": (0, MAX_PARAMS)}
TEXTS = ("profile", "dataset", "weights", "device", "device_name", "precision", "compile", "optimizer",
         "input_transform", "train_layers", "framework_version", "mfu_precision", "mfu_reason", "peak_source",
         "telemetry_file")
OBJECTS = ("utilization", "monitor", "settings", "overrides", "distributed")  # or null
PROJECTION_SECONDS = ("measured_total_s", "per_epoch_steps_s", "per_epoch_eval_s", "first_step_s", "step_s")
PROJECTION_SIGNED = ("one_time_s", "per_gap_s")  # below zero when the epochs varied more than the fixed cost


def _check_benchmark(b: Any, w: str) -> None:
    """One entry of `benchmarks` at path W (raises Invalid at the first problem)."""
    b = _object(b, w, null=False)
    fullname = _text(b.get("fullname", _MISSING), f"{w}.fullname", null=False)
    if fullname != fullname.strip():
        raise Invalid(f"{w}.fullname", "has leading or trailing spaces (another test, or the same?)")
    if "name" in b and b["name"] != case_name(b):
        raise Invalid(f"{w}.name", f"is {_found(b['name'])}, but 'fullname' names {case_name(b)!r:.60}: which test "
                                   f"is it?")
    stats = _object(b.get("stats", _MISSING), f"{w}.stats", null=False)
    median = _number(stats.get("median", _MISSING), f"{w}.stats.median", MIN_TIME_S, MAX_SECONDS, null=False)
    rounds = _count(stats.get("rounds"), f"{w}.stats.rounds", 1, MAX_ROUNDS)
    data = _numbers(stats.get("data"), f"{w}.stats.data", MIN_TIME_S, MAX_SECONDS, nulls=False, most=MAX_ROUNDS)
    if stats.get("data") is not None and rounds is not None and len(data) != rounds:
        raise Invalid(f"{w}.stats.data", f"holds {len(data)} round times, 'stats.rounds' says {rounds}")
    if data and not math.isclose(statistics.median(data), median, rel_tol=1e-6):
        raise Invalid(f"{w}.stats.median", f"{median:g} is not the median of 'stats.data' ({statistics.median(data):g})")
    extra = _object(b.get("extra_info"), f"{w}.extra_info")
    _check_extra(extra, f"{w}.extra_info")
    _check_identity(case_name(b), extra, f"{w}.extra_info")
    _check_same_rounds(median, extra, f"{w}.extra_info")


ROUND_TOLERANCE = (0.05, 0.05)  # relative, seconds: pytest-benchmark times the call the case times inside


def _check_identity(name: str, e: dict, w: str) -> None:
    """The test's parameters name the framework and model its extra_info says it ran: the gate matches
    cases by name and compares what extra_info holds, so a relabelled case would compare other work."""
    params = name.split("[", 1)[1].rstrip("]") if "[" in name else None
    fw, model = e.get("framework"), e.get("model")
    if params is None or fw is None or model is None:
        return
    if params != f"{fw}-{model}" and not params.startswith(f"{fw}-{model}-"):
        raise Invalid(f"{w}.framework", f"{fw!r} and model {model!r} are not the case {name!r:.80} names")


def _check_same_rounds(median: float, e: dict, w: str) -> None:
    """The fine-tune rounds the case timed itself (`rounds[].finetune_s`, the last one `finetune_s`)
    and pytest-benchmark's median of the same calls agree: the gate judges the median and tests the
    rounds, so one edited without the other would hide (or invent) a change."""
    rounds = e.get("rounds") if isinstance(e.get("rounds"), list) else []
    times = [r.get("finetune_s") for r in rounds if isinstance(r, dict) and r.get("finetune_s") is not None]
    if not times:
        return
    if e.get("finetune_s") is not None and not math.isclose(e["finetune_s"], times[-1], rel_tol=1e-9):
        raise Invalid(f"{w}.finetune_s", f"{e['finetune_s']:g} is not the last round's ({times[-1]:g})")
    mid, (rel, absolute) = statistics.median(times), ROUND_TOLERANCE
    if abs(mid - median) > max(rel * max(mid, median), absolute):
        raise Invalid(f"{w}.rounds", f"their median fine-tune {mid:g} s is not 'stats.median' ({median:g} s), "
                                     f"which times the same rounds")


def _check_extra(e: dict, w: str) -> None:
    """extra_info: every key a reader uses, by its type and range."""
    _choice(e.get("framework"), f"{w}.framework", FRAMEWORK_NAMES, "a framework this suite runs")
    _choice(e.get("model"), f"{w}.model", MODELS, "a model this suite runs")
    if e.get("setup") is not None and not (isinstance(e["setup"], str) and e["setup"].strip()):
        raise Invalid(f"{w}.setup", f"must be a setup's name, found {_found(e['setup'])}")
    _choice(e.get(OUTCOME_KEY), f"{w}.{OUTCOME_KEY}", OUTCOMES, "the test's outcome")
    for key in TEXTS:
        _text(e.get(key), f"{w}.{key}")
    _number(e.get("peak_tflops"), f"{w}.peak_tflops", *PEAK_TFLOPS_RANGE)
    for key in FRACTIONS:
        _number(e.get(key), f"{w}.{key}", 0.0, 1.0)
    for key, high in POSITIVE.items():
        _number(e.get(key), f"{w}.{key}", 0.0, high, above=True)
    for key, high in NON_NEGATIVE.items():
        _number(e.get(key), f"{w}.{key}", 0.0, high)
    for key, (low, high) in COUNTS.items():
        _count(e.get(key), f"{w}.{key}", low, high)
    for key in OBJECTS:
        _object(e.get(key), f"{w}.{key}")
    if e.get("mfu") is not None and e.get("peak_tflops") is None:
        raise Invalid(f"{w}.peak_tflops", "is missing (an MFU needs the peak it was computed against)")
    _numbers(e.get("epoch_times_s"), f"{w}.epoch_times_s", 0.0, MAX_SECONDS, above=True, most=MAX_EPOCHS)
    _numbers(e.get("inter_epoch_gaps_s"), f"{w}.inter_epoch_gaps_s", 0.0, MAX_SECONDS, most=MAX_EPOCHS)
    _numbers(e.get("round_images_per_s"), f"{w}.round_images_per_s", 0.0, MAX_RATE, above=True, nulls=False,
             most=MAX_ROUNDS)
    _numbers(e.get("warmups_s"), f"{w}.warmups_s", 0.0, MAX_SECONDS, most=MAX_ROUNDS)
    _texts(e.get("telemetry_problems"), f"{w}.telemetry_problems")
    _texts(e.get("telemetry_flags"), f"{w}.telemetry_flags")
    _check_memory(_object(e.get("memory"), f"{w}.memory"), f"{w}.memory")
    _check_utilization(_object(e.get("utilization"), f"{w}.utilization"), f"{w}.utilization")
    _text(_object(e.get("monitor"), f"{w}.monitor").get("backend"), f"{w}.monitor.backend")
    _check_rounds(e, w)
    _check_curves(e, w)
    _check_projection(_object(e.get("overhead_projection"), f"{w}.overhead_projection"), f"{w}.overhead_projection")
    distributed = _object(e.get("distributed"), f"{w}.distributed")
    for key in ("engine", "collective"):
        _text(distributed.get(key), f"{w}.distributed.{key}")
    _count(distributed.get("threads_per_replica"), f"{w}.distributed.threads_per_replica")
    _number(distributed.get("setup_s"), f"{w}.distributed.setup_s", 0.0, MAX_SECONDS)
    start = _object(e.get("start"), f"{w}.start")  # the gate compares start.sha256; the report prints the rest
    for key in ("sha256", "source", "file", "params_sha256"):
        _text(start.get(key), f"{w}.start.{key}")
    _flag(start.get("verified"), f"{w}.start.verified")  # the parity table looks it up
    check_disturbance(e.get("disturbance"), f"{w}.disturbance")
    _check_energy(_object(e.get("energy"), f"{w}.energy"), f"{w}.energy")
    rounds_j, listed = (e.get("energy") or {}).get("rounds_j"), e.get("rounds")
    if isinstance(rounds_j, list) and isinstance(listed, list) and \
            [r.get("energy_j") if isinstance(r, dict) else None for r in listed] != rounds_j:
        raise Invalid(f"{w}.rounds", "their energy_j are not energy.rounds_j: the gate's test and the headline "
                                     "would read different rounds")
    _check_cost(_object(e.get("cost"), f"{w}.cost"), f"{w}.cost")


MAX_JOULES = 1e12  # a terawatt-second: a 10 MW cluster for a day is under 1e12 J
ENERGY_SOURCES = tuple(SOURCES)
MAX_PRICE = 1e6    # settings' price_per_hour cap


def _check_energy(en: dict, w: str) -> None:
    """`energy`: measured, with its source and joules (above zero: a device that did something drew
    energy) that agree with each other, or not measured with the reason; never a zero standing for
    'not measured'."""
    if not en:
        return
    version = _count(en.get("version", _MISSING), f"{w}.version", null=False)
    if version > ENERGY_VERSION:
        raise Invalid(f"{w}.version", f"is {version}, newer than this suite reads ({ENERGY_VERSION}); {NEWER_FIX}")
    measured = _flag(en.get("measured", _MISSING), f"{w}.measured", null=False)
    _choice(en.get("source"), f"{w}.source", ENERGY_SOURCES, "an energy source this suite reads")
    if not isinstance(en.get("method", ""), str):
        raise Invalid(f"{w}.method", f"must be text, found {_found(en['method'])}")
    _text(en.get("reason"), f"{w}.reason", null=measured)
    _texts(en.get("problems"), f"{w}.problems")
    _texts(en.get("domains"), f"{w}.domains")
    _count(en.get("wraps"), f"{w}.wraps", 0)
    _count(en.get("images"), f"{w}.images")
    _count(en.get("round"), f"{w}.round", 1, MAX_ROUNDS)
    rounds_j = _numbers(en.get("rounds_j"), f"{w}.rounds_j", 0.0, MAX_JOULES, above=True, most=MAX_ROUNDS)
    _fields(en, w, dict(per_image_j=(0, MAX_JOULES), mean_power_w=(0, MAX_JOULES), first_step_j=(0, MAX_JOULES),
                        idle_j=(0, MAX_JOULES)), above=False)
    if measured:
        _text(en.get("source", _MISSING), f"{w}.source", null=False)
        total = _number(en.get("finetune_j", _MISSING), f"{w}.finetune_j", 0.0, MAX_JOULES, above=True, null=False)
        _number(en.get("mean_power_w"), f"{w}.mean_power_w", 0.0, MAX_JOULES, above=True)
        images, per_image = en.get("images"), en.get("per_image_j")
        if images is not None and (per_image is None or not math.isclose(per_image, total / images, rel_tol=1e-6)):
            raise Invalid(f"{w}.per_image_j", f"is {_found(per_image)}, but finetune_j / images is {total / images:g}")
        if rounds_j and not any(j is not None and math.isclose(j, total, rel_tol=1e-9) for j in rounds_j):
            raise Invalid(f"{w}.finetune_j", f"{total:g} is none of the rounds' joules (rounds_j)")

    else:
        for key in ("finetune_j", "per_image_j", "mean_power_w"):
            if en.get(key) is not None:
                raise Invalid(f"{w}.{key}", "is set, but 'measured' is false: a figure not measured is null")
    _numbers(en.get("domain_finetune_j"), f"{w}.domain_finetune_j", 0.0, MAX_JOULES)
    for part, index in (("epoch_phases", "epoch"), ("inter_epoch_gaps", "after_epoch")):
        for i, row in enumerate(_list(en.get(part), f"{w}.{part}", most=MAX_EPOCHS)):
            row = _object(row, f"{w}.{part}[{i}]")
            _count(row.get(index), f"{w}.{part}[{i}].{index}", 0, MAX_EPOCHS)
            _fields(row, f"{w}.{part}[{i}]", {k: (-MAX_JOULES, MAX_JOULES) for k in row if k != index})
    projection = _object(en.get("projection"), f"{w}.projection")
    _check_projection(projection, f"{w}.projection", unit="j")
    projected = (projection.get("measured") or {}).get("total_j")
    if measured and is_number(projected) and not math.isclose(projected, en["finetune_j"], rel_tol=1e-6):
        raise Invalid(f"{w}.projection.measured.total_j", f"is {projected:g}, but the fine-tune drew "
                                                          f"{en['finetune_j']:g} J")
    per_domain, domains = en.get("domain_finetune_j"), en.get("domains")
    if isinstance(per_domain, list) and per_domain and (not isinstance(domains, list) or len(per_domain) != len(domains)):
        raise Invalid(f"{w}.domain_finetune_j", f"holds {len(per_domain)} figure(s) for "
                                                f"{len(domains) if isinstance(domains, list) else 'no'} domain(s)")


def _check_cost(cost: dict, w: str) -> None:
    """`cost`: the price per hour it was computed with, and money per fine-tune and per horizon."""
    if not cost:
        return
    _number(cost.get("price_per_hour", _MISSING), f"{w}.price_per_hour", 0.0, MAX_PRICE, above=True, null=False)
    _fields(cost, w, dict(finetune=(0, MAX_PRICE * MAX_SECONDS), horizon=(0, MAX_PRICE * MAX_SECONDS * MAX_EPOCHS)))
    _count(cost.get("horizon_epochs", _MISSING), f"{w}.horizon_epochs", 1, MAX_COUNT, null=cost.get("horizon") is None)
    _text(cost.get("basis"), f"{w}.basis")


MIN_PEAK = 2**20  # bytes: a process that trains a network holds far more (the tables count in MiB)


def _check_memory(memory: dict, w: str) -> None:
    """The peaks the gate judges and the report and findings compare: above zero, and at least 1 MiB
    (below it a figure is no measurement of a training process, and rounds to 0 MiB in the tables)."""
    _fields(memory, w, dict(framework_peak=(0, MAX_BYTES), process_peak=(0, MAX_BYTES)), above=True)
    for key in ("framework_peak", "process_peak"):
        if memory.get(key) is not None and memory[key] < MIN_PEAK:
            raise Invalid(f"{w}.{key}", f"must be at least 1 MiB (a process that trains a network holds far more; "
                                        f"null means not measured), found {_found(memory[key])} bytes")
    _fields(memory, w, dict(device_peak=(0, MAX_BYTES), reserved_peak=(0, MAX_BYTES)))
    _numbers(memory.get("replica_process_peaks"), f"{w}.replica_process_peaks", 0.0, MAX_BYTES)
    for i, epoch in enumerate(_list(memory.get("epochs"), f"{w}.epochs", most=MAX_EPOCHS)):
        epoch = _object(epoch, f"{w}.epochs[{i}]", null=False)
        _fields(epoch, f"{w}.epochs[{i}]", dict(framework_peak=(0, MAX_BYTES), framework_reserved_peak=(0, MAX_BYTES),
                                                 process_peak=(0, MAX_BYTES)))


def _check_utilization(util: dict, w: str) -> None:
    for part in ("steps", "gaps"):
        p = _object(util.get(part), f"{w}.{part}")
        _count(p.get("samples"), f"{w}.{part}.samples", 0, MAX_COUNT)
        _fields(p, f"{w}.{part}", dict(mean=(0, 1), p50=(0, 1), p95=(0, 1), idle_fraction=(0, 1)))


def _check_rounds(e: dict, w: str) -> None:
    """The fine-tune rounds (a list; test_train_step: their count) and their summary."""
    rounds = e.get("rounds")
    if isinstance(rounds, int) and not isinstance(rounds, bool):
        if not 1 <= rounds <= MAX_ROUNDS:
            raise Invalid(f"{w}.rounds", f"must be a count >= 1 or a list of rounds, found {_found(rounds)}")
    else:
        for i, r in enumerate(_list(rounds, f"{w}.rounds", most=MAX_ROUNDS)):
            r = _object(r, f"{w}.rounds[{i}]", null=False)
            _number(r.get("finetune_s"), f"{w}.rounds[{i}].finetune_s", 0.0, MAX_SECONDS, above=True)
            _number(r.get("energy_j"), f"{w}.rounds[{i}].energy_j", 0.0, MAX_JOULES, above=True)
            _fields(r, f"{w}.rounds[{i}]", dict(accuracy_before=(0, 1), accuracy_after=(0, 1)))
    summary = _object(e.get("rounds_summary"), f"{w}.rounds_summary")
    for key, high in (("finetune_s", MAX_SECONDS), ("accuracy_after", 1.0), ("energy_j", MAX_JOULES)):
        if summary.get(key) is None:
            continue
        s = _object(summary[key], f"{w}.rounds_summary.{key}")
        _count(s.get("n", _MISSING), f"{w}.rounds_summary.{key}.n", null=False)
        _fields(s, f"{w}.rounds_summary.{key}", dict(median=(0, high), min=(0, high), max=(0, high),
                                                      spread=(0, MAX_SECONDS)), null=False)


def _check_curves(e: dict, w: str) -> None:
    """Accuracy after each epoch, time to accuracy, FLOPs per image."""
    for i, point in enumerate(_list(e.get("accuracy_curve"), f"{w}.accuracy_curve", most=MAX_EPOCHS)):
        point = _object(point, f"{w}.accuracy_curve[{i}]", null=False)
        _count(point.get("epoch", _MISSING), f"{w}.accuracy_curve[{i}].epoch", 0, MAX_EPOCHS, null=False)
        _fields(point, f"{w}.accuracy_curve[{i}]", dict(accuracy=(0, 1), train_s=(0, MAX_SECONDS),
                                                         wall_s=(0, MAX_SECONDS)), null=False)
    tta = _object(e.get("time_to_accuracy"), f"{w}.time_to_accuracy")
    if tta:
        reached = _flag(tta.get("reached", _MISSING), f"{w}.time_to_accuracy.reached", null=False)
        _number(tta.get("target"), f"{w}.time_to_accuracy.target", 0.0, 1.0)
        _count(tta.get("evaluated_epochs"), f"{w}.time_to_accuracy.evaluated_epochs", 0, MAX_EPOCHS)
        _count(tta.get("epoch", _MISSING), f"{w}.time_to_accuracy.epoch", 0, MAX_EPOCHS, null=not reached)
        _fields(tta, f"{w}.time_to_accuracy", dict(wall_s=(0, MAX_SECONDS), train_s=(0, MAX_SECONDS)), null=not reached)
    flops = _object(e.get("flops_per_image"), f"{w}.flops_per_image")
    _fields(flops, f"{w}.flops_per_image", dict(forward_per_image=(0, MAX_FLOPS), train_per_image=(0, MAX_FLOPS),
                                                 train_all_ops_per_image=(0, MAX_FLOPS)))


def _check_projection(p: dict, w: str, unit: str = "s") -> None:
    """The overhead projection (UNIT s; the energy's, j): the report's table and figure, the findings'
    'paid once'."""
    if not p:
        return
    big = MAX_SECONDS if unit == "s" else MAX_JOULES
    _count(p.get("measured_epochs"), f"{w}.measured_epochs", 1, MAX_EPOCHS)
    _fields(p, w, {k[:-1] + unit: (0, big) for k in PROJECTION_SECONDS})
    _fields(p, w, {k[:-1] + unit: (-big, big) for k in PROJECTION_SIGNED})
    _text(p.get("note"), f"{w}.note")
    rows = [("measured", p.get("measured"))] + [(f"projected[{i}]", r) for i, r in
                                                 enumerate(_list(p.get("projected"), f"{w}.projected", most=100))]
    for name, row in rows:
        row = _object(row, f"{w}.{name}", null=name == "measured")
        if row:
            _count(row.get("epochs", _MISSING), f"{w}.{name}.epochs", 1, MAX_COUNT, null=False)
            _fields(row, f"{w}.{name}", {f"total_{unit}": (-big * MAX_COUNT, big * MAX_COUNT),
                                         f"overhead_{unit}": (-big * MAX_COUNT, big * MAX_COUNT),
                                         "overhead_share": (-1e6, 1e6)})


def check_disturbance(d: Any, w: str) -> None:
    """`disturbance`: what else used the machine while the case was timed. `disturbed` and `reasons`
    decide (the gate refuses a disturbed case, the report marks it); the figures inside are only
    shown, so they need only be finite (checked with every other number)."""
    if d is None:
        return
    d = _object(d, w)
    _count(d.get("version"), f"{w}.version")
    _flag(d.get("disturbed", _MISSING), f"{w}.disturbed", null=False)
    _texts(d.get("reasons", _MISSING), f"{w}.reasons", null=False)
    _flag(d.get("measured"), f"{w}.measured")
    for key in ("threshold", "cpu", "gpu"):
        _object(d.get(key), f"{w}.{key}")
    for i, epoch in enumerate(_list(d.get("epochs"), f"{w}.epochs", most=MAX_EPOCHS)):
        _object(epoch, f"{w}.epochs[{i}]", null=False)


# --------------------------------------------------------------------------- the run

def _check_machine(mi: dict) -> None:
    for key in ("gpu_name", "gpu_reason", "cpu_model"):
        if mi.get(key) is not None and not isinstance(mi[key], str):
            raise Invalid(f"machine_info.{key}", f"must be a string, found {_found(mi[key])}")
    _count(mi.get("cpu_count"), "machine_info.cpu_count")
    for i, gpu in enumerate(_list(mi.get("gpus"), "machine_info.gpus", most=MAX_CASES)):
        gpu = _object(gpu, f"machine_info.gpus[{i}]", null=False)
        _count(gpu.get("index"), f"machine_info.gpus[{i}].index", 0, MAX_CASES)
        for key in ("name", "driver", "cuda_driver"):
            _text(gpu.get(key), f"machine_info.gpus[{i}].{key}")
        _number(gpu.get("memory_total"), f"machine_info.gpus[{i}].memory_total", 0, MAX_BYTES)
    for name, version in _object(mi.get("packages"), "machine_info.packages").items():
        if version is not None and not isinstance(version, str):
            raise Invalid(f"machine_info.packages{_key(name)}", f"must be a version string, found {_found(version)}")
    for name, build in _object(mi.get("framework_builds"), "machine_info.framework_builds").items():
        _object(build, f"machine_info.framework_builds{_key(name)}", null=False)


def _check_config(cfg: dict) -> None:
    """bench_config: what the gate compares (by equality) and the report and findings print and look up."""
    for key in ("profile", "device", "dataset", "weights", "setup", "precision", "compile", "optimizer",
                "train_layers", "preprocess"):
        _text(cfg.get(key), f"bench_config.{key}")
    for key, (low, high) in dict(train_size=(0, MAX_COUNT), test_size=(0, MAX_COUNT), epochs=(1, MAX_EPOCHS),
                                 batch_size=(1, MAX_COUNT), image_size=(1, MAX_COUNT),
                                 replicas=(1, MAX_REPLICAS)).items():
        _count(cfg.get(key), f"bench_config.{key}", low, high)
    _number(cfg.get("target_accuracy"), "bench_config.target_accuracy", 0.0, 1.0)
    _number(cfg.get("min_accuracy_gain"), "bench_config.min_accuracy_gain", -1.0, 1.0)
    _number(cfg.get("lr"), "bench_config.lr", 0.0, 1e6)
    _number(cfg.get("peak_tflops"), "bench_config.peak_tflops", *PEAK_TFLOPS_RANGE)
    _number(cfg.get("price_per_hour"), "bench_config.price_per_hour", 0.0, MAX_PRICE, above=True)
    _flag(cfg.get("channels_last"), "bench_config.channels_last")
    _object(cfg.get("overrides"), "bench_config.overrides")


def _check_dx(dx: dict) -> None:
    """The developer-experience figures, per framework."""
    for fw, d in dx.items():
        w = f"dx{_key(fw)}"
        d = _object(d, w, null=False)
        _fields(d, w, dict(import_s=(0, MAX_SECONDS), time_to_first_step_s=(0, MAX_SECONDS),
                           footprint_bytes=(0, MAX_BYTES), gpu_libraries_bytes=(0, MAX_BYTES)))
        for key in ("import_samples", "footprint_packages", "gpu_libraries_packages", "gpus_visible", "gpus_nvml",
                    "backend_loc"):
            _count(d.get(key), f"{w}.{key}", 0, MAX_COUNT)
        for key in ("gpu_libraries_source", "gpu_libraries_note", "footprint_counts"):
            _text(d.get(key), f"{w}.{key}")
        _list(d.get("footprint_largest"), f"{w}.footprint_largest")


def _check_run(run: Any) -> None:
    if not isinstance(run, dict) or not isinstance(run.get("benchmarks"), list):
        raise Invalid("", "not a pytest-benchmark JSON file (no 'benchmarks' list)")
    _list(run["benchmarks"], "benchmarks", most=MAX_CASES)
    _count(run.get(SCHEMA_KEY), SCHEMA_KEY, 1, MAX_INT)
    _check_machine(_object(run.get("machine_info"), "machine_info"))
    _check_config(_object(run.get("bench_config"), "bench_config"))
    _check_dx(_object(run.get("dx"), "dx"))
    for key in ("datetime", "command"):
        if run.get(key) is not None and not isinstance(run[key], str):
            raise Invalid(key, f"must be a string, found {_found(run[key])}")


def validate(run: Any) -> str | None:
    """The first thing in RUN that no reader can interpret, or None: '<test>: '<JSON path>' <what>'."""
    try:
        _check_run(run)
    except Invalid as e:
        return str(e)
    names: dict[str, int] = {}
    for i, b in enumerate(run["benchmarks"]):
        problem = _benchmark_problem(b, f"benchmarks[{i}]")
        if problem:
            return problem
        name = case_name(b)
        if name in names:  # the gate compares tests by this name, whatever their file
            first = run["benchmarks"][names[name]]["fullname"]
            return (f"{name}: listed twice ('benchmarks[{names[name]}]' {first!r:.80} and 'benchmarks[{i}]' "
                    f"{b['fullname']!r:.80}): the gate compares tests by name; which one counts?")
        names[name] = i
    problem = _same_case_twice(upgrade(run)) if _newer_schema(run) is None else None
    if problem:
        return problem
    problem = _walk_problem(run, "")
    if problem is None:
        return None
    inside = re.match(r"benchmarks\[(\d+)\]", problem.where)
    return str(problem) if inside is None else _in_benchmark(run["benchmarks"][int(inside.group(1))], problem)


def _same_case_twice(run: dict) -> str | None:
    """Two entries the report files under one (test, framework, model, setup): which one counts?"""
    keys: dict[tuple, int] = {}
    for i, case in enumerate(Case.from_entry(b) for b in run["benchmarks"]):
        if case.key is None:
            continue
        key = (case.test, *case.key, case.setup)
        if key in keys:
            return (f"{case.name}: 'benchmarks[{i}]' is {key[0]} of {key[1]}-{key[2]} (setup {key[3]}) again, as "
                    f"'benchmarks[{keys[key]}]' {case_name(run['benchmarks'][keys[key]])}: which one counts?")
        keys[key] = i
    return None


def _in_benchmark(b: Any, e: Invalid) -> str:
    """A problem inside benchmark B, as a user looks for it: the test, the field within the entry
    ('extra_info.memory.process_peak'), and where the entry is (its full JSON path)."""
    found = re.match(r"benchmarks\[\d+\]\.?", e.where)
    field = e.where[found.end():] if found else e.where
    text = f"'{field}' {e.what}" + (f" (at {e.where})" if found else "") if field else str(e)
    fullname = b.get("fullname") if isinstance(b, dict) else None
    named = isinstance(fullname, str) and fullname.strip() and fullname == fullname.strip()
    return f"{case_name(b)}: {text}" if named else text


def _benchmark_problem(b: Any, where: str = "") -> str | None:
    """What is wrong with one benchmark entry (None: nothing the readers rely on). WHERE: its path
    (`benchmarks[3]`, said at the end of the message); the field is named from the entry's own keys
    (`extra_info.memory`)."""
    try:
        _check_benchmark(b, where)
    except Invalid as e:
        return _in_benchmark(b, e)
    return None


def check_telemetry(tel: Any) -> None:
    """A timeline file: `events` (each a str `name` and an int `t_ns`; `epoch` a whole number;
    `memory` an object of byte counts) and `samples` (each an int `t_ns` and numeric fields), as the
    report draws them. Raises Invalid with the path inside the file."""
    if not isinstance(tel, dict):
        raise Invalid("", f"must be an object with 'events' and 'samples', found {_found(tel)}")
    events = _list(tel.get("events", _MISSING), "events", null=False, most=MAX_EVENTS)
    starts = sum(1 for e in events if isinstance(e, dict) and e.get("name") == EPOCH_START)
    if starts > MAX_EPOCHS:  # the report draws a line at each
        raise Invalid("events", f"holds {starts:,} epoch starts, more than any run's epochs ({MAX_EPOCHS:,})")
    for i, e in enumerate(events):
        e = _object(e, f"events[{i}]", null=False)
        _text(e.get("name", _MISSING), f"events[{i}].name", null=False)
        _count(e.get("t_ns", _MISSING), f"events[{i}].t_ns", 0, MAX_INT, null=False)
        _count(e.get("epoch"), f"events[{i}].epoch", 0, MAX_EPOCHS)
        _fields(_object(e.get("memory"), f"events[{i}].memory"), f"events[{i}].memory",
                dict(peak=(0, MAX_BYTES), reserved_peak=(0, MAX_BYTES), current=(0, MAX_BYTES)))
    for part in ("samples", "host_samples"):  # host_samples: the machine's other load (runs before it: none)
        for i, s in enumerate(_list(tel.get(part, _MISSING if part == "samples" else None), part,
                                    null=part != "samples")):
            s = _object(s, f"{part}[{i}]", null=False)
            _count(s.get("t_ns", _MISSING), f"{part}[{i}].t_ns", 0, MAX_INT, null=False)
            for key, v in s.items():
                if key == "t_ns":
                    continue
                if key in ("util", "other_share", "steal_share"):
                    _number(v, f"{part}[{i}].{key}", 0.0, 1.0)
                elif key in ("proc_mem", "device_mem", "other_proc_mem"):
                    _number(v, f"{part}[{i}].{key}", 0.0, MAX_BYTES)
                elif isinstance(v, list):
                    _numbers(v, f"{part}[{i}]{_key(key)}", -MAX_BYTES, MAX_BYTES)
                elif not isinstance(v, bool):
                    _number(v, f"{part}[{i}]{_key(key)}", -MAX_BYTES, MAX_BYTES)
    _text(_object(tel.get("monitor"), "monitor").get("backend"), "monitor.backend")
    meter = _object(tel.get("energy_meter"), "energy_meter")
    measured = _choice(meter.get("source"), "energy_meter.source", ENERGY_SOURCES, "an energy source this suite reads")
    if measured and meter.get("kind") not in ("counter", "power"):
        raise Invalid("energy_meter.kind", f"must be counter or power, found {_found(meter.get('kind', _MISSING))}")
    domains = _texts(meter.get("domains", _MISSING if measured else None), "energy_meter.domains", null=not measured)
    ranges = _numbers(meter.get("ranges", _MISSING if measured else None), "energy_meter.ranges", 0.0, MAX_JOULES,
                      above=True, null=not measured)
    if measured and len(ranges) != len(domains):
        raise Invalid("energy_meter.ranges", f"holds {len(ranges)} range(s) for {len(domains)} domain(s)")
    for i, r in enumerate(_list(tel.get("energy_reads"), "energy_reads")):  # runs before energy: none
        r = _object(r, f"energy_reads[{i}]", null=False)
        _count(r.get("t_ns", _MISSING), f"energy_reads[{i}].t_ns", 0, MAX_INT - 1, null=False)
        values = _numbers(r.get("values", _MISSING), f"energy_reads[{i}].values", 0.0, MAX_JOULES, nulls=True,
                          null=False)
        if measured and len(values) != len(domains):
            raise Invalid(f"energy_reads[{i}].values", f"holds {len(values)} value(s) for {len(domains)} domain(s)")
    problem = _walk_problem(tel, "")
    if problem is not None:
        raise problem


# --------------------------------------------------------------------------- the schema: old runs upgraded here

NEWER_FIX = "upgrade the suite (pull it and pip install -r requirements.txt again) to read it"
CASE_ABSENT = ("setup", "train_layers", "replicas")  # the ABSENT settings every case's extra_info repeats


def schema_of(doc: dict) -> int:
    """The schema version DOC was written with: its SCHEMA_KEY, 1 without it (written before it existed)."""
    version = doc.get(SCHEMA_KEY)
    return version if isinstance(version, int) and not isinstance(version, bool) else 1


def _newer_schema(doc: Any) -> str | None:
    """Why DOC cannot be read here: a schema newer than this suite's (None: not newer)."""
    version = schema_of(doc) if isinstance(doc, dict) else 1
    if version <= SCHEMA_VERSION:
        return None
    return (f"'{SCHEMA_KEY}' is {version}: written by a newer version of this suite, which this one (run schema "
            f"{SCHEMA_VERSION}) cannot read; {NEWER_FIX}")


def _v1_to_v2(doc: dict) -> dict:
    """A run from before the schema key: the settings its bench_config lacks ran with settings.ABSENT;
    each case recorded without its setup, trained layers or replicas ran with the same; a
    test_train_step case without the worker's per-round rates gets them from pytest-benchmark's round
    times (the IPC included: the closest figure such a run holds)."""
    config = doc.get("bench_config") or {}
    config = {**config, **{k: v for k, v in ABSENT.items() if k not in config}}
    return {**doc, "bench_config": config, "benchmarks": [_v1_case(b) for b in doc["benchmarks"]]}


def _v1_case(b: dict) -> dict:
    """One v1 entry, completed as _v1_to_v2 says (the entry itself when it lacks nothing)."""
    e = b.get("extra_info") or {}
    suite = e.get("framework") is not None and e.get("model") is not None
    fill = {k: ABSENT[k] for k in CASE_ABSENT if e.get(k) is None and (suite or k == "setup")}
    images = (e.get("steps_per_round") or 0) * (e.get("global_batch_size") or e.get("batch_size") or 0)
    if e.get("round_images_per_s") is None and images:
        data = (b.get("stats") or {}).get("data") or []
        fill["round_images_per_s"] = [images / t for t in data if is_number(t) and t > 0]
    return {**b, "extra_info": {**e, **fill}} if fill else b


UPGRADES = {1: _v1_to_v2}  # version -> the step that brings a run of it to the next


def upgrade(doc: dict) -> dict:
    """DOC (a validated run) as the current schema writes it: each step from its version on, in
    order; DOC itself when it is current. The one place that knows what older runs lack."""
    newer = _newer_schema(doc)
    if newer:
        raise ResultsError(newer)
    version = schema_of(doc)
    if version == SCHEMA_VERSION:
        return doc
    for step in range(version, SCHEMA_VERSION):
        doc = UPGRADES[step](doc)
    return {**doc, SCHEMA_KEY: SCHEMA_VERSION}


# --------------------------------------------------------------------------- the records

def instant(value: object) -> datetime | None:
    """pytest-benchmark's session time as one instant in UTC, however it is written (`Z`, any offset;
    a naive time is UTC); None when it is no time on the calendar (garbage, or past year 9999 in UTC)."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


def significant(v: Any, min_decimals: int = 0) -> str:
    """V with three significant digits (at least MIN_DECIMALS decimals; money: 2) and no exponent:
    joules span a CPU's 20 J to a GPU's 500,000 J, money 0.001 to 1,000 in one report; "–" for
    anything not a number (None, NaN, text)."""
    if not is_number(v):
        return "–"
    decimals = max(min_decimals, 2 - math.floor(math.log10(abs(v)))) if v else min_decimals
    return f"{v:,.{decimals}f}"


def is_number(v: Any) -> bool:
    """A finite int or float, not a bool: what a reader may compute with."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers_in(values: Any) -> list[float]:
    """The positive finite numbers of a list (anything else: none)."""
    return [v for v in values if is_number(v) and v > 0] if isinstance(values, list) else []


MEMORY_KINDS = ("framework_peak", "process_peak")  # the framework's own peak in use; the worker's process


@dataclass(frozen=True)
class Case:
    """One `benchmarks` entry: a test of one (framework, model) in one setup, and its figures. Its
    dicts are the run file's own: read them, never change them."""
    name: str                 # the test as pytest names it: test_finetune[torch-resnet50]
    test: str                 # test_finetune, test_train_step
    framework: str | None     # None (and model None): a benchmark that is not one of the suite's cases
    model: str | None
    setup: str | None         # matched, defaults
    outcome: str | None       # passed, failed (OUTCOME_KEY); None: not recorded
    stats: dict               # pytest-benchmark's: median, data (the saved rounds), rounds, ...
    extra_info: dict          # everything the case recorded; the properties below are what readers share
    entry: dict = field(repr=False, compare=False)  # the entry as the (upgraded) run holds it

    @classmethod
    def from_entry(cls, b: dict) -> Case:
        e = b.get("extra_info") or {}
        name = case_name(b)
        return cls(name, name.split("[")[0], e.get("framework"), e.get("model"), e.get("setup"), e.get(OUTCOME_KEY),
                   b.get("stats") or {}, e, b)

    @property
    def key(self) -> tuple[str, str] | None:
        """(framework, model); None for a benchmark that is not one of the suite's cases."""
        return None if self.framework is None or self.model is None else (self.framework, self.model)

    @property
    def failed(self) -> bool:
        """The test around the benchmark failed: its numbers are kept, its verdict is not."""
        return self.outcome == "failed"

    @property
    def median(self) -> float | None:
        """pytest-benchmark's median round: the fine-tune time the tables and the gate judge."""
        v = self.stats.get("median")
        return v if is_number(v) else None

    @property
    def disturbance(self) -> tuple[bool | None, list[str]]:
        """(disturbed, reasons): see disturbance_of."""
        return disturbance_of(self.entry)

    def _figure(self, key: str) -> float | None:
        v = self.extra_info.get(key)
        return v if is_number(v) else None

    def _record(self, key: str) -> dict | None:
        """A nested record of extra_info (None: not recorded)."""
        v = self.extra_info.get(key)
        return v if isinstance(v, dict) else None

    @property
    def accuracy_before(self) -> float | None:
        return self._figure("accuracy_before")

    @property
    def accuracy_after(self) -> float | None:
        """After the last fine-tune round (the tables' figure)."""
        return self._figure("accuracy_after")

    @property
    def rounds(self) -> list[dict]:
        """The fine-tune rounds' records (each a fresh model, same seed); test_train_step records a count: none."""
        listed = self.extra_info.get("rounds")
        return [r for r in listed if isinstance(r, dict)] if isinstance(listed, list) else []

    @property
    def accuracy_after_median(self) -> float | None:
        """The median over the fine-tune rounds (the gate's); one round: its value."""
        rounds = [r.get("accuracy_after") for r in self.rounds]
        rounds = [r for r in rounds if is_number(r)]
        return statistics.median(rounds) if len(rounds) >= 2 else self.accuracy_after

    @property
    def round_times(self) -> list[float]:
        """The timed rounds as the gate tests them: pytest-benchmark's saved data (--benchmark-save-data),
        else the case's own record of its fine-tune rounds."""
        data = self.stats.get("data") or []
        if data:
            return list(data)
        return [r["finetune_s"] for r in self.rounds if is_number(r.get("finetune_s"))]

    @property
    def finetune_times(self) -> list[float]:
        """Seconds of each fine-tune round as the findings judge them: the case's own record, else
        pytest-benchmark's saved rounds, else its median (their median is the table's fine-tune time)."""
        times = _numbers_in([r.get("finetune_s") for r in self.rounds]) or _numbers_in(self.stats.get("data"))
        return times or _numbers_in([self.stats.get("median")])

    @property
    def round_rates(self) -> list[float]:
        """Images/s of each test_train_step round as the worker timed it (their median is the
        table's steady images/s)."""
        return _numbers_in(self.extra_info.get("round_images_per_s"))

    def peak_memory(self, kind: str | None = None) -> float | None:
        """Peak memory in bytes: KIND (one of MEMORY_KINDS), or by default the framework's own peak
        where it reports one, else the process's (the tables'). Compare two cases with
        `same_memory_kind`: a framework peak against a process peak compares two different things."""
        memory = self.extra_info.get("memory") or {}
        for k in (kind,) if kind else MEMORY_KINDS:
            v = memory.get(k)
            if is_number(v) and v > 0:
                return v
        return None

    @property
    def memory_kind(self) -> str:
        """Which peak `peak_memory()` gives: the framework's where it reports one, else the process's."""
        return MEMORY_KINDS[0] if self.peak_memory(MEMORY_KINDS[0]) is not None else MEMORY_KINDS[1]

    @property
    def train_images_per_s(self) -> float | None:
        return self._figure("train_images_per_s")

    @property
    def time_to_first_step(self) -> float | None:
        return self._figure("time_to_first_step_s")

    @property
    def mean_gap(self) -> float | None:
        """The mean gap between epochs (s); None when none was measured."""
        gaps = [g for g in self.extra_info.get("inter_epoch_gaps_s") or [] if is_number(g)]
        return statistics.fmean(gaps) if gaps else None

    @property
    def time_to_accuracy(self) -> float | None:
        """Wall seconds until the target accuracy; inf when the run had a target and never reached it
        (so a miss reads as worse than any time); None when the run had no target, or its curve was
        cut short (missing events): not measured."""
        tta = self.extra_info.get("time_to_accuracy")
        if not isinstance(tta, dict):
            return None
        if tta.get("reached") is not True:
            epochs, evaluated = self.extra_info.get("epochs"), tta.get("evaluated_epochs")
            cut = isinstance(epochs, int) and isinstance(evaluated, int) and evaluated < epochs
            return None if cut else math.inf
        wall = tta.get("wall_s")
        return float(wall) if is_number(wall) and wall >= 0 else None

    @property
    def test_size(self) -> int | None:
        n = self.extra_info.get("test_size")
        return n if isinstance(n, int) and not isinstance(n, bool) else None

    @property
    def settings(self) -> dict:
        """The settings the framework read back (compute dtype, XLA, BatchNorm momentum, ...)."""
        s = self.extra_info.get("settings")
        return s if isinstance(s, dict) else {}

    @property
    def projection(self) -> dict | None:
        """The overhead projection (None: not recorded, or its timeline lacked events)."""
        return self._record("overhead_projection")

    @property
    def start_sha256(self) -> str | None:
        """The sha256 of the weights file the case started from (None: it loaded none)."""
        start = self.extra_info.get("start")
        sha = start.get("sha256") if isinstance(start, dict) else None
        return sha if isinstance(sha, str) else None

    @property
    def energy(self) -> dict | None:
        """The energy record (None: a run from before energy was measured); see `energy_reason`."""
        return self._record("energy")

    @property
    def energy_j(self) -> float | None:
        """Joules of the whole fine-tune (of the round with the median joules); None: not measured."""
        en = self.energy or {}
        return en["finetune_j"] if en.get("measured") and is_number(en.get("finetune_j")) else None

    @property
    def energy_rounds(self) -> list[float]:
        """Each fine-tune round's joules, where measured (the findings' spread)."""
        return _numbers_in([r.get("energy_j") for r in self.rounds])

    @property
    def energy_per_image(self) -> float | None:
        """Joules per training image of the fine-tune (the gate's energy_per_image); None: not measured."""
        en = self.energy or {}
        v = en.get("per_image_j") if en.get("measured") else None
        return v if is_number(v) and v > 0 else None

    @property
    def energy_reason(self) -> str | None:
        """Why there is no energy figure: the record's reason, or that the run predates it."""
        if self.energy is None:
            return "not measured: recorded before energy was measured"
        return None if self.energy_j is not None else (self.energy.get("reason") or "not measured")

    @property
    def cost(self) -> dict | None:
        """Money per fine-tune and per the horizon's epochs at the run's --price-per-hour; None: not priced."""
        return self._record("cost")

    @property
    def telemetry_problems(self) -> list[str]:
        problems = self.extra_info.get("telemetry_problems")
        return [p for p in problems if isinstance(p, str)] if isinstance(problems, list) else []


def same_memory_kind(cases: Iterable[Case]) -> str:
    """The peak every one of CASES has: the framework's own where all report one, else the process's."""
    return MEMORY_KINDS[0] if all(c.memory_kind == MEMORY_KINDS[0] for c in cases) else MEMORY_KINDS[1]


def _setup_order(setup: str) -> tuple:
    return setup != "matched", setup != "defaults", str(setup)


@dataclass(frozen=True)
class Run:
    """One run file, validated and upgraded to SCHEMA_VERSION. Its dicts are the file's own."""
    path: Path | None
    schema: int               # the version the file was written with (its contents are upgraded)
    datetime: str | None      # pytest-benchmark's session time
    command: str | None
    machine_info: dict
    bench_config: dict        # every setting of settings.ABSENT present (an older run: what it ran with)
    dx: dict                  # developer-experience figures per framework
    cases: tuple[Case, ...]
    commit_info: dict = field(default_factory=dict)  # pytest-benchmark's: the commit id, dirty, branch

    @classmethod
    def from_doc(cls, doc: dict, path: str | Path | None = None) -> Run:
        """DOC (validated: load_run's, or a run the caller vouches for) as a record, upgraded here."""
        schema, doc = schema_of(doc), upgrade(doc)
        return cls(None if path is None else Path(path), schema, doc.get("datetime"), doc.get("command"),
                   doc.get("machine_info") or {}, doc.get("bench_config") or {}, doc.get("dx") or {},
                   tuple(Case.from_entry(b) for b in doc["benchmarks"]),
                   doc["commit_info"] if isinstance(doc.get("commit_info"), dict) else {})

    def by_name(self) -> dict[str, Case]:
        """Every case by its test name (what the gate compares cases by)."""
        return {c.name: c for c in self.cases}

    def select(self, test: str, setup: str | None = None) -> dict[tuple[str, str], Case]:
        """TEST's cases by (framework, model); with SETUP, only that setup's (a `--setup both` run
        holds each case twice)."""
        return {c.key: c for c in self.cases if c.test == test and c.key is not None and setup in (None, c.setup)}

    @property
    def setups(self) -> list[str]:
        """The setups the run's cases ran in, matched first, then defaults (the report's columns)."""
        return sorted({c.setup for c in self.cases if c.setup is not None} or {"matched"}, key=_setup_order)

    @property
    def machine(self) -> str | None:
        """The machine in one name: its GPU, else its CPU."""
        return self.machine_info.get("gpu_name") or self.machine_info.get("cpu_model")


def as_run(run: Run | dict) -> Run:
    """RUN as a record (a dict: a validated run, upgraded here)."""
    return run if isinstance(run, Run) else Run.from_doc(run)


def as_case(b: Case | dict) -> Case:
    """B as a record (a dict: one entry of a validated, upgraded run)."""
    return b if isinstance(b, Case) else Case.from_entry(b)


# --------------------------------------------------------------------------- what readers ask

def models_in(by_case: dict) -> list[str]:
    """The models with a case in BY_CASE ((framework, model) -> case), in the suite's order."""
    return [m for m in MODELS if any(model == m for _, model in by_case)]


def failed(b: Case | dict) -> bool:
    """Whether the test around this benchmark failed (its numbers are kept, its verdict is not)."""
    return b.failed if isinstance(b, Case) else (b.get("extra_info") or {}).get(OUTCOME_KEY) == "failed"


def disturbance_of(b: Case | dict) -> tuple[bool | None, list[str]]:
    """(disturbed, reasons) of a case: True with its reasons when other load on the machine crossed
    the threshold while it was timed; None when it was not measured (a run recorded before the key
    existed, or no CPU figures): not disturbed, and not known to be clean either."""
    e = b.extra_info if isinstance(b, Case) else (b.get("extra_info") or {})
    d = e.get("disturbance")
    if not isinstance(d, dict):
        return None, []
    if d.get("disturbed") is True:  # each reason on one line, of a sane length: it is quoted in one-line messages
        reasons = [" ".join(str(r).split())[:300] for r in d.get("reasons") or []]
        return True, [r for r in reasons if r] or ["(no reason recorded)"]
    return (None if d.get("measured") is False else False), []


def round_rates(b: Case | dict | None) -> list[float]:
    """Images/s of each test_train_step round (`Case.round_rates`); none for no case."""
    return [] if not b else as_case(b).round_rates


def case_name(b: dict) -> str:
    """The test as pytest names it: `test_finetune[torch-resnet50]`."""
    return b["fullname"].split("::")[-1]


def cases(run: dict, test: str, setup: str | None = None) -> dict[tuple[str, str], dict]:
    """TEST's benchmark entries in RUN (a dict) by (framework, model); with SETUP, only that setup's.
    The dict form of `Run.select`, for readers not yet on the records."""
    return {key: c.entry for key, c in as_run(run).select(test, setup).items()}


def setups(run: dict) -> list[str]:
    """The setups RUN's cases ran in, matched first, then defaults (`Run.setups`)."""
    return as_run(run).setups
