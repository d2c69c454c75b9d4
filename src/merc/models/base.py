"""Base class of every merc model."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from merc.data.batching import Batch
from merc.data.schema import parse_modalities
from merc.errors import DataError
from merc.models.output import ModelOutput


class MercModel(nn.Module):
    """A conversation model: ``forward(batch) -> ModelOutput``.

    Args:
        in_dims: Feature dim per modality the model uses, e.g. ``{"t": 384}``.
        num_classes: Number of emotion classes.

    Subclasses declare every other hyper-parameter as a typed constructor argument with
    the paper's default.
    """

    model_name: str = ""

    def __init__(self, in_dims: Mapping[str, int], num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise DataError(f"num_classes must be at least 2, got {num_classes}")
        self.modalities: tuple[str, ...] = parse_modalities(list(in_dims))
        self.in_dims: dict[str, int] = {m: int(in_dims[m]) for m in self.modalities}
        self.num_classes = int(num_classes)

    def check_batch(self, batch: Batch) -> None:
        """Raise a clear error if the batch lacks a modality or has the wrong dims."""
        for m in self.modalities:
            if m not in batch.features:
                raise DataError(f"{self.model_name}: batch has no {m!r} features (model built for {''.join(self.modalities)})")
            d = batch.features[m].shape[-1]
            if d != self.in_dims[m]:
                raise DataError(
                    f"{self.model_name}: {m!r} features have dim {d}, the model was built for {self.in_dims[m]}"
                )

    def forward(self, batch: Batch) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError
