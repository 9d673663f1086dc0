"""Client commands of ``tensorpress`` for pipelines: models, datasets, jobs, artifacts.

The server comes from ``--url`` or ``TENSORPRESS_URL``, the key from ``--api-key`` or ``TENSORPRESS_API_KEY``.
Progress goes to stderr; results to stdout (``--json``: the records as the API gives them). Exit status: 0
success, 1 the job failed or was cancelled, 2 a usage or HTTP error, 3 the job regressed (unless
``--allow-regression``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tensorpress.client import ApiError, Client, Job

FAILED, USAGE, REGRESSED = 1, 2, 3


class Progress:
    """A one-line progress display on stderr (only when stderr is a terminal or forced)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.last = -1

    def __call__(self, done: int, total: int | None) -> None:
        percent = int(100 * done / total) if total else 0
        if percent != self.last:
            self.last = percent
            sys.stderr.write(f"\r{self.label} {percent:3d}% {done / 1e6:8.1f}/{(total or 0) / 1e6:.1f} MB")
            if total and done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _json_arg(value: str) -> Any:
    """JSON given inline, or the path of a JSON file."""
    path = Path(value)
    try:
        return json.loads(path.read_text() if path.is_file() else value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON (nor a JSON file): {exc}") from exc


def _out(args: argparse.Namespace, record: dict[str, Any], text: str) -> None:
    print(json.dumps(record, indent=2) if args.json else text)


def models_upload(client: Client, args: argparse.Namespace) -> int:
    model = client.upload_model(args.file, args.name, args.inputs, progress=Progress(f"uploading {args.file}"))
    _out(args, model.raw, model.id)
    return 0


def datasets_upload(client: Client, args: argparse.Namespace) -> int:
    dataset = client.upload_dataset(args.file, args.name, progress=Progress(f"uploading {args.file}"))
    _out(args, dataset.raw, dataset.id)
    return 0


def _model_or_file(client: Client, value: str, inputs: list[dict[str, Any]] | None) -> str:
    path = Path(value)
    if not path.is_file():
        if inputs is not None:
            raise ApiError(0, "Usage", f"--inputs describes a model file to upload; {value!r} is not a file")
        return value
    return client.upload_model(path, inputs=inputs, progress=Progress(f"uploading {path}")).id


def _datasets(client: Client, pairs: list[str]) -> dict[str, str]:
    datasets = {}
    for pair in pairs:
        role, sep, value = pair.partition("=")
        if not sep:
            raise ApiError(0, "Usage", f"--dataset wants ROLE=FILE_OR_ID, got {pair!r}")
        path = Path(value)
        datasets[role] = (client.upload_dataset(path, progress=Progress(f"uploading {path}")).id
                          if path.is_file() else value)
    return datasets


def jobs_submit(client: Client, args: argparse.Namespace) -> int:
    recipe = ({"steps": args.steps} if args.steps is not None else {"goal": args.goal} if args.goal is not None
              else {"preset": args.preset})
    job = client.submit_job(_model_or_file(client, args.model, args.inputs), datasets=_datasets(client, args.dataset) or None,
                            target=args.target, evaluation=args.evaluation, **recipe)
    print(f"job {job.id} {job.state}", file=sys.stderr)
    if args.wait:
        job = client.wait(job.id, on_event=EventPrinter())
        sys.stderr.write("\n")
    return _finish(args, job)


class EventPrinter:
    """A job's events on stderr: each change of state or of a step's status once, progress in place."""

    def __init__(self) -> None:
        self.seen: set[tuple] = set()

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "progress":
            sys.stderr.write(f"\r  {100 * data.get('progress', 0):5.1f}%")
        elif kind in ("state", "step"):
            key = (kind, data.get("state")) if kind == "state" else (kind, data.get("index"), data.get("status"))
            if key not in self.seen:
                self.seen.add(key)
                line = (f"state {data.get('state')}" if kind == "state" else
                        f"step {data.get('index')} {data.get('pass')}: {data.get('status')}")
                sys.stderr.write(f"\r{line:<60}\n")
        sys.stderr.flush()


def _finish(args: argparse.Namespace, job: Job) -> int:
    _out(args, job.raw, f"{job.id} {job.state}" + (" (regressed)" if job.regressed else ""))
    if job.state in ("failed", "cancelled"):
        if job.error:
            print(f"error: {job.error.get('detail')}", file=sys.stderr)
        return FAILED
    if job.regressed:
        for reason in job.regressions:
            print(f"regression: {reason}", file=sys.stderr)
        return 0 if args.allow_regression else REGRESSED
    return 0


def describe(job: Job) -> list[str]:
    """A job as ``jobs status`` prints it: one fact a line."""
    raw = job.raw
    lines = [f"job {job.id}", f"state: {job.state}"]
    if raw.get("waiting_reason"):
        lines.append(f"waiting: {raw['waiting_reason']}")
    if raw.get("current_step") is not None and not job.finished:
        step = next((s for s in raw["steps"] if s["index"] == raw["current_step"]), None)
        if step is not None:
            lines.append(f"step: {step['index'] + 1} of {len(raw['steps'])}, {step['pass']} ({step['status']})")
    lines.append(f"progress: {100 * job.progress:.0f}%")
    if job.finished:
        original, result = (job.metrics.get(k) or {} for k in ("original", "result"))
        if original.get("size_bytes") and result.get("size_bytes"):
            lines.append(f"size: {result['size_bytes'] / original['size_bytes']:.3f}x the original "
                         f"({original['size_bytes']:,} -> {result['size_bytes']:,} bytes)")
        if job.state == "succeeded":
            lines.append(f"regressed: {'yes' if job.regressed else 'no'}")
            lines += [f"regression: {reason}" for reason in job.regressions]
        if job.error:
            lines.append(f"error: {job.error.get('detail')}")
    return lines


def jobs_status(client: Client, args: argparse.Namespace) -> int:
    job = client.job(args.job_id)
    _out(args, job.raw, "\n".join(describe(job)))
    return 0


def jobs_logs(client: Client, args: argparse.Namespace) -> int:
    sys.stdout.write(client.logs(args.job_id))
    return 0


def jobs_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel(args.job_id)
    _out(args, job.raw, f"{job.id} {job.state}")
    return 0


def jobs_list(client: Client, args: argparse.Namespace) -> int:
    jobs = client.jobs(args.state)
    if args.json:
        print(json.dumps([j.raw for j in jobs], indent=2))
    for job in [] if args.json else jobs:
        print(f"{job.id}  {job.state:9}  {job.raw['created_at']}")
    return 0


def artifacts_download(client: Client, args: argparse.Namespace) -> int:
    path = client.download_artifact(args.artifact_id, args.output, progress=Progress(f"downloading {args.artifact_id}"))
    print(path)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The client commands, added to ``tensorpress``'s own parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="server URL (TENSORPRESS_URL; default http://127.0.0.1:8000)")
    common.add_argument("--api-key", help="API key (TENSORPRESS_API_KEY)")
    common.add_argument("--json", action="store_true", help="print the records as JSON")

    def group(name: str, helptext: str) -> argparse._SubParsersAction:
        return sub.add_parser(name, help=helptext).add_subparsers(dest=f"{name}_command", required=True)

    models, datasets, jobs, artifacts = (group("models", "upload models"), group("datasets", "upload datasets"),
                                         group("jobs", "submit and follow jobs"),
                                         group("artifacts", "download artifacts"))
    p = models.add_parser("upload", parents=[common], help="upload a model file")
    p.add_argument("file", type=Path)
    p.add_argument("--name")
    p.add_argument("--inputs", type=_json_arg, help="TorchScript: the inputs of forward() as JSON")
    p.set_defaults(client_command=models_upload)
    p = datasets.add_parser("upload", parents=[common], help="upload an .npz dataset")
    p.add_argument("file", type=Path)
    p.add_argument("--name")
    p.set_defaults(client_command=datasets_upload)

    p = jobs.add_parser("submit", parents=[common], help="submit a job on a model file or id")
    p.add_argument("model", help="a local model file (uploaded first) or a model id")
    p.add_argument("--inputs", type=_json_arg, help='TorchScript file: the inputs of forward() as JSON, e.g. '
                   '[{"name": "x", "dtype": "float32", "shape": [1, 64]}]')
    recipe = p.add_mutually_exclusive_group(required=True)
    recipe.add_argument("--preset")
    recipe.add_argument("--steps", type=_json_arg, help="JSON list of steps, or a file holding it")
    recipe.add_argument("--goal", type=_json_arg, help='JSON, e.g. {"max_accuracy_drop": 0.01}')
    p.add_argument("--dataset", action="append", default=[], metavar="ROLE=FILE_OR_ID")
    p.add_argument("--target", type=_json_arg)
    p.add_argument("--evaluation", type=_json_arg)
    p.add_argument("--wait", action="store_true", help="follow the job until it finishes")
    p.add_argument("--allow-regression", action="store_true", help="exit 0 even when the job regressed")
    p.set_defaults(client_command=jobs_submit)
    for name, func, helptext in (("status", jobs_status, "a job's state"), ("logs", jobs_logs, "a job's log"),
                                 ("cancel", jobs_cancel, "cancel a job")):
        p = jobs.add_parser(name, parents=[common], help=helptext)
        p.add_argument("job_id")
        p.set_defaults(client_command=func)
    p = jobs.add_parser("list", parents=[common], help="recent jobs")
    p.add_argument("--state")
    p.set_defaults(client_command=jobs_list)
    p = artifacts.add_parser("download", parents=[common], help="download an artifact (resumable, verified)")
    p.add_argument("artifact_id")
    p.add_argument("-o", "--output", type=Path, help="file or folder (default: the artifact's file name)")
    p.set_defaults(client_command=artifacts_download)
    for parser in (models, datasets, jobs, artifacts):
        parser.required = True


def run(args: argparse.Namespace) -> None:
    try:
        with Client(args.url, args.api_key) as client:
            code = args.client_command(client, args)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for error in exc.errors:
            print(f"  {'.'.join(map(str, error.get('loc', [])))}: {error.get('msg')}", file=sys.stderr)
        code = USAGE
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = FAILED
    sys.exit(code)
