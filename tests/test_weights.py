"""Pretrained starts (#16): staged weight files, `bench weights fetch|check`, the same start in both
frameworks (torchvision's weights ported into Keras), and what is fine-tuned (--train-layers)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench_fixtures import models, weights
from bench_fixtures.analysis import parity
from bench_fixtures.config import ConfigError, resolve
from bench_fixtures.registry import installed
from bench_fixtures.frameworks.keras_port import PAIRS, backbone_keys, convert
from bench_fixtures.runner.experiment import describe_models
from tests.helpers import tiny_bundle
from tests.test_data import http_server  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
BOTH = pytest.mark.skipif({"torch", "tensorflow"} - set(installed()), reason="needs torch and tensorflow")


# -- options ----------------------------------------------------------------------------------------
def test_weights_folder_and_same_and_their_refusals(tmp_path):
    cfg = resolve(dict(weights=str(tmp_path)), 0)
    assert (cfg.weights, cfg.weights_dir, cfg.preprocess, cfg.bn_eps) == ("imagenet", str(tmp_path), "native", None)
    same = resolve(dict(weights="same", weights_dir=str(tmp_path), train_layers="head"), 0)
    assert (same.weights, same.train_layers, same.epochs) == ("same", "head", 4)  # smoke's head-only epochs
    assert resolve(dict(weights="same", train_layers="head", epochs=2), 0).epochs == 2  # an option wins
    for opts, says in [(dict(weights="imagenett"), "--weights imagenett: choose one of imagenet, none, same, or give "
                                                   "a folder"),
                       (dict(weights_dir=str(tmp_path)), "with --weights none: a staged folder is for pretrained"),
                       (dict(weights="imagenet", weights_dir=str(tmp_path / "nope")), "no such folder"),
                       (dict(weights=str(tmp_path), weights_dir=str(tmp_path)), "give the folder once"),
                       (dict(train_layers="head"), "a frozen random backbone is not transfer learning"),
                       (dict(weights="same", train_layers="top"), "--train-layers 'top': choose one of all, head")]:
        with pytest.raises(ConfigError, match=None) as e:
            resolve(opts, 0)
        assert says in str(e.value) and "\n" not in str(e.value)


def test_same_start_takes_torchvision_preprocessing_in_both():
    assert {models.transform_mode(fw, m, "native", "same") for fw in ("torch", "tensorflow")
            for m in models.SPECS} == {"torch"}
    assert models.transform_mode("tensorflow", "mobilenet_v2", "native", "imagenet") == "tf"


# -- the port: layouts and the name maps ----------------------------------------------------------
def test_layout_conversions():
    w = np.arange(2 * 3 * 3 * 5, dtype=np.float32).reshape(5, 2, 3, 3)  # OIHW: 5 out, 2 in, 3x3
    kernel, bias = convert("conv_bias", {"c.weight": w, "c.bias": np.arange(5.0)}, "c")
    assert kernel.shape == (3, 3, 2, 5) and kernel[1, 2, 0, 4] == w[4, 0, 1, 2] and list(bias) == list(range(5))
    dw = np.arange(4 * 9, dtype=np.float32).reshape(4, 1, 3, 3)  # (C, 1, kh, kw)
    (k,) = convert("depthwise", {"d.weight": dw}, "d")
    assert k.shape == (3, 3, 4, 1) and k[2, 0, 3, 0] == dw[3, 0, 2, 0]
    state = {f"b.{n}": np.full(3, i, np.float32) for i, n in enumerate(("weight", "bias", "running_mean",
                                                                          "running_var", "num_batches_tracked"))}
    assert [v[0] for v in convert("bn", state, "b")] == [0, 1, 2, 3]  # gamma, beta, moving mean, moving variance


@pytest.mark.torch
def test_name_maps_cover_every_torchvision_backbone_tensor():
    import torch
    import torchvision
    for model in PAIRS:  # one test, not one per model: `-k vgg19` selects the benchmark cases
        with torch.device("meta"):
            state = getattr(torchvision.models, models.SPECS[model].torchvision)(weights=None).state_dict()
        prefixes = {prefix for _, prefix, _ in PAIRS[model]()}
        covered = {k for k in state if k.rsplit(".", 1)[0] in prefixes}
        assert backbone_keys(state) - covered == set(), model
        assert len(prefixes) == len(PAIRS[model]()), model  # one source per Keras layer


# -- parity: the same start, checked --------------------------------------------------------------
def test_logit_gap_decides_the_same_start():
    a = [[1.0, -2.0], [0.5, 4.0]]
    assert parity.logit_gap(a, a) == 0 and parity.logit_gap(a, [[1.0, -2.0], [0.5, 4.0004]]) == pytest.approx(1e-4)
    assert parity.logit_gap(a, [[1.0, -2.0]]) == float("inf") and parity.logit_gap(a, None) is None
    rows = lambda b: parity.parity_rows([  # noqa: E731
        dict(model="vgg19", framework=fw, trainable_params=10, non_trainable_params=0, batchnorm="none",
             optimizer={}, loss="ce", input_transform="torch", precision="fp32", logits=lg)
        for fw, lg in (("torch", a), ("tensorflow", b))])
    assert parity.parity_problems(rows(a), weights="same") == []
    assert "differ by 9.99e-04" in parity.parity_problems(rows([[1.0, -2.0], [0.5, 4.004]]), weights="same")[0]
    assert "unmeasured" in parity.parity_problems(rows(None), weights="same")[0]
    assert "differ by at most 0.00e+00" in parity.same_start_notes(rows(a))[0]


# -- staged files: startup check, fetch, check ----------------------------------------------------
def test_staged_problem_names_the_file_and_where_to_get_it(tmp_path):
    f = weights.FILES[("torchvision", "vgg19")]
    assert weights.staged_problem(f, tmp_path) == (
        f"weights folder {tmp_path}: vgg19-dcbb9e9d.pth (torchvision vgg19 ImageNet weights) is missing; get it "
        f"with `bench weights fetch {tmp_path}` on a machine with internet, or from {f.url}")
    (tmp_path / f.name).write_bytes(b"")
    assert "is empty" in weights.staged_problem(f, tmp_path)
    (tmp_path / f.name).write_bytes(b"<html>404</html>")  # what a proxy's error page leaves
    assert "is not a torch checkpoint file (starts b'<html>40')" in weights.staged_problem(f, tmp_path)
    (tmp_path / f.name).write_bytes(b"PK\x03\x04 a zip")
    assert weights.staged_problem(f, tmp_path) is None
    (tmp_path / f.name).chmod(0)
    if not os.access(tmp_path / f.name, os.R_OK):  # root reads anything
        assert weights.staged_problem(f, tmp_path).endswith("cannot be read (permissions); make it readable "
                                                            "(chmod a+r)")
    (tmp_path / f.name).unlink()
    (tmp_path / f.name).symlink_to(tmp_path / "gone")
    assert "is a dangling symlink" in weights.staged_problem(f, tmp_path)


def test_keras_mobilenet_v2_file_follows_the_image_size_as_keras_picks_it():
    assert weights.file_for("keras", "mobilenet_v2", 32).name.endswith("_1.0_224_no_top.h5")
    f = weights.file_for("keras", "mobilenet_v2", 96)
    assert f.name.endswith("_1.0_96_no_top.h5") and f.url.endswith(f.name) and f.hash_kind is None
    assert weights.file_for("torchvision", "mobilenet_v2", 96) == weights.FILES[("torchvision", "mobilenet_v2")]
    assert [f.name for f in weights._select(None, None, "same")] == [
        "resnet50-0676ba61.pth", "vgg19-dcbb9e9d.pth", "mobilenet_v2-b0353104.pth"]  # torchvision's only


def test_a_missing_staged_file_stops_the_run_before_any_worker(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pytest", "tests/benchmarks", "-q", "-p", "no:cacheprovider",
                        "--benchmark-only", "-k", "vgg19", "--weights", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 4, r.stdout[-2000:] + r.stderr[-2000:]
    line = next(ln for ln in r.stderr.splitlines() if f"weights folder {tmp_path}:" in ln)
    assert "is missing; get it with `bench weights fetch" in line and "Traceback" not in r.stderr
    assert "worker" not in r.stdout.lower()


def _crafted(root: Path, monkeypatch) -> dict[str, bytes]:
    """Serve three files whose published hashes are known: a torchvision-style sha256 prefix, a Keras
    md5, and one with no published hash; the table points at them."""
    blobs = {name: (b"\x89HDF\r\n\x1a\n" if name.endswith(".h5") else b"PK\x03\x04") + name.encode() * 1000
             for name in ("a.pth", "b.h5", "c.h5")}
    for name, blob in blobs.items():
        (root / name).write_bytes(blob)
    files = {("torchvision", "vgg19"): weights.WeightFile("torchvision", "vgg19", "a.pth", "", "sha256-prefix",
                                                          hashlib.sha256(blobs["a.pth"]).hexdigest()[:8], "t"),
             ("keras", "vgg19"): weights.WeightFile("keras", "vgg19", "b.h5", "", "md5",
                                                    hashlib.md5(blobs["b.h5"]).hexdigest(), "k"),
             ("keras", "mobilenet_v2"): weights.WeightFile("keras", "mobilenet_v2", "c.h5", "", None, None, "none")}
    monkeypatch.setattr(weights, "FILES", files)
    return blobs


def test_fetch_verifies_renames_into_place_and_skips_what_is_there(tmp_path, http_server, capsys,  # noqa: F811
                                                                    monkeypatch):
    root, url = http_server
    blobs = _crafted(root, monkeypatch)
    out = tmp_path / "staged"
    args = ["fetch", str(out), "--mirror", url, "--model", "vgg19"]
    out.mkdir()
    (out / ".a.pth-killed.part").write_bytes(b"half")  # an interrupted fetch's leftover
    assert weights.main(args) == 0
    assert {p.name for p in out.iterdir()} == {"a.pth", "b.h5", ".fetch.lock"}  # no temporaries left
    umask = os.umask(0o022)
    os.umask(umask)
    assert (out / "a.pth").stat().st_mode & 0o777 == 0o666 & ~umask  # the umask's, not mkstemp's 0600
    assert "fetched, the published file" in capsys.readouterr().out
    assert weights.main(args) == 0 and capsys.readouterr().out.count(": present, the published file") == 2
    assert weights.main(["fetch", str(out), "--mirror", url, "--model", "mobilenet_v2", "--framework",
                         "tensorflow"]) == 0
    assert "no published hash" in capsys.readouterr().out and (out / "c.h5").read_bytes() == blobs["c.h5"]
    assert weights.main(["check", str(out), "--framework", "tensorflow", "--model", "vgg19", "--model",
                         "mobilenet_v2"]) == 0


def test_fetch_refuses_a_corrupt_download_and_an_unreachable_server(tmp_path, http_server, capsys,  # noqa: F811
                                                                   monkeypatch):
    root, url = http_server
    _crafted(root, monkeypatch)
    (root / "a.pth").write_bytes(b"tampered")
    out = tmp_path / "staged"
    assert weights.main(["fetch", str(out), "--mirror", url, "--model", "vgg19", "--framework", "torch"]) == 1
    text = capsys.readouterr().out
    assert "does not match its published sha256-prefix" in text and not (out / "a.pth").exists()
    assert [p.name for p in out.iterdir()] == [".fetch.lock"]  # nothing half-done (the lock stays, as the data's)
    assert weights.main(["fetch", str(out), "--mirror", "http://127.0.0.1:9", "--model", "vgg19",
                         "--framework", "tensorflow"]) == 1
    assert "cannot download b.h5 from http://127.0.0.1:9/b.h5" in capsys.readouterr().out
    (out / "a.pth").write_bytes(b"PK\x03\x04 someone else's file")
    assert weights.main(["check", str(out), "--model", "vgg19", "--framework", "torch"]) == 1
    assert "NOT the published file" in capsys.readouterr().out
    (root / "c.h5").write_bytes(b"<html>error</html>")  # no published hash: its format is still checked
    assert weights.main(["fetch", str(out), "--mirror", url, "--model", "mobilenet_v2", "--framework",
                         "tensorflow"]) == 1
    assert "c.h5 is not an HDF5 file" in capsys.readouterr().out and not (out / "c.h5").exists()
    (tmp_path / "a-file").write_text("x")
    assert weights.main(["fetch", str(tmp_path / "a-file"), "--model", "vgg19", "--framework", "torch"]) == 2
    assert "a-file: a file, not a folder; give a folder" in capsys.readouterr().err


# -- end to end: the same start gives the same logits and accuracy; head-only trains the head -------
# (that both frameworks load the staged files of all three models: tests/test_models.py's parity test)
@BOTH
def test_same_start_gives_every_framework_the_same_logits_and_accuracy(tmp_path, staged):
    bundle = tiny_bundle(tmp_path / "bundle", n_train=32, n_test=24, batch=8)
    cfg = resolve(dict(profile="smoke", device="cpu", batch_size=8, weights="same", weights_dir=str(staged),
                       train_layers="head"), gpu_count=0)
    described = describe_models(cfg, bundle, tmp_path, tuple(sorted(PAIRS)), frameworks=("torch", "tensorflow"))
    if "jax" in installed():  # the same Keras port on another runtime: one model (the rebuilt padding) is enough
        described += describe_models(cfg, bundle, tmp_path, ("mobilenet_v2",), frameworks=("jax",))
    rows = parity.parity_rows(described)
    print("\n" + parity.format_parity(rows))
    assert parity.parity_problems(rows, weights="same") == []  # logits within 1e-4, accuracy equal
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in staged.iterdir()}
    for r in rows:
        start = r["start"]
        assert start["file"] == weights.FILES[("torchvision", r["model"])].name and start["folder"] == str(staged)
        assert start["sha256"] == digest[start["file"]] and start["verified"] is False  # made here
        assert start["source"] == "torchvision ImageNet" + (", ported into Keras" if r["framework"] != "torch"
                                                              else "")
        assert r["train_layers"] == "head" and r["trainable_params"] == models.SPECS[r["model"]].feature_dim * 10 + 10
        assert r["flops"]["train_per_image"] < 1.01 * r["flops"]["forward_per_image"]  # no backbone backward
    assert len({r["accuracy_before"] for r in rows if r["model"] == "vgg19"}) == 1
    notes = parity.same_start_notes(rows)  # one per framework compared with torch, per model
    assert len(notes) == len([r for r in rows if r["framework"] != "torch"]) and all("in both" in n for n in notes), notes
    resnet = {r["framework"]: r for r in rows if r["model"] == "resnet50"}  # Keras builds torchvision's v1.5
    assert resnet["torch"]["trainable_params"] == resnet["tensorflow"]["trainable_params"] == 20_490  # the head
    assert resnet["torch"]["non_trainable_params"] == resnet["tensorflow"]["non_trainable_params"]
    assert resnet["torch"]["flops"]["forward_per_image"] == resnet["tensorflow"]["flops"]["forward_per_image"]


@pytest.mark.torch
def test_a_file_that_is_not_the_checkpoint_is_one_line_in_both_loaders(tmp_path):
    import torchvision
    from bench_fixtures.frameworks.keras_port import export_state
    from bench_fixtures.frameworks.protocol import WeightsError
    from bench_fixtures.frameworks.torch_backend import load_checkpoint
    path = tmp_path / weights.FILES[("torchvision", "vgg19")].name
    path.write_bytes(b"PK\x03\x04 looks like a zip, is not a checkpoint")  # passes the format check
    with pytest.raises(WeightsError) as e:
        load_checkpoint(torchvision.models.vgg19(weights=None), "vgg19", str(tmp_path))
    assert str(e.value).startswith(f"{path}: not torchvision's vgg19 ImageNet weights (")
    assert "bench weights fetch" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError) as e:  # the Keras side reads it through torch, in a subprocess
        export_state(path)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


# -- the gate and the results reader: a run from another weights file is not comparable -----------
def test_gate_refuses_runs_that_started_from_different_weights_files():
    from bench_fixtures.analysis import gate
    from tests.test_gate import bench, run_of

    def run(sha: str | None, start=True) -> dict:
        b = bench("test_finetune[torch-vgg19]", [1.0, 1.1, 1.2])
        if start:
            b["extra_info"]["start"] = {"source": "torchvision ImageNet", "file": "vgg19-dcbb9e9d.pth", "sha256": sha}
        return run_of([b])
    assert gate.mismatches(run("aaa"), run("aaa"), "none") == []
    assert gate.mismatches(run(None), run(None, start=False), "none") == []  # random init, or an older run
    problem = gate.mismatches(run("aaa"), run("bbb"), "versions")
    assert problem == ["test_finetune[torch-vgg19]: started from another weights file (sha256 aaa vs bbb): "
                       "accuracy would compare the checkpoints, not the upgrade"]
    assert gate.mismatches(run("aaa"), run("bbb"), "all") == []


def test_results_reader_refuses_a_start_it_cannot_read(tmp_path):
    from bench_fixtures.analysis.results import ResultsError, load_run
    from tests.test_gate import bench, run_of
    import json
    b = bench("test_finetune[torch-vgg19]", [1.0])
    b["extra_info"]["start"] = ["not", "an", "object"]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run_of([b])))
    with pytest.raises(ResultsError, match="'extra_info.start' must be an object"):
        load_run(str(path))


@pytest.mark.torch
def test_a_head_only_case_runs_through_the_plugin_from_a_staged_folder(tmp_path, staged):
    """`--weights DIR --train-layers head` as a user types it: the case passes (its accuracy improved),
    and the run file says what trained and what it started from. (All six cases: see the #16 note.)"""
    out = tmp_path / "run.json"
    r = subprocess.run([sys.executable, "-m", "pytest", "tests/benchmarks", "-q", "-p", "no:cacheprovider",
                        "--benchmark-only", "-k", "torch-mobilenet_v2 and test_finetune", "--weights", str(staged),
                        "--train-layers", "head", "--benchmark-json", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "weights=imagenet setup=matched" in r.stdout and "train_layers=head" in r.stdout  # the run's first line
    (case,) = json.loads(out.read_text())["benchmarks"]
    e = case["extra_info"]
    assert (e["train_layers"], e["trainable_params"], e["frozen_params"], e["epochs"]) == ("head", 12_810, 2_223_872, 4)
    assert e["start"]["file"] == "mobilenet_v2-b0353104.pth" and e["start"]["folder"] == str(staged)
    assert e["accuracy_after"] > e["accuracy_before"]


@pytest.mark.torch
def test_offline_without_the_file_is_one_line_with_the_fix(tmp_path, monkeypatch):
    """`--weights imagenet` (or same) on a machine that cannot download: torch.hub's cache is empty and
    the server unreachable; one line naming the cache and how to stage a folder."""
    import torchvision
    from bench_fixtures.frameworks.protocol import WeightsError
    from bench_fixtures.frameworks.torch_backend import load_checkpoint
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    f = weights.FILES[("torchvision", "mobilenet_v2")]
    monkeypatch.setitem(weights.FILES, ("torchvision", "mobilenet_v2"),
                        weights.WeightFile(**{**f.__dict__, "url": "http://127.0.0.1:9/mobilenet_v2-b0353104.pth"}))
    with pytest.raises(WeightsError) as e:
        load_checkpoint(torchvision.models.mobilenet_v2(weights=None), "mobilenet_v2", None)
    line = str(e.value)
    assert line.startswith(f"torchvision's ImageNet weights for mobilenet_v2 are not in torch.hub's cache "
                           f"({tmp_path}/torch/hub/checkpoints) and cannot be fetched (cannot download")
    assert line.endswith("then pass --weights-dir DIR (or --weights DIR)") and "\n" not in line
    assert list((tmp_path / "torch" / "hub" / "checkpoints").glob("*.pth")) == []  # nothing half-written


def test_startup_refuses_same_without_torch_for_the_other_frameworks(monkeypatch, tmp_path):
    import dataclasses
    gone = dataclasses.replace(weights.FRAMEWORKS["torch"], imports=("no_such_module_here",))
    monkeypatch.setitem(weights.FRAMEWORKS, "torch", gone)
    assert weights.startup_problem("same", None, 32, {("tensorflow", "vgg19")}) == weights.SAME_NEEDS_TORCH
    assert weights.startup_problem("same", None, 32, {("torch", "vgg19")}) is None  # torch's own cases skip anyway
    assert weights.startup_problem("imagenet", None, 32, {("tensorflow", "vgg19")}) is None
    assert "keras vgg19 ImageNet weights) is missing" in weights.startup_problem(
        "imagenet", str(tmp_path), 32, {("tensorflow", "vgg19")})
