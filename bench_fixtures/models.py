"""What every framework must agree on for each model: backbone, head, input transform, tolerances.

Framework-neutral on purpose: the backends read these numbers, so a difference between the two
implementations can only come from the framework, never from two copies of a constant. A model's
spec also carries what each framework needs to build it, so no backend branches on a model's name:
adding a model is one SPECS row here, its weight files (weights.py) and its name in settings.MODELS.
The audit that holds the frameworks to these facts is analysis/parity.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import MEAN, NUM_CLASSES, STD
from .weights import zoo_of

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    feature_dim: int            # channels after global average pooling
    torchvision: str            # torchvision.models constructor
    keras: str                  # keras.applications class
    keras_preprocess: str       # mode of keras.applications.<model>.preprocess_input
    differences: tuple[str, ...] = ()  # known architectural differences, reported in the parity table
    # torchvision's children after the backbone (its pooling and classifier), cut off: the backbone is
    # the one child left, or the children left in order.
    torchvision_top: tuple[str, ...] = ("avgpool", "classifier")
    # --weights same: the keras_port function that builds the Keras network torchvision's weights are
    # ported into (from keras.applications' builder and the input shape), what it changes (said in
    # the parity notes), and the keras_port function that pairs each Keras layer with its source.
    keras_same: str = "applications_network"
    keras_same_note: str = ""
    keras_pairs: str = ""


SPECS = {
    "resnet50": ModelSpec(
        "resnet50", 2048, "resnet50", "ResNet50", "caffe",
        ("keras.applications ResNet50 is v1 (stride 2 in the first 1x1 conv of a downsampling block; "
         "convolutions carry biases, +26,560 trainable parameters); torchvision's is v1.5 (stride in "
         "the 3x3 conv, no conv biases)",),
        torchvision_top=("avgpool", "fc"), keras_same="torchvision_resnet50_network",
        keras_same_note="Keras: torchvision's v1.5 built for this start, not keras.applications' v1: "
                        "the parameter note above does not apply",
        keras_pairs="resnet50_pairs"),
    "vgg19": ModelSpec("vgg19", 512, "vgg19", "VGG19", "caffe", keras_pairs="vgg19_pairs"),
    "mobilenet_v2": ModelSpec(
        "mobilenet_v2", 1280, "mobilenet_v2", "MobileNetV2", "tf",
        ("keras pads strided convolutions asymmetrically (ZeroPadding2D + valid), torchvision "
         "symmetrically (padding=1); parameter counts are identical",),
        torchvision_top=("classifier",), keras_same="torchvision_padding_network",
        keras_same_note="Keras rebuilt with torchvision's symmetric padding", keras_pairs="mobilenet_v2_pairs"),
}

# Relative difference in trainable parameters tolerated between the two implementations of a model.
PARITY_TOLERANCE = 0.005
# --weights same: the frameworks' logits on the same images may differ by this much, relative to the
# largest logit (float32 convolutions summed in another order differ by ~1e-6).
SAME_START_TOLERANCE = 1e-4
# Frameworks that start from the same numbers (the same parameters hash: Keras on TensorFlow and on JAX)
# take the same first step: their losses on the first batch agree to this, relative, in fp32.
FIRST_STEP_TOLERANCE = 1e-4
REFERENCE = "torch"  # what the others are compared with: the zoo both Keras runtimes are aligned to


def f32(x: float) -> float:
    """A hyperparameter as a comparable number: TensorFlow stores 0.01 as float32 0.0099999998."""
    return float(f"{float(x):.6g}")


def head_init(feature_dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Glorot-uniform kernel (feature_dim, 10) and zero bias, drawn once and loaded into both
    frameworks, so 'accuracy before' starts from the same head."""
    limit = np.sqrt(6.0 / (feature_dim + NUM_CLASSES))
    rng = np.random.default_rng([seed, 0x4EAD])
    kernel = rng.uniform(-limit, limit, size=(feature_dim, NUM_CLASSES)).astype(np.float32)
    return kernel, np.zeros(NUM_CLASSES, np.float32)


def input_transform(mode: str) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """uint8 RGB pixels -> model input as out[c] = in[order[c]] * scale[c] + offset[c].

    cifar: CIFAR-10 mean/std (every framework, random init). torch: ImageNet mean/std (torchvision
    weights). caffe: BGR minus the ImageNet mean (keras ResNet50/VGG19 weights). tf: [-1, 1]
    (keras MobileNetV2 weights)."""
    def mean_std(mean, std):
        std = np.asarray(std, np.float32) * 255.0
        return (0, 1, 2), 1.0 / std, -np.asarray(mean, np.float32) * 255.0 / std
    if mode == "cifar":
        order, scale, offset = mean_std(MEAN, STD)
    elif mode == "torch":
        order, scale, offset = mean_std(IMAGENET_MEAN, IMAGENET_STD)
    elif mode == "caffe":
        order, scale, offset = (2, 1, 0), np.ones(3), -np.asarray(CAFFE_MEAN_BGR)
    elif mode == "tf":
        order, scale, offset = (0, 1, 2), np.full(3, 1 / 127.5), np.full(3, -1.0)
    else:
        raise ValueError(f"unknown input transform {mode!r}")
    return order, np.asarray(scale, np.float32), np.asarray(offset, np.float32)


def transform_mode(framework: str, model: str, preprocess: str, weights: str = "imagenet") -> str:
    """'cifar' shares one normalisation; 'native' gives each pretrained backbone what it was trained
    on: its own zoo's, or torchvision's in every framework when all start from it (`same`)."""
    if preprocess == "cifar":
        return "cifar"
    return "torch" if zoo_of(framework, weights) == "torchvision" else SPECS[model].keras_preprocess
