"""Parity between the two implementations of each model, and the shared input transforms."""
import hashlib

import numpy as np
import pytest

from bench_fixtures import models, weights
from bench_fixtures.config import resolve
from bench_fixtures.runner.experiment import describe_models
from tests.helpers import tiny_bundle


def row(model, framework, trainable, **kw):
    base = dict(model=model, framework=framework, trainable_params=trainable, non_trainable_params=0,
                batchnorm=[(0.1, 1e-5)], optimizer={"name": "sgd", "lr": 0.01}, loss="ce",
                input_transform="cifar", precision="fp32")
    base.update(kw)
    return base


def test_parity_flags_unexplained_parameter_gap():
    rows = models.parity_rows([row("vgg19", "torch", 1000), row("vgg19", "tensorflow", 1010)])
    assert rows[0]["trainable_rel_diff"] == pytest.approx(10 / 1010)
    assert any("differ by 0.99%" in p for p in models.parity_problems(rows))
    ok = models.parity_rows([row("vgg19", "torch", 1000), row("vgg19", "tensorflow", 1004)])
    assert models.parity_problems(ok) == []


def test_parity_flags_settings_that_differ():
    rows = models.parity_rows([row("vgg19", "torch", 10, batchnorm=[(0.1, 1e-5)]),
                               row("vgg19", "tensorflow", 10, batchnorm=[(0.01, 1e-3)])])
    assert models.parity_problems(rows) == ["vgg19: bn differs: tensorflow [(0.01, 0.001)] vs torch [(0.1, 1e-05)]"]
    assert models.parity_problems(models.parity_rows([row("vgg19", "torch", 10)])) == \
        ["vgg19: described by 1 framework(s), need both"]


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
    rows = models.parity_rows([row("mobilenet_v2", "torch", 10, batchnorm=torch_bn),
                               row("mobilenet_v2", "tensorflow", 10, batchnorm=keras_bn)])
    assert models.parity_problems(rows, weights="imagenet") == []  # each keeps its epsilon, momentum aligned
    assert models.parity_problems(rows) == ["mobilenet_v2: bn differs: tensorflow [(0.1, 0.001)] vs "
                                            "torch [(0.1, 1e-05)]"]
    shipped = models.parity_rows([row("mobilenet_v2", "torch", 10, batchnorm=torch_bn),
                                  row("mobilenet_v2", "tensorflow", 10, batchnorm=[(0.001, 0.001)])])
    assert models.parity_problems(shipped, weights="imagenet") != []
    assert models.parity_problems(shipped, setup="defaults") == []  # differences are the point there


@pytest.mark.torch
@pytest.mark.tensorflow
def test_real_models_have_parity(tmp_path, staged):
    """Both frameworks build all three models, from a staged weights folder made here (each loads its
    own zoo's file: torchvision's .pth, Keras' legacy .h5); counts and settings read back."""
    cfg = resolve({"profile": "smoke", "device": "cpu", "bn_momentum": 0.1, "weights": str(staged)}, gpu_count=0)
    bundle = tiny_bundle(tmp_path / "bundle", batch=32)
    rows = models.parity_rows(describe_models(cfg, bundle, tmp_path))
    print("\n" + models.format_parity(rows))
    assert models.parity_problems(rows, weights="imagenet") == []
    for r in rows:  # the file each framework loaded, as it is on disk
        f = weights.FILES[(weights.zoo_of(r["framework"], "imagenet"), r["model"])]
        digest = hashlib.sha256((staged / f.name).read_bytes()).hexdigest()[:12]
        assert (r["start"]["file"], r["start"]["sha256"], r["start"]["verified"]) == (
            f.name, digest, None if f.published is None else False), r["start"]
    assert "NOT the published file" in models.format_parity(rows)
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
    assert "GFLOPs/image training" in models.format_parity(rows)
