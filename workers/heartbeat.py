"""Every worker describes itself in the database every ``heartbeat_s``: queues, device, the passes whose
libraries it has, library versions. ``GET /v1/workers`` lists the live ones; routing and
``waiting_reason`` read them. Nothing here initialises CUDA (GPUs are listed with ``nvidia-smi``)."""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import subprocess
import threading
from typing import Any

from app.core.confinement import probe
from app.core.db import session_scope
from app.core.settings import get_settings
from app.worker_registry import repository
from workers.measure import machine
from workers.passes import REGISTRY

log = logging.getLogger(__name__)
LIBRARIES = ("tensorpress", "torch", "onnx", "onnxruntime", "openvino", "nncf", "tensorrt", "celery")


def gpus() -> list[str]:
    """GPU models visible to this process, without touching CUDA (safe before forking)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def versions() -> dict[str, str]:
    """Installed versions of TensorPress and the libraries its passes use (absent ones left out)."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def describe(queues: list[str]) -> dict[str, Any]:
    passes = sorted(n for n, spec in REGISTRY.items() if spec.queue in queues and spec.unavailable_reason() is None)
    return {"queues": queues, "device": {**machine(), "gpus": gpus()}, "passes": passes, "versions": versions(),
            "confinement": probe().describe()}


def start(worker_id: str, queues: list[str]) -> threading.Event:
    """Beat now and every ``heartbeat_s`` in a daemon thread; set the returned event to stop."""
    stop = threading.Event()
    description = describe(queues)
    log.info("worker %s: job processes confined by %s", worker_id, description["confinement"]["mechanism"])
    interval = get_settings().heartbeat_s

    def beat() -> None:
        with session_scope() as session:
            repository.beat(session, worker_id, **description)

    beat()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                beat()
            except Exception:
                log.exception("heartbeat failed")

    threading.Thread(target=loop, name="tensorpress-heartbeat", daemon=True).start()
    return stop


def remove(worker_id: str) -> None:
    with session_scope() as session:
        repository.remove(session, worker_id)
