"""One trainer with hooks, training plug-ins and multi-seed experiment running.

The trainer (and torch) loads on first use of :class:`Trainer`, :class:`TrainConfig` or
:func:`seed_everything`, so that importing a torch-free submodule such as
:mod:`merc.training.robustness_sweep` (whose parser the CLI builds for every ``merc``
call) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from merc.training.trainer import TrainConfig, Trainer, seed_everything

__all__ = ["TrainConfig", "Trainer", "seed_everything"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from merc.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
