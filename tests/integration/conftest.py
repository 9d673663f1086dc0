"""Fixtures of the integration tests: the real Redis broker."""

from __future__ import annotations

import pytest

from tests.conftest import REDIS_URL, require


@pytest.fixture
def redis_broker(monkeypatch):
    require("127.0.0.1", 6379, "Redis")
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    monkeypatch.setenv("TENSORPRESS_BROKER_URL", REDIS_URL)
    from tests.conftest import reset_caches

    reset_caches()
    yield REDIS_URL
    client.flushdb()
