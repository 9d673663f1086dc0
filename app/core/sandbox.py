"""Run a helper module in a child process with memory and CPU-time limits and a clean environment (the child
confines itself further: :mod:`app.core.confinement`)."""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import sys
from typing import Any

from app.core.errors import TensorPressError, UnprocessableUpload
from app.core.processes import die_with_parent

log = logging.getLogger(__name__)
# How running out of RLIMIT_AS shows when the process survives to report it.
OUT_OF_MEMORY = ("MemoryError", "Cannot allocate memory", "failed to map segment", "std::bad_alloc")


def _limits(memory_bytes: int, cpu_s: int):
    die = die_with_parent(signal.SIGKILL)

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.setsid()
        if die is not None:  # the API process is gone: so is the inspection
            die()

    return apply


def run_json(module: str, args: list[str], *, memory_bytes: int, timeout_s: int) -> dict[str, Any]:
    """Run ``python -I -m module args`` sandboxed and parse the JSON it prints."""
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": "/nonexistent", "LANG": "C.UTF-8",
           "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"}
    try:
        proc = subprocess.run([sys.executable, "-I", "-m", module, *args], capture_output=True, env=env,
                              timeout=timeout_s, preexec_fn=_limits(memory_bytes, timeout_s), check=False)
    except subprocess.TimeoutExpired as exc:
        raise UnprocessableUpload(f"inspecting the upload took longer than {timeout_s} s") from exc
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        if proc.returncode == -signal.SIGXCPU:
            reason = f"it ran past its CPU-time limit of {timeout_s} s"
        elif any(sign in stderr for sign in OUT_OF_MEMORY) or proc.returncode < 0:
            reason = "it ran out of its memory limit"
        else:
            reason = "the inspector crashed"
        log.warning("%s exited with %d: %s", module, proc.returncode, stderr[-4000:])
        # The client gets the reason, never the child's output (tracebacks, server paths).
        raise UnprocessableUpload(f"the upload could not be inspected: {reason}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise TensorPressError("the inspector answered something that is not JSON") from exc
