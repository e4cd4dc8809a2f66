"""Weight files made here, for the staged-folder and same-start tests (nothing can be downloaded).

Each is a randomly initialised model of the zoo's architecture, saved as the zoo publishes it, under
the zoo's file name. torchvision: `torch.save` of the state dict without the ImageNet classifier,
which the benchmark replaces (so VGG19's is 80 MB, not 550), in torch's legacy (pre-1.6, non-zip)
format for VGG19 and MobileNetV2, whose published files date from 2017-18, and the zip format for
ResNet50. Keras: a weights-only HDF5 file of the backbone without its top (`layer_names` at the
root, as Keras 2's `save_weights` wrote the published `..._notop.h5` files). Its BatchNorm running
statistics are calibrated on synthetic images (one pass with the statistics of that batch), as a
trained checkpoint's are: a frozen backbone with torch's default statistics (mean 0, variance 1)
shrinks MobileNetV2's features to ~1e-10, leaving a head nothing to learn from. VGG19 has no
BatchNorm: each convolution is scaled to unit output deviation on those images instead (LSUV,
Mishkin & Matas 2015), where random init leaves its features at ~0.02. With zero biases the network
is positively homogeneous, so one pass gives every layer's factor: std(j-1) / std(j).

    python -m tests.staged_weights torch|tensorflow DIR [MODEL ...]   (each in its own process)
"""
from __future__ import annotations

import os
import sys

import numpy as np

from bench_fixtures.config import MODELS
from bench_fixtures.data import make_synthetic
from bench_fixtures.models import SPECS, input_transform
from bench_fixtures.weights import FILES, TOP

CALIBRATION_IMAGES = 64


def _images(mode: str, channels_first: bool) -> np.ndarray:
    """Synthetic training images through the input transform the backbone sees (float32)."""
    train, _ = make_synthetic(CALIBRATION_IMAGES, 10)
    order, scale, offset = input_transform(mode)
    x = train.images[..., list(order)].astype(np.float32) * scale + offset
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if channels_first else x)


def unit_scales(stds: list[float]) -> list[float]:
    """Per layer, the factor that gives every layer unit output deviation, from one pass's deviations."""
    return [prev / std for prev, std in zip([1.0, *stds[:-1]], stds)]


def make_torch(folder: str, models: list[str]) -> None:
    import torch
    import torchvision
    for i, model in enumerate(models):
        torch.manual_seed(100 + i)
        if model == "vgg19":  # the backbone alone: VGG19's classifier is 120M parameters to initialise
            net = torch.nn.Module()
            net.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
        else:
            net = getattr(torchvision.models, SPECS[model].torchvision)(weights=None)
        bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in bns:
            m.momentum = 1.0  # running statistics := this batch's
        net.train()
        x = torch.from_numpy(_images("torch", True))
        with torch.no_grad():
            if bns:
                net(x)
            else:
                convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
                stds = []
                hooks = [c.register_forward_hook(lambda m, i, o: stds.append(float(o.std()))) for c in convs]
                for c in convs:
                    c.bias.zero_()
                net.features(x)
                for h in hooks:
                    h.remove()
                for c, scale in zip(convs, unit_scales(stds)):
                    c.weight *= scale
        for m in bns:
            m.momentum = 0.1
        state = {k: v for k, v in net.state_dict().items() if not k.startswith(TOP)}
        torch.save(state, os.path.join(folder, FILES[("torchvision", model)].name),  # the benchmark drops the top
                   _use_new_zipfile_serialization=model == "resnet50")


def make_keras(folder: str, models: list[str]) -> None:
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format  # the layout of the published files
    for i, model in enumerate(models):
        keras.utils.set_random_seed(100 + i)
        net = getattr(keras.applications, SPECS[model].keras)(include_top=False, weights=None,
                                                              input_shape=(32, 32, 3), pooling="avg")
        bns = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
        for layer in bns:
            layer.momentum = 0.0  # moving statistics := this batch's
        x = _images(SPECS[model].keras_preprocess, False)
        if bns:
            net(x, training=True)
        else:  # Keras' conv biases start at zero
            convs = [layer for layer in net.layers if isinstance(layer, keras.layers.Conv2D)]
            outputs = keras.Model(net.input, [c.output for c in convs])(x)
            for c, scale in zip(convs, unit_scales([float(np.std(o)) for o in outputs])):
                c.kernel.assign(c.kernel * scale)
        with h5py.File(os.path.join(folder, FILES[("keras", model)].name), "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, net)


if __name__ == "__main__":
    kind, folder, *models = sys.argv[1:]
    os.makedirs(folder, exist_ok=True)
    (make_torch if kind == "torch" else make_keras)(folder, models or list(MODELS))
