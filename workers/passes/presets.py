"""Presets: named recipes that choose their steps from what inspection recorded about the model.

A preset resolves to ordinary steps (shown by ``POST /v1/jobs?dry_run=true``), each with the reason it was
chosen. Like the pass modules, this file loads no ML library: the API validates presets from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Steps = list[dict[str, Any]]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    resolve: Callable[[dict[str, Any]], tuple[Steps, str]]
    datasets: tuple[str, ...] = ()


def _cpu_int8(model: dict[str, Any]) -> tuple[Steps, str]:
    ops = model.get("details", {}).get("op_counts", {})
    convs = sum(n for op, n in ops.items() if "conv" in op.lower())
    why = "int8 weights for MatMul/Gemm layers, activations quantized at run time"
    if convs:
        why += f"; the model's {convs} convolution(s) stay float (dynamic ConvInteger is slower than float on CPUs)"
    return [{"pass": "quantize.dynamic", "params": {"per_channel": True}}], why


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("cpu-int8", "Int8 for CPUs: dynamic quantization of MatMul-heavy models (transformers, MLPs, RNNs).",
           _cpu_int8),
)}
