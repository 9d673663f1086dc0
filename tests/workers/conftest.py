"""Fixtures shared by the worker tests: the trained digits CNN as ONNX and its datasets."""

from __future__ import annotations

import pytest

from tests import factories
from tests.workers.jobs import upload_data


@pytest.fixture(scope="session")
def trained_cnn_onnx() -> bytes:
    model, example = factories.digits_cnn(epochs=10)
    return factories.onnx_from_torch(model, example)


@pytest.fixture
def digits_sets(client) -> dict[str, str]:
    x_train, _, x_test, y_test = factories.digits()
    return {"calibration": upload_data(client, input=x_train[:256]),
            "evaluation": upload_data(client, input=x_test, labels=y_test)}
