from __future__ import annotations

import pytest

from tests import factories


@pytest.fixture(scope="session")
def transformer_onnx() -> bytes:
    model, example = factories.tiny_transformer()
    return factories.onnx_from_torch(model, example, input_name="input_ids", output_name="embedding")
