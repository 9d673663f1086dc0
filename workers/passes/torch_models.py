"""Load, rewrite in place, and save the torch formats that passes change (TorchScript and .pt2 programs).

TorchScript is rewritten through its ``ScriptModule`` (parameters are ordinary tensors) and saved with
``torch.jit.save``. A torch.export program is changed through its ``state_dict`` — the tensors that
``ExportedProgram.module()`` also uses — and saved with ``torch.export.save``. Neither format is converted:
the architecture and the format stay as uploaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TorchModel:
    """A loaded TorchScript module or .pt2 program: a callable module plus a way to save it back."""

    def __init__(self, path: Path, fmt: str) -> None:

        from workers.formats import load_program, load_torch

        self.format = fmt
        if fmt == "torchscript":
            self.module = load_torch(path, fmt)  # checked against the operator allow-list
            self.program = None
        elif fmt == "torch_export":
            self.program = load_program(path)
            self.module = self.program.module()
        else:
            raise ValueError(f"{fmt} is not a torch format")

    def weights(self) -> dict[str, Any]:
        """Weight tensors of convolutions and linear layers (rank ≥ 2, floating point), by name."""
        named = (self.program.state_dict.items() if self.program is not None
                 else self.module.named_parameters())
        return {name: t for name, t in named
                if t.dim() >= 2 and t.is_floating_point() and name.rsplit(".", 1)[-1] == "weight"}

    def parameters(self) -> list[Any]:
        """Every trainable tensor, shared with what :meth:`save` writes."""
        if self.program is not None:
            params = set(self.program.graph_signature.parameters)
            return [t for name, t in self.program.state_dict.items() if name in params]
        return list(self.module.parameters())

    def save_to(self, folder: Path) -> Path:
        """Save into ``folder`` under the format's usual name; the path written."""
        path = folder / ("model.pt" if self.format == "torchscript" else "model.pt2")
        self.save(path)
        return path

    def save(self, path: Path) -> None:
        import torch

        if self.program is not None:
            torch.export.save(self.program, str(path))
        else:
            torch.jit.save(self.module, str(path))


def reexport(module: Any, ctx: Any, varargs: bool = False) -> Any:
    """``torch.export`` a rewritten module again, with the dynamic dimensions of the job model's inputs
    (``varargs``: the module's ``forward`` takes them as ``*inputs``)."""
    import torch

    feeds = ctx.example_inputs(2)
    example = tuple(torch.from_numpy(feeds[s["name"]]) for s in ctx.inputs)
    dynamic = tuple({i: torch.export.Dim.AUTO for i, d in enumerate(s["shape"]) if isinstance(d, str)}
                    for s in ctx.inputs)
    return torch.export.export(module, example, dynamic_shapes=(dynamic,) if varargs else dynamic)
