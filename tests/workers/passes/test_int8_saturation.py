"""Int8 on x86 CPUs without VNNI: AVX2's ``vpmaddubsw`` adds each pair of uint8 × int8 products in 16 bits and
clips the sum. CI's AVX2-only EPYC put 10.6 % of the output's range of error into the test MLP that way; 7-bit
weights keep every pair in range. The kernel is emulated here, so the test holds on any CPU."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from tests import factories
from workers.passes import quantization
from workers.passes.base import PassContext
from workers.passes.quantization.dynamic import DynamicQuantizeParams, run


def avx2_outputs(path, x: np.ndarray) -> np.ndarray:
    """The quantized MLP run as ONNX Runtime's AVX2 u8s8 kernel computes it: products summed in pairs, each
    pair clipped to int16, then accumulated in int32."""
    model = onnx.load(str(path))
    values = {"x": x, **{i.name: numpy_helper.to_array(i) for i in model.graph.initializer}}
    for node in model.graph.node:
        a, *rest = [values[name] if name else None for name in node.input]
        if node.op_type == "DynamicQuantizeLinear":
            low, high = min(a.min(), 0), max(a.max(), 0)
            scale = np.float32((high - low) / 255)
            zero = np.uint8(np.clip(np.round(-low / scale), 0, 255))
            out = [np.clip(np.round(a / scale) + zero, 0, 255).astype(np.uint8), scale, zero]
        elif node.op_type == "MatMulInteger":
            w = rest[0].astype(np.int32)
            products = a.astype(np.int32)[:, :, None] * w[None]
            pairs = np.clip(products[:, 0::2] + products[:, 1::2], -32768, 32767)
            out = [pairs.sum(axis=1) - int(rest[1]) * w.sum(axis=0)]
        elif node.op_type == "Cast":
            out = [a.astype(np.float32)]
        elif node.op_type == "Relu":
            out = [np.maximum(a, 0)]
        else:
            out = [{"Mul": np.multiply, "Add": np.add, "MatMul": np.matmul}[node.op_type](a, rest[0])]
        values.update(zip(node.output, out, strict=False))
    return values[model.graph.output[0].name]


def quantize(tmp_path, params: DynamicQuantizeParams, logs: list[str]):
    source = tmp_path / "mlp.onnx"
    source.write_bytes(factories.onnx_mlp())
    work = tmp_path / f"work{len(list(tmp_path.iterdir()))}"
    work.mkdir()
    return source, run(PassContext(model_path=source, model_format="onnx", work_dir=work, log=logs.append), params)


def test_cpus_without_vnni_are_recognised_by_their_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(quantization.platform, "machine", lambda: "x86_64")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert quantization.int8_products_saturate(cpuinfo) is True
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert quantization.int8_products_saturate(cpuinfo) is False
    assert quantization.int8_products_saturate(tmp_path / "missing") is True
    monkeypatch.setattr(quantization.platform, "machine", lambda: "aarch64")
    assert quantization.int8_products_saturate(tmp_path / "missing") is False


def test_dynamic_int8_on_a_cpu_without_vnni_keeps_avx2_products_in_range(tmp_path, monkeypatch):
    monkeypatch.setattr(quantization, "int8_products_saturate", lambda: True)
    x = np.random.default_rng(7).standard_normal((16, 64)).astype(np.float32)
    logs: list[str] = []
    source, result = quantize(tmp_path, DynamicQuantizeParams(), logs)
    expected = factories.run_onnx(source.read_bytes(), {"x": x})[0]
    assert result.metadata["reduce_range"] is True and any("7-bit weights" in line for line in logs)
    weights = [numpy_helper.to_array(i) for i in onnx.load(str(result.model_path)).graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert len(weights) == 3 and max(np.abs(w.astype(int)).max() for w in weights) <= 64
    assert np.abs(avx2_outputs(result.model_path, x) - expected).max() < 0.05 * np.abs(expected).max()

    _, full_range = quantize(tmp_path, DynamicQuantizeParams(reduce_range=False), logs)  # what CI's EPYC ran
    assert np.abs(avx2_outputs(full_range.model_path, x) - expected).max() > 0.08 * np.abs(expected).max()
