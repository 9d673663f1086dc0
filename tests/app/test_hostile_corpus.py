"""A corpus of hostile inputs. Each is refused with a 4xx problem+json; nothing it carries is executed (the
pickles would create a marker file), and nothing is stored: no row, no file, not even in staging."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from sqlalchemy import func, select

from tests import factories
from tests.app.test_models_api import OCTET

MARKER = Path("/tmp") / f"tensorpress-hostile-{__import__('os').getpid()}"


class Exploit:
    """Unpickling this creates MARKER."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


def torch_checkpoint() -> bytes:
    """What torch.save writes (a zip with archive/data.pkl), carrying the exploit."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": {}, "hook": Exploit()}))
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/byteorder", "little")
    return buffer.getvalue()


def onnx_with_external_data(mlp: bytes) -> bytes:
    """A single .onnx file (no zip) whose weights point at a file on the server."""
    import onnx

    model = onnx.load_from_string(mlp)
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="/etc/shadow")
    return model.SerializeToString()


def custom_domain() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Evil", ["x"], ["y"], domain="evil.custom")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("evil.custom", 1)]).SerializeToString()


def memory_hog() -> bytes:
    """TorchScript whose forward asks for 4 GiB (fine on this machine, too much for the inspector's limit,
    which the test lowers to 2 GiB)."""
    import torch

    class Hog(torch.nn.Module):
        def forward(self, x):
            return x + torch.zeros(1 << 30).sum()

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Hog()), buffer)
    return buffer.getvalue()


def object_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, input=np.array([Exploit(), 1], dtype=object))  # np.savez pickles object arrays
    return buffer.getvalue()


MLP = factories.onnx_mlp()
HOG_INPUTS = quote(json.dumps([{"name": "x", "dtype": "float32", "shape": [1]}]))
# (id, method, path, body builder, headers, status, words the answer must contain)
CORPUS = [
    ("pickle that would create a file", "/v1/models?name=x.pt", lambda: pickle.dumps(Exploit()), 415,
     "never loaded"),
    ("pickles in a zip that looks like a torch checkpoint", "/v1/models?name=x.pt", torch_checkpoint, 415,
     "torch.save checkpoint"),
    ("ONNX zip, external data ../", "/v1/models?name=m.zip",
     lambda: factories.onnx_zip_bytes(MLP, escape="../outside.bin"), 422, "outside the model's folder"),
    ("ONNX zip, external data sub/../../", "/v1/models?name=m.zip",
     lambda: factories.onnx_zip_bytes(MLP, escape="sub/../../outside.bin"), 422, "outside the model's folder"),
    ("ONNX zip, absolute external data", "/v1/models?name=m.zip",
     lambda: factories.onnx_zip_bytes(MLP, escape="/etc/passwd"), 422, "outside the model's folder"),
    ("ONNX file pointing at /etc/shadow", "/v1/models?name=m.onnx", lambda: onnx_with_external_data(MLP), 422,
     "external data"),
    ("zip entry ../evil.onnx", "/v1/models?name=m.zip", lambda: factories.zip_bytes({"../evil.onnx": MLP}), 422,
     "unsafe entry name"),
    ("symlink inside a zip", "/v1/models?name=m.zip",
     lambda: factories.zip_bytes({"net/model.onnx": MLP}, symlink="net/weights.bin"), 422, "link"),
    ("zip bomb", "/v1/models?name=m.zip",
     lambda: factories.zip_bytes({"net/model.onnx": MLP, "net/pad.bin": b"\0" * (256 << 20)}), 422,
     "compressed"),
    ("custom operator domain", "/v1/models?name=m.onnx", custom_domain, 422, "custom operator domains"),
    ("inspection that allocates 4 GiB of a 2 GiB limit", f"/v1/models?name=hog.pt&inputs={HOG_INPUTS}", memory_hog,
     422, "memory limit"),
    (".npz with object arrays", "/v1/datasets?name=d.npz", object_npz, 422, "Python objects"),
    ("name with path separators", "/v1/models?name=..%2F..%2Fetc%2Fpasswd", lambda: MLP, 422, "'/'"),
    ("name with CR/LF", "/v1/models?name=evil%0d%0aSet-Cookie:%20a=b.onnx", lambda: MLP, 422,
     "control characters"),
]


def nothing_stored(data_dir: Path) -> None:
    from app.core.db import session_scope
    from app.models import Dataset, Job, Model

    with session_scope() as session:
        assert [session.scalar(select(func.count()).select_from(t)) for t in (Model, Dataset, Job)] == [0, 0, 0]
    assert [p for p in (data_dir / "artifacts").rglob("*") if p.is_file()] == []  # staging included


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("path", "body", "status", "words"), [case[1:] for case in CORPUS],
                         ids=[case[0] for case in CORPUS])
def test_hostile_uploads_are_refused_and_leave_nothing(client, env, monkeypatch, path, body, status, words):
    from app.core.settings import get_settings

    monkeypatch.setenv("TENSORPRESS_INSPECT_MEMORY_BYTES", str(2 << 30))
    get_settings.cache_clear()
    MARKER.unlink(missing_ok=True)
    response = client.post(path, content=body(), headers=OCTET)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert words in response.json()["detail"], response.json()["detail"]
    assert not MARKER.exists(), "a pickle was executed"
    nothing_stored(env)


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_hostile_requests_are_refused_and_leave_nothing(client, env):
    response = client.post("/v1/jobs", content=b'{"model_id": "' + b"x" * (2 << 20) + b'"}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.headers["content-type"] == "application/problem+json"
    model_id = client.post("/v1/models?name=m.onnx", content=MLP, headers=OCTET).json()["id"]
    steps = [{"pass": "quantize.dynamic"}] * 5000
    response = client.post("/v1/jobs", json={"model_id": model_id, "steps": steps})
    assert response.status_code == 422 and "5000 steps; at most 32" in response.text
    for filename, status, words in ((b"evil\rX-Injected: 1.onnx", 400, "malformed multipart"),
                                    (b"evil\x1b[2J.onnx", 422, "control characters")):
        multipart = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
                     b"Content-Type: application/octet-stream\r\n\r\n" + MLP + b"\r\n--b--\r\n")
        response = client.post("/v1/models", content=multipart,
                               headers={"content-type": "multipart/form-data; boundary=b"})
        assert response.status_code == status and words in response.json()["detail"], response.text
    client.delete(f"/v1/models/{model_id}")
    nothing_stored(env)
