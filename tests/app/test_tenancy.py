"""API keys and tenants: another tenant's resources answer exactly like missing ones; admins see all."""

from __future__ import annotations

import pytest

from tests.app.test_models_api import OCTET, assert_problem
from tests.factories import npz_bytes
from tests.workers.test_runner import run


@pytest.fixture
def keys(env, monkeypatch) -> dict[str, dict[str, str]]:
    """Auth required; Authorization headers of tenants acme and globex, and of an admin (tenant ops)."""
    from app.core.db import session_scope
    from app.core.settings import get_settings
    from app.keys import service

    monkeypatch.setenv("TENSORPRESS_AUTH", "required")
    get_settings.cache_clear()
    headers = {}
    with session_scope() as session:
        for name, tenant, admin in (("acme", "acme", False), ("globex", "globex", False), ("admin", "ops", True)):
            headers[name] = {"Authorization": f"Bearer {service.create(session, tenant, admin=admin)[1]}"}
    return headers


def test_requests_without_a_valid_key_are_refused(client, keys):
    from app.core.db import session_scope
    from app.keys import service

    good = keys["acme"]["Authorization"]
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwYXNz"},
                    {"Authorization": forged}, {"Authorization": "Bearer tp_0000000000000000_" + "x" * 43}):
        response = client.get("/v1/models", headers=headers)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/v1/passes").status_code == 401  # every /v1 route, not only tenant resources
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/models", headers=keys["acme"]).status_code == 200
    with session_scope() as session:
        key_id = good.split("_")[1]
        assert service.revoke(session, key_id) and not service.revoke(session, key_id)
    assert_problem(client.get("/v1/models", headers=keys["acme"]), 401)


def test_operators_routes_need_an_admin_key(client, keys):
    for path in ("/metrics", "/v1/workers"):
        assert_problem(client.get(path), 401)
        problem = assert_problem(client.get(path, headers=keys["acme"]), 403)
        assert "admin key" in problem["detail"]
        assert client.get(path, headers=keys["admin"]).status_code == 200
    assert client.get("/readyz").status_code in (200, 503)  # probes need no key; they name no tenant or host


def test_another_tenants_resources_answer_like_missing_ones(client, keys, mlp_bytes):
    acme, globex = keys["acme"], keys["globex"]
    model = client.post("/v1/models?name=mlp.onnx", content=mlp_bytes, headers={**OCTET, **acme}).json()
    x = npz_bytes(input=__import__("numpy").zeros((4, 16), "float32"))
    dataset = client.post("/v1/datasets?name=d.npz", content=x, headers={**OCTET, **acme}).json()
    job = client.post("/v1/jobs", json={"model_id": model["id"], "steps": [{"pass": "quantize.dynamic"}]},
                      headers=acme).json()
    run(job["id"])
    artifact = client.get(f"/v1/jobs/{job['id']}", headers=acme).json()["artifacts"][0]

    def same_as_missing(method: str, path: str, real_id: str, **kwargs) -> None:
        theirs = client.request(method, path.format(real_id), headers=globex, **kwargs)
        missing = client.request(method, path.format("0" * 32), headers=globex, **kwargs)
        assert theirs.status_code == missing.status_code == 404, (path, theirs.text)
        assert theirs.json()["detail"].replace(real_id, "ID") == missing.json()["detail"].replace("0" * 32, "ID")

    for method, path, real_id in (
            ("GET", "/v1/models/{}", model["id"]), ("GET", "/v1/models/{}/download", model["id"]),
            ("DELETE", "/v1/models/{}", model["id"]), ("GET", "/v1/datasets/{}", dataset["id"]),
            ("DELETE", "/v1/datasets/{}", dataset["id"]), ("GET", "/v1/jobs/{}", job["id"]),
            ("POST", "/v1/jobs/{}/cancel", job["id"]), ("GET", "/v1/jobs/{}/logs", job["id"]),
            ("GET", "/v1/jobs/{}/events", job["id"]), ("GET", "/v1/jobs/{}/report", job["id"]),
            ("GET", "/v1/artifacts/{}", artifact["id"]), ("GET", "/v1/artifacts/{}/download", artifact["id"])):
        same_as_missing(method, path, real_id)
    for kind in ("models", "datasets", "jobs"):
        assert client.get(f"/v1/{kind}", headers=globex).json()["items"] == []
        assert len(client.get(f"/v1/{kind}", headers=acme).json()["items"]) == 1

    # ids inside a body: 422 naming the field, worded as for a missing id
    def body_problem(payload: dict) -> dict:
        return assert_problem(client.post("/v1/jobs", json={"steps": [{"pass": "quantize.dynamic"}], **payload},
                                          headers=globex), 422)["errors"][0]

    assert body_problem({"model_id": model["id"]}) == {"loc": ["model_id"], "msg": f"model {model['id']} not found"}
    assert body_problem({"artifact_id": artifact["id"]})["msg"] == f"artifact {artifact['id']} not found"
    mine = client.post("/v1/models?name=mlp.onnx", content=mlp_bytes, headers={**OCTET, **globex}).json()
    assert body_problem({"model_id": mine["id"], "datasets": {"evaluation": dataset["id"]}}) == {
        "loc": ["datasets", "evaluation"], "msg": f"dataset {dataset['id']} not found"}
    # and nothing of acme's changed
    assert client.get(f"/v1/models/{model['id']}", headers=acme).status_code == 200
    assert client.get(f"/v1/datasets/{dataset['id']}", headers=acme).status_code == 200


def test_an_admin_key_reads_and_manages_every_tenant(client, keys, mlp_bytes):
    acme, admin = keys["acme"], keys["admin"]
    model = client.post("/v1/models?name=mlp.onnx", content=mlp_bytes, headers={**OCTET, **acme}).json()
    job = client.post("/v1/jobs", json={"model_id": model["id"], "steps": [{"pass": "quantize.dynamic"}]},
                      headers=acme).json()
    assert [m["id"] for m in client.get("/v1/models", headers=admin).json()["items"]] == [model["id"]]
    assert client.get(f"/v1/jobs/{job['id']}", headers=admin).status_code == 200
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=admin).json()["state"] == "cancelled"
    assert client.delete(f"/v1/models/{model['id']}", headers=admin).status_code == 204
    assert client.get(f"/v1/models/{model['id']}", headers=acme).status_code == 404


def test_keys_from_the_command_line(env, monkeypatch, capsys, client):
    from app.cli import main
    from app.core.settings import get_settings

    main(["keys", "create", "--tenant", "acme"])
    key = capsys.readouterr().out.strip()
    assert key.startswith("tp_") and len(key) == 3 + 16 + 1 + 43
    main(["keys", "create", "--tenant", "ops", "--admin"])
    capsys.readouterr()
    main(["keys", "list"])
    listing = capsys.readouterr().out
    key_id = key.split("_")[1]
    assert key_id in listing and key.split("_", 2)[2] not in listing and "ops" in listing and "yes" in listing
    with pytest.raises(SystemExit, match="tenant name"):
        main(["keys", "create", "--tenant", "Not/Valid"])

    monkeypatch.setenv("TENSORPRESS_AUTH", "required")
    get_settings.cache_clear()
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    main(["keys", "revoke", key_id])
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    with pytest.raises(SystemExit, match="no live key"):
        main(["keys", "revoke", key_id])
