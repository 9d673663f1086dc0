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

from collections.abc import Callable
from typing import Any

from pydantic import Field

from workers.passes.base import PassContext, PassResult, PassSpec, register
from workers.passes.torch_models import TorchModel
from workers.passes.training.loop import TrainingParams


class FinetuneParams(TrainingParams):
    l1: float = Field(default=0.0, ge=0, le=1, description="λ in L = L₀ + λ‖w‖₁ over conv/linear weights.")


def run(ctx: PassContext, params: FinetuneParams) -> PassResult:
    model = TorchModel(ctx.model_path, ctx.model_format)
    weights = model.weights()
    metrics = train(ctx, model.module, weights, params, l1=params.l1)
    out = model.save_to(ctx.work_dir)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    metrics["sparsity"] = round(zeros / max(sum(w.numel() for w in weights.values()), 1), 4)
    return PassResult(out, ctx.model_format, metrics=metrics)


def train(ctx: PassContext, module: Any, weights: dict[str, Any], params: TrainingParams, *, l1: float = 0.0,
          after_step: Callable[[], None] | None = None, validate: bool = True) -> dict[str, Any]:
    """Train ``module`` in place on the ``training`` dataset, as described above; ``weights`` are its conv and
    linear weights by name (zeros among them stay zero; ``l1`` applies to them).

    ``after_step`` runs after every optimizer step, after the zeros are restored: passes that train under a
    constraint (a growing sparsity, shared cluster values, a 2:4 pattern) project the weights there.
    ``validate=False`` ignores a ``validation`` dataset (a schedule whose epochs differ must not be undone by
    restoring an early epoch)."""
    import torch

    from workers.measure import load_dataset
    from workers.passes.training.loop import fit, predict

    torch.manual_seed(params.seed)
    masks = {name: w != 0 for name, w in weights.items() if bool((w == 0).any())}
    names = [s["name"] for s in ctx.inputs]
    arrays, labels = load_dataset(ctx.datasets["training"])
    validation = load_dataset(ctx.datasets["validation"]) if validate and "validation" in ctx.datasets else None
    # Without labels, the targets are the original model's outputs (a frozen copy of it).
    needs_teacher = labels is None or (validation is not None and validation[1] is None)
    teacher = TorchModel(ctx.model_path, ctx.model_format).module if needs_teacher else None
    if labels is None:
        labels = predict(teacher, names, arrays)
    criterion = torch.nn.CrossEntropyLoss() if labels.dtype.kind in "iu" else torch.nn.MSELoss()

    def loss_fn(out: Any, targets: list[Any]) -> Any:
        loss = criterion(out, targets[0])
        return loss + l1 * sum(w.abs().sum() for w in weights.values()) if l1 else loss

    def project() -> None:
        with torch.no_grad():
            for name, mask in masks.items():
                weights[name].mul_(mask)
        if after_step is not None:
            after_step()

    def score() -> float:
        """Accuracy for class ids, else negative MSE (to labels or the original's outputs)."""
        feeds, target = validation
        out = predict(module, names, feeds)
        target = predict(teacher, names, feeds) if target is None else target
        if target.dtype.kind in "iu":
            return float((out.argmax(1) == target).mean())
        return -float(((out - target) ** 2).mean())

    return fit(ctx, module, names, arrays, [labels], loss_fn, params,
               train_mode=ctx.model_format == "torchscript", score=score if validation else None,
               after_step=project if masks or after_step else None)


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
