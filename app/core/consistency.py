"""Storage and database agree: no stored bytes without a row, no row without its bytes.

``tensorpress check`` reports both (exit status 1 when anything is wrong); ``--fix`` deletes stored bytes that
no row has claimed for an hour (younger ones may belong to an upload or a step being recorded right now) and
staging files older than a day. Rows whose bytes are missing are reported, never deleted: that needs a person.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.storage import Store
from app.models import Artifact, Dataset, Model

ORPHAN_GRACE_S = 3600
STAGING_GRACE_S = 24 * 3600
TABLES = {"models": Model, "datasets": Dataset, "artifacts": Artifact}


@dataclass
class Report:
    orphans: list[str] = field(default_factory=list)  # storage prefixes no row claims
    missing: list[str] = field(default_factory=list)  # "<table> <id>: <key>" whose bytes are gone or short
    removed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or set(self.orphans) - set(self.removed))


def check(session: Session, store: Store, fix: bool = False, now: float | None = None) -> Report:
    now = now or time.time()
    report = Report()
    for top, table in TABLES.items():
        rows = {row.id: row for row in session.scalars(select(table))}
        for prefix, mtime in store.entries(top):
            if prefix.split("/", 1)[1] not in rows:
                report.orphans.append(prefix)
                if fix and now - mtime > ORPHAN_GRACE_S:
                    store.delete_prefix(prefix)
                    report.removed.append(prefix)
        for row in rows.values():
            if store.size_or_none(row.storage_key) != row.size_bytes:
                report.missing.append(f"{top} {row.id}: {row.storage_key}")
    for path, mtime in store.staged():
        if fix and now - mtime > STAGING_GRACE_S:
            path.unlink(missing_ok=True)
            report.removed.append(f".staging/{path.name}")
    return report
