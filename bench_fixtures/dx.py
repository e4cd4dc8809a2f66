"""Developer experience, measured: import time, install footprint, time to first step, whether the
framework sees the GPU that NVML sees, and how much code each backend needs here."""
from __future__ import annotations

import importlib.metadata as md
import re
import statistics
from pathlib import Path
from typing import Any

ROOTS = {"torch": ("torch", "torchvision"), "tensorflow": ("tensorflow", "keras")}
BACKEND_FILES = {"torch": "torch_backend.py", "tensorflow": "tf_backend.py"}


def _requirements(name: str) -> list[str]:
    try:
        reqs = md.requires(name) or []
    except md.PackageNotFoundError:
        return []
    out = []
    for r in reqs:
        if "extra ==" in r:
            continue  # optional extras are not installed by a plain `pip install`
        m = re.match(r"[A-Za-z0-9_.\-]+", r)
        if m:
            out.append(m.group(0))
    return out


def closure(roots: tuple[str, ...]) -> set[str]:
    """The installed distributions a framework pulls in (normalised names)."""
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = norm(todo.pop())
        if name in seen:
            continue
        try:
            md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        todo.extend(_requirements(name))
    return seen


def _size(name: str) -> int:
    total = 0
    for f in md.distribution(name).files or []:
        try:
            total += Path(f.locate()).stat().st_size
        except OSError:
            pass
    return total


def footprint() -> dict[str, dict[str, Any]]:
    """Bytes on disk of each framework's own packages: its dependency closure minus what the
    other framework also needs (numpy and friends are not either one's cost)."""
    closures = {fw: closure(roots) for fw, roots in ROOTS.items()}
    out = {}
    for fw, pkgs in closures.items():
        others = set().union(*(c for f, c in closures.items() if f != fw))
        own = sorted(pkgs - others)
        sizes = {p: _size(p) for p in own}
        out[fw] = dict(bytes=sum(sizes.values()), packages=len(own),
                       largest=sorted(sizes.items(), key=lambda kv: -kv[1])[:5])
    return out


def backend_loc() -> dict[str, int]:
    here = Path(__file__).parent
    return {fw: sum(1 for line in (here / f).read_text().splitlines() if line.strip() and not line.strip().startswith("#"))
            for fw, f in BACKEND_FILES.items()}


def summarize(builds: dict[str, list[dict[str, Any]]], nvml_gpu_count: int,
              ttfs: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Per framework, from the workers' hello answers (one fresh process each) and the runs."""
    sizes, loc = footprint(), backend_loc()
    out = {}
    for fw in ROOTS:
        infos = builds.get(fw, [])
        imports = [i["import_s"] for i in infos if i.get("import_s") is not None]
        visible = [i.get("gpus_visible") for i in infos if i.get("gpus_visible") is not None]
        out[fw] = dict(import_s=statistics.median(imports) if imports else None, import_samples=len(imports),
                       footprint_bytes=sizes[fw]["bytes"], footprint_packages=sizes[fw]["packages"],
                       footprint_largest=sizes[fw]["largest"],
                       time_to_first_step_s=statistics.median(ttfs[fw]) if ttfs.get(fw) else None,
                       gpus_visible=max(visible) if visible else None, gpus_nvml=nvml_gpu_count,
                       sees_nvml_gpus=(max(visible) >= nvml_gpu_count) if visible else None,
                       backend_loc=loc[fw])
    return out
