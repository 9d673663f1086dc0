"""Jobs: validate a recipe against the pass registry, record it, enqueue it after commit, cancel it."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.artifacts import repository as artifacts
from app.core.db import on_commit, session_scope
from app.core.errors import Conflict, NotFound, ValidationFailed
from app.core.pagination import Page
from app.core.queue import send_job
from app.core.settings import get_settings
from app.jobs import repository
from app.jobs.schemas import JobCreate
from app.mlmodels import repository as models
from app.models import Job, JobLog
from workers.passes import REGISTRY


def plan_steps(source_format: str, payload: JobCreate) -> tuple[list[dict[str, Any]], str]:
    """Check every step (name, params, format chaining, availability); return the steps to store and the
    queue. All problems are reported together, each naming ``steps[i]``."""
    errors: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    current = source_format
    queue = "gpu" if payload.target.device == "cuda" else "cpu"
    for i, step in enumerate(payload.steps):
        spec = REGISTRY.get(step.pass_)
        if spec is None:
            errors.append({"loc": ["steps", i, "pass"],
                           "msg": f"unknown pass {step.pass_!r}; GET /v1/passes lists them"})
            continue
        try:
            params = spec.params.model_validate(step.params)
        except ValidationError as exc:
            errors.extend({"loc": ["steps", i, "params", *e["loc"]], "msg": e["msg"]} for e in exc.errors())
            params = None
        if reason := spec.unavailable_reason():
            errors.append({"loc": ["steps", i, "pass"], "msg": f"{spec.name} cannot run here: {reason}"})
        if current not in spec.accepts:
            errors.append({"loc": ["steps", i, "pass"],
                           "msg": f"{spec.name} takes {' or '.join(spec.accepts)} models, but the model "
                                  f"at this step is {current}"})
        current = spec.produces
        if spec.queue == "gpu":
            queue = "gpu"
        steps.append({"index": i, "pass": spec.name,
                      "params": params.model_dump(mode="json") if params else step.params,
                      "status": "pending", "started_at": None, "finished_at": None, "metrics": {}})
    if errors:
        raise ValidationFailed(errors)
    return steps, queue


def create(session: Session, tenant: str, payload: JobCreate) -> Job:
    if payload.artifact_id is not None:
        artifact = artifacts.get(session, tenant, payload.artifact_id)
        if artifact is None:
            raise ValidationFailed.at(["artifact_id"], f"artifact {payload.artifact_id} not found")
        model_id, source_format = repository.model_id_of(session, artifact.job_id), artifact.format
    else:
        model = models.get(session, tenant, payload.model_id)
        if model is None:
            raise ValidationFailed.at(["model_id"], f"model {payload.model_id} not found")
        model_id, source_format = model.id, model.format
    if payload.datasets:
        raise ValidationFailed.at(["datasets"], "datasets are not supported by this version yet")
    steps, queue = plan_steps(source_format, payload)
    job = repository.add(session, Job(
        tenant=tenant, model_id=model_id, source_artifact_id=payload.artifact_id, steps=steps, queue=queue,
        datasets=payload.datasets, evaluation=payload.evaluation.model_dump(mode="json", exclude_none=True),
        target=payload.target.model_dump(mode="json", exclude_defaults=False),
        webhook=payload.webhook.model_dump(mode="json") if payload.webhook else None,
        max_attempts=get_settings().max_attempts))
    session.add(JobLog(job_id=job.id, message=f"queued on {queue}: " + " → ".join(s["pass"] for s in steps)))
    job_id = job.id
    on_commit(session, lambda: dispatch(job_id, queue))  # the row exists before any worker can look
    return job


def dispatch(job_id: str, queue: str) -> None:
    """Send the job's task, then record that it was sent: workers' recovery re-sends jobs never marked."""
    send_job(job_id, queue)
    with session_scope() as session:
        repository.mark_sent(session, job_id)


def get(session: Session, tenant: str, job_id: str) -> Job:
    job = repository.get(session, tenant, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def list_page(session: Session, tenant: str, page: Page, state: str | None) -> tuple[list[Job], str | None]:
    return repository.list_page(session, tenant, page, state)


def cancel(session: Session, tenant: str, job_id: str) -> Job:
    """Queued jobs are cancelled at once; running ones stop at their next cancellation check."""
    job = get(session, tenant, job_id)
    if job.state == "queued" and repository.cancel_queued(session, job):
        repository.add_log(session, job.id, "cancelled before a worker took it")
        return job
    if job.state == "running":
        repository.request_cancel(session, job)
        repository.add_log(session, job.id, "cancellation requested")
        return job
    raise Conflict(f"job {job_id} is already {job.state}")


def logs_text(session: Session, tenant: str, job_id: str) -> str:
    get(session, tenant, job_id)
    return "".join(f"{line.created_at.isoformat(timespec='milliseconds')} {line.level.upper():7} "
                   f"{line.message}\n" for line in repository.logs(session, job_id))
