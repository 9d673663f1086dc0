"""The confined side of a job: ``python -I -m workers.confined WORK_DIR READ_JSON CANCEL_FLAG``.

Everything that loads or runs a user's model — every pass and every measurement — happens in this process,
which :func:`app.core.confinement.confine` has shut in before it reads anything: it reads only the Python
environment and the job's inputs (``READ_JSON``: the stored model and datasets, and the job's ``inputs/``),
writes only beneath ``WORK_DIR``, opens no socket, and reaches no other process. It holds no database
connection, no credentials and no settings. The trusted parent (:mod:`workers.executor`) does all of that.

Protocol: one JSON request a line on stdin — ``{"op": "measure", …}`` or ``{"op": "pass", …}`` — answered by
JSON lines on stdout: any number of ``{"event": "progress", "fraction"}`` and ``{"event": "log", "message"}``,
then one ``{"event": "result", …}`` or ``{"event": "error", "kind", "message", "trace"}``. Arrays travel as
``.npz`` files. Cancellation: the parent creates ``CANCEL_FLAG``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Send = Callable[..., None]


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Run inside ``path``: ONNX Runtime's quantizers save external-data files (``<uuid>.data``) to the current
    directory, which would otherwise be outside what this process may write."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _send(event: str, **fields: Any) -> None:
    sys.__stdout__.write(json.dumps({"event": event, **fields}) + "\n")
    sys.__stdout__.flush()


def _measure(request: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from workers import measure

    with np.load(request["feeds"], allow_pickle=False) as data:
        arrays = dict(data)
    labels = arrays.pop("__labels__", None)
    metrics, outputs = measure.measure(
        Path(request["path"]), request["fmt"], request["specs"], request["target"], threads=request["threads"],
        timing=measure.Timing(**request["timing"]), eval_feeds=arrays, labels=labels,
        dim_defaults=request["dim_defaults"])
    np.savez(request["outputs"], *outputs)
    return {"metrics": metrics}


def _pass(request: dict[str, Any], is_cancelled: Callable[[], bool], send: Send) -> dict[str, Any]:
    from workers.passes import REGISTRY, PassContext

    spec = REGISTRY[request["name"]]
    params = spec.params.model_validate(request["params"])
    ctx = request["ctx"]
    step_dir = Path(ctx["work_dir"])
    step_dir.mkdir(parents=True)
    context = PassContext(
        model_path=Path(ctx["model_path"]), model_format=ctx["model_format"], work_dir=step_dir,
        inputs=ctx["inputs"], outputs=ctx["outputs"], dim_defaults=ctx["dim_defaults"],
        datasets={role: Path(p) for role, p in ctx["datasets"].items()},
        models={k: (Path(p), fmt) for k, (p, fmt) in ctx["models"].items()}, device=ctx["device"],
        target=ctx["target"], progress=lambda fraction: send("progress", fraction=float(fraction)),
        is_cancelled=is_cancelled, log=lambda message: send("log", message=str(message)))
    with working_directory(step_dir):  # libraries that write scratch files to the cwd write them here
        result = spec.run(context, params)
    return {"model_path": str(result.model_path), "format": result.format, "metrics": result.metrics,
            "metadata": result.metadata}


def handle(request: dict[str, Any], is_cancelled: Callable[[], bool], send: Send) -> None:
    """Answer one request: its events, then its result or its error."""
    from workers.passes import Cancelled

    try:
        value = _measure(request) if request["op"] == "measure" else _pass(request, is_cancelled, send)
    except Cancelled as exc:
        send("error", kind="cancelled", message=str(exc), trace="")
    except Exception as exc:  # every failure is reported to the parent, never lost
        send("error", kind=type(exc).__name__, message=str(exc) or type(exc).__name__, trace=traceback.format_exc())
    else:
        send("result", **value)


def confine_job(work_dir: Path, readable: list[Path]):
    """Shut this process in as a job's: read the Python environment and ``readable``, write ``work_dir``."""
    from app.core.confinement import confine, runtime_paths

    read, write = runtime_paths()
    return confine(read + readable, write + [work_dir])


def main(args: list[str] | None = None) -> None:
    work_dir, readable, cancel_flag = args or sys.argv[1:4]
    confine_job(Path(work_dir), [Path(p) for p in json.loads(readable)])
    sys.stdout = sys.stderr  # libraries that print must not corrupt the protocol
    cancel = Path(cancel_flag)
    for line in sys.stdin:
        handle(json.loads(line), cancel.exists, _send)


if __name__ == "__main__":
    main()
