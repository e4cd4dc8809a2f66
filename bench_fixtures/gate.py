"""`python -m bench_fixtures.gate`: the same as `bench gate` (see bench_fixtures/cli.py)."""
import sys

from .cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("gate", sys.argv[1:], prog="python -m bench_fixtures.gate"))
