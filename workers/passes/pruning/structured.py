"""``prune.structured`` — remove whole channels and neurons so the model gets physically smaller and faster.

Works on torch.export programs (``.pt2``): it follows the channels of each *producer* — a convolution with
``groups=1`` (output channels) or a linear layer (output features) — through the ATen graph of
``ExportedProgram.module()``:

- carried through unchanged: element-wise activations, dropout, pooling, batch norm (its statistics and
  affine parameters are sliced), layer norm over the last axis (sliced), depthwise convolutions (sliced, and
  their ``groups`` patched), spatial means;
- ``flatten``/``view`` from ``[N, C, H, W]`` to ``[N, C·H·W]``: each channel becomes ``H·W`` features;
- ``cat`` along the channel axis: the consumer sees the concatenated channel sets;
- element-wise ``add``/``sub``/``mul``/``div`` of two tracked tensors (residual connections): their producers
  are *coupled* and pruned together, by their summed importance; a scalar or a tensor broadcast along the
  channels (an attention mask) passes;
- consumed by the next convolution or linear layer, whose input weights are sliced to match.
- **attention heads**: a linear output viewed as ``[…, heads, head size]`` is tracked by heads through
  ``transpose``/``permute``, the two attention ``matmul``s (which couple query, key and value head by head)
  and ``softmax`` over the keys, until it is viewed back as ``[…, heads·head size]`` for the output
  projection; whole heads are removed (their q/k/v rows and the projection's columns) and both views are
  patched. This is the Hugging Face BERT layout (separate query/key/value projections).

A channel set that reaches anything else — a graph input or output, a fused QKV projection split into
heads, a matrix product over the channels, an operand it cannot match — is left alone, and the report says
which op stopped it. TorchScript and ONNX are refused at submission: the rewrite needs the torch graph, and
the result must stay trainable (``train.finetune`` after it). The pruned module is re-exported with the
input's dynamic dimensions and saved as a new ``.pt2`` that loads and runs from its file alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register
from workers.passes.pruning.schedule import Schedule, sparsity_at
from workers.passes.training.loop import cannot_train


class StructuredPruneParams(PassParams):
    ratio: float = Field(default=0.3, gt=0, lt=1, description="Share of channels/neurons to remove per group.")
    norm: Literal["l1", "l2"] = Field(default="l1", description="Importance of a channel: L1 or L2 norm of its "
                                      "weights (summed over coupled layers).")
    round_to: int = Field(default=8, ge=1, le=64, description="Keep a multiple of this many channels (kernels "
                          "run faster on multiples of 8); never fewer than it.")
    min_channels: int = Field(default=8, ge=1, description="Leave groups with fewer channels than this alone.")
    schedule: Schedule | None = Field(default=None, description="Remove the channels in stages while training on "
                                      "the `training` dataset, instead of in one shot.")


UNARY = {"relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardtanh", "hardswish", "leaky_relu", "elu",
         "dropout", "clone", "contiguous", "alias", "detach", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
         "max_pool1d", "avg_pool1d", "hardsigmoid", "relu6", "mish"}
BINARY = {"add", "sub", "mul", "div"}


@dataclass
class Space:
    """A set of channels made by one producer; coupled spaces share a root."""

    size: int
    producers: list[tuple[str, str | None]] = field(default_factory=list)  # (weight attr, bias attr)
    parent: int | None = None
    frozen: str | None = None
    unit: int = 1  # channels pruned together: the head size once the channels are viewed as attention heads


class Tracker:
    def __init__(self) -> None:
        self.spaces: list[Space] = []
        self.slices: list[tuple[str, int, tuple]] = []  # (attr, dim, segments) to cut

    def new(self, size: int, weight: str, bias: str | None) -> int:
        self.spaces.append(Space(size, [(weight, bias)]))
        return len(self.spaces) - 1

    def root(self, i: int) -> int:
        while self.spaces[i].parent is not None:
            i = self.spaces[i].parent
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            first, second = self.spaces[ra], self.spaces[rb]
            second.parent = ra
            first.frozen = first.frozen or second.frozen
            if first.unit != second.unit:
                if 1 not in (first.unit, second.unit):
                    first.frozen = first.frozen or "coupled layers split into heads of different sizes"
                first.unit = max(first.unit, second.unit)

    def set_unit(self, space: int, unit: int) -> None:
        root = self.spaces[self.root(space)]
        if root.unit not in (1, unit):
            root.frozen = root.frozen or "split into heads of different sizes"
        root.unit = unit

    def freeze(self, layout, reason: str) -> None:
        if layout is None:
            return
        for space, _ in layout[1]:
            root = self.spaces[self.root(space)]
            root.frozen = root.frozen or reason


def _op(node) -> str:
    return str(node.target).split(".")[1] if node.op == "call_function" and "." in str(node.target) else ""


def _shape(node) -> list[int]:
    val = node.meta.get("val")
    return [int(d) if isinstance(d, int) else -1 for d in val.shape] if hasattr(val, "shape") else []


def analyse(gm: Any) -> tuple[Tracker, list[tuple[Any, int, Any]]]:
    """Follow every producer's channels; returns the tracker and the nodes whose arguments need patching."""
    import torch

    tracker = Tracker()
    layouts: dict[Any, tuple[int, tuple] | None] = {}
    # (node, arg index, index in a list argument or None, layout, divisor): the argument becomes the number of
    # kept channels in ``layout`` divided by ``divisor`` (the head size for a view into heads)
    patches: list[tuple[Any, int, int | None, Any, int]] = []
    attr = {n: n.target for n in gm.graph.nodes if n.op == "get_attr"}

    def lay(arg):
        return layouts.get(arg) if isinstance(arg, torch.fx.Node) else None

    for node in gm.graph.nodes:
        op, args = _op(node), node.args
        inputs = [a for a in node.all_input_nodes if layouts.get(a) is not None]
        x = lay(args[0]) if args else None
        out = None
        if op == "conv2d":
            weight = attr.get(args[1])
            groups = args[6] if len(args) > 6 else 1
            channels = _shape(node)[1] if _shape(node) else 0
            bias = attr.get(args[2]) if len(args) > 2 and args[2] is not None else None
            if weight is None:
                tracker.freeze(x, "conv2d with a computed weight")
            elif groups == 1:
                if x is not None:
                    tracker.slices.append((weight, 1, x[1]))
                out = (1, ((tracker.new(channels, weight, bias), 1),))
            elif x is not None and groups == channels == sum(tracker.spaces[s].size * b for s, b in x[1]):
                tracker.slices += [(weight, 0, x[1])] + ([(bias, 0, x[1])] if bias else [])
                patches.append((node, 6, None, x, 1))
                out = x
            else:
                tracker.freeze(x, f"grouped conv2d (groups={groups})")
        elif op == "linear":
            weight, bias = attr.get(args[1]), attr.get(args[2]) if len(args) > 2 and args[2] is not None else None
            shape = _shape(node)
            if weight is None or not shape:
                tracker.freeze(x, "linear with a computed weight")
            else:
                if x is not None:
                    if x[0] == len(_shape(args[0])) - 1:
                        tracker.slices.append((weight, 1, x[1]))
                    else:
                        tracker.freeze(x, "linear over a non-channel axis")
                out = (len(shape) - 1, ((tracker.new(shape[-1], weight, bias), 1),))
        elif op == "batch_norm" and x is not None and x[0] == 1:
            tracker.slices += [(attr[a], 0, x[1]) for a in args[1:5] if a in attr]
            out = x
        elif op == "layer_norm" and x is not None:
            if x[0] == len(_shape(args[0])) - 1 and len(args[1]) == 1:
                tracker.slices += [(attr[a], 0, x[1]) for a in args[2:4] if a in attr]
                patches.append((node, 1, 0, x, 1))
                out = x
            else:
                tracker.freeze(x, "layer_norm over more than the channel axis")
        elif op in UNARY and x is not None:
            out = x
        elif op in ("flatten", "view", "reshape", "_unsafe_view") and x is not None:
            shape_in, shape_out = _shape(args[0]), _shape(node)
            flat = (len(shape_in) == 4 and x[0] == 1 and len(shape_out) == 2 and len(x) == 2
                    and (op != "flatten" or (args[1] == 1 and (len(args) < 3 or args[2] in (-1, 3)))))
            split = (op != "flatten" and len(x) == 2 and len(x[1]) == 1 and x[0] == len(shape_in) - 1
                     and len(shape_out) == len(shape_in) + 1 and shape_out[:-2] == shape_in[:-1]
                     and shape_out[-2] * shape_out[-1] == shape_in[-1] > 0)
            merge = (op != "flatten" and len(x) == 3 and x[0] == len(shape_in) - 2
                     and len(shape_out) == len(shape_in) - 1 and shape_out[:-1] == shape_in[:-2]
                     and shape_out[-1] == shape_in[-2] * shape_in[-1] > 0)
            if flat:
                block = shape_in[2] * shape_in[3]
                out = (1, tuple((s, b * block) for s, b in x[1]))
                if op != "flatten" and isinstance(args[1][1], int) and args[1][1] != -1:
                    patches.append((node, 1, 1, out, 1))
            elif split and isinstance(args[1][-2], int):  # [..., D] → [..., heads, head size]
                tracker.set_unit(x[1][0][0], shape_out[-1])
                out = (len(shape_out) - 2, x[1], shape_out[-1])
                patches.append((node, 1, len(shape_out) - 2, x, shape_out[-1]))
            elif merge and isinstance(args[1][-1], int):  # [..., heads, head size] → [..., D]
                out = (len(shape_out) - 1, x[1])
                patches.append((node, 1, len(shape_out) - 1, out, 1))
            else:
                tracker.freeze(x, f"{op} that reshapes the channels in a way not handled (e.g. a fused QKV "
                                  "projection split into heads)")
        elif op == "transpose" and x is not None:
            rank = len(_shape(args[0]))
            first, second = args[1] % rank, args[2] % rank
            axis = second if x[0] == first else first if x[0] == second else x[0]
            out = (axis, *x[1:])
        elif op == "permute" and x is not None:
            out = ([d % len(args[1]) for d in args[1]].index(x[0]), *x[1:])
        elif op == "matmul" and inputs:
            a, b = lay(args[0]), lay(args[1])
            rank = len(_shape(node))
            if (a is not None and b is not None and len(a) == len(b) == 3 and a[0] == b[0] < rank - 2
                    and a[2] == b[2]):
                tracker.union(a[1][0][0], b[1][0][0])  # attention: head h of one side meets head h of the other
                out = a
            else:
                for tracked in (a, b):
                    tracker.freeze(tracked, "matmul over the channels")
        elif op in ("softmax", "_softmax", "log_softmax") and x is not None:
            if args[1] % len(_shape(args[0])) != x[0]:
                out = x
            else:
                tracker.freeze(x, "softmax over the channels")
        elif op == "mean" and x is not None and x[0] == 1 and not (len(args) > 2 and args[2]):
            dims = {d % len(_shape(args[0])) for d in args[1]}
            out = x if dims <= {2, 3} else None
            if out is None:
                tracker.freeze(x, "mean over the channel axis")
        elif op in BINARY and inputs:
            a, b = lay(args[0]), lay(args[1]) if len(args) > 1 else None
            if a is not None and b is not None and a[0] == b[0] and [tracker.spaces[s].size * k for s, k in a[1]] \
                    == [tracker.spaces[s].size * k for s, k in b[1]] and len(a[1]) == len(b[1]):
                for (sa, _), (sb, _) in zip(a[1], b[1], strict=True):
                    tracker.union(sa, sb)
                out = a
            elif (a is None) != (b is None) and _broadcasts(node, args[1] if a is not None else args[0],
                                                            (a or b)[0]):
                out = a or b  # a scalar, or a tensor of size 1 along the channels (an attention mask)
            else:
                for tracked in (a, b):
                    tracker.freeze(tracked, f"{op} with a tensor whose channels are not tracked (residual from "
                                            "an input or an untracked layer)")
        elif op == "cat" and inputs:
            parts = [lay(t) for t in args[0]]
            dim = args[1] if len(args) > 1 else 0
            rank = len(_shape(node))
            if all(p is not None and p[0] == dim % rank for p in parts):
                out = (parts[0][0], tuple(seg for p in parts for seg in p[1]))
            else:
                for p in parts:
                    tracker.freeze(p, "cat that mixes tracked and untracked channels")
        elif inputs:
            reason = "the model's output" if node.op == "output" else f"{op or node.op} (not handled)"
            for tracked in inputs:
                tracker.freeze(layouts[tracked], reason)
        layouts[node] = out
    return tracker, patches


