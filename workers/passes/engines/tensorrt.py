"""``engine.tensorrt`` — an ONNX model built into a serialized TensorRT engine for the worker's GPU.

Written against TensorRT 10's Python API (``tensorrt``): the ONNX parser fills a network; the builder config
sets the precision (fp32; fp16; int8 either from a QDQ model — explicit quantization — or with an entropy
calibrator fed from the ``calibration`` dataset), a workspace limit, sparse tactics when asked (they pay off
only for 2:4-sparse weights), and one optimization profile whose batch dimension spans min/opt/max of
``target.batch_sizes``. A timing cache per GPU model and TensorRT version (in the worker's cache folder)
makes rebuilds faster. The engine runs only with this TensorRT version on this GPU model, which the artifact
records together with CUDA's version.

Where it has run: **not yet run on a GPU** — TensorRT cannot be installed on this project's development and
CI machines (FACTS.md), and no GPU with TensorRT has been available to a session. Its tests are marked
``gpu`` and skip elsewhere with that reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from workers.passes.base import PassContext, PassParams, PassResult, PassSpec, register

LAST_RUN = "not yet run on a GPU"


class TensorRtParams(PassParams):
    precision: Literal["fp32", "fp16", "int8"] = Field(
        default="fp16", description="fp32; fp16; int8 (explicit from a QDQ model, else calibrated on the "
        "calibration dataset with an entropy calibrator; fp16 allowed beside it)."
    )
    workspace_mb: int = Field(default=2048, ge=64, le=1 << 20, description="Builder workspace limit in MiB.")
    sparse_weights: bool = Field(default=False, description="Allow sparse tactics (for 2:4-sparse weights).")
    calibration_samples: int = Field(default=256, ge=1, le=100_000, description="Samples for int8 calibration.")
    timing_cache: bool = Field(default=True, description="Reuse the timing cache of this GPU model and version.")


def _is_qdq(path: Path) -> bool:
    import onnx

    return any(n.op_type == "QuantizeLinear" for n in onnx.load(str(path), load_external_data=False).graph.node)


class EntropyCalibrator:
    """``trt.IInt8EntropyCalibrator2`` over the calibration .npz, batches copied to the GPU with torch."""

    def __new__(cls, *args, **kwargs):
        import tensorrt as trt

        class _Calibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self, arrays: dict[str, Any], batch: int, cache: Path) -> None:
                super().__init__()
                self.arrays, self.batch, self.cache, self.position = arrays, batch, cache, 0
                self.samples = len(next(iter(arrays.values())))
                self.device: dict[str, Any] = {}

            def get_batch_size(self) -> int:
                return self.batch

            def get_batch(self, names):
                import torch

                if self.position + self.batch > self.samples:
                    return None
                pointers = []
                for name in names:
                    chunk = torch.from_numpy(self.arrays[name][self.position:self.position + self.batch])
                    self.device[name] = chunk.cuda().contiguous()
                    pointers.append(int(self.device[name].data_ptr()))
                self.position += self.batch
                return pointers

            def read_calibration_cache(self):
                return self.cache.read_bytes() if self.cache.exists() else None

            def write_calibration_cache(self, cache) -> None:
                self.cache.write_bytes(bytes(cache))

        return _Calibrator(*args, **kwargs)


def run(ctx: PassContext, params: TensorRtParams) -> PassResult:
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(ctx.model_path)):
        raise ValueError("TensorRT could not parse the model: " + "; ".join(
            str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, params.workspace_mb << 20)
    qdq = _is_qdq(ctx.model_path)
    if params.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if params.sparse_weights:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    batches = sorted(ctx.target.get("batch_sizes", [1]))
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        fixed = [d if d > 0 else 1 for d in shape[1:]]
        profile.set_shape(tensor.name, [batches[0], *fixed], [batches[len(batches) // 2], *fixed],
                          [batches[-1], *fixed])
    config.add_optimization_profile(profile)
    if params.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if not qdq:  # implicit quantization: ranges from an entropy calibrator, run at the profile's max batch
            if "calibration" not in ctx.datasets:
                raise ValueError("int8 needs a QDQ model (quantize.static) or a calibration dataset")
            arrays = ctx.dataset_inputs("calibration", params.calibration_samples)
            config.set_calibration_profile(profile)
            config.int8_calibrator = EntropyCalibrator(arrays, batches[-1], ctx.work_dir / "calibration.cache")
    gpu = torch.cuda.get_device_name(0)
    cache_file = Path.home() / ".cache" / "tensorpress" / f"trt-{trt.__version__}-{gpu.replace(' ', '_')}.cache"
    if params.timing_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    ctx.check_cancelled()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ValueError("TensorRT could not build an engine for this model (see the worker's log)")
    if params.timing_cache:
        cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    out = ctx.work_dir / "model.engine"
    out.write_bytes(bytes(serialized))
    ctx.log(f"TensorRT {trt.__version__} engine for {gpu}: {params.precision}"
            f"{' (explicit QDQ)' if qdq and params.precision == 'int8' else ''}, batch {batches[0]}–{batches[-1]}")
    return PassResult(out, "tensorrt", metrics={"precision": params.precision, "qdq": qdq},
                      metadata={"runtime": "tensorrt", "tensorrt": trt.__version__, "cuda": torch.version.cuda,
                                "gpu": gpu, "batch_range": [batches[0], batches[-1]], "last_run": LAST_RUN,
                                "note": "runs only with this TensorRT version on this GPU model"})


SPEC = register(
    PassSpec(
        name="engine.tensorrt",
        description="Build a serialized TensorRT engine (fp32/fp16/int8, dynamic batch profile, timing cache) "
                    "for the worker's GPU.",
        accepts=("onnx",),
        produces="tensorrt",
        params=TensorRtParams,
        run=run,
        queue="gpu",
        requires=("tensorrt",),
    )
)
