from __future__ import annotations

import numpy as np
import onnx
import torch

from tests import factories
from workers.passes import PassContext
from workers.passes.lowrank.svd import LowRankParams, run


def test_a_rank_4_convolution_is_factorized_exactly(tmp_path):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 32, 3, padding=1, stride=2).eval()
    with torch.no_grad():  # a weight of rank 4 as a [32, 8·3·3] matrix
        conv.weight.copy_((torch.randn(32, 4) @ torch.randn(4, 72)).reshape(32, 8, 3, 3))
    path = tmp_path / "conv.onnx"
    path.write_bytes(factories.onnx_from_torch(conv, torch.randn(1, 8, 16, 16)))
    work = tmp_path / "work"
    work.mkdir()
    result = run(PassContext(model_path=path, model_format="onnx", work_dir=work),
                 LowRankParams(rank_by="energy", energy=0.999999, min_params=0))
    [layer] = result.metrics["layers"].values()
    assert layer == {"op": "Conv", "rank": 4, "params_before": 32 * 72, "params_after": 4 * 72 + 32 * 4}
    x = np.random.default_rng(0).standard_normal((2, 8, 16, 16)).astype(np.float32)
    got = factories.run_onnx(result.model_path, {"input": x})[0]
    assert np.allclose(got, conv(torch.from_numpy(x)).detach().numpy(), atol=1e-3)
    assert [n.op_type for n in onnx.load(str(result.model_path)).graph.node] == ["Conv", "Conv"]