def _broadcasts(node: Any, other: Any, axis: int) -> bool:
    """Whether ``other`` (a scalar or a tensor) is broadcast along ``axis`` of ``node``'s output."""
    import torch

    if not isinstance(other, torch.fx.Node):
        return True
    shape, rank = _shape(other), len(_shape(node))
    from_right = rank - axis
    return len(shape) < from_right or shape[-from_right] == 1


def _keep_count(size: int, params: StructuredPruneParams) -> int:
    target = size * (1 - params.ratio)
    return min(size, max(params.round_to, int(target // params.round_to) * params.round_to))


def _indices(segments: tuple, tracker: Tracker, kept: dict[int, Any]) -> Any:
    import torch

    parts, offset = [], 0
    for space, block in segments:
        root = tracker.root(space)
        size = tracker.spaces[space].size
        keep = kept.get(root, torch.arange(size))
        parts.append((offset + keep[:, None] * block + torch.arange(block)[None, :]).reshape(-1))
        offset += size * block
    return torch.cat(parts)


def prune(gm: Any, params: StructuredPruneParams, original: dict[str, int] | None = None) -> dict[str, Any]:
    """Prune ``gm`` (an ``ExportedProgram.module()``) in place; returns the report. With ``original`` (group →
    channel count, filled on the first call), ``ratio`` applies to each group's original size: a schedule's
    stages then reach the same channel counts as one shot at their ratio."""
    import torch

    tracker, patches = analyse(gm)
    tensors = {**dict(gm.named_parameters()), **dict(gm.named_buffers())}
    groups: dict[int, list[int]] = {}
    for i in range(len(tracker.spaces)):
        groups.setdefault(tracker.root(i), []).append(i)
    kept: dict[int, Any] = {}
    report_groups, left_alone = [], []
    for root, members in groups.items():
        producers = [p for m in members for p in tracker.spaces[m].producers]
        size = tracker.spaces[root].size
        names = [w.rsplit(".", 1)[0] for w, _ in producers]
        base = size if original is None else original.setdefault(names[0], size)
        if tracker.spaces[root].frozen or size < params.min_channels:
            left_alone.append({"layers": names, "channels": size,
                               "reason": tracker.spaces[root].frozen or f"fewer than {params.min_channels}"})
            continue
        importance = torch.zeros(size)
        for weight, _ in producers:
            w = tensors[weight].detach().reshape(size, -1)
            importance += w.abs().sum(1) if params.norm == "l1" else w.pow(2).sum(1).sqrt()
        unit = tracker.spaces[root].unit
        if unit > 1:  # whole attention heads: score them by the sum over their channels
            heads = size // unit
            keep_heads = min(heads, max(1, int(base // unit * (1 - params.ratio))))
            if keep_heads >= heads:
                left_alone.append({"layers": names, "channels": size, "reason": f"{heads} heads: none to remove"})
                continue
            best = torch.sort(torch.topk(importance.reshape(heads, unit).sum(1), keep_heads).indices).values
            kept[root] = (best[:, None] * unit + torch.arange(unit)[None, :]).reshape(-1)
            report_groups.append({"layers": names, "channels": size, "kept": keep_heads * unit,
                                  "coupled": len(producers) > 1, "heads": heads, "kept_heads": keep_heads})
            continue
        count = min(size, _keep_count(base, params))
        if count >= size:
            left_alone.append({"layers": names, "channels": size, "reason": f"rounding to {params.round_to}"})
            continue
        kept[root] = torch.sort(torch.topk(importance, count).indices).values
        report_groups.append({"layers": names, "channels": size, "kept": count, "coupled": len(producers) > 1})
    cuts = [(w, 0, ((s, 1),)) for s, space in enumerate(tracker.spaces) for w, _ in space.producers]
    cuts += [(b, 0, ((s, 1),)) for s, space in enumerate(tracker.spaces) for _, b in space.producers if b]
    for name, dim, segments in cuts + tracker.slices:
        if not any(tracker.root(s) in kept for s, _ in segments):
            continue
        index = _indices(segments, tracker, kept)
        old = tensors[name]
        owner_path, _, leaf = name.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        new = old.detach().index_select(dim, index).clone()
        if isinstance(old, torch.nn.Parameter):
            setattr(owner, leaf, torch.nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            owner.register_buffer(leaf, new)
        tensors[name] = getattr(owner, leaf)
    for node, position, item, layout, divisor in patches:
        if any(tracker.root(s) in kept for s, _ in layout[1]):
            count = len(_indices(layout[1], tracker, kept)) // divisor
            args = list(node.args)
            if item is None:
                args[position] = count
            else:
                args[position] = [*args[position][:item], count, *args[position][item + 1:]]
            node.args = tuple(args)
    gm.recompile()
    return {"groups": report_groups, "left_alone": left_alone}


def macs(module: Any, args: tuple) -> int:
    """Multiply-accumulates of one forward pass (convolutions, linear layers, matrix products)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*args)
    return counter.get_total_flops() // 2


def run(ctx: PassContext, params: StructuredPruneParams) -> PassResult:
    import torch

    from workers.formats import load_program
    from workers.passes.torch_models import reexport

    gm = load_program(ctx.model_path).module()
    one = tuple(torch.from_numpy(v) for v in ctx.example_inputs(1).values())
    params_before = sum(p.numel() for p in gm.parameters())
    macs_before = macs(gm, one)
    stages: list[dict[str, Any]] = []
    if params.schedule:
        pruned, report = _gradually(ctx, gm, params, stages)
    else:
        report = prune(gm, params)
        pruned = reexport(gm, ctx) if report["groups"] else None
    if not report["groups"]:
        raise ValueError("no channel group could be pruned: " + "; ".join(
            f"{', '.join(g['layers'])}: {g['reason']}" for g in report["left_alone"]))
    out = ctx.work_dir / "model.pt2"
    torch.export.save(pruned, str(out))
    ctx.check_cancelled()
    params_after = sum(p.numel() for p in pruned.module().parameters())
    metrics = {**report, "params_before": params_before, "params_after": params_after,
               "macs_before": macs_before, "macs_after": macs(pruned.module(), one)}
    if stages:
        metrics["stages"] = stages
    ctx.log(f"pruned {len(report['groups'])} group(s): parameters {params_before} → {params_after}, MACs "
            f"{metrics['macs_before']} → {metrics['macs_after']}; left alone: "
            + ("; ".join(f"{', '.join(g['layers'])} ({g['reason']})" for g in report["left_alone"]) or "none"))
    return PassResult(out, "torch_export", metrics=metrics)


def _gradually(ctx: PassContext, gm: Any, params: StructuredPruneParams, stages: list[dict[str, Any]]
               ) -> tuple[Any, dict[str, Any]]:
    """Prune in ``schedule.steps`` stages (at most one per epoch of the ramp, the first ``ramp`` share of the
    epochs), each re-exported and trained for its share of the ramp; the last stage reaches ``ratio`` exactly as
    one shot would, and the epochs after the ramp fine-tune it (with early stopping on ``validation``). The final
    program and the report of the groups pruned (channels counted against the original)."""
    import torch

    from workers.passes.torch_models import TorchModel, reexport
    from workers.passes.training.finetune import train

    schedule = params.schedule
    ramp = max(1, int(schedule.epochs * schedule.ramp))
    count = min(schedule.steps, ramp)
    original: dict[str, int] = {}
    groups: dict[str, dict[str, Any]] = {}
    left_alone: list[dict[str, Any]] = []
    program = None
    for stage in range(1, count + 1):
        ctx.check_cancelled()
        ratio = sparsity_at(stage, params.ratio, schedule.model_copy(update={"steps": count}))
        report = prune(gm, params.model_copy(update={"ratio": ratio}), original)
        for group in report["groups"]:
            groups[group["layers"][0]] = {**group, "channels": original[group["layers"][0]]}
        left_alone = report["left_alone"]
        program = reexport(gm, ctx)
        path = ctx.work_dir / f"stage{stage}.pt2"
        torch.export.save(program, str(path))
        model = TorchModel(path, "torch_export")
        epochs = ramp // count + (stage <= ramp % count)
        training = train(ctx, model.module, model.weights(), schedule.model_copy(update={"epochs": epochs}),
                         validate=False)
        program = model.program
        stages.append({"ratio": round(ratio, 4), "parameters": sum(p.numel() for p in model.module.parameters()),
                       "epochs": training["epochs_run"], "loss": training["losses"][-1]})
        ctx.log(f"stage {stage}/{count}: ratio {ratio:.0%}, {stages[-1]['parameters']} parameters, loss "
                f"{stages[-1]['loss']:.4f}")
        gm = program.module()
    if schedule.epochs > ramp:
        training = train(ctx, model.module, model.weights(), schedule.model_copy(
            update={"epochs": schedule.epochs - ramp}))
        stages.append({"ratio": params.ratio, "parameters": stages[-1]["parameters"],
                       "epochs": training["epochs_run"], "loss": training["losses"][-1], "fine_tuning": True})
    left_alone = [g for g in left_alone if g["layers"][0] not in groups]
    return program, {"groups": list(groups.values()), "left_alone": left_alone}


def check(params: StructuredPruneParams, source_format: str, datasets: set[str]) -> str | None:
    return cannot_train("a schedule", source_format, datasets) if params.schedule else None


SPEC = register(
    PassSpec(
        name="prune.structured",
        description="Remove whole conv channels and linear neurons (residual-coupled layers together), so the "
                    "model gets physically smaller and faster; torch.export programs.",
        accepts=("torch_export",),
        produces="torch_export",
        params=StructuredPruneParams,
        run=run,
        requires=("torch",),
        check=check,
    )
)
