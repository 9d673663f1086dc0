from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TensorSpec(BaseModel):
    name: str
    dtype: str = Field(description="numpy spelling: float32, int64, …")
    shape: list[int | str] = Field(description="sizes; a string names a symbolic (dynamic) dimension")


class ModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    format: str = Field(description="onnx | torchscript | torch_export")
    size_bytes: int
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: int
    details: dict[str, Any] = Field(description="opsets, producer, operator counts")
    created_at: datetime


class ModelList(BaseModel):
    items: list[ModelRead]
    next_cursor: str | None
