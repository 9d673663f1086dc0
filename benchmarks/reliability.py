"""The API under load on PostgreSQL + Redis, 20 jobs on 2 workers, and a 2 GiB upload; or status polls while
a job computes on the same two cores.

    python benchmarks/reliability.py [--seconds 60]
    python benchmarks/reliability.py --during-a-job [--windows 3] [--seconds 15]

``--during-a-job`` starts `tensorpress up` (the README's embedded default: API and worker on one machine) and
alternates windows of --seconds: 50 clients polling ``GET /v1/jobs/{id}`` once a second with no job running,
then the same while a fine-tuning job keeps a worker busy (cancelled at the window's end). Each pair gives the
ratio of the busy window's p99 to the idle one's. Otherwise:

Starts `tensorpress serve` (one uvicorn process) on a fresh PostgreSQL database and Redis (127.0.0.1), with the
rate limit and active-jobs quota off. Then:
1. 50 clients, each polling a job's status once a second and listing jobs every 10 s, for --seconds;
2. closed-loop clients (no pause) at rising concurrency, 8 s each: throughput, p50 and p99;
(each client opens its connection before it is measured: a cold start of 50 connections at once costs
~200 ms once, which is not what these numbers are about)
3. 20 quantize.dynamic jobs submitted at once to 2 `tensorpress worker` processes: queue wait and total time;
4. a 2 GiB .npz dataset streamed to the API: throughput and the API process's peak RSS.
Clients run in this process on the same 2 cores as the server: the numbers include their cost.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._service import peak_rss_bytes, service, upload  # noqa: E402
from tests.factories import npz_bytes, onnx_mlp  # noqa: E402

PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
OCTET = {"content-type": "application/octet-stream"}


def percentiles(values: list[float]) -> str:
    p50, p99 = np.percentile(values, [50, 99]) * 1000
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"


async def pollers(base: str, job_ids: list[str], seconds: float) -> tuple[dict[str, list[float]], int, int]:
    latencies: dict[str, list[float]] = {"status": [], "list": []}
    errors, started = 0, time.monotonic() + 2  # first, every client opens its connection (not measured)
    gc.collect()
    gc.freeze()  # this process's own full collections (torch is imported here) would stall the clients

    async def client(n: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            await http.get("/healthz")  # another route: the server's histogram of the measured one stays clean
            await asyncio.sleep(started + n / 50 - time.monotonic())  # spread over the second, from the first
            tick = 0
            while time.monotonic() - started < seconds:
                paths = [f"/v1/jobs/{job_ids[n % len(job_ids)]}"] + (["/v1/jobs?limit=50"] if tick % 10 == 0 else [])
                for path in paths:
                    begin = time.perf_counter()
                    try:
                        response = await http.get(path)
                        errors += response.status_code != 200
                    except httpx.HTTPError:
                        errors += 1
                    latencies["list" if "limit" in path else "status"].append(time.perf_counter() - begin)
                tick += 1
                await asyncio.sleep(max(0.0, started + tick - time.monotonic() + n / 50))

    await asyncio.gather(*(client(n) for n in range(50)))
    return latencies, errors, sum(map(len, latencies.values()))


def answered_on_server(http: httpx.Client) -> tuple[float, float]:
    """How many ``GET /v1/jobs/{id}`` the server answered so far, and how many of them within 100 ms (its own
    histogram, the time inside the process: what the clients' numbers add to it is scheduling and transport)."""
    route = 'method="GET",route="/v1/jobs/{job_id}"'
    counts = {line.split("{", 1)[1].split(",", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in http.get("/metrics").text.splitlines()
              if line.startswith("tensorpress_http_request_duration_seconds_bucket") and route in line}
    return counts.get('le="+Inf"', 0.0), counts.get('le="0.1"', 0.0)


def polls_during_a_job(windows: int, seconds: float) -> None:
    from tests.factories import CNN_INPUTS, digits, digits_cnn, torchscript_bytes

    x_train, y_train, _, _ = digits()
    with tempfile.TemporaryDirectory() as tmp, service("up", Path(tmp), {
            "TENSORPRESS_RATE_LIMIT_PER_MINUTE": "0"}) as (base, _):
        http = httpx.Client(base_url=base, timeout=600)
        model_id = upload(http, f"/v1/models?name=cnn.pt&inputs={CNN_INPUTS}", torchscript_bytes(*digits_cnn(3)))
        dataset = upload(http, "/v1/datasets?name=digits.npz", npz_bytes(input=x_train, labels=y_train))
        def training(epochs: int) -> str:
            return http.post("/v1/jobs", json={"model_id": model_id, "datasets": {"training": dataset}, "steps": [
                {"pass": "train.finetune", "params": {"epochs": epochs}}]}).json()["id"]

        def finished(job_id: str) -> None:
            while http.get(f"/v1/jobs/{job_id}").json()["state"] not in ("cancelled", "failed", "succeeded"):
                time.sleep(0.2)

        polled = training(1)  # the job every client polls
        finished(polled)
        rows = []
        for window in range(windows):
            idle, _, _ = asyncio.run(pollers(base, [polled], seconds))
            job = training(1000)  # minutes of work: cancelled when the window ends
            while "epoch 1/" not in http.get(f"/v1/jobs/{job}/logs").text:
                time.sleep(0.2)
            before = answered_on_server(http)
            busy, errors, _ = asyncio.run(pollers(base, [polled], seconds))
            after = answered_on_server(http)
            slow = (after[0] - before[0]) - (after[1] - before[1])
            http.post(f"/v1/jobs/{job}/cancel")
            finished(job)
            (i50, i99), (b50, b99) = (np.percentile(v["status"], [50, 99]) * 1000 for v in (idle, busy))
            rows.append(b99 / i99)
            print(f"| {window + 1} | {i50:.1f} | {i99:.1f} | {b50:.1f} | {b99:.1f} | {b99 / i99:.2f} | "
                  f"{slow:.0f} of {after[0] - before[0]:.0f} | {errors} |", flush=True)
        print(f"busy/idle p99 ratio: median {np.median(rows):.2f} (range {min(rows):.2f}–{max(rows):.2f})")


async def closed_loop(base: str, job_id: str, concurrency: int, seconds: float) -> tuple[list[float], int]:
    latencies, errors, deadline = [], 0, time.monotonic() + seconds

    async def client() -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            await http.get(f"/v1/jobs/{job_id}")  # the connection is open before measuring
            while time.monotonic() < deadline:
                begin = time.perf_counter()
                errors += (await http.get(f"/v1/jobs/{job_id}")).status_code != 200
                latencies.append(time.perf_counter() - begin)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--during-a-job", action="store_true")
    parser.add_argument("--windows", type=int, default=3)
    args = parser.parse_args()
    if args.during_a_job:
        print("| window | idle p50 ms | idle p99 ms | during a job p50 ms | during a job p99 ms | p99 ratio "
              "| over 100 ms inside the server, during the job | errors |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
        polls_during_a_job(args.windows, args.seconds or 15)
        return
    args.seconds = args.seconds or 60
    import redis
    from sqlalchemy import create_engine, text

    name = f"tp_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{PG}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    redis.Redis(db=11).flushdb()
    settings = {"TENSORPRESS_DATABASE_URL": f"{PG}/{name}", "TENSORPRESS_BROKER_URL": "redis://127.0.0.1:6379/11",
                "TENSORPRESS_RATE_LIMIT_PER_MINUTE": "0", "TENSORPRESS_MAX_ACTIVE_JOBS": "1000",
                "TENSORPRESS_MAX_DATASET_BYTES": str(3 << 30)}
    workers: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory() as tmp, service("serve", Path(tmp), settings) as (base, api):
            http = httpx.Client(base_url=base, timeout=600)
            model_id = http.post("/v1/models?name=mlp.onnx", content=onnx_mlp(), headers=OCTET).json()["id"]
            def submit(n: int) -> str:
                return http.post("/v1/jobs", json={"model_id": model_id, "steps": [{"pass": "quantize.dynamic"}],
                                                   "target": {"batch_sizes": [n + 1]}}).json()["id"]

            polled = [submit(n) for n in range(20)]  # cancelled at once: something to poll, nothing to run
            for job_id in polled:
                http.post(f"/v1/jobs/{job_id}/cancel")

            latencies, errors, count = asyncio.run(pollers(base, polled, args.seconds))
            print(f"1. 50 polling clients, {args.seconds:.0f} s: {count} requests ({count / args.seconds:.0f}/s), "
                  f"{errors} errors; all: {percentiles(latencies['status'] + latencies['list'])}; status: "
                  f"{percentiles(latencies['status'])}; lists of 20 jobs: {percentiles(latencies['list'])}")
            print("2. closed loop, GET /v1/jobs/{id}:\n\n| clients | requests/s | p50 ms | p99 ms | errors |\n"
                  "|---:|---:|---:|---:|---:|")
            for concurrency in (1, 2, 4, 8, 16, 32, 64):
                latencies, errors = asyncio.run(closed_loop(base, polled[0], concurrency, 8))
                p50, p99 = np.percentile(latencies, [50, 99]) * 1000
                print(f"| {concurrency} | {len(latencies) / 8:.0f} | {p50:.1f} | {p99:.1f} | {errors} |")

            env = {**{k: v for k, v in os.environ.items() if not k.startswith("TENSORPRESS_")}, **settings,
                   "TENSORPRESS_DATA_DIR": str(Path(tmp) / "data")}
            exe = str(Path(sys.executable).parent / "tensorpress")
            workers = [subprocess.Popen([exe, "worker", "--queues", "cpu"], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL) for _ in range(2)]
            while len(http.get("/v1/workers").json()["items"]) < 2:
                time.sleep(0.2)
            started = time.monotonic()
            with ThreadPoolExecutor(20) as pool:  # 20 submissions at once
                job_ids = list(pool.map(submit, range(20)))
            while any(http.get(f"/v1/jobs/{j}").json()["state"] in ("queued", "running") for j in job_ids):
                time.sleep(0.5)
            makespan = time.monotonic() - started
            jobs = [http.get(f"/v1/jobs/{j}").json() for j in job_ids]

            def seconds(a: str, b: str) -> float:
                return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()

            waits = [seconds(j["created_at"], j["started_at"]) for j in jobs]
            runs = [seconds(j["started_at"], j["finished_at"]) for j in jobs]
            states = {s: sum(j["state"] == s for j in jobs) for s in {j["state"] for j in jobs}}
            print(f"\n3. 20 jobs submitted at once to 2 idle workers: {states} in {makespan:.1f} s; run time per job "
                  f"p50 {np.median(runs):.1f} s (max {max(runs):.1f}); queue wait (submitted → started) p50 "
                  f"{np.median(waits):.1f} s, max {max(waits):.1f} s; attempts {sorted({j['attempt'] for j in jobs})}")

            data = Path(tmp) / "big.npz"
            data.write_bytes(npz_bytes(input=np.ones((1 << 23, 64), np.float32)))  # 2 GiB
            size = data.stat().st_size
            before = peak_rss_bytes(api.pid)
            begin = time.perf_counter()
            with open(data, "rb") as fh:
                response = http.post("/v1/datasets?name=big.npz", content=fh, headers=OCTET)
            elapsed = time.perf_counter() - begin
            assert response.status_code == 201, response.text
            after = peak_rss_bytes(api.pid)
            print(f"\n4. {size:,}-byte dataset upload: {elapsed:.1f} s ({size / elapsed / 1e6:.0f} MB/s, streamed, "
                  f"hashed, fsynced); API peak RSS {before / 1e6:.1f} MB before, {after / 1e6:.1f} MB after")
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=30)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        redis.Redis(db=11).flushdb()


if __name__ == "__main__":
    main()
