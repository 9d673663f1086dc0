"""The hand-written baselines: the few lines of library code a user would write instead of calling the service.

Each baseline takes the float ONNX file (and, for torch.ao, the torch module) and returns an :class:`Entry`
that runs it: the same inputs, threads and timer as the service's artifacts get in ``_harness.py``. Each is
written the way the library's documentation shows it, with its defaults; where a library documents a setting
for transformers (NNCF's ``model_type``), it is used.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks._harness import THREADS, Entry, onnx_entry

Arrays = dict[str, np.ndarray]


def _timed(make: Callable[[], Entry]) -> Entry:
    started = time.perf_counter()
    entry = make()
    entry.seconds = time.perf_counter() - started
    return entry


def ort_dynamic(fp32: Path, work: Path, per_channel: bool) -> Entry:
    from onnxruntime.quantization import quantize_dynamic

    def make() -> Entry:
        out = work / f"ort-dynamic-{'pc' if per_channel else 'default'}.onnx"
        quantize_dynamic(fp32, out, per_channel=per_channel)
        return onnx_entry("hand-written", f"`quantize_dynamic({'per_channel=True' if per_channel else 'defaults'})`",
                          out)

    return _timed(make)


def ort_static(fp32: Path, work: Path, calibration: Arrays) -> Entry:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            samples = len(next(iter(calibration.values())))
            self.feeds = iter([{k: v[i:i + 1] for k, v in calibration.items()} for i in range(samples)])

        def get_next(self):
            return next(self.feeds, None)

    def make() -> Entry:
        out = work / "ort-static.onnx"
        quantize_static(fp32, out, Reader())
        return onnx_entry("hand-written", "`quantize_static(reader)` defaults (QDQ, per tensor, minmax)", out)

    return _timed(make)


def optimum_dynamic(fp32: Path, work: Path) -> Entry | None:
    """optimum's ORTQuantizer with its AVX-512 VNNI dynamic configuration (None where optimum is missing)."""
    try:
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig
    except ImportError:
        return None

    def make() -> Entry:
        source = work / "optimum-in"
        source.mkdir()
        (source / "model.onnx").symlink_to(fp32)
        quantizer = ORTQuantizer.from_pretrained(source, file_name="model.onnx")
        quantizer.quantize(save_dir=work / "optimum-out",
                           quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True))
        return onnx_entry("hand-written", "optimum `ORTQuantizer`, `avx512_vnni(is_static=False, per_channel=True)`",
                          work / "optimum-out" / "model_quantized.onnx")

    return _timed(make)


def torch_dynamic(module, names: list[str]) -> Entry:
    """``torch.ao.quantization.quantize_dynamic`` on the Linear layers, run in eager torch."""
    import torch

    def make() -> Entry:
        quantized = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)
        buffer = io.BytesIO()
        torch.save(quantized.state_dict(), buffer)

        def run(feeds: Arrays) -> list[np.ndarray]:
            torch.set_num_threads(THREADS)
            with torch.no_grad():
                return [quantized(*(torch.from_numpy(feeds[n]) for n in names)).numpy()]

        return Entry("hand-written", "`torch.ao.quantization.quantize_dynamic({nn.Linear}, qint8)`, eager torch",
                     run, len(buffer.getvalue()), engine="torch")

    return _timed(make)


def openvino(fp32: Path, work: Path, calibration: Arrays | None = None, transformer: bool = False) -> Entry:
    """OpenVINO at the CPU's default precision, or (with calibration data) NNCF's default int8 quantization."""
    import openvino as ov

    def make() -> Entry:
        model = ov.convert_model(str(fp32))
        label = "OpenVINO `convert_model` + `compile_model`, default precision"
        if calibration is not None:
            import nncf

            samples = len(next(iter(calibration.values())))
            dataset = nncf.Dataset(range(samples), lambda i: {k: v[i:i + 1] for k, v in calibration.items()})
            model = nncf.quantize(model, dataset, subset_size=samples,
                                  model_type=nncf.ModelType.TRANSFORMER if transformer else None)
            label = "NNCF `nncf.quantize`" + (" (`model_type=TRANSFORMER`)" if transformer else "") + " int8"
        folder = work / ("nncf" if calibration is not None else "openvino")
        ov.save_model(model, str(folder / "model.xml"))
        compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", {"INFERENCE_NUM_THREADS": THREADS})
        names = [i.get_any_name() for i in compiled.inputs]

        def run(feeds: Arrays) -> list[np.ndarray]:
            return [np.asarray(compiled([feeds[n] for n in names])[0])]

        from workers.runtimes import ov_precision

        precision = ov_precision(compiled)
        size = sum(f.stat().st_size for f in folder.iterdir())
        return Entry("hand-written", f"{label} ({precision})", run, size, engine="openvino")

    return _timed(make)
