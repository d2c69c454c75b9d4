"""A restricted unpickler for the field's published feature pickles.

The de-facto MERC feature files (DialogueGCN, MMGCN, COGMEN, CORECT, COSMIC, GCNet) are
pickles. A pickle can run arbitrary code on load, so merc never calls ``pickle.load`` on a
user file: :func:`safe_load_pickle` admits only plain containers (dict, list, tuple, set,
str, numbers, ...) and numpy arrays/scalars, and refuses every other global with a clear
error before anything is constructed.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from merc.errors import DataError, UnsafePickleError

# Globals a plain-data pickle may reference. numpy needs its array reconstructor and
# dtype; collections.OrderedDict/defaultdict appear in older feature files.
_ALLOWED_GLOBALS: dict[str, set[str]] = {
    "builtins": {
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "str",
        "bytes",
        "bytearray",
        "int",
        "float",
        "complex",
        "bool",
        "slice",
        "range",
    },
    "__builtin__": {
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "str",
        "unicode",
        "bytes",
        "int",
        "long",
        "float",
        "complex",
        "bool",
    },
    "collections": {"OrderedDict", "defaultdict"},
    "copy_reg": {"_reconstructor"},
    "copyreg": {"_reconstructor"},
    "numpy": {"ndarray", "dtype"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "numpy.core.numeric": {"_frombuffer"},
    "numpy._core.numeric": {"_frombuffer"},
}
# copyreg._reconstructor(cls, base, state) builds ``cls``, but ``cls`` itself must pass
# find_class, so it can only be one of the plain types above.


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 pickles ``bytes`` under protocols 0-2 as ``_codecs.encode(text, "latin1")``
    # (numpy array data included), so files re-saved with protocol 2 need it. Only the
    # latin1 call the pickler emits is admitted: other codecs are no part of plain data.
    if not isinstance(obj, str) or encoding.lower().replace("-", "").replace("_", "") != "latin1":
        raise UnsafePickleError(
            f"refused _codecs.encode(..., {encoding!r}): only the latin1 form that pickle uses for bytes is allowed"
        )
    return obj.encode("latin1", errors)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        if name in _ALLOWED_GLOBALS.get(module, set()):
            return super().find_class(module, name)
        if module in {"builtins", "__builtin__"} and name == "object":
            return object
        raise UnsafePickleError(
            f"refused to load {module}.{name}: merc only reads pickles of plain containers "
            "and numpy arrays (a pickle that references other objects could run code). "
            "Convert the file with trusted code first, e.g. to merc's own format (merc export)."
        )


def safe_loads(data: bytes, encoding: str = "latin1") -> Any:
    """Unpickle ``data`` through the restricted unpickler (see module docstring)."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    except UnsafePickleError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        ImportError,
        MemoryError,
    ) as exc:
        raise DataError(
            f"not a readable pickle ({type(exc).__name__}: {exc}); the file may be truncated or corrupt"
        ) from exc


def safe_load_pickle(path: str | Path, encoding: str = "latin1") -> Any:
    """Read a pickle file safely.

    Args:
        path: The file.
        encoding: How Python-2 ``str`` objects are decoded; ``latin1`` is what the
            published files need (numpy arrays pickled under Python 2 included).

    Raises:
        DataError: the file is missing, truncated or not a pickle.
        UnsafePickleError: the pickle references anything but plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        return safe_loads(path.read_bytes(), encoding=encoding)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
