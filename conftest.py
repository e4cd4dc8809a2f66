"""What this repository's own test suite needs; the benchmark's plugin is bench_fixtures/plugin.py,
installed as a pytest11 entry point by `pip install -r requirements.txt` (`pip install -e .`).

A checkout used without installing it (a GPU image where nothing can be installed, PYTHONPATH=.)
still runs: the plugin is then loaded from here. And the tests must test *this* checkout: an
editable install of another clone would make pytest load that clone's plugin.
"""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent

if "bench_fixtures.plugin" not in sys.modules:  # not installed as an entry point
    pytest_plugins = ["bench_fixtures.plugin"]


def pytest_configure(config: pytest.Config) -> None:
    import bench_fixtures
    where = Path(bench_fixtures.__file__).resolve().parent
    if where != ROOT / "bench_fixtures":
        raise pytest.UsageError(f"bench_fixtures is imported from {where}, not from this checkout ({ROOT}); "
                                f"run `pip install -e {ROOT}` (or `pip install -r requirements.txt` here)")
