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
    assert ".ci/gpu --out results" in text  # the one command for a GPU runner
    assert 'bench gate $(ls baseline/history/*.json | sort | tail -n "$GATE_HISTORY") results/run.json' in text
    assert "bench ab --baseline-python" in text
    assert "github.ref == 'refs/heads/main'" in text and "self-hosted" in text


def test_gpu_workflow_never_runs_a_fork_and_keeps_its_history_durably():
    """Fork code never reaches the self-hosted runner; the history lives on a branch (the Actions
    cache evicts entries unused for 7 days), a missing baseline is a visible warning, and the gate
    and the report reach the job summary."""
    text = next(p for p in WORKFLOWS if p.stem == "gpu-gate").read_text()
    assert ("if: github.event_name != 'pull_request' || "
            "github.event.pull_request.head.repo.full_name == github.repository") in text
    assert "actions/cache" not in text and "git push origin bench-history" in text
    assert "::warning title=No baseline::" in text
    assert text.count('>> "$GITHUB_STEP_SUMMARY"') >= 3
    assert "permissions:\n  contents: read" in text  # write only in the promote job


def test_gpu_workflow_looks_for_change_points_on_main_as_a_warning():
    """After main's run, bench history reads the whole stored history into the job summary; it never
    fails the job (a change point is news for a person, not a verdict), and the history is kept long
    enough for it (the gate still reads the last few runs only)."""
    text = next(p for p in WORKFLOWS if p.stem == "gpu-gate").read_text()
    step = text[text.index("- name: Change points over the stored history"):]
    step = step[:step.index("- name:", 10)]
    assert "github.ref == 'refs/heads/main'" in step and "continue-on-error: true" in step
    assert 'bench history baseline/history results/run.json --out history --summary "$GITHUB_STEP_SUMMARY"' in step
    assert "HISTORY_KEEP: 100" in text and "GATE_HISTORY: 5" in text
