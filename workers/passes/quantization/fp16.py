"""``quantize.fp16`` — float16 weights and compute, for GPUs (half the size; on CPUs usually slower)."""

from __future__ import annotations

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register


class Fp16Params(PassParams):
    keep_io_types: bool = Field(
        default=True, description="Keep the model's inputs and outputs float32 (casts are inserted inside)."
    )
    op_block_list: list[str] = Field(
        default_factory=list, description="Extra op types to keep in float32 (numerically sensitive ones)."
    )


def run(ctx: PassContext, params: Fp16Params) -> PassResult:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from workers.passes.onnx_graph import topological_sort

    model = onnx.load(str(ctx.model_path))
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(params.op_block_list))
    converted = convert_float_to_float16(model, keep_io_types=params.keep_io_types, op_block_list=blocked)
    topological_sort(converted.graph)
    out = ctx.work_dir / "model.fp16.onnx"
    onnx.save(converted, str(out))
    ctx.log(f"converted to float16 (inputs/outputs {'float32' if params.keep_io_types else 'float16'})")
    return PassResult(out, "onnx", metrics={"keep_io_types": params.keep_io_types},
                      metadata={"runtime": "onnxruntime", "precision": "fp16"})


SPEC = register(
    PassSpec(
        name="quantize.fp16",
        description="Convert weights and compute to float16 (for GPUs; slower than float32 on most CPUs).",
        accepts=("onnx",),
        produces="onnx",
        params=Fp16Params,
        run=run,
        requires=("onnxruntime",),
    )
)
