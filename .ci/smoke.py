"""The README's run command on a fresh install: run by the Python of a virtual environment that `make install`
alone built (no test extras), from the repository root.

It starts `make run` (so `tensorpress up`) on a free port with its own data folder, waits for the ready line,
submits a small ONNX model with a `quantize.dynamic` job through the CLI, downloads the artifact through the CLI,
checks its sha256 against the record and that ONNX Runtime runs it, stops the service with SIGTERM and checks
that no process of it is left. Only run-time dependencies are used: an import missing from
[project.dependencies] fails here.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

VENV = Path(sys.executable).parent.parent


def model(path: Path) -> None:
    rng = np.random.default_rng(0)
    w1, w2 = (rng.standard_normal(s).astype(np.float32) / 8 for s in ((64, 256), (256, 10)))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "smoke",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    sys.exit(f"smoke: timed out after {timeout:.0f} s waiting for {what}")


def ours(data_dir: str) -> list[int]:
    """Processes that run with this data folder (the service, its worker, its job processes)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"TENSORPRESS_DATA_DIR={data_dir}".encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def main() -> None:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="tensorpress-smoke-"))
    data_dir = str(work / "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORPRESS_")}
    env.update(TENSORPRESS_DATA_DIR=data_dir, TENSORPRESS_URL=f"http://127.0.0.1:{port}")
    log_path = work / "up.log"
    with open(log_path, "wb") as log:
        service = subprocess.Popen(["make", "--no-print-directory", "run", f"VENV={VENV}", f"PORT={port}"],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait(lambda: b"TensorPress is ready on" in log_path.read_bytes() or service.poll() is not None, 300,
             "the ready line")
        if service.poll() is not None:
            sys.exit(f"smoke: `make run` exited with {service.returncode}:\n{log_path.read_text()[-4000:]}")
        print(f"smoke: ready after {time.monotonic() - started:.1f} s", flush=True)
        model(work / "model.onnx")
        cli = [str(VENV / "bin" / "tensorpress")]
        # Judged on size: a 10 µs model's latency verdict is noise on a busy machine (step 21's subject).
        submitted = subprocess.run([*cli, "jobs", "submit", str(work / "model.onnx"), "--steps",
                                    '[{"pass": "quantize.dynamic"}]', "--target", '{"objective": "size"}',
                                    "--wait", "--json"], env=env,
                                   capture_output=True, text=True, timeout=600, check=False)
        if submitted.returncode != 0:
            sys.exit(f"smoke: jobs submit exited {submitted.returncode}: {submitted.stderr[-3000:]}")
        job = json.loads(submitted.stdout)
        artifact = job["artifacts"][-1]
        subprocess.run([*cli, "artifacts", "download", artifact["id"], "-o", str(work / "int8.onnx")], env=env,
                       check=True, capture_output=True, timeout=300)
        blob = (work / "int8.onnx").read_bytes()
        assert hashlib.sha256(blob).hexdigest() == artifact["sha256"], "the download's sha256 differs"
        assert len(blob) < 0.5 * (work / "model.onnx").stat().st_size, "dynamic int8 did not shrink the model"
        x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
        outputs = [onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
                   for p in (work / "model.onnx", work / "int8.onnx")]
        # int8 error is a few percent of the output's range, more on CPUs without VNNI (AVX2 only: 3.3 %)
        error = float(np.abs(outputs[0] - outputs[1]).max() / np.abs(outputs[0]).max())
        assert error < 0.1, f"the artifact computes something else (max error {error:.1%} of the output range)"
        print(f"smoke: job {job['id']} {job['state']}, artifact {len(blob)} bytes, sha256 verified, max error "
              f"{error:.1%} of the output range", flush=True)
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGTERM)
        service.wait(timeout=120)
    wait(lambda: not ours(data_dir), 30, f"the service's processes to end ({ours(data_dir)} still run)")
    print(f"smoke: stopped, nothing left; {time.monotonic() - started:.1f} s after the install", flush=True)


if __name__ == "__main__":
    main()
