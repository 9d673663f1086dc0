"""``quantize.qat`` — quantization-aware training: fine-tune with int8 rounding simulated, then convert to an
int8 QDQ ONNX model that ONNX Runtime runs.

Works on torch.export programs with a ``training`` dataset. Fake quantizers are inserted into the ATen graph
of ``ExportedProgram.module()`` around every ``conv2d`` and ``linear``, simulating exactly what
``quantize.static`` produces: weights symmetric int8 per output channel (scale = max|w| / 127.5, zero point 0,
ONNX Runtime's rule, so the trained grid is the stored one) and inputs asymmetric uint8 per tensor with ranges
from a moving-average min/max observer (initialised on ``calibration_samples`` training samples, then updated
with ``averaging_constant`` during training). Gradients pass the rounding straight through (within range).
After ``epochs`` of training the fake quantizers are removed, the trained float program is re-exported and
exported to ONNX, and ONNX Runtime's static quantizer converts it (QDQ, per-channel int8 weights, uint8
activations calibrated min/max on the same training samples). What the conversion recalibrates is the
activation ranges (min/max over the samples rather than the observers' moving average); the weights land on
the grid they were trained for.

The pass also converts the model *without* QAT the same way (post-training static int8) and reports both on
the ``validation`` dataset (else the training samples): ``float``, ``ptq`` and ``qat`` metrics, and what QAT
recovered.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import Field

from workers.passes.base import PassContext, PassResult, PassSpec, register
from workers.passes.training.loop import TrainingParams


class QatParams(TrainingParams):
    learning_rate: float = Field(default=1e-4, gt=0, le=1, description="Optimizer step size (a tenth of training's "
                                 "usual: the model is already trained and only has to adapt to the rounding).")
    calibration_samples: int = Field(default=256, ge=1, le=100_000, description="Training samples that set the "
                                     "initial activation ranges and calibrate the conversion.")
    averaging_constant: float = Field(default=0.01, gt=0, le=1, description="Weight of each batch in the "
                                      "observers' moving min/max.")


def _fake_quantizers() -> tuple[type, type]:
    import torch

    class WeightFakeQuant(torch.nn.Module):
        """Symmetric int8 per output channel, recomputed from the weight on every call."""

        def forward(self, w: Any) -> Any:
            scale = (w.detach().abs().reshape(w.shape[0], -1).amax(1) / 127.5).clamp(min=1e-12).float()
            zero = torch.zeros(w.shape[0], dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -128, 127)

    class InputFakeQuant(torch.nn.Module):
        """Asymmetric uint8 per tensor over a moving-average min/max (pure observer while ``quantize`` is off)."""

        def __init__(self, averaging: float) -> None:
            super().__init__()
            self.averaging, self.low, self.high, self.quantize = averaging, None, None, False

        def forward(self, x: Any) -> Any:
            if not self.quantize or torch.is_grad_enabled():  # calibrating, or a training step
                low, high = float(x.detach().min()), float(x.detach().max())
                if self.low is None or not self.quantize:
                    self.low = low if self.low is None else min(self.low, low)
                    self.high = high if self.high is None else max(self.high, high)
                else:
                    self.low += self.averaging * (low - self.low)
                    self.high += self.averaging * (high - self.high)
            if not self.quantize:
                return x
            low, high = min(self.low, 0.0), max(self.high, 0.0)
            scale = max((high - low) / 255, 1e-12)
            return torch.fake_quantize_per_tensor_affine(x, scale, int(round(-low / scale)), 0, 255)

    return WeightFakeQuant, InputFakeQuant


def insert(gm: Any, averaging: float) -> tuple[list[Any], dict[str, Any]]:
    """Fake quantizers around every conv2d/linear of ``gm`` (in place); the input quantizers, and the weights
    they quantize by name."""
    import torch

    weight_fq, input_fq = _fake_quantizers()
    targets = {torch.ops.aten.conv2d.default, torch.ops.aten.linear.default}
    inputs, weights = [], {}
    for index, node in enumerate(list(gm.graph.nodes)):
        if node.op != "call_function" or node.target not in targets or node.args[1].op != "get_attr":
            continue
        gm.add_submodule(f"qat_weight{index}", weight_fq())
        observer = input_fq(averaging)
        gm.add_submodule(f"qat_input{index}", observer)
        inputs.append(observer)
        weights[node.args[1].target] = gm.get_parameter(node.args[1].target)
        with gm.graph.inserting_before(node):
            weight = gm.graph.call_module(f"qat_weight{index}", (node.args[1],))
            x = gm.graph.call_module(f"qat_input{index}", (node.args[0],))
        node.args = (x, weight, *node.args[2:])
    if not inputs:
        raise ValueError("the program has no conv2d or linear layer with a constant weight to quantize")
    gm.recompile()
    return inputs, weights


def remove(gm: Any) -> None:
    """Take the fake quantizers out again: the trained float model."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target.startswith("qat_"):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            gm.delete_submodule(node.target)
    gm.recompile()


