"""``engine.openvino`` — convert to OpenVINO IR for CPUs, optionally int8 with NNCF, compiled and checked.

ONNX files and torch.export programs are converted with ``openvino.convert_model``; ``int8`` quantizes the
IR with NNCF post-training quantization calibrated on the ``calibration`` dataset. For graphs with attention
(``Softmax`` or the ``ScaledDotProductAttention`` that OpenVINO's ONNX frontend makes of it) NNCF's transformer
scheme is used, with SmoothQuant off unless asked for, and ``float_after`` keeps the MatMuls fed by the named
op types (e.g. ``Gelu``) in float: on MiniLM-L6 the plain scheme collapses (cosine 0.61), the transformer
scheme with SmoothQuant reaches 0.982, without it 0.993, and with the GELU-fed projections float 0.996
(docs/benchmarks.md). The artifact is a zip of ``model.xml``/``model.bin`` plus ``tensorpress.json``
naming the inference precision it is meant to run with: OpenVINO's CPU default is bf16 on CPUs that have it
(this project's machines: MiniLM-L6 9.9 ms in bf16 vs 17.3 ms in f32), so ``precision`` is recorded and the
fidelity check measures exactly that precision.
"""

from __future__ import annotations

import json
import zipfile
from typing import Literal

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register


class OpenVinoParams(PassParams):
    precision: Literal["default", "f32", "bf16", "f16"] = Field(
        default="default", description="Inference precision hint; `default` is the CPU's own choice (bf16 where "
        "the CPU supports it, else f32). Recorded in the artifact."
    )
    int8: bool = Field(default=False, description="Quantize with NNCF post-training int8 (needs calibration data).")
    calibration_samples: int = Field(default=300, ge=1, le=100_000, description="Samples for NNCF calibration.")
    smooth_quant: bool = Field(default=False, description="NNCF's SmoothQuant on transformer MatMuls (moves "
                               "activation outliers into the weights); off by default: it lost accuracy on MiniLM-L6.")
    float_after: list[str] = Field(default_factory=list, description="Keep MatMuls fed by these OpenVINO op types "
                                   "(e.g. Gelu) in float when quantizing to int8.")
    compress_weights_fp16: bool = Field(default=False, description="Store float weights as f16 in the IR.")


def run(ctx: PassContext, params: OpenVinoParams) -> PassResult:
    import openvino as ov

    from workers.runtimes import ov_precision

    if ctx.model_format == "onnx":
        model = ov.convert_model(str(ctx.model_path))
    else:
        from workers.formats import load_program

        model = ov.convert_model(load_program(ctx.model_path))
    int8_metrics: dict[str, object] = {}
    if params.int8:
        import nncf

        arrays = ctx.dataset_inputs("calibration", params.calibration_samples)
        samples = len(next(iter(arrays.values())))
        dataset = nncf.Dataset(range(samples), lambda i: {n: a[i:i + 1] for n, a in arrays.items()})
        ops = {op.get_type_name() for op in model.get_ops()}
        transformer = bool(ops & {"Softmax", "SoftMax", "ScaledDotProductAttention"}) and "MatMul" in ops
        kept = _matmuls_after(model, set(params.float_after))
        options: dict = {"ignored_scope": nncf.IgnoredScope(names=kept)} if kept else {}
        if transformer:
            from nncf.quantization.advanced_parameters import (
                AdvancedQuantizationParameters,
                AdvancedSmoothQuantParameters,
            )

            options["model_type"] = nncf.ModelType.TRANSFORMER
            if not params.smooth_quant:
                options["advanced_parameters"] = AdvancedQuantizationParameters(
                    smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
        model = nncf.quantize(model, dataset, subset_size=samples, **options)
        scheme = f" (transformer scheme, SmoothQuant {'on' if params.smooth_quant else 'off'})" if transformer else ""
        ctx.log(f"NNCF int8 calibrated on {samples} samples{scheme}"
                + (f"; {len(kept)} MatMul(s) kept float" if kept else ""))
        int8_metrics = {"transformer_scheme": transformer, "kept_float": len(kept)}
    ctx.check_cancelled()
    folder = ctx.work_dir / "ir"
    folder.mkdir()
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=params.compress_weights_fp16)
    core = ov.Core()
    config = {} if params.precision == "default" else {"INFERENCE_PRECISION_HINT": params.precision}
    compiled = core.compile_model(str(folder / "model.xml"), "CPU", config)
    resolved = ov_precision(compiled)
    feeds = ctx.example_inputs(1)
    compiled(list(feeds.values()))
    manifest = {"precision": params.precision, "resolved_precision": resolved, "int8": params.int8,
                "openvino": ov.__version__, "device": "CPU", "cpu": core.get_property("CPU", "FULL_DEVICE_NAME")}
    (folder / "tensorpress.json").write_text(json.dumps(manifest))
    out = ctx.work_dir / "model.openvino.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name in ("model.xml", "model.bin", "tensorpress.json"):
            archive.write(folder / name, name)
    ctx.log(f"OpenVINO IR compiled for CPU; inference precision {resolved}" + (" with int8" if params.int8 else ""))
    return PassResult(out, "openvino", metrics={"inference_precision": resolved, "int8": params.int8,
                                                **int8_metrics},
                      metadata={"runtime": "openvino", **manifest})


def _matmuls_after(model, op_types: set[str]) -> list[str]:
    """Names of the MatMuls whose first input comes from an op of ``op_types``."""
    return [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"
            and op.input_value(0).get_node().get_type_name() in op_types]


def check(params: OpenVinoParams, source_format: str, datasets: set[str]) -> str | None:
    if params.int8 and "calibration" not in datasets:
        return "int8 needs a 'calibration' dataset"
    if params.float_after and not params.int8:
        return "float_after applies only to int8"
    return None


SPEC = register(
    PassSpec(
        name="engine.openvino",
        description="Convert to OpenVINO IR for CPUs (optionally NNCF int8), compile and check with the "
                    "OpenVINO runtime; the inference precision (bf16 by default where supported) is recorded.",
        accepts=("onnx", "torch_export"),
        produces="openvino",
        params=OpenVinoParams,
        run=run,
        requires=("openvino",),
        check=check,
    )
)
