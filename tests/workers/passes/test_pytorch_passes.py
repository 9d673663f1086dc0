"""Pruning, fine-tuning and low-rank factorization through the service, on digits models the tests train."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests import factories
from tests.app.test_models_api import OCTET, assert_problem
from tests.factories import CNN_INPUTS
from tests.workers.jobs import run_job, upload_data, upload_model

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)


def upload_torchscript(client, cnn) -> str:
    response = client.post(f"/v1/models?name=cnn.pt&inputs={CNN_INPUTS}", content=factories.torchscript_bytes(*cnn),
                           headers=OCTET)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def pt2_weights(client, artifact_id: str) -> dict[str, np.ndarray]:
    """The weight arrays inside a .pt2 artifact, read as raw tensors (no unpickling)."""
    import torch

    blob = client.get(f"/v1/artifacts/{artifact_id}/download").content
    program = torch.export.load(io.BytesIO(blob))
    return {k: v.detach().numpy() for k, v in program.state_dict.items() if k.endswith("weight") and v.dim() >= 2}


def test_prune_half_then_finetune_keeps_accuracy_and_sparsity(client, trained_cnn, training_sets):
    job = run_job(client, {"model_id": upload_torchscript(client, trained_cnn), "datasets": training_sets,
                           "steps": [{"pass": "prune.magnitude", "params": {"sparsity": 0.5}},
                                     {"pass": "train.finetune", "params": {"epochs": 3}}]})
    pruned, tuned = job["steps"][0]["metrics"], job["steps"][1]["metrics"]
    assert abs(pruned["sparsity"] - 0.5) <= 0.01 and set(pruned["layers"]) >= {"0.weight", "3.weight"}
    assert abs(tuned["sparsity"] - 0.5) <= 0.01 and len(tuned["losses"]) == tuned["epochs_run"] >= 1
    original, result = job["metrics"]["original"], job["metrics"]["result"]
    assert original["accuracy"] > 0.95 and result["accuracy"] >= original["accuracy"] - 0.01
    assert result["conditions"]["runtime"] == "torch" and job["artifacts"][-1]["format"] == "torchscript"
    assert original["nonzero_parameters"] - result["nonzero_parameters"] >= 0.49 * pruned["weights"]
    logs = client.get(f"/v1/jobs/{job['id']}/logs").text
    assert "epoch 1/3: loss" in logs and "validation" in logs


def test_pt2_programs_are_pruned_and_trained_in_place(client, trained_cnn, training_sets):
    model_id = upload_model(client, factories.pt2_bytes(*trained_cnn))
    job = run_job(client, {"model_id": model_id, "datasets": training_sets,
                           "steps": [{"pass": "prune.magnitude", "params": {"sparsity": 0.6, "scope": "per_layer"}},
                                     {"pass": "train.finetune", "params": {"epochs": 1}}]})
    pruned, tuned = (pt2_weights(client, a["id"]) for a in job["artifacts"])
    for name, weight in tuned.items():
        assert abs(float(np.mean(weight == 0)) - 0.6) <= 0.01, name
        assert np.all(weight[pruned[name] == 0] == 0)
    assert any(not np.array_equal(pruned[n], tuned[n]) for n in tuned), "fine-tuning changed nothing"
    assert job["metrics"]["result"]["accuracy"] >= job["metrics"]["original"]["accuracy"] - 0.02


def test_l1_pushes_weights_towards_zero(client, trained_cnn, training_sets):
    model_id = upload_model(client, factories.pt2_bytes(*trained_cnn))

    def near_zero_share(l1: float) -> float:
        job = run_job(client, {"model_id": model_id, "datasets": {"training": training_sets["training"]},
                               "steps": [{"pass": "train.finetune", "params": {"epochs": 2, "l1": l1, "seed": 7}}]})
        weights = pt2_weights(client, job["artifacts"][0]["id"])
        return float(np.mean(np.concatenate([np.abs(w).ravel() for w in weights.values()]) < 1e-3))

    plain, sparse = near_zero_share(0.0), near_zero_share(1e-3)
    assert sparse > 2 * plain and sparse > 0.05, (plain, sparse)


def test_lowrank_reaches_the_ratio_and_high_energy_stays_close(client, trained_cnn, training_sets):
    mlp = run_job(client, {"model_id": upload_model(client, factories.onnx_mlp()),
                           "steps": [{"pass": "lowrank.svd", "params": {"rank_by": "ratio", "ratio": 0.5}}]})
    metrics = mlp["steps"][0]["metrics"]
    assert metrics["params_after"] <= 0.5 * metrics["params_before"]
    assert all(layer["params_after"] < layer["params_before"] for layer in metrics["layers"].values())
    cnn = upload_model(client, factories.onnx_from_torch(*trained_cnn))
    job = run_job(client, {"model_id": cnn, "datasets": {"evaluation": training_sets["evaluation"]},
                           "steps": [{"pass": "lowrank.svd", "params": {"rank_by": "energy", "energy": 0.95,
                                                                        "min_params": 1000}}]})
    layers = job["steps"][0]["metrics"]["layers"]
    assert {v["op"] for v in layers.values()} >= {"Gemm"}
    assert job["metrics"]["result"]["parameters"] < job["metrics"]["original"]["parameters"]
    assert job["metrics"]["result"]["accuracy"] >= job["metrics"]["original"]["accuracy"] - 0.02
    assert job["metrics"]["result"]["fidelity"]["top1_agreement"] >= 0.97


def test_onnx_initializers_are_pruned_without_training(client):
    job = run_job(client, {"model_id": upload_model(client, factories.onnx_mlp()),
                           "steps": [{"pass": "prune.magnitude", "params": {"sparsity": 0.7}}]})
    assert abs(job["steps"][0]["metrics"]["sparsity"] - 0.7) <= 0.01
    result = job["metrics"]["result"]
    assert result["nonzero_parameters"] < 0.35 * result["parameters"]


def test_prune_finetune_int8_preset(client, trained_cnn, training_sets):
    payload = {"model_id": upload_torchscript(client, trained_cnn), "preset": "prune-finetune-int8",
               "datasets": {**training_sets, "calibration": training_sets["validation"]}}
    plan = client.post("/v1/jobs?dry_run=true", json=payload).json()
    assert [s["pass"] for s in plan["steps"]] == ["prune.magnitude", "train.finetune", "export.onnx",
                                                  "quantize.static"]
    job = run_job(client, payload)
    assert job["metrics"]["result"]["accuracy"] >= job["metrics"]["original"]["accuracy"] - 0.02
    assert job["metrics"]["result"]["size_bytes"] < 0.35 * job["metrics"]["original"]["size_bytes"]
    missing = client.post("/v1/jobs", json={**payload, "datasets": {}})
    assert assert_problem(missing, 422)["errors"][0]["loc"] == ["preset"]


@pytest.mark.parametrize(("step", "field"), [
    ({"pass": "prune.magnitude", "params": {"sparsity": 1.5}}, "sparsity"),
    ({"pass": "prune.magnitude", "params": {"scope": "everywhere"}}, "scope"),
    ({"pass": "train.finetune", "params": {"epochs": 0}}, "epochs"),
    ({"pass": "train.finetune", "params": {"l1": -1}}, "l1"),
    ({"pass": "lowrank.svd", "params": {"energy": 0}}, "energy"),
    ({"pass": "lowrank.svd", "params": {"ratio": 1.0}}, "ratio"),
    ({"pass": "lowrank.svd", "params": {"op_types": ["Relu"]}}, "op_types"),
])
def test_bad_params_are_422(client, uploaded_model, step, field):
    problem = assert_problem(client.post("/v1/jobs", json={"model_id": uploaded_model["id"], "steps": [step]}), 422)
    assert any(e["loc"][:4] == ["steps", 0, "params", field] for e in problem["errors"]), problem


def test_training_an_onnx_model_is_refused_with_the_reason(client, uploaded_model):
    dataset = upload_data(client, x=np.zeros((4, 64), np.float32))
    problem = assert_problem(client.post("/v1/jobs", json={
        "model_id": uploaded_model["id"], "datasets": {"training": dataset},
        "steps": [{"pass": "train.finetune"}]}), 422)
    assert "takes torchscript or torch_export models, but the model at this step is onnx" in \
        problem["errors"][0]["msg"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_programs_halve_the_size_and_keep_accuracy(client, trained_cnn, training_sets, dtype):
    import torch

    model_id = upload_model(client, factories.pt2_bytes(*trained_cnn))
    job = run_job(client, {"model_id": model_id, "datasets": {"evaluation": training_sets["evaluation"]},
                           "steps": [{"pass": "quantize.half", "params": {"dtype": dtype}}],
                           "evaluation": {"max_accuracy_drop": 0.02}, "target": {"objective": "size"}})
    original, result = job["metrics"]["original"], job["metrics"]["result"]
    assert result["size_bytes"] < 0.7 * original["size_bytes"] and job["regressed"] is False
    assert result["fidelity"]["top1_agreement"] > 0.97 and result["conditions"]["runtime"] == "torch"
    blob = client.get(f"/v1/artifacts/{job['artifacts'][0]['id']}/download").content
    program = torch.export.load(io.BytesIO(blob))
    assert {t.dtype for t in program.state_dict.values() if t.is_floating_point()} == {getattr(torch, dtype)}
    x = torch.from_numpy(factories.digits()[2][:4])
    assert program.module()(x).dtype == torch.float32  # float32 in and out
