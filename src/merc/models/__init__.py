"""Model registry, the one factory and every model family (one file each).

Importing this package imports every module in it (:func:`_discover_models`), so every
model file registers itself: adding a model is adding its file, its recipe and its test.
"""

from __future__ import annotations

import importlib
import pkgutil

from merc.models.base import MercModel
from merc.models.output import ModelOutput
from merc.models.registry import build_model, describe_model, get_model_class, list_models, register_model

#: Modules of this package that are infrastructure, not model families.
_NOT_MODELS = frozenset({"base", "output", "registry", "layers"})


def _discover_models() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_MODELS and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover_models()

__all__ = [
    "MercModel",
    "ModelOutput",
    "build_model",
    "describe_model",
    "get_model_class",
    "list_models",
    "register_model",
]
