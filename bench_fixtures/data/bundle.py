"""What every worker trains on: seeded stratified subsets, one shuffled order per epoch, and the
memory-mapped arrays that carry them, so the same pixels in the same order reach every framework."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from ..files import NO_SPACE, free_bytes, size, size_pair, space_message
from .cifar10 import ROW_SIZE, Cifar10, DataError, Split

CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000
ITEM_BYTES = ROW_SIZE + 8  # an image and its int64 label
MEMORY_SHARE = 0.5  # the bundle is built in the parent's memory: at most half of what is available


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of SIZE items whose class proportions match LABELS' (largest remainder);
    0 means all. The same seed and labels always give the same subset."""
    labels = np.asarray(labels)
    n = len(labels)
    if size == 0 or size >= n:
        if size > n:
            raise ValueError(f"asked for {size} items, only {n} exist")
        return np.arange(n)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / n
    quota = np.floor(exact).astype(int)
    short = size - quota.sum()
    order = np.lexsort((classes, -(exact - quota)))  # largest remainder, ties by class
    quota[order[:short]] += 1
    rng = np.random.default_rng([seed, 0x5EB5E7])
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of epoch EPOCH: one seeded permutation, handed to every framework."""
    return np.random.default_rng([seed, 0xE90C, epoch]).permutation(n)


def training_order(n: int, batch_size: int, epochs: int, seed: int) -> np.ndarray:
    """(epochs, steps * batch_size) indices; the last partial batch of each epoch is dropped."""
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"batch size {batch_size} is larger than the {n} training images")
    order = np.empty((epochs, steps * batch_size), np.int64)  # filled in place: no second copy
    for e in range(epochs):
        order[e] = epoch_order(n, seed, e)[:steps * batch_size]
    return order


def replica_shard(order: np.ndarray, rank: int, replicas: int, batch_size: int) -> np.ndarray:
    """Replica RANK's part of the shared order: slice RANK (BATCH_SIZE images) of every global batch of
    REPLICAS x BATCH_SIZE, in order, so that the replicas of one step together see exactly the global
    batch a single process would. (tf.distribute's DATA auto-sharding of the global-batch stream
    gives each worker the same slices; tests/test_replicas.py checks both against this.)"""
    global_batch = batch_size * replicas
    steps = order.shape[-1] // global_batch
    shaped = order[..., :steps * global_batch].reshape(*order.shape[:-1], steps, replicas, batch_size)
    return np.ascontiguousarray(shaped[..., rank, :].reshape(*order.shape[:-1], steps * batch_size))


BUNDLE_FILES = ("train_x", "train_y", "test_x", "test_y", "order")


@dataclass(frozen=True)
class Bundle:
    """Exactly what every worker trains and evaluates on: the same arrays and the same order."""
    train: Split
    test: Split
    order: np.ndarray  # (epochs, steps * batch_size) indices into train

    def write(self, folder: str | os.PathLike) -> Path:
        """Every array beside its final name, then renamed; a full disk is one line with the sizes."""
        folder = Path(folder)
        arrays = dict(train_x=self.train.images, train_y=self.train.labels,
                      test_x=self.test.images, test_y=self.test.labels, order=self.order)
        tmp = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name, array in arrays.items():
                tmp = folder / f".{name}.npy.part"
                with open(tmp, "wb") as f:  # not np.save: its short write loses the errno (a full disk)
                    np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
                    f.write(np.ascontiguousarray(array).data)
                os.replace(tmp, folder / f"{name}.npy")
        except OSError as e:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            needed = sum(a.nbytes for a in arrays.values())
            raise DataError(space_message(folder, needed, "the data bundle", BUNDLE_FIX, e) if e.errno in NO_SPACE
                            else f"{folder}: cannot write the data bundle ({e.strerror}); {BUNDLE_FIX}") from None
        return folder

    @classmethod
    def read(cls, folder: str | os.PathLike) -> "Bundle":
        a = {n: np.load(Path(folder) / f"{n}.npy", mmap_mode="r", allow_pickle=False) for n in BUNDLE_FILES}
        return cls(Split(a["train_x"], a["train_y"]), Split(a["test_x"], a["test_y"]), a["order"])


BUNDLE_FIX = "set TMPDIR to a folder on a larger disk, or lower --train-size / --test-size / --epochs"


def bundle_bytes(n_train: int, n_test: int, batch_size: int, epochs: int) -> int:
    """What a bundle of these sizes takes, in memory while it is built and on disk once written."""
    return (n_train + n_test) * ITEM_BYTES + epochs * (n_train // batch_size) * batch_size * 8


def check_fits(n_train: int, n_test: int, batch_size: int, epochs: int, folder: str | os.PathLike,
               source_bytes: int = 0) -> None:
    """Refuse sizes that cannot be built on this machine before building anything, naming the options.
    SOURCE_BYTES: a data set that has to be generated in memory first (synthetic). The sizes are shown
    with the precision it takes for the need to read larger than the room whenever it is."""
    orders = epochs * (n_train // batch_size) * batch_size * 8
    total = bundle_bytes(n_train, n_test, batch_size, epochs)
    available = psutil.virtual_memory().available
    head = f"--epochs {epochs} x --train-size {n_train}: the per-epoch shuffle orders take {size(orders)}"
    if total + source_bytes > MEMORY_SHARE * available:
        need, room = size_pair(total + source_bytes, MEMORY_SHARE * available)
        what = (f"the data bundle {size(total)} in all (+ {size(source_bytes)} for the data set it is taken from: "
                f"{need} together)" if source_bytes else f"the data bundle {need} in all")
        raise DataError(f"{head}, {what}; this machine has {size(available)} of memory available, and the data may "
                        f"take half of it ({room}): the training needs the other half; lower --epochs or --train-size")
    sizes = f"{head}, the data bundle {size(total)} in all"
    if total > free_bytes(folder):
        raise DataError(space_message(folder, total, f"the data bundle ({sizes})", BUNDLE_FIX))


def make_bundle(dataset: Cifar10, train_size: int, test_size: int, batch_size: int, epochs: int,
                seed: int) -> Bundle:
    """Stratified seeded subsets and one shuffled order per epoch, shared by every framework."""
    for option, size, split in (("--train-size", train_size, dataset.train), ("--test-size", test_size, dataset.test)):
        if size > len(split):
            raise DataError(f"{option} {size}: {dataset.source} holds only {len(split)} images; "
                            f"use {option} {len(split)} or less (0 = all)")
    tr = stratified_subset(dataset.train.labels, train_size, seed)
    te = stratified_subset(dataset.test.labels, test_size, seed)
    train = Split(dataset.train.images[tr], dataset.train.labels[tr])
    test = Split(dataset.test.images[te], dataset.test.labels[te])
    if batch_size > len(train):
        raise DataError(f"--batch-size {batch_size} is larger than the {len(train)} training images; "
                        f"lower --batch-size or raise --train-size")
    return Bundle(train, test, training_order(len(train), batch_size, epochs, seed))
