"""The Python client of a TensorPress server, on httpx (synchronous).

    from tensorpress import Client
    client = Client()                      # TENSORPRESS_URL (http://127.0.0.1:8000), TENSORPRESS_API_KEY
    model = client.upload_model("net.onnx")
    job = client.submit_job(model.id, preset="cpu-int8", datasets={"calibration": client.upload_dataset("c.npz").id})
    job = client.wait(job.id)              # server-sent events; polling with backoff if the stream breaks
    path = client.download_artifact(job.result_artifact_id, "net.int8.onnx")  # resumable, sha256 verified

Uploads stream from disk with a progress callback and an ``Idempotency-Key``, so a retried upload or submission
never makes a second model or job. Errors are :class:`ApiError` built from the server's problem+json answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

Progress = Callable[[int, int | None], None]  # (bytes done, total or None)
FINISHED = ("succeeded", "failed", "cancelled")
CHUNK = 1 << 20


class ApiError(Exception):
    """A problem+json answer (or a transport failure, status 0)."""

    def __init__(self, status: int, title: str, detail: str, type_: str = "about:blank",
                 errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status, self.title, self.detail, self.type = status, title, detail, type_
        self.errors = errors or []
        self.headers = headers or {}

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        return cls(response.status_code, body.get("title", response.reason_phrase),
                   body.get("detail", response.text[:500]), body.get("type", "about:blank"), body.get("errors"),
                   dict(response.headers))


@dataclass(frozen=True)
class Model:
    id: str
    name: str
    format: str
    size_bytes: int
    sha256: str
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Model:
        return cls(raw["id"], raw["name"], raw["format"], raw["size_bytes"], raw["sha256"], raw)


@dataclass(frozen=True)
class Dataset:
    id: str
    name: str
    samples: int
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Dataset:
        return cls(raw["id"], raw["name"], raw["samples"], raw)


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    progress: float
    regressed: bool
    regressions: list[str]
    metrics: dict[str, Any]
    artifacts: list[dict[str, Any]]
    error: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Job:
        return cls(raw["id"], raw["state"], raw["progress"], raw["regressed"], raw["regressions"], raw["metrics"],
                   raw["artifacts"], raw["error"], raw)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def result_artifact_id(self) -> str | None:
        """The artifact of the job's result: a goal's chosen candidate, else the last step's."""
        chosen = (self.metrics.get("goal") or {}).get("artifact_id")
        return chosen or (max(self.artifacts, key=lambda a: a["step"])["id"] if self.artifacts else None)


