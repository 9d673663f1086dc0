"""The trusted side of a job's confined process (:mod:`workers.confined`).

A job's folder has three parts. ``inputs/`` is written by this side only (the extracted model, evaluation
inputs, the cancel flag) and read by the child; ``work/`` is the child's, and this side reads from it only through
:func:`open_inside` (no link followed, nothing outside); ``results/`` holds this side's copies of what the child
made, out of its reach. Whatever the child answers is data, checked here: JSON, paths inside ``work/``.

Cancellation, a job's time limit and a worker's shutdown reach the child as the cancel flag; a child that has
not stopped ``grace_s`` later is killed (it may be stuck in native code), and a new one is started for whatever
the job still asks.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.core.processes import die_with_parent
from workers.passes import Cancelled, PassResult
from workers.zygote import Forked, zygote

log = logging.getLogger(__name__)
MAX_LINE = 16 << 20
CANCEL = ".cancel"
PASSED_ENV = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "LD_LIBRARY_PATH")


class ConfinedFailure(Exception):
    """The confined process failed (``kind`` names its exception) or died; ``trace`` is its traceback."""

    def __init__(self, kind: str, message: str, trace: str = "") -> None:
        super().__init__(message)
        self.kind, self.trace = kind, trace


def open_inside(root: Path, path: str | Path) -> int:
    """A read-only descriptor of the regular file ``path`` beneath ``root``, every component opened without
    following links, so that what the child named cannot be swapped for something outside."""
    relative = Path(os.path.abspath(path)).relative_to(root)  # ValueError when outside
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in relative.parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        found = os.open(relative.parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(found).st_mode):
        os.close(found)
        raise ValueError(f"{path} is not a regular file")
    return found


class Executor:
    """Runs a job's passes and measurements in a confined child. ``check()`` is polled while the child works:
    True asks it to stop (cancellation), an exception does too and is raised once it stopped (time limit,
    hand-back, lost lease)."""

    inline = False  # tests that register a pass in their own process set it: no child, no confinement
    zygote = False  # fork children from a preloaded process (workers.zygote): for processes that run many jobs

    def __init__(self, root: Path, readable: list[Path], check: Callable[[], bool], grace_s: float = 10.0,
                 poll_s: float = 0.1) -> None:
        self.root, self.check, self.grace_s, self.poll_s = root, check, grace_s, poll_s
        self.inputs, self.work, self.results = (root / name for name in ("inputs", "work", "results"))
        for folder in (self.inputs, self.work / "tmp", self.results):
            folder.mkdir(parents=True, exist_ok=True)
        self.readable = [str(p) for p in readable] + [str(self.inputs)]
        self.proc: subprocess.Popen | None = None
        self._feeds: tuple[int, Path] | None = None
        self._count = 0

    # --- the two operations ------------------------------------------------------------------------------
    def measure(self, path: Path, fmt: str, specs: list, target: dict, *, threads: int, timing: dict,
                eval_feeds: dict[str, np.ndarray], labels: np.ndarray | None,
                dim_defaults: dict) -> tuple[dict, list[np.ndarray]]:
        outputs = self._name("outputs", ".npz")
        answer = self._call({"op": "measure", "path": str(path), "fmt": fmt, "specs": specs, "target": target,
                             "threads": threads, "timing": timing, "feeds": str(self._feeds_file(eval_feeds, labels)),
                             "dim_defaults": dim_defaults, "outputs": str(outputs)})
        fd = open_inside(self.work, outputs)
        with os.fdopen(fd, "rb") as f, np.load(f, allow_pickle=False) as data:
            arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
        if not isinstance(answer.get("metrics"), dict):
            raise ConfinedFailure("ProtocolError", "the job process answered a measurement without metrics")
        return answer["metrics"], arrays

    def run_pass(self, label: str, name: str, params: dict, ctx: dict, progress: Callable[[float], None],
                 log_line: Callable[[str], None]) -> tuple[PassResult, Path]:
        """Run pass ``name`` in ``work/<label>``: its result (the model's path in ``work/``, for the next step)
        and this side's copy of the model (in ``results/``, to store)."""
        ctx = {**ctx, "work_dir": str(self._name(label, ""))}
        answer = self._call({"op": "pass", "name": name, "params": params, "ctx": ctx},
                            progress=progress, log_line=log_line)
        if not (isinstance(answer.get("model_path"), str) and isinstance(answer.get("format"), str)
                and isinstance(answer.get("metrics"), dict) and isinstance(answer.get("metadata"), dict)):
            raise ConfinedFailure("ProtocolError", "the job process answered a pass without its result")
        try:
            fd = open_inside(self.work, answer["model_path"])
        except (OSError, ValueError) as exc:
            raise ConfinedFailure("ProtocolError", f"the pass's output is not a file it made: {exc}") from exc
        copy = self._name("result", Path(answer["model_path"]).suffix, folder=self.results)
        with os.fdopen(fd, "rb") as src, open(copy, "xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        result = PassResult(Path(answer["model_path"]), answer["format"], answer["metrics"], answer["metadata"])
        return result, copy

    def close(self) -> None:
        if self.proc is not None:
            self._kill()

    # --- plumbing ----------------------------------------------------------------------------------------
    def _name(self, stem: str, suffix: str, folder: Path | None = None) -> Path:
        self._count += 1
        return (folder or self.work) / f"{stem}-{self._count}{suffix}"

    def _feeds_file(self, feeds: dict[str, np.ndarray], labels: np.ndarray | None) -> Path:
        if self._feeds is None or self._feeds[0] != id(feeds):
            path = self._name("feeds", ".npz", folder=self.inputs)
            np.savez(path, **feeds, **({"__labels__": labels} if labels is not None else {}))
            self._feeds = (id(feeds), path)
        return self._feeds[1]

    def _start(self) -> subprocess.Popen:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.work), "TMPDIR": str(self.work / "tmp"),
               "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1", "TORCHINDUCTOR_CACHE_DIR": str(self.work / "inductor"),
               **{k: os.environ[k] for k in PASSED_ENV if k in os.environ}}
        args = [str(self.work), json.dumps(self.readable), str(self.inputs / CANCEL)]
        if self.zygote:
            self.proc = zygote().fork(args, env, self.work)
        else:
            self.proc = subprocess.Popen([sys.executable, "-I", "-m", "workers.confined", *args],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
                                         cwd=self.work, preexec_fn=die_with_parent(signal.SIGKILL))
        os.set_blocking(self.proc.stdout.fileno(), False)
        return self.proc

    def _kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def _call(self, request: dict, progress: Callable[[float], None] = lambda f: None,
              log_line: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
        if self.inline:
            return self._inline(request, progress, log_line)
        try:
            return self._exchange(request, progress, log_line)
        finally:
            (self.inputs / CANCEL).unlink(missing_ok=True)

    def _inline(self, request: dict, progress, log_line) -> dict[str, Any]:
        """Tests only: the same request handled in this process, unconfined (a pass the test registered here)."""
        from workers.confined import handle

        answers = []
        handle(request, self.check, lambda event, **fields: answers.append(
            self._event(json.loads(json.dumps({"event": event, **fields})), progress, log_line)))
        return next(a for a in answers if a is not None)

    def _exchange(self, request: dict, progress: Callable[[float], None],
                  log_line: Callable[[str], None]) -> dict[str, Any]:
        proc = self.proc if self.proc is not None and self.proc.poll() is None else self._start()
        proc.stdin.write((json.dumps(request) + "\n").encode())
        proc.stdin.flush()
        buffer, stopping, pending, checked = b"", None, None, time.monotonic()
        while True:
            readable, _, _ = select.select([proc.stdout], [], [], self.poll_s)
            if readable:
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    self._died(pending)
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    try:
                        answer = self._event(self._parse(line), progress, log_line)
                    except Cancelled:
                        if pending is not None:
                            raise pending from None
                        raise
                    if answer is not None:
                        if pending is not None:
                            raise pending
                        return answer
                if len(buffer) > MAX_LINE:
                    self._kill()
                    raise ConfinedFailure("ProtocolError", "the job process wrote a line without end")
                if time.monotonic() - checked < self.poll_s:
                    continue
            checked = time.monotonic()  # at most every poll_s, however chatty the child is
            if stopping is None:
                try:
                    asked = self.check()
                except Exception as exc:  # time limit, hand-back, lost lease: stop the child, then raise it
                    pending, asked = exc, True
                if asked:
                    (self.inputs / CANCEL).touch()
                    stopping = time.monotonic()
            elif time.monotonic() - stopping > self.grace_s:
                log.warning("the job process did not stop %.0f s after it was asked to; killing it", self.grace_s)
                self._kill()
                raise pending or Cancelled("cancellation requested; the job process was killed")

    def _parse(self, line: bytes) -> dict[str, Any]:
        try:
            event = json.loads(line)
            if isinstance(event, dict) and isinstance(event.get("event"), str):
                return event
        except ValueError:
            pass
        self._kill()
        raise ConfinedFailure("ProtocolError", "the job process wrote something that is not its protocol")

    def _event(self, event: dict[str, Any], progress, log_line) -> dict[str, Any] | None:
        kind = event["event"]
        if kind == "progress" and isinstance(event.get("fraction"), int | float):
            progress(float(event["fraction"]))
        elif kind == "log":
            log_line(str(event.get("message", ""))[:10_000])
        elif kind == "result":
            return event
        elif kind == "error":
            if event.get("kind") == "cancelled":
                raise Cancelled(str(event.get("message", "")))
            raise ConfinedFailure(str(event.get("kind")), str(event.get("message", ""))[:10_000],
                                  str(event.get("trace", ""))[:100_000])
        return None

    def _died(self, pending: Exception | None) -> None:
        code = self.proc.wait()
        self.proc = None
        if pending is not None:
            raise pending
        how = ("an unknown cause" if code == Forked.UNKNOWN else f"signal {signal.Signals(-code).name}" if code < 0
               else f"exit code {code}")
        hint = " (its CPU-time limit)" if code == -signal.SIGXCPU else \
            " (out of memory?)" if code == -signal.SIGKILL else ""
        raise ConfinedFailure("Died", f"the job process died with {how}{hint}")
