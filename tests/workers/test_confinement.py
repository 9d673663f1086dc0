"""A job's process (a forked Celery child) is confined before it runs anything of the user's."""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil

import pytest


def _confined(report) -> None:
    from workers.celery_app import confine_job_process

    confine_job_process()
    report.put({"cpu": resource.getrlimit(resource.RLIMIT_CPU), "as": resource.getrlimit(resource.RLIMIT_AS),
                "core": resource.getrlimit(resource.RLIMIT_CORE), "nice": os.nice(0),
                "env": sorted(n for n in os.environ if n.startswith("TENSORPRESS_"))})


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_a_job_process_gets_cpu_memory_limits_and_loses_the_services_settings(env, monkeypatch):
    from app.core.settings import get_settings

    monkeypatch.setenv("TENSORPRESS_JOB_MEMORY_BYTES", str(6 << 30))
    monkeypatch.setenv("TENSORPRESS_JOB_TIME_LIMIT_S", "100")
    get_settings.cache_clear()
    monkeypatch.setenv("TENSORPRESS_JOB_NICE", "7")
    get_settings()  # the worker's parent has read its settings before it forks
    context = multiprocessing.get_context("fork")
    report = context.Queue()
    child = context.Process(target=_confined, args=(report,))
    child.start()
    limits = report.get(timeout=60)
    child.join(timeout=30)
    cores = os.cpu_count()
    assert limits["cpu"] == (100 * cores, 100 * cores + 60) and limits["core"] == (0, 0)
    assert limits["nice"] == os.nice(0) + 7  # below the API's priority
    assert limits["env"] == []  # database URL and the rest are gone from the environment
    if shutil.which("nvidia-smi") is None:
        assert limits["as"] == (6 << 30, 6 << 30)
    else:  # CUDA reserves far more address space than it uses: no address-space limit on GPU machines
        assert limits["as"][0] == resource.RLIM_INFINITY
    assert os.environ["TENSORPRESS_JOB_MEMORY_BYTES"]  # the parent keeps its own
