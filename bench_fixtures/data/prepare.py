"""Step 1 of the experiment, once per session: the data set found (or downloaded, or synthesised)
and cut into the bundle every worker maps, so that every framework trains on the same pixels."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bundle import CIFAR10_TEST, CIFAR10_TRAIN, ITEM_BYTES, check_fits, make_bundle
from .cache import cache_dir, default_data_dir
from .cifar10 import read_canonical
from .download import ensure_cifar10
from .synthetic import ensure_synthetic

if TYPE_CHECKING:
    from ..config import BenchConfig


def prepare_data(cfg: BenchConfig, out_dir: str | os.PathLike, world: int) -> tuple[Path, dict[str, Any]]:
    """Read (or download, or synthesise) the data set once, take the seeded subsets and the
    per-epoch order, and write the arrays every worker will map under OUT_DIR/bundle. Sizes that
    cannot fit this machine's memory or disk are refused first, naming the options.

    WORLD: every replica of a case over all hosts (`runner.replicas.world_size`), given by the
    caller: each epoch's order is cut to whole global batches (`batch_size` x WORLD), which the
    replicas then share."""
    epochs = max(cfg.epochs, 1)
    bundle_dir = Path(out_dir) / "bundle"
    if cfg.dataset == "synthetic":
        n_train = max(5000, -(-cfg.train_size // 5) * 5)
        n_test = max(1000, cfg.test_size)
        check_fits(cfg.train_size or n_train, cfg.test_size or n_test, cfg.batch_size, epochs, bundle_dir,
                   source_bytes=(n_train + n_test) * ITEM_BYTES)
        folder = ensure_synthetic(cfg.data_dir or cache_dir(), n_train, n_test, seed=0)
    else:
        check_fits(cfg.train_size or CIFAR10_TRAIN, cfg.test_size or CIFAR10_TEST, cfg.batch_size, epochs, bundle_dir,
                   source_bytes=(CIFAR10_TRAIN + CIFAR10_TEST) * ITEM_BYTES)
        folder = ensure_cifar10(cfg.data_dir or default_data_dir())
    dataset = read_canonical(folder)
    global_batch = cfg.batch_size * world
    bundle = make_bundle(dataset, cfg.train_size, cfg.test_size, global_batch, epochs, cfg.seed)
    bundle.write(bundle_dir)
    return bundle_dir, dict(source=str(folder), train_size=len(bundle.train), test_size=len(bundle.test),
                            steps_per_epoch=bundle.order.shape[1] // global_batch)
