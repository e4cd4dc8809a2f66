"""`python -m bench_fixtures.report`: the same as `bench report` (see bench_fixtures/cli.py)."""
import sys

from .cli import run_tool

if __name__ == "__main__":
    sys.exit(run_tool("report", sys.argv[1:], prog="python -m bench_fixtures.report"))
