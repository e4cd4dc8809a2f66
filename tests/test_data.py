"""The CIFAR-10 data layer: canonical format, validation, subsets, order, download."""
import hashlib
import http.server
import io
import os
import pickle
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench_fixtures import data
from bench_fixtures.data import DataError, Split

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def random_split(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64))


# --------------------------------------------------------------------------- format

@SETTINGS
@given(per_batch=st.integers(1, 12), batches=st.integers(1, 5), n_test=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_write_read_round_trip(tmp_path_factory, per_batch, batches, n_test, seed):
    train, test = random_split(per_batch * batches, seed), random_split(n_test, seed + 1)
    folder = data.write_canonical(tmp_path_factory.mktemp("c") / data.BATCHES_DIR, train, test, batches)
    got = data.read_canonical(folder)
    np.testing.assert_array_equal(got.train.images, train.images)
    np.testing.assert_array_equal(got.train.labels, train.labels)
    np.testing.assert_array_equal(got.test.images, test.images)
    np.testing.assert_array_equal(got.test.labels, test.labels)
    assert got.label_names == data.LABEL_NAMES


def test_written_batches_read_in_both_key_styles(tmp_path):
    """Keras reads with encoding='bytes' (b'data' keys), torchvision with 'latin1' ('data')."""
    split = random_split(7, 0)
    raw = data.batch_bytes(split, "training batch 1 of 1")
    as_bytes = pickle.loads(raw, encoding="bytes")
    as_str = pickle.loads(raw, encoding="latin1")
    assert b"data" in as_bytes and "data" in as_str
    rows = split.images.transpose(0, 3, 1, 2).reshape(7, 3072)
    np.testing.assert_array_equal(as_bytes[b"data"], rows)
    assert as_str["labels"] == split.labels.tolist()


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("key", [str, lambda k: k.encode()])
def test_reader_accepts_python3_pickles_with_either_key_type(tmp_path, protocol, key):
    split = random_split(5, 1)
    rows = split.images.transpose(0, 3, 1, 2).reshape(5, 3072)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({key("data"): rows, key("labels"): split.labels.tolist()}, protocol=protocol))
    got = data.read_batch(path)
    np.testing.assert_array_equal(got.images, split.images)


def test_writer_reproduces_the_original_pickle_bytes():
    """Same opcodes as the original Python 2 files: our writer re-creates a real batch byte for byte."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "cifar10"
    if not shared.is_dir():
        pytest.skip(f"{shared} absent: real CIFAR-10 is only on the project's own machines")
    from tests.helpers import real_subset
    folder = real_subset()
    raw = pickle.loads((folder / "test_batch").read_bytes(), encoding="latin1")
    split = data.read_batch(folder / "test_batch")
    rebuilt = data.batch_bytes(split, raw["batch_label"], raw["filenames"])
    assert hashlib.md5(rebuilt).hexdigest() == hashlib.md5((folder / "test_batch").read_bytes()).hexdigest()


# --------------------------------------------------------------------------- corrupt input

def write_batch(path: Path, obj) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


def good_rows(n=4):
    return np.zeros((n, 3072), np.uint8)


@pytest.mark.parametrize("obj,needle", [
    ({"data": good_rows(), "labels": [0, 1, 2, 10]}, "labels must lie in 0..9"),
    ({"data": good_rows(), "labels": [0, 1, -1, 2]}, "labels must lie in 0..9"),
    ({"data": good_rows(), "labels": [0, 1, 2]}, "4 images but 3 labels"),
    ({"data": good_rows().astype(np.float32), "labels": [0] * 4}, "must be uint8"),
    ({"data": np.zeros((4, 3000), np.uint8), "labels": [0] * 4}, "must be uint8 of shape"),
    ({"data": good_rows(), "labels": ["a"] * 4}, "list of integers"),
    ({"labels": [0] * 4}, "missing key"),
    ([1, 2, 3], "expected a dict"),
])
def test_corrupt_batches_are_refused_with_the_file_named(tmp_path, obj, needle):
    path = write_batch(tmp_path / "data_batch_1", obj)
    with pytest.raises(DataError) as e:
        data.read_batch(path)
    assert needle in str(e.value) and str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_truncated_batch_is_refused(tmp_path):
    raw = data.batch_bytes(random_split(10, 0), "x")
    path = tmp_path / "data_batch_1"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="not a valid CIFAR-10 pickle"):
        data.read_batch(path)


class Exploit:
    """Pickles into a call of os.system: a batch file that would run code when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Exploit(marker), "labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="refused global"):
        data.read_batch(path)
    assert not marker.exists()


