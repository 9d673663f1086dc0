"""``quantize.half`` — a torch.export program in float16 or bfloat16, for torch on GPUs (and bf16 CPUs).

The weights are converted and the program re-exported behind a thin wrapper that casts floating-point inputs
to the half type and outputs back to float32, so callers keep feeding and reading float32. The job then
measures it with torch on the target device: on ``cuda`` this is the fp16/bf16 baseline people script by hand
(``model.half().cuda()``), to compare with TensorRT or ONNX Runtime's fp16.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register


class HalfParams(PassParams):
    dtype: Literal["float16", "bfloat16"] = Field(
        default="float16", description="float16 for GPUs' tensor cores; bfloat16 keeps float32's range (no "
        "overflow) and also runs fast on CPUs with AVX-512 BF16/AMX.")


def run(ctx: PassContext, params: HalfParams) -> PassResult:
    import torch

    from workers.formats import load_program
    from workers.passes.torch_models import reexport

    dtype = getattr(torch, params.dtype)

    class Half(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner.to(dtype)

        def forward(self, *inputs: torch.Tensor):
            out = self.inner(*(x.to(dtype) if x.is_floating_point() else x for x in inputs))
            if isinstance(out, torch.Tensor):
                return out.float()
            return tuple(o.float() if o.is_floating_point() else o for o in out)

    module = load_program(ctx.model_path).module()
    converted = sum(p.numel() for p in module.parameters() if p.is_floating_point())
    program = reexport(Half(module), ctx, varargs=True)
    out = ctx.work_dir / f"model.{params.dtype}.pt2"
    torch.export.save(program, str(out))
    ctx.log(f"{converted} parameters converted to {params.dtype}; inputs and outputs stay float32")
    return PassResult(out, "torch_export", metrics={"dtype": params.dtype, "converted_parameters": converted},
                      metadata={"runtime": "torch", "precision": params.dtype})


SPEC = register(
    PassSpec(
        name="quantize.half",
        description="Convert a torch.export program to float16 or bfloat16 weights and compute, float32 I/O "
                    "(half the size; fast on GPUs, bf16 also on recent CPUs).",
        accepts=("torch_export",),
        produces="torch_export",
        params=HalfParams,
        run=run,
        requires=("torch",),
    )
)
