"""``distill.kd`` — knowledge distillation: train a smaller student to imitate the job's model (the teacher).

The student is either another uploaded model (``student_model_id``: same format as the teacher, same inputs
and output shapes, checked at submission) or derived from a ``.pt2`` teacher:
- ``width_ratio``: structured pruning to that share of its channels and neurons, initialised from the
  teacher's strongest ones — derivation handles what ``prune.structured`` handles (convolutions, linear
  layers, residual-coupled groups, transformer feed-forward neurons);
- ``depth_ratio``: fewer blocks of a stack of repeated modules (``<stack>.0``, ``<stack>.1``, … in the
  program's module paths), keeping evenly spaced ones as DistilBERT's initialisation does (every other block
  at 0.5); a dropped block must map one tensor to one of the same shape (residual blocks), else the pass
  refuses. Both can be combined.

Loss, with teacher logits z_t and student logits z_s:
α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1−α)·CE(labels) when the ``training`` dataset has integer labels,
the KL term alone when it has none. The teacher runs once over the training data (frozen, no gradients).
Early stopping and the kept checkpoint use ``validation`` only (accuracy with labels, agreement with the
teacher's top-1 without); the loss and score of every epoch are logged. The output is the student in the
teacher's format, which ``export.onnx`` and the quantization passes can take next.

Feature matching (``feature_weight`` β > 0, .pt2 teacher and student): β·MSE(P(f_s), f_t) is added, where f
is the output of each model's last hidden convolution or linear layer (the one before the final layer) and
P a learned 1×1 convolution or linear projection from the student's width to the teacher's (used only for
training, not saved).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from workers.passes.base import PassContext, PassResult, PassSpec, register
from workers.passes.training.loop import TrainingParams


class DistillParams(TrainingParams):
    student_model_id: str | None = Field(default=None, description="An uploaded student model (its id).")
    width_ratio: float | None = Field(
        default=None, gt=0, lt=1, description="Derive the student from a .pt2 teacher, keeping this share of "
        "its channels and neurons (structured pruning)."
    )
    depth_ratio: float | None = Field(
        default=None, gt=0, lt=1, description="Derive the student from a .pt2 teacher, keeping this share of the "
        "blocks of its repeated stack (evenly spaced)."
    )
    temperature: float = Field(default=4.0, gt=0, le=100, description="T: softens both distributions.")
    alpha: float = Field(default=0.7, ge=0, le=1, description="Weight of the distillation term; 1 − α goes "
                         "to cross-entropy with the labels (α=0: labels only).")
    epochs: int = Field(default=10, ge=1, le=1000, description="Passes over the training data.")
    patience: int = Field(default=3, ge=1, description="Epochs without validation improvement before stopping.")
    feature_weight: float = Field(
        default=0.0, ge=0, le=100, description="β: weight of matching the last hidden layer's features "
        "(through a learned projection); .pt2 teacher and student only."
    )

    @model_validator(mode="after")
    def _one_student(self) -> DistillParams:
        derived = self.width_ratio is not None or self.depth_ratio is not None
        if (self.student_model_id is None) != derived:
            raise ValueError("give exactly one of student_model_id or width_ratio/depth_ratio")
        return self


def check(params: DistillParams, source_format: str, datasets: set[str]) -> str | None:
    if params.feature_weight and source_format != "torch_export":
        return f"feature matching needs .pt2 models (their graphs expose intermediate layers); this is {source_format}"
    if params.student_model_id is None and source_format != "torch_export":
        return (f"deriving a student (width_ratio, depth_ratio) needs the teacher as a torch.export program (.pt2); "
                f"this one is {source_format}: upload a .pt2, or give an uploaded student_model_id")
    return None


def drop_blocks(gm: Any, ratio: float) -> str:
    """Keep ``ratio`` of the blocks of the longest repeated stack (evenly spaced), rewiring around the others."""
    import re

    import numpy as np
    import torch

    members: dict[tuple[str, int], list[Any]] = {}
    for node in gm.graph.nodes:
        for path, _ in (node.meta.get("nn_module_stack") or {}).values():
            match = re.fullmatch(r"(.+)\.(\d+)", path)
            if match and node.op == "call_function":
                members.setdefault((match[1], int(match[2])), []).append(node)
                break
    stacks: dict[str, list[int]] = {}
    for prefix, index in members:
        stacks.setdefault(prefix, []).append(index)
    if not stacks or max(len(v) for v in stacks.values()) < 2:
        raise ValueError("depth_ratio needs a stack of repeated blocks (modules named <stack>.0, <stack>.1, …)")
    prefix = max(stacks, key=lambda k: len(stacks[k]))
    blocks = sorted(stacks[prefix])
    count = max(1, round(len(blocks) * ratio))
    keep = {blocks[int(i)] for i in np.linspace(0, len(blocks) - 1, count).round()}
    for index in (b for b in blocks if b not in keep):
        nodes = set(members[(prefix, index)])
        inputs = {i for n in nodes for i in n.all_input_nodes  # tensors only: sizes (SymInts) may come in too
                  if i not in nodes and i.op != "get_attr" and isinstance(i.meta.get("val"), torch.Tensor)}
        outputs = [n for n in nodes if any(u not in nodes for u in n.users)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"block {prefix}.{index} does not map one tensor to one tensor; cannot drop it")
        (source,), (result,) = inputs, outputs
        if tuple(source.meta["val"].shape) != tuple(result.meta["val"].shape):
            raise ValueError(f"block {prefix}.{index} changes the shape; cannot drop it")
        result.replace_all_uses_with(source)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return f"kept blocks {sorted(keep)} of {prefix}.0–{blocks[-1]}"


def derive_student(ctx: PassContext, params: DistillParams) -> Any:
    """A narrower and/or shallower copy of the .pt2 teacher."""
    from workers.formats import load_program
    from workers.passes.pruning.structured import StructuredPruneParams, prune

    student = load_program(ctx.model_path).module()
    if params.depth_ratio is not None:
        ctx.log("student derived: " + drop_blocks(student, params.depth_ratio))
    if params.width_ratio is None:
        return student
    report = prune(student, StructuredPruneParams(ratio=1 - params.width_ratio, round_to=8, min_channels=8))
    if not report["groups"]:
        raise ValueError("the teacher has no channel group that structured pruning can narrow: "
                         + "; ".join(f"{', '.join(g['layers'])}: {g['reason']}" for g in report["left_alone"]))
    ctx.log("student derived: " + ", ".join(f"{'+'.join(g['layers'])} {g['channels']}→{g['kept']}"
                                            for g in report["groups"]))
    return student


def hidden_feature(gm: Any) -> str:
    """Name of the last convolution or linear node before the final one: the features matched."""
    producers = [n.name for n in gm.graph.nodes if n.op == "call_function"
                 and str(n.target).split(".")[1:2] in (["conv2d"], ["linear"])]
    if len(producers) < 2:
        raise ValueError("feature matching needs a hidden convolution or linear layer before the last one")
    return producers[-2]


class FeatureRun:
    """Run a graph module and also return one intermediate node's output (autograd flows through both)."""

    def __init__(self, gm: Any, node_name: str) -> None:
        import torch.fx

        self.gm, self.node_name = gm, node_name
        outer = self

        class Capture(torch.fx.Interpreter):
            def run_node(self, n):
                value = super().run_node(n)
                if n.name == outer.node_name:
                    outer.captured = value
                return value

        self.interpreter = Capture(gm)
        self.captured = None

    def __call__(self, inputs: tuple) -> tuple[Any, Any]:
        from workers.passes.training.loop import first_output

        out = first_output(self.interpreter.run(*inputs))
        return out, self.captured