# No deadline: each example makes a folder and writes and reads a file, whose time is the machine's,
# not the reader's (an example once took 22 s on a busy machine; 20,000 such reads here: at most 0.2 s).
@settings(max_examples=120, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_give_arrays_or_data_error(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("f") / "data_batch_1"
    path.write_bytes(blob)
    try:
        split = data.read_batch(path)
    except DataError:
        return
    assert split.images.dtype == np.uint8 and split.images.shape[1:] == (32, 32, 3)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_fuzz_structured_corruptions(tmp_path_factory, d):
    raw = bytearray(data.batch_bytes(random_split(3, 0), "x"))
    for _ in range(d.draw(st.integers(1, 4))):
        pos = d.draw(st.integers(0, len(raw) - 1))
        raw[pos] = d.draw(st.integers(0, 255))
    raw = raw[: d.draw(st.integers(0, len(raw)))]
    path = tmp_path_factory.mktemp("s") / "data_batch_1"
    path.write_bytes(bytes(raw))
    try:
        split = data.read_batch(path)
    except DataError:
        return
    assert split.images.shape[1:] == (32, 32, 3) and split.labels.max(initial=0) < 10


def test_canonical_folder_count_checked_against_meta(tmp_path):
    folder = data.write_canonical(tmp_path / "c", random_split(10, 0), random_split(4, 1), 2)
    (folder / "data_batch_2").write_bytes(data.batch_bytes(random_split(3, 2), "x"))
    with pytest.raises(DataError, match="batches.meta says 5 per batch"):
        data.read_canonical(folder)


def test_missing_test_batch_and_meta(tmp_path):
    folder = data.write_canonical(tmp_path / "c", random_split(5, 0), random_split(4, 1), 1)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch: missing"):
        data.read_canonical(folder)
    (folder / "batches.meta").unlink()
    with pytest.raises(DataError, match="batches.meta: missing"):
        data.read_canonical(folder)


# --------------------------------------------------------------------------- subsets and order

@SETTINGS
@given(labels=st.lists(st.integers(0, 9), min_size=1, max_size=300), frac=st.floats(0, 1), seed=st.integers(0, 1000))
def test_stratified_subset(labels, frac, seed):
    labels = np.array(labels)
    size = int(frac * len(labels))
    idx = data.stratified_subset(labels, size, seed)
    assert len(idx) == (size or len(labels))
    assert len(np.unique(idx)) == len(idx) and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, data.stratified_subset(labels, size, seed))  # deterministic
    if size:
        classes, counts = np.unique(labels, return_counts=True)
        got = {c: int(np.sum(labels[idx] == c)) for c in classes}
        for c, n in zip(classes, counts):
            assert abs(got[c] - n * size / len(labels)) < 1 + 1e-9  # largest remainder: within one


def test_stratified_subset_too_large():
    with pytest.raises(ValueError):
        data.stratified_subset(np.zeros(5), 6, 0)


@SETTINGS
@given(n=st.integers(1, 500), bs=st.integers(1, 64), epochs=st.integers(1, 4), seed=st.integers(0, 99))
def test_training_order(n, bs, epochs, seed):
    if bs > n:
        with pytest.raises(ValueError, match="larger than"):
            data.training_order(n, bs, epochs, seed)
        return
    order = data.training_order(n, bs, epochs, seed)
    assert order.shape == (epochs, (n // bs) * bs)
    for e in range(epochs):
        full = data.epoch_order(n, seed, e)
        assert sorted(full.tolist()) == list(range(n))  # a permutation
        np.testing.assert_array_equal(order[e], full[: order.shape[1]])
    np.testing.assert_array_equal(order, data.training_order(n, bs, epochs, seed))


def test_epochs_are_shuffled_differently():
    assert not np.array_equal(data.epoch_order(1000, 0, 0), data.epoch_order(1000, 0, 1))


def test_bundle_round_trip_and_size_errors(tmp_path):
    train, test = data.make_synthetic(100, 50, seed=3)
    ds = data.Cifar10(train, test, data.LABEL_NAMES, "mem")
    bundle = data.make_bundle(ds, 40, 20, 8, 3, seed=1)
    back = data.Bundle.read(bundle.write(tmp_path / "b"))
    np.testing.assert_array_equal(back.order, bundle.order)
    np.testing.assert_array_equal(back.train.images, bundle.train.images)
    assert np.bincount(back.train.labels, minlength=10).tolist() == [4] * 10
    with pytest.raises(DataError, match="--train-size 101"):
        data.make_bundle(ds, 101, 0, 8, 1, 0)
    with pytest.raises(DataError, match="--batch-size 64 is larger than the 40"):
        data.make_bundle(ds, 40, 0, 64, 1, 0)


def test_synthetic_is_learnable_by_a_linear_probe():
    """Class-dependent patterns: a least-squares classifier on raw pixels is far above chance."""
    train, test = data.make_synthetic(2000, 500, seed=0)
    x = train.images.reshape(len(train), -1).astype(np.float64) / 255
    w, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], np.eye(10)[train.labels], rcond=None)
    xt = test.images.reshape(len(test), -1).astype(np.float64) / 255
    acc = np.mean((np.c_[xt, np.ones(len(xt))] @ w).argmax(1) == test.labels)
    assert acc > 0.6


def test_ensure_synthetic_writes_once(tmp_path):
    folder = data.ensure_synthetic(tmp_path, 50, 20, seed=0)
    mtime = (folder / "data_batch_1").stat().st_mtime_ns
    assert data.ensure_synthetic(tmp_path, 50, 20, seed=0) == folder
    assert (folder / "data_batch_1").stat().st_mtime_ns == mtime
    assert len(data.read_canonical(folder).train) == 50


# --------------------------------------------------------------------------- download

def build_archive(path: Path, member_prefix: str = data.BATCHES_DIR, extra: tarfile.TarInfo | None = None) -> str:
    src = data.write_canonical(path.parent / "src" / data.BATCHES_DIR, *data.make_synthetic(50, 20), 5)
    with tarfile.open(path, "w:gz") as tar:
        for f in sorted(src.iterdir()):
            tar.add(f, arcname=f"{member_prefix}/{f.name}")
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size))
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_md5_and_extracts_atomically(tmp_path, http_server):
    root, url = http_server
    md5 = build_archive(root / "cifar.tar.gz")
    target_dir = tmp_path / "data"
    target_dir.mkdir()
    (target_dir / ".cifar10-extract-stale").mkdir()  # an interrupted earlier attempt
    (target_dir / ".cifar10-old.tar.gz.part").write_bytes(b"half")
    folder = data.ensure_cifar10(target_dir, url=f"{url}/cifar.tar.gz", md5=md5)
    assert folder == target_dir / data.BATCHES_DIR
    assert len(data.read_canonical(folder).train) == 50
    assert sorted(p.name for p in target_dir.iterdir()) == [".cifar10.lock", data.BATCHES_DIR]  # no leftovers


