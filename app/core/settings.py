"""Server settings: the one place the server reads its environment.

Every variable has the prefix ``TENSORPRESS_``. Defaults give the embedded setup (one machine, nothing else
installed): SQLite, artifacts and a file-based Celery broker, all under ``TENSORPRESS_DATA_DIR``, which is
``./.tensorpress`` in the *current directory* (so two checkouts never share state by accident).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Settings of the API and the workers (see DESIGN.md, "Settings")."""

    model_config = SettingsConfigDict(env_prefix="TENSORPRESS_", extra="ignore")

    data_dir: Path = Field(
        default=Path(".tensorpress"),
        description="SQLite file, local artifacts and local broker folders; relative to the current directory.",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file `tensorpress.db` in the data dir."
    )
    db_pool_size: int = Field(default=10, ge=1, description="Database connections kept open per process.")
    db_max_overflow: int = Field(default=30, ge=0, description="Extra connections a busy process may open.")
    broker_url: str = Field(
        default="filesystem://",
        description="Celery broker; `filesystem://` keeps messages in the data dir (no server needed).",
    )
    storage_url: str | None = Field(
        default=None, description="`file:///path` or `s3://bucket/prefix` for the artifact store; default: "
        "`artifacts/` in the data dir."
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, Ceph, R2); "
                                        "default: AWS.")
    s3_region: str | None = Field(default=None, description="S3 region.")
    s3_access_key_id: str | None = Field(default=None, description="S3 credentials (default: boto3's chain).")
    s3_secret_access_key: str | None = Field(default=None, description="S3 credentials.")
    s3_multipart_bytes: int = Field(default=64 << 20, ge=5 << 20, description="Objects above this size upload in "
                                    "parts of this size.")
    s3_presigned_downloads: bool = Field(default=False, description="Downloads redirect (307) to a presigned "
                                         "URL instead of streaming through the API.")
    max_upload_bytes: int = Field(default=8 << 30, gt=0, description="Largest model upload.")
    max_dataset_bytes: int = Field(default=2 << 30, gt=0, description="Largest dataset upload (workers load "
                                   "datasets into memory).")
    max_json_bytes: int = Field(default=1 << 20, gt=0, description="Largest JSON request body.")
    max_header_bytes: int = Field(default=16 << 10, ge=1024, description="Largest request head (all header "
                                  "lines together); past it, 431.")
    body_idle_timeout_s: float = Field(default=60.0, gt=0, description="A request body that sends nothing for "
                                       "this long is dropped with 408 (its staging file removed).")
    max_steps: int = Field(default=32, ge=1, description="Most steps in one recipe.")
    max_active_jobs: int = Field(default=16, ge=1, description="Queued and running jobs per tenant; a job past "
                                 "it is refused with 429 and Retry-After.")
    max_stored_bytes: int = Field(default=200 << 30, gt=0, description="Models, datasets and artifacts kept per "
                                  "tenant; an upload past it is refused with 413.")
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60, description="How long an Idempotency-Key and its "
                                   "response are kept.")
    webhook_allow_private: bool = Field(default=False, description="Allow webhooks to private, loopback and "
                                        "link-local addresses (checked after DNS resolution).")
    webhook_max_attempts: int = Field(default=8, ge=1, description="Deliveries of one event before giving up.")
    webhook_retry_base_s: float = Field(default=10.0, gt=0, description="First retry delay; doubles each attempt, "
                                        "at most an hour.")
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="Time a webhook receiver has to answer.")
    public_url: str | None = Field(default=None, description="The API's external base URL, for absolute links "
                                   "in webhook payloads (relative links without it).")
    rate_limit_per_minute: int = Field(default=600, ge=0, description="Requests per API key (per tenant "
                                       "without auth) and API process; 0 = unlimited.")
    auth: Literal["disabled", "required"] = Field(
        default="disabled", description="`disabled` is refused unless the server listens on loopback only."
    )
    cache: Literal["on", "off"] = Field(default="on", description="Content-addressed result cache.")
    job_time_limit_s: int = Field(default=6 * 3600, gt=0, description="Hard limit for one job attempt.")
    job_memory_bytes: int = Field(default=0, ge=0, description="Address-space limit of a job's process on CPU "
                                  "machines; 0 = 80% of RAM (none on GPU machines).")
    job_nice: int = Field(default=10, ge=0, le=19, description="Niceness added to job processes, so the API "
                          "and status polls stay responsive while jobs compute.")
    lease_s: int = Field(default=60, ge=2, description="Job lease; a worker renews it every third of this.")
    max_attempts: int = Field(default=3, ge=1, description="Deliveries of a job before it fails for good.")
    inspect_memory_bytes: int = Field(
        default=8 << 30, gt=0, description="Address-space limit of the child process that inspects an upload."
    )
    archive_max_entries: int = Field(default=10_000, gt=0, description="Entries allowed in an uploaded zip.")
    archive_max_expanded_bytes: int = Field(
        default=32 << 30, gt=0, description="Total size an uploaded zip may expand to."
    )
    archive_max_ratio: float = Field(default=200.0, gt=1, description="Largest compression ratio of a zip entry.")
    inspect_timeout_s: int = Field(default=120, gt=0, description="Time limit for inspecting one upload.")
    allow_unconfined: bool = Field(
        default=False, description="Run TorchScript and .pt2 programs even where this kernel cannot confine them "
        "(no Landlock ABI >= 6 or no seccomp): they could then read and write what the service can. Off: such "
        "uploads and jobs are refused (app/core/confinement.py, docs/security.md).")
    retention_days: float = Field(default=0, ge=0, description="Finished jobs older than this are deleted with "
                                  "their artifacts by the workers' recovery loop; 0 keeps them.")
    resend_after_s: int = Field(default=60, ge=1, description="A queued job sent this long ago is sent again when "
                                "its broker queue is empty (the broker lost the message: a restart, a purge).")
    heartbeat_s: int = Field(default=10, ge=1, description="How often workers report; 3 missed beats = gone.")
    fake_gpu_queue: bool = Field(
        default=False, description="Tests only: let a worker without a GPU serve the gpu queue."
    )
    log_format: Literal["text", "json"] = Field(default="text", description="Process logs: text, or a JSON object "
                                                "per line (with job_id while a job runs).")
    events_poll_s: float = Field(default=0.5, gt=0, description="How often the event streams' one poller reads "
                                 "the jobs they follow.")
    events_max_per_tenant: int = Field(default=32, ge=1, description="Open event streams per tenant (API "
                                       "process); past it, 429 with Retry-After.")
    events_max_total: int = Field(default=256, ge=1, description="Open event streams in all (API process).")
    bench_threads: int = Field(default=2, ge=1, description="Intra-op threads used when measuring latency.")
    bench_iterations: int = Field(default=100, ge=5, description="Fewest timed runs per batch size when measuring.")
    bench_min_time_s: float = Field(
        default=1.0, ge=0, description="Fewest seconds of timed runs per batch size (fast models get more runs)."
    )

    @property
    def archive_limits(self) -> dict[str, float]:
        return {"max_entries": self.archive_max_entries, "max_expanded_bytes": self.archive_max_expanded_bytes,
                "max_ratio": self.archive_max_ratio}

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'tensorpress.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        if self.storage_url:
            if not self.storage_url.startswith("file://"):
                raise ValueError(f"TENSORPRESS_STORAGE_URL {self.storage_url!r} is not a directory")
            return Path(self.storage_url.removeprefix("file://"))
        return (self.data_dir / "artifacts").resolve()

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
