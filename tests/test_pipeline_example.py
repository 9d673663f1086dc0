"""examples/compress.sh, the pipeline in docs/mlops.md, run against a live embedded server (`tensorpress up`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import factories
from tests.test_cli_up import clean_env, running_up

pytestmark = pytest.mark.e2e
SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "compress.sh"


def test_the_pipeline_example_uploads_compresses_gates_and_downloads(tmp_path, cnn):
    model = tmp_path / "cnn.onnx"
    model.write_bytes(factories.onnx_from_torch(*cnn))
    x_train, _, x_test, y_test = factories.digits()
    (tmp_path / "calibration.npz").write_bytes(factories.npz_bytes(input=x_train[:256]))
    (tmp_path / "evaluation.npz").write_bytes(factories.npz_bytes(input=x_test, labels=y_test))
    env = {**clean_env(), "TENSORPRESS_BENCH_ITERATIONS": "20", "TENSORPRESS_BENCH_MIN_TIME_S": "0.2"}
    with running_up(tmp_path, env) as up:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        done = subprocess.run(["bash", str(SCRIPT), str(model), str(tmp_path / "calibration.npz"),
                               str(tmp_path / "evaluation.npz"), str(tmp_path / "out"), "0.02"],
                              env={**clean_env(), "TENSORPRESS_URL": up.url, "PATH": path,
                                   "TARGET": '{"objective": "size"}'},  # latency of a 20 µs model is noise
                              capture_output=True, text=True, timeout=600, check=False)
        log = up.text()
    assert done.returncode == 0, done.stdout + done.stderr + log[-3000:]
    assert "accuracy:" in done.stdout and "size x0." in done.stdout
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x_test[:64]})[0]
    assert (logits.argmax(1) == y_test[:64]).mean() > 0.9
    assert np.isfinite(logits).all()
