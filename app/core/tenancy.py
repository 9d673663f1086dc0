"""Who is calling. Without auth every resource belongs to the built-in tenant ``local``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

LOCAL_TENANT = "local"


def current_tenant() -> str:
    """FastAPI dependency: the caller's tenant (API keys arrive with the tenancy step)."""
    return LOCAL_TENANT


TenantDep = Annotated[str, Depends(current_tenant)]
