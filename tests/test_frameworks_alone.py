"""A framework alone: on a machine where the others are missing (a torch-only GPU image, a TF-only
cluster), their cases are skipped with one line naming the package and the install command, and
its own run. The missing one is hidden from every process of the session (tests/hidden)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench_fixtures.registry import FRAMEWORKS
from tests.helpers import real_subset

ROOT = Path(__file__).resolve().parents[1]


TINY = ["-k", "test_finetune and mobilenet_v2", "--epochs", "1", "--train-size", "64", "--test-size", "20",
        "--min-accuracy-gain=-1", "-rs"]


def hiding(modules: str) -> dict[str, str]:
    return dict(os.environ, BENCH_HIDE_MODULES=modules,
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "tests" / "hidden"), os.environ.get("PYTHONPATH")])))


def check_alone(out: str, runs: str, skipped: dict[str, str], test: str = "test_finetune",
                model: str = "mobilenet_v2") -> None:
    """RUNS ran its case; each framework in SKIPPED (framework -> the package it misses) was skipped
    with one line naming the package and its install command, said once at startup too."""
    for fw, package in skipped.items():
        line = f"{fw} cases skipped: the Python package '{package}' is not installed; {FRAMEWORKS[fw].install}"
        assert f"bench: {line}" in out  # said once at startup
        assert re.search(rf"SKIPPED \[1\] tests/benchmarks/test_cases.py:\d+: {re.escape(line)}", out), out
    assert f"1 passed, {len(skipped)} skipped" in out
    assert f"{test}[{runs}-{model}]" in out  # its benchmark table


@pytest.mark.tensorflow
def test_tensorflow_alone_runs_its_cases_and_skips_torch_and_jax_with_the_fix():
    steps = ["-k", "test_train_step and vgg19", "--step-rounds", "1", "--step-count", "1", "--step-warmup", "0",
             "-rs"]  # the cheapest TensorFlow case: no evaluation to trace, the fastest model to trace
    r = subprocess.run([sys.executable, "-m", "pytest", "tests/benchmarks", "--benchmark-only", "-p", "no:cacheprovider",
                        "-q", *steps], cwd=ROOT, env=hiding("torch,torchvision,jax"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    check_alone(r.stdout + r.stderr, "tensorflow", {"torch": "torch", "jax": "jax"}, test="test_train_step",
                model="vgg19")


@pytest.mark.torch
def test_ci_gpu_runs_end_to_end_with_torch_alone(tmp_path):
    """`.ci/gpu` on a CPU (--device cpu, a tiny smoke run) on a torch-only machine: the torch case runs,
    TensorFlow's is skipped with its fix, and one folder holds the run, its telemetry, the report."""
    out = tmp_path / "results"
    try:  # real CIFAR-10 where the pack is (the project's machines): the subset the real-data tests build
        data = ["--data-dir", str(real_subset()), "--dataset", "cifar10"]
    except pytest.skip.Exception:
        data = ["--dataset", "synthetic"]
    r = subprocess.run(["bash", ".ci/gpu", "--out", str(out), *data, "--device", "cpu", "--bench-profile", "smoke",
                        *TINY], cwd=ROOT, env=hiding("tensorflow,keras"), capture_output=True, text=True, timeout=600)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text
    check_alone(text, "torch", {"tensorflow": "tensorflow", "jax": "keras"})  # both Keras frameworks need keras
    assert {"run.json", "run.telemetry", "report.md", "machine.json"} <= {p.name for p in out.iterdir()}
    assert (out / "run.telemetry" / "finetune-torch-mobilenet_v2.json").is_file()
    assert f".ci/gpu: exit 0; results in {out}/" in text
    energy = [line for line in text.splitlines() if line.startswith("energy test_finetune[torch-mobilenet_v2]: ")]
    assert len(energy) == 1 and (" J per fine-tune" in energy[0] or ": not measured: " in energy[0]), energy


def test_ci_gpu_refuses_what_it_cannot_run(tmp_path):
    """One line and a non-zero exit, before anything runs."""
    r = subprocess.run(["bash", ".ci/gpu", "--out", str(tmp_path / "o"), "--pack", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and r.stderr.strip() == (f".ci/gpu: --pack {tmp_path}: no build_cifar10.py there; "
                                                      f"give the CIFAR-10 JPEG pack's folder")
    (tmp_path / "file").write_text("")
    r = subprocess.run(["bash", ".ci/gpu", "--out", str(tmp_path / "file")], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 3 and "is a file, not a folder" in r.stderr
    r = subprocess.run(["bash", ".ci/gpu", "--out", str(tmp_path / "none"), "--device", "cpu", "--bench-profile",
                        "smoke", "--dataset", "synthetic", "-k", "no_such_case"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and ".ci/gpu: exit" in r.stdout
