"""Measure a model the same way for the original and every result: size, parameters, latency, fidelity.

Inputs for latency are generated from the model's input specs (seeded, so original and result see the same
data): the first dimension, when dynamic, takes each requested batch size; other dynamic dimensions take the
shape in ``target.inputs``, else the model's ``dim_defaults`` (from a .pt2's range constraints), else 1;
integer inputs take values in ``[low, high)`` from ``target.inputs`` (default 0..1, always valid token ids),
floats are standard normal unless bounded. Fidelity and task metrics use the ``evaluation`` dataset when the
job has one, generated inputs otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ONNX_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


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


class OnnxRunner:
    def __init__(self, path: Path, threads: int, device: str = "cpu") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        cuda = device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.conditions = {"runtime": "onnxruntime", "version": ort.__version__, "provider": providers[0],
                           "threads": threads, "device": "cuda" if cuda else "cpu"}
        # A pass may change input types (float16 without keep_io_types): feed each input in its own type.
        self.types = {i.name: ONNX_TYPES.get(i.type) for i in self.session.get_inputs()}

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        feeds = {k: v.astype(self.types[k]) if self.types.get(k) and v.dtype != self.types[k] else v
                 for k, v in feeds.items()}
        return [o.astype(np.float32) if o.dtype == np.float16 else o for o in self.session.run(None, feeds)]


class TorchRunner:
    """Eager torch (TorchScript or a .pt2 program's module), on the CPU or the GPU. On a GPU the time
    includes copying inputs there and outputs back."""

    def __init__(self, path: Path, fmt: str, threads: int, specs: list[dict[str, Any]], device: str = "cpu") -> None:
        import torch

        from workers.formats import load_torch

        torch.set_num_threads(threads)
        self.device = device
        self.module = load_torch(path, fmt, device)
        self.names = [s["name"] for s in specs]
        self.conditions = {"runtime": "torch", "version": torch.__version__, "device": device, "threads": threads,
                           "format": fmt}

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.no_grad():
            result = self.module(*(torch.from_numpy(feeds[n]).to(self.device) for n in self.names))
        results = [result] if isinstance(result, torch.Tensor) else list(result)
        return [r.detach().float().cpu().numpy() for r in results]

    def parameters(self) -> list[np.ndarray]:
        """For counting: bfloat16 has no numpy type, so floating-point tensors are read as float32."""
        return [(p.detach().float() if p.is_floating_point() else p.detach()).cpu().numpy()
                for p in self.module.parameters()]


class AotInductorRunner(TorchRunner):
    """An AOTInductor package (compiled by ``engine.aotinductor``, never a user upload)."""

    def __init__(self, path: Path, threads: int, specs: list[dict[str, Any]], device: str = "cpu") -> None:
        import torch

        torch.set_num_threads(threads)
        self.device = device
        self.module = torch._inductor.aoti_load_package(str(path))
        self.names = [s["name"] for s in specs]
        self.conditions = {"runtime": "aotinductor", "version": torch.__version__, "device": device,
                           "threads": threads}

    def parameters(self) -> list[np.ndarray]:
        return []  # compiled into the package's kernels; not counted


def ov_precision(compiled: Any) -> str:
    """The inference precision a compiled OpenVINO model runs at, as OpenVINO spells it (f32, bf16, f16)."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


class OpenVinoRunner:
    """An OpenVINO IR zip from ``engine.openvino``, run at the inference precision it records."""

    def __init__(self, path: Path, threads: int) -> None:
        import tempfile
        import zipfile

        import openvino as ov

        self.folder = tempfile.TemporaryDirectory(prefix="tp-ov-")
        with zipfile.ZipFile(path) as archive:
            archive.extractall(self.folder.name)
            manifest = json.loads(archive.read("tensorpress.json"))
        config = {"INFERENCE_NUM_THREADS": threads}
        if manifest["precision"] != "default":
            config["INFERENCE_PRECISION_HINT"] = manifest["precision"]
        core = ov.Core()
        self.model = core.read_model(f"{self.folder.name}/model.xml")
        self.compiled = core.compile_model(self.model, "CPU", config)
        self.inputs = [i.get_any_name() for i in self.compiled.inputs]
        self.conditions = {"runtime": "openvino", "version": ov.__version__, "device": "CPU", "threads": threads,
                           "inference_precision": ov_precision(self.compiled)}

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.compiled([feeds[name] for name in self.inputs])
        return [np.asarray(result[out]).astype(np.float32) for out in self.compiled.outputs]

    def parameters(self) -> list[np.ndarray]:
        """Weight constants: floating point or 8-bit (NNCF int8), rank ≥ 1 (shape constants are int64)."""
        weights = []
        for op in self.model.get_ops():
            if op.get_type_name() != "Constant" or not len(op.get_output_shape(0)):
                continue
            kind = op.get_output_element_type(0)
            if kind.is_real() or kind.get_type_name() in ("i8", "u8"):
                weights.append(op.get_data())
        return weights


class TensorRtRunner:
    """A serialized TensorRT engine (from ``engine.tensorrt``) on this worker's GPU; buffers are torch CUDA
    tensors, inputs copied in and outputs copied back inside the timed call."""

    def __init__(self, path: Path) -> None:
        import tensorrt as trt
        import torch

        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.conditions = {"runtime": "tensorrt", "version": trt.__version__, "device": "cuda",
                           "gpu": torch.cuda.get_device_name(0)}

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        keep = []
        for name in self.inputs:
            tensor = torch.from_numpy(feeds[name]).cuda().contiguous()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        results = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=_torch_dtype(self.engine.get_tensor_dtype(name)), device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            results.append(out)
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return [r.float().cpu().numpy() for r in results]

    def parameters(self) -> list[np.ndarray]:
        return []  # inside the engine; not counted


def _torch_dtype(trt_dtype: Any) -> Any:
    import tensorrt as trt
    import torch

    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
            trt.int64: torch.int64, trt.int8: torch.int8, trt.bool: torch.bool}[trt_dtype]