def run(ctx: PassContext, params: QatParams) -> PassResult:
    import torch

    from workers.formats import load_program
    from workers.measure import load_dataset
    from workers.passes.torch_models import reexport
    from workers.passes.training.finetune import train
    from workers.passes.training.loop import predict

    gm = load_program(ctx.model_path).module()
    observers, weights = insert(gm, params.averaging_constant)
    names = [s["name"] for s in ctx.inputs]
    arrays, _ = load_dataset(ctx.datasets["training"], params.calibration_samples)
    predict(gm, names, arrays)  # the observers see the calibration samples
    for observer in observers:
        observer.quantize = True
    training = train(ctx, gm, weights, params)
    remove(gm)
    trained = ctx.work_dir / "qat.pt2"
    torch.export.save(reexport(gm, ctx), str(trained))
    qat = _convert(ctx, trained, "qat", params)
    ptq = _convert(ctx, ctx.model_path, "ptq", params)
    scores = _compare(ctx, {"float": None, "ptq": ptq, "qat": qat})
    ctx.log(f"QAT int8 {scores['qat']} vs post-training int8 {scores['ptq']} vs float {scores['float']} "
            f"({scores['on']})")
    return PassResult(qat, "onnx", metrics={"training": training, "layers": len(observers), **scores})


def _convert(ctx: PassContext, program: Any, label: str, params: QatParams) -> Any:
    """Export ``program`` to ONNX and quantize it statically (QDQ) on the training samples."""
    from workers.passes.export.onnx import OnnxExportParams
    from workers.passes.export.onnx import run as export
    from workers.passes.quantization.static import StaticQuantizeParams
    from workers.passes.quantization.static import run as quantize

    folder = ctx.work_dir / label
    (folder / "export").mkdir(parents=True)
    (folder / "int8").mkdir()
    exported = export(dataclasses.replace(ctx, model_path=program, model_format="torch_export",
                                          work_dir=folder / "export"), OnnxExportParams())
    calibration = {**ctx.datasets, "calibration": ctx.datasets["training"]}
    return quantize(dataclasses.replace(ctx, model_path=exported.model_path, model_format="onnx",
                                        work_dir=folder / "int8", datasets=calibration),
                    StaticQuantizeParams(method="minmax", per_channel=True,
                                         calibration_samples=params.calibration_samples)).model_path


def _compare(ctx: PassContext, models: dict[str, Any]) -> dict[str, Any]:
    """Accuracy (class labels) or MSE to the labels of each model on the validation or training data."""
    from workers.measure import load_dataset
    from workers.metrics import task_metrics
    from workers.runtimes import load_runner, predict

    role = "validation" if "validation" in ctx.datasets else "training"
    arrays, labels = load_dataset(ctx.datasets[role], 2000)
    scores: dict[str, Any] = {"on": f"{role} dataset ({len(next(iter(arrays.values())))} samples)"}
    for label, path in models.items():
        fmt = "torch_export" if path is None else "onnx"
        runner = load_runner(path or ctx.model_path, fmt, 1, ctx.inputs)
        found = task_metrics(predict(runner, ctx.inputs, arrays), labels)
        scores[label] = found.get("accuracy", found.get("mse"))
    if None not in (scores["qat"], scores["ptq"]):
        scores["recovered"] = round(scores["qat"] - scores["ptq"], 6)
    return scores


SPEC = register(
    PassSpec(
        name="quantize.qat",
        description="Quantization-aware training of a torch.export program (fake-quantized weights and inputs, "
                    "fine-tuned), converted to an int8 QDQ ONNX model; reports post-training int8 beside it.",
        accepts=("torch_export",),
        produces="onnx",
        params=QatParams,
        run=run,
        requires=("torch", "onnxruntime"),
        datasets=("training",),
    )
)
