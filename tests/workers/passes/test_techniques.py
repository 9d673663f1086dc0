"""Step 16's techniques through the service on the digits CNN: gradual pruning, 2:4 sparsity, weight clustering,
depthwise-separable rewrites and quantization-aware training."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests import factories
from tests.app.test_models_api import assert_problem
from tests.workers.jobs import run_job, upload_model
from tests.workers.passes.test_pytorch_passes import pt2_weights

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)


@pytest.fixture
def cnn_pt2(client, trained_cnn) -> str:
    return upload_model(client, factories.pt2_bytes(*trained_cnn))


def accuracy(job: dict) -> tuple[float, float]:
    return job["metrics"]["original"]["accuracy"], job["metrics"]["result"]["accuracy"]


def test_gradual_pruning_to_90_percent_keeps_accuracy_where_one_shot_loses_it(client, cnn_pt2, training_sets):
    one_shot = run_job(client, {"model_id": cnn_pt2, "datasets": training_sets,
                                "steps": [{"pass": "prune.magnitude", "params": {"sparsity": 0.9}}]})
    gradual = run_job(client, {"model_id": cnn_pt2, "datasets": training_sets, "steps": [
        {"pass": "prune.magnitude", "params": {"sparsity": 0.9, "schedule": {"epochs": 8}}}]})
    original, gradual_accuracy = accuracy(gradual)
    one_shot_accuracy = accuracy(one_shot)[1]
    metrics = gradual["steps"][0]["metrics"]
    assert abs(metrics["sparsity"] - 0.9) <= 0.005
    schedule = metrics["training"]["sparsities"]
    assert metrics["training"]["pruning_steps"] == len(schedule) == 10 and schedule[-1] == 0.9
    assert all(a < b for a, b in zip(schedule, schedule[1:], strict=False))  # grows every step
    assert schedule[0] - 0 > schedule[-1] - schedule[-2]  # fast first, slow at the end (polynomial decay)
    assert gradual_accuracy >= original - 0.02, (original, gradual_accuracy)
    assert one_shot_accuracy < original - 0.02 and one_shot_accuracy < gradual_accuracy, (one_shot_accuracy,
                                                                                           gradual_accuracy)
    weights = pt2_weights(client, gradual["artifacts"][-1]["id"])
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros / sum(w.size for w in weights.values()) >= 0.895


def test_schedules_need_a_torch_model_and_training_data(client, uploaded_model, cnn_pt2):
    step = {"pass": "prune.magnitude", "params": {"sparsity": 0.5, "schedule": {"epochs": 2}}}
    problem = assert_problem(client.post("/v1/jobs", json={"model_id": uploaded_model["id"], "steps": [step]}), 422)
    assert "ONNX cannot be trained" in problem["errors"][0]["msg"]
    problem = assert_problem(client.post("/v1/jobs", json={"model_id": cnn_pt2, "steps": [step]}), 422)
    assert problem["errors"][0]["msg"] == "a schedule needs a 'training' dataset"


def groups_of_four_have_two_zeros(weight: np.ndarray, input_axis: int) -> bool:
    moved = np.moveaxis(weight, input_axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // 4, 4)
    return bool(((groups == 0).sum(-1) >= 2).all())


def test_2_4_sparsity_holds_in_every_group_and_fine_tuning_keeps_accuracy(client, cnn_pt2, training_sets):
    job = run_job(client, {"model_id": cnn_pt2, "datasets": training_sets, "steps": [
        {"pass": "prune.semi_structured", "params": {"finetune": {"epochs": 3}}}]})
    metrics = job["steps"][0]["metrics"]
    assert metrics["skipped"] == ["0.weight"]  # the first convolution has one input channel
    assert metrics["layers"] == 3 and metrics["sparsity"] == 0.5 and metrics["training"]["epochs_run"] >= 1
    weights = pt2_weights(client, job["artifacts"][-1]["id"])
    for name in ("3.weight", "7.weight", "9.weight"):  # conv [out, in, kh, kw] and linear [out, in]: axis 1
        assert groups_of_four_have_two_zeros(weights[name], 1), name
    assert job["artifacts"][-1]["metadata"]["sparsity_pattern"] == "2:4"
    original, result = accuracy(job)
    assert result >= original - 0.02, (original, result)


def test_2_4_sparsity_on_onnx_matmuls_groups_the_input_rows(client):
    job = run_job(client, {"model_id": upload_model(client, factories.onnx_mlp()),
                           "steps": [{"pass": "prune.semi_structured"}]})
    model = onnx.load_from_string(client.get(f"/v1/artifacts/{job['artifacts'][-1]['id']}/download").content)
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer if i.dims and len(i.dims) == 2]
    assert len(weights) == 3
    for weight in weights:  # MatMul weights are [in, out]
        assert groups_of_four_have_two_zeros(weight, 0) and float(np.mean(weight == 0)) == 0.5
    assert job["metrics"]["result"]["fidelity"]["cosine"] > 0.8


def palettized_weights(blob: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights a palettized ONNX model rebuilds in its graph, by name, computed by ONNX Runtime."""
    import onnxruntime as ort

    model = onnx.load_from_string(blob)
    names = [i.name[:-len(".codebook")] for i in model.graph.initializer if i.name.endswith(".codebook")]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, feeds), strict=True))