def test_download_with_bad_md5_leaves_nothing(tmp_path, http_server):
    root, url = http_server
    build_archive(root / "cifar.tar.gz")
    with pytest.raises(DataError, match="md5 .* != expected"):
        data.download_cifar10(tmp_path / "d", url=f"{url}/cifar.tar.gz", md5="0" * 32)
    assert [p.name for p in (tmp_path / "d").iterdir()] == [".cifar10.lock"]  # the lock stays: unlinking races


def test_archive_escaping_the_target_is_refused(tmp_path, http_server):
    root, url = http_server
    evil = tarfile.TarInfo("../../evil.txt")
    evil.size = 3
    md5 = build_archive(root / "cifar.tar.gz", extra=evil)
    with pytest.raises(DataError, match="unsafe member"):
        data.download_cifar10(tmp_path / "d", url=f"{url}/cifar.tar.gz", md5=md5)
    assert not (tmp_path / "evil.txt").exists()
    assert [p.name for p in (tmp_path / "d").iterdir()] == [".cifar10.lock"]


def test_offline_download_is_one_clear_line(tmp_path, http_server):
    _, url = http_server
    with pytest.raises(DataError) as e:
        data.ensure_cifar10(tmp_path / "d", url=f"{url}/missing.tar.gz")
    msg = str(e.value)
    assert "cannot download CIFAR-10" in msg and "--dataset synthetic" in msg and "\n" not in msg
    with pytest.raises(DataError, match="cannot download"):  # nothing listening at all
        data.ensure_cifar10(tmp_path / "d", url="http://127.0.0.1:9/cifar.tar.gz")


