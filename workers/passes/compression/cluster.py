"""``cluster.weights`` — weight clustering (k-means weight sharing per layer), stored palettized.

Each convolution, linear or MatMul weight (rank ≥ 2, at least ``min_params`` values) is clustered on its own:
1-D k-means with ``clusters`` centroids initialised evenly between its minimum and maximum (deterministic),
every weight replaced by its centroid. Weights that are exactly zero (a pruned model) keep a centroid of their
own fixed at zero, so clustering a sparse model keeps it sparse.

With ``finetune`` and a ``training`` dataset (torch models), training goes on with the assignment fixed:
after every optimizer step each cluster's weights are set to their mean — weight sharing, the centroid
moving with the average update of its members — so every layer still has at most ``clusters`` values.

**Storage (what the artifact is).** The result is an ONNX model whose clustered weights are *palettized*:
cluster indices and a float codebook of ``clusters`` values, expanded by the graph itself into the weight that
feeds the layer (``Gather`` from the codebook). With at most 16 clusters two 4-bit indices share a byte
(unpacked in the graph with integer ``Div``/``Mul``/``Sub``, opset ≥ 13), else one ``uint8`` per weight. Any
ONNX runtime loads it with no custom loader; ONNX Runtime folds the expansion once at session creation, so
the running model is the ordinary float model (same speed) and the file holds half a byte (or one) per
weight instead of four. A torch model is exported first (as ``export.onnx`` does) and the exported weights are
palettized; a weight the exporter changed (e.g. a batch norm folded into a convolution) is clustered again, and
counted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register
from workers.passes.training.loop import TrainingParams, cannot_train


class ClusterParams(PassParams):
    clusters: int = Field(default=16, ge=2, le=256, description="Distinct values per layer (k of k-means).")
    min_params: int = Field(default=256, ge=0, description="Leave layers with fewer weights than this alone "
                            "(a codebook would not pay for itself).")
    iterations: int = Field(default=30, ge=1, le=1000, description="k-means iterations per layer.")
    finetune: TrainingParams | None = Field(
        default=None, description="Fine-tune on the `training` dataset keeping the clusters (torch models)."
    )


def kmeans(values: Any, k: int, iterations: int) -> tuple[Any, Any]:
    """(centroids [≤ k], labels of ``values.ravel()``) for 1-D k-means; a zero in the input keeps a centroid
    of exactly zero (label 0) that the iterations never move."""
    import numpy as np

    flat = values.ravel().astype(np.float64)
    zeros = flat == 0
    sparse = bool(zeros.any())
    live = flat[~zeros]
    count = min(k - sparse, len(np.unique(live)))
    if count <= 0:
        return np.zeros(1), np.zeros(flat.size, dtype=np.int64)
    centroids = np.linspace(live.min(), live.max(), count)
    for _ in range(iterations):
        labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, live)
        sums = np.bincount(labels, weights=live, minlength=count)
        counts = np.bincount(labels, minlength=count)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(updated, centroids):
            break
        centroids = np.sort(updated)
    labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, live)
    all_labels = np.zeros(flat.size, dtype=np.int64)
    all_labels[~zeros] = labels + sparse
    return (np.concatenate([[0.0], centroids]) if sparse else centroids), all_labels


def run(ctx: PassContext, params: ClusterParams) -> PassResult:
    metrics: dict[str, Any] = {}
    source = ctx.model_path
    if ctx.model_format != "onnx":
        source, metrics = _cluster_torch(ctx, params)
    out, report = palettize(source, ctx.work_dir / "model.clustered.onnx", params)
    metrics.update(report)
    ctx.log(f"{report['layers']} layer(s) palettized with ≤ {params.clusters} values each: weights "
            f"{report['float_bytes']} → {report['palettized_bytes']} bytes ({report['ratio']:.2f}× smaller)"
            + (f"; {report['reclustered']} re-clustered after export" if report["reclustered"] else ""))
    return PassResult(out, "onnx", metrics=metrics,
                      metadata={"storage": "palettized: 4-bit (≤ 16 clusters) or uint8 indices + float codebook, "
                                           "expanded in the graph", "clusters": params.clusters})


def _cluster_torch(ctx: PassContext, params: ClusterParams) -> tuple[Any, dict[str, Any]]:
    """Cluster (and fine-tune) the torch model, then export it to ONNX; the ONNX path and the metrics."""
    import torch

    from workers.passes.export.onnx import OnnxExportParams
    from workers.passes.export.onnx import run as export
    from workers.passes.torch_models import TorchModel
    from workers.passes.training.finetune import train

    model = TorchModel(ctx.model_path, ctx.model_format)
    tensors = {k: t for k, t in model.weights().items() if t.numel() >= params.min_params}
    assignment = {}
    with torch.no_grad():
        for name, tensor in tensors.items():
            centroids, labels = kmeans(tensor.detach().numpy(), params.clusters, params.iterations)
            labels = torch.from_numpy(labels)
            assignment[name] = (labels, bool(centroids[0] == 0 and (tensor == 0).any()), len(centroids))
            tensor.copy_(torch.from_numpy(centroids).to(tensor.dtype)[labels].reshape(tensor.shape))

    def share() -> None:
        """Each cluster's weights become their mean (a zero cluster stays zero)."""
        with torch.no_grad():
            for name, (labels, sparse, k) in assignment.items():
                flat = tensors[name].reshape(-1)
                sums = torch.zeros(k, dtype=flat.dtype).scatter_add_(0, labels, flat)
                counts = torch.bincount(labels, minlength=k).clamp(min=1).to(flat.dtype)
                means = sums / counts
                if sparse:
                    means[0] = 0
                flat.copy_(means[labels])

    metrics: dict[str, Any] = {}
    if params.finetune:
        metrics["training"] = train(ctx, model.module, tensors, params.finetune, after_step=share)
    clustered = model.save_to(ctx.work_dir)
    metrics["distinct_values"] = {k: int(torch.unique(t).numel()) for k, t in tensors.items()}
    sub = ctx.work_dir / "export"
    sub.mkdir()
    exported = export(dataclasses.replace(ctx, model_path=clustered, work_dir=sub), OnnxExportParams())
    return exported.model_path, metrics


