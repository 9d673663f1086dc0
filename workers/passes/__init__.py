"""The pass registry. Importing this package registers every pass; it loads no ML library."""

from workers.passes.base import REGISTRY, Cancelled, PassContext, PassParams, PassResult, PassSpec
from workers.passes.compression import cluster as _cluster
from workers.passes.distillation import kd as _kd
from workers.passes.engines import aotinductor as _aotinductor
from workers.passes.engines import openvino as _openvino
from workers.passes.engines import tensorrt as _tensorrt
from workers.passes.export import onnx as _export_onnx
from workers.passes.lowrank import svd as _svd
from workers.passes.optimize import onnxruntime as _optimize_ort
from workers.passes.pruning import magnitude as _magnitude
from workers.passes.pruning import semi_structured as _semi_structured
from workers.passes.pruning import structured as _structured
from workers.passes.quantization import dynamic as _dynamic
from workers.passes.quantization import fp16 as _fp16
from workers.passes.quantization import half as _half
from workers.passes.quantization import qat as _qat
from workers.passes.quantization import static as _static
from workers.passes.quantization import weight_only as _weight_only
from workers.passes.rewrite import separable as _separable
from workers.passes.training import finetune as _finetune

__all__ = ["REGISTRY", "Cancelled", "PassContext", "PassParams", "PassResult", "PassSpec"]
_REGISTERED = (_cluster, _kd, _aotinductor, _openvino, _tensorrt, _export_onnx, _svd, _optimize_ort, _magnitude,
               _semi_structured, _structured, _dynamic, _fp16, _half, _qat, _static, _weight_only, _separable,
               _finetune)
