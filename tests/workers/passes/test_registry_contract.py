"""Every registered pass: documented parameters, and a run on a tiny model of each format it accepts."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from tests import factories
from workers.passes import REGISTRY, PassContext

MLP_INPUTS = [{"name": "x", "dtype": "float32", "shape": ["batch", 64]}]
MLP_OUTPUTS = [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]


def tiny_model(fmt: str, folder, conv: bool = False):
    """A 64→256→256→10 MLP in the requested format (``conv``: the 64 inputs seen as 16×2×2 through a 3×3
    convolution first, for passes that rewrite convolutions)."""
    import torch

    if fmt == "onnx":
        path = folder / "model.onnx"
        factories.onnx_mlp(path)
        return path
    torch.manual_seed(0)
    layers = [torch.nn.Unflatten(1, (16, 2, 2)), torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.Flatten()] * conv
    module = torch.nn.Sequential(*layers, torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)).eval()
    example = torch.randn(2, 64)
    if fmt == "torchscript":
        path = folder / "model.pt"
        torch.jit.save(torch.jit.trace(module, example), str(path))
    else:
        path = folder / "model.pt2"
        path.write_bytes(factories.pt2_bytes(module, example))
    return path


# Passes whose parameters have no complete default.
EXAMPLE_PARAMS = {"distill.kd": {"width_ratio": 0.5, "epochs": 1}}
CASES = [(name, fmt) for name, spec in sorted(REGISTRY.items()) for fmt in spec.accepts]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_params_are_documented_frozen_and_strict(name):
    spec = REGISTRY[name]
    assert spec.description and spec.family == name.split(".")[0] and spec.produces
    defaults = spec.params(**EXAMPLE_PARAMS.get(name, {}))
    for field_name, field in spec.params.model_fields.items():
        assert field.description, f"{name}.{field_name} has no description"
    with pytest.raises(ValidationError):
        spec.params(no_such_parameter=1)
    with pytest.raises(ValidationError):
        defaults.__setattr__(next(iter(spec.params.model_fields)), None)


@pytest.mark.parametrize(("name", "fmt"), CASES)
def test_every_pass_runs_on_a_tiny_model(name, fmt, tmp_path):
    import onnxruntime as ort

    spec = REGISTRY[name]
    params = spec.params(**EXAMPLE_PARAMS.get(name, {}))
    if spec.queue == "gpu" or spec.unavailable_reason():
        pytest.skip(f"{name} needs a GPU worker with its libraries ({spec.unavailable_reason() or 'gpu queue'}); "
                    "it runs in tests/gpu (make test-gpu)")
    if spec.check and (refused := spec.check(params, fmt, set(spec.datasets))):
        pytest.skip(f"refused at submission, as it should be: {refused}")
    model = tiny_model(fmt, tmp_path, conv=name == "rewrite.separable")
    rng = np.random.default_rng(0)
    datasets = {}
    for role in spec.datasets:
        datasets[role] = tmp_path / f"{role}.npz"
        np.savez(datasets[role], x=rng.standard_normal((32, 64)).astype(np.float32),
                 labels=rng.integers(0, 10, 32))
    work = tmp_path / "work"
    work.mkdir()
    outputs = MLP_OUTPUTS if fmt == "onnx" else [{"name": "output", "dtype": "float32", "shape": ["batch", 10]}]
    ctx = PassContext(model_path=model, model_format=fmt, work_dir=work, inputs=MLP_INPUTS, outputs=outputs,
                      datasets=datasets)
    result = spec.run(ctx, params)
    assert result.format == spec.output_format(fmt) and result.model_path.is_file()
    assert result.model_path.is_relative_to(work)
    if result.format == "onnx":
        session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
        feed = rng.standard_normal((3, 64)).astype(np.float32)
        if session.get_inputs()[0].type == "tensor(float16)":
            feed = feed.astype(np.float16)
        assert session.run(None, {"x": feed})[0].shape == (3, 10)
