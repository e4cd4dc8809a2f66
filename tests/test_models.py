"""Parity between the implementations of each model (torch, Keras on TensorFlow, Keras on JAX; the audit in
analysis/parity.py), the shared input transforms, and the specs that let a backend build a model by its facts."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from bench_fixtures import models, weights
from bench_fixtures.analysis import parity
from bench_fixtures.config import resolve
from bench_fixtures.registry import installed
from bench_fixtures.runner.experiment import describe_models
from tests.helpers import tiny_bundle


def row(model, framework, trainable, **kw):
    base = dict(model=model, framework=framework, trainable_params=trainable, non_trainable_params=0,
                batchnorm=[(0.1, 1e-5)], optimizer={"name": "sgd", "lr": 0.01}, loss="ce",
                input_transform="cifar", precision="fp32")
    base.update(kw)
    return base


def test_parity_flags_unexplained_parameter_gap():
    rows = parity.parity_rows([row("vgg19", "torch", 1000), row("vgg19", "tensorflow", 1010)])
    assert rows[0]["trainable_rel_diff"] == pytest.approx(10 / 1010)
    assert any("differ by 0.99%" in p for p in parity.parity_problems(rows))
    ok = parity.parity_rows([row("vgg19", "torch", 1000), row("vgg19", "tensorflow", 1004)])
    assert parity.parity_problems(ok) == []


def test_parity_flags_settings_that_differ():
    rows = parity.parity_rows([row("vgg19", "torch", 10, batchnorm=[(0.1, 1e-5)]),
                               row("vgg19", "tensorflow", 10, batchnorm=[(0.01, 1e-3)])])
    assert parity.parity_problems(rows) == ["vgg19: bn differs: tensorflow [(0.01, 0.001)] vs torch [(0.1, 1e-05)]"]
    assert parity.parity_problems(parity.parity_rows([row("vgg19", "torch", 10)])) == \
        ["vgg19: described by 1 framework(s), need two or more"]


@pytest.mark.parametrize("mode", ["cifar", "torch", "caffe", "tf"])
def test_input_transforms(mode):
    order, scale, offset = models.input_transform(mode)
    pixel = np.array([10.0, 120.0, 250.0])
    out = pixel[list(order)] * scale + offset
    if mode == "caffe":
        np.testing.assert_allclose(out, [250 - 103.939, 120 - 116.779, 10 - 123.68], rtol=1e-6)
    elif mode == "tf":
        np.testing.assert_allclose(out, pixel / 127.5 - 1, rtol=1e-6)
    else:
        mean, std = (models.MEAN, models.STD) if mode == "cifar" else (models.IMAGENET_MEAN, models.IMAGENET_STD)
        np.testing.assert_allclose(out, (pixel / 255 - np.array(mean)) / np.array(std), rtol=1e-5)


def test_head_init_is_shared_and_seeded():
    a, b = models.head_init(512, 0), models.head_init(512, 0)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], models.head_init(512, 1)[0])
    assert a[0].shape == (512, 10) and np.abs(a[0]).max() <= np.sqrt(6 / 522)


def test_pretrained_backbones_and_the_defaults_setup_are_judged_for_what_they_align():
    keras_bn, torch_bn = [(0.1, 0.001)], [(0.1, 1e-5)]
    rows = parity.parity_rows([row("mobilenet_v2", "torch", 10, batchnorm=torch_bn),
                               row("mobilenet_v2", "tensorflow", 10, batchnorm=keras_bn)])
    assert parity.parity_problems(rows, weights="imagenet") == []  # each keeps its epsilon, momentum aligned
    assert parity.parity_problems(rows) == ["mobilenet_v2: bn differs: tensorflow [(0.1, 0.001)] vs "
                                            "torch [(0.1, 1e-05)]"]
    shipped = parity.parity_rows([row("mobilenet_v2", "torch", 10, batchnorm=torch_bn),
                                  row("mobilenet_v2", "tensorflow", 10, batchnorm=[(0.001, 0.001)])])
    assert parity.parity_problems(shipped, weights="imagenet") != []
    assert parity.parity_problems(shipped, setup="defaults") == []  # differences are the point there


def test_three_frameworks_are_each_compared_with_torch():
    rows = parity.parity_rows([row("vgg19", "torch", 10), row("vgg19", "tensorflow", 10),
                               row("vgg19", "jax", 10, optimizer={"name": "sgd", "lr": 0.1})])
    assert parity.parity_problems(rows) == [
        "vgg19: optimizer differs: jax {'name': 'sgd', 'lr': 0.1} vs torch {'name': 'sgd', 'lr': 0.01}",
        "vgg19: the Keras model differs between runtimes: optimizer jax {'name': 'sgd', 'lr': 0.1} vs tensorflow "
        "{'name': 'sgd', 'lr': 0.01}"]
    # the two Keras runtimes must agree exactly, where torch may differ by an explained amount
    keras_gap = parity.parity_rows([row("resnet50", "torch", 100), row("resnet50", "tensorflow", 100),
                                    row("resnet50", "jax", 99)])
    assert parity.parity_problems(keras_gap) == ["resnet50: the Keras model differs between runtimes: "
                                                 "trainable_params jax 99 vs tensorflow 100"]
    start = {"params_sha256": "abc"}  # Keras on TensorFlow and on JAX start from the same numbers
    same = [row("vgg19", "torch", 10, start={"params_sha256": "t"}, first_step_loss=2.5),
            row("vgg19", "tensorflow", 10, start=start, first_step_loss=2.30258),
            row("vgg19", "jax", 10, start=start, first_step_loss=2.30259)]
    assert parity.parity_problems(parity.parity_rows(same)) == []  # 4.3e-6 apart; torch starts elsewhere
    same[2]["first_step_loss"] = 2.3030
    assert parity.parity_problems(parity.parity_rows(same)) == [
        "vgg19: jax and tensorflow start from the same parameters, but their first-step losses 2.303 vs 2.30258 "
        "differ by 1.82e-04 (> 0.0001 relative)"]
    for r in same[1:]:  # with TF32 the losses round at ~1e-3: a note, not a check
        r["settings"] = {"tf32_matmul": True}
    assert parity.parity_problems(parity.parity_rows(same)) == []
    for r in same[1:]:
        r["settings"] = {}
    same[2]["first_step_loss"] = float("nan")
    assert "an unmeasured amount" in parity.parity_problems(parity.parity_rows(same))[0]
    assert parity.first_step_notes(parity.parity_rows(same[:2])) == []


@pytest.mark.torch
@pytest.mark.tensorflow
def test_real_models_have_parity(tmp_path, staged):
    """Every framework builds all three models, from a staged weights folder made here (each loads its
    own zoo's file: torchvision's .pth, Keras' legacy .h5, on JAX too); counts and settings read back."""
    cfg = resolve({"profile": "smoke", "device": "cpu", "bn_momentum": 0.1, "weights": str(staged)}, gpu_count=0)
    bundle = tiny_bundle(tmp_path / "bundle", batch=32)
    rows = parity.parity_rows(describe_models(cfg, bundle, tmp_path, frameworks=installed()))
    print("\n" + parity.format_parity(rows))
    assert parity.parity_problems(rows, weights="imagenet") == []
    for r in rows:  # the file each framework loaded, as it is on disk
        f = weights.FILES[(weights.zoo_of(r["framework"], "imagenet"), r["model"])]
        digest = hashlib.sha256((staged / f.name).read_bytes()).hexdigest()[:12]
        assert (r["start"]["file"], r["start"]["sha256"], r["start"]["verified"]) == (
            f.name, digest, None if f.published is None else False), r["start"]
    assert "NOT the published file" in parity.format_parity(rows)
    by = {(r["model"], r["framework"]): r for r in rows}
    assert by[("vgg19", "torch")]["trainable_params"] == by[("vgg19", "tensorflow")]["trainable_params"] == 20_029_514
    assert by[("mobilenet_v2", "torch")]["trainable_params"] == by[("mobilenet_v2", "tensorflow")]["trainable_params"]
    assert by[("resnet50", "torch")]["bn"] == [(0.1, 1e-5)] and by[("mobilenet_v2", "tensorflow")]["bn"] == [(0.1, 1e-3)]
    assert by[("resnet50", "torch")]["optimizer"] == by[("resnet50", "tensorflow")]["optimizer"]
    # FLOPs, each framework's own count: VGG19 is one network in both (TensorFlow's graph also holds the
    # first layer's input gradient: +0.15%); torchvision's ResNet50 v1.5 strides in the 3x3 conv, which
    # costs more than Keras' v1; TensorFlow's profiler has no formula for depthwise gradients
    train = {k: r["flops"]["train_per_image"] for k, r in by.items()}
    assert train[("vgg19", "tensorflow")] == pytest.approx(train[("vgg19", "torch")], rel=0.005)
    assert by[("vgg19", "torch")]["flops"]["forward_per_image"] == by[("vgg19", "tensorflow")]["flops"]["forward_per_image"]
    assert 1.02 < train[("resnet50", "torch")] / train[("resnet50", "tensorflow")] < 1.08
    assert by[("mobilenet_v2", "tensorflow")]["flops"]["uncounted_ops"] == [
        "DepthwiseConv2dNativeBackpropFilter", "DepthwiseConv2dNativeBackpropInput"]
    assert "GFLOPs/image training" in parity.format_parity(rows)
    if "jax" not in installed():
        return
    # Keras on JAX: the same Keras model as on TensorFlow (counts, settings, the same numbers to start
    # from); its FLOPs counted on the step's jaxpr, depthwise gradients included
    for m in models.SPECS:
        j, t = by[(m, "jax")], by[(m, "tensorflow")]
        assert (j["trainable_params"], j["non_trainable_params"], j["bn"], j["optimizer"], j["loss"]) == \
            (t["trainable_params"], t["non_trainable_params"], t["bn"], t["optimizer"], t["loss"])
        assert j["start"]["params_sha256"] == t["start"]["params_sha256"]
        assert j["flops"]["forward_per_image"] == pytest.approx(t["flops"]["forward_per_image"], rel=1e-6)
        assert j["flops"]["uncounted_ops"] == []
    assert train[("vgg19", "jax")] == pytest.approx(train[("vgg19", "torch")], rel=0.005)
    assert train[("mobilenet_v2", "jax")] == pytest.approx(train[("mobilenet_v2", "torch")], rel=0.02)
    assert j["settings"]["xla"] is True and "not applicable" in j["settings"]["compile_requested"]


@pytest.mark.tensorflow
@pytest.mark.jax
def test_keras_on_jax_takes_the_same_first_step_as_on_tensorflow(tmp_path):
    """The same Keras model, seed and first batch: the loss of one training step agrees to 1e-4 (fp32),
    through `bench parity --first-step`'s path."""
    cfg = resolve({"profile": "smoke", "device": "cpu", "bn_momentum": 0.1}, gpu_count=0)
    bundle = tiny_bundle(tmp_path / "bundle", batch=32)
    rows = parity.parity_rows(describe_models(cfg, bundle, tmp_path, models=("mobilenet_v2",),
                                              frameworks=("tensorflow", "jax"), first_step=True))
    assert parity.parity_problems(rows) == []
    jax, tf = rows
    assert (jax["framework"], tf["framework"]) == ("jax", "tensorflow")
    assert jax["start"]["params_sha256"] == tf["start"]["params_sha256"]
    assert abs(jax["first_step_loss"] - tf["first_step_loss"]) <= 1e-4 * abs(tf["first_step_loss"])
    print(parity.first_step_notes(rows))


def test_a_model_is_one_spec_row_no_backend_branches_on_its_name():
    """What each framework needs to build a model is in its spec (torchvision's top to cut off, the
    Keras network `--weights same` ports into, the port's layer pairs): no backend names a model."""
    from bench_fixtures.config import MODELS
    from bench_fixtures.frameworks import keras_port
    assert tuple(models.SPECS) == MODELS
    for name, spec in models.SPECS.items():
        assert spec.name == name and callable(getattr(keras_port, spec.keras_same))
        assert keras_port.PAIRS[name] is getattr(keras_port, spec.keras_pairs)
    folder = Path(models.__file__).parent / "frameworks"
    named = [f"{path.name}: {m}" for path in sorted(folder.glob("*.py")) for m in MODELS
             if f'"{m}"' in path.read_text()]
    assert named == []


@pytest.mark.torch
def test_torchvision_top_cuts_off_pooling_and_classifier():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from bench_fixtures.frameworks.torch_backend import without_top
    with torch.device("meta"):
        for name, spec in models.SPECS.items():
            net = getattr(torchvision.models, spec.torchvision)(weights=None)
            body = without_top(net, name)
            assert set(spec.torchvision_top) <= {n for n, _ in net.named_children()}
            out = body(torch.zeros(2, 3, 64, 64, device="meta"))
            assert out.shape[:2] == (2, spec.feature_dim), name
