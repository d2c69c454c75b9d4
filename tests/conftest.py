"""Shared fixtures (helpers live in helpers.py so test modules can import them)."""

from __future__ import annotations

import pytest

from helpers import make_dataset
from merc.data.schema import MercDataset


@pytest.fixture
def tiny_dataset() -> MercDataset:
    return make_dataset()
