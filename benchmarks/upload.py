"""Upload throughput and API peak memory for a large body.

    python benchmarks/upload.py [--gib 1.0]

Writes an ONNX MLP of about the requested size, streams it to a fresh `tensorpress serve` (API only), and
reports the request's wall time, throughput, and the API process's peak RSS (VmHWM) before and after.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._service import peak_rss_bytes, service  # noqa: E402
from tests.factories import onnx_mlp  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    args = parser.parse_args()
    hidden = 4096
    layers = max(1, round(args.gib * (1 << 30) / (hidden * hidden * 4)))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "big.onnx"
        onnx_mlp(model, sizes=(hidden,) * (layers + 1))
        size = model.stat().st_size
        with service("serve", work) as (base, proc):
            before = peak_rss_bytes(proc.pid)
            start = time.perf_counter()
            with open(model, "rb") as fh:
                response = httpx.post(f"{base}/v1/models?name=big.onnx", content=fh, timeout=600,
                                      headers={"content-type": "application/octet-stream"})
            elapsed = time.perf_counter() - start
            after = peak_rss_bytes(proc.pid)
        assert response.status_code == 201, response.text
        from app.mlmodels.inspection import inspect_model

        start = time.perf_counter()
        inspect_model(model)
        inspection = time.perf_counter() - start
    streamed = elapsed - inspection
    print(f"body {size:,} bytes; whole request {elapsed:.2f} s ({size / elapsed / 1e6:.0f} MB/s), of which "
          f"inspection in the sandboxed child {inspection:.2f} s, so streaming + sha256 + fsync "
          f"{size / streamed / 1e6:.0f} MB/s; API peak RSS {before / 1e6:.1f} MB before → {after / 1e6:.1f} MB after")


if __name__ == "__main__":
    main()
