"""Start `tensorpress serve` or `up` in a scratch directory for a benchmark, and stop it afterwards."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def service(command: str, work_dir: Path, settings: dict[str, str] | None = None
            ) -> Iterator[tuple[str, subprocess.Popen]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORPRESS_")}
    env["TENSORPRESS_DATA_DIR"] = str(work_dir / "data")
    env.update(settings or {})
    exe = str(Path(sys.executable).parent / "tensorpress")
    if command == "serve":
        subprocess.run([exe, "db", "upgrade"], env=env, check=True, capture_output=True)
    log = open(work_dir / f"{command}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([exe, command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def upload(http: httpx.Client, path: str, body) -> str:
    """POST a model or dataset body; its id (the benchmark stops if the service refused it)."""
    response = http.post(path, content=body, headers={"content-type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")
