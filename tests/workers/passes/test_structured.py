"""Structured pruning: channels and neurons removed, dependent layers resized, the model smaller and runnable."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests import factories
from tests.app.test_models_api import OCTET, assert_problem
from tests.workers.jobs import run_job, upload_data, upload_model
from workers.passes import PassContext
from workers.passes.pruning.structured import StructuredPruneParams, run


def prune_directly(tmp_path, model, example, inputs, **params):
    path = tmp_path / "model.pt2"
    path.write_bytes(factories.pt2_bytes(model, example))
    work = tmp_path / "work"
    work.mkdir()
    result = run(PassContext(model_path=path, model_format="torch_export", work_dir=work, inputs=inputs),
                 StructuredPruneParams(**params))
    return result, torch.export.load(str(result.model_path)).module()


def cnn_cost(c0: int, c1: int, hidden: int) -> tuple[int, int]:
    """Parameters and MACs per sample of the digits CNN with these widths (8×8 input, one 2×2 pooling)."""
    params = (c0 * 9 + c0) + 2 * c0 + (c1 * c0 * 9 + c1) + (hidden * c1 * 16 + hidden) + (10 * hidden + 10)
    macs = c0 * 64 * 9 + c1 * 64 * c0 * 9 + hidden * c1 * 16 + 10 * hidden
    return params, macs


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_digits_cnn_30_percent_plus_finetune(client, tmp_path):
    x_train, y_train, x_test, y_test = factories.digits()
    model_id = upload_model(client, factories.pt2_bytes(*factories.digits_cnn(epochs=10)))
    job = run_job(client, {"model_id": model_id, "datasets": {
        "training": upload_data(client, input=x_train, labels=y_train),
        "evaluation": upload_data(client, input=x_test, labels=y_test)},
        "steps": [{"pass": "prune.structured", "params": {"ratio": 0.3}},
                  {"pass": "train.finetune", "params": {"epochs": 5}}]})
    metrics = job["steps"][0]["metrics"]
    assert [g["kept"] for g in metrics["groups"]] == [8, 16, 88]  # 16·0.7, 32·0.7, 128·0.7 down to multiples of 8
    assert (metrics["params_before"], metrics["macs_before"]) == cnn_cost(16, 32, 128)
    assert (metrics["params_after"], metrics["macs_after"]) == cnn_cost(8, 16, 88)
    assert metrics["left_alone"] == [{"layers": ["9"], "channels": 10, "reason": "the model's output"}]
    original, result = job["metrics"]["original"], job["metrics"]["result"]
    assert result["parameters"] == cnn_cost(8, 16, 88)[0] < 0.4 * original["parameters"]
    assert result["accuracy"] >= original["accuracy"] - 0.02
    blob = client.get(f"/v1/artifacts/{job['artifacts'][-1]['id']}/download").content
    (tmp_path / "pruned.pt2").write_bytes(blob)
    code = ("import torch, sys; m = torch.export.load(sys.argv[1]).module(); "
            "print(tuple(m(torch.zeros(5, 1, 8, 8)).shape))")
    fresh = subprocess.run([sys.executable, "-c", code, str(tmp_path / "pruned.pt2")], capture_output=True,
                           text=True, check=True, env={"TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1", "PATH": "/usr/bin"})
    assert fresh.stdout.strip() == "(5, 10)"


def test_residual_coupled_layers_are_pruned_together(tmp_path):
    model, example = factories.residual_mlp()
    result, pruned = prune_directly(tmp_path, model, example, [{"name": "x", "dtype": "float32",
                                                                "shape": ["batch", 64]}])
    groups = {tuple(g["layers"]): g for g in result.metrics["groups"]}
    assert groups[("inp", "a2", "b2")] == {"layers": ["inp", "a2", "b2"], "channels": 128, "kept": 88,
                                           "coupled": True}
    assert groups[("a1",)]["kept"] == groups[("b1",)]["kept"] == 176
    assert pruned(torch.randn(3, 64)).shape == (3, 10)
    shapes = {k: tuple(v.shape) for k, v in pruned.state_dict().items()}
    assert shapes["inp.weight"] == (88, 64) and shapes["a1.weight"] == (176, 88) and shapes["a2.weight"] == (88, 176)
    assert shapes["out.weight"] == (10, 88)
    assert result.metrics["params_after"] == sum(v.numel() for v in pruned.parameters())


def test_transformer_loses_ffn_neurons_and_keeps_its_heads(tmp_path):
    model, ids = factories.tiny_transformer()
    result, pruned = prune_directly(tmp_path, model, ids, [{"name": "input_ids", "dtype": "int64",
                                                            "shape": ["batch", 16]}], ratio=0.3)
    assert sorted(g["layers"][0] for g in result.metrics["groups"]) == ["blocks.0.up", "blocks.1.up"]
    reasons = {g["layers"][0]: g["reason"] for g in result.metrics["left_alone"]}
    assert "fused QKV" in reasons["blocks.0.qkv"] and "residual" in reasons["blocks.0.down"]
    assert pruned(torch.randint(0, 100, (4, 16))).shape == (4, 64)
    assert pruned.state_dict()["blocks.0.up.weight"].shape == (176, 64)
    assert result.metrics["macs_after"] < result.metrics["macs_before"]


def test_nothing_prunable_is_a_clear_failure(tmp_path):
    with pytest.raises(ValueError, match="no channel group could be pruned: 0: the model's output"):
        prune_directly(tmp_path, torch.nn.Sequential(torch.nn.Linear(64, 32)).eval(), torch.randn(2, 64),
                       [{"name": "input", "dtype": "float32", "shape": ["batch", 64]}])


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_other_formats_are_refused_at_submission(client, uploaded_model, torchscript):
    problem = assert_problem(client.post("/v1/jobs", json={"model_id": uploaded_model["id"],
                                                           "steps": [{"pass": "prune.structured"}]}), 422)
    assert "takes torch_export models, but the model at this step is onnx" in problem["errors"][0]["msg"]
    ts = client.post(f"/v1/models?name=cnn.pt&inputs={factories.CNN_INPUTS}", content=torchscript,
                     headers=OCTET).json()["id"]
    problem = assert_problem(client.post("/v1/jobs", json={"model_id": ts, "steps": [
        {"pass": "prune.structured", "params": {"ratio": 0.5}}]}), 422)
    assert "is torchscript" in problem["errors"][0]["msg"]
    bad = assert_problem(client.post("/v1/jobs", json={"model_id": ts, "steps": [
        {"pass": "prune.structured", "params": {"ratio": 1.0, "norm": "l3"}}]}), 422)
    assert {tuple(e["loc"][:4]) for e in bad["errors"]} >= {("steps", 0, "params", "ratio"),
                                                            ("steps", 0, "params", "norm")}


def test_attention_heads_are_removed_exactly(tmp_path):
    import copy

    model, (ids, mask) = factories.bert_like()
    batch = torch.export.Dim("batch", min=1, max=64)
    path = tmp_path / "bert.pt2"
    torch.export.save(torch.export.export(model, (ids, mask), dynamic_shapes=({0: batch}, {0: batch})), str(path))
    work = tmp_path / "work"
    work.mkdir()
    inputs = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", 16]},
              {"name": "attention_mask", "dtype": "int64", "shape": ["batch", 16]}]
    result = run(PassContext(model_path=path, model_format="torch_export", work_dir=work, inputs=inputs,
                             target={"inputs": {"input_ids": {"low": 0, "high": 100}}}),
                 StructuredPruneParams(ratio=0.5))
    attention = [g for g in result.metrics["groups"] if "heads" in g]
    assert [g["layers"] for g in attention] == [[f"layers.{i}.attention.{p}" for p in ("query", "key", "value")]
                                                for i in range(2)]
    assert all(g["heads"] == 8 and g["kept_heads"] == 4 and g["kept"] == 32 for g in attention)
    pruned = torch.export.load(str(result.model_path)).module()
    # The same as the original with the removed heads' values zeroed (and the FFN neurons removed likewise).
    reference = copy.deepcopy(model)
    state = pruned.state_dict()
    with torch.no_grad():
        for i, layer in enumerate(reference.layers):
            for name, module in (("attention.value", layer.attention.value), ("up", layer.up)):
                kept_rows = state[f"layers.{i}.{name}.weight"]
                keep = [int((module.weight == row).all(1).nonzero()[0]) for row in kept_rows]
                drop = [r for r in range(module.weight.shape[0]) if r not in keep]
                module.weight[drop] = 0
                module.bias[drop] = 0
    tokens = torch.randint(0, 100, (5, 16))
    attention_mask = torch.ones(5, 16, dtype=torch.int64)
    attention_mask[:, 12:] = 0
    with torch.no_grad():
        assert torch.allclose(pruned(tokens, attention_mask), reference(tokens, attention_mask), atol=1e-4)
    assert state["layers.0.attention.output.weight"].shape == (64, 32)
