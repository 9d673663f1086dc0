"""``lowrank.svd`` — factorize weight matrices into two thinner layers by truncated SVD (ONNX graph rewrite).

- ``MatMul(x, W)`` with a constant ``W [in, out]`` → ``MatMul(MatMul(x, A [in, r]), B [r, out])``.
- ``Gemm`` with a constant weight → the same two MatMuls (transposes folded in) and an ``Add`` of the bias.
- ``Conv`` (groups 1) with a ``k×k`` kernel ``W [out, in, k, k]``, seen as the matrix ``[out, in·k·k]`` →
  ``Conv(in → r, k×k)`` with the original strides, padding and dilation, then a ``1×1 Conv(r → out)`` holding
  the bias.

``W ≈ U_r Σ_r V_rᵀ`` is split as ``(U_r Σ_r^½)(Σ_r^½ V_rᵀ)``. The rank of each layer keeps ``energy`` of the
squared singular values, or gives ``ratio`` of its parameters; a layer is rewritten only when that saves
parameters (``r·(m+n) < m·n``) and it has at least ``min_params`` weights. Torch models reach this pass
through an inserted ``export.onnx``; fine-tuning afterwards needs the torch form, so recover accuracy by
choosing a higher energy, or factorize before exporting in your own code.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register


class LowRankParams(PassParams):
    rank_by: Literal["energy", "ratio"] = Field(
        default="ratio", description="Choose each rank by parameter ratio, or by singular-value energy kept."
    )
    energy: float = Field(default=0.95, gt=0, le=1, description="Share of Σσ² kept (rank_by=energy).")
    ratio: float = Field(default=0.5, gt=0, lt=1, description="Parameters kept per layer (rank_by=ratio).")
    min_params: int = Field(default=4096, ge=0, description="Leave layers with fewer weights than this alone.")
    op_types: list[Literal["MatMul", "Gemm", "Conv"]] = Field(
        default_factory=lambda: ["MatMul", "Gemm", "Conv"], min_length=1, description="Layer kinds to factorize."
    )

    @model_validator(mode="after")
    def _unique(self) -> LowRankParams:
        if len(set(self.op_types)) != len(self.op_types):
            raise ValueError("op_types must not repeat")
        return self


def choose_rank(singular: Any, rows: int, cols: int, params: LowRankParams) -> int:
    import numpy as np

    if params.rank_by == "energy":
        cumulative = np.cumsum(singular**2) / max(float(np.sum(singular**2)), 1e-30)
        return int(np.searchsorted(cumulative, params.energy - 1e-12) + 1)
    return max(1, int(params.ratio * rows * cols / (rows + cols)))


def factorize(matrix: Any, params: LowRankParams) -> tuple[Any, Any, int] | None:
    """``(left [m, r], right [r, n], r)`` with ``left @ right ≈ matrix``, or None when it would not save."""
    import numpy as np

    rows, cols = matrix.shape
    u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    rank = choose_rank(s, rows, cols, params)
    if rank * (rows + cols) >= rows * cols:
        return None
    root = np.sqrt(s[:rank])
    return ((u[:, :rank] * root).astype(matrix.dtype), (root[:, None] * vt[:rank]).astype(matrix.dtype), rank)


def run(ctx: PassContext, params: LowRankParams) -> PassResult:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from workers.passes.onnx_graph import replace_nodes

    model = onnx.load(str(ctx.model_path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes, layers = [], {}
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = numpy_helper.to_array(inits[node.input[1]]) if len(node.input) > 1 and node.input[1] in inits \
            else None
        name = node.name or node.output[0]
        replaced = None
        if (weight is not None and node.op_type in params.op_types and weight.dtype.kind == "f"
                and weight.size >= params.min_params):
            if node.op_type == "MatMul" and weight.ndim == 2:
                replaced = _matmul(node, name, weight, None, params)
            elif (node.op_type == "Gemm" and not attrs.get("transA", 0) and attrs.get("alpha", 1.0) == 1.0
                  and attrs.get("beta", 1.0) == 1.0):
                matrix = weight.T if attrs.get("transB", 0) else weight
                bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
                replaced = _matmul(node, name, np.ascontiguousarray(matrix), bias, params)
            elif node.op_type == "Conv" and weight.ndim == 4 and attrs.get("group", 1) == 1:
                replaced = _conv(node, name, weight, attrs, params)
        if replaced is None:
            new_nodes.append(node)
            continue
        nodes, tensors, rank, before, after = replaced
        new_nodes.extend(nodes)
        graph.initializer.extend(tensors)
        layers[name] = {"op": node.op_type, "rank": rank, "params_before": before, "params_after": after}
    if not layers:
        raise ValueError("no layer could be factorized with fewer parameters: lower energy/ratio or min_params")
    replace_nodes(graph, new_nodes)
    out = ctx.work_dir / "model.lowrank.onnx"
    onnx.save(model, str(out))
    before = sum(v["params_before"] for v in layers.values())
    after = sum(v["params_after"] for v in layers.values())
    ctx.log(f"factorized {len(layers)} layer(s): {before} → {after} weights ({after / before:.2f}×)")
    return PassResult(out, "onnx", metrics={"layers": layers, "params_before": before, "params_after": after,
                                            "factorized_layers": len(layers)})


def _matmul(node, name: str, matrix, bias: str | None, params: LowRankParams):
    from onnx import helper, numpy_helper

    found = factorize(matrix, params)
    if found is None:
        return None
    left, right, rank = found
    a, b, mid = f"{name}__lowrank_a", f"{name}__lowrank_b", f"{name}__lowrank_mid"
    out = node.output[0] if bias is None else f"{name}__lowrank_out"
    nodes = [helper.make_node("MatMul", [node.input[0], a], [mid], name=f"{name}_lowrank0"),
             helper.make_node("MatMul", [mid, b], [out], name=f"{name}_lowrank1")]
    if bias is not None:
        nodes.append(helper.make_node("Add", [out, bias], [node.output[0]], name=f"{name}_lowrank_bias"))
    tensors = [numpy_helper.from_array(left, a), numpy_helper.from_array(right, b)]
    return nodes, tensors, rank, matrix.size, left.size + right.size


def _conv(node, name: str, weight, attrs: dict, params: LowRankParams):
    from onnx import helper, numpy_helper

    out_ch, in_ch, kh, kw = weight.shape
    found = factorize(weight.reshape(out_ch, in_ch * kh * kw), params)
    if found is None:
        return None
    left, right, rank = found
    first_w = right.reshape(rank, in_ch, kh, kw)
    second_w = left.reshape(out_ch, rank, 1, 1)
    a, b, mid = f"{name}__lowrank_a", f"{name}__lowrank_b", f"{name}__lowrank_mid"
    spatial = {k: v for k, v in attrs.items() if k in ("strides", "pads", "dilations", "auto_pad", "kernel_shape")}
    spatial.pop("kernel_shape", None)
    nodes = [helper.make_node("Conv", [node.input[0], a], [mid], name=f"{name}_lowrank0", **spatial),
             helper.make_node("Conv", [mid, b, *node.input[2:3]], [node.output[0]], name=f"{name}_lowrank1")]
    tensors = [numpy_helper.from_array(first_w, a), numpy_helper.from_array(second_w, b)]
    return nodes, tensors, rank, weight.size, first_w.size + second_w.size


SPEC = register(
    PassSpec(
        name="lowrank.svd",
        description="Factorize MatMul/Gemm/Conv weights into two thinner layers by truncated SVD.",
        accepts=("onnx",),
        produces="onnx",
        params=LowRankParams,
        run=run,
        requires=("onnxruntime",),
    )
)
