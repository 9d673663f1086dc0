"""``export.onnx`` — a TorchScript module or a torch.export program to a single-file ONNX model.

TorchScript goes through torch's TorchScript-based exporter; a torch.export program through the dynamo
exporter (``torch.onnx.export(ExportedProgram, dynamo=True)``), which keeps its dynamic dimensions. Dynamic
dimensions get the names of the uploaded model's specs (``batch``, …). The export is verified: torch and
ONNX Runtime run the same generated inputs and must agree within ``tolerance``, or the step fails.
"""

from __future__ import annotations

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register


class OnnxExportParams(PassParams):
    opset: int = Field(default=18, ge=14, le=21, description="ONNX opset to target.")
    dynamic_batch: bool = Field(
        default=True, description="Keep dimensions that are dynamic in the model dynamic (batch, sequence) "
        "rather than fixing them to the verification input's sizes."
    )
    tolerance: float = Field(
        default=1e-3, gt=0, description="Largest allowed |torch − onnxruntime| / max(1, |torch|) when verifying."
    )


def run(ctx: PassContext, params: OnnxExportParams) -> PassResult:
    import onnx
    import onnxruntime
    import torch

    from workers.formats import load_program, load_torch
    from workers.metrics import max_relative_error

    feeds = ctx.example_inputs(2)
    args = tuple(torch.from_numpy(feeds[s["name"]]) for s in ctx.inputs)
    in_names = [s["name"] for s in ctx.inputs]
    out_names = [s["name"] for s in ctx.outputs]
    out = ctx.work_dir / "model.onnx"
    if ctx.model_format == "torchscript":
        module = load_torch(ctx.model_path, "torchscript")
        axes = {s["name"]: {i: d for i, d in enumerate(s["shape"]) if isinstance(d, str)}
                for s in [*ctx.inputs, *ctx.outputs]} if params.dynamic_batch else None
        torch.onnx.export(module, args, str(out), input_names=in_names, output_names=out_names,
                          dynamic_axes=axes, opset_version=params.opset, dynamo=False, do_constant_folding=True)
        exporter = "torchscript"
    else:
        program = load_program(ctx.model_path)
        module = program.module()
        onnx_program = torch.onnx.export(program, args, input_names=in_names, output_names=out_names,
                                         dynamo=True, opset_version=params.opset, verbose=False)
        onnx_program.save(str(out), external_data=False)
        exporter = "dynamo"
    model = onnx.load(str(out))
    _rename_dynamic_dims(model, ctx.inputs + ctx.outputs, fix=not params.dynamic_batch, feeds=feeds)
    onnx.save(model, str(out))
    ctx.check_cancelled()

    with torch.no_grad():
        result = module(*args)
    expected = [t.detach().numpy() for t in ([result] if isinstance(result, torch.Tensor) else result)]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v for k, v in feeds.items() if k in in_names})
    error = max_relative_error(expected, got)
    if error > params.tolerance:
        raise ValueError(f"the exported model disagrees with torch: relative error {error:.3g} > {params.tolerance}")
    ctx.log(f"exported with the {exporter} exporter at opset {params.opset}; verified, max relative error "
            f"{error:.2e}")
    return PassResult(out, "onnx", metrics={"exporter": exporter, "opset": params.opset, "max_rel_error": error},
                      metadata={"runtime": "onnxruntime", "torch": torch.__version__, "opset": params.opset})


def _rename_dynamic_dims(model, specs, fix: bool, feeds) -> None:
    """Give dynamic dimensions the spec's names (the dynamo exporter calls them s0, s77…), or fix them."""
    wanted = {s["name"]: s["shape"] for s in specs}
    for value in [*model.graph.input, *model.graph.output]:
        shape = wanted.get(value.name)
        if shape is None:
            continue
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if i < len(shape) and isinstance(shape[i], str):
                if fix and value.name in feeds:
                    dim.dim_value = feeds[value.name].shape[i]
                elif not fix:
                    dim.dim_param = shape[i]


SPEC = register(
    PassSpec(
        name="export.onnx",
        description="Export a TorchScript module or torch.export program to ONNX, verified against torch.",
        accepts=("torchscript", "torch_export"),
        produces="onnx",
        params=OnnxExportParams,
        run=run,
        requires=("torch", "onnxruntime", "onnxscript"),
    )
)
