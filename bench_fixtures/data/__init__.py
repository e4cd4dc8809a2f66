"""The data layer: CIFAR-10's format, its download, the synthetic set, subsets, orders and bundles.

Both frameworks are fed from here. The names below are the package's public API.
"""
from .bundle import BUNDLE_FILES, Bundle, epoch_order, make_bundle, stratified_subset, training_order
from .cifar10 import (BATCHES_DIR, IMAGE_SHAPE, LABEL_NAMES, MEAN, NUM_CLASSES, ROW_SIZE, STD, Cifar10, DataError,
                      RestrictedUnpickler, Split, batch_bytes, find_batches_dir, meta_bytes, read_batch,
                      read_canonical, write_canonical)
from .download import CIFAR10_MD5, CIFAR10_URL, default_data_dir, download_cifar10, ensure_cifar10
from .synthetic import ensure_synthetic, make_synthetic

__all__ = ["BATCHES_DIR", "BUNDLE_FILES", "Bundle", "CIFAR10_MD5", "CIFAR10_URL", "Cifar10", "DataError",
           "IMAGE_SHAPE", "LABEL_NAMES", "MEAN", "NUM_CLASSES", "ROW_SIZE", "RestrictedUnpickler", "STD", "Split",
           "batch_bytes", "default_data_dir", "download_cifar10", "ensure_cifar10", "ensure_synthetic",
           "epoch_order", "find_batches_dir", "make_bundle", "make_synthetic", "meta_bytes", "read_batch",
           "read_canonical", "stratified_subset", "training_order", "write_canonical"]
