"""Shared fixtures: small models and a tolerance every numeric test states."""

from __future__ import annotations

import pytest
import torch

# float32 outputs of the shielded model vs the plain model.
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


def assert_same(actual, expected, rtol: float = RTOL, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
