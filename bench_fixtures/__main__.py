"""`python -m bench_fixtures TOOL ...`: the same as `bench TOOL ...`."""
import sys

from .cli import main

sys.exit(main())
