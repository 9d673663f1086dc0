from __future__ import annotations

import json

from tests.app.test_models_api import assert_problem


def submit(client, model_id: str, steps=None, **extra):
    payload = {"model_id": model_id, "steps": steps or [{"pass": "quantize.dynamic"}], **extra}
    return client.post("/v1/jobs", json=payload)


def broker_messages(data_dir) -> list[dict]:
    return [json.loads(p.read_text()) for p in (data_dir / "broker" / "queue").glob("*.msg")]


def test_submit_records_the_job_then_sends_it(client, uploaded_model, env):
    response = submit(client, uploaded_model["id"], [{"pass": "quantize.dynamic", "params": {"per_channel": False}}],
                      target={"batch_sizes": [1, 4]})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["queue"] == "cpu" and job["progress"] == 0
    assert job["steps"][0]["pass"] == "quantize.dynamic" and job["steps"][0]["status"] == "pending"
    assert job["steps"][0]["params"]["per_channel"] is False and job["steps"][0]["params"]["weight_type"] == "int8"
    assert job["regressed"] is False and job["cache_hit"] is False and job["artifacts"] == []
    assert job["target"]["batch_sizes"] == [1, 4]
    messages = broker_messages(env)
    assert len(messages) == 1 and messages[0]["headers"]["task"] == "jobs.run"
    assert job["id"] in messages[0]["headers"]["argsrepr"]
    assert client.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]
    assert "queued on cpu: quantize.dynamic" in client.get(f"/v1/jobs/{job['id']}/logs").text


def test_bad_recipes_name_the_field(client, uploaded_model, env):
    mid = uploaded_model["id"]
    cases = [
        (submit(client, mid, [{"pass": "quantize.dynamic"}, {"pass": "prune.nonsense"}]), ["steps", 1, "pass"]),
        (submit(client, mid, [{"pass": "quantize.dynamic", "params": {"per_channel": "maybe"}}]),
         ["steps", 0, "params", "per_channel"]),
        (submit(client, mid, [{"pass": "quantize.dynamic", "params": {"bits": 4}}]), ["steps", 0, "params", "bits"]),
        (submit(client, mid, [{"pass": "quantize.dynamic", "params": {"op_types": []}}]),
         ["steps", 0, "params", "op_types"]),
        (submit(client, "0" * 32), ["model_id"]),
        (client.post("/v1/jobs", json={"model_id": mid, "steps": []}), ["steps"]),
        (submit(client, mid, target={"batch_sizes": [0]}), ["target"]),
        (submit(client, mid, colour="blue"), ["colour"]),
    ]
    for response, loc in cases:
        body = assert_problem(response, 422)
        assert loc in [e["loc"] for e in body["errors"]], (loc, body)
    assert client.get("/v1/jobs").json()["items"] == []
    assert broker_messages(env) == []


def test_not_json_is_422(client):
    response = client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert_problem(response, 422)


def test_list_filters_by_state_and_cancel(client, uploaded_model):
    first = submit(client, uploaded_model["id"]).json()
    second = submit(client, uploaded_model["id"]).json()
    cancelled = client.post(f"/v1/jobs/{first['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["steps"][0]["status"] == "cancelled"
    assert [j["id"] for j in client.get("/v1/jobs?state=queued").json()["items"]] == [second["id"]]
    assert [j["id"] for j in client.get("/v1/jobs?state=cancelled").json()["items"]] == [first["id"]]
    assert len(client.get("/v1/jobs").json()["items"]) == 2
    assert_problem(client.post(f"/v1/jobs/{first['id']}/cancel"), 409)
    assert_problem(client.get("/v1/jobs?state=sleeping"), 422)
    assert_problem(client.post(f"/v1/jobs/{'f' * 32}/cancel"), 404)
    assert_problem(client.get(f"/v1/jobs/{'f' * 32}/logs"), 404)


def test_model_in_use_cannot_be_deleted(client, uploaded_model):
    job = submit(client, uploaded_model["id"]).json()
    assert_problem(client.delete(f"/v1/models/{uploaded_model['id']}"), 409)
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert client.delete(f"/v1/models/{uploaded_model['id']}").status_code == 204


def test_passes_are_listed_with_their_schema(client):
    items = {p["name"]: p for p in client.get("/v1/passes").json()["items"]}
    dynamic = items["quantize.dynamic"]
    assert dynamic["accepts"] == ["onnx"] and dynamic["produces"] == "onnx" and dynamic["queue"] == "cpu"
    assert dynamic["available"] is True and dynamic["unavailable_reason"] is None
    props = dynamic["params_schema"]["properties"]
    assert set(props) >= {"per_channel", "op_types", "weight_type"}
    assert all(p.get("description") for p in props.values())


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "database": "ok", "broker": "ok", "store": "ok", "workers": {"cpu": 0, "gpu": 0}}  # jobs wait, with a reason
    assert client.get("/openapi.json").json()["info"]["title"] == "TensorPress"


