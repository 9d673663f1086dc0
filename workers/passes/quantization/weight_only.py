"""``quantize.weight_only`` — block-wise 4- or 8-bit weights for MatMul-heavy models (``MatMulNBits``).

Each block of ``block_size`` weights along the input dimension gets its own scale (and zero point when
asymmetric); activations stay float. Cuts the size of linear layers to about 1/7 (4-bit) or 1/4 (8-bit);
speed depends on the CPU (``accuracy_level`` 4 lets ONNX Runtime compute in int8 on x86).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register


class WeightOnlyParams(PassParams):
    bits: Literal[4, 8] = Field(default=4, description="Bits per weight.")
    block_size: Literal[16, 32, 64, 128, 256] = Field(default=32, description="Weights sharing one scale.")
    symmetric: bool = Field(default=True, description="Symmetric blocks (no zero point).")
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = Field(
        default=4, description="Lowest compute precision ONNX Runtime may use: 4 = int8 (fastest on x86), "
        "0/None = same as the input."
    )
    embeddings: bool = Field(
        default=True, description="Also block-quantize embedding tables (Gather); ONNX Runtime supports it at 4 bits."
    )
    exclude_nodes: list[str] = Field(default_factory=list, description="MatMul node names to keep float.")


def run(ctx: PassContext, params: WeightOnlyParams) -> PassResult:
    import onnx
    import onnx.version_converter
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from workers.passes.onnx_graph import gemm_to_matmul

    model = onnx.load(str(ctx.model_path))
    if rewritten := gemm_to_matmul(model):
        ctx.log(f"rewrote {rewritten} constant-weight Gemm node(s) as MatMul+Add")
    embeddings = params.embeddings and params.bits == 4
    if params.embeddings and not embeddings:
        ctx.log("embedding tables stay float: ONNX Runtime block-quantizes Gather at 4 bits only")
    if embeddings and _opset(model) < 21:
        # int4 tables need opset 21; ONNX Runtime's quantizer would only relabel the opset, leaving ops whose
        # signature changed (ReduceMean's axes, …) invalid, so convert the model properly first.
        try:
            model = onnx.version_converter.convert_version(model, 21)
        except Exception as exc:
            embeddings = False
            ctx.log(f"embedding tables stay float: converting to opset 21 failed ({str(exc)[:120]})")
    quantizer = MatMulNBitsQuantizer(model, bits=params.bits, block_size=params.block_size,
                                     is_symmetric=params.symmetric, accuracy_level=params.accuracy_level,
                                     nodes_to_exclude=params.exclude_nodes,
                                     op_types_to_quantize=("MatMul", "Gather") if embeddings else ("MatMul",),
                                     quant_axes=(("MatMul", 0), ("Gather", 1)))
    quantizer.process()
    out = ctx.work_dir / f"model.w{params.bits}.onnx"
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    nodes = onnx.load(str(out), load_external_data=False).graph.node
    packed = sum(n.op_type == "MatMulNBits" for n in nodes)
    tables = sum(n.op_type == "GatherBlockQuantized" for n in nodes)
    if not packed:
        raise ValueError("no MatMul with a constant weight could be quantized: weight-only quantization "
                         "needs MatMul/Gemm layers whose input dimension is at least the block size")
    ctx.log(f"{packed} MatMul node(s) now MatMulNBits and {tables} embedding table(s) GatherBlockQuantized, "
            f"{params.bits}-bit weights in blocks of {params.block_size}")
    return PassResult(out, "onnx", metrics={"matmulnbits_nodes": packed, "quantized_embeddings": tables,
                                            "bits": params.bits},
                      metadata={"runtime": "onnxruntime", "weights": f"int{params.bits} block {params.block_size}"})


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


SPEC = register(
    PassSpec(
        name="quantize.weight_only",
        description="Block-wise 4/8-bit weight quantization of MatMul layers (MatMulNBits); activations float.",
        accepts=("onnx",),
        produces="onnx",
        params=WeightOnlyParams,
        run=run,
        requires=("onnxruntime",),
    )
)
