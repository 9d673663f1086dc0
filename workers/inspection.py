"""Inspect an uploaded model in a confined child process: ``python -I -m workers.inspection PATH OPTIONS_JSON``
(options: ``limits``, ``inputs``, ``allow_unconfined``).

Prints one JSON object on stdout: ``{"ok": true, "format", "inputs", "outputs", "parameters", "details"}``
or ``{"ok": false, "status": 4xx, "detail": ...}`` — a detail without server paths or tracebacks. The parent
(``app/mlmodels/inspection.py``) applies memory and CPU-time limits and a clean environment; this process
confines itself (:mod:`app.core.confinement`) before it reads the upload; nothing here unpickles user data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from app.core.archives import ArchiveLimits, ArchiveRefused, extract
from app.core.confinement import confine, probe, runtime_paths
from workers.formats import (
    KNOWN_DOMAINS,
    PROGRAMS,
    FormatRefused,
    all_tensors,
    check_external_data,
    check_pt2,
    detect,
    onnx_model_file,
)

TORCHSCRIPT_INPUTS_HINT = (
    'TorchScript keeps no input shapes: upload with ?inputs=[{"name": "x", "dtype": "float32", '
    '"shape": ["batch", 3, 224, 224]}] (names as in forward(); a string names a dynamic dimension)'
)


def inspect_onnx(path: Path, archive: bool = False) -> dict[str, Any]:
    import numpy as np
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise FormatRefused(415, f"not a model in a format we take (ONNX parse failed: {exc})") from exc
    if model.ir_version <= 0 or not model.opset_import or not model.graph.node:
        raise FormatRefused(415, "not a model in a format we take (no ONNX graph found in the upload)")
    custom = sorted({o.domain for o in model.opset_import} - KNOWN_DOMAINS)
    if custom:
        raise FormatRefused(422, f"custom operator domains are not supported: {', '.join(custom)}")
    external = check_external_data(model, path) if archive else 0
    if not archive and any(t.data_location == onnx.TensorProto.EXTERNAL for t in all_tensors(model)):
        raise FormatRefused(422, "this ONNX file refers to external data files; upload a zip holding the model "
                                 "and its data files")
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as exc:
        raise FormatRefused(422, f"the ONNX model is invalid: {str(exc).splitlines()[0]}") from exc

    def spec(value_info) -> dict[str, Any]:
        tensor = value_info.type.tensor_type
        dims: list[int | str] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or f"dim{i}")
                                 for i, d in enumerate(tensor.shape.dim)]
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name if tensor.elem_type else "unknown"
        return {"name": value_info.name, "dtype": dtype, "shape": dims}

    init_names = {i.name for i in model.graph.initializer}
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {
        "format": "onnx",
        "inputs": [spec(v) for v in model.graph.input if v.name not in init_names],
        "outputs": [spec(v) for v in model.graph.output],
        "parameters": sum(int(np.prod(t.dims)) if t.dims else 1 for t in model.graph.initializer),
        "details": {
            "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
            "ir_version": model.ir_version,
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "op_counts": _sorted(ops),
            **({"archive": True, "external_tensors": external} if archive else {}),
        },
    }


def inspect_onnx_zip(path: Path, limits: ArchiveLimits) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tp-inspect-") as tmp:
        try:
            extract(path, Path(tmp), limits)
        except ArchiveRefused as exc:
            raise FormatRefused(422, str(exc)) from exc
        return inspect_onnx(onnx_model_file(Path(tmp)), archive=True)


def _sorted(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _outputs(result: Any) -> list[Any]:
    import torch

    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)) and all(isinstance(r, torch.Tensor) for r in result):
        return list(result)
    raise FormatRefused(422, "the model must return a tensor or a tuple/list of tensors")


def inspect_torchscript(path: Path, declared: list[dict[str, Any]] | None) -> dict[str, Any]:
    import numpy as np
    import torch

    from workers.formats import load_torch

    try:
        module = load_torch(path, "torchscript")
    except FormatRefused:
        raise
    except Exception as exc:
        raise FormatRefused(422, f"torch.jit.load failed: {str(exc).splitlines()[0][:300]}") from exc
    names = [a.name for a in module.forward.schema.arguments[1:]]
    if not declared:
        raise FormatRefused(422, f"{TORCHSCRIPT_INPUTS_HINT}; this module's forward() takes {names}")
    if [d.get("name") for d in declared] != names:
        raise FormatRefused(422, f"declared inputs {[d.get('name') for d in declared]} do not match forward() "
                                 f"arguments {names}")
    feeds = []
    for spec in declared:
        try:
            dtype = np.dtype(spec["dtype"])
            shape = [2 if isinstance(d, str) else int(d) for d in spec["shape"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatRefused(422, f"invalid input spec {spec}: {TORCHSCRIPT_INPUTS_HINT}") from exc
        feeds.append(torch.from_numpy(np.zeros(shape, dtype=dtype)))
    try:
        with torch.no_grad():
            outputs = _outputs(module(*feeds))
    except FormatRefused:
        raise
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        cause = lines[-1] if lines else type(exc).__name__  # TorchScript puts the cause last, under its trace
        if "allocate" in cause:
            cause = f"it ran out of its memory limit ({cause})"
        raise FormatRefused(422, f"the module does not run on the declared inputs: {cause[:300]}") from exc
    batch = next((s["shape"][0] for s in declared if s["shape"] and isinstance(s["shape"][0], str)), None)
    out_specs = [{"name": "output" if len(outputs) == 1 else f"output_{i}",
                  "dtype": str(o.dtype).removeprefix("torch."),
                  "shape": [batch if (j == 0 and batch and d == 2) else d for j, d in enumerate(o.shape)]}
                 for i, o in enumerate(outputs)]
    ops: dict[str, int] = {}
    for node in module.inlined_graph.nodes():
        if node.kind().startswith("aten::"):
            ops[node.kind()] = ops.get(node.kind(), 0) + 1
    return {"format": "torchscript", "inputs": [{"name": s["name"], "dtype": np.dtype(s["dtype"]).name,
                                                 "shape": s["shape"]} for s in declared],
            "outputs": out_specs, "parameters": sum(p.numel() for p in module.parameters()),
            "details": {"op_counts": _sorted(ops), "torch": torch.__version__}}


def inspect_torch_export(path: Path) -> dict[str, Any]:
    import torch

    from workers.formats import load_program

    check_pt2(path)  # outside the try: its refusals are our own, with their own status
    try:
        program = load_program(path)
    except FormatRefused:
        raise
    except Exception as exc:
        raise FormatRefused(422, f"torch.export.load failed: {str(exc).splitlines()[0][:300]}") from exc
    signature = program.graph_signature
    names: dict[str, str] = {}
    dim_defaults: dict[str, int] = {}

    def dim(value: Any, index: int) -> int | str:
        if isinstance(value, int):
            return value
        symbol = str(value)
        if symbol not in names:
            names[symbol] = "batch" if index == 0 and "batch" not in names.values() else f"d_{symbol}"
            bounds = program.range_constraints.get(value.node.expr) if hasattr(value, "node") else None
            low = int(bounds.lower) if bounds is not None else 1
            high = int(bounds.upper) if bounds is not None and bounds.upper.is_finite else 1 << 30
            dim_defaults[names[symbol]] = max(low, min(high, 8))
        return names[symbol]

    def spec(name: str, val: Any) -> dict[str, Any]:
        return {"name": name, "dtype": str(val.dtype).removeprefix("torch."),
                "shape": [dim(d, i) for i, d in enumerate(val.shape)]}

    nodes = {n.name: n for n in program.graph.nodes}
    inputs = [spec(name, nodes[name].meta["val"]) for name in signature.user_inputs]
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    out_vals = [a.meta.get("val") for a in output_node.args[0]][-len(signature.user_outputs):]
    outputs = [spec("output" if len(out_vals) == 1 else f"output_{i}", v) for i, v in enumerate(out_vals)]
    params = set(signature.parameters)
    ops: dict[str, int] = {}
    for node in program.graph.nodes:
        if node.op == "call_function":
            key = str(node.target)
            ops[key] = ops.get(key, 0) + 1
    return {"format": "torch_export", "inputs": inputs, "outputs": outputs,
            "parameters": sum(t.numel() for k, t in program.state_dict.items() if k in params),
            "details": {"op_counts": _sorted(ops), "torch": torch.__version__, "dim_defaults": dim_defaults}}


def inspect(path: Path, limits: ArchiveLimits, declared: list[dict[str, Any]] | None = None,
            programs: bool = True) -> dict[str, Any]:
    """The upload's record; ``programs``: whether TorchScript and .pt2 may be loaded here (this process is
    confined, or the operator allowed them unconfined)."""
    fmt = detect(path, limits)
    if declared and fmt != "torchscript":
        raise FormatRefused(422, "?inputs= is only for TorchScript uploads; other formats record their inputs")
    if fmt in PROGRAMS and not programs:
        raise FormatRefused(422, f"this server cannot confine user programs ({probe().describe()['mechanism']}), "
                                 "so TorchScript and .pt2 uploads are refused; upload ONNX, or ask the operator "
                                 "(TENSORPRESS_ALLOW_UNCONFINED, docs/security.md)")
    if fmt == "onnx":
        return inspect_onnx(path)
    if fmt == "onnx_zip":
        return inspect_onnx_zip(path, limits)
    if fmt == "torchscript":
        return inspect_torchscript(path, declared)
    return inspect_torch_export(path)


_PATH = re.compile(r"(?<![\w.])/(?:[\w.@+-]+/)*[\w.@+-]+")


def scrub(detail: str, *known: Path) -> str:
    """A message fit for the client: no path of this server in it (the upload's and scratch paths named, any
    other absolute path elided)."""
    for path, name in sorted(((str(p), n) for p, n in known), key=lambda pn: -len(pn[0])):
        detail = detail.replace(path, name)
    return _PATH.sub("…", detail)


def main() -> None:
    """``python -I -m workers.inspection PATH OPTIONS_JSON``: confine this process to reading the Python
    environment and the upload and writing a scratch folder, inspect, print the JSON answer."""
    path, options = Path(sys.argv[1]), json.loads(sys.argv[2])
    scratch = Path(tempfile.mkdtemp(prefix="tp-inspect-"))
    read, write = runtime_paths()
    support = confine(read + [path], write + [scratch])
    os.environ.update(HOME=str(scratch), TMPDIR=str(scratch))
    tempfile.tempdir = str(scratch)
    try:
        result = {"ok": True, **inspect(path, ArchiveLimits(**options["limits"]), options.get("inputs"),
                                        programs=support.complete or options.get("allow_unconfined", False))}
    except FormatRefused as exc:
        result = {"ok": False, "status": exc.status,
                  "detail": scrub(exc.detail, (path, "the upload"), (path.parent, "…"), (scratch, "…"))}
    # Anything else (a bug, a hostile input we did not foresee, memory running out) ends this process with its
    # traceback on stderr: the parent logs it and answers the client without it (app/core/sandbox.py).
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main()
