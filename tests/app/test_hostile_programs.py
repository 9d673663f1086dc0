"""Programs and archives that try to reach outside their tensors (step 18's findings), refused at upload with a
4xx that names the cause and no server path; nothing they try happens, nothing is stored. Then the backstop: a
job process that runs such a program anyway (the allow-list bypassed on purpose) can neither read nor write
outside its job folder, nor connect anywhere, nor signal another process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import quote

import pytest

from tests import factories
from tests.app.test_hostile_corpus import nothing_stored
from tests.app.test_models_api import OCTET

SQLITE = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
TARGET = Path("/tmp") / f"tensorpress-escaped-{os.getpid()}"  # what the programs try to write
INPUTS = quote(json.dumps([{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]))


def scripted(source: str) -> bytes:
    """A TorchScript module compiled from ``source`` (which defines ``Model``)."""
    import importlib.util
    import tempfile

    import torch

    name = f"tp_hostile_{abs(hash(source))}"
    path = Path(tempfile.mkdtemp()) / f"{name}.py"  # TorchScript compiles from the source file
    path.write_text("import torch\n" + source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module.Model()), buffer)
    return buffer.getvalue()


PROGRAMS = [
    ("torch.save in forward", f'''
class Model(torch.nn.Module):
    def forward(self, x):
        torch.save(x, "{TARGET}")
        return x
''', "aten::save in the module.forward()"),
    ("torch.from_file of the database", '''
class Model(torch.nn.Module):
    def forward(self, x):
        return x + torch.from_file("tensorpress.db", size=64, dtype=torch.uint8).sum()
''', "aten::from_file in the module.forward()"),
    ("a file write in a submodule's helper, inside an if", f'''
class Inner(torch.nn.Module):
    def helper(self, x):
        if bool(x.sum() > 0):
            torch.save(x, "{TARGET}")
        return x
    def forward(self, x):
        return self.helper(x)
class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()
    def forward(self, x):
        for _ in range(2):
            x = self.inner(x)
        return x
''', "aten::save in inner."),
    ("a forked function", f'''
def leak(x):
    torch.save(x, "{TARGET}")
    return x
class Model(torch.nn.Module):
    def forward(self, x):
        return torch.jit.wait(torch.jit.fork(leak, x))
''', "in the module.forward()"),
]


def pt2_reading_a_file() -> bytes:
    import torch

    class Model(torch.nn.Module):
        def forward(self, x):
            loaded = torch.ops.debugprims.load_tensor.default("t", [4], [1], dtype=torch.float32, device="cpu")
            return x + loaded.sum()

    buffer = io.BytesIO()
    torch.export.save(torch.export.export(Model(), (torch.ones(2, 4),)), buffer)
    return buffer.getvalue()


@SQLITE
@pytest.mark.parametrize(("source", "words"), [p[1:] for p in PROGRAMS], ids=[p[0] for p in PROGRAMS])
def test_torchscript_that_reaches_outside_its_tensors_is_refused(client, env, source, words):
    response = client.post(f"/v1/models?name=evil.pt&inputs={INPUTS}", content=scripted(source), headers=OCTET)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert words in detail and "allow-list" in detail, detail
    assert not TARGET.exists()
    nothing_stored(env)


@SQLITE
def test_a_pt2_program_with_a_file_operator_is_refused(client, env):
    response = client.post("/v1/models?name=evil.pt2", content=pt2_reading_a_file(), headers=OCTET)
    assert response.status_code == 422, response.text
    assert "debugprims::load_tensor" in response.json()["detail"] and "node" in response.json()["detail"]
    nothing_stored(env)


def duplicated_entry() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("net/model.onnx", factories.onnx_mlp())
        archive.writestr("net/model.onnx", factories.onnx_mlp(seed=1))
    return buffer.getvalue()


def disagreeing_headers() -> bytes:
    """The local header names another file than the central directory does."""
    data = bytearray(factories.zip_bytes({"net/model.onnx": factories.onnx_mlp()}))
    at = data.index(b"net/model.onnx")  # the first occurrence is the local header's
    data[at:at + 14] = b"net/other.onnx"
    return bytes(data)


def onnx_external_in(where: str) -> bytes:
    """An ONNX file whose subgraph or sparse initializer points at a file on the server."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def external(name: str) -> onnx.TensorProto:
        tensor = numpy_helper.from_array(np.ones(4, np.float32), name)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="/etc/shadow")
        return tensor

    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    if where == "subgraph":
        branch = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "branch", [], [out], [external("w")])
        nodes = [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])], [out])
    else:
        sparse = helper.make_sparse_tensor(external("values"), numpy_helper.from_array(np.arange(4), "idx"), [4])
        graph = helper.make_graph([helper.make_node("Identity", ["values"], ["y"])], "g", [], [out],
                                  sparse_initializer=[sparse])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


