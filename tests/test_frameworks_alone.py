"""Either framework alone: on a machine where one is missing (a torch-only GPU image, a TF-only
cluster), its cases are skipped with one line naming the package and the install command, and
the other's run. The missing one is hidden from every process of the session (tests/hidden)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("hidden, runs, skipped", [
    pytest.param("tensorflow,keras", "torch", "tensorflow", marks=pytest.mark.torch),
    pytest.param("torch,torchvision", "tensorflow", "torch", marks=pytest.mark.tensorflow),
])
def test_a_missing_framework_is_skipped_with_its_fix_and_the_other_runs(hidden, runs, skipped):
    env = dict(os.environ, BENCH_HIDE_MODULES=hidden,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "tests" / "hidden"), os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-m", "pytest", "tests/benchmarks", "--benchmark-only", "-p", "no:cacheprovider",
                        "-k", "test_finetune and mobilenet_v2", "--epochs", "1", "--train-size", "64", "--test-size", "20",
                        "--min-accuracy-gain=-1", "-q", "-rs"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    package = hidden.split(",")[0]
    line = (f"{skipped} cases skipped: the Python package '{package}' is not installed; "
            f"pip install {hidden.replace(',', ' ')} (the versions pinned in requirements.txt)")
    assert f"bench: {line}" in out  # said once at startup
    assert re.search(rf"SKIPPED \[1\] tests/benchmarks/test_cases.py:\d+: {re.escape(line)}", out), out
    assert "1 passed, 1 skipped" in out
    assert f"test_finetune[{runs}-mobilenet_v2]" in out  # its benchmark table
