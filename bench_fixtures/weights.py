"""Pretrained weight files: which file each framework starts from, where it is looked for, and
`bench weights fetch|check DIR` for clusters without internet.

Framework-neutral (imports no framework): the plugin checks a staged folder at startup with it, a
worker finds its file with it, and the fetch command fills a folder on a machine with internet.
A staged folder holds each zoo's files under their usual names (torchvision's `.pth`, Keras'
`..._notop.h5`), so a copy of the frameworks' own caches is one.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import os
import signal
import sys
import tempfile
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path

from .config import MODELS
from .data.cache import env_path, user_cache
from .data.http import DOWNLOAD_DEADLINE_S, TooSlow, chunks_within, open_within
from .files import exclusive_lock, folder_problem
from .registry import FRAMEWORKS


@dataclass(frozen=True)
class WeightFile:
    zoo: str         # "torchvision" or "keras" (a framework's `zoo` in the registry)
    model: str
    name: str        # the file name in the zoo's cache, and in a staged folder
    url: str
    hash_kind: str | None  # "sha256-prefix" (torchvision: in the file name), "md5" (Keras' file_hash), None
    published: str | None  # the published hash (or prefix); None: the zoo publishes none for this file
    where: str       # where that hash is published
    sizes: tuple[int, ...] = ()  # one ImageNet training per input size (name and url say 224); else 224's

    @property
    def label(self) -> str:
        return f"{self.zoo} {self.model}"


_TV = "https://download.pytorch.org/models/"
_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/"
_TV_WHERE = "torchvision: the first 8 hex digits of the sha256 in the file name (torch.hub checks them)"
FILES: dict[tuple[str, str], WeightFile] = {(f.zoo, f.model): f for f in (
    WeightFile("torchvision", "resnet50", "resnet50-0676ba61.pth", _TV + "resnet50-0676ba61.pth",
               "sha256-prefix", "0676ba61", _TV_WHERE),
    WeightFile("torchvision", "vgg19", "vgg19-dcbb9e9d.pth", _TV + "vgg19-dcbb9e9d.pth",
               "sha256-prefix", "dcbb9e9d", _TV_WHERE),
    WeightFile("torchvision", "mobilenet_v2", "mobilenet_v2-b0353104.pth", _TV + "mobilenet_v2-b0353104.pth",
               "sha256-prefix", "b0353104", _TV_WHERE),
    WeightFile("keras", "resnet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
               _KERAS + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
               "md5", "4d473c1dd8becc155b73f8504c6f6626", "keras.applications.resnet WEIGHTS_HASHES"),
    WeightFile("keras", "vgg19", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
               _KERAS + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
               "md5", "253f8cb515780f3b799900260a226db6", "keras.applications.vgg19 file_hash"),
    WeightFile("keras", "mobilenet_v2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
               _KERAS + "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
               None, None, "keras.applications.mobilenet_v2 downloads it without a hash", sizes=(96, 128, 160, 192, 224)),
)}


def file_for(zoo: str, model: str, image_size: int = 32) -> WeightFile:
    """The file ZOO's MODEL loads at IMAGE_SIZE: a row with `sizes` (Keras' MobileNetV2: one ImageNet
    training per input size, 96 ... 224) names the one for that size, and 224's for any other, as
    keras.applications does."""
    f = FILES[(zoo, model)]
    rows = image_size if image_size in f.sizes else 224
    if rows == 224:
        return f
    return dataclasses.replace(f, name=f.name.replace("_224_", f"_{rows}_"), url=f.url.replace("_224_", f"_{rows}_"))


class WeightsFileError(Exception):
    """A staged file that is missing or unusable; the message names the file and where to get it."""


def zoo_of(framework: str, weights: str) -> str:
    """Whose checkpoint FRAMEWORK starts from: its own zoo's, or torchvision's for all (`same`)."""
    return "torchvision" if weights == "same" else FRAMEWORKS[framework].zoo


def cache_dir(zoo: str) -> Path:
    """Where the zoo itself caches its files, found as it finds it (not the suite's cache: a file
    the framework already has is not fetched twice): torch.hub's checkpoints ($TORCH_HOME, else
    $XDG_CACHE_HOME/torch, else ~/.cache/torch), Keras' models folder ($KERAS_HOME, else ~/.keras,
    or /tmp/.keras where that cannot be written); `~` expanded, as both do."""
    if zoo == "torchvision":
        return env_path("TORCH_HOME", user_cache() / "torch") / "hub" / "checkpoints"
    base = env_path("KERAS_HOME", "~/.keras")
    if not os.access(base, os.W_OK):
        base = Path("/tmp", ".keras")
    return base / "models"


def location(zoo: str, model: str, weights_dir: str | None, image_size: int = 32) -> Path:
    """The file a worker loads: in the staged folder when one is given, else in the zoo's cache."""
    f = file_for(zoo, model, image_size)
    return Path(weights_dir) / f.name if weights_dir else cache_dir(zoo) / f.name


