"""`bench machine [--slug]`: what machine ran the benchmark, read without importing a framework
(NVML, package metadata), and the storage folder that keeps each hardware's histories apart."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
from typing import Any

from .registry import FRAMEWORKS

PACKAGES = (*dict.fromkeys(p for f in FRAMEWORKS.values() for p in f.packages), "numpy", "pytest-benchmark",
            "nvidia-ml-py")  # keras once, though both Keras frameworks need it


def nvml_gpus() -> tuple[list[dict[str, Any]], str]:
    """The GPUs NVML sees (honouring CUDA_VISIBLE_DEVICES="" as none), and a reason when there are none."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return [], "CUDA_VISIBLE_DEVICES is empty"
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py (pynvml) not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return [], f"NVML unavailable ({e})"
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)  # bytes from nvidia-ml-py before 11.5: the peak table needs text
            gpus.append(dict(index=i, name=name.decode() if isinstance(name, bytes) else name,
                             memory_total=pynvml.nvmlDeviceGetMemoryInfo(h).total,
                             driver=driver, cuda_driver=f"{cuda // 1000}.{cuda % 1000 // 10}"))
        return gpus, "" if gpus else "NVML reports no GPU"
    except pynvml.NVMLError as e:
        return [], f"NVML query failed ({e})"
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def storage_slug() -> str:
    """What keeps histories of different hardware apart: the GPU model, else the CPU model."""
    gpus, _ = nvml_gpus()
    name = gpus[0]["name"] if gpus else f"cpu-{cpu_model()}"
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")
    return slug or "unknown"  # (one pass, as before: stored histories and CI cache keys keep their names)


def storage_machine_id(machine_id: str) -> str:
    """pytest-benchmark's machine id (OS, Python) plus the hardware: the one folder level under
    .benchmarks/ that `pytest-benchmark compare` lists, so histories of two GPU models never mix."""
    return f"{machine_id}-{storage_slug()}"


def machine_info(framework_builds: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Added to pytest-benchmark's machine_info: what makes two runs comparable or not."""
    gpus, reason = nvml_gpus()
    return dict(gpus=gpus, gpu_name=gpus[0]["name"] if gpus else None, gpu_reason=reason,
                cpu_model=cpu_model(), cpu_count=os.cpu_count(), packages=package_versions(),
                framework_builds=framework_builds or {})


def main(argv: list[str] | None = None, prog: str = "bench machine") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--slug", action="store_true", help="print only the hardware slug (GPU model, else CPU model)")
    a = p.parse_args(argv)
    print(storage_slug() if a.slug else json.dumps(machine_info(), indent=1))
    return 0
