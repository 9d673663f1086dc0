"""Webhooks: job state changes (``job.running``, ``job.succeeded``, ``job.failed``, ``job.cancelled``) sent to
a tenant's endpoints and to a job's own ``webhook.url``, signed as Standard Webhooks do.

- **Outbox**: :func:`record` writes one delivery per endpoint in the transaction that changes the job's state,
  so an event is never lost and never sent for a change that rolled back. :func:`deliver_due` sends what is
  due; it runs right after such a commit (in a background thread) and in every worker's recovery loop, which
  retries failures with exponential backoff (``TENSORPRESS_WEBHOOK_RETRY_BASE_S`` doubling, at most an hour,
  ``TENSORPRESS_WEBHOOK_MAX_ATTEMPTS`` in all). A delivery is claimed with a conditional update before it is
  sent, so two senders never send it twice at once.
- **Signatures**: headers ``webhook-id`` (``msg_…``, the same on every retry), ``webhook-timestamp`` (Unix
  seconds) and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` keyed with the
  base64 part of the endpoint's ``whsec_…`` secret, shown once when the endpoint is made).
- **Where to**: http(s) only; the host is resolved and every address must be public (not private, loopback,
  link-local, multicast or reserved), and so must every IPv4 address an IPv6 one embeds (mapped, compatible,
  6to4, Teredo, NAT64: a gateway would take ``64:ff9b::7f00:1`` to 127.0.0.1) unless
  ``TENSORPRESS_WEBHOOK_ALLOW_PRIVATE`` — checked when the endpoint is given and again at each delivery, which
  then connects to the address it checked (the name goes in ``Host`` and TLS SNI), so a DNS answer that changes
  in between cannot redirect it. Redirects are not followed.
- **Thin payloads**: ids, state and links; the receiver fetches what it needs with its API key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.core.db import on_commit, session_scope
from app.core.settings import get_settings
from app.models import Job, Webhook, WebhookDelivery
from app.models.base import new_id, utcnow

log = logging.getLogger(__name__)
EVENTS = {"running": "job.running", "succeeded": "job.succeeded", "failed": "job.failed",
          "cancelled": "job.cancelled"}
MAX_DELAY_S = 3600
CLAIM_S = 120


class UnsafeUrl(ValueError):
    """A webhook URL this service will not call."""


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def resolve_public(url: str) -> tuple[str, str, int, list[str]]:
    """The URL's scheme, host, port and resolved addresses; UnsafeUrl unless each address may be called."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeUrl(f"not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeUrl("a webhook URL must be http:// or https:// with a host")
    if parts.username or parts.password:
        raise UnsafeUrl("a webhook URL may not carry credentials")
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"{parts.hostname} does not resolve: {exc}") from exc
    addresses = sorted({info[4][0] for info in infos})
    if not get_settings().webhook_allow_private:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if any(not each.is_global or each.is_multicast for each in (ip, *embedded_ipv4(ip))):
                raise UnsafeUrl(f"{parts.hostname} resolves to {address}, a private, loopback, link-local or "
                                "reserved address (TENSORPRESS_WEBHOOK_ALLOW_PRIVATE allows it)")
    return parts.scheme, parts.hostname, port, addresses


NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))  # RFC 6052, RFC 8215
COMPATIBLE = ipaddress.ip_network("::/96")  # ::a.b.c.d, deprecated IPv4-compatible addresses


def embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, which a translator or tunnel may deliver to."""
    if ip.version == 4:
        return []
    found = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
    if any(ip in net for net in (*NAT64, COMPATIBLE)):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [each for each in found if each is not None]


def record(session: Session, job: Job, state: str) -> None:
    """Queue the event for ``job`` entering ``state`` to every endpoint that wants it, in ``session``'s
    transaction; it is sent after the commit."""
    event = EVENTS.get(state)
    if event is None:
        return
    targets = [(w.id, w.url) for w in session.scalars(select(Webhook).where(Webhook.tenant == job.tenant))]
    if job.webhook:
        targets.append((None, job.webhook["url"]))
    base = (get_settings().public_url or "").rstrip("/")
    payload = {"type": event, "timestamp": utcnow().isoformat(), "data": {
        "id": job.id, "state": state, "links": {"job": f"{base}/v1/jobs/{job.id}",
                                                "report": f"{base}/v1/jobs/{job.id}/report"}}}
    for webhook_id, url in targets:
        session.add(WebhookDelivery(id=f"msg_{new_id()}", tenant=job.tenant, job_id=job.id, webhook_id=webhook_id,
                                    url=url, event=event, payload=payload))
    if targets:
        on_commit(session, lambda: deliver_soon())


def deliver_soon() -> None:
    """Send what is due in the background, right after a commit that recorded events."""
    threading.Thread(target=deliver_due, name="webhooks", daemon=True).start()


def record_by_id(session: Session, job_id: str, state: str) -> None:
    record(session, session.get(Job, job_id), state)


def deliver_due(now: datetime | None = None, send=None) -> int:
    """Send every delivery that is due (claiming each first); returns how many were attempted."""
    now = now or utcnow()
    with session_scope() as session:
        due = list(session.scalars(select(WebhookDelivery.id).where(
            WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now))
            .order_by(WebhookDelivery.next_attempt_at).limit(100)))
    attempted = 0
    for delivery_id in due:
        with session_scope() as session:
            claimed = session.execute(update(WebhookDelivery).where(
                WebhookDelivery.id == delivery_id, WebhookDelivery.state == "pending",
                or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now))
                .values(locked_until=now + timedelta(seconds=CLAIM_S))).rowcount == 1
        if claimed:
            attempted += 1
            _attempt(delivery_id, now, send or _post)
    return attempted


def _attempt(delivery_id: str, now: datetime, send) -> None:
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        secret = _secret(session, delivery)
        msg_id, url, body = delivery.id, delivery.url, json.dumps(delivery.payload, separators=(",", ":")).encode()
    error = None
    if secret is None:
        error = "the endpoint or its job is gone"
    else:
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": msg_id,
                   "webhook-timestamp": str(timestamp), "webhook-signature": sign(secret, msg_id, timestamp, body),
                   "user-agent": "TensorPress-Webhooks"}
        try:
            status = send(url, headers, body)
            error = None if 200 <= status < 300 else f"the receiver answered {status}"
        except (UnsafeUrl, httpx.HTTPError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
    settings = get_settings()
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        delivery.attempts += 1
        delivery.locked_until = None
        if error is None:
            delivery.state, delivery.delivered_at, delivery.last_error = "delivered", utcnow(), None
            return
        delivery.last_error = error[:2000]
        if delivery.attempts >= settings.webhook_max_attempts or secret is None:
            delivery.state = "failed"
            log.warning("webhook %s to %s failed for good: %s", msg_id, url, error)
        else:
            delay = min(settings.webhook_retry_base_s * 2 ** (delivery.attempts - 1), MAX_DELAY_S)
            delivery.next_attempt_at = now + timedelta(seconds=delay)


def _secret(session: Session, delivery: WebhookDelivery) -> str | None:
    if delivery.webhook_id is not None:
        webhook = session.get(Webhook, delivery.webhook_id)
        return webhook.secret if webhook else None
    job = session.get(Job, delivery.job_id)
    return (job.webhook or {}).get("secret") if job else None


def _post(url: str, headers: dict[str, str], body: bytes) -> int:
    """POST to the address that was checked: the URL's host is replaced by it, the name kept for Host/SNI."""
    scheme, host, port, addresses = resolve_public(url)
    parts = urlsplit(url)
    ip = addresses[0]
    netloc = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    pinned = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    with httpx.Client(timeout=get_settings().webhook_timeout_s, follow_redirects=False) as client:
        response = client.post(pinned, content=body, headers={**headers, "host": parts.netloc.rsplit("@", 1)[-1]},
                               extensions={"sni_hostname": host})
    return response.status_code


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be a webhook, else None."""
    try:
        resolve_public(url)
    except UnsafeUrl as exc:
        return str(exc)
    return None


def create(session: Session, tenant: str, url: str) -> tuple[Webhook, str]:
    secret = new_secret()
    webhook = Webhook(tenant=tenant, url=url, secret=secret)
    session.add(webhook)
    session.flush()
    return webhook, secret