Runner = OnnxRunner | TorchRunner | OpenVinoRunner | TensorRtRunner


def load_runner(path: Path, fmt: str, threads: int, specs: list[dict[str, Any]], device: str = "cpu") -> Runner:
    if fmt == "onnx":
        return OnnxRunner(path, threads, device)
    if fmt in ("torchscript", "torch_export"):
        return TorchRunner(path, fmt, threads, specs, device)
    if fmt == "aotinductor":
        return AotInductorRunner(path, threads, specs, device)
    if fmt == "openvino":
        return OpenVinoRunner(path, threads)
    if fmt == "tensorrt":
        return TensorRtRunner(path)
    raise ValueError(f"cannot measure {fmt} models")


def size_and_parameters(path: Path, runner: Runner) -> tuple[int, int, int]:
    """(bytes on disk, parameters, non-zero parameters). ONNX: the file plus the external-data files it refers
    to, and its initializers — from one parse of the graph; otherwise the runner's parameters."""
    size = path.stat().st_size
    if not isinstance(runner, OnnxRunner):
        tensors = runner.parameters()
    else:
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path), load_external_data=False)
        initializers = model.graph.initializer
        locations = {e.value for t in initializers if t.data_location == onnx.TensorProto.EXTERNAL
                     for e in t.external_data if e.key == "location"}
        size += sum((path.parent / location).stat().st_size for location in locations)
        tensors = [numpy_helper.to_array(t, base_dir=str(path.parent)) for t in initializers]
    return size, sum(t.size for t in tensors), sum(int(np.count_nonzero(t)) for t in tensors)


