"""Step 16's techniques through the service on the digits CNN: gradual pruning, 2:4 sparsity, weight clustering,
depthwise-separable rewrites and quantization-aware training."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests import factories
from tests.app.test_models_api import assert_problem
from tests.workers.jobs import run_job, upload_model
from tests.workers.passes.test_pytorch_passes import pt2_weights

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)


@pytest.fixture
def cnn_pt2(client, trained_cnn) -> str:
    return upload_model(client, factories.pt2_bytes(*trained_cnn))


def accuracy(job: dict) -> tuple[float, float]:
    return job["metrics"]["original"]["accuracy"], job["metrics"]["result"]["accuracy"]


def test_gradual_pruning_to_90_percent_keeps_accuracy_where_one_shot_loses_it(client, cnn_pt2, training_sets):
    one_shot = run_job(client, {"model_id": cnn_pt2, "datasets": training_sets,
                                "steps": [{"pass": "prune.magnitude", "params": {"sparsity": 0.9}}]})
    gradual = run_job(client, {"model_id": cnn_pt2, "datasets": training_sets, "steps": [
        {"pass": "prune.magnitude", "params": {"sparsity": 0.9, "schedule": {"epochs": 8}}}]})
    original, gradual_accuracy = accuracy(gradual)
    one_shot_accuracy = accuracy(one_shot)[1]
    metrics = gradual["steps"][0]["metrics"]
    assert abs(metrics["sparsity"] - 0.9) <= 0.005
    schedule = metrics["training"]["sparsities"]
    assert metrics["training"]["pruning_steps"] == len(schedule) == 10 and schedule[-1] == 0.9
    assert all(a < b for a, b in zip(schedule, schedule[1:], strict=False))  # grows every step
    assert schedule[0] - 0 > schedule[-1] - schedule[-2]  # fast first, slow at the end (polynomial decay)
    assert gradual_accuracy >= original - 0.02, (original, gradual_accuracy)
    assert one_shot_accuracy < original - 0.02 and one_shot_accuracy < gradual_accuracy, (one_shot_accuracy,
                                                                                           gradual_accuracy)
    weights = pt2_weights(client, gradual["artifacts"][-1]["id"])
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros / sum(w.size for w in weights.values()) >= 0.895


def test_schedules_need_a_torch_model_and_training_data(client, uploaded_model, cnn_pt2):
    step = {"pass": "prune.magnitude", "params": {"sparsity": 0.5, "schedule": {"epochs": 2}}}
    problem = assert_problem(client.post("/v1/jobs", json={"model_id": uploaded_model["id"], "steps": [step]}), 422)
    assert "ONNX cannot be trained" in problem["errors"][0]["msg"]
    problem = assert_problem(client.post("/v1/jobs", json={"model_id": cnn_pt2, "steps": [step]}), 422)
    assert problem["errors"][0]["msg"] == "a schedule needs a 'training' dataset"


def groups_of_four_have_two_zeros(weight: np.ndarray, input_axis: int) -> bool:
    moved = np.moveaxis(weight, input_axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // 4, 4)
    return bool(((groups == 0).sum(-1) >= 2).all())


def test_2_4_sparsity_holds_in_every_group_and_fine_tuning_keeps_accuracy(client, cnn_pt2, training_sets):
    job = run_job(client, {"model_id": cnn_pt2, "datasets": training_sets, "steps": [
        {"pass": "prune.semi_structured", "params": {"finetune": {"epochs": 3}}}]})
    metrics = job["steps"][0]["metrics"]
    assert metrics["skipped"] == ["0.weight"]  # the first convolution has one input channel
    assert metrics["layers"] == 3 and metrics["sparsity"] == 0.5 and metrics["training"]["epochs_run"] >= 1
    weights = pt2_weights(client, job["artifacts"][-1]["id"])
    for name in ("3.weight", "7.weight", "9.weight"):  # conv [out, in, kh, kw] and linear [out, in]: axis 1
        assert groups_of_four_have_two_zeros(weights[name], 1), name
    assert job["artifacts"][-1]["metadata"]["sparsity_pattern"] == "2:4"
    original, result = accuracy(job)
    assert result >= original - 0.02, (original, result)


def test_2_4_sparsity_on_onnx_matmuls_groups_the_input_rows(client):
    job = run_job(client, {"model_id": upload_model(client, factories.onnx_mlp()),
                           "steps": [{"pass": "prune.semi_structured"}]})
    model = onnx.load_from_string(client.get(f"/v1/artifacts/{job['artifacts'][-1]['id']}/download").content)
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer if i.dims and len(i.dims) == 2]
    assert len(weights) == 3
    for weight in weights:  # MatMul weights are [in, out]
        assert groups_of_four_have_two_zeros(weight, 0) and float(np.mean(weight == 0)) == 0.5
    assert job["metrics"]["result"]["fidelity"]["cosine"] > 0.8
