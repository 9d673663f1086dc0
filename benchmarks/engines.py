"""CPU engines side by side: eager torch, ONNX Runtime, AOTInductor, OpenVINO bf16 (its CPU default here)
and f32, on the digits CNN, the tests' small transformer and MiniLM-L6.

    pip install -e '.[bench]' && python benchmarks/engines.py [--skip-minilm]

Every model is uploaded as a torch.export program to a fresh `tensorpress up`; each engine is one job, whose
original (eager torch) and result are measured back to back: latency p50 at batch 1 and 8, fidelity to the
eager outputs on the same inputs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._service import service  # noqa: E402
from tests import factories  # noqa: E402

ENGINES = [
    ("ONNX Runtime fp32", [{"pass": "export.onnx"}]),
    ("AOTInductor", [{"pass": "engine.aotinductor"}]),
    ("OpenVINO default precision", [{"pass": "engine.openvino"}]),
    ("OpenVINO f32", [{"pass": "engine.openvino", "params": {"precision": "f32"}}]),
]


def minilm_pt2() -> tuple[bytes, dict]:
    import torch

    from benchmarks.minilm import SEQ, export_encoder

    encoder, arrays = export_encoder()
    example = tuple(torch.from_numpy(arrays[k][:2]) for k in ("input_ids", "attention_mask"))
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(encoder, example, dynamic_shapes=({0: batch}, {0: batch}))
    path = Path(tempfile.mkdtemp()) / "minilm.pt2"
    torch.export.save(program, str(path))
    bounds = {"input_ids": {"shape": [1, SEQ], "low": 0, "high": 30522},
              "attention_mask": {"shape": [1, SEQ], "low": 1, "high": 2}}
    return path.read_bytes(), bounds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-minilm", action="store_true")
    args = parser.parse_args()
    transformer = factories.tiny_transformer()
    models = [("digits CNN", factories.pt2_bytes(*factories.digits_cnn(epochs=10)), {}),
              ("small transformer (2 blocks, d=64, seq 16)", factories.pt2_bytes(*transformer),
               {"input_ids": {"shape": [1, 16], "low": 0, "high": 100}})]
    if not args.skip_minilm:
        models.append(("MiniLM-L6 (seq 128)", *minilm_pt2()))
    tables = []
    with tempfile.TemporaryDirectory() as tmp, service("up", Path(tmp)) as (base, _), \
            httpx.Client(base_url=base, timeout=900) as http:
        for title, body, bounds in models:
            model_id = http.post("/v1/models?name=model.pt2", content=body,
                                 headers={"content-type": "application/octet-stream"}).json()["id"]
            rows = []
            for label, steps in ENGINES:
                submitted = http.post("/v1/jobs", json={"model_id": model_id, "steps": steps,
                                                        "target": {"batch_sizes": [1, 8], "inputs": bounds}})
                assert submitted.status_code == 202, submitted.text
                started = time.perf_counter()
                while (job := http.get(submitted.headers["location"]).json())["state"] in ("queued", "running"):
                    time.sleep(0.5)
                if job["state"] != "succeeded":
                    rows.append(f"| {label} | failed: {job['error']['detail'][:120]} | | | |")
                    continue
                original, result = job["metrics"]["original"], job["metrics"]["result"]
                if not rows:
                    rows.append(_row("eager torch (the upload)", original, None, original))
                rows.append(_row(label, result, f"{time.perf_counter() - started:.0f} s", original))
            tables.append((title, rows))
    for title, rows in tables:
        print(f"\n### {title}\n")
        print("| engine | p50 ms batch 1 | p50 ms batch 8 | eager p50 in the same job (1 / 8) | cosine | max abs error "
              "| precision | job |\n|---|---:|---:|---:|---:|---:|---|---|")
        print("\n".join(rows))


def _row(label: str, m: dict, took: str | None, original: dict) -> str:
    fidelity = m.get("fidelity", {"cosine": 1.0, "max_abs_error": 0.0})
    precision = m["conditions"].get("inference_precision", "f32")
    eager = f"{original['latency_ms']['1']['p50']:.3f} / {original['latency_ms']['8']['p50']:.3f}"
    return (f"| {label} | {m['latency_ms']['1']['p50']:.3f} | {m['latency_ms']['8']['p50']:.3f} | {eager} | "
            f"{fidelity['cosine']:.6f} | {fidelity['max_abs_error']:.2e} | {precision} | {took or ''} |")


if __name__ == "__main__":
    main()
