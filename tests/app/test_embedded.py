"""The supervisor of ``tensorpress up`` with stand-in worker processes: restarts with backoff, gives up with the
reason, reaps what a dead worker leaves behind, releases the jobs it held. (``tests/test_cli_up.py`` does the
same with the real service.)"""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from app.core.processes import group_alive
from app.embedded import Supervisor
from tests.integration.test_distributed import wait_for


def checked(supervisor: Supervisor, until, what: str, timeout: float = 60):
    """Call ``check()`` as ``up``'s loop does until ``until()`` holds; returns the last reason (None if none)."""
    reason = None

    def done():
        nonlocal reason
        reason = supervisor.check() or reason
        return until() or reason

    wait_for(done, timeout, what, interval=0.02)
    return reason


def test_a_worker_that_keeps_dying_is_restarted_with_backoff_then_given_up(env, caplog):
    supervisor = Supervisor(lambda node: [sys.executable, "-c", "raise SystemExit(3)"], "stand-in@host",
                            max_restarts=2, window_s=600, backoff_s=0.05)
    supervisor.start()
    reason = checked(supervisor, lambda: False, "the supervisor to give up")
    assert reason == "the worker died 3 times within 600 s (last: exit code 3); not restarting it"
    assert supervisor.generation == 3
    restarts = [r.getMessage() for r in caplog.records if "restarting it" in r.getMessage()]
    assert len(restarts) == 2 and "restart 1 of at most 2" in restarts[0] and "(exit code 3)" in restarts[0]


def test_a_killed_worker_is_reaped_with_its_job_processes_and_its_jobs_released(env, tmp_path):
    from app.core.db import session_scope
    from app.models import Job, Model
    from app.models.base import utcnow

    child_pid = tmp_path / "child.pid"
    # The stand-in forks a "job process" (same process group) that would outlive it, as a Celery pool child does.
    script = (f"import os, time\nif os.fork() == 0:\n    open({str(child_pid)!r}, 'w').write(str(os.getpid()))\n"
              "    time.sleep(600)\ntime.sleep(600)\n")
    supervisor = Supervisor(lambda node: [sys.executable, "-c", script], "stand-in@host", backoff_s=0.05)
    supervisor.start()
    first = supervisor.node
    wait_for(lambda: child_pid.exists() and child_pid.read_text(), 60, "the stand-in's job process")
    orphan = int(child_pid.read_text())
    with session_scope() as session:
        session.add(Model(id="m1", tenant="local", name="m", format="onnx", size_bytes=1, sha256="0" * 64,
                          storage_key="models/m1", inputs=[], outputs=[], parameters=0))
        session.add(Job(id="j1", tenant="local", model_id="m1", steps=[], state="running", queue="cpu",
                        lease_owner=f"{first}:123:task", lease_token=1,
                        lease_expires_at=utcnow() + timedelta(minutes=10)))
    os.kill(supervisor.proc.pid, signal.SIGKILL)
    checked(supervisor, lambda: supervisor.generation == 2, "the restart")
    assert not Path(f"/proc/{orphan}").exists() or "Z" in Path(f"/proc/{orphan}/stat").read_text().split(")")[1][:3]
    with session_scope() as session:
        assert session.get(Job, "j1").lease_expires_at < utcnow()  # recovery takes it at once
    second = supervisor.proc.pid
    supervisor.stop()
    assert not group_alive(second)


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_stop_kills_a_worker_that_ignores_sigterm_after_the_grace(env, tmp_path):
    ready = tmp_path / "ready"
    script = (f"import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nopen({str(ready)!r}, 'w')\n"
              "time.sleep(600)\n")
    supervisor = Supervisor(lambda node: [sys.executable, "-c", script], "stand-in@host", grace_s=1)
    supervisor.start()
    wait_for(ready.exists, 60, "the stand-in to ignore SIGTERM")
    started = time.monotonic()
    supervisor.stop()
    assert supervisor.proc.returncode == -signal.SIGKILL
    assert not group_alive(supervisor.proc.pid) and time.monotonic() - started < 30
