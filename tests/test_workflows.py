"""The GitHub workflow files cannot run here; they are at least valid against GitHub's schema."""
import subprocess
import sys
from pathlib import Path

import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / ".github" / "workflows").glob("*.yml"))


def test_there_are_a_cpu_and_a_gpu_workflow():
    names = {p.stem for p in WORKFLOWS}
    assert {"cpu", "gpu-gate"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_the_github_schema(path):
    r = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_gpu_workflow_gates_and_promotes_only_on_main():
    text = next(p for p in WORKFLOWS if p.stem == "gpu-gate").read_text()
    assert "bench gate $(ls baseline/history/*.json | sort) candidate.json" in text
    assert "bench ab --baseline-python" in text
    assert "github.ref == 'refs/heads/main'" in text and "self-hosted" in text
