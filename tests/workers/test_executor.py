"""The confined job process and its trusted parent: a child stuck in native code is killed when the job is
cancelled or past its time limit; what the child names is read only if it is a file it made; user programs are
refused where this kernel cannot confine them."""

from __future__ import annotations

import os
import threading
import time

import pytest

from tests.app.test_jobs_api import submit
from tests.app.test_models_api import OCTET
from tests.factories import onnx_endless_loop
from tests.integration.test_distributed import wait_for
from tests.workers.test_runner import run

SQLITE = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)


def endless_job(client, **extra) -> str:
    model = client.post("/v1/models?name=loop.onnx", content=onnx_endless_loop(), headers=OCTET).json()
    return client.post("/v1/jobs", json={"model_id": model["id"], "steps": [{"pass": "optimize.onnxruntime"}],
                                         **extra}).json()["id"]


@SQLITE
def test_cancelling_a_job_stuck_in_native_code_kills_its_process(client):
    job_id = endless_job(client)
    worker = threading.Thread(target=run, args=(job_id,))
    worker.start()
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["state"] == "running", 300, "the job to start")
    wait_for(lambda: "attempt 1 started" in client.get(f"/v1/jobs/{job_id}/logs").text, 300, "the attempt")
    asked = time.monotonic()
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    worker.join(timeout=300)
    assert not worker.is_alive(), "the runner did not stop"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "cancelled" and time.monotonic() - asked < 120  # the grace is 10 s
    assert job["attempt"] == 1


@SQLITE
def test_a_job_stuck_in_native_code_fails_at_its_time_limit(client):
    job_id = endless_job(client, time_limit_s=5)
    started = time.monotonic()
    run(job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "failed" and job["error"]["detail"] == "the job ran past its time limit of 5 s"
    assert job["attempt"] == 1 and job["error"]["exception"] == "TimeLimitExceeded"
    assert time.monotonic() - started < 120


@SQLITE
def test_user_programs_are_refused_where_the_kernel_cannot_confine_them(client, torchscript, monkeypatch):
    from app.core.confinement import Support
    from app.core.settings import get_settings
    from tests.factories import CNN_INPUTS

    model = client.post(f"/v1/models?name=cnn.pt&inputs={CNN_INPUTS}", content=torchscript, headers=OCTET).json()
    monkeypatch.setattr("workers.runner.probe", lambda: Support(landlock_abi=0, seccomp=False))
    job_id = submit(client, model["id"], [{"pass": "export.onnx"}]).json()["id"]
    run(job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "failed" and "cannot confine user programs" in job["error"]["detail"]
    assert "TENSORPRESS_ALLOW_UNCONFINED" in job["error"]["detail"]

    monkeypatch.setenv("TENSORPRESS_ALLOW_UNCONFINED", "true")  # the operator's explicit choice
    get_settings.cache_clear()
    job_id = submit(client, model["id"], [{"pass": "export.onnx"}]).json()["id"]
    run(job_id)
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"


def test_the_inspector_refuses_programs_it_cannot_confine(tmp_path, torchscript):
    from app.core.archives import ArchiveLimits
    from workers.formats import FormatRefused
    from workers.inspection import inspect

    path = tmp_path / "cnn.pt"
    path.write_bytes(torchscript)
    declared = [{"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    with pytest.raises(FormatRefused, match="cannot confine user programs"):
        inspect(path, ArchiveLimits(), declared, programs=False)
    assert inspect(path, ArchiveLimits(), declared, programs=True)["format"] == "torchscript"


def test_what_the_child_names_is_read_only_if_it_made_it(tmp_path):
    from workers.executor import open_inside

    work = tmp_path / "work"
    (work / "step").mkdir(parents=True)
    (work / "step" / "model.onnx").write_bytes(b"made here")
    secret = tmp_path / "tensorpress.db"
    secret.write_bytes(b"secret")
    (work / "step" / "link.onnx").symlink_to(secret)
    (work / "linked-dir").symlink_to(tmp_path)
    fd = open_inside(work, work / "step" / "model.onnx")
    assert os.read(fd, 100) == b"made here"
    os.close(fd)
    for named in (work / "step" / "link.onnx", work / "linked-dir" / "tensorpress.db", secret,
                  work / "step" / ".." / ".." / "tensorpress.db", work / "step"):
        with pytest.raises((OSError, ValueError)):
            os.close(open_inside(work, named))
