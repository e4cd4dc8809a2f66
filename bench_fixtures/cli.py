"""`bench`: the suite's one command. `bench TOOL --help` for each tool.

    bench ab --candidate-python PY ...        A/B an upgrade: both environments in one session, rounds alternated
    bench gate BASELINE.json... CANDIDATE.json regression gate against one or several stored runs
                                              (exit 0 pass, 1 regression, 2 cannot compare)
    bench report RUN.json... --out DIR        PNGs + report.md from one or more runs
    bench history RUN.json|DIR... [--out DIR] when did a figure change, and what changed then (change points)
    bench parity                              the parity table, read back from every installed framework
    bench overhead                            does the harness distort what it measures?
    bench machine [--slug]                    what machine this is, as the results record it
    bench weights fetch|check DIR             pretrained weight files for --weights-dir: fetch (verified) or check

`python -m bench_fixtures TOOL` runs the same tools.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any

# tool -> module (relative to this package) whose `main(argv, prog)` runs it
TOOLS = {"ab": "analysis.ab", "gate": "analysis.gate", "report": "analysis.report", "parity": "analysis.parity",
         "overhead": "analysis.overhead", "history": "analysis.history", "machine": "machine", "weights": "weights"}


class _ClosedReaderSafe:
    """stdout for a tool whose reader may go away (`bench gate ... | head -5`): the rest of the output
    is dropped, the verdict and its exit code are not (instead of a BrokenPipeError traceback, exit 1)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.gone = stream, False

    def _closed(self) -> None:
        self.gone = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.stream.fileno())  # nor a complaint when Python flushes it at exit
        os.close(devnull)

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self._closed()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._closed()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def run_tool(tool: str, argv: list[str], prog: str | None = None) -> int:
    module = importlib.import_module(f"{__package__}.{TOOLS[tool]}")
    stdout, sys.stdout = sys.stdout, _ClosedReaderSafe(sys.stdout)
    try:
        code = module.main(argv, prog=prog or f"bench {tool}")
        sys.stdout.flush()
        return code
    finally:
        sys.stdout = stdout


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0] not in TOOLS:
        print(f"bench: unknown command {argv[0]!r}; choose one of {', '.join(TOOLS)} (bench --help)", file=sys.stderr)
        return 2
    return run_tool(argv[0], argv[1:])
