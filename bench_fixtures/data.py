"""CIFAR-10 in its canonical "python version" layout: read, validate, write, download, subset.

Both frameworks are fed from here, so the same uint8 arrays, the same subset and the same
per-epoch order reach torch and TensorFlow. The reader trusts nothing: batches are unpickled by
an allow-list that admits numpy arrays only, and every structural fact is checked.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCHES_DIR = "cifar-10-batches-py"
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)  # NHWC, as handed to both frameworks
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


# --------------------------------------------------------------------------- synthetic

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
        noise = rng.normal(0, 30, size=(n, *IMAGE_SHAPE)).astype(np.float32)
        images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
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
                raise DataError(f"{folder}: cannot write the synthetic data set ({e.strerror}); "
                                f"pass a writable --data-dir") from None
    return folder


# --------------------------------------------------------------------------- download

def _safe_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        parts = Path(m.name).parts
        if m.name.startswith(("/", "\\")) or ".." in parts or not (m.isfile() or m.isdir()):
            raise DataError(f"{archive}: unsafe member {m.name!r} (absolute path, '..' or link); "
                            f"delete it and download the official archive")
    return members


def download_cifar10(data_dir: str | os.PathLike, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
                     timeout: float = 30.0) -> Path:
    """Download, verify the md5, extract into a temporary folder, validate, then rename into place.

    An interrupted earlier attempt leaves only dot-prefixed temporaries, removed here first."""
    data_dir = Path(data_dir)
    target = data_dir / BATCHES_DIR
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        for stale in data_dir.glob(".cifar10-*"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    except OSError as e:
        raise DataError(f"{data_dir}: cannot write ({e.strerror}); pass a writable --data-dir") from None
    fd, part_name = tempfile.mkstemp(prefix=".cifar10-", suffix=".tar.gz.part", dir=data_dir)
    part = Path(part_name)
    try:
        digest = hashlib.md5()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise DataError(f"cannot download CIFAR-10 from {url} ({reason}); put the extracted "
                            f"{BATCHES_DIR}/ under {data_dir} (or pass --data-dir / set CIFAR10_DIR), "
                            f"or run with --dataset synthetic") from None
        if digest.hexdigest() != md5:
            raise DataError(f"{url}: md5 {digest.hexdigest()} != expected {md5}; the download is corrupt "
                            f"or not the CIFAR-10 archive, retry or fetch it by hand into {data_dir}")
        extract = Path(tempfile.mkdtemp(prefix=".cifar10-extract-", dir=data_dir))
        try:
            try:
                with tarfile.open(part, "r:gz") as tar:
                    tar.extractall(extract, members=_safe_members(tar, part), filter="data")
            except (tarfile.TarError, EOFError, OSError) as e:
                raise DataError(f"{url}: archive cannot be extracted ({e}); retry the download") from None
            found = find_batches_dir(extract)
            if found is None:
                raise DataError(f"{url}: archive holds no {BATCHES_DIR}/batches.meta; "
                                f"it is not the CIFAR-10 python archive")
            read_canonical(found)  # validate before it becomes visible
            if target.exists():
                shutil.rmtree(target)
            os.replace(found, target)
        finally:
            shutil.rmtree(extract, ignore_errors=True)
    finally:
        part.unlink(missing_ok=True)
    return target


def default_data_dir() -> Path:
    env = os.environ.get("CIFAR10_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bench_fixtures" / "cifar10"


def ensure_cifar10(data_dir: str | os.PathLike, download: bool = True, url: str | None = None,
                   md5: str = CIFAR10_MD5) -> Path:
    """The validated batches folder under DATA_DIR, downloaded there when absent (from CIFAR10_URL
    when set: a mirror for runners without internet; the md5 is still the official archive's)."""
    url = url or os.environ.get("CIFAR10_URL") or CIFAR10_URL
    found = find_batches_dir(data_dir)
    if found is not None:
        return found
    if not download:
        raise DataError(f"{data_dir}: no {BATCHES_DIR}/ found; pass --data-dir to a folder holding it, "
                        f"or run with --dataset synthetic")
    return download_cifar10(data_dir, url, md5)


# --------------------------------------------------------------------------- subsets and order

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
    """The training order of epoch EPOCH: one seeded permutation, handed to both frameworks."""
    return np.random.default_rng([seed, 0xE90C, epoch]).permutation(n)


def training_order(n: int, batch_size: int, epochs: int, seed: int) -> np.ndarray:
    """(epochs, steps * batch_size) indices; the last partial batch of each epoch is dropped."""
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"batch size {batch_size} is larger than the {n} training images")
    return np.stack([epoch_order(n, seed, e)[:steps * batch_size] for e in range(epochs)])


# --------------------------------------------------------------------------- the workers' input

BUNDLE_FILES = ("train_x", "train_y", "test_x", "test_y", "order")


@dataclass(frozen=True)
class Bundle:
    """Exactly what every worker trains and evaluates on: the same arrays and the same order."""
    train: Split
    test: Split
    order: np.ndarray  # (epochs, steps * batch_size) indices into train

    def write(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = dict(train_x=self.train.images, train_y=self.train.labels,
                      test_x=self.test.images, test_y=self.test.labels, order=self.order)
        for name, array in arrays.items():
            tmp = folder / f".{name}.npy.part"
            with open(tmp, "wb") as f:
                np.save(f, array, allow_pickle=False)
            os.replace(tmp, folder / f"{name}.npy")
        return folder

    @classmethod
    def read(cls, folder: str | os.PathLike) -> "Bundle":
        a = {n: np.load(Path(folder) / f"{n}.npy", mmap_mode="r", allow_pickle=False) for n in BUNDLE_FILES}
        return cls(Split(a["train_x"], a["train_y"]), Split(a["test_x"], a["test_y"]), a["order"])


def make_bundle(dataset: Cifar10, train_size: int, test_size: int, batch_size: int, epochs: int,
                seed: int) -> Bundle:
    """Stratified seeded subsets and one shuffled order per epoch, shared by both frameworks."""
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
