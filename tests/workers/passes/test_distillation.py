"""Knowledge distillation through the service: derived and uploaded students on the digits CNN."""

from __future__ import annotations

import pytest

from tests import factories
from tests.app.test_models_api import OCTET, assert_problem
from tests.workers.jobs import run_job, upload_data, upload_model

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)


@pytest.fixture(scope="session")
def teacher():
    return factories.digits_cnn(epochs=10)


@pytest.fixture
def digits_sets(client) -> dict[str, str]:
    x_train, y_train, x_test, y_test = factories.digits()
    return {"training": upload_data(client, input=x_train[:-200], labels=y_train[:-200]),
            "validation": upload_data(client, input=x_train[-200:], labels=y_train[-200:]),
            "evaluation": upload_data(client, input=x_test, labels=y_test)}


def test_derived_student_distils_close_to_the_teacher_and_beats_labels_only(client, teacher, digits_sets):
    model_id = upload_model(client, factories.pt2_bytes(*teacher))

    def distil(alpha: float) -> dict:
        return run_job(client, {"model_id": model_id, "datasets": digits_sets, "steps": [{
            "pass": "distill.kd", "params": {"width_ratio": 0.4, "alpha": alpha, "epochs": 12, "patience": 4,
                                             "seed": 3}}]})

    kd, labels_only = distil(0.7), distil(0.0)
    metrics = kd["steps"][0]["metrics"]
    assert metrics["student_parameters"] <= 0.25 * metrics["teacher_parameters"]
    assert kd["metrics"]["result"]["parameters"] == metrics["student_parameters"]
    teacher_accuracy = kd["metrics"]["original"]["accuracy"]
    kd_accuracy, labels_accuracy = kd["metrics"]["result"]["accuracy"], labels_only["metrics"]["result"]["accuracy"]
    assert kd_accuracy >= teacher_accuracy - 0.03
    assert kd_accuracy >= labels_accuracy - 0.01, (kd_accuracy, labels_accuracy)
    assert kd["artifacts"][0]["format"] == "torch_export"
    logs = client.get(f"/v1/jobs/{kd['id']}/logs").text
    assert "student derived:" in logs and "epoch 1/12: loss" in logs and "validation" in logs
    print(f"teacher {metrics['teacher_parameters']} params {teacher_accuracy:.4f}; student "
          f"{metrics['student_parameters']} params: KD {kd_accuracy:.4f}, labels only {labels_accuracy:.4f}")


def test_an_uploaded_student_is_distilled_and_a_mismatched_one_refused(client, teacher, digits_sets):
    import torch

    teacher_id = client.post(f"/v1/models?name=t.pt&inputs={factories.CNN_INPUTS}",
                             content=factories.torchscript_bytes(*teacher), headers=OCTET).json()["id"]

    def student(classes: int) -> str:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                  torch.nn.Linear(32, classes)).eval()
        body = factories.torchscript_bytes(net, torch.zeros(2, 1, 8, 8))
        return client.post(f"/v1/models?name=s.pt&inputs={factories.CNN_INPUTS}", content=body,
                           headers=OCTET).json()["id"]

    small = student(10)
    job = run_job(client, {"model_id": teacher_id, "datasets": digits_sets, "steps": [
        {"pass": "distill.kd", "params": {"student_model_id": small, "epochs": 15, "learning_rate": 0.005}}]})
    assert job["steps"][0]["metrics"]["student_parameters"] == 64 * 32 + 32 + 32 * 10 + 10
    assert job["metrics"]["result"]["accuracy"] > 0.85 and job["artifacts"][0]["format"] == "torchscript"

    wrong = student(5)
    problem = assert_problem(client.post("/v1/jobs", json={"model_id": teacher_id, "datasets": digits_sets,
                                                           "steps": [{"pass": "distill.kd", "params": {
                                                               "student_model_id": wrong}}]}), 422)
    assert problem["errors"][0]["loc"] == ["steps", 0, "params", "student_model_id"]
    assert "shapes must match" in problem["errors"][0]["msg"]
    derived = assert_problem(client.post("/v1/jobs", json={"model_id": teacher_id, "datasets": digits_sets,
                                                           "steps": [{"pass": "distill.kd",
                                                                      "params": {"width_ratio": 0.5}}]}), 422)
    assert derived["errors"][0]["loc"] == ["steps", 0, "params"] and ".pt2" in derived["errors"][0]["msg"]
    missing = assert_problem(client.post("/v1/jobs", json={"model_id": teacher_id, "datasets": digits_sets,
                                                           "steps": [{"pass": "distill.kd", "params": {
                                                               "student_model_id": "0" * 32}}]}), 422)
    assert missing["errors"][0]["msg"].endswith("not found")
    both = assert_problem(client.post("/v1/jobs", json={"model_id": teacher_id, "datasets": digits_sets,
                                                        "steps": [{"pass": "distill.kd", "params": {}}]}), 422)
    assert "exactly one of student_model_id or width_ratio" in both["detail"]


def test_distill_int8_preset(client, teacher, digits_sets):
    payload = {"model_id": upload_model(client, factories.pt2_bytes(*teacher)), "preset": "distill-int8",
               "datasets": {**digits_sets, "calibration": digits_sets["validation"]}}
    plan = client.post("/v1/jobs?dry_run=true", json=payload).json()
    assert [s["pass"] for s in plan["steps"]] == ["distill.kd", "export.onnx", "quantize.static"]
    job = run_job(client, payload)
    assert job["metrics"]["result"]["accuracy"] >= job["metrics"]["original"]["accuracy"] - 0.03
    assert job["metrics"]["result"]["size_bytes"] < 0.1 * job["metrics"]["original"]["size_bytes"]


def test_feature_matching_through_a_learned_projection(client, teacher, digits_sets):
    job = run_job(client, {"model_id": upload_model(client, factories.pt2_bytes(*teacher)), "datasets": digits_sets,
                           "steps": [{"pass": "distill.kd", "params": {"width_ratio": 0.4, "epochs": 12, "patience": 4,
                                                                       "seed": 3, "feature_weight": 0.1}}]})
    logs = client.get(f"/v1/jobs/{job['id']}/logs").text
    assert "matching features of linear to the teacher's linear through a learned Linear" in logs
    assert job["metrics"]["result"]["accuracy"] >= job["metrics"]["original"]["accuracy"] - 0.03
    losses = job["steps"][0]["metrics"]["losses"]
    assert losses[-1] < losses[0]


def test_depth_derived_student_keeps_evenly_spaced_blocks(client):
    import numpy as np

    model, ids = factories.tiny_transformer(layers=4)
    tokens = np.random.default_rng(0).integers(0, 100, (96, 16))
    job = run_job(client, {"model_id": upload_model(client, factories.pt2_bytes(model, ids)),
                           "datasets": {"training": upload_data(client, input_ids=tokens[:64]),
                                        "evaluation": upload_data(client, input_ids=tokens[64:])},
                           "target": {"inputs": {"input_ids": {"low": 0, "high": 100}}},
                           "steps": [{"pass": "distill.kd", "params": {"depth_ratio": 0.5, "epochs": 2}}]})
    metrics = job["steps"][0]["metrics"]
    per_block = 64 * 192 + 192 + 64 * 64 + 64 + 4 * 64 + 64 * 256 + 256 + 256 * 64 + 64
    assert metrics["teacher_parameters"] - metrics["student_parameters"] == 2 * per_block
    assert "kept blocks [0, 3] of blocks.0–3" in client.get(f"/v1/jobs/{job['id']}/logs").text
    assert job["metrics"]["result"]["parameters"] == metrics["student_parameters"]
