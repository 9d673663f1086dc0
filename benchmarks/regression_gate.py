"""The regression gate's verdicts on the digits CNN, one job's full metrics JSON, a cache hit, an event stream.

    python benchmarks/regression_gate.py [--json metrics.json]

Trains the digits CNN, uploads it as ONNX to a fresh `tensorpress up` with the default measuring settings
(≥100 timed runs and ≥1 s per batch size), and runs `quantize.dynamic` (MatMul/Gemm only, the default;
and with the convolutions too) and `quantize.static` with batch sizes 1 and 64, objective latency and a budget
of one accuracy point. Prints a markdown table of verdicts; then repeats the static job to show the cache hit
and follows it through `GET /v1/jobs/{id}/events`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._service import service, upload  # noqa: E402
from tests import factories  # noqa: E402

RECIPES = [
    ("quantize.dynamic (MatMul/Gemm, default)", [{"pass": "quantize.dynamic"}]),
    ("quantize.dynamic, convolutions too", [{"pass": "quantize.dynamic", "params": {"op_types": ["Conv", "Gemm"]}}]),
    ("quantize.static (minmax, per channel)", [{"pass": "quantize.static", "params": {"per_channel": True}}]),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, help="write the static job's metrics JSON here")
    args = parser.parse_args()
    x_train, _, x_test, y_test = factories.digits()
    cnn = factories.digits_cnn(epochs=10)
    with tempfile.TemporaryDirectory() as tmp, service("up", Path(tmp)) as (base, _), \
            httpx.Client(base_url=base, timeout=600) as http:
        data = {"calibration": upload(http, "/v1/datasets?name=cal", factories.npz_bytes(input=x_train[:256])),
                "evaluation": upload(http, "/v1/datasets?name=test", factories.npz_bytes(input=x_test, labels=y_test))}
        model_id = upload(http, "/v1/models?name=cnn.onnx", factories.onnx_from_torch(*cnn))

        def run(steps) -> tuple[dict, float]:
            payload = {"model_id": model_id, "datasets": data, "steps": steps,
                       "evaluation": {"max_accuracy_drop": 0.01},
                       "target": {"batch_sizes": [1, 64], "objective": "latency"}}
            started = time.perf_counter()
            submitted = http.post("/v1/jobs", json=payload)
            assert submitted.status_code == 202, submitted.text
            with http.stream("GET", f"{submitted.headers['location']}/events") as events:
                kinds = [line.removeprefix("event: ") for line in events.iter_lines() if line.startswith("event: ")]
            job = http.get(submitted.headers["location"]).json()
            job["_events"] = kinds
            return job, time.perf_counter() - started

        print("| recipe | p50 ms b1 / b64 (original → result) | accuracy | peak memory MB | verdict |")
        print("|---|---|---|---|---|")
        static = None
        for label, steps in RECIPES:
            job, _ = run(steps)
            o, r = job["metrics"]["original"], job["metrics"]["result"]
            verdict = "regressed: " + "; ".join(job["regressions"]) if job["regressed"] else "not regressed"
            print(f"| {label} | {o['latency_ms']['1']['p50']:.3f} / {o['latency_ms']['64']['p50']:.3f} → "
                  f"{r['latency_ms']['1']['p50']:.3f} / {r['latency_ms']['64']['p50']:.3f} | "
                  f"{o['accuracy']:.4f} → {r['accuracy']:.4f} | {o['peak_memory_bytes'] / 2**20:.1f} → "
                  f"{r['peak_memory_bytes'] / 2**20:.1f} | {verdict} |")
            static = job if "static" in label else static
        repeat, seconds = run(RECIPES[2][1])
        print(f"\nrepeat of the static job: cache_hit={repeat['cache_hit']} in {seconds:.2f} s "
              f"(first run {static['finished_at']} − {static['created_at']}); same sha256: "
              f"{repeat['artifacts'][0]['sha256'] == static['artifacts'][0]['sha256']}")
        print(f"events of the first static job's stream: {static['_events']}")
        metrics = json.dumps(static["metrics"], indent=1)
        if args.json:
            args.json.write_text(metrics)
        print(f"\nmetrics of the static job:\n{metrics}")


if __name__ == "__main__":
    main()
