"""The benchmark's settings table (being built for #30): for now the comparability facts only."""
from __future__ import annotations

from typing import Any

# The settings that make two runs comparable: runs differing in one compare different work.
COMPARABLE: tuple[str, ...] = ("profile", "device", "dataset", "train_size", "test_size", "epochs", "batch_size",
                               "weights", "setup", "precision", "compile", "image_size", "optimizer", "lr",
                               "channels_last", "target_accuracy", "train_layers", "replicas")
# What runs recorded before a setting existed ran with (their bench_config lacks the key).
ABSENT: dict[str, Any] = {"setup": "matched", "channels_last": False, "target_accuracy": None,
                          "train_layers": "all", "replicas": 1}
