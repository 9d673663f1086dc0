from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.factories import onnx_mlp, pickle_bytes

OCTET = {"content-type": "application/octet-stream"}


def stored_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "artifacts").rglob("*") if p.is_file()]


def model_rows() -> int:
    from app.core.db import session_scope
    from app.models import Model

    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(Model))


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    return body


def test_raw_upload_is_stored_and_inspected(client, mlp_bytes, env):
    response = client.post("/v1/models?name=mlp.onnx", content=mlp_bytes, headers=OCTET)
    body = response.json()
    assert response.status_code == 201
    assert body["format"] == "onnx" and body["name"] == "mlp.onnx"
    assert body["size_bytes"] == len(mlp_bytes)
    assert body["sha256"] == hashlib.sha256(mlp_bytes).hexdigest()
    assert body["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 64]}]
    assert body["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
    assert body["parameters"] == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert body["details"]["op_counts"] == {"MatMul": 3, "Add": 3, "Relu": 2}
    files = stored_files(env)
    assert len(files) == 1 and files[0].read_bytes() == mlp_bytes


def test_multipart_upload_takes_the_file_name(client, mlp_bytes):
    response = client.post("/v1/models", files={"file": ("../../etc/mynet.onnx", mlp_bytes)},
                           data={"comment": "ignored"})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "mynet.onnx"
    assert response.json()["size_bytes"] == len(mlp_bytes)


def test_list_get_paginate_delete(client, mlp_bytes, env):
    ids = [client.post(f"/v1/models?name=m{i}", content=mlp_bytes, headers=OCTET).json()["id"] for i in range(3)]
    first = client.get("/v1/models?limit=2").json()
    assert [m["id"] for m in first["items"]] == ids[::-1][:2] and first["next_cursor"]
    second = client.get(f"/v1/models?limit=2&cursor={first['next_cursor']}").json()
    assert [m["id"] for m in second["items"]] == [ids[0]] and second["next_cursor"] is None
    assert client.get(f"/v1/models/{ids[1]}").json()["name"] == "m1"
    assert client.delete(f"/v1/models/{ids[1]}").status_code == 204
    assert_problem(client.get(f"/v1/models/{ids[1]}"), 404)
    assert_problem(client.delete(f"/v1/models/{ids[1]}"), 404)
    assert len(stored_files(env)) == 2


def test_download_whole_range_and_conditional(client, uploaded_model, mlp_bytes):
    url = f"/v1/models/{uploaded_model['id']}/download"
    whole = client.get(url)
    assert whole.status_code == 200 and whole.content == mlp_bytes
    etag = f'"{uploaded_model["sha256"]}"'
    assert whole.headers["etag"] == etag
    assert whole.headers["content-disposition"] == "attachment; filename*=UTF-8''mlp.onnx"
    part = client.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == mlp_bytes[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(mlp_bytes)}"
    tail = client.get(url, headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == mlp_bytes[-5:]
    resumed = client.get(url, headers={"Range": "bytes=100-", "If-Range": etag})
    assert resumed.status_code == 206 and resumed.content == mlp_bytes[100:]
    stale = client.get(url, headers={"Range": "bytes=100-", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == mlp_bytes
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert_problem(client.get(url, headers={"Range": f"bytes={len(mlp_bytes)}-"}), 416)


@pytest.mark.parametrize(("body", "status"), [
    (b"", 400),
    (b"name,value\nlearning_rate,0.1\n" * 20, 415),
    (onnx_mlp()[:1000], 415),
    (pickle_bytes(), 415),
])
def test_bad_uploads_are_refused_and_leave_nothing(client, env, body, status):
    assert_problem(client.post("/v1/models?name=bad", content=body, headers=OCTET), status)
    assert model_rows() == 0
    assert stored_files(env) == []


def test_upload_over_the_limit_gets_413_and_leaves_nothing(client, env, monkeypatch, mlp_bytes):
    from tests.conftest import reset_caches

    monkeypatch.setenv("TENSORPRESS_MAX_UPLOAD_BYTES", str(len(mlp_bytes) - 1))
    reset_caches()

    def chunks():  # no Content-Length: the limit must hold while streaming
        for i in range(0, len(mlp_bytes), 65536):
            yield mlp_bytes[i:i + 65536]

    assert_problem(client.post("/v1/models?name=big", content=chunks(), headers=OCTET), 413)
    assert_problem(client.post("/v1/models?name=big", content=mlp_bytes, headers=OCTET), 413)
    assert_problem(client.post("/v1/models", files={"file": ("big.onnx", mlp_bytes)}), 413)
    assert model_rows() == 0
    assert stored_files(env) == []


def test_multipart_without_file_part(client):
    body = assert_problem(client.post("/v1/models", data={"name": "x"}, files={"other": ("a", b"1")}), 400)
    assert "'file'" in body["detail"]


def test_invalid_onnx_graph_is_refused(client, env):
    from onnx import TensorProto, helper

    broken = helper.make_model(helper.make_graph([helper.make_node("Relu", ["missing"], ["y"])], "g",
                                                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
                               opset_imports=[helper.make_opsetid("", 17)])
    assert_problem(client.post("/v1/models?name=b", content=broken.SerializeToString(), headers=OCTET), 422)
    assert model_rows() == 0 and stored_files(env) == []


def test_unknown_route_is_problem_json(client):
    assert_problem(client.get("/v1/nothing"), 404)


def test_display_names_keep_a_clients_file_name_and_refuse_paths_and_control_characters():
    from app.core.errors import ValidationFailed
    from app.core.uploads import display_name

    assert display_name(None, "C:\\Users\\me\\net.onnx", "model") == "net.onnx"
    assert display_name(None, "/home/me/net.onnx", "model") == "net.onnx"
    assert display_name(None, None, "model") == display_name(None, "/", "model") == "model"
    assert display_name("a" * 400, None, "model") == "a" * 255
    for bad in ("../evil.onnx", "a/b", "a\\b", "..", "evil\r\n.onnx", "nul\x00"):
        with pytest.raises(ValidationFailed):
            display_name(bad, None, "model")
    with pytest.raises(ValidationFailed):
        display_name(None, "x\r\nSet-Cookie: a=b.onnx", "model")
