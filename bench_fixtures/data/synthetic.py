"""A learnable synthetic data set, written in the canonical format and read by the same reader."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..files import NO_SPACE, space_message
from .cifar10 import BATCHES_DIR, IMAGE_SHAPE, NUM_CLASSES, ROW_SIZE, DataError, Split, write_canonical


CHUNK = 2048  # images generated at a time: float64 noise for 2,048 images is 50 MB


def make_synthetic(n_train: int, n_test: int, seed: int = 0) -> tuple[Split, Split]:
    """Learnable images: each class is a fixed colour-and-stripe template plus noise, so a few
    steps of any of the three models show a real accuracy gain (unlike uniform noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / 32.0
    templates = []
    for c in range(NUM_CLASSES):
        colour = rng.uniform(40, 215, size=3).astype(np.float32)
        angle = np.pi * c / NUM_CLASSES
        stripes = np.sin(2 * np.pi * (2 + c % 3) * (xx * np.cos(angle) + yy * np.sin(angle)))
        templates.append(colour[None, None, :] + 40.0 * stripes[..., None])
    templates = np.stack(templates)

    def split(n: int) -> Split:
        labels = np.arange(n, dtype=np.int64) % NUM_CLASSES
        rng.shuffle(labels)
        images = np.empty((n, *IMAGE_SHAPE), np.uint8)
        for start in range(0, n, CHUNK):  # bounded memory, and a signal is handled between chunks;
            stop = min(start + CHUNK, n)   # the same numbers as one draw (the generator's stream)
            noise = rng.normal(0, 30, size=(stop - start, *IMAGE_SHAPE)).astype(np.float32)
            images[start:stop] = np.clip(templates[labels[start:stop]] + noise, 0, 255)
        return Split(images, labels)

    return split(n_train), split(n_test)


def ensure_synthetic(cache_dir: str | os.PathLike, n_train: int = 5000, n_test: int = 1000,
                     seed: int = 0) -> Path:
    """The synthetic set, written once in the canonical format under CACHE_DIR and reused."""
    folder = Path(cache_dir) / f"synthetic-{n_train}-{n_test}-seed{seed}" / BATCHES_DIR
    if not (folder / "batches.meta").is_file():
        train, test = make_synthetic(n_train, n_test, seed)
        try:
            write_canonical(folder, train, test)
        except OSError as e:
            if not (folder / "batches.meta").is_file():  # a concurrent writer may have won the rename
                fix = "pass --data-dir a writable folder with room"
                raise DataError(space_message(folder.parent, (n_train + n_test) * (ROW_SIZE + 8), "the synthetic data set",
                                              fix, e) if e.errno in NO_SPACE else
                                f"{folder}: cannot write the synthetic data set ({e.strerror}); {fix}") from None
    return folder
