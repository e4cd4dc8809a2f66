"""`python -m bench_fixtures.parity`: the same as `bench parity` (see bench_fixtures/cli.py)."""
import sys

from .cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("parity", sys.argv[1:], prog="python -m bench_fixtures.parity"))
