"""CPU engines through the service: AOTInductor and OpenVINO compile, reload, run and match the original."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from tests import factories
from tests.app.test_models_api import assert_problem
from tests.workers.jobs import run_job, upload_data, upload_model

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)


@pytest.fixture
def digits_sets(client) -> dict[str, str]:
    x_train, _, x_test, y_test = factories.digits()
    return {"calibration": upload_data(client, input=x_train[:128]),
            "evaluation": upload_data(client, input=x_test, labels=y_test)}


def test_aotinductor_package_runs_and_matches(client, cnn, digits_sets):
    job = run_job(client, {"model_id": upload_model(client, factories.pt2_bytes(*cnn)),
                           "datasets": {"evaluation": digits_sets["evaluation"]}, "target": {"batch_sizes": [1, 16]},
                           "steps": [{"pass": "engine.aotinductor"}]})
    [artifact] = job["artifacts"]
    assert artifact["format"] == "aotinductor" and artifact["metadata"]["device"] == "cpu"
    assert artifact["metadata"]["torch"].startswith("2.")
    result = job["metrics"]["result"]
    assert result["conditions"]["runtime"] == "aotinductor" and set(result["latency_ms"]) == {"1", "16"}
    assert result["fidelity"]["max_abs_error"] < 1e-3 and result["accuracy"] == job["metrics"]["original"]["accuracy"]


def test_openvino_f32_default_and_int8(client, cnn, digits_sets):
    model_id = upload_model(client, factories.onnx_from_torch(*cnn))
    f32 = run_job(client, {"model_id": model_id, "datasets": {"evaluation": digits_sets["evaluation"]},
                           "steps": [{"pass": "engine.openvino", "params": {"precision": "f32"}}]})
    assert f32["metrics"]["result"]["conditions"]["runtime"] == "openvino"
    assert f32["metrics"]["result"]["conditions"]["inference_precision"] == "f32"
    assert f32["metrics"]["result"]["fidelity"]["max_abs_error"] < 1e-3
    default = run_job(client, {"model_id": model_id, "datasets": {"evaluation": digits_sets["evaluation"]},
                               "steps": [{"pass": "engine.openvino"}]})
    blob = client.get(f"/v1/artifacts/{default['artifacts'][0]['id']}/download").content
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(blob)).read("tensorpress.json"))
    assert manifest["precision"] == "default"
    assert default["metrics"]["result"]["conditions"]["inference_precision"] == manifest["resolved_precision"]
    assert default["artifacts"][0]["metadata"]["resolved_precision"] == manifest["resolved_precision"]
    assert default["metrics"]["result"]["fidelity"]["top1_agreement"] >= 0.99
    int8 = run_job(client, {"model_id": model_id, "datasets": digits_sets,
                            "steps": [{"pass": "engine.openvino", "params": {"int8": True, "precision": "f32"}}]})
    assert int8["metrics"]["result"]["accuracy"] >= int8["metrics"]["original"]["accuracy"] - 0.01
    assert int8["metrics"]["result"]["size_bytes"] < 0.5 * int8["metrics"]["original"]["size_bytes"]


def test_openvino_int8_uses_the_transformer_scheme_and_keeps_gelu_fed_matmuls_float(client, transformer_onnx):
    ids = np.random.default_rng(2).integers(0, 100, (96, 16))
    job = run_job(client, {"model_id": upload_model(client, transformer_onnx),
                           "datasets": {"calibration": upload_data(client, input_ids=ids[:64]),
                                        "evaluation": upload_data(client, input_ids=ids[64:])},
                           "target": {"inputs": {"input_ids": {"shape": [1, 16], "low": 0, "high": 100}}},
                           "steps": [{"pass": "engine.openvino",
                                      "params": {"int8": True, "float_after": ["Gelu"], "precision": "f32"}}]})
    metrics = job["steps"][0]["metrics"]
    assert metrics["transformer_scheme"] is True and metrics["kept_float"] == 2  # one down-projection per block
    assert job["metrics"]["result"]["fidelity"]["cosine"] > 0.98


def test_openvino_from_a_torch_export_program(client, cnn):
    job = run_job(client, {"model_id": upload_model(client, factories.pt2_bytes(*cnn)),
                           "steps": [{"pass": "engine.openvino", "params": {"precision": "f32"}}]})
    assert job["metrics"]["result"]["fidelity"]["max_abs_error"] < 1e-3


def test_engine_requests_that_cannot_run_are_refused(client, uploaded_model, torchscript):
    problem = assert_problem(client.post("/v1/jobs", json={"model_id": uploaded_model["id"], "steps": [
        {"pass": "engine.openvino", "params": {"int8": True}}]}), 422)
    assert problem["errors"][0]["msg"] == "int8 needs a 'calibration' dataset"
    problem = assert_problem(client.post("/v1/jobs", json={"model_id": uploaded_model["id"], "steps": [
        {"pass": "engine.openvino", "params": {"float_after": ["Gelu"]}}]}), 422)
    assert problem["errors"][0]["msg"] == "float_after applies only to int8"
    problem = assert_problem(client.post("/v1/jobs", json={"model_id": uploaded_model["id"], "steps": [
        {"pass": "engine.aotinductor"}]}), 422)
    assert "takes torch_export models" in problem["errors"][0]["msg"]
