"""``prune.magnitude`` — unstructured L1-magnitude pruning: the smallest weights become exactly zero.

Prunes the weights of convolutions and linear layers (rank ≥ 2; biases and norms are left alone), either
with one threshold over all of them (``scope: global``, so layers with many small weights lose more) or the
same share in each layer (``per_layer``). The architecture and format stay: TorchScript and .pt2 programs
are rewritten in place (``train.finetune`` after it keeps the zeros), ONNX initializers feeding
Conv/MatMul/Gemm are zeroed (no fine-tuning possible there). Zeros alone change neither latency nor raw
file size on CPUs; they compress (e.g. gzip) and enable sparse kernels.

With a ``schedule`` and a ``training`` dataset (torch formats), the sparsity grows during training instead of
being cut in one shot (``schedule.py``): on the digits CNN, 90% in one shot drops accuracy from 0.994 to 0.942,
while the schedule over 8 epochs ends at 0.992 (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register
from workers.passes.pruning.schedule import Schedule, sparsity_at
from workers.passes.training.loop import cannot_train


class MagnitudePruneParams(PassParams):
    sparsity: float = Field(default=0.5, gt=0, lt=1, description="Target share of zero weights.")
    scope: Literal["global", "per_layer"] = Field(
        default="global", description="One magnitude threshold over all layers, or the same share per layer."
    )
    min_params: int = Field(
        default=0, ge=0, description="Leave layers with fewer weights than this alone (e.g. the first conv)."
    )
    schedule: Schedule | None = Field(
        default=None, description="Prune gradually while training on the `training` dataset (torch formats)."
    )


def prune(weights: dict[str, Any], params: MagnitudePruneParams) -> dict[str, Any]:
    """Masks (True = keep) reaching the target sparsity over the given numpy weights."""
    import numpy as np

    chosen = {k: w for k, w in weights.items() if w.size >= params.min_params}
    if not chosen:
        raise ValueError(f"no layer has at least min_params={params.min_params} weights")
    if params.scope == "global":
        magnitudes = np.concatenate([np.abs(w).ravel() for w in chosen.values()])
        cut = int(round(params.sparsity * magnitudes.size))
        threshold = np.partition(magnitudes, cut - 1)[cut - 1] if cut else -1.0
        masks = {k: np.abs(w) > threshold for k, w in chosen.items()}
        # ties at the threshold: zero exactly as many as needed, in a fixed order
        excess = sum(int(m.sum()) for m in masks.values()) - (magnitudes.size - cut)
        for k, w in chosen.items():
            if excess >= 0:
                break
            ties = np.flatnonzero((np.abs(w) == threshold).ravel())[: -excess]
            masks[k].ravel()[ties] = True
            excess += len(ties)
        return masks
    masks = {}
    for k, w in chosen.items():
        cut = int(round(params.sparsity * w.size))
        order = np.argsort(np.abs(w).ravel(), kind="stable")
        mask = np.ones(w.size, dtype=bool)
        mask[order[:cut]] = False
        masks[k] = mask.reshape(w.shape)
    return masks


def report(weights: dict[str, Any], masks: dict[str, Any]) -> dict[str, Any]:
    layers = {k: round(1 - float(m.mean()), 4) for k, m in masks.items()}
    total = sum(w.size for k, w in weights.items() if k in masks)
    zeros = sum(int((~m).sum()) for m in masks.values())
    return {"sparsity": round(zeros / total, 4), "pruned_weights": zeros, "weights": total, "layers": layers}


def run(ctx: PassContext, params: MagnitudePruneParams) -> PassResult:
    if ctx.model_format == "onnx":
        return _run_onnx(ctx, params)
    import torch

    from workers.passes.torch_models import TorchModel

    model = TorchModel(ctx.model_path, ctx.model_format)
    tensors = model.weights()
    training = _gradually(ctx, model, params) if params.schedule else None
    masks = _masks(tensors, params, params.sparsity)  # one shot; after a schedule, makes sure the target is reached
    with torch.no_grad():
        for name, mask in masks.items():
            tensors[name].mul_(mask)
    out = model.save_to(ctx.work_dir)
    metrics = report({k: t.detach().numpy() for k, t in tensors.items()}, {k: m.numpy() for k, m in masks.items()})
    if training:
        metrics["training"] = training
    ctx.log(f"pruned {metrics['pruned_weights']} of {metrics['weights']} weights ({metrics['sparsity']:.1%}, "
            f"{params.scope}" + (", gradually)" if training else ")"))
    return PassResult(out, ctx.model_format, metrics=metrics)


def _masks(tensors: dict[str, Any], params: MagnitudePruneParams, sparsity: float) -> dict[str, Any]:
    """Torch masks (True = keep) pruning ``tensors`` to ``sparsity``."""
    import torch

    masks = prune({k: t.detach().numpy() for k, t in tensors.items()}, params.model_copy(update={"sparsity": sparsity}))
    return {k: torch.from_numpy(m) for k, m in masks.items()}


def _gradually(ctx: PassContext, model: Any, params: MagnitudePruneParams) -> dict[str, Any]:
    """Train ``model`` while its sparsity follows the schedule; the training metrics and the steps taken."""
    import math

    import torch

    from workers.measure import load_dataset
    from workers.passes.training.finetune import train

    schedule = params.schedule
    tensors = model.weights()
    samples = len(next(iter(load_dataset(ctx.datasets["training"])[0].values())))
    ramp = max(1, int(schedule.epochs * math.ceil(samples / schedule.batch_size) * schedule.ramp))
    every = max(1, ramp // schedule.steps)
    state = {"optimizer_steps": 0, "pruning_steps": 0, "masks": {}, "sparsities": []}

    def keep() -> None:
        with torch.no_grad():
            for name, mask in state["masks"].items():
                tensors[name].mul_(mask)

    def step() -> None:
        state["optimizer_steps"] += 1
        if state["optimizer_steps"] % every == 0 and state["pruning_steps"] < schedule.steps:
            state["pruning_steps"] += 1
            state["sparsities"].append(round(sparsity_at(state["pruning_steps"], params.sparsity, schedule), 4))
            state["masks"] = _masks(tensors, params, state["sparsities"][-1])
        keep()

    if schedule.initial:
        state["masks"] = _masks(tensors, params, schedule.initial)
        keep()
    metrics = train(ctx, model.module, tensors, schedule, after_step=step, validate=False)
    ctx.log(f"gradual pruning: {state['pruning_steps']} step(s) every {every} optimizer steps, sparsity "
            + " → ".join(f"{s:.0%}" for s in [schedule.initial, *state["sparsities"]]))
    return {**metrics, "pruning_steps": state["pruning_steps"], "sparsities": state["sparsities"]}


def _run_onnx(ctx: PassContext, params: MagnitudePruneParams) -> PassResult:
    import onnx
    from onnx import numpy_helper

    from workers.passes.onnx_graph import layer_weights

    model = onnx.load(str(ctx.model_path))
    inits = {i.name: i for i in model.graph.initializer}
    weights = {name: weight for name, (_, weight) in layer_weights(model).items()}
    masks = prune(weights, params)
    for name, mask in masks.items():
        inits[name].CopyFrom(numpy_helper.from_array((weights[name] * mask).astype(weights[name].dtype), name))
    out = ctx.work_dir / "model.onnx"
    onnx.save(model, str(out))
    metrics = report(weights, masks)
    ctx.log(f"zeroed {metrics['pruned_weights']} of {metrics['weights']} weights in {len(masks)} initializers "
            f"({metrics['sparsity']:.1%}, {params.scope})")
    return PassResult(out, "onnx", metrics=metrics)


def check(params: MagnitudePruneParams, source_format: str, datasets: set[str]) -> str | None:
    return cannot_train("a schedule", source_format, datasets) if params.schedule else None


SPEC = register(
    PassSpec(
        name="prune.magnitude",
        description="Unstructured magnitude pruning of conv/linear weights to a target sparsity (same architecture).",
        accepts=("torchscript", "torch_export", "onnx"),
        produces="same",
        params=MagnitudePruneParams,
        run=run,
        requires=("torch",),
        check=check,
    )
)
