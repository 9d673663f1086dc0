from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.mlmodels.schemas import TensorSpec


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    format: str = Field(description="npz")
    size_bytes: int
    sha256: str
    arrays: list[TensorSpec]
    samples: int = Field(description="Length of every array's first dimension")
    created_at: datetime


class DatasetList(BaseModel):
    items: list[DatasetRead]
    next_cursor: str | None
