"""GPU paths: TensorRT engines, AOTInductor on CUDA. Run with `make test-gpu` on an NVIDIA machine; they skip
elsewhere and say why. Record in docs/benchmarks.md where they last ran."""

from __future__ import annotations

import importlib.util

import pytest

from tests import factories
from tests.workers.jobs import run_job, upload_data, upload_model

pytestmark = [pytest.mark.gpu, pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)]


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


needs_cuda = pytest.mark.skipif(not cuda_available(), reason="needs an NVIDIA GPU visible to torch (CUDA)")
needs_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                                    reason="needs TensorRT (pip package tensorrt, NVIDIA's index or TensorRT image)")


@pytest.fixture(scope="module")
def cnn_onnx_and_data():
    model, example = factories.digits_cnn(epochs=10)
    return factories.onnx_from_torch(model, example), factories.pt2_bytes(model, example), factories.digits()


@needs_cuda
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_matches_onnx(client, cnn_onnx_and_data, precision):
    onnx_bytes, _, (x_train, _, x_test, y_test) = cnn_onnx_and_data
    job = run_job(client, {"model_id": upload_model(client, onnx_bytes), "target": {"device": "cuda",
                                                                                    "batch_sizes": [1, 8, 64]},
                           "datasets": {"evaluation": upload_data(client, input=x_test, labels=y_test)},
                           "steps": [{"pass": "engine.tensorrt", "params": {"precision": precision}}]})
    result = job["metrics"]["result"]
    assert result["conditions"]["runtime"] == "tensorrt" and job["artifacts"][0]["metadata"]["gpu"]
    assert result["accuracy"] >= job["metrics"]["original"]["accuracy"] - 0.01


@needs_cuda
@needs_tensorrt
def test_tensorrt_int8_from_qdq_and_from_calibration(client, cnn_onnx_and_data):
    onnx_bytes, _, (x_train, _, x_test, y_test) = cnn_onnx_and_data
    sets = {"calibration": upload_data(client, input=x_train[:256]),
            "evaluation": upload_data(client, input=x_test, labels=y_test)}
    model_id = upload_model(client, onnx_bytes)
    for steps in ([{"pass": "quantize.static"}, {"pass": "engine.tensorrt", "params": {"precision": "int8"}}],
                  [{"pass": "engine.tensorrt", "params": {"precision": "int8"}}]):
        job = run_job(client, {"model_id": model_id, "datasets": sets, "steps": steps,
                               "target": {"device": "cuda", "batch_sizes": [1, 64]}})
        assert job["metrics"]["result"]["accuracy"] >= job["metrics"]["original"]["accuracy"] - 0.01


@needs_cuda
@needs_tensorrt
def test_2_4_sparse_model_builds_with_tensorrt_sparse_tactics(client, cnn_onnx_and_data):
    _, pt2_bytes, (x_train, y_train, x_test, y_test) = cnn_onnx_and_data
    sets = {"training": upload_data(client, input=x_train, labels=y_train),
            "evaluation": upload_data(client, input=x_test, labels=y_test)}
    job = run_job(client, {"model_id": upload_model(client, pt2_bytes), "datasets": sets,
                           "target": {"device": "cuda", "batch_sizes": [1, 64]},
                           "steps": [{"pass": "prune.semi_structured", "params": {"finetune": {"epochs": 3}}},
                                     {"pass": "export.onnx"},
                                     {"pass": "engine.tensorrt", "params": {"precision": "fp16",
                                                                            "sparse_weights": True}}]})
    assert job["steps"][0]["metrics"]["pattern_valid"] and job["artifacts"][0]["metadata"]["sparsity_pattern"] == "2:4"
    assert job["metrics"]["result"]["conditions"]["runtime"] == "tensorrt"
    assert job["metrics"]["result"]["accuracy"] >= job["metrics"]["original"]["accuracy"] - 0.02


@needs_cuda
def test_aotinductor_on_cuda(client, cnn_onnx_and_data):
    _, pt2_bytes, (_, _, x_test, y_test) = cnn_onnx_and_data
    job = run_job(client, {"model_id": upload_model(client, pt2_bytes), "target": {"device": "cuda"},
                           "datasets": {"evaluation": upload_data(client, input=x_test, labels=y_test)},
                           "steps": [{"pass": "engine.aotinductor"}]})
    assert job["artifacts"][0]["metadata"]["device"] == "cuda"
    assert job["metrics"]["result"]["conditions"]["device"] == "cuda"
    assert job["metrics"]["result"]["accuracy"] == job["metrics"]["original"]["accuracy"]


@needs_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_half_precision_on_cuda(client, cnn_onnx_and_data, dtype):
    _, pt2_bytes, (_, _, x_test, y_test) = cnn_onnx_and_data
    job = run_job(client, {"model_id": upload_model(client, pt2_bytes), "target": {"device": "cuda",
                                                                                   "batch_sizes": [1, 64]},
                           "datasets": {"evaluation": upload_data(client, input=x_test, labels=y_test)},
                           "steps": [{"pass": "quantize.half", "params": {"dtype": dtype}}]})
    original, result = job["metrics"]["original"], job["metrics"]["result"]
    assert result["conditions"]["device"] == "cuda" and result["conditions"]["gpu"]
    assert result["peak_gpu_memory_bytes"] > 0
    assert result["accuracy"] >= original["accuracy"] - 0.01
    assert result["size_bytes"] < 0.7 * original["size_bytes"]
