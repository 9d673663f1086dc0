"""Process plumbing shared by ``tensorpress up`` and the workers (Linux first, harmless elsewhere)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (on Linux, zombies waiting for init do not count)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if not os.path.isdir("/proc"):
        return True
    for entry in os.scandir("/proc"):
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                state, _ppid, group = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            return True
    return False


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send ``signum`` to the child when the thread that started it dies (even
    by SIGKILL); None elsewhere. libc is loaded here, in the parent: the child runs no import between fork and
    exec, where another thread could hold the import lock."""
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signum)  # PR_SET_PDEATHSIG