TOP = ("fc.", "classifier.")  # torchvision's ImageNet classifiers: the benchmark replaces them, never loads them


def get_hint(f: WeightFile, folder: str | Path) -> str:
    return f"get it with `bench weights fetch {folder}` on a machine with internet, or from {f.url}"


def offline_hint(f: WeightFile) -> str:
    """The fix for a machine that cannot download F: stage a folder elsewhere, point the run at it."""
    return (f"run `bench weights fetch DIR` on a machine with internet (or get {f.url}), then pass "
            f"--weights-dir DIR (or --weights DIR)")


SAME_NEEDS_TORCH = (f"--weights same reads torchvision's checkpoint with torch, which this environment lacks: "
                    f"{FRAMEWORKS['torch'].install}")


def startup_problem(weights: str, weights_dir: str | None, image_size: int,
                    cases: set[tuple[str, str]]) -> str | None:
    """Why the selected (framework, model) CASES cannot start from WEIGHTS, checked before any worker
    starts: `same` needs torch to read torchvision's file for the other frameworks' cases; a staged
    folder must hold every file they load, readable and of its format (the first that is not, named
    with its fix). A hash that is not the published one is recorded, not refused."""
    if weights == "same" and any(fw != "torch" for fw, _ in cases) and FRAMEWORKS["torch"].missing():
        return SAME_NEEDS_TORCH
    if not weights_dir:
        return None
    for framework, model in sorted(cases):
        problem = staged_problem(file_for(zoo_of(framework, weights), model, image_size), weights_dir)
        if problem:
            return problem
    return None


def torchvision_file(model: str, weights_dir: str | None) -> Path:
    """torchvision's checkpoint for MODEL, for either framework: the staged folder's (which the
    startup check has seen), else torch.hub's cache, fetched there (hash-checked) when absent."""
    f = FILES[("torchvision", model)]
    if weights_dir:
        problem = staged_problem(f, weights_dir)
        if problem:
            raise WeightsFileError(problem)
        return Path(weights_dir) / f.name
    path = cache_dir("torchvision") / f.name
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fetch_one(f, path.parent, f.url)
        except (WeightsFileError, OSError) as e:
            raise WeightsFileError(f"torchvision's ImageNet weights for {model} are not in torch.hub's cache "
                                   f"({path.parent}) and cannot be fetched ({e}); {offline_hint(f)}") from None
    return path


MAGIC = {".h5": (b"\x89HDF\r\n\x1a\n",), ".pth": (b"PK\x03\x04", b"\x80")}  # HDF5; torch's zip, legacy pickle


def format_problem(f: WeightFile, path: str | Path) -> str | None:
    """Why PATH cannot be F's kind of file, from its first bytes (an HTML error page, a truncated
    transfer): what a file without a published hash is still checked for."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    kinds = MAGIC[Path(f.name).suffix]
    if not any(head.startswith(k) for k in kinds):
        return f"not a{'n HDF5' if f.name.endswith('.h5') else ' torch checkpoint'} file (starts {head[:8]!r})"
    return None


def staged_problem(f: WeightFile, folder: str | Path) -> str | None:
    """One line if FOLDER has no usable F (missing, unreadable, not a file, empty, not of its format),
    naming the file, and the fix: where to get it, or the permissions."""
    path = Path(folder) / f.name
    where = f"weights folder {folder}: {f.name} ({f.label} ImageNet weights)"
    try:
        if not path.exists():
            why = "a dangling symlink (or a symlink loop)" if path.is_symlink() else "missing"
        elif not path.is_file():
            why = "not a file"
        elif not os.access(path, os.R_OK):
            return f"{where} cannot be read (permissions); make it readable (chmod a+r)"
        elif path.stat().st_size == 0:
            why = "empty"
        else:
            why = format_problem(f, path)
            if why is None:
                return None
    except OSError as e:  # a folder that cannot be searched
        return f"{where} cannot be reached ({e.strerror}); make the folder readable (chmod a+rx)"
    return f"{where} is {why}; {get_hint(f, folder)}"


def digests(path: str | Path) -> dict[str, str]:
    """sha256 and md5 of a file in one read."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            sha.update(chunk)
            md5.update(chunk)
    return dict(sha256=sha.hexdigest(), md5=md5.hexdigest())


