"""User-facing error types.

Every error a user can cause (bad path, unknown name, malformed data, a run folder that
holds another run or is in use) is raised as a :class:`MercError` subclass with a message
that says what to do. The command line prints such errors (and ``OSError`` on the output
folder) as one line ``merc: error: ...`` with exit status 2; anything else is a bug: one
line naming a log file that holds the traceback, exit status 1 (``merc -v`` prints it).
"""

from __future__ import annotations


class MercError(Exception):
    """Base class for errors caused by user input rather than by a bug in merc."""


class DataError(MercError, ValueError):
    """Malformed, missing or inconsistent data (wrong dims, NaN, empty dialogue, bad label)."""


class UnsafePickleError(DataError):
    """A pickle tried to load something other than plain containers and numpy arrays."""


class ConfigError(MercError, ValueError):
    """An unknown name, an invalid option or a malformed recipe/override."""


class CheckpointError(DataError):
    """A checkpoint or weights file that is empty, truncated, corrupt, unsafe or of another model."""


class RunFolderError(MercError):
    """A run folder that holds another run, is in use by another process, or cannot be written."""


def resolve_choice(kind: str, value: str, options: list[str] | tuple[str, ...]) -> str:
    """Return ``value`` normalised if it is one of ``options``, else raise listing them.

    The single resolver for string choices (activation names, losses, schedules, ...), so
    nothing fails silently on a typo.

    Args:
        kind: What is being chosen, used in the message (e.g. ``"optimizer"``).
        value: The user's choice; compared case-insensitively.
        options: The valid choices.

    Raises:
        ConfigError: ``value`` is not among ``options``.

    >>> resolve_choice("optimizer", "Adam", ["adam", "sgd"])
    'adam'
    """
    normalised = value.lower().replace("_", "-") if isinstance(value, str) else value
    lookup = {o.lower().replace("_", "-"): o for o in options}
    if normalised not in lookup:
        raise ConfigError(f"unknown {kind} {value!r}; choose one of: {', '.join(sorted(options))}")
    return lookup[normalised]
