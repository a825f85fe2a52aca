from __future__ import annotations

import pytest

from tests.tiny_hf import single_torch_thread


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with single_torch_thread():  # tiny models: threads only wait for each other on a busy machine
        yield