def verify(f: WeightFile, path: str | Path) -> dict:
    """What a file is: its sha256, and whether it is the zoo's published file (None: nothing published)."""
    d = digests(path)
    if f.hash_kind is None:
        verified = None
    elif f.hash_kind == "md5":
        verified = d["md5"] == f.published
    else:
        verified = d["sha256"].startswith(f.published)
    return dict(file=f.name, sha256=d["sha256"], verified=verified,
                published=f"{f.hash_kind} {f.published} ({f.where})" if f.published else f.where)


def verdict(v: dict) -> str:
    """What a file is, from `verify` (or a start record): the zoo's published file or not."""
    if v.get("sha256") is None:
        return "not found: " + str(v.get("missing", "?"))
    return {True: "the published file", False: "NOT the published file"}.get(v.get("verified"), "no published hash")


def fetch_one(f: WeightFile, folder: Path, url: str, timeout: float = 30.0,
              deadline: float = DOWNLOAD_DEADLINE_S) -> dict:
    """Download F into FOLDER: to a temporary file, verified against the published hash (a file
    without one: against its format), made readable as the umask allows, then renamed into place;
    a file that fails never appears under its name. One fetch per folder at a time (a lock beside
    the files, released by the kernel if its holder dies); leftovers of an interrupted one go first."""
    try:
        with exclusive_lock(folder / ".fetch.lock", wait_s=deadline + 600):
            for stale in folder.glob(".*.part"):
                stale.unlink(missing_ok=True)
            return _fetch_locked(f, folder, url, timeout, deadline)
    except TimeoutError as e:  # another fetch into this folder holds the lock
        raise WeightsFileError(f"{folder}: waited too long for another fetch into it ({e})") from None


def _fetch_locked(f: WeightFile, folder: Path, url: str, timeout: float, deadline: float) -> dict:
    fd, part = tempfile.mkstemp(prefix=f".{f.name}-", suffix=".part", dir=folder)
    received, start = 0, time.monotonic()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with open_within(url, timeout, start + deadline) as resp:
                    for chunk in chunks_within(resp, start + deadline):
                        out.write(chunk)
                        received += len(chunk)
                    length = resp.headers.get("Content-Length") or ""
                    expected = int(length) if length.isdigit() else received
                    if received < expected:
                        raise WeightsFileError(f"{url}: the connection ended after {received:,} of {expected:,} "
                                               f"bytes; retry")
            except TooSlow:
                raise WeightsFileError(f"cannot download {f.name} from {url}: not complete after {deadline:g} s "
                                       f"({received / 2**20:.1f} MiB received); retry, or copy a folder fetched "
                                       f"elsewhere") from None
            except TimeoutError:  # one read waited longer than TIMEOUT
                raise WeightsFileError(f"cannot download {f.name} from {url}: no data for {timeout:g} s "
                                       f"({received / 2**20:.1f} MiB received); retry") from None
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                reason = " ".join(str(getattr(e, "reason", None) or getattr(e, "strerror", None) or e).split())
                raise WeightsFileError(f"cannot download {f.name} from {url} ({reason})") from None
        v = verify(f, part)
        if v["verified"] is False:
            raise WeightsFileError(f"{url}: {f.name} does not match its published {f.hash_kind} {f.published} "
                                   f"(sha256 {v['sha256'][:12]}): a corrupt download, or not the file")
        problem = format_problem(f, part)
        if problem:
            raise WeightsFileError(f"{url}: {f.name} is {problem}: not the file")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(part, 0o666 & ~mask)  # mkstemp's 0600 would hide a shared folder's files from other users
        os.replace(part, folder / f.name)
        return v
    finally:
        Path(part).unlink(missing_ok=True)


def _select(frameworks: list[str] | None, models: list[str] | None, weights: str,
            image_size: int = 32) -> list[WeightFile]:
    zoos = dict.fromkeys(zoo_of(fw, weights) for fw in (frameworks or FRAMEWORKS))
    return [file_for(z, m, image_size) for z in zoos for m in (models or MODELS)]


