"""The trainer plug-in interface.

A plug-in changes *how* a model is trained without touching the model: curricula choose
which dialogues an epoch sees, self-paced learning reweights the loss, gradient
modulation (OGM-GE, Ada2I, PGM) rescales gradients between ``backward()`` and the
optimiser step. Plug-ins see models only through :class:`merc.models.ModelOutput`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from merc.data.batching import Batch
    from merc.models.output import ModelOutput
    from merc.training.trainer import Trainer


class TrainerPlugin:
    """Base class; every hook is a no-op. Override the ones a plug-in needs.

    Hooks in call order: :meth:`on_fit_start`; per epoch :meth:`select_training_dialogues`,
    :meth:`on_epoch_start`; per batch :meth:`compute_loss`, :meth:`after_backward`
    (gradients exist, the optimiser has not stepped), :meth:`on_batch_end`; then
    :meth:`on_epoch_end`. :meth:`state_dict` / :meth:`load_state_dict` let a resumed
    run continue the plug-in where it stopped.
    """

    name: str = "plugin"

    def on_fit_start(self, trainer: Trainer) -> None:
        """Called once before the first epoch (after a resume, too)."""

    def select_training_dialogues(self, trainer: Trainer, epoch: int, indices: list[int]) -> list[int]:
        """Choose the training dialogues (indices into ``trainer.train_items``) of ``epoch``."""
        return indices

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Called at the start of each epoch, after the dialogues were chosen."""

    def compute_loss(
        self, trainer: Trainer, batch: Batch, output: ModelOutput, utterance_loss: Tensor
    ) -> Tensor | None:
        """Reduce the per-utterance classification loss ``[N]`` to a scalar, or ``None``
        to keep the trainer's mean. Auxiliary losses are added afterwards."""
        return None

    def after_backward(self, trainer: Trainer, batch: Batch, output: ModelOutput) -> None:
        """Between ``loss.backward()`` and ``optimizer.step()``: gradient modulation acts here."""

    def on_batch_end(self, trainer: Trainer, batch: Batch, output: ModelOutput, loss: float) -> None:
        """After the optimiser step."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, valid_metrics: dict[str, Any]) -> None:
        """After validation of ``epoch``."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
