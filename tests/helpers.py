"""Shared test helpers: the real CIFAR-10 subset (from ../shared/cifar10) and tiny bundles."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench_fixtures import data
from bench_fixtures.data import cache_dir

SHARED = Path(__file__).resolve().parents[2] / "shared" / "cifar10"


def real_subset() -> Path:
    """The 5,000/1,000 real CIFAR-10 subset, built once into the cache; skips where it cannot exist."""
    script = SHARED / "build_cifar10.py"
    if not script.is_file():
        pytest.skip(f"real CIFAR-10 pack not found at {SHARED} (only on the project's machines)")
    out = cache_dir() / "real-cifar10"
    folder = out / "cifar-10-subset"
    if not (folder / "batches.meta").is_file():
        subprocess.run([sys.executable, str(script), str(out), "--subset"], check=True, capture_output=True)
    return folder


def tiny_bundle(folder: Path, n_train: int = 64, n_test: int = 40, batch: int = 16, epochs: int = 2) -> Path:
    train, test = data.make_synthetic(n_train, n_test, seed=0)
    ds = data.Cifar10(train, test, data.LABEL_NAMES, "synthetic")
    return data.make_bundle(ds, 0, 0, batch, epochs, seed=0).write(folder)

