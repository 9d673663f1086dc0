"""Engine and sessions. Only the request's session dependency and ``session_scope()`` commit or roll back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Annotated, TypeVar

from fastapi import Depends
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.core.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def make_engine(url: str) -> Engine:
    """An engine whose pool holds ``TENSORPRESS_DB_POOL_SIZE`` connections, plus ``TENSORPRESS_DB_MAX_OVERFLOW``
    when busy — on SQLite too (left alone, SQLAlchemy gives a file database 5 + 10, fewer than the API's 40
    threads). The defaults cover the API's thread pool: a request never waits for a connection."""
    settings = get_settings()
    pool = {"pool_size": settings.db_pool_size, "max_overflow": settings.db_max_overflow}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # API and worker processes share the file
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


@lru_cache
def get_engine() -> Engine:
    settings = get_settings()
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.resolved_database_url)


def session_factory() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A unit of work outside a request (workers, CLI): commit on success, roll back on error."""
    session = session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        _run_hooks(session, "tp_on_rollback")
        raise
    else:
        _run_hooks(session, "tp_on_commit")
    finally:
        session.close()


def with_retries(work: Callable[[Session], T], *, for_s: float = 120) -> T:
    """Run ``work`` as one unit of work; when the database connection drops (a restart, a failover, a locked
    SQLite file) run the whole unit again, backing off, for up to ``for_s`` seconds. ``work`` must be safe to
    repeat: its effects are rolled back (and its on-commit rollback hooks run) when an attempt fails."""
    deadline, delay = time.monotonic() + for_s, 0.25
    while True:
        try:
            with session_scope() as session:
                return work(session)
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database unavailable (%s); retrying in %.1f s", str(exc).splitlines()[0][:200], delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def on_commit(session: Session, action: Callable[[], None] | None,
              rollback: Callable[[], None] | None = None) -> None:
    """Run ``action`` once the unit of work commits (e.g. send a task, delete a file), or ``rollback``
    if it rolls back (e.g. remove a file stored for a row that never landed)."""
    if action is not None:
        session.info.setdefault("tp_on_commit", []).append(action)
    if rollback is not None:
        session.info.setdefault("tp_on_rollback", []).append(rollback)


def _run_hooks(session: Session, key: str) -> None:
    for hook in session.info.pop(key, []):
        try:
            hook()
        except Exception:  # the transaction's outcome stands; the hook's failure is only logged
            log.exception("%s hook failed", key)


def get_session() -> Iterator[Session]:
    """FastAPI dependency: one session per request, committed when the endpoint returns normally."""
    with session_scope() as session:
        yield session


# scope="function": the commit happens before the response is sent, so a 201/202 means the row is there.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
