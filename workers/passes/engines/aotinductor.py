"""``engine.aotinductor`` — compile a torch.export program ahead of time with TorchInductor (AOTInductor).

``torch._inductor.aoti_compile_and_package`` generates and compiles C++ (CPU, with the machine's compiler) or
CUDA/Triton kernels (GPU workers) into a ``.pt2`` package that ``torch._inductor.aoti_load_package`` runs
without Python model code. The package is loaded back and checked against the program on the same inputs;
it runs only with the torch version and device it was built for, which the artifact records. Dynamic
dimensions of the program stay dynamic.

Batch norms that follow a convolution are folded into it first (w' = w·γ/√(σ²+ε), b' = (b−μ)·γ/√(σ²+ε)+β),
the usual inference rewrite — and a necessary one here: with a dynamic batch dimension, torch 2.13's
AOTInductor miscompiled convolution + batch norm on this project's CPUs (outputs off by ~1.0; static shapes
were right). The check against the program on the same inputs refuses any package that disagrees.
"""

from __future__ import annotations

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register


class AotInductorParams(PassParams):
    max_autotune: bool = Field(default=False, description="Let Inductor benchmark kernel variants (slower build).")
    tolerance: float = Field(default=1e-3, gt=0, description="Largest |eager − compiled| / max(1, |eager|).")


def fold_batch_norms(gm) -> int:
    """Fold ``batch_norm`` (inference mode) into the ``conv2d`` that alone feeds it, in place; returns how many."""
    import torch

    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != torch.ops.aten.batch_norm.default:
            continue
        conv, weight, bias, mean, var = node.args[:5]
        training, eps = node.args[5], node.args[7]
        if (training or getattr(conv, "target", None) != torch.ops.aten.conv2d.default or len(conv.users) != 1
                or any(getattr(a, "op", None) != "get_attr" for a in (weight, bias, mean, var, conv.args[1]))):
            continue
        tensor = {n: _attr(gm, n.target) for n in (weight, bias, mean, var, conv.args[1])}
        scale = tensor[weight] / torch.sqrt(tensor[var] + eps)
        conv_bias = conv.args[2] if len(conv.args) > 2 else None
        old_bias = _attr(gm, conv_bias.target) if conv_bias is not None else torch.zeros_like(tensor[mean])
        new_weight = tensor[conv.args[1]] * scale.reshape(-1, 1, 1, 1)
        new_bias = (old_bias - tensor[mean]) * scale + tensor[bias]
        stem = conv.args[1].target.rsplit(".", 1)[0]
        names = (f"{stem}.folded_weight".replace(".", "_"), f"{stem}.folded_bias".replace(".", "_"))
        gm.register_parameter(names[0], torch.nn.Parameter(new_weight.detach(), requires_grad=False))
        gm.register_parameter(names[1], torch.nn.Parameter(new_bias.detach(), requires_grad=False))
        with gm.graph.inserting_before(conv):
            w_node, b_node = gm.graph.get_attr(names[0]), gm.graph.get_attr(names[1])
        args = list(conv.args) + [None] * (3 - len(conv.args))
        args[1], args[2] = w_node, b_node
        conv.args = tuple(args)
        node.replace_all_uses_with(conv)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return folded


def _attr(gm, target: str):
    owner, _, leaf = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, leaf).detach()


def run(ctx: PassContext, params: AotInductorParams) -> PassResult:
    import torch

    from workers.formats import load_program
    from workers.metrics import max_relative_error
    from workers.passes.torch_models import reexport

    program = load_program(ctx.model_path)
    device = "cuda" if ctx.device == "cuda" else "cpu"
    if device == "cuda":
        program = torch.export.passes.move_to_device_pass(program, "cuda")
    feeds = ctx.example_inputs(2)
    args = tuple(torch.from_numpy(feeds[s["name"]]) for s in ctx.inputs)
    module = program.module()
    if folded := fold_batch_norms(module):
        reference, program = program, reexport(module, ctx)
        ctx.log(f"folded {folded} batch norm(s) into their convolutions")
    else:
        reference = program
    out = ctx.work_dir / "model.aoti.pt2"
    options = {"max_autotune": params.max_autotune}
    torch._inductor.aoti_compile_and_package(program, package_path=str(out), inductor_configs=options)
    ctx.check_cancelled()
    compiled = torch._inductor.aoti_load_package(str(out))
    args = tuple(a.to(device) for a in args)
    with torch.no_grad():
        expected = reference.module()(*args)
        got = compiled(*args)
    def arrays(result):
        return [t.cpu().numpy() for t in ([result] if isinstance(result, torch.Tensor) else result)]

    error = max_relative_error(arrays(expected), arrays(got))
    if error > params.tolerance:
        raise ValueError(f"the compiled package disagrees with the program: relative error {error:.3g}")
    ctx.log(f"compiled for {device}; reloaded and checked, max relative error {error:.2e}")
    return PassResult(out, "aotinductor", metrics={"max_rel_error": error},
                      metadata={"runtime": "aotinductor", "torch": torch.__version__, "device": device,
                                "note": "runs only with this torch version on this kind of device"})


SPEC = register(
    PassSpec(
        name="engine.aotinductor",
        description="Compile a torch.export program ahead of time with TorchInductor into a loadable package.",
        accepts=("torch_export",),
        produces="aotinductor",
        params=AotInductorParams,
        run=run,
        requires=("torch",),
    )
)
