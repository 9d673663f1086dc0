"""Inspect an uploaded model in a sandboxed child process: ``python -I -m workers.inspection PATH``.

Prints one JSON object on stdout: ``{"ok": true, "format", "inputs", "outputs", "parameters", "details"}``
or ``{"ok": false, "status": 4xx, "detail": ...}``. The parent (``app/mlmodels/inspection.py``) applies
memory and CPU-time limits and a clean environment; this module never unpickles anything.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# Operator domains ONNX Runtime implements itself; anything else would need a custom-op library (native
# code supplied by the uploader), which we never load.
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"}
PICKLE_HINT = (
    "pickled Python objects (torch.save checkpoints, state dicts, plain pickles) are never loaded: "
    "export the model as ONNX (torch.onnx.export), TorchScript (torch.jit.save) or a torch.export "
    "program (torch.export.save, .pt2)"
)


class Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def inspect_onnx(path: Path) -> dict[str, Any]:
    import numpy as np
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise Refused(415, f"not a model in a format we take (ONNX parse failed: {exc})") from exc
    if model.ir_version <= 0 or not model.opset_import or not model.graph.node:
        raise Refused(415, "not a model in a format we take (no ONNX graph found in the upload)")
    custom = sorted({o.domain for o in model.opset_import} - KNOWN_DOMAINS)
    if custom:
        raise Refused(422, f"custom operator domains are not supported: {', '.join(custom)}")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise Refused(422, "this ONNX file refers to external data files; upload a zip holding the model "
                      "and its data files")
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as exc:
        raise Refused(422, f"the ONNX model is invalid: {str(exc).splitlines()[0]}") from exc

    def spec(value_info) -> dict[str, Any]:
        tensor = value_info.type.tensor_type
        dims: list[int | str] = []
        for i, d in enumerate(tensor.shape.dim):
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or f"dim{i}"))
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name if tensor.elem_type else "unknown"
        return {"name": value_info.name, "dtype": dtype, "shape": dims}

    init_names = {i.name for i in model.graph.initializer}
    inputs = [spec(v) for v in model.graph.input if v.name not in init_names]
    parameters = sum(int(np.prod(t.dims)) if t.dims else 1 for t in model.graph.initializer)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {
        "format": "onnx",
        "inputs": inputs,
        "outputs": [spec(v) for v in model.graph.output],
        "parameters": parameters,
        "details": {
            "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
            "ir_version": model.ir_version,
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "op_counts": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        },
    }


def inspect(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        raise Refused(400, "the upload is empty")
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        raise Refused(415, PICKLE_HINT)
    if head.startswith(b"PK\x03\x04"):
        raise Refused(415, "zip archives (TorchScript, .pt2, ONNX with external data) are not accepted yet")
    return inspect_onnx(path)


def main() -> None:
    try:
        result = {"ok": True, **inspect(Path(sys.argv[1]))}
    except Refused as exc:
        result = {"ok": False, "status": exc.status, "detail": exc.detail}
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main()
