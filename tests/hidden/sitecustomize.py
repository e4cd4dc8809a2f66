"""Makes the packages named in BENCH_HIDE_MODULES (comma-separated) look uninstalled in every
process that has this folder on PYTHONPATH: `importlib.util.find_spec` returns None for them and
importing them raises ModuleNotFoundError, as on a machine without them. For the tests of either
framework alone (tests/test_frameworks_alone.py)."""
import importlib.machinery
import os
import sys

HIDDEN = tuple(filter(None, os.environ.get("BENCH_HIDE_MODULES", "").split(",")))


class _HidingPathFinder(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return super().find_spec(name, path, target)


sys.meta_path[:] = [_HidingPathFinder if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
