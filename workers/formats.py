"""Model formats: detection from the bytes, safety checks, and loading (in workers and the inspector).

| format | detected by |
|---|---|
| ``onnx`` | not a zip, not a pickle: parsed as an ONNX protobuf |
| ``onnx`` (zip) | a zip holding exactly one ``.onnx`` file plus its external-data files |
| ``torchscript`` | a zip with ``<name>/code/`` entries and ``<name>/constants.pkl`` (``torch.jit.save``) |
| ``torch_export`` | a zip with ``<name>/archive_format`` = ``pt2`` (``torch.export.save``) |

``torch.save`` checkpoints and plain pickles are refused: they are only loadable by unpickling, which runs
arbitrary code. TorchScript and ``.pt2`` programs are code too; they are loaded only in sandboxed child
processes (inspection) and in worker job processes, never in the API. ``torch.export.load`` would unpickle
payloads marked ``use_pickle`` and opaque constants, and falls back to ``torch.load(weights_only=False)`` for
sample inputs, so ``check_pt2`` refuses archives that carry such payloads and every process that loads user
models runs with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from app.core.archives import ArchiveLimits, ArchiveRefused, extract, safe_members

PICKLE_HINT = (
    "pickled Python objects (torch.save checkpoints, state dicts, plain pickles) are never loaded: "
    "export the model as ONNX (torch.onnx.export), TorchScript (torch.jit.save) or a torch.export "
    "program (torch.export.save, .pt2)"
)
# Operator domains ONNX Runtime implements itself; anything else needs a custom-op library (native code
# supplied by the uploader), which we never load.
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"}
PROGRAMS = ("torchscript", "torch_export")  # formats that are code: they run only where confinement holds


class FormatRefused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def force_weights_only() -> None:
    """Make every ``torch.load`` in this process refuse to unpickle arbitrary objects."""
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"


def detect(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> str:
    """``onnx``, ``onnx_zip``, ``torchscript`` or ``torch_export``; raises :class:`FormatRefused`."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        raise FormatRefused(400, "the upload is empty")
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        raise FormatRefused(415, PICKLE_HINT)
    if not head.startswith(b"PK\x03\x04"):
        return "onnx"
    try:
        names = [m.filename for m in safe_members(path, limits)]
    except ArchiveRefused as exc:
        raise FormatRefused(422, str(exc)) from exc
    files = [PurePosixPath(n) for n in names if not n.endswith("/")]
    if any(p.name == "archive_format" for p in files):
        return "torch_export"
    if any(len(p.parts) >= 2 and p.parts[1] == "code" for p in files) and any(p.name == "constants.pkl" for p in files):
        return "torchscript"
    if any(p.name == "data.pkl" for p in files):
        raise FormatRefused(415, "this is a torch.save checkpoint; " + PICKLE_HINT)
    if sum(p.suffix == ".onnx" for p in files) == 1:
        return "onnx_zip"
    raise FormatRefused(415, "a zip archive must hold a TorchScript module (torch.jit.save), a torch.export "
                             "program (torch.export.save) or exactly one .onnx file with its external data")


