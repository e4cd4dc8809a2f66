"""Developer experience, measured: import time, install footprint, time to first step, whether the
framework sees the GPU that NVML sees, and how much code each backend needs here.

Install footprint is like for like: each framework's own packages *without* its GPU libraries
(CUDA runtime wheels and GPU compilers), plus, separately, the GPU libraries it brings: torch pulls
its CUDA wheels by default, TensorFlow only with its `and-cuda` extra, so counting what happens to
be installed would compare a GPU install of one with a CPU install of the other.
"""
from __future__ import annotations

import importlib.metadata as md
import re
import statistics
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from ..registry import FRAMEWORKS

GPU_LIBRARY = re.compile(r"^(nvidia-.*|cuda-.*|triton|jax-cuda\d+-.*)$")  # CUDA runtime wheels, GPU compilers, plugins
GPU_LIBRARY_NOTE = "GPU libraries = nvidia-*, cuda-*, jax-cuda*-plugin/pjrt and triton distributions"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(name: str, extra: str | None = None) -> list[str]:
    """What NAME requires in a plain install, or only what its EXTRA adds (markers evaluated here), each
    as "name" or "name[extra,...]" when it asks for extras (jax[cuda12] needs jax-cuda12-plugin[with-cuda])."""
    try:
        reqs = md.requires(name) or []
    except md.PackageNotFoundError:
        return []
    out = []
    for text in reqs:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        in_plain = req.marker is None or req.marker.evaluate({"extra": ""})
        wanted = (extra is None and in_plain) or (extra is not None and not in_plain
                                                   and req.marker.evaluate({"extra": extra}))
        if wanted:
            out.append(req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else ""))
    return out


def _split(spec: str) -> tuple[str, list[str]]:
    """"name[a,b]" -> (normalised name, [a, b])."""
    name, _, extras = spec.partition("[")
    return _norm(name), [e.strip() for e in extras.rstrip("]").split(",") if e.strip()]


def _installed(name: str) -> bool:
    try:
        md.distribution(name)
        return True
    except md.PackageNotFoundError:
        return False


def closure(roots: tuple[str, ...] | list[str]) -> set[str]:
    """The installed distributions ROOTS pull in (normalised names), following the extras they name."""
    seen: set[str] = set()
    done: set[tuple[str, str | None]] = set()
    todo = list(roots)
    while todo:
        name, extras = _split(todo.pop())
        if not _installed(name):
            continue
        seen.add(name)
        for extra in (None, *extras):
            if (name, extra) not in done:
                done.add((name, extra))
                todo.extend(_requirements(name, extra))
    return seen


def _size(name: str) -> int:
    total = 0
    for f in md.distribution(name).files or []:
        try:
            total += Path(f.locate()).stat().st_size
        except OSError:
            pass
    return total


def _gpu_libraries(fw: str, plain: set[str]) -> dict[str, Any]:
    """The framework's GPU libraries: pulled by default (torch) or by its GPU extra (TensorFlow, JAX)."""
    spec = FRAMEWORKS[fw]
    pkgs = {p for p in plain if GPU_LIBRARY.match(p)}
    source = "default dependencies"
    if spec.gpu_extra:
        wanted = _requirements(spec.packages[0], spec.gpu_extra)
        source = f"{spec.packages[0]}[{spec.gpu_extra}]"
        if wanted and not all(_installed(_split(w)[0]) for w in wanted):
            missing = [_split(w)[0] for w in wanted if not _installed(_split(w)[0])]
            return dict(bytes=None, packages=None, source=source, installed=False,
                        note=f"{source} not installed ({len(missing)} of {len(wanted)} packages missing, "
                             f"e.g. {missing[0]})")
        pkgs |= {p for p in closure(wanted) if GPU_LIBRARY.match(p)}
    if not pkgs:
        return dict(bytes=None, packages=0, source=source, installed=False, note="no GPU libraries installed")
    return dict(bytes=sum(_size(p) for p in pkgs), packages=len(pkgs), source=source, installed=True, note="")


def footprint() -> dict[str, dict[str, Any]]:
    """Bytes on disk per framework: its dependency closure without GPU libraries, minus what every
    installed framework needs (numpy and friends are nobody's cost); and its GPU libraries separately.
    What only some need counts for each of them: Keras is part of both TensorFlow's and JAX's install."""
    closures = {fw: closure(f.packages) for fw, f in FRAMEWORKS.items()}
    present = [c for c in closures.values() if c]
    common = set.intersection(*present) if len(present) >= 2 else set()
    out = {}
    for fw, pkgs in closures.items():
        if not pkgs:  # not installed here: no size, never a zero that reads as "light"
            out[fw] = dict(bytes=None, packages=0, largest=[], installed=False,
                           gpu_libraries=_gpu_libraries(fw, pkgs))
            continue
        own = sorted(p for p in pkgs - common if not GPU_LIBRARY.match(p))
        sizes = {p: _size(p) for p in own}
        out[fw] = dict(bytes=sum(sizes.values()), packages=len(own), installed=True,
                       largest=sorted(sizes.items(), key=lambda kv: -kv[1])[:5],
                       gpu_libraries=_gpu_libraries(fw, pkgs))
    return out


def backend_loc() -> dict[str, int]:
    """Non-blank, non-comment lines of each backend, with the modules it shares (Keras' half counts for
    both Keras backends: each needs it)."""
    here = Path(__file__).resolve().parents[1] / "frameworks"
    return {fw: sum(1 for name in (f.backend_file, *f.shared) for line in (here / name).read_text().splitlines()
                    if line.strip() and not line.strip().startswith("#"))
            for fw, f in FRAMEWORKS.items()}


def summarize(builds: dict[str, list[dict[str, Any]]], nvml_gpu_count: int,
              ttfs: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Per framework that ran, from the workers' hello answers (one fresh process each) and the runs."""
    sizes, loc = footprint(), backend_loc()
    out = {}
    for fw in FRAMEWORKS:
        infos = builds.get(fw, [])
        imports = [i["import_s"] for i in infos if i.get("import_s") is not None]
        visible = [i.get("gpus_visible") for i in infos if i.get("gpus_visible") is not None]
        gpu = sizes[fw]["gpu_libraries"]
        out[fw] = dict(import_s=statistics.median(imports) if imports else None, import_samples=len(imports),
                       footprint_bytes=sizes[fw]["bytes"], footprint_packages=sizes[fw]["packages"],
                       footprint_largest=sizes[fw]["largest"], footprint_counts="without GPU libraries",
                       gpu_libraries_bytes=gpu["bytes"], gpu_libraries_packages=gpu["packages"],
                       gpu_libraries_source=gpu["source"], gpu_libraries_note=gpu["note"] or GPU_LIBRARY_NOTE,
                       time_to_first_step_s=statistics.median(ttfs[fw]) if ttfs.get(fw) else None,
                       gpus_visible=max(visible) if visible else None, gpus_nvml=nvml_gpu_count,
                       sees_nvml_gpus=(max(visible) >= nvml_gpu_count) if visible else None,
                       backend_loc=loc[fw])
    return out
