"""The runtimes that run a model for measuring, one runner per format: ONNX Runtime (``onnx``), eager torch
(``torchscript``, ``torch_export``), AOTInductor packages, OpenVINO IR zips and TensorRT engines. A runner is
called with numpy feeds and answers numpy outputs; it carries the ``conditions`` it ran under and its weights
(``parameters()``). :func:`load_runner` is where a format finds its runner; :func:`size_and_parameters` and
:func:`predict` read a model through it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

ONNX_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


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
