"""``cluster.weights`` — weight clustering (k-means weight sharing per layer), stored palettized.

Each convolution, linear or MatMul weight (rank ≥ 2, at least ``min_params`` values) is clustered on its own:
1-D k-means with ``clusters`` centroids initialised evenly between its minimum and maximum (deterministic),
every weight replaced by its centroid. Weights that are exactly zero (a pruned model) keep a centroid of their
own fixed at zero, so clustering a sparse model keeps it sparse.

With ``finetune`` and a ``training`` dataset (torch models), training goes on with the assignment fixed:
after every optimizer step each cluster's weights are set to their mean — weight sharing, the centroid
moving with the average update of its members — so every layer still has at most ``clusters`` values.

**Storage (what the artifact is).** The result is an ONNX model whose clustered weights are *palettized*:
an ``uint8`` index tensor of the weight's shape and a float codebook of ``clusters`` values, expanded by the
graph itself (``Cast`` to int32, then ``Gather`` from the codebook) into the weight that feeds the layer. Any
ONNX runtime loads it with no custom loader; ONNX Runtime folds the expansion once at session creation, so
the running model is the ordinary float model (same speed) and the file holds one byte per weight instead of
four. A torch model is exported first (as ``export.onnx`` does) and the exported weights are palettized; a
weight the exporter changed (e.g. a batch norm folded into a convolution) is clustered again, and counted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register
from workers.passes.training.loop import TrainingParams


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
                      metadata={"storage": "palettized: uint8 indices + float codebook, expanded by Cast+Gather "
                                           "in the graph", "clusters": params.clusters})


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
    """Write ``source`` (ONNX) to ``out`` with every large Conv/MatMul/Gemm weight as uint8 indices + codebook."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    names = sorted({n.input[1] for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")
                    and len(n.input) > 1 and n.input[1] in inits})
    report = {"layers": 0, "reclustered": 0, "float_bytes": 0, "palettized_bytes": 0, "max_distinct": 0}
    for name in names:
        weight = numpy_helper.to_array(inits[name])
        if weight.ndim < 2 or weight.dtype != np.float32 or weight.size < params.min_params:
            continue
        values, labels = np.unique(weight, return_inverse=True)
        if len(values) > params.clusters:
            values, labels = kmeans(weight, params.clusters, params.iterations)
            report["reclustered"] += 1
        indices = numpy_helper.from_array(labels.reshape(weight.shape).astype(np.uint8), f"{name}.indices")
        codebook = numpy_helper.from_array(values.astype(np.float32), f"{name}.codebook")
        graph.initializer.remove(inits[name])
        graph.initializer.extend([indices, codebook])
        for index, graph_input in enumerate(graph.input):  # old exporters list initializers as inputs too
            if graph_input.name == name:
                del graph.input[index]
                break
        graph.node.insert(0, helper.make_node("Gather", [codebook.name, f"{name}.indices_int32"], [name],
                                              name=f"{name}.expand", axis=0))
        graph.node.insert(0, helper.make_node("Cast", [indices.name], [f"{name}.indices_int32"],
                                              name=f"{name}.cast", to=TensorProto.INT32))
        report["layers"] += 1
        report["max_distinct"] = max(report["max_distinct"], len(values))
        report["float_bytes"] += weight.nbytes
        report["palettized_bytes"] += weight.size + values.size * 4
    if not report["layers"]:
        raise ValueError(f"no Conv/MatMul/Gemm weight has at least min_params={params.min_params} values")
    report["ratio"] = round(report["float_bytes"] / report["palettized_bytes"], 3)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out, report


def check(params: ClusterParams, source_format: str, datasets: set[str]) -> str | None:
    if params.finetune and source_format == "onnx":
        return "fine-tuning needs a torch model: upload it as TorchScript or a .pt2 program"
    if params.finetune and "training" not in datasets:
        return "fine-tuning needs a 'training' dataset"
    return None


SPEC = register(
    PassSpec(
        name="cluster.weights",
        description="Weight clustering: k-means weight sharing per layer (optionally fine-tuned keeping the "
                    "clusters), stored as a palettized ONNX model (uint8 indices + codebook, ~4× smaller).",
        accepts=("torchscript", "torch_export", "onnx"),
        produces="onnx",
        params=ClusterParams,
        run=run,
        requires=("onnx",),
        check=check,
    )
)
