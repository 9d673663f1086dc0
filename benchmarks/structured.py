"""prune.structured on the residual MLP and the small transformer encoder of the tests (untrained).

    python benchmarks/structured.py

Parameters and MACs per sample before and after 30% structured pruning, and torch latency p50 at batch 64
(2 threads, 200 runs after 20 warm-up runs), measured back to back on this machine.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import factories  # noqa: E402
from workers.passes import PassContext  # noqa: E402
from workers.passes.pruning.structured import StructuredPruneParams, run  # noqa: E402


def p50(module, example: tuple, runs: int = 200) -> float:
    with torch.no_grad():
        for _ in range(20):
            module(*example)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            module(*example)
            times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50))


def main() -> None:
    torch.set_num_threads(2)
    bert, bert_example = factories.bert_like()
    models = [
        ("residual MLP", *factories.residual_mlp(), [{"name": "x", "dtype": "float32", "shape": ["batch", 64]}],
         (torch.randn(64, 64),)),
        ("transformer encoder, fused QKV (heads kept)", *factories.tiny_transformer(),
         [{"name": "input_ids", "dtype": "int64", "shape": ["batch", 16]}], (torch.randint(0, 100, (64, 16)),)),
        ("BERT-layout encoder (8 → 5 heads)", bert, bert_example,
         [{"name": "input_ids", "dtype": "int64", "shape": ["batch", 16]},
          {"name": "attention_mask", "dtype": "int64", "shape": ["batch", 16]}],
         (torch.randint(0, 100, (64, 16)), torch.ones(64, 16, dtype=torch.int64))),
    ]
    print("| model (30%) | parameters | MACs / sample | torch p50 batch 64 |\n|---|---:|---:|---:|")
    for title, model, example, inputs, batch in models:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.pt2"
            example = example if isinstance(example, tuple) else (example,)
            dims = tuple({0: torch.export.Dim("batch", min=1, max=256)} for _ in example)
            torch.export.save(torch.export.export(model, example, dynamic_shapes=dims), str(path))
            work = Path(tmp) / "work"
            work.mkdir()
            bounds = {"input_ids": {"low": 0, "high": 100}, "attention_mask": {"low": 1, "high": 2}}
            result = run(PassContext(model_path=path, model_format="torch_export", work_dir=work, inputs=inputs,
                                     target={"inputs": bounds}), StructuredPruneParams(ratio=0.3))
            before = torch.export.load(str(path)).module()
            after = torch.export.load(str(result.model_path)).module()
            m = result.metrics
            print(f"| {title} | {m['params_before']:,} → {m['params_after']:,} | {m['macs_before']:,} → "
                  f"{m['macs_after']:,} | {p50(before, batch):.3f} → {p50(after, batch):.3f} ms |")


if __name__ == "__main__":
    main()