def test_under_up_the_api_is_not_ready_until_a_worker_is_live(env):
    from fastapi.testclient import TestClient

    from app.core.db import session_scope
    from app.main import create_app
    from app.worker_registry import repository

    with TestClient(create_app(embedded=True)) as embedded:
        waiting = embedded.get("/readyz")
        assert waiting.status_code == 503 and waiting.headers["content-type"] == "application/problem+json"
        assert waiting.json()["checks"]["workers"] == {"cpu": 0, "gpu": 0} and "no worker" in waiting.json()["detail"]
        with session_scope() as session:
            repository.beat(session, "w1@host", queues=["cpu"], device={}, passes=[], versions={})
        ready = embedded.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["workers"] == {"cpu": 1, "gpu": 0}


def test_target_inputs_are_checked_against_the_model(client, uploaded_model):
    cases = [
        ({"inputs": {"x": {"shape": [1, 63]}}}, ["target", "inputs", "x", "shape"]),
        ({"inputs": {"input_ids": {"low": 0, "high": 10}}}, ["target", "inputs", "input_ids"]),
        ({"inputs": {"x": {"low": 3, "high": 1}}}, ["target", "inputs", "x"]),
    ]
    for target, loc in cases:
        body = assert_problem(submit(client, uploaded_model["id"], target=target), 422)
        assert [e["loc"] for e in body["errors"]] == [loc], body
    assert submit(client, uploaded_model["id"], target={"inputs": {"x": {"shape": [4, 64]}}}).status_code == 202


def test_passes_this_deployment_cannot_run_or_without_their_data_are_refused(client, uploaded_model, monkeypatch):
    from workers.passes import REGISTRY, PassSpec
    from workers.passes.quantization.dynamic import DynamicQuantizeParams

    def never(ctx, params):
        raise AssertionError("must not run")

    monkeypatch.setitem(REGISTRY, "engine.unavailable", PassSpec(
        name="engine.unavailable", description="needs a library that is not installed", accepts=("onnx",),
        produces="onnx", params=DynamicQuantizeParams, run=never, requires=("no_such_library_here",)))
    monkeypatch.setitem(REGISTRY, "quantize.needs_data", PassSpec(
        name="quantize.needs_data", description="needs calibration data", accepts=("onnx",), produces="onnx",
        params=DynamicQuantizeParams, run=never, datasets=("calibration",)))
    listed = {p["name"]: p for p in client.get("/v1/passes").json()["items"]}
    assert listed["engine.unavailable"]["available"] is False
    assert "no_such_library_here" in listed["engine.unavailable"]["unavailable_reason"]
    problem = assert_problem(submit(client, uploaded_model["id"], [{"pass": "engine.unavailable"},
                                                                   {"pass": "quantize.needs_data"}]), 422)
    messages = {tuple(e["loc"]): e["msg"] for e in problem["errors"]}
    assert "cannot run here" in messages[("steps", 0, "pass")]
    assert "needs a 'calibration' dataset" in messages[("steps", 1, "pass")]