class _Mirror(http.server.BaseHTTPRequestHandler):
    """A mirror with a flaw: 'slow' sends a byte every 0.3 s, 'short' promises more than it sends,
    'paced' sends the whole archive in 20 pieces over about a second. Counts the GETs it served."""
    body, mode, gets = b"", "paced", []

    def do_GET(self):
        type(self).gets.append(self.path)
        if self.mode == "slowhead":  # the status line and headers themselves trickle in
            for byte in b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\nX-Padding: " + b"x" * 100:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.3)
            return
        if self.mode == "huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10**15))
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body) + (100 if self.mode == "short" else 0)))
        self.end_headers()
        pieces = {"slow": [self.body[i:i + 1] for i in range(len(self.body))],
                  "short": [self.body], "paced": np.array_split(np.frombuffer(self.body, np.uint8), 20)}[self.mode]
        for piece in pieces:
            self.wfile.write(bytes(piece))
            self.wfile.flush()
            time.sleep({"slow": 0.3, "short": 0, "paced": 0.05}[self.mode])

    def log_message(self, *a):
        pass


@pytest.fixture
def mirror(tmp_path):
    md5 = build_archive(tmp_path / "src.tar.gz")
    handler = type("Mirror", (_Mirror,), dict(body=(tmp_path / "src.tar.gz").read_bytes(), gets=[]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz", md5
    server.shutdown()
    server.server_close()


def test_a_trickling_mirror_hits_the_deadline_and_the_error_names_the_url(tmp_path, mirror):
    handler, url, md5 = mirror
    handler.mode = "slow"
    start = time.monotonic()
    with pytest.raises(DataError) as e:
        data.download_cifar10(tmp_path / "d", url=url, md5=md5, timeout=5, deadline=1.5)
    assert time.monotonic() - start < 5  # not the socket timeout: each byte arrives within it
    msg = str(e.value)
    assert msg.startswith(f"cannot download CIFAR-10 from {url}: not complete after 1.5 s (") and "\n" not in msg
    assert ".part" not in msg and "--dataset synthetic" in msg
    assert [p.name for p in (tmp_path / "d").iterdir()] == [".cifar10.lock"]


def test_the_deadline_holds_while_the_headers_trickle(tmp_path, mirror):
    handler, url, md5 = mirror
    handler.mode = "slowhead"
    start = time.monotonic()
    with pytest.raises(DataError, match=f"cannot download CIFAR-10 from {url}: not complete after 1.5 s"):
        data.download_cifar10(tmp_path / "d", url=url, md5=md5, timeout=5, deadline=1.5)
    assert time.monotonic() - start < 4


def test_a_server_announcing_more_than_the_archive_is_refused(tmp_path, mirror):
    handler, url, md5 = mirror
    handler.mode = "huge"
    with pytest.raises(DataError, match="it announces 1,000,000,000,000,000 bytes, the archive has 170,498,071"):
        data.download_cifar10(tmp_path / "d", url=url, md5=md5, timeout=5)
    assert [p.name for p in (tmp_path / "d").iterdir()] == [".cifar10.lock"]


def test_a_connection_that_ends_early_is_one_line_naming_the_url(tmp_path, mirror):
    handler, url, md5 = mirror
    handler.mode = "short"
    with pytest.raises(DataError, match=f"cannot download CIFAR-10 from {url}: the connection ended after "
                                        f"[0-9,]+ of [0-9,]+ bytes; retry"):
        data.download_cifar10(tmp_path / "d", url=url, md5=md5, timeout=5)


def test_two_processes_downloading_into_one_folder_download_once(tmp_path, mirror):
    """Two real processes start the download into one folder at once: one downloads, the other waits
    on the lock beside the folder and then uses the result (it used to delete the first's download)."""
    handler, url, md5 = mirror
    code = (f"import sys; from bench_fixtures import data; "
            f"print(data.ensure_cifar10(sys.argv[1], url={url!r}, md5={md5!r}))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "d")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o.strip() for o, _ in outs] == [str(tmp_path / "d" / data.BATCHES_DIR)] * 2
    assert len(handler.gets) == 1, handler.gets
    assert sum("another session is downloading CIFAR-10 into" in err for _, err in outs) == 1, outs
    assert len(data.read_canonical(tmp_path / "d" / data.BATCHES_DIR).train) == 50


# --------------------------------------------------------------------------- cache folders

def test_one_cache_rule_for_the_suite_and_the_frameworks(monkeypatch, tmp_path):
    """Every cache folder: its variable, else its default (unset or empty alike), `~` expanded.
    CIFAR-10 defaults into the suite's cache, so BENCH_CACHE_DIR moves it too."""
    from bench_fixtures import weights
    for name in ("BENCH_CACHE_DIR", "XDG_CACHE_HOME", "CIFAR10_DIR", "TORCH_HOME", "KERAS_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.cache_dir() == tmp_path / ".cache" / "bench_fixtures"
    assert data.default_data_dir() == tmp_path / ".cache" / "bench_fixtures" / "cifar10"
    assert weights.cache_dir("torchvision") == tmp_path / ".cache" / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty: the default, not the current folder
    assert data.cache_dir() == tmp_path / ".cache" / "bench_fixtures"
    monkeypatch.setenv("XDG_CACHE_HOME", "~/xdg")
    assert data.cache_dir() == tmp_path / "xdg" / "bench_fixtures"
    assert weights.cache_dir("torchvision") == tmp_path / "xdg" / "torch" / "hub" / "checkpoints"
    monkeypatch.setenv("BENCH_CACHE_DIR", "~/bench")
    assert data.cache_dir() == tmp_path / "bench" and data.default_data_dir() == tmp_path / "bench" / "cifar10"
    monkeypatch.setenv("CIFAR10_DIR", "~/cifar")
    monkeypatch.setenv("TORCH_HOME", "~/th")
    (tmp_path / "kh").mkdir()
    monkeypatch.setenv("KERAS_HOME", "~/kh")
    assert data.default_data_dir() == tmp_path / "cifar"
    assert weights.cache_dir("torchvision") == tmp_path / "th" / "hub" / "checkpoints"
    assert weights.cache_dir("keras") == tmp_path / "kh" / "models"
