"""Run the docstring examples of every merc module (they are documentation that must stay true)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import merc

MODULES = sorted(m.name for m in pkgutil.walk_packages(merc.__path__, "merc.") if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
