"""The layer tests test the fast paths: pin the switch on whatever ``MERC_FAST_KERNELS`` says.

``test_fast_switch.py`` turns it off where it compares the two paths.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from merc.models.layers.fast import use_fast_kernels


@pytest.fixture(autouse=True)
def _fast_kernels_on() -> Iterator[None]:
    with use_fast_kernels(True):
        yield
