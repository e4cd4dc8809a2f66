"""Fixtures shared by the end-to-end tests of the gate and the report."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def saved_runs(tmp_path_factory):
    """Two real smoke runs of the torch-mobilenet_v2 case (fine-tune and train steps), autosaved
    with their raw rounds into a storage folder, telemetry kept beside."""
    store = tmp_path_factory.mktemp("storage")
    telemetry = tmp_path_factory.mktemp("telemetry")
    for _ in range(2):
        r = subprocess.run([sys.executable, "-m", "pytest", "tests/benchmarks", "-q", "-p", "no:cacheprovider",
                            "--benchmark-only", "-k", "torch-mobilenet_v2 and (test_finetune or test_train_step)",
                            "--benchmark-autosave", "--benchmark-save-data", f"--benchmark-storage=file://{store}",
                            f"--telemetry-dir={telemetry}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(store.glob("*/*.json"))
    assert len(files) == 2, files
    return files
