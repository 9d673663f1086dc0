"""Measure a model the same way for the original and every result: size, parameters, latency, fidelity.

Inputs are generated from the model's input specs (seeded, so original and result see the same data):
symbolic batch dimensions take each requested batch size, other symbolic dimensions take the shape in
``target.inputs`` or 1; integer inputs take values in ``[low, high)`` from ``target.inputs`` (default 0..1,
always valid token ids), floats are standard normal unless bounded.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

WARMUP = 5
MAX_TIMED_S = 10.0


def generate_inputs(specs: list[dict[str, Any]], batch: int, bounds: dict[str, dict[str, Any]],
                    seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        bound = bounds.get(spec["name"], {})
        shape = bound.get("shape") or [
            dim if isinstance(dim, int) and dim > 0 else (batch if i == 0 else 1)
            for i, dim in enumerate(spec["shape"])]
        if bound.get("shape") and spec["shape"] and not isinstance(spec["shape"][0], int):
            shape = [batch, *shape[1:]]
        dtype = np.dtype(spec["dtype"])
        if dtype.kind in "iu":
            low, high = int(bound.get("low") or 0), int(bound.get("high") or 2)
            feeds[spec["name"]] = rng.integers(low, max(high, low + 1), size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec["name"]] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            low, high = bound.get("low"), bound.get("high")
            values = (rng.uniform(low, high, size=shape) if low is not None and high is not None
                      else rng.standard_normal(shape))
            feeds[spec["name"]] = values.astype(dtype)
    return feeds


class OnnxRunner:
    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.conditions = {"runtime": "onnxruntime", "version": ort.__version__,
                           "provider": "CPUExecutionProvider", "threads": threads}

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


def load_runner(path: Path, fmt: str, threads: int) -> OnnxRunner:
    if fmt == "onnx":
        return OnnxRunner(path, threads)
    raise ValueError(f"cannot measure {fmt} models yet")


def count_parameters(path: Path, fmt: str) -> tuple[int, int]:
    """(parameters, non-zero parameters) of the model's stored tensors."""
    if fmt != "onnx":
        raise ValueError(f"cannot count parameters of {fmt} models yet")
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    total = nonzero = 0
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        total += values.size
        nonzero += int(np.count_nonzero(values))
    return total, nonzero


def latency(runner: OnnxRunner, feeds: dict[str, np.ndarray], iterations: int) -> dict[str, float]:
    for _ in range(WARMUP):
        runner(feeds)
    times: list[float] = []
    deadline = time.perf_counter() + MAX_TIMED_S
    while len(times) < iterations and (len(times) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        runner(feeds)
        times.append((time.perf_counter() - start) * 1000)
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {"p50": round(float(p50), 4), "p95": round(float(p95), 4), "p99": round(float(p99), 4),
            "mean": round(float(np.mean(times)), 4), "iterations": len(times)}


def fidelity(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, float | None]:
    """How close ``candidate``'s outputs are to ``reference``'s on the same inputs."""
    max_abs = 0.0
    for ref, out in zip(reference, candidate, strict=True):
        if ref.shape != out.shape:
            raise ValueError(f"output shapes differ: {ref.shape} vs {out.shape}")
        if ref.size:
            max_abs = max(max_abs, float(np.max(np.abs(ref.astype(np.float64) - out.astype(np.float64)))))
    ref, out = reference[0].astype(np.float64), candidate[0].astype(np.float64)
    rows_ref = ref.reshape(ref.shape[0], -1) if ref.ndim > 1 else ref.reshape(1, -1)
    rows_out = out.reshape(rows_ref.shape)
    norms = np.linalg.norm(rows_ref, axis=1) * np.linalg.norm(rows_out, axis=1)
    cosine = np.sum(rows_ref * rows_out, axis=1) / np.where(norms == 0, 1, norms)
    cosine = np.where(norms == 0, np.all(rows_ref == rows_out, axis=1).astype(float), cosine)
    top1 = None
    if ref.ndim == 2 and ref.shape[1] > 1:
        top1 = float(np.mean(np.argmax(ref, axis=1) == np.argmax(out, axis=1)))
    return {"cosine": round(float(np.mean(cosine)), 6), "cosine_min": round(float(np.min(cosine)), 6),
            "max_abs_error": max_abs, "top1_agreement": top1}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "device": "cpu"}


def measure(path: Path, fmt: str, specs: list[dict[str, Any]], target: dict[str, Any], *, threads: int,
            iterations: int, fidelity_feeds: dict[str, np.ndarray] | None = None) -> tuple[dict, list]:
    """Metrics of one model, plus its outputs on ``fidelity_feeds`` (for comparing with another model)."""
    size = path.stat().st_size
    parameters, nonzero = count_parameters(path, fmt)
    runner = load_runner(path, fmt, threads)
    bounds = target.get("inputs", {})
    latency_ms, throughput = {}, {}
    for batch in target.get("batch_sizes", [1]):
        stats = latency(runner, generate_inputs(specs, batch, bounds), iterations)
        latency_ms[str(batch)] = stats
        throughput[str(batch)] = round(batch * 1000 / stats["mean"], 2)
    outputs = runner(fidelity_feeds) if fidelity_feeds is not None else []
    metrics = {
        "size_bytes": size, "parameters": parameters, "nonzero_parameters": nonzero,
        "latency_ms": latency_ms, "throughput": throughput, "peak_memory_bytes": None,
        "conditions": {**runner.conditions, "iterations": iterations, "warmup": WARMUP, **machine()},
    }
    return metrics, outputs
