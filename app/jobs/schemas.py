from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.artifacts.schemas import ArtifactRead

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
StepStatus = Literal["pending", "running", "succeeded", "failed", "skipped", "cancelled"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepCreate(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    pass_: str = Field(alias="pass", description="Registered pass name, e.g. quantize.dynamic")
    params: dict[str, Any] = Field(default_factory=dict, description="Validated against the pass's schema")


class InputBounds(_Strict):
    shape: list[int] | None = Field(None, description="Concrete shape to generate, batch dimension included")
    low: float | None = Field(None, description="Smallest generated value (inclusive)")
    high: float | None = Field(None, description="Upper bound of generated values (exclusive for integers)")


class Target(_Strict):
    device: Literal["cpu", "cuda"] = "cpu"
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1, max_length=8)
    objective: Literal["latency", "size"] = "latency"
    inputs: dict[str, InputBounds] = Field(default_factory=dict,
                                           description="Per-input shape and value bounds for generated inputs")

    @model_validator(mode="after")
    def _positive(self) -> Target:
        if any(b < 1 or b > 4096 for b in self.batch_sizes):
            raise ValueError("batch sizes must be between 1 and 4096")
        return self


LabelMetric = Literal["accuracy", "top5_accuracy", "f1_macro", "mse", "mae"]
FidelityMetric = Literal["top1_agreement", "cosine", "cosine_min", "max_abs_error"]


class Evaluation(_Strict):
    metric: LabelMetric | FidelityMetric | None = Field(
        None, description="What max_accuracy_drop applies to. Label metrics need an evaluation dataset with "
        "labels; by default accuracy (macro F1 when the labels are imbalanced), mse for float targets, else "
        "top1_agreement for classifier-like outputs and cosine otherwise")
    max_accuracy_drop: float | None = Field(None, ge=0, description="Absolute, in the metric's units")


class Goal(_Strict):
    max_accuracy_drop: float = Field(ge=0, description="Largest allowed loss in evaluation.metric (absolute)")
    objective: Literal["latency", "size"] = Field("latency", description="What the search minimizes: p50 "
                                                  "latency at the target's batch sizes, or bytes")
    time_budget_s: int = Field(600, ge=10, le=7 * 24 * 3600, description="No candidate starts after this many "
                               "seconds, and running ones stop (the first candidate always finishes)")


class Webhook(_Strict):
    url: str = Field(pattern=r"^https?://", max_length=2048, description="Receives this job's state changes; "
                     "must resolve to public addresses. The signing secret is in the 202 answer only")


class JobCreate(_Strict):
    model_id: str | None = None
    artifact_id: str | None = Field(None, description="Start from an earlier job's artifact instead")
    steps: list[StepCreate] | None = Field(None, min_length=1, description="At most TENSORPRESS_MAX_STEPS")
    preset: str | None = Field(None, description="A named recipe instead of steps (GET /v1/presets)")
    goal: Goal | None = Field(None, description="An outcome instead of steps: the service searches candidate "
                              "recipes and returns the best within the accuracy budget")
    datasets: dict[str, str] = Field(default_factory=dict,
                                     description="Dataset ids by role: calibration, training, validation, evaluation")
    evaluation: Evaluation = Field(default_factory=Evaluation)
    target: Target = Field(default_factory=Target)
    webhook: Webhook | None = None
    time_limit_s: int | None = Field(None, ge=1, description="Fail an attempt that runs longer than this "
                                     "(at most, and by default, TENSORPRESS_JOB_TIME_LIMIT_S)")

    @model_validator(mode="after")
    def _one_source(self) -> JobCreate:
        if (self.model_id is None) == (self.artifact_id is None):
            raise ValueError("give exactly one of model_id or artifact_id")
        if sum(x is not None for x in (self.steps, self.preset, self.goal)) != 1:
            raise ValueError("give exactly one of steps, preset or goal")
        if self.goal is not None:
            for name, outside in (("max_accuracy_drop", self.evaluation), ("objective", self.target)):
                if name in outside.model_fields_set and getattr(outside, name) != getattr(self.goal, name):
                    raise ValueError(f"goal.{name} and the one outside the goal differ; give it once, in the goal")
        return self


class StepRead(BaseModel):
    index: int
    pass_: str = Field(alias="pass", serialization_alias="pass")
    params: dict[str, Any]
    status: StepStatus
    inserted: bool = Field(False, description="Added by the service (a format conversion, a preset's step)")
    reason: str | None = Field(None, description="Why the service added or chose this step")
    candidate: int | None = Field(None, description="Goal jobs: the candidate recipe (1, 2, …) this step is part of")
    started_at: datetime | None = None
    finished_at: datetime | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(populate_by_name=True)


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    state: JobState
    queue: str
    model_id: str
    artifact_id: str | None = Field(validation_alias="source_artifact_id")
    progress: float
    current_step: int | None
    steps: list[StepRead]
    alternatives: list[list[StepRead]] = Field(
        description="A preset's fallback recipes; metrics.candidates records which ran and why each was left")
    goal: dict[str, Any] | None = Field(description="Goal jobs: the goal and the candidates searched (their "
                                        "steps carry `candidate`); metrics.candidates has each one's results")
    webhook: dict[str, str] | None = Field(description="The job's own webhook: its url (the secret is shown only "
                                           "in the answer to the submission)")
    datasets: dict[str, str]
    evaluation: dict[str, Any]
    target: dict[str, Any]
    time_limit_s: int | None
    attempt: int
    max_attempts: int
    waiting_reason: str | None
    cache_hit: bool
    regressed: bool
    regressions: list[str]
    metrics: dict[str, Any]
    artifacts: list[ArtifactRead]
    error: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


    @field_validator("webhook")
    @classmethod
    def _no_secret(cls, webhook: dict[str, str] | None) -> dict[str, str] | None:
        return {"url": webhook["url"]} if webhook else None


class JobList(BaseModel):
    items: list[JobRead]
    next_cursor: str | None


class StepPlan(BaseModel):
    index: int
    pass_: str = Field(alias="pass", serialization_alias="pass")
    params: dict[str, Any]
    queue: str
    accepts: list[str]
    produces: str
    inserted: bool
    reason: str | None
    candidate: int | None = None


class DatasetUse(BaseModel):
    id: str
    name: str
    samples: int


class AlternativePlan(BaseModel):
    steps: list[StepPlan]


class JobPlan(BaseModel):
    """What a job would run: ``POST /v1/jobs?dry_run=true``."""

    model_id: str
    artifact_id: str | None
    source_format: str
    preset: str | None
    steps: list[StepPlan]
    alternatives: list[AlternativePlan] = Field(
        description="A preset's fallbacks, run in turn from the original when the result before fails the "
                    "regression gate")
    goal: dict[str, Any] | None = Field(
        None, description="Goal jobs: the goal, the candidates (group, reason) and what was left out and why")
    queue: str
    waiting_reason: str | None
    datasets: dict[str, DatasetUse]
    target: dict[str, Any]
    evaluation: dict[str, Any]
