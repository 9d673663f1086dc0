"""The operator allow-list of program formats: a TorchScript module or a ``.pt2`` program may do tensor
computation and nothing else.

Checked after loading (which compiles the code but runs none of it) and before anything runs: at upload in the
inspector, and again in every job process that loads a user program (:func:`workers.formats.load_torch`).

- **TorchScript**: every method of every submodule, inlined, every block walked (``if``/``loop`` bodies, forked
  subgraphs). Calls that inlining cannot resolve are refused, and so are values of C++ classes
  (``torch.classes``) other than torch's built-in quantized packed parameters.
- **``.pt2``**: every node of every graph module of the program, higher-order operators' subgraphs included.
- Operators must come from a reviewed namespace, and within it the reviewed denials below hold: no file,
  serialization, storage-from-file, process, network (``c10d``), profiler or debugging operators.

Confinement (:mod:`app.core.confinement`) stays the backstop for whatever a tensor operator could be made to do.
"""

from __future__ import annotations

import math
import operator
import re
from typing import Any

from workers.formats import FormatRefused

# Namespaces of tensor computation. Not listed, so refused: c10d and _c10d_functional* (network), symm_mem
# (NVSHMEM), profiler, debugprims (load_tensor reads files), inductor (storage resizing), static_runtime, _test,
# onnx, export, _dtensor, debug_mode_ops, rngprims, _native, and every namespace a library would register.
NAMESPACES = {"aten", "prim", "prims", "quantized", "_quantized", "mkldnn", "mkldnn_prepacked", "mkl", "onednn",
              "sparse", "quantization"}
# Reviewed denials within those namespaces.
DENIED = re.compile(r"^aten::(save|load|from_file|_save\w*|_load\w*|record_stream|set_)$"
                    r"|^prim::(PythonOp|CallFunction|CallMethod|profile\w*)$"
                    r"|file|pickle")
HIGHER_ORDER = {"cond", "while_loop", "map_impl", "scan", "wrap_with_set_grad_enabled", "wrap_with_autocast"}
PYTHON_CALLABLES = {*(getattr(operator, n) for n in dir(operator) if not n.startswith("_")),
                    *(getattr(math, n) for n in dir(math) if callable(getattr(math, n)))}
ALLOWED_CLASSES = "__torch__.torch.classes.quantized."
CLASSES = "__torch__.torch.classes."


def _refuse(op: str, where: str) -> FormatRefused:
    return FormatRefused(422, f"the program uses {op} in {where}, which is not tensor computation; TensorPress "
                              "runs only programs whose operators are on its reviewed allow-list")


def allowed(op: str) -> bool:
    """Whether an operator (``namespace::name``) is on the allow-list."""
    return op.split("::", 1)[0] in NAMESPACES and not DENIED.search(op)


def _walk(block: Any, where: str) -> None:
    for node in block.nodes():
        if not allowed(node.kind()):
            raise _refuse(node.kind(), where)
        for value in node.outputs():
            kind = str(value.type())
            if kind.startswith(CLASSES) and not kind.startswith(ALLOWED_CLASSES):
                raise _refuse(f"the class {kind}", where)
        for inner in node.blocks():
            _walk(inner, where)
        for attribute in node.attributeNames():
            if node.kindOf(attribute) == "g":
                _walk(node.g(attribute), where)
            elif node.kindOf(attribute) == "gs":
                for graph in node.gs(attribute):
                    _walk(graph, where)


def check_torchscript(module: Any) -> None:
    """Raise :class:`FormatRefused` naming the first operator outside the allow-list, and where it is."""
    import torch

    for path, submodule in reversed(list(module.named_modules())):  # innermost first: the error names it
        for name in submodule._c._method_names():
            graph = submodule._c._get_method(name).graph.copy()
            torch._C._jit_pass_inline(graph)
            _walk(graph, f"{path or 'the module'}.{name}()")


def _symbolic(target: Any) -> bool:
    """torch's own functions of symbolic sizes (``torch.sym_int``, ``torch.sym_max``, …)."""
    return str(getattr(target, "__module__", "")).startswith("torch") and \
        getattr(target, "__name__", "").startswith(("sym_", "_sym_"))


def check_program(program: Any) -> None:
    """The same for a ``torch.export`` program: every node of every graph module."""
    import torch

    for path, graph_module in program.graph_module.named_modules():
        if not isinstance(graph_module, torch.fx.GraphModule):
            continue
        for node in graph_module.graph.nodes:
            where = f"{path or 'the program'}, node {node.name}"
            target = node.target
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            if node.op != "call_function":
                raise _refuse(f"a {node.op} node", where)
            if isinstance(target, torch._ops.OpOverload):
                if not allowed(target._schema.name):
                    raise _refuse(target._schema.name, where)
            elif isinstance(target, torch._ops.HigherOrderOperator):
                if target.name() not in HIGHER_ORDER:
                    raise _refuse(f"the higher-order operator {target.name()}", where)
            elif target not in PYTHON_CALLABLES and not _symbolic(target):
                raise _refuse(f"the Python function {getattr(target, '__qualname__', target)!r}", where)