def test_clustering_to_16_values_fine_tunes_and_stores_a_quarter_of_the_bytes(client, trained_cnn, cnn_pt2,
                                                                              training_sets):
    job = run_job(client, {"model_id": cnn_pt2, "datasets": training_sets, "steps": [
        {"pass": "cluster.weights", "params": {"clusters": 16, "finetune": {"epochs": 3}}}]})
    metrics = job["steps"][0]["metrics"]
    assert sorted(metrics["distinct_values"]) == ["3.weight", "7.weight", "9.weight"]  # 0.weight: 144 < 256
    assert all(count <= 16 for count in metrics["distinct_values"].values()) and metrics["training"]["epochs_run"]
    assert metrics["packed_4bit"] == 3 and metrics["ratio"] > 7  # two indices per byte
    blob = client.get(f"/v1/artifacts/{job['artifacts'][-1]['id']}/download").content
    x, labels = factories.digits()[2:]
    weights = palettized_weights(blob, {"input": x[:1]})
    assert sorted(w.shape for w in weights.values()) == [(10, 128), (32, 16, 3, 3), (128, 512)]
    assert all(len(np.unique(w)) <= 16 for w in weights.values())
    fp32 = factories.onnx_from_torch(*trained_cnn)
    assert len(blob) * 3 <= len(fp32), (len(blob), len(fp32))
    original, result = accuracy(job)
    assert result >= original - 0.02, (original, result)
    logits = factories.run_onnx(blob, {"input": x})[0]
    assert abs(float(np.mean(logits.argmax(1) == labels)) - result) < 1e-6  # the stored file is what was measured


def test_clustering_an_onnx_model_without_training(client):
    data = factories.onnx_mlp()
    job = run_job(client, {"model_id": upload_model(client, data),
                           "steps": [{"pass": "cluster.weights", "params": {"clusters": 32}}]})
    metrics = job["steps"][0]["metrics"]
    assert metrics["layers"] == 3 and metrics["max_distinct"] <= 32 and metrics["ratio"] > 3.5
    assert metrics["packed_4bit"] == 0  # 32 clusters: one byte per index
    assert job["metrics"]["result"]["size_bytes"] * 3 <= len(data)
    assert job["metrics"]["result"]["fidelity"]["cosine"] > 0.99


def test_separable_rewrite_cuts_parameters_and_macs_as_computed_and_fine_tunes_back(client, cnn_pt2, training_sets):
    job = run_job(client, {"model_id": cnn_pt2, "datasets": training_sets, "steps": [
        {"pass": "rewrite.separable", "params": {"finetune": {"epochs": 5}}}]})
    metrics = job["steps"][0]["metrics"]
    [conv] = metrics["rewritten"]  # 3×3, 16 → 32 channels, on 8×8 pixels
    assert metrics["left_alone"] == [{"layer": "0.weight", "reason": "fewer than 8 input channels"}]
    assert conv["layer"] == "3.weight" and conv["params_before"] == 32 * 16 * 9
    assert conv["params_after"] == 16 * 9 + 32 * 16  # depthwise 3×3 per input channel + pointwise 1×1
    assert metrics["params_before"] - metrics["params_after"] == conv["params_before"] - conv["params_after"]
    assert metrics["macs_before"] - metrics["macs_after"] == (conv["params_before"] - conv["params_after"]) * 64
    assert job["metrics"]["result"]["parameters"] == metrics["params_after"]
    original, result = accuracy(job)
    assert result >= original - 0.02, (original, result)


def test_qat_int8_matches_or_beats_post_training_int8_and_stays_near_float(client, cnn_pt2, training_sets):
    job = run_job(client, {"model_id": cnn_pt2, "datasets": training_sets,
                           "steps": [{"pass": "quantize.qat", "params": {"epochs": 2}}]})
    metrics = job["steps"][0]["metrics"]
    assert metrics["layers"] == 4 and metrics["training"]["epochs_run"] >= 1
    assert {"float", "ptq", "qat", "recovered"} <= set(metrics) and metrics["on"].startswith("validation")
    model = onnx.load_from_string(client.get(f"/v1/artifacts/{job['artifacts'][-1]['id']}/download").content)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert sum(i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2 for i in model.graph.initializer) == 4
    ptq = run_job(client, {"model_id": cnn_pt2, "datasets": {"calibration": training_sets["training"],
                                                             "evaluation": training_sets["evaluation"]},
                           "steps": [{"pass": "export.onnx"}, {"pass": "quantize.static"}]})
    original, qat_accuracy = accuracy(job)
    ptq_accuracy = accuracy(ptq)[1]
    assert qat_accuracy >= ptq_accuracy - 0.005, (qat_accuracy, ptq_accuracy)
    assert qat_accuracy >= original - 0.01, (original, qat_accuracy)


def test_gradual_structured_pruning_reaches_the_one_shot_architecture_in_stages(client, cnn_pt2, training_sets):
    steps = {"ratio": 0.5, "schedule": {"epochs": 6, "steps": 4}}  # 4 stages in 4 epochs, then 2 at 50%
    gradual = run_job(client, {"model_id": cnn_pt2, "datasets": training_sets,
                               "steps": [{"pass": "prune.structured", "params": steps}]})
    one_shot = run_job(client, {"model_id": cnn_pt2, "steps": [{"pass": "prune.structured", "params": {"ratio": 0.5}}]})
    metrics = gradual["steps"][0]["metrics"]
    ratios = [stage["ratio"] for stage in metrics["stages"] if not stage.get("fine_tuning")]
    assert metrics["stages"][-1]["fine_tuning"] and metrics["stages"][-1]["ratio"] == 0.5
    assert len(ratios) == 4 and ratios[-1] == 0.5 and all(a < b for a, b in zip(ratios, ratios[1:], strict=False))
    assert [stage["parameters"] for stage in metrics["stages"]][-1] == metrics["params_after"]
    assert metrics["params_after"] == one_shot["steps"][0]["metrics"]["params_after"] < metrics["params_before"]
    original, result = accuracy(gradual)
    assert result >= original - 0.02, (original, result)
