"""Model registry, the one factory and every model family (one file each).

Importing this package imports every model file, so every model is registered.
"""

from merc.models import (
    bclstm,  # noqa: F401  (registers)
    corect,  # noqa: F401
    gcnet,  # noqa: F401
    micga,  # noqa: F401
    multidag,  # noqa: F401
)
from merc.models.base import MercModel
from merc.models.output import ModelOutput
from merc.models.registry import build_model, describe_model, get_model_class, list_models, register_model

__all__ = ["MercModel", "ModelOutput", "build_model", "describe_model", "get_model_class", "list_models", "register_model"]