def projection(student_feature: Any, teacher_feature: Any) -> Any:
    import torch

    if student_feature.dim() == 4 and student_feature.shape[2:] == teacher_feature.shape[2:]:
        return torch.nn.Conv2d(student_feature.shape[1], teacher_feature.shape[1], 1)
    if student_feature.dim() == 2:
        return torch.nn.Linear(student_feature.shape[1], teacher_feature.shape[1])
    raise ValueError(f"cannot project features of shape {tuple(student_feature.shape)} onto "
                     f"{tuple(teacher_feature.shape)}")


def run(ctx: PassContext, params: DistillParams) -> PassResult:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from workers.measure import load_dataset
    from workers.passes.torch_models import TorchModel, reexport
    from workers.passes.training.loop import fit, predict

    torch.manual_seed(params.seed)
    teacher = TorchModel(ctx.model_path, ctx.model_format).module
    if params.student_model_id is not None:
        student_model = TorchModel(*ctx.models[params.student_model_id])
        student = student_model.module
    else:
        student_model, student = None, derive_student(ctx, params)
    names = [s["name"] for s in ctx.inputs]
    arrays, labels = load_dataset(ctx.datasets["training"])
    soft = predict(teacher, names, arrays)
    hard = labels if labels is not None and labels.dtype.kind in "iu" else None
    temperature, alpha = params.temperature, params.alpha if hard is not None else 1.0

    forward, extra, features = None, [], None
    if params.feature_weight:
        teacher_run = FeatureRun(teacher, hidden_feature(teacher))
        student_run = FeatureRun(student, hidden_feature(student))
        features = np.concatenate([teacher_run(tuple(torch.from_numpy(arrays[n][i:i + 256]) for n in names))[1]
                                   .detach().numpy() for i in range(0, len(arrays[names[0]]), 256)])
        probe = tuple(torch.from_numpy(arrays[n][:2]) for n in names)
        project = projection(student_run(probe)[1], torch.from_numpy(features[:2]))
        extra = list(project.parameters())

        def forward(inputs: tuple) -> Any:
            out, feature = student_run(inputs)
            return out, project(feature)

        ctx.log(f"matching features of {student_run.node_name} to the teacher's {teacher_run.node_name} "
                f"through a learned {type(project).__name__}")

    def loss_fn(out: Any, targets: list[Any]) -> Any:
        out, projected = out if isinstance(out, tuple) else (out, None)
        kd = F.kl_div(F.log_softmax(out / temperature, dim=1), F.softmax(targets[0] / temperature, dim=1),
                      reduction="batchmean") * temperature**2
        loss = kd if hard is None or alpha == 1.0 else alpha * kd + (1 - alpha) * F.cross_entropy(out, targets[1])
        if projected is not None:
            loss = loss + params.feature_weight * F.mse_loss(projected, targets[2])
        return loss

    validation = load_dataset(ctx.datasets["validation"]) if "validation" in ctx.datasets else None

    def score() -> float:
        feeds, target = validation
        predicted = predict(student, names, feeds).argmax(1)
        reference = target if target is not None else predict(teacher, names, feeds).argmax(1)
        return float(np.mean(predicted == reference))

    metrics = fit(ctx, student, names, arrays, [soft, hard, features], loss_fn, params,
                  train_mode=ctx.model_format == "torchscript" and student_model is not None,
                  score=score if validation else None, forward=forward, extra=extra)
    out = ctx.work_dir / ("model.pt" if ctx.model_format == "torchscript" else "model.pt2")
    if student_model is not None:
        student_model.save(out)
    else:
        torch.export.save(reexport(student, ctx), str(out))
    teacher_params = sum(p.numel() for p in teacher.parameters())
    student_params = sum(p.numel() for p in student.parameters())
    ctx.log(f"student: {student_params} parameters ({student_params / teacher_params:.1%} of the teacher's)")
    return PassResult(out, ctx.model_format, metrics={
        **metrics, "teacher_parameters": teacher_params, "student_parameters": student_params,
        "alpha": alpha, "temperature": temperature})


SPEC = register(
    PassSpec(
        name="distill.kd",
        description="Knowledge distillation into a smaller student (uploaded, or derived from a .pt2 teacher by "
                    "width); soft targets at temperature T plus cross-entropy with labels.",
        accepts=("torchscript", "torch_export"),
        produces="same",
        params=DistillParams,
        run=run,
        requires=("torch",),
        datasets=("training",),
        model_refs=("student_model_id",),
        check=check,
    )
)
