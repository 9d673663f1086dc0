"""A process that imports the heavy libraries once and forks each job's confined child from there.

``python -I -m workers.zygote`` (control socket on fd 3) is started with a clean environment by
:func:`zygote`. Each request carries the child's stdin and stdout (as file descriptors) and its arguments; the
zygote forks, and the child confines itself and serves exactly as ``python -I -m workers.confined`` would. A
child costs a fork instead of a fresh interpreter importing torch (~2–4 s).

Used where one process runs many jobs (the test suite, which sets :attr:`workers.executor.Executor.zygote`);
worker job processes run one job each and spawn their child directly. Only modules that start no thread which
could hold a lock across the fork are preloaded (numpy's OpenBLAS pool is fork-aware; onnxruntime is left out).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PRELOAD = ("numpy", "onnx", "torch", "pydantic", "workers.passes", "workers.measure", "workers.confined")


class Forked:
    """A child forked by the zygote, with the part of ``subprocess.Popen`` that the executor uses. Its exit
    status is the zygote's to reap, so a finished one reports :data:`UNKNOWN`."""

    UNKNOWN = 256

    def __init__(self, pid: int, stdin: int, stdout: int) -> None:
        self.pid, self.returncode = pid, None
        self.stdin, self.stdout = os.fdopen(stdin, "wb"), os.fdopen(stdout, "rb", buffering=0)

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                os.kill(self.pid, 0)  # the zygote reaps its children: a dead one is gone at once
            except ProcessLookupError:
                self.returncode = self.UNKNOWN
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(0.01)
        for stream in (self.stdin, self.stdout):
            try:
                stream.close()
            except OSError:
                pass
        return self.returncode


class Zygote:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self.proc = subprocess.Popen([sys.executable, "-I", "-m", "workers.zygote", str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        theirs.close()
        self.sock, self.lock = ours, threading.Lock()

    def fork(self, args: list[str], env: dict[str, str], cwd: Path) -> Forked:
        child_in, parent_in = os.pipe()
        parent_out, child_out = os.pipe()
        try:
            with self.lock:
                socket.send_fds(self.sock, [json.dumps({"args": args, "env": env, "cwd": str(cwd)}).encode()],
                                [child_in, child_out])
                answer = self.sock.recv(4096)
        finally:
            os.close(child_in)
            os.close(child_out)
        return Forked(json.loads(answer)["pid"], parent_in, parent_out)


_zygote: list[Zygote] = []


def zygote() -> Zygote:
    if not _zygote or _zygote[0].proc.poll() is not None:
        _zygote[:] = [Zygote()]
    return _zygote[0]


def main() -> None:
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    from app.core.processes import die_with_parent
    from workers import confined

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    control = socket.socket(fileno=int(sys.argv[1]))
    orphan = die_with_parent(signal.SIGKILL)
    while True:
        message, fds, _, _ = socket.recv_fds(control, 1 << 20, 2)
        if not message:  # the process that started us is gone
            return
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            control.close()
            if orphan is not None:  # the zygote gone, its children go too
                orphan()
            os.dup2(fds[0], 0)
            os.dup2(fds[1], 1)
            for fd in fds:
                os.close(fd)
            os.environ.clear()
            os.environ.update(request["env"])
            tempfile.tempdir = None
            os.chdir(request["cwd"])
            try:
                confined.main(request["args"])
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)
        control.sendall(json.dumps({"pid": pid}).encode())


if __name__ == "__main__":
    main()
