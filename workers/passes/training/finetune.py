"""``train.finetune`` — train a TorchScript module or .pt2 program on the job's ``training`` dataset.

The loss is cross-entropy against integer ``labels`` (MSE against float labels), or — without labels — the
MSE to the original model's own outputs (self-distillation, to recover what pruning or quantization lost).
``l1`` adds λ‖w‖₁ over convolution and linear weights, the classic term that pushes weights towards zero.
Weights that are exactly zero when training starts (pruned) stay zero. With a ``validation`` dataset the best
epoch is kept and training stops after ``patience`` epochs without improvement; ``evaluation`` is never
used here. Cancellable between batches; the loss of every epoch is logged and drives the progress.

TorchScript modules train in train mode (batch-norm statistics update, dropout active). A .pt2 program was
captured in one mode and is trained as captured (an inference-mode export keeps its batch-norm statistics
fixed); its parameters are shared with the program, which is saved back with ``torch.export.save``.
ONNX models cannot be trained: upload the network as TorchScript or a .pt2 program.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register


class FinetuneParams(PassParams):
    epochs: int = Field(default=3, ge=1, le=1000, description="Passes over the training data.")
    learning_rate: float = Field(default=1e-3, gt=0, le=1, description="Optimizer step size.")
    batch_size: int = Field(default=64, ge=1, le=65536, description="Samples per step.")
    optimizer: Literal["adam", "sgd"] = Field(default="adam", description="Adam, or SGD with momentum 0.9.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="L2 weight decay of the optimizer.")
    l1: float = Field(default=0.0, ge=0, le=1, description="λ in L = L₀ + λ‖w‖₁ over conv/linear weights.")
    time_budget_s: float | None = Field(default=None, gt=0, description="Stop after this many seconds.")
    patience: int = Field(default=2, ge=1, description="Epochs without validation improvement before stopping.")
    seed: int = Field(default=0, description="Seed for shuffling and initialisation, for repeatable runs.")


def _outputs(result: Any) -> Any:
    return result if not isinstance(result, (tuple, list)) else result[0]


def run(ctx: PassContext, params: FinetuneParams) -> PassResult:
    import numpy as np
    import torch

    from workers.evaluation import load_dataset
    from workers.passes.torch_models import TorchModel

    torch.manual_seed(params.seed)
    model = TorchModel(ctx.model_path, ctx.model_format)
    module = model.module
    trainable = list(module.parameters())
    for p in trainable:
        p.requires_grad_(True)
    weights = model.weights()
    masks = {name: w != 0 for name, w in weights.items() if bool((w == 0).any())}
    names = [s["name"] for s in ctx.inputs]
    arrays, labels = load_dataset(ctx.datasets["training"])
    validation = load_dataset(ctx.datasets["validation"]) if "validation" in ctx.datasets else None
    # Without labels, the targets are the original model's outputs (a frozen copy of it).
    needs_teacher = labels is None or (validation is not None and validation[1] is None)
    teacher = TorchModel(ctx.model_path, ctx.model_format).module if needs_teacher else None

    def predict(net, feeds) -> Any:
        with torch.no_grad():
            return torch.cat([_outputs(net(*(torch.from_numpy(feeds[n][i:i + 256]) for n in names)))
                              for i in range(0, len(feeds[names[0]]), 256)]).numpy()

    if labels is None:
        labels = predict(teacher, arrays)
    classify = labels.dtype.kind in "iu"
    criterion = torch.nn.CrossEntropyLoss() if classify else torch.nn.MSELoss()
    optimizer = (torch.optim.Adam(trainable, lr=params.learning_rate, weight_decay=params.weight_decay)
                 if params.optimizer == "adam" else
                 torch.optim.SGD(trainable, lr=params.learning_rate, momentum=0.9, weight_decay=params.weight_decay))

    def score(data) -> float:
        """Validation: accuracy for class ids, else negative MSE (to labels or the original's outputs)."""
        feeds, target = data
        out = predict(module, feeds)
        target = predict(teacher, feeds) if target is None else target
        if target.dtype.kind in "iu":
            return float((out.argmax(1) == target).mean())
        return -float(((out - target) ** 2).mean())
    samples = len(labels)
    rng = np.random.default_rng(params.seed)
    started, losses, scores = time.monotonic(), [], []
    best = (-float("inf"), None, 0)
    stopped = "all epochs done"
    if ctx.model_format == "torchscript":
        module.train()
    for epoch in range(params.epochs):
        order = rng.permutation(samples)
        total = 0.0
        for start in range(0, samples, params.batch_size):
            ctx.check_cancelled()
            batch = order[start:start + params.batch_size]
            out = _outputs(module(*(torch.from_numpy(arrays[n][batch]) for n in names)))
            loss = criterion(out, torch.from_numpy(labels[batch]))
            if params.l1:
                loss = loss + params.l1 * sum(w.abs().sum() for w in weights.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for name, mask in masks.items():
                    weights[name].mul_(mask)
            total += float(loss) * len(batch)
            ctx.progress((epoch + (start + len(batch)) / samples) / params.epochs)
        losses.append(round(total / samples, 6))
        message = f"epoch {epoch + 1}/{params.epochs}: loss {losses[-1]:.4f}"
        if validation is not None:
            if ctx.model_format == "torchscript":
                module.eval()
            scores.append(round(score(validation), 6))
            message += f", validation {scores[-1]:.4f}"
            if scores[-1] > best[0]:
                best = (scores[-1], [p.detach().clone() for p in trainable], epoch + 1)
            if ctx.model_format == "torchscript":
                module.train()
        ctx.log(message)
        if validation is not None and epoch + 1 - best[2] >= params.patience:
            stopped = f"no validation improvement for {params.patience} epoch(s)"
            break
        if params.time_budget_s and time.monotonic() - started > params.time_budget_s:
            stopped = f"time budget of {params.time_budget_s} s reached"
            break
    if best[1] is not None:
        with torch.no_grad():
            for p, saved in zip(trainable, best[1], strict=True):
                p.copy_(saved)
    if ctx.model_format == "torchscript":
        module.eval()
    out = ctx.work_dir / ("model.pt" if ctx.model_format == "torchscript" else "model.pt2")
    model.save(out)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    size = sum(w.numel() for w in weights.values())
    ctx.log(f"stopped: {stopped}" + (f"; best epoch {best[2]}" if best[1] is not None else ""))
    return PassResult(out, ctx.model_format, metrics={
        "epochs_run": len(losses), "losses": losses, "validation": scores or None,
        "best_epoch": best[2] or None, "stopped": stopped, "sparsity": round(zeros / max(size, 1), 4)})


SPEC = register(
    PassSpec(
        name="train.finetune",
        description="Fine-tune a torch model on the training dataset (labels, or the original's outputs), "
                    "optionally with L1; pruned weights stay zero.",
        accepts=("torchscript", "torch_export"),
        produces="same",
        params=FinetuneParams,
        run=run,
        requires=("torch",),
        datasets=("training",),
    )
)
