"""`bench parity [--setup matched|defaults] [--weights none|imagenet|same|DIR] [--weights-dir DIR]
[--train-layers all|head] [--image-size N]`: the parity table.

Builds each model in every installed framework (in their own worker processes) and prints trainable and
non-trainable parameters, BatchNorm and optimizer settings as the frameworks report them back,
the framework settings of the setup (read back: TF32, cuDNN autotuning, XLA, allocator, tf.data
autotuning, BatchNorm, Adam epsilon), then any parity problem; exit 1 if there is one. In the
defaults setup the settings differ by design and are listed, not counted as problems. With
`--weights same` it also compares the frameworks' logits on the same test images: the same start,
checked (exit 1 beyond models.SAME_START_TOLERANCE).
"""
from __future__ import annotations

import argparse
import sys
import tempfile

from ..config import ConfigError, resolve
from ..data import LABEL_NAMES, Cifar10, make_bundle, make_synthetic
from ..frameworks import installed, unavailable
from ..models import format_parity, parity_notes, parity_problems, parity_rows
from ..runner.experiment import describe_models
from ..runner.worker import WorkerError


def main(argv: list[str] | None = None, prog: str = "bench parity") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="none", help="none, imagenet, same, or a staged folder (as the suite's)")
    p.add_argument("--weights-dir", default=None, metavar="DIR", help="a staged folder of weight files")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    p.add_argument("--setup", default="matched", choices=("matched", "defaults"))
    p.add_argument("--train-layers", default="all", choices=("all", "head"))
    p.add_argument("--first-step", action="store_true",
                   help="also take one training step per model: frameworks that start from the same parameters "
                        "(Keras on TensorFlow and on JAX) must agree on its loss")
    a = p.parse_args(argv)
    # The seed profile's settings (smoke's BatchNorm momentum 0.5 is only for 16 steps from scratch).
    try:
        cfg = resolve(dict(profile="seed", device="cpu", weights=a.weights, weights_dir=a.weights_dir,
                           image_size=a.image_size, optimizer=a.optimizer, setup=a.setup,
                           train_layers=a.train_layers), gpu_count=0)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        train, test = make_synthetic(64, 32)
        bundle = make_bundle(Cifar10(train, test, LABEL_NAMES, "synthetic"), 0, 0, 32, 1, 0).write(f"{tmp}/b")
        for reason in unavailable().values():
            print(reason, file=sys.stderr)
        try:
            rows = parity_rows(describe_models(cfg, bundle, tmp, frameworks=installed(), first_step=a.first_step))
        except WorkerError as e:  # a weights file missing or unusable, a framework that cannot build
            print(f"{prog}: {e}", file=sys.stderr)
            return 2
    print(format_parity(rows))
    print(f"\nSettings read back ({a.setup} setup):")
    print("\n".join(parity_notes(rows, a.setup, cfg.weights)))
    problems = parity_problems(rows, a.setup, cfg.weights)
    for line in problems:
        print("PARITY PROBLEM:", line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m bench_fixtures.analysis.parity"))
