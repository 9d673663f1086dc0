from __future__ import annotations

import io
import zipfile

import numpy as np
from numpy.lib import format as npy

from tests.app.test_jobs_api import submit
from tests.app.test_models_api import OCTET, assert_problem, stored_files
from tests.factories import npz_bytes


def upload(client, body: bytes, name: str = "data.npz"):
    return client.post(f"/v1/datasets?name={name}", content=body, headers=OCTET)


def mlp_data(n: int = 32, **overrides) -> bytes:
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((n, 64)).astype(np.float32), "labels": rng.integers(0, 10, n)}
    arrays.update(overrides)
    return npz_bytes(**{k: v for k, v in arrays.items() if v is not None})


def test_upload_reads_the_arrays_from_their_headers(client, env):
    response = upload(client, mlp_data(32))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "npz" and body["samples"] == 32 and body["name"] == "data.npz"
    assert {a["name"]: (a["dtype"], a["shape"]) for a in body["arrays"]} == {
        "x": ("float32", [32, 64]), "labels": ("int64", [32])}
    compressed = io.BytesIO()
    np.savez_compressed(compressed, x=np.zeros((4, 64), np.float32))
    assert upload(client, compressed.getvalue()).json()["samples"] == 4
    listed = client.get("/v1/datasets").json()["items"]
    assert [d["id"] for d in listed][-1] == body["id"]
    assert client.get(f"/v1/datasets/{body['id']}").json()["sha256"] == body["sha256"]
    assert client.delete(f"/v1/datasets/{body['id']}").status_code == 204
    assert_problem(client.get(f"/v1/datasets/{body['id']}"), 404)
    assert len(stored_files(env)) == 1


def claimed_shape(shape: tuple[int, ...]) -> bytes:
    """An .npz whose one .npy header claims ``shape`` of float32 but holds no data."""
    header = io.BytesIO()
    npy.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", header.getvalue())
    return buffer.getvalue()


def test_bad_datasets_are_refused_and_leave_nothing(client, env):
    objects = io.BytesIO()
    np.savez(objects, x=np.array([{"a": 1}, None], dtype=object))
    nan, inf = np.ones((4, 3), np.float32), np.ones((4, 3), np.float64)
    nan[2, 1], inf[3, 2] = np.nan, -np.inf
    compressed = io.BytesIO()
    np.savez_compressed(compressed, x=nan)
    cases = [
        (b"", 400, "empty"),
        (b"x,y\n1,2\n", 415, ".npz"),
        (objects.getvalue(), 422, "Python objects"),
        (npz_bytes(x=np.zeros((3, 2)), labels=np.zeros(4)), 422, "disagree"),
        (npz_bytes(x=np.float32(3.0)), 422, "scalar"),
        (mlp_data()[:200], 422, ""),
        (claimed_shape((2**62, 4)), 422, "truncated"),  # 2**64 bytes: the product overflowed int64 before
        (npz_bytes(x=np.zeros((3, 0), np.float32)), 422, "empty axis"),
        (npz_bytes(x=np.zeros((0, 3), np.float32)), 422, "empty axis"),
        (npz_bytes(x=nan), 422, "NaN or infinity (element 7 "),
        (npz_bytes(x=np.zeros((4, 3), np.float32), labels=inf), 422, "'labels' holds NaN or infinity"),
        (compressed.getvalue(), 422, "NaN or infinity"),
    ]
    for body, status, message in cases:
        problem = assert_problem(upload(client, body), status)
        assert message in problem["detail"], problem
    assert client.get("/v1/datasets").json()["items"] == [] and stored_files(env) == []


