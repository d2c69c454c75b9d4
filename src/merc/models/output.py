"""The one output contract every merc model returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass(kw_only=True)
class ModelOutput:
    """What ``model(batch)`` returns (keyword-only: ``ModelOutput(logits=...)``).

    Attributes:
        logits: Fused class scores ``[N, C]`` for the batch's real utterances in
            :attr:`merc.data.batching.Batch.flat_index` order.
        unimodal_logits: Per-modality scores ``[N, C]``: a late-fusion model's own
            unimodal networks, else the base class's linear heads on each modality's code
            (:class:`merc.models.base.MercModel`, ``unimodal_heads=True``). Read by
            gradient-modulation and curriculum plug-ins; empty for early-fusion models.
        unimodal_features: Per-modality codes ``[N, h_m]`` (the encoders' outputs, before
            any ``before_fuse`` hook changed them); empty for early-fusion models.
        aux_losses: Named auxiliary losses (scalars), already multiplied by the model's
            own coefficients; the trainer adds them to the classification loss and logs
            each under its name.
        embeddings: Optional fused utterance representation ``[N, H]``.
    """

    logits: Tensor
    unimodal_logits: dict[str, Tensor] = field(default_factory=dict)
    unimodal_features: dict[str, Tensor] = field(default_factory=dict)
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    embeddings: Tensor | None = None
