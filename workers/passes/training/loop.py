"""The training loop shared by ``train.finetune`` and ``distill.kd``.

Minibatches in a seeded random order; the optimizer of the parameters (Adam, or SGD with momentum); the loss
of every epoch logged and reported as progress; cancellation checked between batches; an optional time
budget; early stopping on a validation score (higher is better) with the best epoch's weights restored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from workers.passes.base import PassContext, PassParams


class TrainingParams(PassParams):
    epochs: int = Field(default=3, ge=1, le=1000, description="Passes over the training data.")
    learning_rate: float = Field(default=1e-3, gt=0, le=1, description="Optimizer step size.")
    batch_size: int = Field(default=64, ge=1, le=65536, description="Samples per step.")
    optimizer: Literal["adam", "sgd"] = Field(default="adam", description="Adam, or SGD with momentum 0.9.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="L2 weight decay of the optimizer.")
    time_budget_s: float | None = Field(default=None, gt=0, description="Stop after this many seconds.")
    patience: int = Field(default=2, ge=1, description="Epochs without validation improvement before stopping.")
    seed: int = Field(default=0, description="Seed for shuffling and initialisation, for repeatable runs.")


def cannot_train(option: str, source_format: str, datasets: set[str]) -> str | None:
    """Why a pass whose ``option`` (a schedule, fine-tuning) trains the model cannot do it here, else None."""
    if source_format == "onnx":
        return f"{option} needs a torch model: upload it as TorchScript or a .pt2 program (ONNX cannot be trained)"
    if "training" not in datasets:
        return f"{option} needs a 'training' dataset"
    return None


def first_output(result: Any) -> Any:
    return result if not isinstance(result, (tuple, list)) else result[0]


def predict(module: Any, names: list[str], feeds: dict[str, Any], batch: int = 256) -> Any:
    """The module's first output on every sample, as a numpy array (no gradients)."""
    import torch

    with torch.no_grad():
        return torch.cat([first_output(module(*(torch.from_numpy(feeds[n][i:i + batch]) for n in names)))
                          for i in range(0, len(feeds[names[0]]), batch)]).numpy()


def fit(ctx: PassContext, module: Any, names: list[str], arrays: dict[str, Any], targets: list[Any],
        loss_fn: Callable[[Any, list[Any]], Any], params: TrainingParams, *, train_mode: bool,
        score: Callable[[], float] | None = None, after_step: Callable[[], None] | None = None,
        forward: Callable[[tuple], Any] | None = None, extra: list[Any] = ()) -> dict[str, Any]:
    """Train ``module`` in place on ``arrays`` (inputs by name) against per-sample ``targets``.

    ``forward`` replaces ``module(*inputs)`` (e.g. to also return intermediate features for the loss);
    ``extra`` parameters (e.g. a projection) are optimized too but are not part of the saved model."""
    import numpy as np
    import torch

    trainable = list(module.parameters())
    for p in trainable:
        p.requires_grad_(True)
    optimized = trainable + list(extra)
    optimizer = (torch.optim.Adam(optimized, lr=params.learning_rate, weight_decay=params.weight_decay)
                 if params.optimizer == "adam" else
                 torch.optim.SGD(optimized, lr=params.learning_rate, momentum=0.9, weight_decay=params.weight_decay))
    forward = forward or (lambda inputs: first_output(module(*inputs)))
    samples = len(arrays[names[0]])
    rng = np.random.default_rng(params.seed)
    started, losses, scores = time.monotonic(), [], []
    best: tuple[float, list | None, int] = (-float("inf"), None, 0)
    stopped = "all epochs done"
    for epoch in range(params.epochs):
        if train_mode:
            module.train()
        order = rng.permutation(samples)
        total = 0.0
        for start in range(0, samples, params.batch_size):
            ctx.check_cancelled()
            batch = order[start:start + params.batch_size]
            out = forward(tuple(torch.from_numpy(arrays[n][batch]) for n in names))
            loss = loss_fn(out, [None if t is None else torch.from_numpy(t[batch]) for t in targets])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            total += loss.item() * len(batch)
            ctx.progress((epoch + (start + len(batch)) / samples) / params.epochs)
        losses.append(round(total / samples, 6))
        message = f"epoch {epoch + 1}/{params.epochs}: loss {losses[-1]:.4f}"
        if train_mode:
            module.eval()
        if score is not None:
            scores.append(round(score(), 6))
            message += f", validation {scores[-1]:.4f}"
            if scores[-1] > best[0]:
                best = (scores[-1], [p.detach().clone() for p in trainable], epoch + 1)
        ctx.log(message)
        if score is not None and epoch + 1 - best[2] >= params.patience:
            stopped = f"no validation improvement for {params.patience} epoch(s)"
            break
        if params.time_budget_s and time.monotonic() - started > params.time_budget_s:
            stopped = f"time budget of {params.time_budget_s} s reached"
            break
    if best[1] is not None:
        with torch.no_grad():
            for p, saved in zip(trainable, best[1], strict=True):
                p.copy_(saved)
    ctx.log(f"stopped: {stopped}" + (f"; kept the best epoch, {best[2]}" if best[1] is not None else ""))
    return {"epochs_run": len(losses), "losses": losses, "validation": scores or None,
            "best_epoch": best[2] or None, "stopped": stopped}