ARCHIVES = [
    ("an entry twice", "m.zip", duplicated_entry, "more than once"),
    ("local and central headers disagree", "m.zip", disagreeing_headers, "local and central headers disagree"),
    ("external data in a subgraph", "m.onnx", lambda: onnx_external_in("subgraph"), "external data"),
    ("external data in a sparse initializer", "m.onnx", lambda: onnx_external_in("sparse"), "external data"),
]


@SQLITE
@pytest.mark.parametrize(("name", "body", "words"), [a[1:] for a in ARCHIVES], ids=[a[0] for a in ARCHIVES])
def test_archives_and_references_are_checked_by_our_own_code(client, env, name, body, words):
    response = client.post(f"/v1/models?name={name}", content=body(), headers=OCTET)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert words in detail and str(env) not in detail and "/tmp/" not in detail, detail  # no server path
    nothing_stored(env)


@SQLITE
def test_refusals_name_no_server_path_and_carry_no_traceback(client, env):
    from onnx import TensorProto, helper

    # The checker rejects it (a node reads a value nothing defines) and its message would name the staging file.
    graph = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    response = client.post("/v1/models?name=bad.onnx", content=model.SerializeToString(), headers=OCTET)
    detail = response.json()["detail"]
    assert response.status_code == 422 and "invalid" in detail, detail
    assert str(env) not in detail and "/tmp" not in detail and "Traceback" not in detail


def test_scrub_names_the_upload_and_elides_every_other_server_path():
    from workers.inspection import scrub

    upload, scratch = Path("/srv/tp/artifacts/.staging/abc123"), Path("/tmp/tp-inspect-x1")
    message = (f"Data of TensorProto ( tensor name: w) should be stored in {upload}, but it doesn't exist or is "
               f"not accessible; also {scratch}/net/model.onnx and /usr/lib/python3/onnx/checker.py line 3")
    scrubbed = scrub(message, (upload, "the upload"), (upload.parent, "…"), (scratch, "…"))
    assert "stored in the upload," in scrubbed and "/" not in scrubbed, scrubbed


def test_a_job_process_running_a_hostile_program_directly_stays_in_its_folder(tmp_path):
    """The allow-list bypassed on purpose: the program is loaded with torch.jit.load and run, in a process
    confined exactly as a job's (workers.confined.confine_job)."""
    job, outside, secret = tmp_path / "job", tmp_path / "outside", tmp_path / "tensorpress.db"
    (job / "work").mkdir(parents=True)
    outside.mkdir()
    secret.write_bytes(b"tenant-a model names and sha256s")
    model = job / "inputs" / "evil.pt"
    model.parent.mkdir()
    model.write_bytes(scripted(f'''
class Model(torch.nn.Module):
    def forward(self, x):
        torch.save(x, "{outside / 'written.pt'}")
        return x + torch.from_file("{secret}", size=8, dtype=torch.uint8).sum()
'''))
    script = f'''
import json, os, socket, sys
from pathlib import Path
from workers.confined import confine_job
confine_job(Path({str(job / "work")!r}), [Path({str(model)!r})])
import torch
results = {{}}
def attempt(name, action):
    try:
        action()
        results[name] = "done"
    except Exception as exc:
        results[name] = type(exc).__name__
module = torch.jit.load({str(model)!r})
attempt("run the program", lambda: module(torch.ones(1, 4)))
attempt("read the database", lambda: open({str(secret)!r}, "rb").read())
attempt("write outside", lambda: open({str(outside / "x")!r}, "w").write("x"))
attempt("write in its folder", lambda: open({str(job / "work" / "x")!r}, "w").write("x"))
attempt("read its input", lambda: open({str(model)!r}, "rb").read(1))
attempt("connect to PostgreSQL over TCP", lambda: socket.create_connection(("127.0.0.1", 5432), timeout=5))
attempt("connect to Redis over TCP", lambda: socket.create_connection(("127.0.0.1", 6379), timeout=5))
attempt("connect to PostgreSQL's socket", lambda: socket.socket(socket.AF_UNIX).connect(
    "/var/run/postgresql/.s.PGSQL.5432"))
attempt("UDP", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53)))
attempt("signal its parent", lambda: os.kill(os.getppid(), 0))
attempt("read its parent's environment", lambda: open(f"/proc/{{os.getppid()}}/environ", "rb").read())
print(json.dumps(results))
'''
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(job / "work")}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results.pop("write in its folder") == "done" and results.pop("read its input") == "done"
    assert results.pop("run the program") == "RuntimeError"  # torch.save failed: permission denied
    assert all(outcome in ("PermissionError", "OSError") for outcome in results.values()), results
    assert list(outside.iterdir()) == []
