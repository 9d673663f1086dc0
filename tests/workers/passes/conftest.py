"""Fixtures shared by the pass tests: a small transformer as ONNX, the trained digits CNN, its training sets."""

from __future__ import annotations

import pytest

from tests import factories
from tests.workers.jobs import upload_data


@pytest.fixture(scope="session")
def transformer_onnx() -> bytes:
    model, example = factories.tiny_transformer()
    return factories.onnx_from_torch(model, example, input_name="input_ids", output_name="embedding")


@pytest.fixture(scope="session")
def trained_cnn():
    return factories.digits_cnn(epochs=10)


@pytest.fixture
def training_sets(client) -> dict[str, str]:
    """Training (all 1,437 training digits), validation (the last 200 of them) and evaluation (the 360 held out)."""
    x_train, y_train, x_test, y_test = factories.digits()
    return {"training": upload_data(client, input=x_train, labels=y_train),
            "validation": upload_data(client, input=x_train[-200:], labels=y_train[-200:]),
            "evaluation": upload_data(client, input=x_test, labels=y_test)}
