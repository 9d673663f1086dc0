"""Presets: named recipes that choose their scheme per model family, from what inspection recorded.

The family comes from the operator counts of the uploaded model (ONNX op types, or ATen ops for torch
models): attention (softmax beside matrix products) → ``transformer``; convolutions → ``cnn``; else ``mlp``.
A preset resolves to candidates: ordinary steps with the reason for the choice, best guess first (shown by
``POST /v1/jobs?dry_run=true``). The job runs the first; when its result fails the regression gate it runs
the next from the original model, and so on, so a preset never settles on a regressed result while another
candidate remains. Like the pass modules, this file loads no ML library: the API validates presets from it.

Measured on this project's machines (FACTS.md, docs/benchmarks.md): dynamic int8 suits transformers and MLPs
but makes convolutions ~8× slower; static QDQ speeds CNNs up at equal accuracy but collapses transformers
unless restricted to constant-weight MatMuls away from GELU outputs; fp16 only pays off on GPUs. On
transformers, ONNX Runtime's fusions before dynamic int8 make MiniLM-L6 10–15% faster than quantizing the
exported graph, at the same cosine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Steps = list[dict[str, Any]]
Candidates = list[tuple[Steps, str]]
TRANSFORMER_STATIC = {"op_types": ["MatMul"], "constant_weights_only": True, "exclude_after": ["Erf", "Gelu"]}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    resolve: Callable[[dict[str, Any]], Candidates]
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


MATMUL_ONLY = {"op_types": ["MatMul", "Gemm"]}
FUSIONS = {"pass": "optimize.onnxruntime", "params": {"level": "extended"}}


def _cpu_int8(model: dict[str, Any]) -> Candidates:
    kind = family(model["details"])
    matmul_only = ([{"pass": "quantize.dynamic", "params": MATMUL_ONLY}],
                   "only MatMul/Gemm layers quantized (dynamically); convolutions, embeddings and attention stay "
                   "float")
    if kind == "cnn" and "calibration" in model["datasets"]:
        return [([{"pass": "quantize.static", "params": {"method": "minmax", "per_channel": True}}],
                 "convolutional model with calibration data: static int8 QDQ (dynamic int8 makes convolutions "
                 "about 8× slower on CPUs)"),
                ([{"pass": "quantize.static", "params": {"method": "percentile", "per_channel": True}}],
                 "static int8 QDQ with percentile calibration (clips outliers that minmax keeps)"),
                matmul_only]
    if kind == "cnn":
        return [(matmul_only[0], "convolutional model without calibration data: " + matmul_only[1] + " — add a "
                 "calibration dataset for static int8 of the convolutions")]
    dynamic = ([{"pass": "quantize.dynamic", "params": {"per_channel": True}}],
               f"{kind}: dynamic int8 per channel (int8 weights for MatMul/Gemm and embeddings, activations "
               "quantized at run time)")
    if kind == "transformer":
        return [([FUSIONS, *dynamic[0]], "transformer: ONNX Runtime's fusions (attention, LayerNorm, GELU), then "
                 "dynamic int8 per channel"), dynamic, matmul_only]
    return [dynamic, matmul_only]


def _cpu_int8_static(model: dict[str, Any]) -> Candidates:
    kind = family(model["details"])
    if kind == "transformer":
        return [([{"pass": "quantize.static", "params": {"method": "minmax", **TRANSFORMER_STATIC}}],
                 "transformer: static int8 on constant-weight MatMuls only, keeping attention products and "
                 "GELU-fed projections float (static int8 on every op collapses transformers)")]
    return [([{"pass": "quantize.static", "params": {"method": method, "per_channel": True}}],
             f"{kind}: static int8 QDQ on every supported op, per-channel weights, {method} calibration")
            for method in ("minmax", "percentile")]


def _gpu_fp16(model: dict[str, Any]) -> Candidates:
    return [([{"pass": "quantize.fp16", "params": {"keep_io_types": True}}],
             "float16 weights and compute with float32 inputs/outputs, for GPUs (on CPUs fp16 runs slower)")]


def _prune_finetune_int8(model: dict[str, Any]) -> Candidates:
    quantize, why = _cpu_int8(model)[0]
    return [([{"pass": "prune.magnitude", "params": {"sparsity": sparsity, "scope": "global"}},
              {"pass": "train.finetune", "params": {"epochs": 3}}, *quantize],
             f"{sparsity:.0%} magnitude pruning, 3 epochs of fine-tuning that keep the zeros, then int8 ({why})")
            for sparsity in (0.5, 0.3)]


def _distill_int8(model: dict[str, Any]) -> Candidates:
    quantize, why = _cpu_int8(model)[0]
    return [([{"pass": "distill.kd", "params": {"width_ratio": width, "epochs": 10}}, *quantize],
             f"a student with {width:.0%} of the teacher's channels, distilled for 10 epochs, then int8 ({why})")
            for width in (0.5, 0.75)]


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("cpu-int8", "Int8 for CPUs, chosen per family: dynamic for transformers and MLPs; static QDQ for CNNs "
           "when a calibration dataset is given; falls back to MatMul/Gemm-only dynamic int8.", _cpu_int8),
    Preset("cpu-int8-static", "Static int8 QDQ calibrated on the calibration dataset, restricted to what stays "
           "accurate for the model's family.", _cpu_int8_static, datasets=("calibration",)),
    Preset("gpu-fp16", "Float16 for GPUs, inputs and outputs kept float32.", _gpu_fp16),
    Preset("prune-finetune-int8", "Torch models: 50% (else 30%) magnitude pruning, fine-tuning on the training "
           "dataset, export, then cpu-int8's quantization.", _prune_finetune_int8, datasets=("training",)),
    Preset("distill-int8", ".pt2 models: a half-width (else three-quarter) student derived from the model, "
           "distilled on the training dataset, exported, then cpu-int8's quantization.", _distill_int8,
           datasets=("training",)),
)}
