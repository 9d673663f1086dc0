"""``quantize.dynamic`` — int8 dynamic quantization with ONNX Runtime.

Weights are stored as int8; activations are quantized on the fly at run time. Best for MatMul-heavy models
(transformers, MLPs, RNNs). Convolutions are left in float by default: ONNX Runtime's dynamic ConvInteger is
about 8-10x slower than float convolutions on CPUs (measured in ../shared/FACTS.md); use ``quantize.static``
for CNNs, or name ``Conv`` in ``op_types`` explicitly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register
from workers.passes.quantization import reduce_range, reduce_range_field

DEFAULT_OP_TYPES = ("MatMul", "Gemm", "Attention", "LSTM", "Gather", "EmbedLayerNormalization")


class DynamicQuantizeParams(PassParams):
    per_channel: bool = Field(
        default=True, description="One scale per output channel of each weight (more accurate than per tensor)."
    )
    op_types: list[str] | None = Field(
        default=None,
        min_length=1,
        description="ONNX op types to quantize; default MatMul, Gemm (rewritten as MatMul), Attention, LSTM, "
        "Gather, EmbedLayerNormalization. Conv is left float unless named.",
    )
    weight_type: Literal["int8", "uint8"] = Field(default="int8", description="Storage type of the weights.")
    reduce_range: bool | None = reduce_range_field()
    exclude_nodes: list[str] = Field(default_factory=list, description="Node names to keep in float.")


def run(ctx: PassContext, params: DynamicQuantizeParams) -> PassResult:
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from workers.passes.onnx_graph import gemm_to_matmul

    op_types = list(params.op_types or DEFAULT_OP_TYPES)
    source = ctx.model_path
    if "Gemm" in op_types:
        model = onnx.load(str(source))
        if rewritten := gemm_to_matmul(model):
            ctx.log(f"rewrote {rewritten} constant-weight Gemm node(s) as MatMul+Add so they can be quantized")
            source = ctx.work_dir / "gemm_as_matmul.onnx"
            onnx.save(model, str(source))
    seven_bits = reduce_range(ctx, params.reduce_range)
    out = ctx.work_dir / "model.int8.onnx"
    quantize_dynamic(
        source,
        out,
        per_channel=params.per_channel,
        reduce_range=seven_bits,
        weight_type=QuantType.QInt8 if params.weight_type == "int8" else QuantType.QUInt8,
        op_types_to_quantize=[t for t in op_types if t != "Gemm"],
        nodes_to_exclude=params.exclude_nodes,
        # after ONNX Runtime's fusions, shape inference cannot type the outputs of contrib ops (Attention,
        # SkipLayerNormalization…): they are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    quantized = onnx.load(str(out), load_external_data=False)
    counts: dict[str, int] = {}
    for node in quantized.graph.node:
        if node.op_type in {"MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM",
                            "QAttention", "DynamicQuantizeLinear", "DequantizeLinear"}:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    ctx.log(f"quantized nodes: {counts or 'none'}")
    return PassResult(out, "onnx", metrics={"quantized_nodes": counts},
                      metadata={"runtime": "onnxruntime", "onnxruntime": onnxruntime.__version__,
                                "reduce_range": seven_bits})


SPEC = register(
    PassSpec(
        name="quantize.dynamic",
        description="Int8 dynamic quantization (ONNX Runtime): int8 weights, activations quantized at run time.",
        accepts=("onnx",),
        produces="onnx",
        params=DynamicQuantizeParams,
        run=run,
        requires=("onnxruntime",),
    )
)
