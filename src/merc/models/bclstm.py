"""bc-LSTM: bidirectional contextual LSTM (Poria et al., ACL 2017).

Poria, Cambria, Hazarika, Majumder, Zadeh, Morency. "Context-Dependent Sentiment
Analysis in User-Generated Videos." ACL 2017. A baseline of the CORECT, MultiDAG+CL and
subspace-mapping papers.

Each modality's utterance features run through a bidirectional LSTM over the dialogue
(the contextual level), then a dense layer; the hierarchical fusion of the paper feeds
the concatenated unimodal contextual features to a second bidirectional LSTM before the
classifier. The paper trains the unimodal networks first and the fusion network on
their frozen outputs; merc trains both levels jointly, with each unimodal head's
cross-entropy as an auxiliary loss (``unimodal_loss_weight``, the base class's unimodal
heads with the loss flowing into the encoders), which gives the same per-modality heads
in one run. ``fusion="concat"`` is the paper's non-hierarchical
variant (dense layer over the concatenation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.data.batching import Batch
from merc.errors import resolve_choice
from merc.models.base import MercModel
from merc.models.layers.encoders import build_encoder
from merc.models.layers.recurrent import ContextualRNN
from merc.models.output import ModelOutput
from merc.models.registry import register_model


@register_model("bclstm")
class BcLSTM(MercModel):
    """bc-LSTM (Poria et al., 2017): per-modality contextual BiLSTMs, hierarchical fusion.

    Args:
        in_dims: Feature dim per modality, e.g. ``{"t": 384, "a": 100}``.
        num_classes: Number of classes.
        hidden_size: LSTM units per direction (paper: 300 for the contextual LSTM).
        dense_size: Units of the dense layer after each LSTM (paper: 100... 500 tuned).
        dropout: Dropout on inputs and dense outputs.
        fusion: ``"hierarchical"`` (second BiLSTM over the concatenated unimodal
            contextual features) or ``"concat"`` (dense layer only).
        bidirectional: ``False`` gives the paper's unidirectional sc-LSTM variant.
        unimodal_loss_weight: Weight of the summed per-modality cross-entropies.
        unimodal_heads: The per-modality classifiers (the paper's unimodal networks);
            ``False`` trains the fused network alone.

    Encoders: per modality a ``"bilstm"`` (``"lstm"`` when unidirectional) encoder with
    the dense ``tanh`` layer as its projection (:func:`~merc.models.layers.encoders.build_encoder`);
    its output is the modality's code ``[N, dense_size]``.

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, d_m]``
        - output: ``logits`` ``[N, C]``; ``unimodal_logits[m]`` ``[N, C]``
    """

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        hidden_size: int = 300,
        dense_size: int = 100,
        dropout: float = 0.3,
        fusion: Literal["hierarchical", "concat"] = "hierarchical",
        bidirectional: bool = True,
        unimodal_loss_weight: float = 0.5,
        unimodal_heads: bool = True,
    ) -> None:
        super().__init__(in_dims, num_classes, unimodal_heads=unimodal_heads, unimodal_loss_weight=unimodal_loss_weight)
        self.fusion = resolve_choice("bc-LSTM fusion", fusion, ["hierarchical", "concat"])
        self.drop = nn.Dropout(dropout)
        width = 2 * hidden_size if bidirectional else hidden_size
        kind = "bilstm" if bidirectional else "lstm"
        self.add_encoders(
            {
                m: build_encoder(kind, d, width, output_size=dense_size, activation="tanh")
                for m, d in self.in_dims.items()
            },
            {m: dense_size for m in self.modalities},
        )
        fused_in = dense_size * len(self.modalities)
        if self.fusion == "hierarchical":
            self.fusion_rnn: ContextualRNN | None = ContextualRNN(fused_in, hidden_size, bidirectional=bidirectional)
            fused_in = self.fusion_rnn.output_size
        else:
            self.fusion_rnn = None
        self.fusion_dense = nn.Linear(fused_in, dense_size)
        self.classifier = nn.Linear(dense_size, num_classes)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        # Dropout on the input features and on each unimodal dense output, as the paper.
        return {m: self.drop(self.encoders[m](self.drop(batch.features[m]), batch)) for m in self.modalities}

    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        fused = torch.cat([codes[m] for m in self.modalities], dim=-1)  # [N, M * dense]
        if self.fusion_rnn is not None:
            fused = self.fusion_rnn.forward_flat(fused, batch)
        hidden = self.drop(F.relu(self.fusion_dense(fused)))
        return ModelOutput(logits=self.classifier(hidden), embeddings=hidden)
