"""``quantize.static`` — int8 QDQ quantization calibrated on the job's ``calibration`` dataset.

Activations are quantized with ranges measured on real data (``minmax``, ``entropy`` or ``percentile``),
weights per channel by default; the result is a QDQ model that ONNX Runtime runs with int8 kernels (uint8
activations × int8 weights, the fast path on x86 with VNNI). The model is pre-processed first (ONNX Runtime's
shape inference and graph clean-up) when that succeeds.

Transformers collapse when everything is quantized statically (MiniLM: cosine 0.40 to fp32, FACTS.md); the
options that keep them usable are ``op_types=["MatMul"]``, ``constant_weights_only`` (leave activation ×
activation products such as attention scores float) and ``exclude_after=["Erf", "Gelu"]`` (leave the
GELU-fed down-projections float, whose inputs have long-tailed ranges).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register
from workers.passes.quantization import reduce_range, reduce_range_field


class StaticQuantizeParams(PassParams):
    method: Literal["minmax", "entropy", "percentile"] = Field(
        default="minmax", description="How activation ranges are chosen from the calibration data."
    )
    percentile: float = Field(
        default=99.999, gt=90, le=100, description="For method=percentile: the percentile of |x| kept in range."
    )
    per_channel: bool = Field(default=True, description="One weight scale per output channel.")
    op_types: list[str] | None = Field(
        default=None, min_length=1, description="ONNX op types to quantize; default every type ONNX Runtime can."
    )
    exclude: list[str] = Field(
        default_factory=list, description="Node names or op types to keep in float (e.g. a sensitive last layer)."
    )
    exclude_after: list[str] = Field(
        default_factory=list, description="Keep float every node fed by one of these op types, looking through "
        "element-wise ops (e.g. Erf, Gelu: the projection after a GELU)."
    )
    constant_weights_only: bool = Field(
        default=False, description="Quantize MatMul/Gemm only where one operand is a constant weight."
    )
    activation_type: Literal["uint8", "int8"] = Field(
        default="uint8", description="Activation type; uint8 with int8 weights is the fast x86 path."
    )
    reduce_range: bool | None = reduce_range_field()
    calibration_samples: int = Field(default=256, ge=1, le=100_000, description="Samples used to calibrate.")
    calibration_batch_size: int = Field(default=16, ge=1, le=1024, description="Samples per calibration run.")
    preprocess: bool = Field(default=True, description="Run ONNX Runtime's quantization pre-processing first.")


class NpzCalibration:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over an .npz, cancellable between batches."""

    def __init__(self, ctx: PassContext, params: StaticQuantizeParams) -> None:
        self.arrays = ctx.dataset_inputs("calibration", params.calibration_samples)
        first = ctx.inputs[0]["shape"][0] if ctx.inputs and ctx.inputs[0]["shape"] else None
        self.batch = first if isinstance(first, int) and first > 0 else params.calibration_batch_size
        self.samples = len(next(iter(self.arrays.values())))
        self.samples -= self.samples % self.batch if isinstance(first, int) else 0
        self.position = 0
        self.ctx = ctx

    def get_next(self) -> dict[str, Any] | None:
        self.ctx.check_cancelled()
        if self.position >= self.samples:
            return None
        start, self.position = self.position, self.position + self.batch
        self.ctx.progress(0.9 * self.position / max(self.samples, 1))
        return {name: values[start:self.position] for name, values in self.arrays.items()}

    def rewind(self) -> None:
        self.position = 0


def excluded_nodes(model: Any, params: StaticQuantizeParams) -> list[str]:
    """Names of the nodes ``exclude``, ``exclude_after`` and ``constant_weights_only`` keep in float."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    names, after = set(params.exclude), set(params.exclude_after)
    out = []
    for node in model.graph.node:
        fed = after and node.op_type not in ELEMENTWISE and _fed_by(node, after, producer)
        if (node.name in names or node.op_type in names or fed
                or (params.constant_weights_only and node.op_type in ("MatMul", "Gemm")
                    and not any(i in constants for i in node.input[:2]))):
            out.append(node.name)
    return out


# Element-wise ops looked through when asking what feeds a node: GELU exported from torch is
# Div → Erf → Add → Mul → Mul, so the MatMul after it is fed by a Mul that Erf feeds.
ELEMENTWISE = {"Mul", "Add", "Div", "Sub", "Cast", "Identity"}


def _fed_by(node: Any, types: set[str], producer: dict[str, Any], depth: int = 4) -> bool:
    frontier = [producer[i] for i in node.input if i in producer]
    for _ in range(depth):
        if any(p.op_type in types for p in frontier):
            return True
        frontier = [producer[i] for p in frontier if p.op_type in ELEMENTWISE for i in p.input if i in producer]
    return False


def name_nodes(model: Any) -> None:
    """Give unnamed nodes stable names, so that exclusions can refer to them."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


def run(ctx: PassContext, params: StaticQuantizeParams) -> PassResult:
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = ctx.model_path
    if params.preprocess:
        prepared = ctx.work_dir / "preprocessed.onnx"
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
            source = prepared
        except Exception as exc:  # shape inference fails on some graphs; quantizing without it still works
            ctx.log(f"pre-processing skipped: {str(exc).splitlines()[0][:200]}")
    model = onnx.load(str(source))
    name_nodes(model)
    exclude = excluded_nodes(model, params)
    named = ctx.work_dir / "named.onnx"
    onnx.save(model, str(named))
    reader = NpzCalibration(ctx, params)
    seven_bits = reduce_range(ctx, params.reduce_range)
    out = ctx.work_dir / "model.int8.onnx"
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[params.method]
    quantize_static(
        named, out, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=params.op_types,
        per_channel=params.per_channel, reduce_range=seven_bits, calibrate_method=method, nodes_to_exclude=exclude,
        activation_type=QuantType.QUInt8 if params.activation_type == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"CalibPercentile": params.percentile, "WeightSymmetric": True,
                       "ActivationSymmetric": params.activation_type == "int8"})
    ctx.progress(1.0)
    quantized = onnx.load(str(out), load_external_data=False)
    dq = sum(n.op_type == "DequantizeLinear" for n in quantized.graph.node)
    ctx.log(f"calibrated on {reader.samples} samples ({params.method}); {dq} DequantizeLinear nodes; "
            f"{len(exclude)} node(s) kept float")
    return PassResult(out, "onnx", metrics={"calibration_samples": reader.samples, "method": params.method,
                                            "dequantize_nodes": dq, "kept_float": len(exclude)},
                      metadata={"runtime": "onnxruntime", "onnxruntime": onnxruntime.__version__,
                                "quant_format": "QDQ", "reduce_range": seven_bits})


SPEC = register(
    PassSpec(
        name="quantize.static",
        description="Int8 QDQ quantization calibrated on the calibration dataset (minmax, entropy, percentile).",
        accepts=("onnx",),
        produces="onnx",
        params=StaticQuantizeParams,
        run=run,
        requires=("onnxruntime",),
        datasets=("calibration",),
    )
)
