"""Process logs: plain text, or one JSON object a line (``TENSORPRESS_LOG_FORMAT=json``) for log pipelines.
Every record made while a job runs carries its ``job_id``."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

from app.core.settings import get_settings

JOB_ID: ContextVar[str | None] = ContextVar("job_id", default=None)


class _JobId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = JOB_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
                 "process": record.process}
        if getattr(record, "job_id", None):
            entry["job_id"] = record.job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging() -> None:
    """One stderr handler on the root logger, in the configured format, at INFO."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_JobId())
    handler.setFormatter(JsonFormatter() if get_settings().log_format == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s%(job_id_text)s: %(message)s"))
    if get_settings().log_format != "json":
        handler.addFilter(_with_job_text)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _with_job_text(record: logging.LogRecord) -> bool:
    record.job_id_text = f" [job {record.job_id}]" if getattr(record, "job_id", None) else ""
    return True
