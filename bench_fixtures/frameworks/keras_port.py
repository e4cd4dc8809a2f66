"""`--weights same`: torchvision's ImageNet weights, ported into the keras.applications model, so
torch and Keras (on either runtime) start from identical numbers.

One mapping per model (Keras layer <- torchvision state-dict prefix, and how to convert), applied
by one function; a model's spec names its mapping (`ModelSpec.keras_pairs`) and the Keras network
the weights go into (`ModelSpec.keras_same`), both defined here. Layouts: a convolution's OIHW
kernel becomes HWIO, a depthwise (C,1,kh,kw) kernel (kh,kw,C,1), BatchNorm's weight/bias/running
statistics Keras' gamma/beta/moving statistics, with torchvision's epsilon (what the weights were
trained with). The architectures must compute the same function: MobileNetV2 is rebuilt with
torchvision's symmetric padding (Keras pads strided convolutions bottom/right only, which shifts
every feature map by a pixel); ResNet50 is built as torchvision's v1.5 (`torchvision_resnet50`):
keras.applications' is v1, another network.

The torchvision checkpoint is read by torch, in a short subprocess (`export_state`): a Keras worker
never imports torch (process isolation), and torch's own loader reads both of its file formats.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..models import SPECS
from ..weights import SAME_NEEDS_TORCH, TOP

if TYPE_CHECKING:
    import keras

TORCHVISION_BN_EPS = 1e-5  # nn.BatchNorm2d's default; torchvision's MobileNetV2 was trained with it

# (Keras layer name, torchvision state-dict prefix, kind): kind is conv (kernel), conv_bias (kernel,
# bias), depthwise (kernel) or bn (gamma, beta, moving mean, moving variance).
Pairs = list[tuple[str, str, str]]


def vgg19_pairs() -> Pairs:
    """block{b}_conv{c} <- features.{i}: the 16 convolutions in order (ReLU and max-pool between)."""
    convs = [(b, c) for b, n in enumerate((2, 2, 4, 4, 4), 1) for c in range(1, n + 1)]
    index, out = 0, []
    for k, (b, c) in enumerate(convs):
        out.append((f"block{b}_conv{c}", f"features.{index}", "conv_bias"))
        last_in_block = k + 1 == len(convs) or convs[k + 1][0] != b
        index += 3 if last_in_block else 2  # conv, relu (, maxpool)
    return out


def mobilenet_v2_pairs() -> Pairs:
    """Keras' names for the stem, block 0 (no expansion), blocks 1-16 and the last 1x1 convolution,
    each from torchvision's features.N (N = block + 1)."""
    out = [("Conv1", "features.0.0", "conv"), ("bn_Conv1", "features.0.1", "bn"),
           ("expanded_conv_depthwise", "features.1.conv.0.0", "depthwise"),
           ("expanded_conv_depthwise_BN", "features.1.conv.0.1", "bn"),
           ("expanded_conv_project", "features.1.conv.1", "conv"),
           ("expanded_conv_project_BN", "features.1.conv.2", "bn")]
    for i in range(1, 17):
        t = f"features.{i + 1}.conv"
        out += [(f"block_{i}_expand", f"{t}.0.0", "conv"), (f"block_{i}_expand_BN", f"{t}.0.1", "bn"),
                (f"block_{i}_depthwise", f"{t}.1.0", "depthwise"), (f"block_{i}_depthwise_BN", f"{t}.1.1", "bn"),
                (f"block_{i}_project", f"{t}.2", "conv"), (f"block_{i}_project_BN", f"{t}.3", "bn")]
    return out + [("Conv_1", "features.18.0", "conv"), ("Conv_1_bn", "features.18.1", "bn")]


def resnet50_pairs() -> Pairs:
    """`torchvision_resnet50`'s layers, named after torchvision's keys with '_' for '.'."""
    out = [("conv1", "conv1", "conv"), ("bn1", "bn1", "bn")]
    for li, blocks in enumerate(RESNET50_BLOCKS, 1):
        for b in range(blocks):
            p, t = f"layer{li}_{b}", f"layer{li}.{b}"
            for k in (1, 2, 3):
                out += [(f"{p}_conv{k}", f"{t}.conv{k}", "conv"), (f"{p}_bn{k}", f"{t}.bn{k}", "bn")]
            if b == 0:
                out += [(f"{p}_downsample_0", f"{t}.downsample.0", "conv"),
                        (f"{p}_downsample_1", f"{t}.downsample.1", "bn")]
    return out


