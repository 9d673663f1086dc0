"""quantize.dynamic through the service vs `onnxruntime.quantization.quantize_dynamic` in a script.

    python benchmarks/service_vs_script.py [--hidden 2048] [--repeat 3]

Builds an ONNX MLP (about 43 MB with the default hidden size), quantizes it directly, then uploads it to a
fresh `tensorpress up` and runs the same quantization as a job. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._service import service  # noqa: E402
from tests.factories import onnx_mlp  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "mlp.onnx"
        onnx_mlp(model, sizes=(1024, args.hidden, args.hidden, args.hidden, 1000))
        size = model.stat().st_size
        script = []
        for i in range(args.repeat):
            start = time.perf_counter()
            quantize_dynamic(model, work / f"q{i}.onnx", per_channel=True, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul"])
            script.append(time.perf_counter() - start)
        uploads, jobs, steps = [], [], []
        with service("up", work) as (base, _), httpx.Client(base_url=base, timeout=120) as http:
            for _ in range(args.repeat):
                start = time.perf_counter()
                with open(model, "rb") as fh:
                    model_id = http.post("/v1/models?name=mlp.onnx", content=fh,
                                         headers={"content-type": "application/octet-stream"}).json()["id"]
                uploads.append(time.perf_counter() - start)
                start = time.perf_counter()
                submitted = http.post("/v1/jobs", json={"model_id": model_id,
                                                        "steps": [{"pass": "quantize.dynamic"}]})
                assert submitted.status_code == 202, submitted.text
                url = submitted.headers["location"]
                while (job := http.get(url).json())["state"] in ("queued", "running"):
                    time.sleep(0.05)
                jobs.append(time.perf_counter() - start)
                assert job["state"] == "succeeded", http.get(f"{url}/logs").text
                step = job["steps"][0]
                from datetime import datetime

                steps.append((datetime.fromisoformat(step["finished_at"])
                              - datetime.fromisoformat(step["started_at"])).total_seconds())
                result_size = job["metrics"]["result"]["size_bytes"]

    def fmt(values):
        return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"

    print(f"model: ONNX MLP, {size / 1e6:.1f} MB → {result_size / 1e6:.1f} MB int8; "
          f"{args.repeat} runs, median (min–max) s")
    print("| measured | seconds |\n|---|---:|")
    print(f"| script: `quantize_dynamic(per_channel=True)` | {fmt(script)} |")
    print(f"| service: the `quantize.dynamic` step inside the job | {fmt(steps)} |")
    print(f"| service: whole job, POST → succeeded (includes measuring original and result) | {fmt(jobs)} |")
    print(f"| service: upload + inspection | {fmt(uploads)} |")


if __name__ == "__main__":
    main()
