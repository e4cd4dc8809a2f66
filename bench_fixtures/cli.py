"""`bench`: the suite's one command. `bench TOOL --help` for each tool.

    bench ab --candidate-python PY ...        A/B an upgrade: both environments in one session, rounds alternated
    bench gate BASELINE.json... CANDIDATE.json regression gate against one or several stored runs
                                              (exit 0 pass, 1 regression, 2 cannot compare)
    bench report RUN.json... --out DIR        PNGs + report.md from one or more runs
    bench parity                              the parity table, read back from every installed framework
    bench overhead                            does the harness distort what it measures?
    bench machine [--slug]                    what machine this is, as the results record it

`python -m bench_fixtures.<tool>` runs the same tools.
"""
from __future__ import annotations

import importlib
import sys

# tool -> module (relative to this package) whose `main(argv, prog)` runs it
TOOLS = {"ab": "analysis.ab", "gate": "analysis.gate", "report": "analysis.report", "parity": "analysis.parity",
         "overhead": "analysis.overhead", "machine": "machine"}


def run_tool(tool: str, argv: list[str], prog: str | None = None) -> int:
    module = importlib.import_module(f"{__package__}.{TOOLS[tool]}")
    return module.main(argv, prog=prog or f"bench {tool}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0] not in TOOLS:
        print(f"bench: unknown command {argv[0]!r}; choose one of {', '.join(TOOLS)} (bench --help)", file=sys.stderr)
        return 2
    return run_tool(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
