"""The one output contract every merc model returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ModelOutput:
    """What ``model(batch)`` returns.

    Attributes:
        logits: Fused class scores ``[N, C]`` for the batch's real utterances in
            :attr:`merc.data.batching.Batch.flat_index` order.
        unimodal_logits: Per-modality scores ``[N, C]`` (used by gradient-modulation and
            curriculum plug-ins); empty when the model has no per-modality heads.
        aux_losses: Named auxiliary losses (scalars), already multiplied by the model's
            own coefficients; the trainer adds them to the classification loss.
        embeddings: Optional fused utterance representation ``[N, H]``.
    """

    logits: Tensor
    unimodal_logits: dict[str, Tensor] = field(default_factory=dict)
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    embeddings: Tensor | None = None
