"""Jobs: resolve a recipe into a plan checked against the pass registry, the model and the datasets; record
it; enqueue it after commit; cancel it.

Format conversion is automatic in one case: a torch model (TorchScript or .pt2) before a pass that takes
only ONNX gets an ``export.onnx`` step inserted (``inserted: true`` with its reason in the plan). Anything
else that does not chain is refused with 422 naming ``steps[i]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.artifacts import repository as artifacts
from app.core.db import on_commit, session_scope
from app.core.errors import Conflict, NotFound, ValidationFailed
from app.core.pagination import Page
from app.core.queue import send_job
from app.core.quotas import check_active_jobs
from app.core.settings import get_settings
from app.core.storage import Store
from app.datasets import repository as datasets_repo
from app.datasets.service import ROLES, mismatches
from app.jobs import repository
from app.jobs.schemas import JobCreate, LabelMetric
from app.mlmodels import repository as models
from app.models import Job, JobLog, Model
from app.models.job import ACTIVE_STATES
from app.webhooks import service as webhooks
from app.worker_registry import service as worker_registry
from workers.passes import REGISTRY, goals
from workers.passes.presets import PRESETS

TORCH_FORMATS = ("torchscript", "torch_export")
EXPORT = "export.onnx"


def plan(session: Session, tenant: str, payload: JobCreate) -> dict[str, Any]:
    """Everything the job would run, or a 422 listing every problem found."""
    model, source_format = _source(session, tenant, payload)
    errors: list[dict[str, Any]] = []
    datasets = _check_datasets(session, tenant, payload.datasets, model, errors)
    _check_target(payload, model, errors)
    _check_metric(session, tenant, payload, errors)
    if (payload.time_limit_s or 0) > (limit := get_settings().job_time_limit_s):
        errors.append({"loc": ["time_limit_s"], "msg": f"at most {limit} s here (TENSORPRESS_JOB_TIME_LIMIT_S)"})
    if payload.webhook is not None and (problem := webhooks.check_url(payload.webhook.url)):
        errors.append({"loc": ["webhook", "url"], "msg": problem})
    candidates = _requested_steps(payload, model, source_format, errors)
    live = worker_registry.live(session)

    def resolve(requested: list[dict], reason: str | None, problems: list[dict[str, Any]]):
        steps, queue = _resolve_steps(requested, source_format, payload, problems,
                                      lambda model_id: models.get(session, tenant, model_id), model,
                                      lambda name: worker_registry.pass_unavailable(name, live))
        for step in steps:
            step["reason"] = step["reason"] or reason
        return steps, queue

    if payload.goal is not None and not errors:
        steps, queue, goal = _search_plan(candidates, resolve, payload)
        candidates = []
    else:
        steps, queue = resolve(*candidates[0], errors) if candidates else ([], "cpu")
        goal = None
    if errors:
        raise ValidationFailed(errors)
    alternatives = []
    for requested, reason in candidates[1:]:  # a preset's fallbacks; one this deployment cannot run is left out
        problems: list[dict[str, Any]] = []
        fallback, fallback_queue = resolve(requested, reason, problems)
        if not problems and fallback_queue == queue:
            alternatives.append({"steps": fallback})
    return {"model_id": model.id, "artifact_id": payload.artifact_id, "source_format": source_format,
            "preset": payload.preset, "steps": steps, "alternatives": alternatives, "goal": goal, "queue": queue,
            "datasets": datasets,
            "waiting_reason": worker_registry.waiting_reason(queue, live),
            "target": {**payload.target.model_dump(mode="json"),
                       **({"objective": payload.goal.objective} if payload.goal else {})},
            "evaluation": {**payload.evaluation.model_dump(mode="json", exclude_none=True),
                           **({"max_accuracy_drop": payload.goal.max_accuracy_drop} if payload.goal else {})}}


def _search_plan(candidates, resolve, payload: JobCreate) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    """A goal's candidates as one list of steps (each marked with its candidate), the queue, and the goal with
    the candidates kept and those this deployment cannot run, with why."""
    queue = "gpu" if payload.target.device == "cuda" else "cpu"
    steps: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    for (group, level), requested, why in candidates:
        problems: list[dict[str, Any]] = []
        resolved, candidate_queue = resolve(requested, why, problems)
        if candidate_queue != queue:
            problems.append({"msg": f"needs the {candidate_queue} queue; the target's device uses {queue}"})
        if problems:
            excluded.append({"group": group, "steps": [s["pass"] for s in requested],
                             "reason": "; ".join(dict.fromkeys(p["msg"] for p in problems))})
            continue
        kept.append({"candidate": len(kept) + 1, "group": group, "level": level, "reason": why})
        steps.extend({**step, "index": len(steps) + i, "candidate": len(kept)} for i, step in enumerate(resolved))
    if not kept:
        raise ValidationFailed.at(["goal"], "no candidate recipe can run for this model here: " + "; ".join(
            f"{' → '.join(e['steps'])}: {e['reason']}" for e in excluded))
    return steps, queue, {**payload.goal.model_dump(mode="json"), "candidates": kept, "excluded": excluded}


def _source(session: Session, tenant: str, payload: JobCreate) -> tuple[Model, str]:
    if payload.artifact_id is not None:
        artifact = artifacts.get(session, tenant, payload.artifact_id)
        if artifact is None:
            raise ValidationFailed.at(["artifact_id"], f"artifact {payload.artifact_id} not found")
        model = models.get_any(session, repository.model_id_of(session, artifact.job_id))
        if model is None:
            raise ValidationFailed.at(["artifact_id"], f"the model behind artifact {artifact.id} was deleted, and "
                                      "with it the input specs the job needs; upload the artifact as a model")
        return model, artifact.format
    model = models.get(session, tenant, payload.model_id)
    if model is None:
        raise ValidationFailed.at(["model_id"], f"model {payload.model_id} not found")
    return model, model.format


def _check_datasets(session: Session, tenant: str, wanted: dict[str, str], model: Model,
                    errors: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {}
    for role, dataset_id in wanted.items():
        if role not in ROLES:
            errors.append({"loc": ["datasets", role], "msg": f"unknown role; use one of {', '.join(ROLES)}"})
            continue
        dataset = datasets_repo.get(session, tenant, dataset_id)
        if dataset is None:
            errors.append({"loc": ["datasets", role], "msg": f"dataset {dataset_id} not found"})
            continue
        errors.extend({"loc": ["datasets", role], "msg": problem} for problem in mismatches(dataset, model.inputs))
        found[role] = {"id": dataset.id, "name": dataset.name, "samples": dataset.samples}
    return found


def _check_target(payload: JobCreate, model: Model, errors: list[dict[str, Any]]) -> None:
    specs = {s["name"]: s for s in model.inputs}
    for name, bounds in payload.target.inputs.items():
        spec = specs.get(name)
        loc = ["target", "inputs", name]
        if spec is None:
            errors.append({"loc": loc, "msg": f"the model has no input {name!r} (it has {', '.join(specs)})"})
            continue
        if bounds.shape is not None:
            if len(bounds.shape) != len(spec["shape"]) or any(
                    isinstance(want, int) and got != want for got, want in zip(bounds.shape, spec["shape"],
                                                                              strict=False)):
                errors.append({"loc": [*loc, "shape"], "msg": f"{bounds.shape} does not fit the input's shape "
                                                              f"{spec['shape']}"})
        if bounds.low is not None and bounds.high is not None and bounds.low >= bounds.high:
            errors.append({"loc": loc, "msg": "low must be below high"})
    for spec in model.inputs:
        first = spec["shape"][0] if spec["shape"] else None
        if isinstance(first, int) and any(b != first for b in payload.target.batch_sizes):
            errors.append({"loc": ["target", "batch_sizes"],
                           "msg": f"the model's input {spec['name']!r} has a fixed batch size of {first}"})
            break


def _check_metric(session: Session, tenant: str, payload: JobCreate, errors: list[dict[str, Any]]) -> None:
    if payload.evaluation.metric not in get_args(LabelMetric):
        return
    dataset = datasets_repo.get(session, tenant, payload.datasets.get("evaluation", ""))
    if dataset is None or not any(array["name"] == "labels" for array in dataset.arrays):
        errors.append({"loc": ["evaluation", "metric"], "msg": f"{payload.evaluation.metric} needs an evaluation "
                       "dataset with a 'labels' array"})


def _requested_steps(payload: JobCreate, model: Model, source_format: str, errors: list[dict[str, Any]]) -> list:
    """The steps asked for, a preset's candidates, each with the reason for it, or a goal's search space
    (group, steps, reason)."""
    if payload.steps is not None:
        if len(payload.steps) > (limit := get_settings().max_steps):
            errors.append({"loc": ["steps"], "msg": f"{len(payload.steps)} steps; at most {limit} "
                                                    "(TENSORPRESS_MAX_STEPS)"})
            return []
        return [([{"pass": s.pass_, "params": s.params} for s in payload.steps], None)]
    if payload.goal is not None:
        space = goals.search_space({"format": source_format, "details": model.details,
                                    "datasets": sorted(payload.datasets)}, payload.goal.objective,
                                   payload.target.device)
        return [((c.group, c.level), c.steps, f"goal, {c.group}: {c.why}") for c in space]
    preset = PRESETS.get(payload.preset)
    if preset is None:
        errors.append({"loc": ["preset"], "msg": f"unknown preset {payload.preset!r}; GET /v1/presets lists them"})
        return []
    missing = [role for role in preset.datasets if role not in payload.datasets]
    if missing:
        errors.append({"loc": ["preset"], "msg": f"preset {preset.name} needs a {missing[0]!r} dataset"})
        return []
    candidates = preset.resolve({"format": model.format, "details": model.details, "inputs": model.inputs,
                                 "datasets": sorted(payload.datasets)})
    return [(steps, f"preset {preset.name}: {why}") for steps, why in candidates]


def _resolve_steps(requested: list[dict], source_format: str, payload: JobCreate, errors: list[dict[str, Any]],
                   lookup: Callable[[str], Model | None], source: Model,
                   unavailable: Callable[[str], str | None]) -> tuple[list[dict[str, Any]], str]:
    steps: list[dict[str, Any]] = []
    current = source_format
    queue = "gpu" if payload.target.device == "cuda" else "cpu"
    for i, step in enumerate(requested):
        spec = REGISTRY.get(step["pass"])
        if spec is None:
            errors.append({"loc": ["steps", i, "pass"],
                           "msg": f"unknown pass {step['pass']!r}; GET /v1/passes lists them"})
            continue
        if current not in spec.accepts and current in TORCH_FORMATS and "onnx" in spec.accepts:
            steps.append(_step(len(steps), REGISTRY[EXPORT], REGISTRY[EXPORT].params().model_dump(mode="json"),
                               "onnx", f"{spec.name} takes ONNX; the {current} model is exported first",
                               inserted=True))
            current = "onnx"
        try:
            validated = spec.params.model_validate(step["params"])
            params = validated.model_dump(mode="json")
        except ValidationError as exc:
            errors.extend({"loc": ["steps", i, "params", *e["loc"]], "msg": e["msg"]} for e in exc.errors())
            validated, params = None, step["params"]
        if validated is not None and current in spec.accepts:
            if spec.check and (problem := spec.check(validated, current, set(payload.datasets))):
                errors.append({"loc": ["steps", i, "params"], "msg": problem})
            for ref in spec.model_refs:
                if (model_id := getattr(validated, ref)) is not None:
                    problem = _referenced_model_problem(lookup(model_id), model_id, current, source)
                    if problem:
                        errors.append({"loc": ["steps", i, "params", ref], "msg": problem})
        if reason := unavailable(spec.name):
            errors.append({"loc": ["steps", i, "pass"], "msg": f"{spec.name} cannot run here: {reason}"})
        if current not in spec.accepts:
            errors.append({"loc": ["steps", i, "pass"],
                           "msg": f"{spec.name} takes {' or '.join(spec.accepts)} models, but the model at this "
                                  f"step is {current}"})
        errors.extend({"loc": ["steps", i, "pass"], "msg": f"{spec.name} needs a {role!r} dataset"}
                      for role in spec.datasets if role not in payload.datasets)
        current = spec.output_format(current)
        if spec.queue == "gpu":
            queue = "gpu"
        steps.append(_step(len(steps), spec, params, current, None))
    return steps, queue


def _referenced_model_problem(other: Model | None, model_id: str, current: str, source: Model) -> str | None:
    """Why a model named in a pass's parameters cannot stand in for the job's model (None when it can)."""
    if other is None:
        return f"model {model_id} not found"
    if other.format != current:
        return f"model {model_id} is {other.format}; it must have the format of the model at this step ({current})"
    if [(s["name"], s["dtype"]) for s in other.inputs] != [(s["name"], s["dtype"]) for s in source.inputs]:
        return f"model {model_id} takes other inputs than the job's model"

    def tail(specs):
        return [[d if isinstance(d, int) else None for d in s["shape"][1:]] for s in specs]

    if tail(other.outputs) != tail(source.outputs):
        return (f"model {model_id} outputs {[s['shape'] for s in other.outputs]}, the job's model "
                f"{[s['shape'] for s in source.outputs]}: the shapes must match")
    return None


def _step(index: int, spec, params: dict[str, Any], produces: str, reason: str | None,
          inserted: bool = False) -> dict[str, Any]:
    return {"index": index, "pass": spec.name, "params": params, "queue": spec.queue, "accepts": list(spec.accepts),
            "produces": produces, "inserted": inserted, "reason": reason}


def create(session: Session, tenant: str, payload: JobCreate) -> Job:
    resolved = plan(session, tenant, payload)
    steps = _job_steps(resolved["steps"])
    check_active_jobs(session, tenant)
    job = repository.add(session, Job(
        tenant=tenant, model_id=resolved["model_id"], source_artifact_id=payload.artifact_id, steps=steps,
        alternatives=[_job_steps(a["steps"]) for a in resolved["alternatives"]], goal=resolved["goal"],
        queue=resolved["queue"], datasets=payload.datasets, evaluation=resolved["evaluation"],
        target=resolved["target"],
        webhook={"url": payload.webhook.url, "secret": webhooks.new_secret()} if payload.webhook else None,
        max_attempts=get_settings().max_attempts, waiting_reason=resolved["waiting_reason"],
        time_limit_s=payload.time_limit_s))
    recipe = (f"a search over {len(job.goal['candidates'])} candidate recipes" if job.goal
              else " → ".join(s["pass"] for s in steps))
    session.add(JobLog(job_id=job.id, message=f"queued on {job.queue}: {recipe}"))
    job_id, queue = job.id, job.queue
    on_commit(session, lambda: dispatch(job_id, queue))  # the row exists before any worker can look
    return job


def _job_steps(planned: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"index": s["index"], "pass": s["pass"], "params": s["params"], "status": "pending",
             "inserted": s["inserted"], "reason": s["reason"], "candidate": s.get("candidate"), "started_at": None,
             "finished_at": None, "metrics": {}} for s in planned]


def dispatch(job_id: str, queue: str) -> None:
    """Send the job's task, then record that it was sent: workers' recovery re-sends jobs never marked."""
    send_job(job_id, queue)
    with session_scope() as session:
        repository.mark_sent(session, job_id)


def get(session: Session, tenant: str | None, job_id: str) -> Job:
    job = repository.get(session, tenant, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def model_of(session: Session, job: Job) -> Model | None:
    return models.get_any(session, job.model_id)


def list_page(session: Session, tenant: str | None, page: Page, state: str | None) -> tuple[list[Job], str | None]:
    return repository.list_page(session, tenant, page, state)


def cancel(session: Session, tenant: str | None, job_id: str) -> Job:
    """Queued jobs are cancelled at once; running ones stop at their next cancellation check."""
    job = get(session, tenant, job_id)
    if job.state == "queued" and repository.cancel_queued(session, job):
        repository.add_log(session, job.id, "cancelled before a worker took it")
        webhooks.record(session, job, "cancelled")
        return job
    if job.state == "running":
        repository.request_cancel(session, job)
        repository.add_log(session, job.id, "cancellation requested")
        return job
    raise Conflict(f"job {job_id} is already {job.state}")


def delete(session: Session, store: Store, tenant: str | None, job_id: str) -> None:
    """Delete a finished job with its artifacts, logs and webhook deliveries (409 while it is active)."""
    job = get(session, tenant, job_id)
    if job.state in ACTIVE_STATES:
        raise Conflict(f"job {job_id} is {job.state}; cancel it first")
    remove(session, store, job)


def remove(session: Session, store: Store, job: Job) -> None:
    """The job's rows go in this transaction, its artifacts' bytes after it commits. Refused (409) while an
    active job starts from one of its artifacts."""
    if repository.source_of_active_job(session, job.id):
        raise Conflict(f"a queued or running job starts from an artifact of job {job.id}")
    prefixes = repository.delete_artifacts(session, job.id)
    session.delete(job)
    on_commit(session, lambda: [store.delete_prefix(prefix) for prefix in prefixes])


def logs_text(session: Session, tenant: str | None, job_id: str) -> str:
    get(session, tenant, job_id)
    return "".join(f"{line.created_at.isoformat(timespec='milliseconds')} {line.level.upper():7} "
                   f"{line.message}\n" for line in repository.logs(session, job_id))
