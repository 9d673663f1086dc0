"""The pass registry. Importing this package registers every pass; it loads no ML library."""

from workers.passes.base import REGISTRY, Cancelled, PassContext, PassParams, PassResult, PassSpec
from workers.passes.export import onnx  # noqa: F401  (registers)
from workers.passes.quantization import dynamic  # noqa: F401  (registers)

__all__ = ["REGISTRY", "Cancelled", "PassContext", "PassParams", "PassResult", "PassSpec"]
