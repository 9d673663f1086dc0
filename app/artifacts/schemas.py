from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ArtifactRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    job_id: str
    step: int = Field(description="Index of the step that made it")
    format: str
    filename: str
    size_bytes: int
    sha256: str
    metadata: dict[str, Any] = Field(validation_alias="metadata_",
                                     description="Runtime versions, device, anything needed to run it")
    created_at: datetime
