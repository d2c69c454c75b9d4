"""merc.inference sits above merc.training: nothing below it imports it."""

from __future__ import annotations

import pytest

from test_import_direction import imports_of


@pytest.mark.parametrize("subpackage", ["data", "evaluation", "features", "models", "training"])
def test_nothing_below_inference_imports_it(subpackage: str) -> None:
    assert imports_of("merc.inference", subpackage) == []
