"""Server-sent events of a job, read over a real HTTP connection from a uvicorn server in this process."""

from __future__ import annotations

import json
import threading
import time

import httpx

from tests.workers.test_runner import run


def read_events(response: httpx.Response, on_first=None):
    """(event, data) pairs until the server closes the stream."""
    events, fields = [], {}
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if line:
            key, _, value = line.partition(": ")
            fields[key] = value
            continue
        events.append((fields["event"], json.loads(fields["data"])))
        fields = {}
        if on_first and len(events) == 1:
            on_first()
    return events


def test_a_running_job_streams_its_progress_and_ends_with_done(live_url, mlp_bytes):
    with httpx.Client(base_url=live_url, timeout=60) as http:
        model = http.post("/v1/models?name=mlp.onnx", content=mlp_bytes,
                          headers={"content-type": "application/octet-stream"}).json()
        job = {"model_id": model["id"], "steps": [{"pass": "quantize.dynamic"}]}
        job_id = http.post("/v1/jobs", json=job).json()["id"]
        worker = threading.Thread(target=run, args=(job_id,))
        with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            # The job starts only after the first event arrived: the stream is live, not replayed afterwards.
            events = read_events(response, on_first=worker.start)
        worker.join()
        kinds = [kind for kind, _ in events]
        assert events[0][0] == "state" and events[0][1]["state"] == "queued" and events[0][1]["attempt"] == 0
        assert ("state", "running") in [(k, d.get("state")) for k, d in events]
        assert [d["status"] for k, d in events if k == "step"][-1] == "succeeded"
        progress = [d["progress"] for k, d in events if k == "progress"]
        assert len(progress) >= 2 and progress == sorted(progress) and progress[-1] == 1.0
        metrics = [d for k, d in events if k == "metrics"]
        assert "original" in metrics[0] and "result" in metrics[-1]
        assert kinds[-1] == "done" and kinds.count("done") == 1
        assert events[-1][1]["state"] == "succeeded" and events[-1][1]["artifacts"]

        # Connecting to a finished job: its final state and done at once.
        started = time.monotonic()
        with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            replay = read_events(response)
        assert time.monotonic() - started < 5
        assert replay[0] == ("state", {"state": "succeeded", "attempt": 1, "waiting_reason": None,
                                       "current_step": None})
        assert replay[-1][0] == "done" and replay[-1][1] == events[-1][1]

        missing = http.get(f"/v1/jobs/{'0' * 32}/events")
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