def load_dataset(path: Path, limit: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The arrays of an .npz (``allow_pickle=False``), at most ``limit`` samples, and its labels if any."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name][:limit] for name in data.files}
    return arrays, arrays.pop("labels", None)


def predict(runner: Runner, specs: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run every sample through the model in batches (of the model's fixed batch size, if it has one)."""
    first = specs[0]["shape"][0] if specs and specs[0]["shape"] else None
    fixed = first if isinstance(first, int) and first > 0 else None
    samples = len(next(iter(arrays.values())))
    end = samples - samples % fixed if fixed else samples
    outputs: list[list[np.ndarray]] = []
    for start in range(0, end, fixed or 64):
        outputs.append(runner({s["name"]: arrays[s["name"]][start:start + (fixed or 64)] for s in specs}))
    if not outputs:
        raise ValueError(f"the evaluation data has {samples} samples, fewer than the model's batch size {fixed}")
    return [np.concatenate(parts) for parts in zip(*outputs, strict=True)]


LOWER_IS_BETTER = ("mse", "mae", "max_abs_error")
IMBALANCE_RATIO = 3.0  # largest class ≥ this × the smallest: the budget defaults to macro F1, not accuracy


def task_metrics(outputs: list[np.ndarray], labels: np.ndarray | None) -> dict[str, float]:
    """Against labels: accuracy, top-5 and macro F1 for class ids and [N, classes] outputs; MSE and MAE for
    float targets of the output's size."""
    if labels is None:
        return {}
    metrics = _task_metrics(outputs[0], labels[: len(outputs[0])])
    # NaN or infinite outputs have no score (an argmax over NaN is not a prediction; an MSE would be NaN)
    return {name: None for name in metrics} if nonfinite(outputs) else metrics


def _task_metrics(out: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    if labels.dtype.kind in "iu" and out.ndim == 2 and labels.ndim == 1:
        predicted = np.argmax(out, axis=1)
        metrics = {"accuracy": round(float(np.mean(predicted == labels)), 6),
                   "f1_macro": round(f1_macro(labels, predicted), 6)}
        if out.shape[1] > 5:
            top5 = np.argsort(out, axis=1)[:, -5:]
            metrics["top5_accuracy"] = round(float(np.mean(np.any(top5 == labels[:, None], axis=1))), 6)
        return metrics
    if labels.dtype.kind == "f" and labels.size == out.size:
        diff = out.reshape(labels.shape).astype(np.float64) - labels
        return {"mse": float(np.mean(diff ** 2)), "mae": float(np.mean(np.abs(diff)))}
    return {}


def f1_macro(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in the labels (a class never predicted
    correctly scores 0), so a rare class counts as much as a common one."""
    scores = []
    for cls in np.unique(labels):
        true_pos = np.sum((predicted == cls) & (labels == cls))
        scores.append(2 * true_pos / (np.sum(predicted == cls) + np.sum(labels == cls)))
    return float(np.mean(scores))


def imbalanced(labels: np.ndarray | None) -> bool:
    if labels is None or labels.dtype.kind not in "iu" or labels.ndim != 1:
        return False
    counts = np.unique(labels, return_counts=True)[1]
    return len(counts) > 1 and counts.max() >= IMBALANCE_RATIO * counts.min()


def budget_metric(requested: str | None, result: dict[str, Any], labels: np.ndarray | None) -> str:
    """The metric ``max_accuracy_drop`` applies to: the one asked for; else macro F1 for imbalanced class
    labels, accuracy for balanced ones, MSE for float targets; without labels top-1 agreement for
    classifier-like outputs, cosine otherwise (DESIGN.md)."""
    if requested:
        return requested
    if "accuracy" in result:
        return "f1_macro" if imbalanced(labels) else "accuracy"
    if "mse" in result:
        return "mse"
    return "top1_agreement" if result.get("fidelity", {}).get("top1_agreement") is not None else "cosine"


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


def nonfinite(outputs: list[np.ndarray]) -> int:
    """How many NaN or infinite values the outputs hold."""
    return sum(int(np.count_nonzero(~np.isfinite(o))) for o in outputs if o.dtype.kind in "fc")


def fidelity(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, float | None]:
    """How close ``candidate``'s outputs are to ``reference``'s on the same inputs. Where either holds NaN or
    infinity every similarity is null (never a perfect score) and ``nonfinite`` counts those values."""
    for ref, out in zip(reference, candidate, strict=True):
        if ref.shape != out.shape:
            raise ValueError(f"output shapes differ: {ref.shape} vs {out.shape}")
    bad = {"nonfinite": nonfinite(candidate), "nonfinite_reference": nonfinite(reference)}
    if any(bad.values()):
        return {"cosine": None, "cosine_min": None, "max_abs_error": None, "top1_agreement": None, **bad}
    max_abs = 0.0
    for ref, out in zip(reference, candidate, strict=True):
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


def max_relative_error(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Largest |expected − got| / max(1, |expected|) over all outputs: how a rewrite is checked against its
    source before it is accepted."""
    return max(float(np.max(np.abs(e - g) / np.maximum(1.0, np.abs(e)))) for e, g in zip(expected, got, strict=True))


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


def metric_value(result: dict[str, Any], metric: str) -> float | None:
    """The result's value of ``metric``: a task metric, or a fidelity one (against the original)."""
    return result.get("fidelity", {}).get(metric, result.get(metric))


def original_value(original: dict[str, Any], result: dict[str, Any], metric: str) -> float | None:
    """The original's value of ``metric``; for fidelity metrics, its perfect agreement with itself."""
    if metric in result.get("fidelity", {}):
        return 0.0 if metric in LOWER_IS_BETTER else 1.0
    return original.get(metric)


def metric_loss(original: dict[str, Any], result: dict[str, Any], metric: str) -> float | None:
    """How much worse than the original the result is on ``metric`` (negative: better)."""
    before, after = original_value(original, result, metric), metric_value(result, metric)
    if before is None or after is None:
        return None
    return round(after - before if metric in LOWER_IS_BETTER else before - after, 6)


def objective_score(original: dict[str, Any], result: dict[str, Any], objective: str) -> float:
    """The result's ``objective`` relative to the original's (below 1: better): bytes, or the geometric mean
    over batch sizes of p50 latency, whatever the runtime."""
    if objective == "size":
        return round(result["size_bytes"] / original["size_bytes"], 4)
    ratios = [stats["p50"] / max(original["latency_ms"][batch]["p50"], 1e-9)
              for batch, stats in result["latency_ms"].items()]
    return round(float(np.exp(np.mean(np.log(ratios)))), 4)


def regressions(original: dict[str, Any], result: dict[str, Any], metric: str, budget: float | None,
                objective: str) -> list[str]:
    """Why the result is worse than the original (DESIGN.md's regression gate): ``metric`` worse by more than
    ``budget`` (higher is better, except for errors); for ``latency``, p50 more than 10% above the original's
    at any batch size on the same runtime; for ``size``, larger."""
    reasons = []
    agreement = result.get("fidelity", {})
    if agreement.get("nonfinite") or agreement.get("nonfinite_reference"):
        whose = "its" if agreement.get("nonfinite") else "the original's"
        count = agreement.get("nonfinite") or agreement.get("nonfinite_reference")
        reasons.append(f"{whose} outputs on the evaluation inputs hold {count} NaN or infinite values: "
                       "quality cannot be judged")
    loss = metric_loss(original, result, metric)
    if budget is not None and loss is not None and loss > budget:
        before = original_value(original, result, metric)
        reasons.append(f"{metric} {'rose' if metric in LOWER_IS_BETTER else 'dropped'} by {loss:.4f} "
                       f"({before:.4f} → {metric_value(result, metric):.4f}), more than the allowed {budget}")
    if objective == "latency" and original["conditions"]["runtime"] == result["conditions"]["runtime"]:
        for batch, stats in result["latency_ms"].items():
            reference = original["latency_ms"][batch]["p50"]
            if stats["p50"] > 1.1 * reference:
                reasons.append(f"p50 latency at batch {batch} is {stats['p50']:.3f} ms, more than 10% above the "
                               f"original's {reference:.3f} ms")
    if objective == "size" and result["size_bytes"] > original["size_bytes"]:
        reasons.append(f"{result['size_bytes']} bytes, larger than the original's {original['size_bytes']}")
    return reasons
