"""The FastAPI application."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi

from app.artifacts.endpoints import router as artifacts_router
from app.core.errors import document_problems, install_handlers
from app.core.limits import JsonBodyLimit, RequestLimits
from app.core.metrics import HttpMetrics
from app.core.tenancy import current_caller
from app.datasets.endpoints import router as datasets_router
from app.health.endpoints import router as health_router
from app.jobs.endpoints import router as jobs_router
from app.jobs.events import Hub
from app.mlmodels.endpoints import router as models_router
from app.passes.endpoints import router as passes_router
from app.webhooks.endpoints import router as webhooks_router
from app.worker_registry.endpoints import router as workers_router


def create_app(*, embedded: bool = False) -> FastAPI:
    """The API. ``embedded``: it runs inside ``tensorpress up`` beside its own worker, so it is not ready
    while no worker is live."""
    app = FastAPI(title="TensorPress", version="0.1.0",
                  description="Compress and accelerate neural networks: upload a model, post a job, "
                              "download optimized artifacts with a report.")
    app.state.needs_worker = embedded
    app.state.events = Hub()  # the event streams' one poller
    install_handlers(app)
    app.add_middleware(JsonBodyLimit)
    app.add_middleware(RequestLimits)
    app.add_middleware(HttpMetrics)
    for router in (models_router, datasets_router, jobs_router, artifacts_router, webhooks_router, passes_router,
                   workers_router):
        app.include_router(router, dependencies=[Depends(current_caller)])  # every /v1 route: key, rate limit
    app.include_router(health_router)

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi
    return app
