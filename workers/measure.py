"""Measure a model the same way for the original and every result: size, parameters, latency, peak memory,
and its outputs on the evaluation inputs (compared by :mod:`workers.metrics`).

Inputs for latency are generated from the model's input specs (seeded, so original and result see the same
data): the first dimension, when dynamic, takes each requested batch size; other dynamic dimensions take the
shape in ``target.inputs``, else the model's ``dim_defaults`` (from a .pt2's range constraints), else 1;
integer inputs take values in ``[low, high)`` from ``target.inputs`` (default 0..1, always valid token ids),
floats are standard normal unless bounded. Fidelity and task metrics use the ``evaluation`` dataset when the
job has one, generated inputs otherwise.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workers.metrics import task_metrics
from workers.runtimes import load_runner, predict, size_and_parameters


def generate_inputs(specs: list[dict[str, Any]], batch: int, bounds: dict[str, dict[str, Any]],
                    seed: int = 0, dim_defaults: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    dim_defaults = dim_defaults or {}
    feeds = {}
    for spec in specs:
        bound = bounds.get(spec["name"], {})
        shape = bound.get("shape") or [
            dim if isinstance(dim, int) and dim > 0 else (batch if i == 0 else dim_defaults.get(dim, 1))
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


def load_dataset(path: Path, limit: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The arrays of an .npz (``allow_pickle=False``), at most ``limit`` samples, and its labels if any."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name][:limit] for name in data.files}
    return arrays, arrays.pop("labels", None)


@dataclass(frozen=True)
class Timing:
    """How latency is sampled: ``warmup`` untimed runs, then timed runs until there are at least
    ``min_iterations`` *and* ``min_time_s`` has passed (more samples for fast models, so p99 means
    something), stopping at ``max_iterations`` or after ``max_time_s`` (with at least 5 samples)."""

    warmup: int = 5
    min_iterations: int = 100
    min_time_s: float = 1.0
    max_time_s: float = 10.0
    max_iterations: int = 10_000


def latency(run: Callable[[], Any], timing: Timing, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Percentiles (linear interpolation) and mean of ``run``'s wall time in ms; ``clock`` is injectable so
    tests can control time."""
    for _ in range(timing.warmup):
        run()
    times: list[float] = []
    began = clock()
    while len(times) < timing.max_iterations:
        start = clock()
        run()
        end = clock()
        times.append((end - start) * 1000)
        elapsed = end - began
        if (len(times) >= timing.min_iterations and elapsed >= timing.min_time_s) or (
                elapsed >= timing.max_time_s and len(times) >= 5):
            break
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {"p50": round(float(p50), 4), "p95": round(float(p95), 4), "p99": round(float(p99), 4),
            "mean": round(float(np.mean(times)), 4), "iterations": len(times)}


class PeakMemory:
    """Peak resident memory that loading and running a model adds to this process: the high-water mark
    (``VmHWM``), reset to the current RSS through ``/proc/self/clear_refs`` after freeing what earlier
    measurements left, minus the RSS at that moment. On CUDA, torch's peak allocation too (ONNX Runtime's
    CUDA arena is not seen by it). ``None`` where Linux's /proc is not available."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.baseline: int | None = None

    def __enter__(self) -> PeakMemory:
        import ctypes
        import gc

        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, or RSS hides the next model's use
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
            self.baseline = _proc_status_bytes("VmRSS")
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = None if self.baseline is None else max(0, _proc_status_bytes("VmHWM") - self.baseline)

    def result(self) -> dict[str, int | None]:
        values: dict[str, int | None] = {"peak_memory_bytes": self.peak}
        if self.cuda:
            import torch

            values["peak_gpu_memory_bytes"] = int(torch.cuda.max_memory_allocated())
        return values


# Runtimes already set up in this process: the first model a runtime loads pays for the runtime's own setup
# (ONNX Runtime's environment: ~12 MB), so measure() loads and runs it once, untimed, before measuring.
_primed: set[tuple[str, str]] = set()


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count()}


def gpu_name() -> str | None:
    """The GPU this process measures on (initialises CUDA: call only in a job's process)."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def measure(path: Path, fmt: str, specs: list[dict[str, Any]], target: dict[str, Any], *, threads: int,
            timing: Timing, eval_feeds: dict[str, np.ndarray], labels: np.ndarray | None = None,
            dim_defaults: dict[str, int] | None = None) -> tuple[dict, list[np.ndarray]]:
    """Metrics of one model, plus its outputs on ``eval_feeds`` (for comparing with another model).

    Peak memory covers loading the model, the timed runs at every batch size and the evaluation pass (not the
    runtime's one-time setup)."""
    device = target.get("device", "cpu")
    gpu = gpu_name() if device == "cuda" else None
    bounds = target.get("inputs", {})
    if (fmt, device) not in _primed:  # the runtime's own setup is not the model's memory
        load_runner(path, fmt, threads, specs, device)(generate_inputs(specs, 1, bounds, dim_defaults=dim_defaults))
        _primed.add((fmt, device))
    with PeakMemory(cuda=gpu is not None) as memory:
        runner = load_runner(path, fmt, threads, specs, device)
        latency_ms, throughput = {}, {}
        for batch in target.get("batch_sizes", [1]):
            feeds = generate_inputs(specs, batch, bounds, dim_defaults=dim_defaults)
            stats = latency(lambda feeds=feeds: runner(feeds), timing)
            latency_ms[str(batch)] = stats
            throughput[str(batch)] = round(batch * 1000 / stats["mean"], 2)
        outputs = predict(runner, specs, eval_feeds)
    size, parameters, nonzero = size_and_parameters(path, runner)
    conditions = {**runner.conditions, **machine(), "warmup": timing.warmup,
                  "min_iterations": timing.min_iterations, "min_time_s": timing.min_time_s,
                  "max_time_s": timing.max_time_s, "timer": "time.perf_counter",
                  "percentiles": "linear interpolation",
                  "peak_memory": "process RSS high-water mark above the RSS before loading (Linux /proc)"}
    if gpu:
        conditions["gpu"] = gpu
    metrics = {"size_bytes": size, "parameters": parameters, "nonzero_parameters": nonzero,
               "latency_ms": latency_ms, "throughput": throughput, **memory.result(),
               **task_metrics(outputs, labels), "conditions": conditions}
    return metrics, outputs
