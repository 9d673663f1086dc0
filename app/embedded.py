"""``tensorpress up``: the API and one CPU worker on this machine, kept whole.

The API (uvicorn) runs in a thread; the main thread owns the signals and supervises the worker process:

- The worker runs in its own process group, so that it and every job process it forks can be killed together.
- A worker that dies is reaped with its group, the jobs it held get their leases expired (the next worker's
  recovery takes them at once instead of after a lease), and it is restarted after a backoff (1, 2, 4 … s).
  Each restart is logged. More than ``max_restarts`` deaths within ``window_s`` and ``up`` gives up: it stops
  the API and exits non-zero with the reason.
- SIGTERM or SIGINT: the API stops taking requests, the worker gets SIGTERM (its jobs hand themselves back to
  the queue at their next check); whatever is still alive ``grace_s`` later is killed, its jobs' leases are
  expired, and ``up`` exits. No process is left behind.
- One line says when the API and the worker are both ready, with the URL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.core.db import session_scope
from app.core.processes import group_alive
from app.jobs import repository as jobs
from app.worker_registry import repository as worker_registry

log = logging.getLogger("tensorpress.up")
GAVE_UP = 1


@dataclass
class Supervisor:
    """Keeps one worker process alive. ``argv(name)`` is the command of a worker whose Celery node is ``name``;
    ``check()`` is called often from one thread, and says why it gave up (else None)."""

    argv: Callable[[str], list[str]]
    name: str
    max_restarts: int = 5
    window_s: float = 60.0
    grace_s: float = 10.0
    backoff_s: float = 1.0
    preexec: Callable[[], None] | None = None
    proc: subprocess.Popen | None = None
    node: str = ""
    deaths: list[float] = field(default_factory=list)
    restart_at: float | None = None
    generation: int = 0

    def start(self) -> None:
        self.generation += 1
        self.node = f"{self.name}-{self.generation}"
        self.proc = subprocess.Popen(self.argv(self.node), start_new_session=True, preexec_fn=self.preexec)
        self.restart_at = None
        log.info("worker %s started (pid %d)", self.node, self.proc.pid)

    def check(self) -> str | None:
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
            return None
        code = self.proc.poll()
        if code is None:
            return None
        self._reap()
        self.deaths = [t for t in self.deaths if now - t < self.window_s] + [now]
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        if len(self.deaths) > self.max_restarts:
            return (f"the worker died {len(self.deaths)} times within {self.window_s:.0f} s (last: {how}); "
                    "not restarting it")
        delay = min(self.backoff_s * 2 ** (len(self.deaths) - 1), 30)
        log.warning("worker %s died (%s); restarting it in %.0f s (restart %d of at most %d within %.0f s)",
                    self.node, how, delay, len(self.deaths), self.max_restarts, self.window_s)
        self.restart_at = now + delay
        return None

    def ready(self) -> bool:
        """Whether the current worker has announced itself (its first heartbeat is in the database)."""
        if self.restart_at is not None or self.proc is None or self.proc.poll() is not None:
            return False
        with session_scope() as session:
            return worker_registry.get(session, self.node) is not None

    def stop(self) -> None:
        """SIGTERM (a warm shutdown: jobs hand themselves back), then kill what is left after ``grace_s``."""
        if self.proc is None or self.restart_at is not None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop within %.0f s; killing it and its jobs", self.node,
                            self.grace_s)
        self._reap()

    def _reap(self) -> None:
        """Kill what is left of the worker's process group (job processes orphaned by its death), wait until
        none of it runs, and release what it held: its jobs' leases and its registry entry."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and group_alive(self.proc.pid):
            time.sleep(0.05)
        try:
            with session_scope() as session:
                held = jobs.expire_leases(session, self.node)
                worker_registry.remove(session, self.node)
            if held:
                log.warning("%d job(s) of worker %s go back to the queue", held, self.node)
        except Exception:  # the database is away: the leases expire by themselves
            log.exception("could not release the jobs of worker %s", self.node)


def run(server, supervisor: Supervisor, url: str, announce: Callable[[str], None] = print) -> int:
    """Serve until SIGTERM/SIGINT (exit 0), or until the worker cannot be kept alive or the API stops (1)."""
    stopping = threading.Event()

    def on_signal(signum, _frame) -> None:
        if stopping.is_set():
            server.force_exit = True
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    api = threading.Thread(target=server.run, name="tensorpress-api", daemon=True)
    api.start()
    supervisor.start()
    reason, announced = None, False
    try:
        while not stopping.wait(0.2):
            if not api.is_alive():
                reason = "the API stopped" if server.started else "the API could not start (see above)"
                break
            reason = supervisor.check()
            if reason:
                break
            if not announced and server.started and supervisor.ready():
                announce(f"TensorPress is ready on {url} (API and worker {supervisor.node})")
                announced = True
    finally:
        server.should_exit = True
        supervisor.stop()
        api.join(timeout=15)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if reason:
        log.error("tensorpress up is stopping: %s", reason)
        return GAVE_UP
    return 0
