"""`python -m bench_fixtures.overhead`: the same as `bench overhead` (see bench_fixtures/cli.py)."""
import sys

from .cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("overhead", sys.argv[1:], prog="python -m bench_fixtures.overhead"))
