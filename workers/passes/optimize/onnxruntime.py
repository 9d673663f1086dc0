"""``optimize.onnxruntime`` — ONNX Runtime's graph optimizations applied offline and saved as a model.

``basic`` folds constants and removes redundant nodes; ``extended`` adds fusions (Conv+BN+activation,
GELU, LayerNorm, attention on supported patterns); ``all`` adds layout transformations that tie the model to
ONNX Runtime's CPU provider on this kind of CPU (recorded in the artifact's metadata).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register


class OrtOptimizeParams(PassParams):
    level: Literal["basic", "extended", "all"] = Field(
        default="extended", description="Optimization level; `all` output runs only on ONNX Runtime's CPU provider."
    )


def run(ctx: PassContext, params: OrtOptimizeParams) -> PassResult:
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[params.level]
    out = ctx.work_dir / "model.optimized.onnx"
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(ctx.model_path), options, providers=["CPUExecutionProvider"])
    before = len(onnx.load(str(ctx.model_path), load_external_data=False).graph.node)
    after = len(onnx.load(str(out), load_external_data=False).graph.node)
    ctx.log(f"{params.level} optimizations: {before} → {after} nodes")
    metadata = {"runtime": "onnxruntime", "onnxruntime": ort.__version__, "level": params.level}
    if params.level == "all":
        metadata["runs_on"] = "onnxruntime CPUExecutionProvider only (layout-specific)"
    return PassResult(out, "onnx", metrics={"nodes_before": before, "nodes_after": after}, metadata=metadata)


SPEC = register(
    PassSpec(
        name="optimize.onnxruntime",
        description="ONNX Runtime graph optimizations (constant folding, fusions) saved as a new model.",
        accepts=("onnx",),
        produces="onnx",
        params=OrtOptimizeParams,
        run=run,
        requires=("onnxruntime",),
    )
)
