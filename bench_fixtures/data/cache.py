"""Where files are kept between runs: the suite's one cache folder, and the rule it shares with
the frameworks' own caches (an environment variable, else a default under the user's cache).

The suite's cache (`cache_dir`) holds the synthetic sets, CIFAR-10 when it is downloaded (`cifar10/`)
and what the test suite builds once (the real subset, staged weights). The frameworks' caches
(torch.hub's, Keras') are theirs: `weights.cache_dir(zoo)` finds them with `env_path` as they do.
"""
from __future__ import annotations

import os
from pathlib import Path


def env_path(name: str, default: str | os.PathLike) -> Path:
    """$NAME, else DEFAULT (an unset or empty variable alike), `~` expanded: the rule every cache
    folder here follows, ours and the frameworks' (torch.hub and Keras expand `~` too)."""
    return Path(os.environ.get(name) or default).expanduser()


def user_cache() -> Path:
    """The user's cache folder: $XDG_CACHE_HOME, else ~/.cache (ours and torch.hub's live in it)."""
    return env_path("XDG_CACHE_HOME", "~/.cache")


def cache_dir() -> Path:
    """The suite's own cache: $BENCH_CACHE_DIR, else $XDG_CACHE_HOME/bench_fixtures, else
    ~/.cache/bench_fixtures. Every file the suite keeps between runs goes under it."""
    return env_path("BENCH_CACHE_DIR", user_cache() / "bench_fixtures")


def default_data_dir() -> Path:
    """Where real CIFAR-10 is looked for (and downloaded) without --data-dir: $CIFAR10_DIR, else the
    cache's `cifar10/`."""
    return env_path("CIFAR10_DIR", cache_dir() / "cifar10")