class Client:
    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = (url or os.environ.get("TENSORPRESS_URL") or "http://127.0.0.1:8000").rstrip("/")
        key = api_key or os.environ.get("TENSORPRESS_API_KEY")
        self.http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                 headers={"Authorization": f"Bearer {key}"} if key else {})

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, "Unreachable", f"{self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response

    def _upload(self, path: str, file: Path, params: dict[str, str], progress: Progress | None) -> dict[str, Any]:
        total = file.stat().st_size

        def body() -> Iterator[bytes]:
            done = 0
            with open(file, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    done += len(chunk)
                    if progress:
                        progress(done, total)
                    yield chunk

        headers = {"content-type": "application/octet-stream", "content-length": str(total),
                   "idempotency-key": f"upload-{uuid.uuid4()}"}
        return self._request("POST", path, params=params, content=body(), headers=headers).json()

    # --- resources -----------------------------------------------------------------------------------
    def upload_model(self, file: str | Path, name: str | None = None, inputs: list[dict[str, Any]] | None = None,
                     progress: Progress | None = None) -> Model:
        """Stream a model file (ONNX, ONNX zip, TorchScript with ``inputs``, .pt2) and return its record."""
        file = Path(file)
        params = {"name": name or file.name, **({"inputs": json.dumps(inputs)} if inputs else {})}
        return Model.of(self._upload("/v1/models", file, params, progress))

    def upload_dataset(self, file: str | Path, name: str | None = None, progress: Progress | None = None) -> Dataset:
        file = Path(file)
        return Dataset.of(self._upload("/v1/datasets", file, {"name": name or file.name}, progress))

    def submit_job(self, model_id: str | None = None, *, artifact_id: str | None = None,
                   steps: list[dict[str, Any]] | None = None, preset: str | None = None,
                   goal: dict[str, Any] | None = None, datasets: dict[str, str] | None = None,
                   target: dict[str, Any] | None = None, evaluation: dict[str, Any] | None = None,
                   idempotency_key: str | None = None, **extra: Any) -> Job:
        """Submit a job (exactly one of steps, preset or goal); retried submissions with the same
        ``idempotency_key`` (one is made up when not given) answer the same job."""
        payload = {k: v for k, v in {"model_id": model_id, "artifact_id": artifact_id, "steps": steps,
                                     "preset": preset, "goal": goal, "datasets": datasets, "target": target,
                                     "evaluation": evaluation, **extra}.items() if v is not None}
        headers = {"idempotency-key": idempotency_key or f"job-{uuid.uuid4()}"}
        return Job.of(self._request("POST", "/v1/jobs", json=payload, headers=headers).json())

    def job(self, job_id: str) -> Job:
        return Job.of(self._request("GET", f"/v1/jobs/{job_id}").json())

    def jobs(self, state: str | None = None, limit: int = 50) -> list[Job]:
        params = {"limit": limit, **({"state": state} if state else {})}
        return [Job.of(j) for j in self._request("GET", "/v1/jobs", params=params).json()["items"]]

    def cancel(self, job_id: str) -> Job:
        return Job.of(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def logs(self, job_id: str) -> str:
        return self._request("GET", f"/v1/jobs/{job_id}/logs").text

    def report(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}/report", params={"format": "json"}).json()

    def wait(self, job_id: str, timeout: float | None = None,
             on_event: Callable[[str, dict[str, Any]], None] | None = None) -> Job:
        """Follow the job until it finishes: its event stream, or polling (backing off to 5 s) when the
        stream is not available or breaks. ``on_event(kind, data)`` sees each event (or each polled job)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            done = self._follow_events(job_id, deadline, on_event)
            if done is not None:
                return done
        except (httpx.HTTPError, ApiError, ValueError):
            pass  # fall back to polling
        delay = 0.5
        while True:
            job = self.job(job_id)
            if on_event:
                on_event("job", job.raw)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() + delay > deadline:
                raise TimeoutError(f"job {job_id} is still {job.state}")
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)

    def _follow_events(self, job_id: str, deadline: float | None, on_event) -> Job | None:
        timeout = httpx.Timeout(10.0, read=None if deadline is None else max(1.0, deadline - time.monotonic()))
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError.from_response(response)
            kind, data = None, []
            for line in response.iter_lines():
                if line.startswith("event:"):
                    kind = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    data.append(line.removeprefix("data:").strip())
                elif not line and kind:
                    payload = json.loads("\n".join(data)) if data else {}
                    if on_event:
                        on_event(kind, payload)
                    if kind == "done":
                        return Job.of(payload)
                    kind, data = None, []
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} did not finish in time")
        return None

    def download_artifact(self, artifact_id: str, path: str | Path | None = None,
                          progress: Progress | None = None) -> Path:
        """Download an artifact to ``path`` (default: its file name in the current directory), resuming a
        partial ``<path>.part`` with a Range request, and verify its sha256 before moving it into place."""
        meta = self._request("GET", f"/v1/artifacts/{artifact_id}").json()
        target = Path(path or meta["filename"])
        if target.is_dir():
            target = target / meta["filename"]
        partial = target.with_name(target.name + ".part")
        have = partial.stat().st_size if partial.exists() else 0
        if have > meta["size_bytes"]:
            partial.unlink()
            have = 0
        if have < meta["size_bytes"] or not partial.exists():
            self._fetch(artifact_id, partial, have, meta["size_bytes"], f'"{meta["sha256"]}"', progress)
        digest = hashlib.sha256()
        with open(partial, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != meta["sha256"]:
            partial.unlink()
            raise ApiError(0, "Corrupt download", f"artifact {artifact_id}: sha256 {digest.hexdigest()} is not "
                           f"the recorded {meta['sha256']}; the partial file was removed, download again")
        partial.replace(target)
        return target

    def _fetch(self, artifact_id: str, partial: Path, have: int, size: int, etag: str,
               progress: Progress | None) -> None:
        """Append the missing bytes to ``partial`` (all of them if the server ignores the range)."""
        headers = {"Range": f"bytes={have}-", "If-Range": etag} if have else {}
        with self.http.stream("GET", f"/v1/artifacts/{artifact_id}/download", headers=headers,
                              timeout=httpx.Timeout(60.0, read=600.0)) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError.from_response(response)
            mode = "ab" if response.status_code == 206 else "wb"
            done = have if mode == "ab" else 0
            with open(partial, mode) as fh:
                for chunk in response.iter_bytes(CHUNK):
                    fh.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, size)
