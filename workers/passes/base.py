"""What every pass is made of (after Olive's pass registry and torchao's config/handler split).

A pass is one unit of technique in one file under ``workers/passes/<family>/``. It declares a stable dotted
name, the model formats it accepts and the one it produces, the queue it needs, and a frozen pydantic
parameter model with a description on every field — the JSON schema that ``GET /v1/passes`` shows and that
the API validates recipes against. Its ``run(ctx, params)`` gets a :class:`PassContext` and returns a
:class:`PassResult`; it never touches the database, Celery or HTTP, and imports heavy libraries inside ``run``
so that the API can import this package without loading torch or onnxruntime.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

ModelFormat = Literal["onnx", "torchscript", "torch_export"]
Queue = Literal["cpu", "gpu"]


class PassParams(BaseModel):
    """Base of every parameter model: frozen, validated on construction, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Cancelled(Exception):
    """Raised inside a pass (via ``ctx.check_cancelled()``) when the job's cancellation was requested."""


@dataclass
class PassContext:
    """Everything a pass may use. Paths are local files; the work directory is the pass's own.

    ``inputs``/``outputs`` are the model's tensor specs (``{"name", "dtype", "shape"}``, a string in a shape
    names a dynamic dimension); ``dim_defaults`` gives a size for dynamic dimensions other than the batch;
    ``datasets`` maps roles (``calibration``, ``training``, …) to ``.npz`` files; ``models`` maps the ids of
    other uploaded models that the pass's parameters name (``model_refs``) to their file and format.
    """

    model_path: Path
    model_format: str
    work_dir: Path
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    dim_defaults: dict[str, int] = field(default_factory=dict)
    datasets: dict[str, Path] = field(default_factory=dict)
    models: dict[str, tuple[Path, str]] = field(default_factory=dict)
    device: str = "cpu"
    target: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[float], None] = lambda fraction: None
    is_cancelled: Callable[[], bool] = lambda: False
    log: Callable[[str], None] = lambda message: None

    def check_cancelled(self) -> None:
        if self.is_cancelled():
            raise Cancelled("cancellation requested")

    def example_inputs(self, batch: int) -> dict[str, Any]:
        """Generated inputs (numpy arrays by input name) for ``batch`` samples, following ``target.inputs``."""
        from workers.measure import generate_inputs

        return generate_inputs(self.inputs, batch, self.target.get("inputs", {}), dim_defaults=self.dim_defaults)

    def dataset_inputs(self, role: str, limit: int | None = None) -> dict[str, Any]:
        """The arrays of the ``role`` dataset that feed the model's inputs, at most ``limit`` samples."""
        from workers.measure import load_dataset

        arrays, _ = load_dataset(self.datasets[role], limit)
        return {s["name"]: arrays[s["name"]] for s in self.inputs}


@dataclass
class PassResult:
    """The pass's output model, its format, and what it measured about its own work."""

    model_path: Path
    format: str
    metrics: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PassSpec:
    name: str
    description: str
    accepts: tuple[str, ...]
    produces: str  # a format, or "same": the input's format
    params: type[PassParams]
    run: Callable[[PassContext, Any], PassResult]
    queue: Queue = "cpu"
    requires: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    # Parameters holding the id of another uploaded model; the API checks it exists for the tenant, has the
    # job model's format and its input and output shapes, and the runner hands it over in ``ctx.models``.
    model_refs: tuple[str, ...] = ()
    # What the parameters cannot do with the model's format and the job's dataset roles, said at submission
    # (None when fine).
    check: Callable[[Any, str, set[str]], str | None] | None = None

    def output_format(self, input_format: str) -> str:
        """The format this pass makes from ``input_format`` (``produces="same"`` keeps it)."""
        return input_format if self.produces == "same" else self.produces

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    def unavailable_reason(self) -> str | None:
        """Why this deployment can never run the pass (a library it needs is not installed), else None."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        return f"not installed here: {', '.join(missing)}" if missing else None


REGISTRY: dict[str, PassSpec] = {}


def register(spec: PassSpec) -> PassSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"pass {spec.name} registered twice")
    REGISTRY[spec.name] = spec
    return spec
