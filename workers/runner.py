"""The pipeline runner: lease a job, run its steps, evaluate, store artifacts and metrics.

Every write about the job carries the lease's fencing token: if another worker took the job over (this one
was presumed dead), the write is refused and this runner stops without touching anything else.

Results are cached by content: the job's key hashes the tenant, the model's and datasets' sha256, the recipe
with every parameter resolved, evaluation and target, how it is measured, the toolchain's versions and the
CPU or GPU model. A succeeded job with the same key is reused at once (``cache_hit``): its artifacts are linked
under new ids (byte-identical) and its metrics copied; no step runs. ``TENSORPRESS_CACHE=off`` turns that off.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
import json
import logging
import platform
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.core.confinement import probe
from app.core.db import on_commit, session_scope, with_retries
from app.core.errors import JobFailed
from app.core.logs import JOB_ID
from app.core.settings import get_settings
from app.core.storage import get_store
from app.jobs import repository as jobs
from app.jobs.service import dispatch
from app.models import Artifact, Dataset, Job, Model
from app.models.base import new_id, utcnow
from app.webhooks import service as webhooks
from workers import measure
from workers import metrics as scoring  # "metrics" names the job's records here
from workers.executor import Executor
from workers.formats import PROGRAMS, materialize
from workers.heartbeat import versions
from workers.passes import REGISTRY, Cancelled

log = logging.getLogger(__name__)
EVAL_SAMPLES = 2048  # of the evaluation dataset used for fidelity and task metrics
search_clock = time.monotonic  # a goal search's time budget (tests replace it)
STEPS_SHARE = 0.9  # of the progress bar; measuring original and result takes the rest
EXTENSIONS = {"onnx": "onnx", "torchscript": "pt", "torch_export": "pt2", "aotinductor": "aoti.pt2",
              "openvino": "openvino.zip", "tensorrt": "engine"}


@dataclass(frozen=True)
class Baseline:
    """What every candidate is compared with: the original model (local path, format), as measured."""

    source: tuple[Path, str]
    target: dict[str, Any]
    original: dict[str, Any]
    reference: list  # the original's outputs on the evaluation inputs
    eval_feeds: dict[str, Any]
    labels: Any
    inputs: str  # where the evaluation inputs came from


def _reset(steps: list[dict]) -> None:
    """Every step pending again, as before any attempt ran."""
    for step in steps:
        step.update(status="pending", started_at=None, finished_at=None, metrics={})


def _rank(entry: dict[str, Any], goal: dict[str, Any]) -> tuple:
    """Order of preference in a search: candidates that meet the goal by their score; then the others by how
    far they are over the accuracy budget, then by score."""
    if entry["meets_goal"]:
        return 0, entry["score"], 0.0
    excess = max(0.0, (entry["loss"] or 0.0) - goal["max_accuracy_drop"])
    return 1, excess, entry["score"]


STRUCTURAL = ("low-rank", "structured-pruning")  # goal groups that change the architecture


def _stack(steps: list[dict], plan: list[dict], tried: list[dict]) -> dict | None:
    """A last candidate once every planned one ran: the best structural candidate that met the goal followed by
    the best other one that met it (their savings often add up), appended to ``steps``; None when there is no
    such pair or it was tried."""
    met = sorted((t for t in tried if t.get("meets_goal")), key=lambda t: t["score"])
    structural = next((t for t in met if t["group"] in STRUCTURAL), None)
    finishing = next((t for t in met if t["group"] not in STRUCTURAL and t["group"] != "stacked"), None)
    if structural is None or finishing is None or any(c["group"] == "stacked" for c in plan):
        return None
    number = len(plan) + 1
    why = f"goal, stacked: candidate {structural['candidate']} then candidate {finishing['candidate']}"
    parts = [s for n in (structural["candidate"], finishing["candidate"]) for s in steps if s.get("candidate") == n]
    steps.extend({**step, "index": len(steps) + i, "candidate": number, "status": "pending", "reason": why,
                  "started_at": None, "finished_at": None, "metrics": {}} for i, step in enumerate(parts))
    return {"candidate": number, "group": "stacked", "reason": why}


class HandBack(Exception):
    """The worker running the job is shutting down: the job goes back to the queue."""


class TimeLimitExceeded(Exception):
    """The job ran past its time limit: it fails with that reason (it is not retried)."""


class LeaseLost(Exception):
    """Another worker owns the job now; this one must stop writing."""


class JobRun:
    def __init__(self, job_id: str, owner: str) -> None:
        self.job_id = job_id
        self.owner = owner
        self.settings = get_settings()
        self.store = get_store()
        self.token: int | None = None
        self.model: dict[str, Any] = {}  # the uploaded model's input/output specs and dim defaults
        self.datasets: dict[str, Path] = {}  # local .npz paths by role
        self.evaluation: dict[str, Any] = {}  # the job's metric and accuracy budget
        self.alternatives: list[list[dict]] = []  # a preset's fallback recipes
        self.goal: dict[str, Any] | None = None  # a goal job's goal and candidates
        self.current: int | None = None  # the index of the step running
        self.deadline: float | None = None  # search_clock() when a goal search's running candidate must stop
        self.tenant = ""
        self.cache_key = ""
        self.models: dict[str, tuple[Path, str]] = {}  # other uploaded models the steps name (students)
        self.time_limit_s = self.settings.job_time_limit_s
        self.time_limit_at = float("inf")  # time.monotonic() when this attempt must stop
        self.lost = threading.Event()
        self._stop = threading.Event()
        self.executor: Executor | None = None  # the confined process that runs the job's passes and measurements

    # --- lease ---------------------------------------------------------------------------------------
    def claim(self) -> bool:
        with session_scope() as session:
            self.token = jobs.claim(session, self.job_id, self.owner, self._expiry())
            if self.token is not None:
                webhooks.record_by_id(session, self.job_id, "running")
        return self.token is not None

    def _expiry(self):
        return utcnow() + timedelta(seconds=self.settings.lease_s)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.settings.lease_s / 3):
            try:
                with session_scope() as session:
                    if not jobs.fenced_update(session, self.job_id, self.token, lease_expires_at=self._expiry()):
                        self.lost.set()
                        return
            except Exception:  # a database hiccup: try again at the next beat, the lease has slack
                log.exception("lease renewal failed for job %s", self.job_id)

    def update(self, **values: Any) -> None:
        self._fenced(lambda session: None, **values)

    def _fenced(self, work: Callable[[Session], Any], **values: Any) -> Any:
        """``values`` written to the job and ``work`` done in one transaction, only while this runner holds
        the lease; retried when the database drops the connection (a restart)."""
        def unit(session: Session) -> Any:
            if not jobs.fenced_update(session, self.job_id, self.token, **values):
                raise LeaseLost(self.job_id)
            return work(session)

        return with_retries(unit)

    def log(self, message: str, level: str = "info") -> None:
        """A line of the job's log (``GET /v1/jobs/{id}/logs``), mirrored to the process log."""
        log.log(logging.getLevelName(level.upper()), "%s", message.splitlines()[0] if message else "")
        with_retries(lambda session: jobs.add_log(session, self.job_id, message, level))

    def cancelled(self) -> bool:
        """Whether a pass should stop: cancellation was requested, or a goal search's time budget is spent.
        Past the job's time limit it raises :class:`TimeLimitExceeded`, and :class:`HandBack` when its worker
        is shutting down."""
        if self.lost.is_set():
            raise LeaseLost(self.job_id)
        if time.monotonic() > self.time_limit_at:
            raise TimeLimitExceeded(f"the job ran past its time limit of {self.time_limit_s} s")
        return (self.deadline is not None and search_clock() > self.deadline) or self._cancel_requested()

    def _cancel_requested(self) -> bool:
        cancel, handback = with_retries(lambda session: jobs.requests(session, self.job_id))
        if handback:
            raise HandBack(self.job_id)
        return cancel

    # --- the run -------------------------------------------------------------------------------------
    def run(self) -> None:
        if not self.claim():
            log.info("job %s is not claimable (finished, cancelled or leased elsewhere)", self.job_id)
            return
        beat = threading.Thread(target=contextvars.copy_context().run, args=(self._heartbeat,),
                                name=f"lease-{self.job_id}", daemon=True)
        beat.start()
        root = Path(tempfile.mkdtemp(prefix=f"tensorpress-{self.job_id}-"))
        try:
            self._run(root)
        except LeaseLost:
            log.warning("lease of job %s was lost; another worker owns it", self.job_id)
        finally:
            if self.executor is not None:
                self.executor.close()
            self._stop.set()
            beat.join(timeout=5)
            shutil.rmtree(root, ignore_errors=True)

    def _load(self, steps: list[dict]) -> tuple[dict, str, str]:
        """Fill ``steps`` with the job's steps; return its target and the storage key and format of the
        model it starts from."""
        with session_scope() as session:
            job = session.get(Job, self.job_id)
            steps.extend(dict(s) for s in job.steps)
            model = session.get(Model, job.model_id)
            if model is None:
                raise ValueError(f"model {job.model_id} was deleted")
            self.model = {"inputs": model.inputs, "outputs": model.outputs,
                          "dim_defaults": model.details.get("dim_defaults", {})}
            source = session.get(Artifact, job.source_artifact_id) if job.source_artifact_id else model
            self.datasets = {role: self.store.path(d.storage_key) for role, dataset_id in job.datasets.items()
                             if (d := session.get(Dataset, dataset_id)) is not None}
            refs = {getattr(spec.params.model_validate(s["params"]), ref) for s in job.steps
                    if (spec := REGISTRY.get(s["pass"])) for ref in spec.model_refs}
            self.models = {m.id: (self.store.path(m.storage_key), m.format) for model_id in refs - {None}
                           if (m := session.get(Model, model_id)) is not None}
            self.evaluation = dict(job.evaluation)
            self.alternatives = [[dict(s) for s in alternative] for alternative in job.alternatives]
            self.goal = job.goal
            self.time_limit_s = min(job.time_limit_s or self.time_limit_s, self.time_limit_s)
            self.time_limit_at = time.monotonic() + self.time_limit_s
            if job.attempt > 1:  # an earlier attempt died: start over, nothing of it is kept
                _reset(steps)
                self._drop_artifacts(session)
            self.tenant = job.tenant
            self.cache_key = self._cache_key(job, model, source, session)
            self.log(f"attempt {job.attempt} started by {self.owner}")
            return dict(job.target), source.storage_key, source.format

    def _cache_key(self, job: Job, model: Model, source: Model | Artifact, session) -> str:
        datasets = {role: d.sha256 for role, dataset_id in job.datasets.items()
                    if (d := session.get(Dataset, dataset_id)) is not None}
        referenced = {m.id: m.sha256 for model_id in self.models if (m := session.get(Model, model_id))}
        device = job.target.get("device", "cpu")
        material = {
            "tenant": job.tenant, "model": model.sha256, "source": source.sha256, "models": referenced,
            "steps": [[{"pass": s["pass"], "params": s["params"]} for s in recipe]
                      for recipe in (job.steps, *job.alternatives)], "goal": job.goal, "datasets": datasets,
            "evaluation": job.evaluation, "target": job.target,
            "measuring": [self.settings.bench_threads, self.settings.bench_iterations, self.settings.bench_min_time_s],
            "toolchain": versions(), "python": platform.python_version(),
            "machine": measure.gpu_name() if device == "cuda" else measure.machine()["cpu"],
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def _reuse_cached(self) -> bool:
        """Finish this job with the results of an earlier one with the same cache key, if there is one."""
        with session_scope() as session:
            hit = jobs.cached_result(session, self.tenant, self.cache_key, self.job_id)
            if hit is None:
                return False
            hit_id, steps, metrics = hit.id, copy.deepcopy(hit.steps), copy.deepcopy(hit.metrics)
            regressed, regressions = hit.regressed, list(hit.regressions)
            originals = [(new_id(), a) for a in hit.artifacts]
            for _, artifact in originals:
                session.expunge(artifact)
        keys = {artifact_id: f"artifacts/{artifact_id}/{artifact.filename}" for artifact_id, artifact in originals}
        for artifact_id, artifact in originals:
            self.store.copy(artifact.storage_key, keys[artifact_id])
        renamed = {artifact.id: artifact_id for artifact_id, artifact in originals}
        for record in (*(step.get("metrics", {}) for step in steps), *metrics.get("candidates", []),
                       metrics.get("goal", {})):
            if record.get("artifact_id"):
                record["artifact_id"] = renamed[record["artifact_id"]]
        with session_scope() as session:
            on_commit(session, None, rollback=lambda: [self.store.delete_prefix(f"artifacts/{artifact_id}")
                                                       for artifact_id, _ in originals])
            if not jobs.fenced_update(session, self.job_id, self.token, state="succeeded", steps=steps,
                                      metrics={**metrics, "cache": {"job_id": hit_id}}, cache_hit=True,
                                      regressed=regressed, regressions=regressions, progress=1.0,
                                      current_step=None, finished_at=utcnow(), lease_expires_at=None):
                raise LeaseLost(self.job_id)
            webhooks.record_by_id(session, self.job_id, "succeeded")
            for artifact_id, artifact in originals:
                session.add(Artifact(id=artifact_id, tenant=self.tenant, job_id=self.job_id, step=artifact.step,
                                     format=artifact.format, filename=artifact.filename, size_bytes=artifact.size_bytes,
                                     sha256=artifact.sha256, storage_key=keys[artifact_id],
                                     metadata_={**artifact.metadata_, "cached_from": artifact.id}))
        self.log(f"cache hit: job {hit_id} ran this recipe on the same model, data, target and toolchain; its "
                 f"{len(originals)} artifact(s) and metrics are reused and no step runs")
        return True

    def _confined(self, root: Path, key: str, fmt: str) -> Executor:
        """The job's confined process; refused for user programs where this kernel cannot confine them."""
        formats = {fmt, *(f for _, f in self.models.values())} & set(PROGRAMS)
        support = probe()
        if formats and not support.complete and not self.settings.allow_unconfined:
            raise RuntimeError(f"this worker cannot confine user programs ({support.describe()['mechanism']}); "
                               f"{', '.join(sorted(formats))} models are refused unless "
                               "TENSORPRESS_ALLOW_UNCONFINED=true")
        readable = [self.store.path(key), *self.datasets.values(), *(path for path, _ in self.models.values())]
        return Executor(root, readable, self.cancelled)

    def _run(self, root: Path) -> None:
        steps: list[dict] = []
        try:
            target, key, fmt = self._load(steps)
            self.update(cache_key=self.cache_key)
            if self.settings.cache == "on" and self._reuse_cached():
                return
            self.update(progress=0.0, current_step=None)
            self.executor = self._confined(root, key, fmt)
            source = materialize(self.store.path(key), key, self.executor.work / "source"), fmt
            eval_feeds, labels, inputs = self._evaluation_data(target)
            original, reference = self._measure(*source, target, eval_feeds, labels)
            self.update(metrics={"original": original})
            base = Baseline(source, target, original, reference, eval_feeds, labels, inputs)
            if self.goal:
                self._search(steps, base)
            else:
                self._first_good(steps, base)
        except Cancelled:
            self._mark_rest(steps, "cancelled")
            self.log("cancelled")
            self._finish("cancelled", steps)
        except HandBack:
            self._hand_back(steps)
        except LeaseLost:
            raise
        except Exception as exc:
            self._fail(steps, exc)

    def _hand_back(self, steps: list[dict]) -> None:
        """The worker is shutting down: give the job back as it was before this attempt (queued, the attempt
        not counted, its artifacts dropped) and send it again, so another worker runs it from the start."""
        _reset(steps)

        def release(session: Session) -> str:
            self._drop_artifacts(session)
            jobs.add_log(session, self.job_id, f"handed back by {self.owner}, which is shutting down", "warning")
            return session.get(Job, self.job_id).queue

        queue = self._fenced(release, state="queued", steps=steps, attempt=Job.attempt - 1, progress=0.0,
                             current_step=None, lease_owner=None, lease_expires_at=None, enqueued_at=None,
                             handback_requested=False)
        with contextlib.suppress(Exception):  # else the recovery loop sends it (enqueued_at is null)
            dispatch(self.job_id, queue)

    def _fail(self, steps: list[dict], exc: Exception) -> None:
        # A failure in the confined process carries its own traceback and exception name.
        trace, kind = getattr(exc, "trace", "") or traceback.format_exc(), getattr(exc, "kind", type(exc).__name__)
        self.log(f"failed{'' if self.current is None else f' in step {self.current}'}: {exc}\n{trace}",
                 level="error")
        self._mark_rest(steps, "skipped", failed=self.current)
        self._finish("failed", steps, error=JobFailed(str(exc) or kind, step=self.current, exception=kind).to_problem())

    def _first_good(self, steps: list[dict], base: Baseline) -> None:
        """Steps and presets: run the recipe; when a preset's result fails the gate, its next candidate from
        the original, and so on. The job keeps the first result that passes (or the last one)."""
        candidates, tried = [[dict(s) for s in steps], *self.alternatives], []
        for number, candidate in enumerate(candidates, start=1):
            if number > 1:  # the previous candidate regressed: start again from the original
                steps[:] = candidate
                self._discard_artifacts()
                tried[-1]["artifact_id"] = None
                self.update(steps=steps, progress=0.0)
            result, entry = self._try(number, steps, steps, base)
            tried.append(entry)
            if not entry["regressions"] or number == len(candidates):
                break
            self.log(f"candidate {number} of {len(candidates)} regressed ({'; '.join(entry['regressions'])}); "
                     "trying the next", level="warning")
        self.log(f"result: {result['size_bytes']} bytes "
                 f"({result['size_bytes'] / base.original['size_bytes']:.2f}× the original), "
                 f"fidelity {result['fidelity']}")
        for reason in entry["regressions"]:
            self.log(f"regression: {reason}", level="warning")
        metrics = {"original": base.original, "result": result, "metric": entry["metric"], "candidates": tried,
                   "metric_original": scoring.original_value(base.original, result, entry["metric"])}
        self._finish("succeeded", steps, metrics=metrics, progress=1.0, regressed=bool(entry["regressions"]),
                     regressions=entry["regressions"])

    def _try(self, number: int, candidate: list[dict], steps: list[dict], base: Baseline) -> tuple[dict, dict]:
        """Run one candidate recipe from the original model; its measured result and a summary of it against
        the original (size, latency, the budget's metric, its loss, the objective's score, regressions)."""
        path, fmt = base.source
        for step in candidate:
            self.current = step["index"]
            if self.cancelled():
                raise Cancelled("cancellation requested")
            path, fmt = self._run_step(step, steps, path, fmt, f"candidate{number}-step{step['index']}", base.target)
        self.current = None
        result, outputs = self._measure(path, fmt, base.target, base.eval_feeds, base.labels)
        result["fidelity"] = {**scoring.fidelity(base.reference, outputs), "inputs": base.inputs}
        metric = scoring.budget_metric(self.evaluation.get("metric"), result, base.labels)
        budget, objective = self.evaluation.get("max_accuracy_drop"), base.target["objective"]
        regressions = scoring.regressions(base.original, result, metric, budget, objective)
        score = scoring.objective_score(base.original, result, objective)
        entry = {"candidate": number, "steps": [s["pass"] for s in candidate], "status": "measured",
                 "artifact_id": candidate[-1]["metrics"]["artifact_id"], "size_bytes": result["size_bytes"],
                 "latency_p50_ms": {batch: stats["p50"] for batch, stats in result["latency_ms"].items()},
                 "metric": metric, "value": scoring.metric_value(result, metric),
                 "loss": scoring.metric_loss(base.original, result, metric), "score": score,
                 "regressions": regressions}
        return result, entry

    def _search(self, steps: list[dict], base: Baseline) -> None:
        """Goal jobs: try the candidates in order until the time budget is spent, skipping a group's milder
        levels once one met the goal, then stack the best structural and the best other candidate; keep the
        best that met the goal (else the closest, flagged), recording the best so far after each candidate.
        A cancelled search keeps what it found."""
        goal = self.goal
        deadline = search_clock() + goal["time_budget_s"]
        plan = [dict(c) for c in goal["candidates"]]
        tried: list[dict] = []
        met: dict[str, int] = {}  # by group: the most aggressive level that met the goal
        lost: dict[str, int] = {}  # by group: the mildest level that lost more than the budget
        best: tuple[dict, dict] | None = None
        for described in plan:
            number, group, level = described["candidate"], described["group"], described.get("level", 0)
            candidate = [s for s in steps if s.get("candidate") == number]
            skip = (f"a more aggressive level of {group} already met the goal" if level > met.get(group, level)
                    else f"a milder level of {group} already lost too much" if level < lost.get(group, level)
                    else "the time budget was spent" if tried and search_clock() > deadline else None)
            if skip:
                self._mark_rest(candidate, "skipped")
                entry = {"candidate": number, "steps": [s["pass"] for s in candidate], "status": "skipped",
                         "reason": skip}
            else:
                self.deadline = deadline if tried else None  # the first candidate always finishes
                try:
                    result, entry = self._try(number, candidate, steps, base)
                except Cancelled:
                    if self._cancel_requested():
                        self._mark_rest(steps, "cancelled")
                        self.log("cancelled; the job keeps the candidates measured so far")
                        self._settle(steps, tried, best, base, "cancelled")
                        return
                    entry = self._abandon(candidate, "stopped", "the time budget was spent during this candidate")
                except (LeaseLost, TimeLimitExceeded, HandBack):
                    raise
                except Exception as exc:  # one technique failing does not end the search
                    self.log(f"candidate {number} failed in step {self.current}: {exc}\n{traceback.format_exc()}",
                             level="warning")
                    entry = self._abandon(candidate, "failed", f"{type(exc).__name__}: {exc}")
                finally:
                    self.deadline = None
                    self.current = None
            entry["group"] = group
            tried.append(entry)
            if entry["status"] == "measured":
                self._discard_artifacts(keep=entry["artifact_id"], step_indices=[s["index"] for s in candidate])
                for step in candidate[:-1]:
                    step["metrics"]["artifact_id"] = None
                entry["meets_goal"] = not entry["regressions"] and entry["score"] < 1
                if entry["meets_goal"]:
                    met[group] = min(level, met.get(group, level))
                if (entry["loss"] or 0) > goal["max_accuracy_drop"]:
                    lost[group] = max(level, lost.get(group, level))
                if best is None or _rank(entry, goal) < _rank(best[0], goal):
                    best = entry, result
                self.log(f"candidate {number} ({group}: {' → '.join(entry['steps'])}): {entry['metric']} "
                         f"{entry['value']}, score {entry['score']:.3f} of the original's "
                         f"{goal['objective']}{'' if entry['meets_goal'] else ' — does not meet the goal'}")
            if described is plan[-1] and (stacked := _stack(steps, plan, tried)):
                plan.append(stacked)
            self.update(steps=steps, metrics=self._search_metrics(tried, best, base))
        self._settle(steps, tried, best, base, "succeeded")

    def _abandon(self, candidate: list[dict], status: str, reason: str) -> dict:
        """Close a candidate that did not finish (the step it was in, the rest skipped) and drop what it stored."""
        now = utcnow().isoformat()
        for step in candidate:
            if step["index"] == self.current:
                step.update(status="failed" if status == "failed" else "cancelled", finished_at=now)
            elif step["status"] in ("pending", "running"):
                step.update(status="skipped")
            if step["metrics"].get("artifact_id"):
                step["metrics"]["artifact_id"] = None
        self._discard_artifacts(step_indices=[s["index"] for s in candidate])
        return {"candidate": candidate[0]["candidate"], "steps": [s["pass"] for s in candidate], "status": status,
                "reason": reason}

    def _search_metrics(self, tried: list[dict], best: tuple[dict, dict] | None, base: Baseline) -> dict:
        metrics = {"original": base.original, "candidates": tried,
                   "goal": {"objective": self.goal["objective"], "max_accuracy_drop": self.goal["max_accuracy_drop"],
                            "time_budget_s": self.goal["time_budget_s"], "met": bool(best and best[0]["meets_goal"]),
                            "best": best[0]["candidate"] if best else None,
                            "artifact_id": best[0]["artifact_id"] if best else None}}
        if best:
            metrics.update(result=best[1], metric=best[0]["metric"],
                           metric_original=scoring.original_value(base.original, best[1], best[0]["metric"]))
        return metrics

    def _settle(self, steps: list[dict], tried: list[dict], best: tuple[dict, dict] | None, base: Baseline,
                state: str) -> None:
        """Finish a search with its best candidate, or the closest to the goal, flagged."""
        if best is None and state == "succeeded":
            raise RuntimeError("no candidate could be measured: " + "; ".join(
                f"candidate {t['candidate']} {t['status']}: {t['reason']}" for t in tried if t["status"] != "skipped"))
        regressions = []
        if best and not best[0]["meets_goal"]:
            entry = best[0]
            regressions = [f"no candidate met the goal; candidate {entry['candidate']} ({' → '.join(entry['steps'])}) "
                           "came closest", *(entry["regressions"] or [f"not better than the original on "
                                                                      f"{self.goal['objective']}"])]
        for reason in regressions:
            self.log(f"regression: {reason}", level="warning")
        if best:
            self.log(f"best: candidate {best[0]['candidate']}, {best[0]['size_bytes']} bytes, score "
                     f"{best[0]['score']:.3f}, artifact {best[0]['artifact_id']}")
        self._finish(state, steps, metrics=self._search_metrics(tried, best, base), regressed=bool(regressions),
                     regressions=regressions, **({"progress": 1.0} if state == "succeeded" else {}))

    def _discard_artifacts(self, keep: str | None = None, step_indices: list[int] | None = None) -> None:
        """Drop artifacts the job does not keep: a regressed preset candidate's (all of the job's), or a
        search candidate's intermediate ones (``step_indices`` but ``keep``)."""
        self._fenced(lambda session: self._drop_artifacts(session, step_indices, keep),
                     lease_expires_at=self._expiry())

    def _drop_artifacts(self, session: Session, step_indices: list[int] | None = None,
                        keep: str | None = None) -> None:
        """Delete the job's artifact rows (of ``step_indices``, never ``keep``) now, their bytes after commit."""
        prefixes = jobs.delete_artifacts(session, self.job_id, steps=step_indices, keep=keep)
        on_commit(session, lambda: [self.store.delete_prefix(prefix) for prefix in prefixes])

    def _evaluation_data(self, target: dict):
        """Inputs (and labels) that original and result are compared on: the evaluation dataset, or
        generated inputs when the job has none."""
        if "evaluation" in self.datasets:
            feeds, labels = measure.load_dataset(self.datasets["evaluation"], limit=EVAL_SAMPLES)
            return feeds, labels, f"evaluation dataset ({len(next(iter(feeds.values())))} samples)"
        batch = max(target["batch_sizes"])
        feeds = measure.generate_inputs(self.model["inputs"], batch, target.get("inputs", {}), seed=1,
                                           dim_defaults=self.model["dim_defaults"])
        return feeds, None, "generated"

    def _measure(self, path, fmt, target, eval_feeds, labels):
        timing = {"min_iterations": self.settings.bench_iterations, "min_time_s": self.settings.bench_min_time_s}
        return self.executor.measure(path, fmt, self.model["inputs"], target, threads=self.settings.bench_threads,
                                     timing=timing, eval_feeds=eval_feeds, labels=labels,
                                     dim_defaults=self.model["dim_defaults"])

    def _run_step(self, step: dict, steps: list[dict], path: Path, fmt: str, label: str,
                  target: dict) -> tuple[Path, str]:
        index, total = step["index"], len(steps)
        spec = REGISTRY[step["pass"]]
        params = spec.params.model_validate(step["params"])
        step.update(status="running", started_at=utcnow().isoformat())
        self.update(steps=steps, current_step=index, progress=STEPS_SHARE * index / total)
        self.log(f"step {index} {spec.name} started with {params.model_dump(mode='json')}")
        last_progress = [0.0]

        def progress(fraction: float) -> None:
            fraction = min(max(fraction, 0.0), 1.0)
            if fraction - last_progress[0] >= 0.02 or fraction == 1.0:
                last_progress[0] = fraction
                self.update(progress=STEPS_SHARE * (index + fraction) / total)

        ctx = {"model_path": str(path), "model_format": fmt, "target": target, "device": target.get("device", "cpu"),
               "inputs": self.model["inputs"], "outputs": self.model["outputs"],
               "dim_defaults": self.model["dim_defaults"],
               "datasets": {role: str(p) for role, p in self.datasets.items()},
               "models": {ref: [str(p), f] for ref, (p, f) in self.models.items()}}
        result, file = self.executor.run_pass(label, spec.name, params.model_dump(mode="json"), ctx, progress,
                                              lambda message: self.log(f"step {index}: {message}"))
        artifact = self._store_artifact(index, spec.name, result, file)
        step.update(status="succeeded", finished_at=utcnow().isoformat(),
                    metrics={**result.metrics, "artifact_id": artifact["id"], "size_bytes": artifact["size"]})
        self.update(steps=steps, progress=STEPS_SHARE * (index + 1) / total)
        self.log(f"step {index} {spec.name} succeeded: {artifact['size']} bytes, artifact {artifact['id']}")
        return result.model_path, result.format

    def _store_artifact(self, index: int, pass_name: str, result, file: Path) -> dict[str, Any]:
        """Store ``file`` (this process's copy of the pass's output) as the step's artifact."""
        artifact_id = new_id()
        filename = f"{self.job_id[:8]}-step{index}-{pass_name}.{EXTENSIONS.get(result.format, 'bin')}"
        key = f"artifacts/{artifact_id}/{filename}"

        def record(session: Session) -> int:  # bytes and row land together, or neither (a retry puts both again)
            on_commit(session, None, rollback=lambda: self.store.delete_prefix(f"artifacts/{artifact_id}"))
            size, sha256 = self.store.put_file(file, key)
            session.add(Artifact(id=artifact_id, tenant=self.tenant, job_id=self.job_id, step=index,
                                 format=result.format, filename=filename, size_bytes=size, sha256=sha256,
                                 storage_key=key, metadata_={"pass": pass_name, **result.metadata}))
            return size

        return {"id": artifact_id, "size": self._fenced(record, lease_expires_at=self._expiry())}

    def _mark_rest(self, steps: list[dict], status: str, failed: int | None = None) -> None:
        """Close the steps that did not finish: the failed one, and the rest as ``status``."""
        now = utcnow().isoformat()
        for step in steps:
            if step["index"] == failed:
                step.update(status="failed", finished_at=now)
            elif step["status"] in ("pending", "running"):
                step.update(status=status, finished_at=now if step["status"] == "running" else None)

    def _finish(self, state: str, steps: list[dict], **values: Any) -> None:
        """The final write, with the webhook events of the new state in the same transaction."""
        self._fenced(lambda session: webhooks.record_by_id(session, self.job_id, state), state=state, steps=steps,
                     finished_at=utcnow(), lease_expires_at=None, current_step=None, **values)


def run_job(job_id: str, owner: str) -> None:
    token = JOB_ID.set(job_id)  # every log record of this job carries its id
    try:
        JobRun(job_id, owner).run()
    finally:
        JOB_ID.reset(token)
