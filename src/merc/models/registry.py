"""Model registry and the one factory, :func:`build_model`.

A model file registers its class with ``@register_model("name")``; :mod:`merc.models`
imports every model file so all register. ``build_model`` passes the dataset facts a
model's constructor declares (``in_dims``, ``num_classes``, ``num_speakers``,
``num_parties``) plus the recipe's keyword arguments, and rejects unknown arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from merc.errors import ConfigError
from merc.models.base import MercModel

M = TypeVar("M", bound=type[MercModel])
_MODELS: dict[str, type[MercModel]] = {}


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator registering a :class:`MercModel` subclass under ``name``."""

    def deco(cls: M) -> M:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        cls.model_name = name
        _MODELS[name] = cls
        return cls

    return deco


def list_models() -> list[str]:
    import merc.models  # noqa: F401  (registers every model)

    return sorted(_MODELS)


def get_model_class(name: str) -> type[MercModel]:
    import merc.models  # noqa: F401

    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_MODELS))} (see `merc models`)")
    return _MODELS[name]


def build_model(name: str, **kwargs: Any) -> MercModel:
    """Build a registered model from typed keyword arguments.

    Dataset facts a constructor does not declare (e.g. ``num_parties`` for a model
    without speaker embeddings) are dropped; any other unknown argument is an error.

    >>> m = build_model("bclstm", in_dims={"t": 8}, num_classes=3, hidden_size=4)
    >>> type(m).__name__
    'BcLSTM'
    """
    cls = get_model_class(name)
    params = inspect.signature(cls.__init__).parameters
    dataset_facts = {"in_dims", "num_classes", "num_speakers", "num_parties"}
    unknown = [k for k in kwargs if k not in params and k not in dataset_facts]
    if unknown:
        valid = [p for p in params if p not in ("self", "args", "kwargs")]
        raise ConfigError(f"model {name!r} has no argument(s) {', '.join(unknown)}; its arguments: {', '.join(valid)}")
    return cls(**{k: v for k, v in kwargs.items() if k in params})


def describe_model(name: str) -> str:
    """First docstring line of a registered model."""
    doc = inspect.getdoc(get_model_class(name)) or ""
    return doc.splitlines()[0] if doc else ""
