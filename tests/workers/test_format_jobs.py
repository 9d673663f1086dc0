"""Jobs on every upload format, run by the real runner; torch models are exported to ONNX on the way."""

from __future__ import annotations

import numpy as np
import pytest

from tests import factories
from tests.app.test_models_api import OCTET
from tests.factories import CNN_INPUTS
from tests.workers.jobs import finished

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)


@pytest.fixture
def digits_eval(client) -> str:
    _, _, x_test, y_test = factories.digits()
    response = client.post("/v1/datasets?name=digits-test.npz", content=factories.npz_bytes(input=x_test,
                                                                                            labels=y_test),
                           headers=OCTET)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_torchscript_preset_inserts_the_export_and_keeps_accuracy(client, torchscript, digits_eval):
    model = client.post(f"/v1/models?name=cnn.pt&inputs={CNN_INPUTS}", content=torchscript, headers=OCTET).json()
    payload = {"model_id": model["id"], "preset": "cpu-int8", "datasets": {"evaluation": digits_eval},
               "target": {"batch_sizes": [1, 16]}}
    plan = client.post("/v1/jobs?dry_run=true", json=payload).json()
    assert [(s["pass"], s["inserted"]) for s in plan["steps"]] == [("export.onnx", True), ("quantize.dynamic", False)]
    assert "exported first" in plan["steps"][0]["reason"]
    job = finished(client, client.post("/v1/jobs", json=payload).json()["id"])
    assert [s["status"] for s in job["steps"]] == ["succeeded", "succeeded"] and job["steps"][0]["inserted"]
    original, result = job["metrics"]["original"], job["metrics"]["result"]
    assert original["conditions"]["runtime"] == "torch" and result["conditions"]["runtime"] == "onnxruntime"
    assert original["accuracy"] > 0.8 and result["accuracy"] >= original["accuracy"] - 0.01
    assert result["fidelity"]["inputs"].startswith("evaluation dataset") and result["fidelity"]["top1_agreement"] > 0.98
    assert [a["format"] for a in job["artifacts"]] == ["onnx", "onnx"]
    assert job["steps"][0]["metrics"]["exporter"] == "torchscript"


def test_torch_export_program_to_onnx_keeps_the_dynamic_batch(client, pt2, digits_eval):
    import onnxruntime as ort

    model = client.post("/v1/models?name=cnn.pt2", content=pt2, headers=OCTET).json()
    job = finished(client, client.post("/v1/jobs", json={
        "model_id": model["id"], "steps": [{"pass": "export.onnx"}], "datasets": {"evaluation": digits_eval}}
    ).json()["id"])
    assert job["steps"][0]["metrics"]["exporter"] == "dynamo"
    assert job["metrics"]["result"]["accuracy"] == job["metrics"]["original"]["accuracy"]
    blob = client.get(f"/v1/artifacts/{job['artifacts'][0]['id']}/download").content
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 1, 8, 8]
    assert session.run(None, {"input": np.zeros((5, 1, 8, 8), np.float32)})[0].shape == (5, 10)


def test_onnx_zip_with_external_data_runs(client, mlp_bytes):
    archive = factories.onnx_zip_bytes(mlp_bytes)
    model = client.post("/v1/models?name=net.zip", content=archive, headers=OCTET).json()
    job = finished(client, client.post("/v1/jobs", json={"model_id": model["id"],
                                                         "steps": [{"pass": "quantize.dynamic"}]}).json()["id"])
    assert job["metrics"]["original"]["size_bytes"] >= len(mlp_bytes) - 1024
    assert job["metrics"]["result"]["size_bytes"] < 0.35 * len(mlp_bytes)
    assert job["metrics"]["result"]["fidelity"]["cosine"] > 0.99


def test_onnx_passes_refuse_torch_models_they_cannot_reach(client, pt2):
    model = client.post("/v1/models?name=cnn.pt2", content=pt2, headers=OCTET).json()
    response = client.post("/v1/jobs", json={"model_id": model["id"], "steps": [
        {"pass": "quantize.dynamic"}, {"pass": "export.onnx"}]})
    problem = response.json()
    assert response.status_code == 422
    assert problem["errors"][0]["loc"] == ["steps", 1, "pass"] and "takes torchscript or torch_export" in \
        problem["errors"][0]["msg"]
