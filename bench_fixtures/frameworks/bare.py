"""The reference for the harness-overhead check: the same training step, hand-written, no harness.

`make_step(framework, model, batch, device, size, compiled, precision, channels_last)` returns (step, sync): one training
step on a device-resident batch, and the device synchronisation. No worker protocol, no timeline,
no input pipeline. The overhead check runs it inside the case's own worker, alternating with the
suite's rounds, so both see the same process and machine conditions: the suite's numeric settings
(TF32, cuDNN autotuning, Keras' dtype policy, set once by the backend's `configure`), its compile
mode (`compiled`), its mixed precision and (torch) memory format.
`python -m bench_fixtures.frameworks.bare FRAMEWORK MODEL ...` runs it standalone and prints {"round_s": [...]}.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from typing import Any, Callable

from ..config import PRECISIONS, resolve
from ..models import SPECS
from ..registry import NAMES, backend_module


def make_step(framework: str, model: str, batch: int, device: str, size: int, compiled: bool = False,
              precision: str | None = None, channels_last: bool = False,
              train_layers: str = "all") -> tuple[Callable[[], Any], Callable[[], Any]]:
    """Each backend module carries its framework's bare step (`bare_step`, see protocol.BackendModule),
    apart from its class."""
    module = importlib.import_module(backend_module(framework))
    return module.bare_step(model, batch, device, size, compiled, precision, channels_last, train_layers)


def timed_rounds(step: Callable[[], Any], sync: Callable[[], Any], steps: int, rounds: int) -> list[float]:
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
    p.add_argument("framework", choices=NAMES)
    p.add_argument("model", choices=tuple(SPECS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--setup", choices=("matched", "defaults"), default="matched")
    p.add_argument("--precision", choices=PRECISIONS, help="(default: the setup's: fp32 matched, "
                                                                  "the framework's own with defaults)")
    p.add_argument("--compile", action="store_true", help="torch.compile / XLA, as --compile on")
    p.add_argument("--channels-last", action="store_true", help="torch: NHWC memory format")
    p.add_argument("--train-layers", choices=("all", "head"), default="all", help="as the suite's option")
    a = p.parse_args(argv)
    # The setup's settings as the suite resolves them (precision: the setup's unless given).
    cfg = resolve(dict(device=a.device, setup=a.setup, precision=a.precision), gpu_count=int(a.device == "gpu"))
    importlib.import_module(backend_module(a.framework)).configure(cfg)
    step, sync = make_step(a.framework, a.model, a.batch, a.device, a.image_size, a.compile, cfg.precision,
                           a.channels_last, a.train_layers)
    timed_rounds(step, sync, max(a.warmup, 1), 1)
    print(json.dumps({"round_s": timed_rounds(step, sync, a.steps, a.rounds)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
