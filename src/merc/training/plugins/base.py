"""The trainer plug-in interface.

A plug-in changes *how* a model is trained without touching the model: curricula choose
which dialogues an epoch sees, self-paced learning reweights the utterances' losses,
prediction modulation (OPM) changes the modality codes before fusion, auxiliary
objectives add named loss terms, gradient modulation (OGM-GE, Ada2I, PGM) rescales
gradients between ``backward()`` and the optimiser step. Plug-ins see models only
through the model contract: :class:`merc.models.ModelOutput`, the codes passed to
:meth:`TrainerPlugin.before_fuse` and :meth:`merc.models.MercModel.modality_parameters`.

Plug-ins compose: utterance weights multiply, loss terms add up under their names (the
trainer logs each), before-fuse hooks run in order, gradient hooks run in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from merc.data.batching import Batch
    from merc.models.output import ModelOutput
    from merc.training.trainer import Trainer


class TrainerPlugin:
    """Base class; every hook is a no-op. Override the ones a plug-in needs.

    Hooks in call order: :meth:`on_fit_start`; per epoch :meth:`select_training_dialogues`,
    :meth:`on_epoch_start`; per batch :meth:`before_fuse` (inside the model's forward),
    :meth:`utterance_weights`, :meth:`loss_terms`, :meth:`backward` (a plug-in may compute
    the gradients itself), :meth:`after_backward` (gradients
    exist, the optimiser has not stepped), :meth:`on_batch_end`; then
    :meth:`on_epoch_end` and :meth:`epoch_metrics`. :meth:`state_dict` / :meth:`load_state_dict` let a resumed
    run continue the plug-in where it stopped.
    """

    name: str = "plugin"
    #: The plug-in needs per-modality parts (unimodal logits, codes, parameter groups);
    #: the trainer refuses a model that fuses early with a clear error.
    needs_per_modality: bool = False

    def on_fit_start(self, trainer: Trainer) -> None:
        """Called once before the first epoch (after a resume, too)."""

    def select_training_dialogues(self, trainer: Trainer, epoch: int, indices: list[int]) -> list[int]:
        """Choose the training dialogues (indices into ``trainer.train_items``) of ``epoch``."""
        return indices

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Called at the start of each epoch, after the dialogues were chosen."""

    def before_fuse(self, trainer: Trainer, batch: Batch, codes: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """Change the modality codes ``{m: [N, h_m]}`` before the model fuses them (or ``None``).

        Only called for plug-ins that override it; the model must encode per modality.
        Runs in evaluation too: check ``trainer.model.training`` to act in training only.
        """
        return None

    def utterance_weights(
        self, trainer: Trainer, batch: Batch, output: ModelOutput, utterance_loss: Tensor
    ) -> Tensor | None:
        """Weights ``[N]`` of the per-utterance classification losses ``[N]`` (or ``None``: all 1).

        The weights of several plug-ins multiply. The classification term is
        ``sum(w * loss) / (number of labelled utterances)``: with unit weights the mean,
        with 0/1 weights the self-paced objective over the selected utterances.
        """
        return None

    def loss_terms(self, trainer: Trainer, batch: Batch, output: ModelOutput) -> dict[str, Tensor]:
        """Named scalar losses to add (weighted already); names must differ from the model's."""
        return {}

    def backward(self, trainer: Trainer, batch: Batch, output: ModelOutput, terms: dict[str, Tensor]) -> bool:
        """Compute the gradients of the batch's loss ``terms`` in place of the trainer's ``loss.backward()``.

        For plug-ins that need each term's gradient on its own (the Pareto gradient
        modulator, ``pgm``): fill ``.grad`` of the model's parameters and return ``True``;
        ``False`` leaves it to the trainer (the sum of ``terms``, backward once). Called
        after ``optimizer.zero_grad()``, before :meth:`after_backward`; at most one
        plug-in of a run may override it.
        """
        return False

    def after_backward(self, trainer: Trainer, batch: Batch, output: ModelOutput) -> None:
        """Between ``loss.backward()`` and ``optimizer.step()``: gradient modulation acts here."""

    def on_batch_end(self, trainer: Trainer, batch: Batch, output: ModelOutput, loss: float) -> None:
        """After the optimiser step."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, valid_metrics: dict[str, Any]) -> None:
        """After validation of ``epoch``."""

    def epoch_metrics(self, trainer: Trainer) -> dict[str, Any]:
        """Numbers of the epoch just trained, recorded in ``history.json`` under ``plugins.<name>``.

        Called after :meth:`on_epoch_end`; e.g. SPCL's share of selected utterances
        (its curriculum expanding rate) or a modulation's mean coefficient per modality.
        JSON-serialisable values only.
        """
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