def check_pt2(path: Path) -> None:
    """Refuse .pt2 archives whose loading would unpickle anything."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        formats = [n for n in names if PurePosixPath(n).name == "archive_format"]
        if not formats or archive.read(formats[0]).strip() != b"pt2":
            raise FormatRefused(415, "unsupported torch.export archive (expected archive_format pt2)")
        configs = [n for n in names if n.endswith("_weights_config.json") or n.endswith("_constants_config.json")]
        if not any(n.endswith("_weights_config.json") for n in configs):
            raise FormatRefused(415, "this .pt2 archive has no weights config (saved by an unsupported torch "
                                     "version?); re-save it with torch.export.save from torch >= 2.6")
        for name in configs:
            try:
                config = json.loads(archive.read(name))["config"]
            except (ValueError, KeyError) as exc:
                raise FormatRefused(422, f"{name} is not a valid payload config") from exc
            for fqn, meta in config.items():
                if meta.get("use_pickle"):
                    raise FormatRefused(422, f"{fqn} in {name} is stored as a pickle, which we never load; "
                                             "save plain tensors")
                if name.endswith("_constants_config.json") and not str(meta.get("path_name", "")).startswith("tensor_"):
                    raise FormatRefused(422, f"constant {fqn} is a Python object (custom or opaque), which we "
                                             "never unpickle")


def onnx_model_file(folder: Path) -> Path:
    found = [p for p in folder.rglob("*.onnx") if p.is_file()]
    if len(found) != 1:
        raise FormatRefused(422, f"expected exactly one .onnx file in the archive, found {len(found)}")
    return found[0]


def all_tensors(model: Any) -> Iterator[Any]:
    """Every tensor a model holds: initializers and sparse initializers, tensor and sparse-tensor attributes, in
    the main graph, every subgraph (``If``/``Loop``/``Scan`` bodies) and every local function."""
    from onnx import AttributeProto as A

    def of_node(node: Any) -> Iterator[Any]:
        for attr in node.attribute:
            sparse = [attr.sparse_tensor] if attr.type == A.SPARSE_TENSOR else list(attr.sparse_tensors)
            yield from [attr.t] if attr.type == A.TENSOR else attr.tensors
            for tensor in sparse:
                yield from (tensor.values, tensor.indices)
            for graph in [attr.g] if attr.type == A.GRAPH else attr.graphs:
                yield from of_graph(graph)

    def of_graph(graph: Any) -> Iterator[Any]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in graph.node:
            yield from of_node(node)

    yield from of_graph(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from of_node(node)


def check_external_data(model: Any, model_file: Path) -> int:
    """Every external-data location must be relative, stay inside the model's folder, be no link, and exist.
    Returns how many tensors use external data. Checked before any library resolves the paths."""
    import onnx

    root = model_file.parent.resolve()
    count = 0
    for tensor in all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        count += 1
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        pure = PurePosixPath(location)
        if not location or pure.is_absolute() or ".." in pure.parts or "\\" in location or ":" in location:
            raise FormatRefused(422, f"external data of {tensor.name!r} points outside the model's folder: "
                                     f"{location!r}")
        target = root / location
        if target.is_symlink() or not target.resolve().is_relative_to(root):
            raise FormatRefused(422, f"external data of {tensor.name!r} is a link or leaves the folder")
        if not target.is_file():
            raise FormatRefused(422, f"external data file {location!r} of {tensor.name!r} is missing")
    return count


def materialize(path: Path, storage_key: str, dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> Path:
    """A local copy of a stored model in ``dest``, which the job may write beside (ONNX Runtime's quantizers
    write files next to their input): ONNX zips are extracted (checked), other files copied."""
    if not storage_key.endswith(".zip"):
        dest.mkdir(parents=True)
        return Path(shutil.copyfile(path, dest / PurePosixPath(storage_key).name))
    extract(path, dest, limits)
    return onnx_model_file(dest)


def load_program(path: Path):
    """A user's torch.export program: its payloads checked first, loaded with unpickling refused, its operators
    checked against the allow-list before anything can run it."""
    import torch

    from workers.operators import check_program

    check_pt2(path)
    force_weights_only()
    program = torch.export.load(str(path))
    check_program(program)
    return program


def load_torch(path: Path, fmt: str, device: str = "cpu"):
    """A callable torch module for a TorchScript file or a .pt2 program, in eval mode on ``device``; its operators
    are checked against the allow-list first."""
    import torch

    from workers.operators import check_torchscript

    force_weights_only()
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location=device)
        check_torchscript(module)
        module.eval()
        return module
    if fmt == "torch_export":
        program = load_program(path)
        if device != "cpu":
            program = torch.export.passes.move_to_device_pass(program, device)
        return program.module()
    raise ValueError(f"{fmt} is not a torch format")
