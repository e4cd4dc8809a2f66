"""The data layer: CIFAR-10's format, its download, the synthetic set, subsets, orders and bundles,
the session's data preparation, and the suite's one cache folder.

Both frameworks are fed from here. The names below are the package's public API.
"""
from .bundle import BUNDLE_FILES, Bundle, epoch_order, make_bundle, stratified_subset, training_order
from .cache import cache_dir, default_data_dir
from .cifar10 import (BATCHES_DIR, IMAGE_SHAPE, LABEL_NAMES, MEAN, NUM_CLASSES, ROW_SIZE, STD, Cifar10, DataError,
                      RestrictedUnpickler, Split, batch_bytes, find_batches_dir, meta_bytes, read_batch,
                      read_canonical, write_canonical)
from .download import CIFAR10_MD5, CIFAR10_URL, download_cifar10, ensure_cifar10
from .prepare import prepare_data
from .synthetic import ensure_synthetic, make_synthetic

__all__ = ["BATCHES_DIR", "BUNDLE_FILES", "Bundle", "CIFAR10_MD5", "CIFAR10_URL", "Cifar10", "DataError",
           "IMAGE_SHAPE", "LABEL_NAMES", "MEAN", "NUM_CLASSES", "ROW_SIZE", "RestrictedUnpickler", "STD", "Split",
           "batch_bytes", "cache_dir", "default_data_dir", "download_cifar10", "ensure_cifar10", "ensure_synthetic",
           "epoch_order", "find_batches_dir", "make_bundle", "make_synthetic", "meta_bytes", "prepare_data",
           "read_batch", "read_canonical", "stratified_subset", "training_order", "write_canonical"]
