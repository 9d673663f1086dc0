from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from app.core.db import SessionDep
from app.core.errors import NotFound, ValidationFailed
from app.core.tenancy import ScopeDep, TenantDep, owned
from app.models import Webhook
from app.webhooks import service

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://", max_length=2048, description="Receives every state change of the "
                     "tenant's jobs; must resolve to public addresses")


class WebhookRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    url: str
    created_at: str | None = None


class WebhookCreated(WebhookRead):
    secret: str = Field(description="whsec_…: verifies the webhook-signature header; shown only now")


class WebhookList(BaseModel):
    items: list[WebhookRead]


def _read(webhook: Webhook) -> dict:
    return {"id": webhook.id, "url": webhook.url, "created_at": webhook.created_at.isoformat()}


@router.post("", status_code=201, response_model=WebhookCreated)
def create_webhook(payload: WebhookCreate, session: SessionDep, tenant: TenantDep):
    """Register an endpoint for the tenant's job state changes; the signing secret is in this answer only."""
    if problem := service.check_url(payload.url):
        raise ValidationFailed.at(["url"], problem)
    webhook, secret = service.create(session, tenant, payload.url)
    return {**_read(webhook), "secret": secret}


@router.get("", response_model=WebhookList)
def list_webhooks(session: SessionDep, scope: ScopeDep):
    """The tenant's endpoints (without secrets)."""
    return {"items": [_read(w) for w in session.scalars(select(Webhook).where(*owned(Webhook, scope))
                                                       .order_by(Webhook.created_at))]}


@router.delete("/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: str, session: SessionDep, scope: ScopeDep):
    """Stop sending to an endpoint; its pending deliveries go with it."""
    webhook = session.scalar(select(Webhook).where(Webhook.id == webhook_id, *owned(Webhook, scope)))
    if webhook is None:
        raise NotFound(f"webhook {webhook_id} not found")
    session.delete(webhook)
    return Response(status_code=204)
