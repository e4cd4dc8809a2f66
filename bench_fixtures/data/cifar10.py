"""CIFAR-10's canonical "python version" layout: the restricted reader and the byte-exact writer.

The reader trusts nothing: batches are unpickled by an allow-list that admits numpy arrays only,
and every structural fact (counts, shapes, dtype, label range) is checked.
"""
from __future__ import annotations

import os
import pickle
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BATCHES_DIR = "cifar-10-batches-py"
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)  # NHWC, as handed to every framework
ROW_SIZE = 3072
# Per-channel pixel statistics of the CIFAR-10 training set (0..1 scale); one normalisation for both.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class DataError(Exception):
    """Unusable data: the message names the file and the fix, on one line."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (n, 32, 32, 3) uint8
    labels: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Cifar10:
    train: Split
    test: Split
    label_names: tuple[str, ...]
    source: str


# --------------------------------------------------------------------------- reading

def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(text, "latin1"); allow only that.
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refused codec {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], object]:
    from numpy._core import multiarray, numeric
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
    for module in ("numpy.core.numeric", "numpy._core.numeric"):  # protocol 5 pickles of arrays
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Admits numpy arrays and plain containers; anything that could run code is refused."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, encoding="latin1").load()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the path and its permissions") from None
    except Exception as e:  # any malformed pickle: truncated, refused global, garbage
        raise DataError(f"{path}: not a valid CIFAR-10 pickle ({type(e).__name__}: {e}); "
                        f"delete the folder and download or rebuild it") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}; "
                        f"delete the folder and download or rebuild it")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_batch(path: str | os.PathLike) -> Split:
    """One `data_batch_N` / `test_batch` file, validated: uint8 rows of 3072, labels 0..9."""
    path = Path(path)
    d = _unpickle(path)
    fix = "delete the folder and download or rebuild it"
    missing = [k for k in ("data", "labels") if k not in d]
    if missing:
        raise DataError(f"{path}: missing key(s) {missing}; {fix}")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_SIZE:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be uint8 of shape (n, {ROW_SIZE}), found {desc}; {fix}")
    labels = d["labels"]
    if not isinstance(labels, (list, np.ndarray)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
        raise DataError(f"{path}: 'labels' must be a list of integers; {fix}")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels; {fix}")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}, "
                        f"found {labels.min()}..{labels.max()}; {fix}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images), labels)


def find_batches_dir(data_dir: str | os.PathLike) -> Path | None:
    """The folder holding `batches.meta`: DIR itself, DIR/cifar-10-batches-py or DIR/cifar-10-subset."""
    data_dir = Path(data_dir)
    for candidate in (data_dir, data_dir / BATCHES_DIR, data_dir / "cifar-10-subset"):
        if (candidate / "batches.meta").is_file():
            return candidate
    return None


def _train_batch_files(folder: Path) -> list[Path]:
    def number(p: Path) -> int:
        suffix = p.name.rsplit("_", 1)[-1]
        return int(suffix) if suffix.isdigit() else -1
    files = sorted((p for p in folder.glob("data_batch_*") if number(p) > 0), key=number)
    return files


def read_canonical(folder: str | os.PathLike) -> Cifar10:
    """A canonical batches folder (batches.meta, data_batch_1.., test_batch), fully validated."""
    folder = Path(folder)
    fix = f"point --data-dir at a folder holding {BATCHES_DIR}/ or delete {folder} to download again"
    meta_path = folder / "batches.meta"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: missing; {fix}")
    meta = _unpickle(meta_path)
    names = meta.get("label_names")
    if (not isinstance(names, list) or len(names) != NUM_CLASSES
            or not all(isinstance(n, (str, bytes)) for n in names)):
        raise DataError(f"{meta_path}: 'label_names' must list {NUM_CLASSES} names; {fix}")
    names = tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)
    per_batch = meta.get("num_cases_per_batch")
    train_files = _train_batch_files(folder)
    if not train_files:
        raise DataError(f"{folder}: no data_batch_N files; {fix}")
    if not (folder / "test_batch").is_file():
        raise DataError(f"{folder / 'test_batch'}: missing; {fix}")
    numbers = [int(p.name.rsplit("_", 1)[1]) for p in train_files]
    gap = next((n for n in range(1, numbers[-1] + 1) if n not in numbers), None)
    if gap is not None or len(set(numbers)) != len(numbers):
        what = f"data_batch_{gap}: missing" if gap is not None else "data_batch_N: numbered twice"
        raise DataError(f"{folder / what} (found {', '.join(p.name for p in train_files)}); {fix}")
    parts = [read_batch(p) for p in train_files]
    if isinstance(per_batch, int) and not isinstance(per_batch, bool):
        for p, part in zip(train_files, parts):
            if len(part) != per_batch:
                raise DataError(f"{p}: {len(part)} images, batches.meta says {per_batch} per batch; {fix}")
    train = Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))
    test = read_batch(folder / "test_batch")
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"{folder}: empty train or test split; {fix}")
    return Cifar10(train, test, names, str(folder))


# --------------------------------------------------------------------------- writing

def _p2_str(b: bytes) -> bytes:
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)


def _p2_int(i: int) -> bytes:
    if 0 <= i < 256:
        return b"K" + bytes([i])
    if 0 <= i < 65536:
        return b"M" + struct.pack("<H", i)
    return b"J" + struct.pack("<i", i)


def _p2_list(items: list, enc) -> bytes:
    out = [b"]"]
    for start in range(0, len(items), 1000):  # cPickle appends in runs of 1000
        out.append(b"(" + b"".join(enc(x) for x in items[start:start + 1000]) + b"e")
    return b"".join(out)


def _p2_uint8_matrix(a: np.ndarray) -> bytes:
    rows, cols = a.shape
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
            + _p2_int(0) + b"\x85" + _p2_str(b"b") + b"\x87R"
            + b"(" + _p2_int(1) + _p2_int(rows) + _p2_int(cols) + b"\x86"
            + b"cnumpy\ndtype\n" + _p2_str(b"u1") + _p2_int(0) + _p2_int(1) + b"\x87R"
            + b"(" + _p2_int(3) + _p2_str(b"|") + b"NNN" + b"J\xff\xff\xff\xffJ\xff\xff\xff\xff"
            + _p2_int(0) + b"tb" + b"\x89" + _p2_str(np.ascontiguousarray(a).tobytes()) + b"tb")


def _p2_dict(items: list[bytes]) -> bytes:
    return b"\x80\x02}(" + b"".join(items) + b"u."


def batch_bytes(split: Split, batch_label: str, filenames: list[str] | None = None) -> bytes:
    """A batch exactly as the original Python 2 files were pickled (protocol 2, str keys), so
    `pickle.load(encoding="bytes")` (Keras) and `encoding="latin1"` (torchvision) both read it."""
    rows = split.images.transpose(0, 3, 1, 2).reshape(len(split), ROW_SIZE)
    if filenames is None:
        filenames = [f"image_{i:06d}.png" for i in range(len(split))]
    return _p2_dict([_p2_str(b"batch_label"), _p2_str(batch_label.encode()),
                     _p2_str(b"labels"), _p2_list([int(x) for x in split.labels], _p2_int),
                     _p2_str(b"data"), _p2_uint8_matrix(rows),
                     _p2_str(b"filenames"), _p2_list([f.encode() for f in filenames], _p2_str)])


def meta_bytes(per_batch: int, names: tuple[str, ...] = LABEL_NAMES) -> bytes:
    return _p2_dict([_p2_str(b"num_cases_per_batch"), _p2_int(per_batch),
                     _p2_str(b"label_names"), _p2_list([n.encode() for n in names], _p2_str),
                     _p2_str(b"num_vis"), _p2_int(ROW_SIZE)])


def write_canonical(folder: str | os.PathLike, train: Split, test: Split, num_batches: int = 5) -> Path:
    """Write FOLDER (a canonical batches folder) atomically: built beside it, then renamed."""
    folder = Path(folder)
    if len(train) % num_batches:
        raise ValueError(f"{len(train)} training images do not split into {num_batches} equal batches")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        per = len(train) // num_batches
        for b in range(num_batches):
            part = Split(train.images[b * per:(b + 1) * per], train.labels[b * per:(b + 1) * per])
            (tmp / f"data_batch_{b + 1}").write_bytes(
                batch_bytes(part, f"training batch {b + 1} of {num_batches}"))
        (tmp / "test_batch").write_bytes(batch_bytes(test, "testing batch 1 of 1"))
        (tmp / "batches.meta").write_bytes(meta_bytes(per))
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
