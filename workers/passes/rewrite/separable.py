"""``rewrite.separable`` — replace standard k×k convolutions by a depthwise k×k + pointwise 1×1 pair.

The classic "more efficient structure" rewrite (MobileNet's building block) applied to a trained network. A
convolution ``W [C_out, C_in, k, k]`` is replaced by a depthwise convolution with ``rank`` filters per input
channel followed by a 1×1 convolution, initialised by a truncated SVD per input channel: for each input
channel i, the matrix ``W[:, i]`` reshaped to ``[C_out, k·k]`` is approximated by its top ``rank`` singular
triplets ``σ u vᵀ``; the depthwise filter gets ``√σ·v`` (as k×k) and the pointwise column ``√σ·u``. The pair then
computes exactly the rank-``rank`` approximation of every ``W[:, i]``, so the error before fine-tuning is the
truncated SVD's (reported as the relative Frobenius error per layer). Parameters go from ``C_out·C_in·k²`` to
``rank·C_in·k² + C_out·rank·C_in`` (MACs likewise, per output pixel); layers where that would not be smaller,
grouped or 1×1 convolutions, and those with fewer than ``min_in_channels`` inputs (a stem convolution on
image channels loses most) are left alone and reported.

Works on torch.export programs: the ATen graph is rewritten, re-exported with the input's dynamic dimensions,
fine-tuned on the ``training`` dataset when ``finetune`` is given (strongly advised: a rank-1 factorization of
a trained kernel loses accuracy), and saved as a ``.pt2``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register
from workers.passes.training.loop import TrainingParams, cannot_train


class SeparableParams(PassParams):
    rank: int = Field(default=1, ge=1, le=16, description="Depthwise filters per input channel (the depth "
                      "multiplier), i.e. singular triplets kept per input channel.")
    min_in_channels: int = Field(default=8, ge=1, description="Leave convolutions with fewer input channels alone.")
    finetune: TrainingParams | None = Field(default=None, description="Fine-tune on the `training` dataset after "
                                            "the rewrite.")


def factorize(weight: Any, rank: int) -> tuple[Any, Any, float]:
    """(depthwise [C_in·rank, 1, k, k], pointwise [C_out, C_in·rank, 1, 1], relative error) for a conv weight."""
    import torch

    weight = weight.detach()
    c_out, c_in, kh, kw = weight.shape
    u, s, vh = torch.linalg.svd(weight.double().permute(1, 0, 2, 3).reshape(c_in, c_out, kh * kw),
                                full_matrices=False)
    root = s[:, :rank].sqrt()  # [C_in, rank]
    depthwise = (root[:, :, None] * vh[:, :rank, :]).reshape(c_in * rank, 1, kh, kw)
    pointwise = (u[:, :, :rank] * root[:, None, :]).permute(1, 0, 2).reshape(c_out, c_in * rank, 1, 1)
    approx = torch.einsum("irk,oir->oik", depthwise.reshape(c_in, rank, kh * kw),
                          pointwise.reshape(c_out, c_in, rank))
    error = float((approx - weight.double().reshape(c_out, c_in, -1)).norm() / weight.double().norm())
    return depthwise.to(weight.dtype), pointwise.to(weight.dtype), error


def rewrite(gm: Any, params: SeparableParams) -> dict[str, Any]:
    """Rewrite ``gm`` (an ``ExportedProgram.module()``) in place; the report per convolution."""
    import torch

    conv = torch.ops.aten.conv2d.default
    rewritten, left_alone = [], []
    for index, node in enumerate(list(gm.graph.nodes)):
        if node.op != "call_function" or node.target != conv or node.args[1].op != "get_attr":
            continue
        x, weight_node, bias, *rest = node.args
        stride, padding, dilation, groups = (list(rest) + [[1, 1], [0, 0], [1, 1], 1][len(rest):])
        weight = gm.get_parameter(weight_node.target)
        c_out, c_in, kh, kw = weight.shape
        name = weight_node.target
        before = c_out * c_in * kh * kw
        after = params.rank * c_in * (kh * kw + c_out)
        reason = ("grouped" if groups != 1 else "1×1" if kh * kw == 1 else
                  f"fewer than {params.min_in_channels} input channels" if c_in < params.min_in_channels else
                  "the pair would not be smaller" if after >= before else None)
        if reason:
            left_alone.append({"layer": name, "reason": reason})
            continue
        depthwise, pointwise, error = factorize(weight, params.rank)
        prefix = f"separable{index}"
        gm.register_parameter(f"{prefix}_depthwise", torch.nn.Parameter(depthwise))
        gm.register_parameter(f"{prefix}_pointwise", torch.nn.Parameter(pointwise))
        with gm.graph.inserting_before(node):
            d = gm.graph.get_attr(f"{prefix}_depthwise")
            p = gm.graph.get_attr(f"{prefix}_pointwise")
            spatial = gm.graph.call_function(conv, (x, d, None, stride, padding, dilation, c_in))
            mixed = gm.graph.call_function(conv, (spatial, p, bias, [1, 1], [0, 0], [1, 1], 1))
        node.replace_all_uses_with(mixed)
        gm.graph.erase_node(node)
        rewritten.append({"layer": name, "kernel": [kh, kw], "in": c_in, "out": c_out, "params_before": before,
                          "params_after": after, "relative_error": round(error, 4)})
    gm.graph.eliminate_dead_code()
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for item in rewritten:  # the replaced kernels, unless something else still reads them
        if item["layer"] not in used:
            owner, _, leaf = item["layer"].rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, leaf)
    gm.recompile()
    return {"rewritten": rewritten, "left_alone": left_alone}


def run(ctx: PassContext, params: SeparableParams) -> PassResult:
    import torch

    from workers.formats import load_program
    from workers.passes.pruning.structured import macs
    from workers.passes.torch_models import TorchModel, reexport
    from workers.passes.training.finetune import train

    gm = load_program(ctx.model_path).module()
    one = tuple(torch.from_numpy(v) for v in ctx.example_inputs(1).values())
    params_before, macs_before = sum(p.numel() for p in gm.parameters()), macs(gm, one)
    report = rewrite(gm, params)
    if not report["rewritten"]:
        reasons = "; ".join(f"{g['layer']}: {g['reason']}" for g in report["left_alone"])
        raise ValueError(f"no convolution could be rewritten: {reasons or 'the model has no conv2d'}")
    out = ctx.work_dir / "model.pt2"
    torch.export.save(reexport(gm, ctx), str(out))
    model = TorchModel(out, "torch_export")
    metrics = {**report, "params_before": params_before, "macs_before": macs_before}
    if params.finetune:
        metrics["training"] = train(ctx, model.module, model.weights(), params.finetune)
        model.save(out)
    metrics["params_after"] = sum(p.numel() for p in model.module.parameters())
    metrics["macs_after"] = macs(model.module, one)
    ctx.log(f"{len(report['rewritten'])} convolution(s) made separable: parameters {params_before} → "
            f"{metrics['params_after']}, MACs {macs_before} → {metrics['macs_after']}; relative errors before "
            "fine-tuning " + ", ".join(f"{r['layer']} {r['relative_error']:.3f}" for r in report["rewritten"]))
    return PassResult(out, "torch_export", metrics=metrics)


def check(params: SeparableParams, source_format: str, datasets: set[str]) -> str | None:
    return cannot_train("fine-tuning", source_format, datasets) if params.finetune else None


SPEC = register(
    PassSpec(
        name="rewrite.separable",
        description="Replace k×k convolutions by depthwise k×k + pointwise 1×1 pairs initialised by a per-channel "
                    "SVD of the kernel, optionally fine-tuned; torch.export programs.",
        accepts=("torch_export",),
        produces="torch_export",
        params=SeparableParams,
        run=run,
        requires=("torch",),
        check=check,
    )
)
