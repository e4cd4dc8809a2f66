"""`bench parity [--weights none|imagenet] [--image-size N]`: the parity table.

Builds each model in every installed framework (in their own worker processes) and prints trainable and
non-trainable parameters, BatchNorm and optimizer settings as the frameworks report them back,
then any parity problem; exit 1 if there is one.
"""
from __future__ import annotations

import argparse
import sys
import tempfile

from ..config import resolve
from ..data import LABEL_NAMES, Cifar10, make_bundle, make_synthetic
from ..frameworks import NAMES, unavailable
from ..models import format_parity, parity_problems, parity_rows
from ..runner.experiment import describe_models


def main(argv: list[str] | None = None, prog: str = "bench parity") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="none", choices=("none", "imagenet"))
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    a = p.parse_args(argv)
    cfg = resolve(dict(profile="smoke", device="cpu", weights=a.weights, image_size=a.image_size,
                       optimizer=a.optimizer, bn_momentum=0.1), gpu_count=0)
    with tempfile.TemporaryDirectory() as tmp:
        train, test = make_synthetic(64, 32)
        bundle = make_bundle(Cifar10(train, test, LABEL_NAMES, "synthetic"), 0, 0, 32, 1, 0).write(f"{tmp}/b")
        missing = unavailable()
        for reason in missing.values():
            print(reason, file=sys.stderr)
        installed = tuple(fw for fw in NAMES if fw not in missing)
        rows = parity_rows(describe_models(cfg, bundle, tmp, frameworks=installed))
    print(format_parity(rows))
    problems = parity_problems(rows)
    for line in problems:
        print("PARITY PROBLEM:", line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m bench_fixtures.analysis.parity"))
