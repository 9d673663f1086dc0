"""The regression gate on real jobs: a slower result and an accuracy collapse are both flagged, with reasons."""

from __future__ import annotations

import pytest

from tests.workers.jobs import run_job, upload_model

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)


def test_dynamic_int8_convolutions_are_slower_and_flagged(client, trained_cnn_onnx, digits_sets):
    # ConvInteger runs several times slower than float Conv on CPUs (docs/benchmarks.md): a latency regression.
    job = run_job(client, {"model_id": upload_model(client, trained_cnn_onnx), "datasets": digits_sets,
                           "evaluation": {"max_accuracy_drop": 0.02}, "target": {"batch_sizes": [64]},
                           "steps": [{"pass": "quantize.dynamic", "params": {"op_types": ["Conv", "Gemm"]}}]})
    original, result = job["metrics"]["original"], job["metrics"]["result"]
    assert result["latency_ms"]["64"]["p50"] > 1.1 * original["latency_ms"]["64"]["p50"]
    assert job["regressed"] is True and job["state"] == "succeeded"
    assert [r for r in job["regressions"] if r.startswith("p50 latency at batch 64 is")], job["regressions"]
    assert job["metrics"]["metric"] == "accuracy" and not [r for r in job["regressions"] if "accuracy" in r]
    assert result["peak_memory_bytes"] > 0 and result["throughput"]["64"] > 0
    assert result["f1_macro"] > 0.9 and result["conditions"]["percentiles"] == "linear interpolation"


def test_an_accuracy_collapse_is_flagged(client, trained_cnn_onnx, digits_sets):
    job = run_job(client, {"model_id": upload_model(client, trained_cnn_onnx), "datasets": digits_sets,
                           "evaluation": {"max_accuracy_drop": 0.01}, "target": {"objective": "size"},
                           "steps": [{"pass": "prune.magnitude", "params": {"sparsity": 0.97}}]})
    original, result = job["metrics"]["original"], job["metrics"]["result"]
    assert result["accuracy"] < original["accuracy"] - 0.2
    assert job["regressed"] is True
    before, after = original["accuracy"], result["accuracy"]
    assert job["regressions"] == [f"accuracy dropped by {before - after:.4f} ({before:.4f} → {after:.4f}), more "
                                  "than the allowed 0.01"]


def test_a_preset_falls_back_when_its_first_candidate_regresses(client, trained_cnn_onnx, digits_sets, monkeypatch):
    from workers.passes.presets import PRESETS, Preset

    collapse = [{"pass": "prune.magnitude", "params": {"sparsity": 0.97}}]
    safe = [{"pass": "quantize.dynamic", "params": {"op_types": ["MatMul", "Gemm"]}}]
    monkeypatch.setitem(PRESETS, "test-fallback", Preset("test-fallback", "prune hard, else int8 matmuls",
                                                         lambda model: [(collapse, "hard"), (safe, "safe")]))
    payload = {"model_id": upload_model(client, trained_cnn_onnx), "datasets": digits_sets,
               "preset": "test-fallback", "evaluation": {"max_accuracy_drop": 0.02}, "target": {"objective": "size"}}
    plan = client.post("/v1/jobs?dry_run=true", json=payload).json()
    assert [s["pass"] for s in plan["steps"]] == ["prune.magnitude"]
    assert [[s["pass"] for s in a["steps"]] for a in plan["alternatives"]] == [["quantize.dynamic"]]
    job = run_job(client, payload)
    first, chosen = job["metrics"]["candidates"]
    assert first["steps"] == ["prune.magnitude"] and first["regressions"][0].startswith("accuracy dropped by")
    assert chosen["steps"] == ["quantize.dynamic"] and chosen["regressions"] == [] and chosen["loss"] <= 0.02
    assert job["regressed"] is False and [s["pass"] for s in job["steps"]] == ["quantize.dynamic"]
    assert [a["metadata"]["pass"] for a in job["artifacts"]] == ["quantize.dynamic"]  # the rejected one is gone
    assert job["metrics"]["result"]["accuracy"] >= job["metrics"]["original"]["accuracy"] - 0.02
    assert "candidate 1 of 2 regressed (accuracy dropped" in client.get(f"/v1/jobs/{job['id']}/logs").text


def test_cpu_int8_offers_fallbacks_for_a_calibrated_cnn(client, trained_cnn_onnx, digits_sets):
    payload = {"model_id": upload_model(client, trained_cnn_onnx), "datasets": digits_sets, "preset": "cpu-int8"}
    plan = client.post("/v1/jobs?dry_run=true", json=payload).json()
    candidates = [plan["steps"], *(a["steps"] for a in plan["alternatives"])]
    assert [(c[0]["pass"], c[0]["params"].get("method")) for c in candidates] == [
        ("quantize.static", "minmax"), ("quantize.static", "percentile"), ("quantize.dynamic", None)]
    assert candidates[2][0]["params"]["op_types"] == ["MatMul", "Gemm"]
    assert all(c[0]["reason"].startswith("preset cpu-int8: ") for c in candidates)
