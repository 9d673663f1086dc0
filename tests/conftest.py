"""Shared fixtures: real SQLite and PostgreSQL databases migrated by Alembic, settings per test.

API and unit tests run against both databases (``db_backend``). The code under test commits for real (and
worker processes need committed rows), so each test deletes what it wrote instead of rolling back.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

IN_CI = os.environ.get("CI") == "true"
PG_ADMIN_URL = os.environ.get("TENSORPRESS_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TENSORPRESS_TEST_REDIS", "redis://127.0.0.1:6379/9")


def service_up(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def require(host: str, port: int, what: str) -> None:
    """Integration prerequisites: under CI they must exist (fail), elsewhere a missing one skips."""
    if not service_up(host, port):
        message = f"{what} is not reachable on {host}:{port}"
        if IN_CI:
            pytest.fail(message + " (CI=true: integration tests must run)")
        pytest.skip(message)


def reset_caches() -> None:
    from app.core import storage
    from app.core.db import get_engine
    from app.core.queue import get_celery
    from app.core.settings import get_settings
    from app.core.tenancy import LIMITER

    LIMITER.buckets.clear()
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    for cached in (get_settings, get_engine, get_celery):
        cached.cache_clear()
    storage._stores.clear()


@pytest.fixture(scope="session", autouse=True)
def _confined_children_from_a_zygote():
    """This process runs hundreds of jobs: their confined children fork from a preloaded zygote instead of each
    importing torch afresh (worker processes, started by the integration and end-to-end tests, spawn them)."""
    from workers.executor import Executor

    Executor.zygote = True
    yield
    Executor.zygote = False


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    require("127.0.0.1", 5432, "PostgreSQL")
    from sqlalchemy import create_engine

    name = f"tp_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)  # survives restarts
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def migrated() -> dict[str, str]:
    """Database URLs already at the migration head, created on first use."""
    return {}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(db_backend, migrated, tmp_path_factory, request) -> str:
    from app.core.migrate import upgrade

    if db_backend not in migrated:
        if db_backend == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'tensorpress.db'}"
        else:
            url = request.getfixturevalue("pg_database_url")
        upgrade(url)
        migrated[db_backend] = url
    return migrated[db_backend]


@pytest.fixture
def env(tmp_path: Path, database_url: str, monkeypatch) -> Iterator[Path]:
    """Settings for one test: its own data dir, artifact store and file broker; the shared database."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("TENSORPRESS_DATA_DIR", str(data_dir))
    monkeypatch.setenv("TENSORPRESS_DATABASE_URL", database_url)
    monkeypatch.setenv("TENSORPRESS_BROKER_URL", "filesystem://")
    monkeypatch.setenv("TENSORPRESS_BENCH_ITERATIONS", "10")
    monkeypatch.setenv("TENSORPRESS_BENCH_MIN_TIME_S", "0")
    monkeypatch.delenv("TENSORPRESS_STORAGE_URL", raising=False)
    reset_caches()
    yield data_dir
    from app.core.db import get_engine
    from app.models import Base

    with get_engine().begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    reset_caches()


@pytest.fixture
def client(env):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def live_url(env, monkeypatch):
    """The service over real HTTP: a uvicorn server in this process, on a free loopback port."""
    import uvicorn

    from app.core.settings import get_settings
    from app.main import create_app

    monkeypatch.setenv("TENSORPRESS_EVENTS_POLL_S", "0.05")
    get_settings.cache_clear()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def mlp_bytes() -> bytes:
    from tests.factories import onnx_mlp

    return onnx_mlp()


@pytest.fixture
def uploaded_model(client, mlp_bytes) -> dict:
    response = client.post("/v1/models?name=mlp.onnx", content=mlp_bytes,
                           headers={"content-type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="session")
def cnn():
    """The digits CNN (3 epochs) and an example input."""
    from tests.factories import digits_cnn

    return digits_cnn(epochs=3)


@pytest.fixture(scope="session")
def torchscript(cnn) -> bytes:
    from tests.factories import torchscript_bytes

    return torchscript_bytes(*cnn)


@pytest.fixture(scope="session")
def pt2(cnn) -> bytes:
    from tests.factories import pt2_bytes

    return pt2_bytes(*cnn)