def palettize(source: Any, out: Any, params: ClusterParams) -> tuple[Any, dict[str, Any]]:
    """Write ``source`` (ONNX) to ``out`` with every large Conv/MatMul/Gemm weight as indices + codebook."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from workers.passes.onnx_graph import layer_weights

    model = onnx.load(str(source))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    report = {"layers": 0, "reclustered": 0, "float_bytes": 0, "palettized_bytes": 0, "max_distinct": 0,
              "packed_4bit": 0}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    for name, (_, weight) in layer_weights(model).items():
        if weight.dtype != np.float32 or weight.size < params.min_params:
            continue
        values, labels = np.unique(weight, return_inverse=True)
        if len(values) > params.clusters:
            values, labels = kmeans(weight, params.clusters, params.iterations)
            report["reclustered"] += 1
        codebook = numpy_helper.from_array(values.astype(np.float32), f"{name}.codebook")
        graph.initializer.remove(inits[name])
        for index, graph_input in enumerate(graph.input):  # old exporters list initializers as inputs too
            if graph_input.name == name:
                del graph.input[index]
                break
        packed = len(values) <= 16 and opset >= 13
        nodes, stored = _expand(name, labels.reshape(weight.shape), codebook, packed)
        graph.initializer.extend(stored)
        for node in reversed(nodes):
            graph.node.insert(0, node)
        report["layers"] += 1
        report["max_distinct"] = max(report["max_distinct"], len(values))
        report["float_bytes"] += weight.nbytes
        report["palettized_bytes"] += sum(numpy_helper.to_array(t).nbytes for t in stored)
        report["packed_4bit"] += packed
    if not report["layers"]:
        raise ValueError(f"no Conv/MatMul/Gemm weight has at least min_params={params.min_params} values")
    report["ratio"] = round(report["float_bytes"] / report["palettized_bytes"], 3)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out, report


def _expand(name: str, labels: Any, codebook: Any, packed: bool) -> tuple[list[Any], list[Any]]:
    """Nodes that rebuild weight ``name`` from its cluster ``labels`` and ``codebook``, and the initializers
    they read: uint8 indices, or (≤ 16 clusters, opset ≥ 13) two 4-bit indices per byte, high nibble first,
    unpacked with integer Div/Mul/Sub."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def const(suffix: str, array: Any) -> Any:
        return numpy_helper.from_array(np.asarray(array), f"{name}.{suffix}")

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> Any:
        return helper.make_node(op, inputs, [output], name=output, **attributes)

    if not packed:
        indices = const("indices", labels.astype(np.uint8))
        return [node("Cast", [indices.name], f"{name}.int32", to=TensorProto.INT32),
                node("Gather", [codebook.name, f"{name}.int32"], name, axis=0)], [indices, codebook]
    flat = labels.ravel().astype(np.uint8)
    flat = np.concatenate([flat, np.zeros(flat.size % 2, np.uint8)])
    stored = [const("nibbles", (flat[0::2] << 4) | flat[1::2]), codebook, const("sixteen", np.int32(16)),
              const("axis", np.array([1], np.int64)), const("all", np.array([-1], np.int64)),
              const("start", np.array([0], np.int64)), const("size", np.array([labels.size], np.int64)),
              const("shape", np.array(labels.shape, np.int64))]
    n = f"{name}."
    return [node("Cast", [n + "nibbles"], n + "bytes", to=TensorProto.INT32),
            node("Div", [n + "bytes", n + "sixteen"], n + "high"),
            node("Mul", [n + "high", n + "sixteen"], n + "high16"),
            node("Sub", [n + "bytes", n + "high16"], n + "low"),
            node("Unsqueeze", [n + "high", n + "axis"], n + "high2"),
            node("Unsqueeze", [n + "low", n + "axis"], n + "low2"),
            node("Concat", [n + "high2", n + "low2"], n + "pairs", axis=1),
            node("Reshape", [n + "pairs", n + "all"], n + "padded"),
            node("Slice", [n + "padded", n + "start", n + "size"], n + "labels"),
            node("Reshape", [n + "labels", n + "shape"], n + "indices"),
            node("Gather", [codebook.name, n + "indices"], name, axis=0)], stored


def check(params: ClusterParams, source_format: str, datasets: set[str]) -> str | None:
    return cannot_train("fine-tuning", source_format, datasets) if params.finetune else None


SPEC = register(
    PassSpec(
        name="cluster.weights",
        description="Weight clustering: k-means weight sharing per layer (optionally fine-tuned keeping the "
                    "clusters), stored as a palettized ONNX model (4- or 8-bit indices + codebook).",
        accepts=("torchscript", "torch_export", "onnx"),
        produces="onnx",
        params=ClusterParams,
        run=run,
        requires=("onnx",),
        check=check,
    )
)
