"""Model registry and the one factory, :func:`build_model`.

A model file registers its class with ``@register_model("name")``; :mod:`merc.models`
imports every model file so all register. ``build_model`` passes the dataset facts a
model's constructor declares (``in_dims``, ``num_classes``, ``num_speakers``,
``num_parties``) plus the recipe's keyword arguments, and rejects unknown arguments.
"""

from __future__ import annotations

import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, Union

from merc.errors import ConfigError, resolve_choice
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
    unknown = [k for k in kwargs if k not in params and k not in DATASET_FACTS]
    if unknown:
        valid = [p for p in params if p not in ("self", "args", "kwargs")]
        raise ConfigError(f"model {name!r} has no argument(s) {', '.join(unknown)}; its arguments: {', '.join(valid)}")
    return cls(**{k: v for k, v in kwargs.items() if k in params})


#: Constructor arguments that are dataset facts, passed by the runner, never by a recipe.
DATASET_FACTS = frozenset({"in_dims", "num_classes", "num_speakers", "num_parties", "sequence_dims"})


def check_model_arguments(name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Recipe ``model`` options checked against the constructor's annotations, before any data loads.

    Unknown names, values of the wrong type (``"ture"`` for a bool, ``2.7`` for an int,
    ``nan``) and strings outside a ``Literal[...]`` choice (``fusion="concta"``) are a
    :class:`~merc.errors.ConfigError` naming ``model.<key>``. Boolean strings
    (``true``/``false``/``yes``/``no``) and whole floats for ints are converted.

    Returns:
        The options with converted values.

    >>> check_model_arguments("bclstm", {"fusion": "Concat", "bidirectional": "false"})
    {'fusion': 'concat', 'bidirectional': False}
    """
    cls = get_model_class(name)
    params = inspect.signature(cls.__init__).parameters
    hints = typing.get_type_hints(cls.__init__)
    valid = [p for p in params if p not in ("self", "args", "kwargs") and p not in DATASET_FACTS]
    out: dict[str, Any] = {}
    for key, value in arguments.items():
        if key not in valid:
            raise ConfigError(f"model {name!r} has no argument model.{key}; its arguments: {', '.join(valid)}")
        out[key] = _coerce(f"model.{key}", value, hints.get(key, Any))
    return out


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """``value`` as an instance of the annotation ``kind`` (see :func:`check_model_arguments`)."""
    origin = typing.get_origin(kind)
    if kind is Any:
        return value
    if origin in (Union, types.UnionType):
        options = [o for o in typing.get_args(kind) if o is not type(None)]
        if value is None and len(options) < len(typing.get_args(kind)):
            return None
        # The option of the value's own shape reports the most specific error.
        for option in options:
            if _same_shape(value, option):
                return _coerce(key, value, option)
        for option in options:
            try:
                return _coerce(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r}: expected {' or '.join(_describe(o) for o in options)}")
    if origin is Literal:
        choices = [str(c) for c in typing.get_args(kind)]
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(choices)}")
        return resolve_choice(key, value, choices)
    if origin in (Mapping, dict) or kind in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        key_type, value_type = typing.get_args(kind) or (Any, Any)
        return {_coerce(key, k, key_type): _coerce(f"{key}.{k}", v, value_type) for k, v in value.items()}
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "1"):
            return True
        if text in ("false", "no", "0"):
            return False
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        as_float = float(value)
        if not (math.isfinite(as_float) and as_float.is_integer()):
            raise ConfigError(f"{key}={value!r}: expected an integer, not a fraction")
        return int(as_float)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise ConfigError(f"{key}={value!r}: expected a finite number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    return value


def _same_shape(value: Any, kind: Any) -> bool:
    origin = typing.get_origin(kind)
    if isinstance(value, Mapping):
        return origin in (Mapping, dict) or kind in (Mapping, dict)
    if isinstance(value, str):
        return origin is Literal or kind is str
    return False


def _describe(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin is Literal:
        return "one of " + ", ".join(str(c) for c in typing.get_args(kind))
    if origin in (Mapping, dict) or kind in (Mapping, dict):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))


def describe_model(name: str) -> str:
    """First docstring line of a registered model."""
    doc = inspect.getdoc(get_model_class(name)) or ""
    return doc.splitlines()[0] if doc else ""
