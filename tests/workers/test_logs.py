"""Structured process logs: JSON lines that carry the job id while a job runs."""

from __future__ import annotations

import json
import logging

import pytest

from tests.app.test_jobs_api import submit
from tests.workers.test_runner import run


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_json_logs_carry_the_job_id(client, uploaded_model, capsys, monkeypatch):
    from app.core.logs import configure_logging
    from app.core.settings import get_settings

    monkeypatch.setenv("TENSORPRESS_LOG_FORMAT", "json")
    get_settings.cache_clear()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging()
        job_id = submit(client, uploaded_model["id"]).json()["id"]
        logging.getLogger("outside").info("not in a job")
        run(job_id)
    finally:
        root.handlers[:], root.level = saved
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    in_job = [line for line in lines if line.get("job_id") == job_id]
    assert any(line["message"].startswith("step 0 quantize.dynamic succeeded") for line in in_job)
    assert {"time", "level", "logger", "message"} <= set(in_job[0])
    assert next(line for line in lines if line["message"] == "not in a job").get("job_id") is None