def test_datasets_must_fit_the_model_at_submission(client, uploaded_model):
    good = upload(client, mlp_data()).json()["id"]
    cases = {
        "array 'x' is missing": mlp_data(x=None, inputs=np.zeros((32, 64), np.float32)),
        "array 'x' is float64; the model takes float32": mlp_data(x=np.zeros((32, 64))),
        "array 'x' has 32 on axis 1; the model takes 64": mlp_data(x=np.zeros((32, 32), np.float32)),
        "array 'x' has shape [32, 8, 8]": mlp_data(x=np.zeros((32, 8, 8), np.float32)),
        "unexpected array(s) 'extra'": mlp_data(extra=np.zeros(32)),
    }
    for message, data in cases.items():
        dataset = upload(client, data).json()["id"]
        problem = assert_problem(submit(client, uploaded_model["id"], datasets={"evaluation": dataset}), 422)
        assert problem["errors"][0]["loc"] == ["datasets", "evaluation"]
        assert message in problem["errors"][0]["msg"], problem
    problem = assert_problem(submit(client, uploaded_model["id"], datasets={"testing": good}), 422)
    assert problem["errors"][0]["loc"] == ["datasets", "testing"]
    problem = assert_problem(submit(client, uploaded_model["id"], datasets={"evaluation": "0" * 32}), 422)
    assert problem["errors"][0]["msg"].endswith("not found")
    job = submit(client, uploaded_model["id"], datasets={"evaluation": good})
    assert job.status_code == 202 and job.json()["datasets"] == {"evaluation": good}
    assert_problem(client.delete(f"/v1/datasets/{good}"), 409)


def test_dry_run_answers_the_plan_and_stores_nothing(client, uploaded_model, env):
    dataset = upload(client, mlp_data()).json()
    response = client.post("/v1/jobs?dry_run=true", json={
        "model_id": uploaded_model["id"], "preset": "cpu-int8", "datasets": {"evaluation": dataset["id"]},
        "target": {"batch_sizes": [1, 8]}})
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["source_format"] == "onnx" and plan["queue"] == "cpu" and plan["preset"] == "cpu-int8"
    [step] = plan["steps"]
    assert step["pass"] == "quantize.dynamic" and step["params"]["per_channel"] is True
    assert step["reason"].startswith("preset cpu-int8:") and step["inserted"] is False
    assert plan["datasets"] == {"evaluation": {"id": dataset["id"], "name": "data.npz", "samples": 32}}
    assert plan["target"]["batch_sizes"] == [1, 8]
    bad = client.post("/v1/jobs?dry_run=true", json={"model_id": uploaded_model["id"],
                                                     "steps": [{"pass": "nope"}]})
    assert assert_problem(bad, 422)["errors"][0]["loc"] == ["steps", 0, "pass"]
    assert client.get("/v1/jobs").json()["items"] == []
    assert (env / "broker" / "queue").exists() is False or not list((env / "broker" / "queue").iterdir())


def test_presets_and_preset_errors(client, uploaded_model):
    presets = {p["name"]: p for p in client.get("/v1/presets").json()["items"]}
    assert "cpu-int8" in presets and presets["cpu-int8"]["description"]
    problem = assert_problem(client.post("/v1/jobs", json={"model_id": uploaded_model["id"], "preset": "magic"}),
                             422)
    assert problem["errors"][0]["loc"] == ["preset"]
    both = client.post("/v1/jobs", json={"model_id": uploaded_model["id"], "preset": "cpu-int8",
                                         "steps": [{"pass": "quantize.dynamic"}]})
    assert "exactly one of steps, preset or goal" in assert_problem(both, 422)["detail"]


def test_the_budget_metric_must_be_known_and_label_metrics_need_labels(client, uploaded_model):
    unlabeled = upload(client, mlp_data(labels=None)).json()["id"]
    labeled = upload(client, mlp_data()).json()["id"]
    problem = assert_problem(submit(client, uploaded_model["id"], evaluation={"metric": "vibes"}), 422)
    assert problem["errors"][0]["loc"][:2] == ["evaluation", "metric"]
    for datasets in ({}, {"evaluation": unlabeled}):
        problem = assert_problem(submit(client, uploaded_model["id"], datasets=datasets,
                                        evaluation={"metric": "f1_macro"}), 422)
        assert problem["errors"][0] == {"loc": ["evaluation", "metric"],
                                        "msg": "f1_macro needs an evaluation dataset with a 'labels' array"}
    assert submit(client, uploaded_model["id"], evaluation={"metric": "cosine"}).status_code == 202
    assert submit(client, uploaded_model["id"], datasets={"evaluation": labeled},
                  evaluation={"metric": "f1_macro", "max_accuracy_drop": 0.02}).status_code == 202