_VERIFIED: dict[tuple, dict] = {}  # (path, size, mtime) -> verify(): a worker builds each round, hashes once


def start_record(zoo: str, model: str, path: str | Path | None, params_sha256: str, seed: int,
                 ported: bool = False, image_size: int = 32) -> dict:
    """Which numbers a model starts from, for `describe` (the parity table's "weights" column): the
    checkpoint (zoo, file, its sha256 and whether that is the published file) or random init, and
    a hash of the model's initial numbers themselves (same seed, same numbers)."""
    record = dict(params_sha256=params_sha256[:12], head=f"the shared draw, seed {seed}")
    if path is None:
        return dict(source=f"random init (torchvision's He normal, fan-out), seed {seed}", file=None, **record)
    f = file_for(zoo, model, image_size)
    try:
        st = os.stat(path)
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in _VERIFIED:
            _VERIFIED[key] = verify(f, path)
        v = _VERIFIED[key]
    except OSError as e:  # loaded, but not where the zoo's cache is expected: say so, do not fail the case
        v = dict(file=f.name, sha256=None, verified=None, published=f.where, missing=f"{e.strerror}: {path}")
    return dict(source=f"{zoo} ImageNet" + (", ported into Keras" if ported else ""), file=v["file"],
                folder=str(Path(path).parent), sha256=v["sha256"] and v["sha256"][:12], verified=v["verified"],
                published=v["published"], **({"missing": v["missing"]} if "missing" in v else {}), **record)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")  # so the temporary file goes too


def main(argv: list[str] | None = None, prog: str = "bench weights") -> int:
    p = argparse.ArgumentParser(prog=prog, description="Pretrained weight files for --weights-dir: fetch them "
                                "(on a machine with internet) or check a staged folder.")
    p.add_argument("action", choices=("fetch", "check"))
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--framework", action="append", choices=tuple(FRAMEWORKS), help="only this framework's files "
                   "(repeatable; default: all)")
    p.add_argument("--model", action="append", choices=MODELS, help="only this model (repeatable; default: all)")
    p.add_argument("--same", action="store_true", help="only the files --weights same needs (torchvision's)")
    p.add_argument("--mirror", metavar="URL", help="fetch from URL/<file name> instead of the zoos' own servers")
    p.add_argument("--image-size", type=int, default=32, help="the --image-size the runs use (Keras' MobileNetV2 "
                   "has one file per size 96-224; any other size takes the 224 one)")
    a = p.parse_args(argv)
    folder = Path(a.folder).expanduser()
    files = _select(a.framework, a.model, "same" if a.same else "imagenet", a.image_size)
    problem = folder_problem(folder)
    if problem or (a.action == "check" and not folder.is_dir()):
        print(f"{prog}: {a.folder}: {problem or 'no such folder'}; give a folder", file=sys.stderr)
        return 2
    if a.action == "fetch":
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            print(f"{prog}: {a.folder}: cannot create it ({e.strerror}); give a folder you can write", file=sys.stderr)
            return 2
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig, handler in handlers.items():  # a job's time limit, a closed terminal: cleaned up like Ctrl-C
        if handler is signal.SIG_DFL:
            signal.signal(sig, _terminate)
    try:
        failed = _run(a.action, files, folder, a.mirror)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    print(f"{prog}: {len(files) - failed} of {len(files)} files ready in {folder}"
          + ("" if not failed else f"; {failed} not (see FAIL above)"))
    return 1 if failed else 0


def _run(action: str, files: list[WeightFile], folder: Path, mirror: str | None) -> int:
    """Check (and with fetch, fetch) each file, one line each; returns how many are not ready."""
    failed = 0
    for f in files:
        path = folder / f.name
        try:
            problem = staged_problem(f, folder)
            v = verify(f, path) if problem is None else None
            if v is not None and v["verified"] is not False:
                state = "present"
            elif action == "fetch":
                url = mirror.rstrip("/") + "/" + f.name if mirror else f.url
                v, state = fetch_one(f, folder, url), "fetched"
            else:
                raise WeightsFileError(problem or f"weights folder {folder}: {f.name} is NOT the published file "
                                                  f"(sha256 {v['sha256'][:12]}); {get_hint(f, folder)}")
        except (WeightsFileError, OSError) as e:
            failed += 1
            print(f"FAIL  {f.label:24} {e}")
            continue
        print(f"ok    {f.label:24} {f.name}: {state}, {verdict(v)}, sha256 {v['sha256'][:12]}")
    return failed
