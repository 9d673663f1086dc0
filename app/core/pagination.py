"""Cursor pagination shared by every list: newest first, ``{"items": [...], "next_cursor": ...}``."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from app.core.errors import ValidationFailed

T = TypeVar("T")


class Page:
    """Query parameters ``limit`` and ``cursor``."""

    def __init__(self, limit: int = Query(50, ge=1, le=200), cursor: str | None = Query(None)) -> None:
        self.limit = limit
        self.cursor = cursor


PageDep = Annotated[Page, Depends()]


def paginate(session: Session, stmt: Select, entity: Any, page: Page) -> tuple[list[Any], str | None]:
    if page.cursor:
        created_at, last_id = _decode(page.cursor)
        stmt = stmt.where(or_(entity.created_at < created_at,
                              and_(entity.created_at == created_at, entity.id < last_id)))
    rows = list(session.scalars(stmt.order_by(entity.created_at.desc(), entity.id.desc())
                                .limit(page.limit + 1)))
    next_cursor = None
    if len(rows) > page.limit:
        rows = rows[: page.limit]
        last = rows[-1]
        next_cursor = base64.urlsafe_b64encode(
            json.dumps([last.created_at.isoformat(), last.id]).encode()).decode()
    return rows, next_cursor


def _decode(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, last_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(created_at), str(last_id)
    except Exception as exc:
        raise ValidationFailed.at(["query", "cursor"], "invalid cursor") from exc
