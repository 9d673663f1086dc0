"""Small ONNX graph reads and rewrites shared by passes."""

from __future__ import annotations

from typing import Any


def gemm_to_matmul(model: Any) -> int:
    """Rewrite ``Gemm(A, B_const, C)`` with alpha=beta=1, transA=0 as ``MatMul`` (+ ``Add``), in place.

    ONNX Runtime's integer quantizers handle MatMul but not Gemm, and torch exports every ``nn.Linear`` as
    Gemm with ``transB=1``; without this rewrite those layers would stay float. Returns how many were rewritten.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        w_name = f"{node.input[1]}__matmul"
        graph.initializer.append(numpy_helper.from_array(weight, w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}__matmul" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out],
                                          name=f"{node.name or node.output[0]}_MatMul"))
        if has_bias:
            new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]],
                                              name=f"{node.name or node.output[0]}_Add"))
        rewritten += 1
    if rewritten:
        replace_nodes(graph, new_nodes)
    return rewritten


def layer_weights(model: Any) -> dict[str, tuple[Any, Any]]:
    """The float weights of rank ≥ 2 that Conv, MatMul and Gemm nodes take from an initializer as their second
    input, sorted by name: ``{name: (the first node that takes it, its numpy array)}``."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    found: dict[str, tuple[Any, Any]] = {}
    for node in model.graph.node:
        name = node.input[1] if node.op_type in ("Conv", "MatMul", "Gemm") and len(node.input) > 1 else None
        if name in inits and name not in found:
            array = numpy_helper.to_array(inits[name])
            if array.ndim >= 2 and array.dtype.kind == "f":
                found[name] = (node, array)
    return dict(sorted(found.items()))


def replace_nodes(graph: Any, nodes: list[Any]) -> None:
    """Make ``nodes`` the graph's nodes and drop the initializers nothing uses any more (in place)."""
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def topological_sort(graph: Any) -> None:
    """Order ``graph.node`` so that every node comes after the producers of its inputs (in place).

    Some converters (float16 with ``keep_io_types``) append the casts they insert at the end, which
    ONNX Runtime tolerates but the ONNX checker and other runtimes refuse.
    """
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("the graph has a cycle or an input no node produces")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)
