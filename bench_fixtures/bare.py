"""The reference for the harness-overhead check: the same training step, hand-written, no harness.

`make_step(framework, model, batch, device, size)` returns (step, sync): one training step on a
device-resident batch, and the device synchronisation. No worker protocol, no timeline, no input
pipeline. The overhead check runs it inside the case's own worker, alternating with the suite's
rounds, so both see the same process and machine conditions.
`python -m bench_fixtures.bare FRAMEWORK MODEL ...` runs it standalone and prints {"round_s": [...]}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .data import MEAN, STD
from .models import SPECS


def torch_step(model: str, batch: int, device: str, size: int):
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch import nn
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = "ieee"
    net = getattr(torchvision.models, SPECS[model].torchvision)(weights=None)
    features = nn.Sequential(*list(net.children())[:-2]) if model == "resnet50" else net.features
    m = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(SPECS[model].feature_dim, 10)).to(dev)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    x = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=dev).view(1, 3, 1, 1) * 255

    def step() -> None:
        xb = ((x.permute(0, 3, 1, 2).float() - mean) / std).contiguous()
        if size != 32:
            xb = F.interpolate(xb, size=(size, size), mode="bilinear", align_corners=False)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(xb), y).backward()
        opt.step()

    return step, (torch.cuda.synchronize if dev.type == "cuda" else (lambda: None))


def tf_step(model: str, batch: int, device: str, size: int):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras
    import tensorflow as tf
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    tf.config.experimental.enable_tensor_float_32_execution(False)
    base = getattr(keras.applications, SPECS[model].keras)(include_top=False, weights=None,
                                                          input_shape=(size, size, 3), pooling="avg")
    m = keras.Sequential([base, keras.layers.Dense(10)])
    opt = keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x = tf.random.uniform((batch, 32, 32, 3), 0, 256, dtype=tf.int32)
    x = tf.cast(x, tf.uint8)
    y = tf.random.uniform((batch,), 0, 10, dtype=tf.int32)
    mean, std = tf.constant(MEAN) * 255, tf.constant(STD) * 255

    @tf.function(jit_compile=False)
    def step():
        with tf.GradientTape() as tape:
            xb = (tf.cast(x, tf.float32) - mean) / std
            if size != 32:
                xb = tf.image.resize(xb, (size, size), method="bilinear")
            loss = loss_fn(y, m(xb, training=True))
        grads = tape.gradient(loss, m.trainable_variables)
        opt.apply_gradients(zip(grads, m.trainable_variables))
        return loss

    return step, tf.test.experimental.sync_devices


def make_step(framework: str, model: str, batch: int, device: str, size: int):
    return (torch_step if framework == "torch" else tf_step)(model, batch, device, size)


def timed_rounds(step, sync, steps: int, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("framework", choices=("torch", "tensorflow"))
    p.add_argument("model", choices=tuple(SPECS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--image-size", type=int, default=32)
    a = p.parse_args(argv)
    step, sync = make_step(a.framework, a.model, a.batch, a.device, a.image_size)
    timed_rounds(step, sync, max(a.warmup, 1), 1)
    print(json.dumps({"round_s": timed_rounds(step, sync, a.steps, a.rounds)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
