"""The embedded broker under concurrency: many processes publish and consume at once through the transport
that ``filesystem://`` selects, and no message is torn, lost or delivered twice (kombu's own filesystem channel
loses messages and kills its consumers with ``JSONDecodeError`` in this test: celery/kombu#1551)."""

from __future__ import annotations

import multiprocessing
import queue
import time

import pytest

from app.core.queue import celery_config
from app.core.settings import Settings

PRODUCERS, CONSUMERS, EACH = 4, 3, 400


def _connection(config: dict):
    from kombu import Connection

    return Connection(config["broker_url"], transport=config["broker_transport"],
                      transport_options={**config["broker_transport_options"], "polling_interval": 0.001})


def _produce(config: dict, tag: int, start) -> None:
    with _connection(config) as conn:
        messages = conn.SimpleQueue("cpu")
        start.wait(timeout=300)
        for i in range(EACH):
            messages.put({"id": f"{tag}-{i}", "padding": "x" * 4000})
        messages.close()


def _consume(config: dict, received, count, done, start) -> None:
    got = []
    try:
        with _connection(config) as conn:
            messages = conn.SimpleQueue("cpu")
            start.wait(timeout=300)
            while not done.is_set():
                try:
                    message = messages.get(block=True, timeout=0.05)
                except messages.Empty:
                    continue
                got.append(message.payload["id"])
                message.ack()
                with count.get_lock():
                    count.value += 1
                    if count.value >= PRODUCERS * EACH:
                        done.set()
    except Exception as exc:  # what the test is about: a consumer must never die
        start.abort()  # the others stop waiting for it
        received.put(("crashed", repr(exc)))
        return
    received.put(("ok", got))


def test_concurrent_publishers_and_consumers_lose_and_tear_nothing(tmp_path):
    config = celery_config(Settings(data_dir=tmp_path, broker_url="filesystem://"))
    assert config["broker_transport"] == "app.core.broker:Transport"
    mp = multiprocessing.get_context("spawn")
    received, count, done = mp.Queue(), mp.Value("i", 0), mp.Event()
    start = mp.Barrier(CONSUMERS + PRODUCERS)  # all connected before the first message: they really overlap
    consumers = [mp.Process(target=_consume, args=(config, received, count, done, start)) for _ in range(CONSUMERS)]
    producers = [mp.Process(target=_produce, args=(config, tag, start)) for tag in range(PRODUCERS)]
    for process in consumers + producers:
        process.start()
    for process in producers:
        process.join(timeout=300)
    # The consumers set ``done`` once every message is in. Stop waiting sooner when one of them died, or when
    # nothing more arrived for a long while (a message was lost).
    last, last_change = -1, time.monotonic()
    while not done.wait(timeout=0.5) and all(p.is_alive() for p in consumers):
        if count.value != last:
            last, last_change = count.value, time.monotonic()
        elif time.monotonic() - last_change > 60:
            break
    done.set()
    try:
        results = [received.get(timeout=120) for _ in consumers]
    except queue.Empty:
        pytest.fail("a consumer neither finished nor reported")
    for process in consumers:
        process.join(timeout=60)
    crashed = [detail for outcome, detail in results if outcome == "crashed"]
    assert not crashed, crashed
    ids = [i for _, got in results for i in got]
    expected = {f"{tag}-{i}" for tag in range(PRODUCERS) for i in range(EACH)}
    assert len(ids) == len(expected) and set(ids) == expected  # each message exactly once
    leftovers = [p.name for p in (tmp_path / "broker").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == [] or all(name.endswith(".exchange") for name in leftovers), leftovers


def test_an_undecodable_message_is_set_aside_not_raised(tmp_path):
    config = celery_config(Settings(data_dir=tmp_path, broker_url="filesystem://"))
    folder = tmp_path / "broker" / "queue"
    (folder / "00000000000000000001_bad.cpu.msg").write_bytes(b"")
    with _connection(config) as conn:
        messages = conn.SimpleQueue("cpu")
        messages.put({"id": "good"})
        assert messages.get(timeout=5).payload == {"id": "good"}
        messages.close()
    set_aside = [p.name for p in (tmp_path / "broker" / "processed").iterdir()]
    assert set_aside == ["00000000000000000001_bad.cpu.unreadable"]
