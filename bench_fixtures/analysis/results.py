"""Reading result files: a pytest-benchmark JSON run, checked once on load for what every reader
(gate, report) relies on, and the cases in it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ResultsError(Exception):
    """A run file that cannot be read; the message names the file and what is wrong."""


def load_run(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        run = json.loads(path.read_text())
    except IsADirectoryError:
        raise ResultsError(f"{path}: is a folder, not a run file; give the --benchmark-json file") from None
    except OSError as e:
        raise ResultsError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not a text file; give the --benchmark-json file") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); the file is truncated or "
                           f"corrupt, rerun the benchmark with --benchmark-json") from None
    if not isinstance(run, dict) or not isinstance(run.get("benchmarks"), list):
        raise ResultsError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    for b in run["benchmarks"]:
        if not isinstance(b, dict) or not isinstance(b.get("fullname"), str) \
                or "median" not in (b.get("stats") if isinstance(b.get("stats"), dict) else {}):
            raise ResultsError(f"{path}: a benchmark entry lacks 'fullname' or 'stats.median'")
    return run


def case_name(b: dict) -> str:
    """The test as pytest names it: `test_finetune[torch-resnet50]`."""
    return b["fullname"].split("::")[-1]


def cases(run: dict, test: str) -> dict[tuple[str, str], dict]:
    """TEST's benchmarks in RUN by (framework, model)."""
    out = {}
    for b in run["benchmarks"]:
        e = b.get("extra_info") or {}
        if b.get("name", case_name(b)).startswith(test + "[") and "framework" in e and "model" in e:
            out[(e["framework"], e["model"])] = b
    return out
