"""``prune.semi_structured`` — 2:4 sparsity: in every group of four consecutive weights along the input
dimension, the two smallest in magnitude become zero.

This is the pattern NVIDIA's sparse tensor cores (Ampere and newer) run at up to twice the dense throughput,
through TensorRT's sparse tactics (``engine.tensorrt`` with ``sparse_weights``) or cuSPARSELt; on CPUs it
changes nothing but the zeros. The input dimension is a Linear weight's second axis ``[out, in]``, a
convolution's input channels ``[out, in, kh, kw]`` (groups of four channels at each kernel position), an ONNX
MatMul weight's first axis ``[in, out]``. Layers whose input dimension is not a multiple of four are left
alone and reported. The pattern is validated after pruning and after the optional fine-tuning (which keeps
the zeros), and the artifact's metadata says ``sparsity_pattern: 2:4``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register
from workers.passes.training.loop import TrainingParams, cannot_train


class SemiStructuredParams(PassParams):
    min_params: int = Field(default=0, ge=0, description="Leave layers with fewer weights than this alone.")
    finetune: TrainingParams | None = Field(
        default=None, description="Fine-tune on the `training` dataset afterwards, keeping the pattern (torch formats)."
    )


def _grouped(weight: Any, input_axis: int) -> Any:
    """A view of ``weight`` (numpy) as [..., groups, 4] along ``input_axis``."""
    import numpy as np

    moved = np.moveaxis(weight, input_axis, -1)
    return moved.reshape(*moved.shape[:-1], moved.shape[-1] // 4, 4)


def mask_2_4(weight: Any, input_axis: int) -> Any:
    """True where a weight is kept: the two largest magnitudes of each group of four along ``input_axis``."""
    import numpy as np

    groups = _grouped(np.abs(weight), input_axis)
    order = np.argsort(groups, axis=-1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., 2:], True, axis=-1)
    moved_shape = np.moveaxis(weight, input_axis, -1).shape
    return np.moveaxis(keep.reshape(moved_shape), -1, input_axis)


def holds(weight: Any, input_axis: int) -> bool:
    """Every group of four along ``input_axis`` has at least two zeros."""
    return bool(((_grouped(weight, input_axis) == 0).sum(-1) >= 2).all())


def run(ctx: PassContext, params: SemiStructuredParams) -> PassResult:
    if ctx.model_format == "onnx":
        return _run_onnx(ctx, params)
    import torch

    from workers.passes.torch_models import TorchModel
    from workers.passes.training.finetune import train

    model = TorchModel(ctx.model_path, ctx.model_format)
    tensors = model.weights()
    chosen, skipped = _choose({k: (t.detach().numpy(), 1) for k, t in tensors.items()}, params)
    with torch.no_grad():
        for name, (weight, axis) in chosen.items():
            tensors[name].mul_(torch.from_numpy(mask_2_4(weight, axis)).to(tensors[name].dtype))
    training = train(ctx, model.module, tensors, params.finetune) if params.finetune else None
    final = {name: (tensors[name].detach().numpy(), axis) for name, (_, axis) in chosen.items()}
    out = model.save_to(ctx.work_dir)
    return _result(ctx, out, ctx.model_format, final, skipped, training)


def _choose(weights: dict[str, tuple[Any, int]], params: SemiStructuredParams
            ) -> tuple[dict[str, tuple[Any, int]], list[str]]:
    chosen = {k: (w, axis) for k, (w, axis) in weights.items()
              if w.size >= params.min_params and w.shape[axis] % 4 == 0}
    if not chosen:
        raise ValueError("no layer has an input dimension that is a multiple of 4 (and at least min_params "
                         "weights): 2:4 sparsity needs groups of four")
    return chosen, sorted(set(weights) - set(chosen))


def _result(ctx: PassContext, out: Any, fmt: str, weights: dict[str, tuple[Any, int]], skipped: list[str],
            training: dict[str, Any] | None) -> PassResult:
    broken = [name for name, (w, axis) in weights.items() if not holds(w, axis)]
    if broken:
        raise RuntimeError(f"the 2:4 pattern does not hold in {', '.join(broken)}")
    total = sum(w.size for w, _ in weights.values())
    zeros = sum(int((w == 0).sum()) for w, _ in weights.values())
    metrics: dict[str, Any] = {"layers": len(weights), "skipped": skipped, "sparsity": round(zeros / total, 4),
                               "pattern_valid": True}
    if training:
        metrics["training"] = training
    ctx.log(f"2:4 sparsity in {len(weights)} layer(s), {zeros} of {total} weights zero; pattern checked"
            + (f"; left alone (input dimension not a multiple of 4): {', '.join(skipped)}" if skipped else ""))
    return PassResult(out, fmt, metrics=metrics,
                      metadata={"sparsity_pattern": "2:4", "tensorrt": "build with sparse_weights to let TensorRT "
                                "choose sparse tactics (Ampere or newer)"})


def _run_onnx(ctx: PassContext, params: SemiStructuredParams) -> PassResult:
    import onnx
    from onnx import helper, numpy_helper

    from workers.passes.onnx_graph import layer_weights

    model = onnx.load(str(ctx.model_path))
    inits = {i.name: i for i in model.graph.initializer}
    weights: dict[str, tuple[Any, int]] = {}
    for name, (node, weight) in layer_weights(model).items():
        trans_b = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "transB"), 0)
        # Conv [out, in, …] and Gemm with transB [out, in]: axis 1; MatMul and plain Gemm [in, out]: axis 0
        axis = 1 if node.op_type == "Conv" or trans_b else 0
        weights[name] = (weight, axis)
    chosen, skipped = _choose(weights, params)
    final = {}
    for name, (weight, axis) in chosen.items():
        final[name] = ((weight * mask_2_4(weight, axis)).astype(weight.dtype), axis)
        inits[name].CopyFrom(numpy_helper.from_array(final[name][0], name))
    out = ctx.work_dir / "model.onnx"
    onnx.save(model, str(out))
    return _result(ctx, out, "onnx", final, skipped, None)


def check(params: SemiStructuredParams, source_format: str, datasets: set[str]) -> str | None:
    return cannot_train("fine-tuning", source_format, datasets) if params.finetune else None


SPEC = register(
    PassSpec(
        name="prune.semi_structured",
        description="2:4 sparsity along the input dimension of linear, MatMul and convolution weights (what "
                    "sparse tensor cores and TensorRT accelerate), validated; optional fine-tuning keeps it.",
        accepts=("torchscript", "torch_export", "onnx"),
        produces="same",
        params=SemiStructuredParams,
        run=run,
        requires=("torch",),
        check=check,
    )
)
