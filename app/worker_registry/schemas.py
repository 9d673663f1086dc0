from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class WorkerRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    queues: list[str]
    device: dict[str, Any]
    passes: list[str]
    versions: dict[str, str]
    confinement: dict[str, Any]
    started_at: datetime
    last_seen: datetime


class WorkerList(BaseModel):
    items: list[WorkerRead]
