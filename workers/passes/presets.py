"""Presets: named recipes that choose their scheme per model family, from what inspection recorded.

The family comes from the operator counts of the uploaded model (ONNX op types, or ATen ops for torch
models): attention (softmax beside matrix products) → ``transformer``; convolutions → ``cnn``; else ``mlp``.
A preset resolves to ordinary steps (shown by ``POST /v1/jobs?dry_run=true``) with the reason for the choice.
Like the pass modules, this file loads no ML library: the API validates presets from it.

Measured on this project's machines (FACTS.md, docs/benchmarks.md): dynamic int8 suits transformers and MLPs
but makes convolutions ~8× slower; static QDQ speeds CNNs up at equal accuracy but collapses transformers
unless restricted to constant-weight MatMuls away from GELU outputs; fp16 only pays off on GPUs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Steps = list[dict[str, Any]]
TRANSFORMER_STATIC = {"op_types": ["MatMul"], "constant_weights_only": True, "exclude_after": ["Erf", "Gelu"]}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    resolve: Callable[[dict[str, Any]], tuple[Steps, str]]
    datasets: tuple[str, ...] = ()


def family(details: dict[str, Any]) -> str:
    ops = {k.lower(): v for k, v in details.get("op_counts", {}).items()}

    def count(*keys: str) -> int:
        return sum(v for k, v in ops.items() if any(key in k for key in keys))

    if count("softmax", "attention") and count("matmul", "gemm", "linear", "addmm", "bmm"):
        return "transformer"
    if count("conv"):
        return "cnn"
    return "mlp"


def _cpu_int8(model: dict[str, Any]) -> tuple[Steps, str]:
    kind = family(model["details"])
    if kind == "cnn" and "calibration" in model["datasets"]:
        return ([{"pass": "quantize.static", "params": {"method": "minmax", "per_channel": True}}],
                "convolutional model with calibration data: static int8 QDQ (dynamic int8 makes convolutions "
                "about 8× slower on CPUs)")
    if kind == "cnn":
        return ([{"pass": "quantize.dynamic", "params": {"op_types": ["MatMul", "Gemm"]}}],
                "convolutional model without calibration data: only its MatMul/Gemm layers are quantized "
                "(dynamically); convolutions stay float — add a calibration dataset for static int8 of the "
                "convolutions")
    return ([{"pass": "quantize.dynamic", "params": {"per_channel": True}}],
            f"{kind}: dynamic int8 per channel (int8 weights for MatMul/Gemm and embeddings, activations "
            "quantized at run time)")


def _cpu_int8_static(model: dict[str, Any]) -> tuple[Steps, str]:
    kind = family(model["details"])
    if kind == "transformer":
        return ([{"pass": "quantize.static", "params": {"method": "minmax", **TRANSFORMER_STATIC}}],
                "transformer: static int8 on constant-weight MatMuls only, keeping attention products and "
                "GELU-fed projections float (static int8 on every op collapses transformers)")
    return ([{"pass": "quantize.static", "params": {"method": "minmax", "per_channel": True}}],
            f"{kind}: static int8 QDQ on every supported op, per-channel weights")


def _gpu_fp16(model: dict[str, Any]) -> tuple[Steps, str]:
    return ([{"pass": "quantize.fp16", "params": {"keep_io_types": True}}],
            "float16 weights and compute with float32 inputs/outputs, for GPUs (on CPUs fp16 runs slower)")


def _prune_finetune_int8(model: dict[str, Any]) -> tuple[Steps, str]:
    quantize, why = _cpu_int8(model)
    steps = [{"pass": "prune.magnitude", "params": {"sparsity": 0.5, "scope": "global"}},
             {"pass": "train.finetune", "params": {"epochs": 3}}, *quantize]
    return steps, f"50% magnitude pruning, 3 epochs of fine-tuning that keep the zeros, then int8 ({why})"


def _distill_int8(model: dict[str, Any]) -> tuple[Steps, str]:
    quantize, why = _cpu_int8(model)
    steps = [{"pass": "distill.kd", "params": {"width_ratio": 0.5, "epochs": 10}}, *quantize]
    return steps, f"a student with half the teacher's channels, distilled for 10 epochs, then int8 ({why})"


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("cpu-int8", "Int8 for CPUs, chosen per family: dynamic for transformers and MLPs; static QDQ for CNNs "
           "when a calibration dataset is given.", _cpu_int8),
    Preset("cpu-int8-static", "Static int8 QDQ calibrated on the calibration dataset, restricted to what stays "
           "accurate for the model's family.", _cpu_int8_static, datasets=("calibration",)),
    Preset("gpu-fp16", "Float16 for GPUs, inputs and outputs kept float32.", _gpu_fp16),
    Preset("prune-finetune-int8", "Torch models: 50% magnitude pruning, fine-tuning on the training dataset, "
           "export, then cpu-int8's quantization.", _prune_finetune_int8, datasets=("training",)),
    Preset("distill-int8", ".pt2 models: a half-width student derived from the model, distilled on the training "
           "dataset, exported, then cpu-int8's quantization.", _distill_int8, datasets=("training",)),
)}
