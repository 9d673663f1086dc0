"""``tensorpress up`` as a user runs it: a subprocess with the embedded defaults, driven over HTTP."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.factories import onnx_mlp, run_onnx
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
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    wait_for(ready, 60, what)


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


def test_up_runs_a_job_end_to_end_with_nothing_else_installed(tmp_path):
    port = free_port()
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    # The data dir defaults to ./.tensorpress in the current directory.
    proc = subprocess.Popen([tensorpress(), "up", "--port", str(port)], cwd=tmp_path, env=clean_env(),
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, "the API")
        assert proc.poll() is None, (tmp_path / "up.log").read_text()
        assert (tmp_path / ".tensorpress" / "tensorpress.db").exists()

        data = onnx_mlp(seed=5)
        with httpx.Client(base_url=base, timeout=30) as http:
            model = http.post("/v1/models", files={"file": ("net.onnx", data)}).json()
            job = http.post("/v1/jobs", json={"model_id": model["id"], "steps": [{"pass": "quantize.dynamic"}]})
            url = job.headers["location"]
            body = wait_for(lambda: (b := http.get(url).json())["state"] in ("succeeded", "failed") and b, 60,
                            "the job")
            assert body["state"] == "succeeded", http.get(f"{url}/logs").text
            artifact = body["artifacts"][0]
            blob = http.get(f"/v1/artifacts/{artifact['id']}/download").content
        assert len(blob) < 0.35 * len(data)
        x = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)
        assert np.allclose(run_onnx(data, {"x": x})[0], run_onnx(blob, {"x": x})[0], atol=0.1)
        workers = children_of(proc.pid)
        assert workers, "tensorpress up started no worker process"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}/status").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
                   for pid in workers), "the worker outlived `tensorpress up`"


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
