"""Uploads of every model format, detected from the bytes and inspected in the sandboxed child."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from urllib.parse import quote

import pytest

from tests import factories
from tests.app.test_models_api import OCTET, assert_problem, model_rows, stored_files
from tests.factories import CNN_INPUTS

CNN_PARAMETERS = (16 * 9 + 16) + 32 + (32 * 16 * 9 + 32) + (512 * 128 + 128) + (128 * 10 + 10)


def upload(client, body: bytes, query: str = ""):
    return client.post(f"/v1/models?name=m{query}", content=body, headers=OCTET)


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_torchscript_is_detected_and_inspected_with_declared_inputs(client, torchscript):
    response = upload(client, torchscript, f"&inputs={CNN_INPUTS}")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "torchscript" and body["parameters"] == CNN_PARAMETERS
    assert body["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    assert body["outputs"] == [{"name": "output", "dtype": "float32", "shape": ["batch", 10]}]
    assert body["details"]["op_counts"]["aten::_convolution"] == 2
    assert client.get(f"/v1/models/{body['id']}/download").content == torchscript


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_torchscript_needs_its_inputs_declared(client, torchscript, env):
    body = assert_problem(upload(client, torchscript), 422)
    assert "?inputs=" in body["detail"] and "['input']" in body["detail"]
    wrong = quote(json.dumps([{"name": "x", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]))
    assert "do not match" in assert_problem(upload(client, torchscript, f"&inputs={wrong}"), 422)["detail"]
    bad_shape = quote(json.dumps([{"name": "input", "dtype": "float32", "shape": ["batch", 3, 8, 8]}]))
    assert "does not run" in assert_problem(upload(client, torchscript, f"&inputs={bad_shape}"), 422)["detail"]
    assert_problem(upload(client, torchscript, "&inputs=not-json"), 422)
    assert model_rows() == 0 and stored_files(env) == []


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_torch_export_program_is_detected_and_inspected(client, pt2):
    body = upload(client, pt2).json()
    assert body["format"] == "torch_export" and body["parameters"] == CNN_PARAMETERS
    assert body["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    assert body["outputs"] == [{"name": "output", "dtype": "float32", "shape": ["batch", 10]}]
    assert body["details"]["op_counts"]["aten.conv2d.default"] == 2
    inputs = quote(json.dumps([{"name": "input", "dtype": "float32", "shape": [1, 1, 8, 8]}]))
    assert "only for TorchScript" in assert_problem(upload(client, pt2, f"&inputs={inputs}"), 422)["detail"]


def _rewrite_entry(archive_bytes: bytes, suffix: str, edit) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(archive_bytes))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, edit(data) if info.filename.endswith(suffix) else data)
    return out.getvalue()


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_pt2_with_pickled_payloads_is_refused_before_loading(client, pt2, env):
    def pickled_weight(raw: bytes) -> bytes:
        config = json.loads(raw)
        next(iter(config["config"].values()))["use_pickle"] = True
        return json.dumps(config).encode()

    def opaque_constant(raw: bytes) -> bytes:
        return json.dumps({"config": {"evil": {"path_name": "opaque_obj_0", "use_pickle": False}}}).encode()

    body = assert_problem(upload(client, _rewrite_entry(pt2, "_weights_config.json", pickled_weight)), 422)
    assert "pickle" in body["detail"]
    body = assert_problem(upload(client, _rewrite_entry(pt2, "_constants_config.json", opaque_constant)), 422)
    assert "never unpickle" in body["detail"]
    assert model_rows() == 0 and stored_files(env) == []


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_torch_save_checkpoints_are_refused_and_never_unpickled(client, cnn, tmp_path, env):
    import torch

    marker = tmp_path / "executed"
    buffer = io.BytesIO()
    torch.save({"state_dict": cnn[0].state_dict(), "hook": Exploit(marker)}, buffer)
    body = assert_problem(upload(client, buffer.getvalue()), 415)
    assert "torch.save checkpoint" in body["detail"] and "torch.export.save" in body["detail"]
    legacy = io.BytesIO()
    torch.save({"hook": Exploit(marker)}, legacy, _use_new_zipfile_serialization=False)
    assert_problem(upload(client, legacy.getvalue()), 415)
    assert_problem(upload(client, pickle.dumps(Exploit(marker))), 415)
    assert not marker.exists()
    assert model_rows() == 0 and stored_files(env) == []


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_onnx_zip_with_external_data(client, mlp_bytes):
    archive = factories.onnx_zip_bytes(mlp_bytes)
    body = upload(client, archive).json()
    assert body["format"] == "onnx" and body["details"]["archive"] is True
    assert body["details"]["external_tensors"] == 6 and body["parameters"] == 85002
    assert body["inputs"][0] == {"name": "x", "dtype": "float32", "shape": ["batch", 64]}


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("archive", "message"), [  # hostile zips: tests/app/test_hostile_corpus.py
    (lambda m: factories.onnx_zip_bytes(m, escape="missing.bin"), "missing"),
    (lambda m: factories.zip_bytes({"a.onnx": m, "b.onnx": m}), "exactly one .onnx"),
    (lambda m: factories.zip_bytes({"readme.txt": b"hello"}), "exactly one .onnx"),
])
def test_unusable_onnx_zips_are_refused(client, mlp_bytes, env, archive, message):
    response = upload(client, archive(mlp_bytes))
    assert response.status_code in (415, 422), response.text
    assert message in response.json()["detail"]
    assert model_rows() == 0 and stored_files(env) == []


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_inspection_runs_under_memory_and_time_limits(client, pt2, env, monkeypatch):
    from tests.conftest import reset_caches

    monkeypatch.setenv("TENSORPRESS_INSPECT_MEMORY_BYTES", str(256 << 20))
    reset_caches()
    detail = assert_problem(upload(client, pt2), 422)["detail"]
    assert "memory limit" in detail and "Traceback" not in detail and "/" not in detail  # logged, not answered
    monkeypatch.setenv("TENSORPRESS_INSPECT_MEMORY_BYTES", str(8 << 30))
    monkeypatch.setenv("TENSORPRESS_INSPECT_TIMEOUT_S", "1")
    reset_caches()
    detail = assert_problem(upload(client, pt2), 422)["detail"]
    assert "CPU-time limit of 1 s" in detail or "longer than 1 s" in detail
    assert model_rows() == 0 and stored_files(env) == []
