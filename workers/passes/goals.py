"""Goal jobs: the recipes a search tries when a job asks for an outcome instead of steps.

``goal: {"max_accuracy_drop": 0.01, "objective": "latency" | "size", "time_budget_s": 600}``. The search space
depends on the model's family, its format, the datasets given, the objective and the device; the API drops
what this deployment cannot run (a missing engine, a GPU pass without a GPU queue) and records why. Each
candidate belongs to a ``group`` (one technique) at a ``level`` (0 = most aggressive). The runner searches a
group like a bisection: once a level met the goal it skips the milder ones (larger or slower at best); once a
level lost more than the budget allows it skips the more aggressive ones (they would lose more). Ladders of
three are therefore listed middle first.
Measured facts behind the choices are those of ``presets.py``. Like the pass modules, this file loads no ML
library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.passes.presets import FUSIONS, MATMUL_ONLY, TRANSFORMER_STATIC, Steps, family


@dataclass(frozen=True)
class Candidate:
    group: str
    steps: Steps
    why: str
    level: int = 0


def _ladder(group: str, rungs: list[tuple[Steps, str]]) -> list[Candidate]:
    """A group's levels, most aggressive first, in the order to try them: the middle of three first."""
    levels = [Candidate(group, steps, why, level) for level, (steps, why) in enumerate(rungs)]
    return [levels[1], levels[0], levels[2]] if len(levels) == 3 else levels


def _static(kind: str) -> list[Candidate]:
    if kind == "transformer":
        return [Candidate("int8-static", [{"pass": "quantize.static", "params": {"method": "minmax",
                                                                                  **TRANSFORMER_STATIC}}],
                          "static int8 on constant-weight MatMuls, attention and GELU-fed projections float")]
    return _ladder("int8-static", [([{"pass": "quantize.static", "params": {"method": method, "per_channel": True}}],
                                    f"static int8 QDQ, per-channel weights, {method} calibration")
                                   for method in ("minmax", "percentile")])


def _dynamic(kind: str, objective: str) -> list[Candidate]:
    matmuls = ([{"pass": "quantize.dynamic", "params": MATMUL_ONLY}], "dynamic int8 of MatMul/Gemm layers only")
    if kind == "transformer":  # fusions first (faster on MiniLM-L6); per tensor is faster on small matrices
        return _ladder("int8-dynamic", [
            ([FUSIONS, {"pass": "quantize.dynamic", "params": {"per_channel": False}}],
             "ONNX Runtime's fusions, then dynamic int8 per tensor"),
            ([FUSIONS, {"pass": "quantize.dynamic", "params": {"per_channel": True}}],
             "ONNX Runtime's fusions, then dynamic int8 per channel (MatMul/Gemm, embeddings, attention)"),
            ([FUSIONS, {"pass": "quantize.dynamic", "params": MATMUL_ONLY}],
             "ONNX Runtime's fusions, then dynamic int8 of MatMul/Gemm layers only")])
    if kind != "cnn":
        return _ladder("int8-dynamic", [([{"pass": "quantize.dynamic", "params": {"per_channel": True}}],
                                         "dynamic int8 per channel (MatMul/Gemm, embeddings)"), matmuls])
    if objective == "size":  # dynamic int8 convolutions are ~8× slower on CPUs, but a quarter of the size
        return _ladder("int8-dynamic", [([{"pass": "quantize.dynamic",
                                           "params": {"op_types": ["Conv", "MatMul", "Gemm"]}}],
                                         "dynamic int8 of convolutions and MatMul/Gemm (small, slow on CPUs)"),
                                        matmuls])
    return _ladder("int8-dynamic", [matmuls])


def _weight_only() -> list[Candidate]:
    return _ladder("weight-only", [([{"pass": "quantize.weight_only", "params": {"bits": bits, "block_size": block}}],
                                    f"{bits}-bit block-wise weights (MatMulNBits, blocks of {block}), activations "
                                    "float") for bits, block in ((4, 32), (8, 128))])


def _low_rank() -> list[Candidate]:
    return _ladder("low-rank", [([{"pass": "lowrank.svd", "params": {"ratio": ratio}}],
                                 f"truncated SVD keeping {ratio:.0%} of each large layer's parameters")
                                for ratio in (0.25, 0.5, 0.75)])


def _structured() -> list[Candidate]:
    return _ladder("structured-pruning", [([{"pass": "prune.structured", "params": {"ratio": ratio}},
                                            {"pass": "train.finetune", "params": {"epochs": 3}}],
                                           f"{ratio:.0%} of the channels/neurons removed, 3 epochs of fine-tuning")
                                          for ratio in (0.5, 0.3)])


def _openvino(kind: str, calibrated: bool) -> list[tuple[Steps, str]]:
    """OpenVINO rungs, most aggressive first: NNCF int8 (for transformers also with the GELU-fed projections
    kept float), then the CPU's default precision (bf16 where the CPU has it)."""
    rungs = [([{"pass": "engine.openvino", "params": {}}], "OpenVINO IR, the CPU's default precision")]
    if calibrated:
        rungs.insert(0, ([{"pass": "engine.openvino", "params": {"int8": True}}], "OpenVINO IR, NNCF int8"))
    if calibrated and kind == "transformer":
        rungs.insert(1, ([{"pass": "engine.openvino", "params": {"int8": True, "float_after": ["Gelu"]}}],
                         "OpenVINO IR, NNCF int8, GELU-fed projections kept float"))
    return rungs


def search_space(model: dict[str, Any], objective: str, device: str) -> list[Candidate]:
    """Every candidate worth trying for ``model`` (format, details, datasets), best bets first."""
    kind = family(model["details"])
    datasets = set(model["datasets"])
    calibrated = _static(kind) if "calibration" in datasets else []
    matmul_heavy = kind != "cnn"
    structured = _structured() if model["format"] == "torch_export" and "training" in datasets else []
    if device == "cuda":
        trt = _ladder("tensorrt", [([{"pass": "engine.tensorrt", "params": {"precision": precision}}],
                                    f"TensorRT engine, {precision}")
                                   for precision in (("int8", "fp16") if "calibration" in datasets else ("fp16",))])
        fp16 = [Candidate("fp16", [{"pass": "quantize.fp16", "params": {"keep_io_types": True}}],
                          "float16 ONNX, float32 inputs and outputs")]
        half = (_ladder("half", [([{"pass": "quantize.half", "params": {"dtype": dtype}}], f"torch {dtype}")
                                 for dtype in ("float16", "bfloat16")]) if model["format"] == "torch_export" else [])
        return [*trt, *fp16, *half, *structured]
    fp16 = [Candidate("fp16", [{"pass": "quantize.fp16", "params": {"keep_io_types": True}}],
                      "float16 weights (half the size; slower compute on most CPUs)")]
    if objective == "size":
        return [*calibrated, *(_weight_only() if matmul_heavy else []), *_dynamic(kind, objective), *fp16,
                *structured, *_low_rank()]
    openvino = _ladder("openvino", _openvino(kind, "calibration" in datasets))
    graph = [Candidate("graph-optimization", [{"pass": "optimize.onnxruntime", "params": {"level": "extended"}}],
                       "ONNX Runtime graph fusions and constant folding (same numerics)")]
    aot = ([Candidate("aotinductor", [{"pass": "engine.aotinductor", "params": {}}],
                      "TorchInductor ahead-of-time compiled package")] if model["format"] == "torch_export" else [])
    return [*graph, *calibrated, *openvino, *_dynamic(kind, objective), *aot, *structured,
            *(_weight_only() if matmul_heavy else []), *_low_rank()]
