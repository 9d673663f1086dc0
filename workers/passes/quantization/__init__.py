"""Quantization passes, and what they need to know about the CPU that runs their int8 kernels."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from pydantic import Field

VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def int8_products_saturate(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether ONNX Runtime's uint8 × int8 kernels can saturate on this CPU: x86 without VNNI, where AVX2's
    ``vpmaddubsw`` adds each pair of products in 16 bits (255 × 127 × 2 > 32767) and the result is clipped.
    7-bit weights (``reduce_range``) keep every pair in range (255 × 64 × 2 < 32767). Other architectures
    (ARM's dot products accumulate in 32 bits) do not saturate; an x86 CPU whose flags cannot be read is
    assumed to."""
    if platform.machine().lower() not in {"x86_64", "amd64", "i686", "x86"}:
        return False
    try:
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return True
    return not VNNI_FLAGS & set(flags)


def reduce_range_field() -> Any:
    """The ``reduce_range`` parameter of the int8 passes."""
    return Field(default=None, description="Quantize weights to 7 bits, so that the int8 kernels of x86 CPUs "
                 "without VNNI (AVX2 only) cannot saturate; default: on where the worker's CPU is such a CPU. Set "
                 "it for the CPU the model will be deployed on when that differs from the worker's.")


def reduce_range(ctx: Any, requested: bool | None) -> bool:
    """``requested``, or (unset) whether this CPU needs 7-bit weights; logged when it does."""
    if requested is None and (requested := int8_products_saturate()):
        ctx.log("7-bit weights (reduce_range): this CPU has no VNNI, and its int8 kernels would saturate")
    return requested
