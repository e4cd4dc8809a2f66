"""Model FLOPs utilisation: achieved FLOP/s against the device's dense peak for the precision in use.

The peaks are NVIDIA's published figures, keyed by the name NVML reports. The datasheets quote
tensor-core rates "with sparsity"; the dense rate, used here, is half of that. fp32 is the CUDA-core
rate (no tensor cores); tf32, bf16 and fp16 are tensor-core rates. A precision a GPU has no tensor
cores for (bf16 on a T4, V100) has no row: MFU is then null with the reason, as on a CPU.
`--peak-tflops` replaces the table for any device.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Peak:
    pattern: str                  # regex searched in the NVML name
    tflops: dict[str, float]      # precision -> dense TFLOP/s
    source: str                   # the vendor page the figures come from


_H100 = "https://www.nvidia.com/en-us/data-center/h100/ (datasheet table; tensor figures with sparsity / 2)"
_H200 = "https://www.nvidia.com/en-us/data-center/h200/ (datasheet table; tensor figures with sparsity / 2)"
PEAKS: tuple[Peak, ...] = (
    Peak(r"H200 NVL", dict(fp32=60.0, tf32=417.5, bf16=835.5, fp16=835.5), _H200),
    Peak(r"(?<!G)H200", dict(fp32=67.0, tf32=494.5, bf16=989.5, fp16=989.5), _H200),
    Peak(r"H100 NVL", dict(fp32=60.0, tf32=417.5, bf16=835.5, fp16=835.5), _H100),
    Peak(r"H100.*PCIe", dict(fp32=51.0, tf32=378.0, bf16=756.5, fp16=756.5), _H100),
    Peak(r"H100", dict(fp32=67.0, tf32=494.5, bf16=989.5, fp16=989.5), _H100 + ", SXM5"),
    Peak(r"\bA100\b", dict(fp32=19.5, tf32=156.0, bf16=312.0, fp16=312.0),
         "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
         "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf (dense figures)"),
    Peak(r"L40S", dict(fp32=91.6, tf32=183.0, bf16=362.05, fp16=362.05),
         "https://www.nvidia.com/en-us/data-center/l40s/ (datasheet's dense figures)"),
    Peak(r"\bL4\b", dict(fp32=30.3, tf32=60.0, bf16=121.0, fp16=121.0),
         "https://www.nvidia.com/en-us/data-center/l4/ (tensor figures with sparsity / 2)"),
    Peak(r"\bA10\b", dict(fp32=31.2, tf32=62.5, bf16=125.0, fp16=125.0),
         "https://www.nvidia.com/en-us/data-center/products/a10-gpu/ (dense figures)"),
    Peak(r"\bT4\b", dict(fp32=8.1, fp16=65.0),
         "https://www.nvidia.com/en-us/data-center/tesla-t4/ (no TF32 or bf16 tensor cores)"),
    Peak(r"(?<!G)V100S", dict(fp32=16.4, fp16=130.0),
         "https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf"),
    Peak(r"(?<!G)V100.*PCIE", dict(fp32=14.0, fp16=112.0),
         "https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf"),
    Peak(r"(?<!G)V100", dict(fp32=15.7, fp16=125.0),
         "https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf"),
)


def lookup(device_name: str | None) -> Peak | None:
    """The table's row for an NVML name ("NVIDIA H100 80GB HBM3"), the first pattern that matches."""
    if not device_name:
        return None
    return next((p for p in PEAKS if re.search(p.pattern, device_name, re.IGNORECASE)), None)


def effective_precision(precision: str | None, settings: dict[str, Any] | None) -> str:
    """The precision the convolutions ran at: the one asked for, or (setup defaults) what the
    framework read back: TF32 convolutions count at the TF32 peak."""
    if precision:
        return precision
    return "tf32" if (settings or {}).get("tf32_conv") else "fp32"


def utilization(flops_per_image: float | None, images_per_s: float | None, device: str, device_name: str | None,
                precision: str, peak_tflops: float | None = None) -> dict[str, Any]:
    """Achieved FLOP/s (the framework's own count of a training step's convolution and matmul
    FLOPs per image, times images/s) and MFU = achieved / dense peak; MFU null with the reason
    where no peak is known. The keys are extra_info's."""
    ok = all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (flops_per_image, images_per_s))
    achieved = flops_per_image * images_per_s if ok else None
    out: dict[str, Any] = dict(achieved_flops_per_s=achieved, mfu=None, mfu_precision=precision, peak_tflops=None,
                               peak_source=None, mfu_reason=None)
    if achieved is None:
        out["mfu_reason"] = "no FLOP count or no throughput for this case"
        return out
    if peak_tflops:
        out.update(peak_tflops=float(peak_tflops), peak_source="--peak-tflops")
    elif device != "gpu":
        out["mfu_reason"] = "no peak figure for a CPU: give --peak-tflops to get MFU"
        return out
    else:
        row = lookup(device_name)
        if row is None:
            out["mfu_reason"] = (f"{device_name!r} is not in the peak table (bench_fixtures/peaks.py): "
                                 f"give --peak-tflops")
            return out
        if precision == "tf32" and "tf32" not in row.tflops:  # no TF32 units (T4, V100): the maths runs as fp32
            precision = out["mfu_precision"] = "fp32"
        if precision not in row.tflops:
            out["mfu_reason"] = f"{device_name} has no {precision} tensor-core peak in its datasheet"
            return out
        out.update(peak_tflops=row.tflops[precision], peak_source=f"{row.pattern}: {row.source}")
    out["mfu"] = achieved / (out["peak_tflops"] * 1e12)
    return out
