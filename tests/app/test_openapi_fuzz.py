"""Schemathesis against our own OpenAPI document: generated valid and invalid requests to every operation
never get a 5xx, and every answer matches what the document says (status, content type, body schema)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app

schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())
schema.config.generation.update(modes=list(schemathesis.GenerationMode), deterministic=True)


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
@schema.parametrize()
@settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_server_errors_and_answers_match_the_schema(case, env):
    case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance])
