"""Webhooks: Standard Webhooks signatures checked by an independent implementation, private addresses refused,
failing receivers retried with exponential backoff."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from tests.app.test_jobs_api import submit
from tests.app.test_models_api import assert_problem
from tests.workers.test_runner import run


class Receiver:
    """An HTTP server on loopback that records what it receives and answers the given statuses in turn."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append((self.path, dict(self.headers.items()), body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver(env, monkeypatch):
    from app.core.settings import get_settings
    from app.webhooks import service

    monkeypatch.setenv("TENSORPRESS_WEBHOOK_ALLOW_PRIVATE", "true")  # the receiver is on loopback
    get_settings.cache_clear()
    monkeypatch.setattr(service, "deliver_soon", lambda: None)  # the test sends, at the times it chooses
    server = Receiver()
    yield server
    server.server.shutdown()


def deliveries():
    from app.core.db import session_scope
    from app.models import WebhookDelivery

    with session_scope() as session:
        rows = list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.created_at)))
        session.expunge_all()
        return rows


def test_job_state_changes_are_signed_and_verify_independently(client, uploaded_model, receiver):
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    from app.webhooks.service import deliver_due

    tenant_hook = client.post("/v1/webhooks", json={"url": f"{receiver.url}/tenant"})
    assert tenant_hook.status_code == 201 and tenant_hook.json()["secret"].startswith("whsec_")
    assert "secret" not in client.get("/v1/webhooks").json()["items"][0]
    created = submit(client, uploaded_model["id"], webhook={"url": f"{receiver.url}/job"})
    job_secret = created.json()["webhook"]["secret"]
    assert client.get(f"/v1/jobs/{created.json()['id']}").json()["webhook"] == {"url": f"{receiver.url}/job"}
    run(created.json()["id"])
    assert deliver_due() == 4 and deliver_due() == 0

    secrets = {"/tenant": tenant_hook.json()["secret"], "/job": job_secret}
    seen = []
    for path, headers, body in receiver.received:
        payload = Webhook(secrets[path]).verify(body, headers)  # the standardwebhooks package, not our code
        assert payload["data"] == {"id": created.json()["id"], "state": payload["type"].removeprefix("job."),
                                   "links": {"job": f"/v1/jobs/{created.json()['id']}",
                                             "report": f"/v1/jobs/{created.json()['id']}/report"}}
        seen.append((path, payload["type"]))
        tampered = body.replace(b"succeeded", b"failed__") if b"succeeded" in body else body + b" "
        with pytest.raises(WebhookVerificationError):
            Webhook(secrets[path]).verify(tampered, headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(secrets["/job" if path == "/tenant" else "/tenant"]).verify(body, headers)
    assert sorted(seen) == sorted((p, e) for p in ("/tenant", "/job") for e in ("job.running", "job.succeeded"))
    assert {d.state for d in deliveries()} == {"delivered"}


def test_webhooks_to_private_addresses_are_refused(client, env, uploaded_model):
    for url in ("http://127.0.0.1:9/", "http://localhost/hook", "http://10.1.2.3/", "http://192.168.0.1/",
                "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://0.0.0.0/",
                "http://user:pw@example.com/",
                # IPv6 forms that embed 127.0.0.1 or 10.0.0.1: NAT64 (well-known and local-use), 6to4,
                # IPv4-compatible, IPv4-mapped, Teredo (client 127.0.0.1, obfuscated)
                "http://[64:ff9b::7f00:1]/", "http://[64:ff9b:1::a00:1]/", "http://[2002:7f00:1::1]/",
                "http://[::127.0.0.1]/", "http://[::ffff:127.0.0.1]/",
                "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/"):
        assert assert_problem(client.post("/v1/webhooks", json={"url": url}), 422)["errors"][0]["loc"] == ["url"]
        problem = assert_problem(submit(client, uploaded_model["id"], webhook={"url": url}), 422)
        assert problem["errors"][0]["loc"] == ["webhook", "url"]
    assert_problem(client.post("/v1/webhooks", json={"url": "ftp://example.com/"}), 422)
    assert client.get("/v1/webhooks").json()["items"] == [] and client.get("/v1/jobs").json()["items"] == []


def test_embedded_ipv4_addresses_are_found_and_public_ones_pass():
    import ipaddress

    from app.webhooks.service import embedded_ipv4

    def found(address: str) -> list[str]:
        return [str(ip) for ip in embedded_ipv4(ipaddress.ip_address(address))]

    assert found("64:ff9b::808:808") == ["8.8.8.8"] and found("2002:808:808::") == ["8.8.8.8"]
    assert found("::ffff:1.2.3.4") == ["1.2.3.4"] and found("1.2.3.4") == []
    assert found("2606:4700:4700::1111") == []  # an ordinary global IPv6 address embeds nothing
    assert "127.0.0.1" in found("2001:0:4136:e378:8000:63bf:80ff:fffe")


def test_delivery_checks_the_address_again(client, uploaded_model, receiver, monkeypatch):
    from app.core.settings import get_settings
    from app.webhooks.service import deliver_due

    job = submit(client, uploaded_model["id"], webhook={"url": f"{receiver.url}/job"}).json()
    monkeypatch.setenv("TENSORPRESS_WEBHOOK_ALLOW_PRIVATE", "false")  # as if the name now resolved privately
    get_settings.cache_clear()
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert deliver_due() == 1 and receiver.received == []
    [delivery] = deliveries()
    assert delivery.state == "pending" and "UnsafeUrl" in delivery.last_error and delivery.attempts == 1


def test_a_failing_receiver_is_retried_with_exponential_backoff(client, uploaded_model, receiver, monkeypatch):
    from app.core.settings import get_settings
    from app.models.base import utcnow
    from app.webhooks.service import deliver_due

    monkeypatch.setenv("TENSORPRESS_WEBHOOK_MAX_ATTEMPTS", "4")
    get_settings.cache_clear()
    receiver.statuses = [500, 503, 200]
    job = submit(client, uploaded_model["id"], webhook={"url": f"{receiver.url}/job"}).json()
    client.post(f"/v1/jobs/{job['id']}/cancel")  # one event: job.cancelled
    start = utcnow()
    schedule = []
    for offset in (0, 5, 10, 29, 30, 100):
        attempted = deliver_due(now=start + timedelta(seconds=offset))
        [delivery] = deliveries()
        schedule.append((offset, attempted, delivery.attempts, delivery.state))
    assert schedule == [(0, 1, 1, "pending"), (5, 0, 1, "pending"), (10, 1, 2, "pending"),  # 10 s, then 20 s
                        (29, 0, 2, "pending"), (30, 1, 3, "delivered"), (100, 0, 3, "delivered")]
    ids = {headers["webhook-id"] for _, headers, _ in receiver.received}
    assert len(receiver.received) == 3 and len(ids) == 1  # one message id across retries
    assert json.loads(receiver.received[0][2])["type"] == "job.cancelled"


def test_a_receiver_that_never_answers_well_ends_failed(client, uploaded_model, receiver, monkeypatch):
    from app.core.settings import get_settings
    from app.models.base import utcnow
    from app.webhooks.service import deliver_due

    monkeypatch.setenv("TENSORPRESS_WEBHOOK_MAX_ATTEMPTS", "2")
    get_settings.cache_clear()
    receiver.statuses = [500] * 5
    job = submit(client, uploaded_model["id"], webhook={"url": f"{receiver.url}/job"}).json()
    client.post(f"/v1/jobs/{job['id']}/cancel")
    deliver_due(now=utcnow())
    deliver_due(now=utcnow() + timedelta(hours=2))
    [delivery] = deliveries()
    assert delivery.state == "failed" and delivery.attempts == 2 and delivery.last_error == "the receiver answered 500"