RESNET50_BLOCKS = (3, 4, 6, 3)
# Each model's mapping, as its spec names it.
PAIRS: dict[str, Callable[[], Pairs]] = {name: globals()[spec.keras_pairs] for name, spec in SPECS.items()
                                         if spec.keras_pairs}


def convert(kind: str, state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """The Keras weights of one layer from torchvision's tensors under PREFIX."""
    if kind == "bn":
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    w = state[f"{prefix}.weight"]
    if kind == "depthwise":
        return [w.transpose(2, 3, 0, 1)]       # (C, 1, kh, kw) -> (kh, kw, C, 1)
    kernel = w.transpose(2, 3, 1, 0)           # (O, I, kh, kw) -> (kh, kw, I, O)
    return [kernel, state[f"{prefix}.bias"]] if kind == "conv_bias" else [kernel]


def backbone_keys(state: dict[str, np.ndarray]) -> set[str]:
    """The checkpoint's backbone tensors (the ImageNet classifier and BN step counters are not ported)."""
    return {k for k in state if not k.startswith(TOP) and not k.endswith("num_batches_tracked")}


def port(model: str, state: dict[str, np.ndarray], backbone: "keras.Model", source: str = "the checkpoint") -> None:
    """Set every weighted layer of the Keras BACKBONE from torchvision's STATE (numpy arrays); raise
    ValueError naming what does not fit (a missing tensor, a wrong shape, a layer left unset)."""
    pairs = PAIRS[model]()
    layers = {layer.name: layer for layer in backbone.layers}
    used: set[str] = set()
    problems = []
    for name, prefix, kind in pairs:
        layer = layers.get(name)
        if layer is None:
            problems.append(f"Keras has no layer {name}")
            continue
        try:
            values = convert(kind, state, prefix)
        except KeyError as e:
            problems.append(f"{source} has no {e.args[0]}")
            continue
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [v.shape for v in values] != expected:
            problems.append(f"{name}: {[v.shape for v in values]} from {prefix}, Keras expects {expected}")
            continue
        layer.set_weights([np.asarray(v, np.float32) for v in values])
        if kind == "bn":
            layer.epsilon = TORCHVISION_BN_EPS
        used.update(k for k in state if k.startswith(prefix + "."))
    unset = [n for n, layer in layers.items() if layer.weights and n not in {p[0] for p in pairs}]
    unused = sorted(backbone_keys(state) - used)
    problems += [f"Keras layer {n} has no source" for n in unset] + [f"{k} not ported" for k in unused[:3]]
    if problems:
        raise ValueError(f"{source} does not fit Keras' {model}: " + "; ".join(problems[:3]))


def torchvision_resnet50(input_shape: tuple[int, int, int]) -> "keras.Model":
    """torchvision's ResNet50 in Keras, for `--weights same`: v1.5 (the stride in each downsampling
    block's 3x3 convolution, where keras.applications' v1 puts it in the first 1x1), no convolution
    biases, BatchNorm epsilon 1e-5, torch's symmetric padding (ZeroPadding2D + 'valid'; zeros before
    the max-pool equal torch's -inf padding, as its input is a ReLU's), global average pooling.
    Layers are named after torchvision's state-dict keys (see `resnet50_pairs`)."""
    import keras
    from keras import layers

    def conv(x, filters: int, kernel: int, stride: int, name: str):
        if kernel > 1:
            x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        return layers.Conv2D(filters, kernel, strides=stride, use_bias=False, name=name)(x)

    def bn(x, name: str, relu: bool = True):
        x = layers.BatchNormalization(epsilon=TORCHVISION_BN_EPS, momentum=0.9, name=name)(x)  # Keras' 0.9: torch's 0.1
        return layers.ReLU(name=f"{name}_relu")(x) if relu else x

    inputs = keras.Input(input_shape)
    x = bn(conv(inputs, 64, 7, 2, "conv1"), "bn1")
    x = layers.MaxPooling2D(3, 2, name="maxpool")(layers.ZeroPadding2D(1, name="maxpool_pad")(x))
    for li, (blocks, width) in enumerate(zip(RESNET50_BLOCKS, (64, 128, 256, 512)), 1):
        for b in range(blocks):
            p, stride = f"layer{li}_{b}", 2 if b == 0 and li > 1 else 1
            y = bn(conv(x, width, 1, 1, f"{p}_conv1"), f"{p}_bn1")
            y = bn(conv(y, width, 3, stride, f"{p}_conv2"), f"{p}_bn2")
            y = bn(conv(y, 4 * width, 1, 1, f"{p}_conv3"), f"{p}_bn3", relu=False)
            if b == 0:
                x = bn(conv(x, 4 * width, 1, stride, f"{p}_downsample_0"), f"{p}_downsample_1", relu=False)
            x = layers.ReLU(name=f"{p}_out")(layers.Add(name=f"{p}_add")([x, y]))
    return keras.Model(inputs, layers.GlobalAveragePooling2D(name="avg_pool")(x), name="resnet50_torchvision")


def torchvision_padding(backbone: "keras.Model") -> "keras.Model":
    """MobileNetV2 as torchvision pads it: a 3x3 stride-2 convolution pads one pixel on every side
    (Keras: padding='same' or ZeroPadding2D(correct_pad) = bottom/right only). Rebuilt by cloning:
    the ZeroPadding2D layers become symmetric, and the stem's 'same' convolution becomes a
    symmetric ZeroPadding2D + 'valid' one. Output shapes are unchanged (even input sizes)."""
    import keras
    unpadded: set[str] = set()  # strided 'same' convolutions, now 'valid' behind a symmetric pad

    def clone(layer):
        if isinstance(layer, keras.layers.ZeroPadding2D):
            return keras.layers.ZeroPadding2D(((1, 1), (1, 1)), name=layer.name)
        config = layer.get_config()
        if isinstance(layer, keras.layers.Conv2D) and tuple(config["strides"]) == (2, 2) and config["padding"] == "same":
            unpadded.add(layer.name)
            config["padding"] = "valid"
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        if layer.name in unpadded:
            args = (keras.layers.ZeroPadding2D(((1, 1), (1, 1)), name=f"{layer.name}_pad")(args[0]), *args[1:])
        return layer(*args, **kwargs)

    return keras.models.clone_model(backbone, clone_function=clone, call_function=call)


# The Keras network torchvision's weights are ported into, one builder per kind (`ModelSpec.keras_same`
# names one): each takes keras.applications' builder BUILD (weights -> network) and the input shape.
Build = Callable[[str | None], "keras.Model"]


def applications_network(build: Build, input_shape: tuple[int, int, int]) -> "keras.Model":
    """keras.applications' network as it ships (its architecture is torchvision's: VGG19)."""
    return build(None)


def torchvision_padding_network(build: Build, input_shape: tuple[int, int, int]) -> "keras.Model":
    """keras.applications' network with torchvision's symmetric padding (MobileNetV2)."""
    return torchvision_padding(build(None))


def torchvision_resnet50_network(build: Build, input_shape: tuple[int, int, int]) -> "keras.Model":
    """torchvision's ResNet50 v1.5, built in Keras (keras.applications' is v1, another network)."""
    return torchvision_resnet50(input_shape)


def same_start_network(model: str, build: Build, input_shape: tuple[int, int, int]) -> "keras.Model":
    """The Keras network MODEL's torchvision weights are ported into, as its spec says."""
    return globals()[SPECS[model].keras_same](build, input_shape)


def export_state(path: str | os.PathLike, timeout: float = 600.0) -> dict[str, np.ndarray]:
    """torchvision's checkpoint at PATH as numpy arrays, read by torch in a subprocess (see the module
    docstring). Raises ValueError with torch's one-line reason when the file is not a checkpoint."""
    with tempfile.TemporaryDirectory(prefix="bench-port-") as tmp:
        out = os.path.join(tmp, "state.npz")
        proc = subprocess.run([sys.executable, "-m", __name__, str(path), out], capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or [f"exit {proc.returncode}"]
            raise (ImportError if proc.returncode == NO_TORCH else ValueError)(lines[-1][:300])
        with np.load(out) as npz:
            return {k: npz[k] for k in npz.files}


NO_TORCH = 3  # _export_main's exit status when torch is missing


def _export_main(argv: list[str]) -> int:
    """python -m bench_fixtures.frameworks.keras_port CHECKPOINT OUT.npz (run by export_state)."""
    try:
        import torch
    except ImportError:
        print(SAME_NEEDS_TORCH, file=sys.stderr)
        return NO_TORCH
    path, out = argv
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        arrays = {k: v.detach().float().numpy() for k, v in state.items() if torch.is_tensor(v)
                  and v.is_floating_point() and not k.startswith(TOP)}  # the backbone: what is ported
    except Exception as e:  # not a checkpoint: one line for the caller
        print(f"{type(e).__name__}: {' '.join(str(e).split())[:250]}", file=sys.stderr)
        return 1
    np.savez(out, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(_export_main(sys.argv[1:]))
