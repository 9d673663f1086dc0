"""``tensorpress up`` as a user runs it: a subprocess with the embedded defaults, driven over HTTP."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.core.processes import group_alive
from tests.factories import onnx_endless_loop, onnx_mlp, run_onnx
from tests.integration.test_distributed import wait_for

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tensorpress() -> str:
    return shutil.which("tensorpress", path=str(Path(sys.executable).parent)) or "tensorpress"


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TENSORPRESS_")}


def wait_ready(base: str, proc: subprocess.Popen, what: str) -> None:
    """Until the server at ``base`` answers /readyz (or its process has exited)."""
    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    wait_for(ready, 180, what)


@dataclass
class Up:
    proc: subprocess.Popen
    url: str
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def worker(self) -> int:
        """The pid of the worker process ``up`` runs now (its process group has the same id)."""
        def find() -> int | None:
            return next((pid for pid in children_of(self.proc.pid)
                         if b"celery" in Path(f"/proc/{pid}/cmdline").read_bytes()), None)

        return wait_for(find, 120, "the worker process of tensorpress up")


@contextlib.contextmanager
def running_up(cwd: Path, env: dict[str, str] | None = None) -> Iterator[Up]:
    """``tensorpress up`` on a free port until its ready line; SIGTERM at the end (if still running)."""
    port = free_port()
    with open(cwd / "up.log", "wb") as log:
        proc = subprocess.Popen([tensorpress(), "up", "--port", str(port)], cwd=cwd, env=env or clean_env(),
                                stdout=log, stderr=subprocess.STDOUT)
        up = Up(proc, f"http://127.0.0.1:{port}", cwd / "up.log")
        try:
            wait_for(lambda: "TensorPress is ready on" in up.text() or proc.poll() is not None, 180,
                     "the ready line of tensorpress up")
            assert proc.poll() is None, up.text()[-3000:]
            yield up
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)


def children_of(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if int(fields.get("PPid", "0").strip()) == pid:
            found.append(int(status.parent.name))
    return found


def stop(up: Up) -> float:
    """SIGTERM; returns how long ``up`` took to exit (it must, with status 0)."""
    started = time.monotonic()
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(timeout=120) == 0, up.text()[-3000:]
    return time.monotonic() - started


def submit(http: httpx.Client, model: bytes, **job) -> str:
    model_id = http.post("/v1/models", files={"file": ("net.onnx", model)}).json()["id"]
    response = http.post("/v1/jobs", json={"model_id": model_id, **job})
    assert response.status_code == 202, response.text
    return response.headers["location"]


def finished(http: httpx.Client, url: str, timeout: float = 600) -> dict:
    return wait_for(lambda: (b := http.get(url).json())["state"] in ("succeeded", "failed", "cancelled") and b,
                    timeout, "the job")


def test_up_runs_a_job_end_to_end_with_nothing_else_installed(tmp_path):
    # The data dir defaults to ./.tensorpress in the current directory.
    with running_up(tmp_path) as up, httpx.Client(base_url=up.url, timeout=60) as http:
        assert (tmp_path / ".tensorpress" / "tensorpress.db").exists()
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["workers"] == {"cpu": 1, "gpu": 0}
        data = onnx_mlp(seed=5)
        body = finished(http, submit(http, data, steps=[{"pass": "quantize.dynamic"}]))
        assert body["state"] == "succeeded", http.get(f"{body['id']}/logs").text
        blob = http.get(f"/v1/artifacts/{body['artifacts'][0]['id']}/download").content
        worker = up.worker()
        took = stop(up)
    assert len(blob) < 0.35 * len(data)
    x = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)
    assert np.allclose(run_onnx(data, {"x": x})[0], run_onnx(blob, {"x": x})[0], atol=0.1)
    assert not group_alive(worker), f"the worker outlived `tensorpress up` ({took:.1f} s to stop)"


def test_a_killed_worker_is_restarted_and_its_job_finishes(tmp_path):
    with running_up(tmp_path) as up, httpx.Client(base_url=up.url, timeout=60) as http:
        # Measured at four batch sizes (>= 1 s each, original and result): running for many seconds.
        url = submit(http, onnx_mlp(sizes=(64, 1024, 1024, 10)), steps=[{"pass": "quantize.dynamic"}],
                     target={"batch_sizes": [1, 8, 32, 64]})
        wait_for(lambda: http.get(url).json()["state"] == "running", 300, "the job to start")
        first = up.worker()
        os.kill(first, signal.SIGKILL)
        body = finished(http, url)
        assert body["state"] == "succeeded" and body["attempt"] == 2, http.get(f"{url}/logs").text
        assert "expired during attempt 1" in http.get(f"{url}/logs").text
        assert up.proc.poll() is None and up.worker() != first and not group_alive(first)
        assert "died (signal SIGKILL); restarting it in 1 s" in up.text()
        assert [w["id"].rsplit("-", 1)[1] for w in http.get("/v1/workers").json()["items"]] == ["2"]
        assert http.get("/readyz").status_code == 200


def test_stopping_up_kills_a_job_stuck_in_native_code_and_leaves_nothing(tmp_path):
    with running_up(tmp_path) as up, httpx.Client(base_url=up.url, timeout=60) as http:
        url = submit(http, onnx_endless_loop(), steps=[{"pass": "optimize.onnxruntime"}])
        wait_for(lambda: http.get(url).json()["state"] == "running", 300, "the job to start")
        worker = up.worker()
        took = stop(up)
    assert not group_alive(worker), "a process of the worker survived"
    assert "did not stop within 10 s; killing it and its jobs" in up.text(), up.text()[-3000:]
    assert "1 job(s) of worker" in up.text() and took < 60, took
    with sqlite3.connect(tmp_path / ".tensorpress" / "tensorpress.db") as db:
        state, expires = db.execute("SELECT state, lease_expires_at FROM jobs").fetchone()
    # Its lease is over: the next `up` takes it at once (an attempt counts: it did not stop when asked).
    assert state == "running" and datetime.fromisoformat(expires).replace(tzinfo=UTC) < datetime.now(UTC)


def test_up_refuses_a_public_address_without_auth(tmp_path):
    result = subprocess.run([tensorpress(), "up", "--host", "0.0.0.0", "--port", str(free_port())], cwd=tmp_path,
                            env=clean_env(), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "TENSORPRESS_AUTH" in result.stderr


def test_serve_with_required_auth_takes_keys_made_by_the_cli(tmp_path):
    env = {**clean_env(), "TENSORPRESS_AUTH": "required"}
    subprocess.run([tensorpress(), "db", "upgrade"], cwd=tmp_path, env=env, check=True, capture_output=True)
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([tensorpress(), "serve", "--host", "0.0.0.0", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, "tensorpress serve")
        assert httpx.get(f"{base}/v1/models").status_code == 401
        made = subprocess.run([tensorpress(), "keys", "create", "--tenant", "acme"], cwd=tmp_path, env=env,
                              check=True, capture_output=True, text=True)
        key = made.stdout.strip()
        assert "shown only now" in made.stderr and key.startswith("tp_")
        response = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200 and response.json()["items"] == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert "no API key exists yet" in (tmp_path / "serve.log").read_text()
