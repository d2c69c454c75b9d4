"""MultiDAG: multimodal directed acyclic graph network (Nguyen et al., LREC-COLING 2024).

Nguyen, Nguyen, Ha, Le. "Curriculum Learning Meets Directed Acyclic Graph for Multimodal
Emotion Recognition." LREC-COLING 2024, Section 2.1 (the "+CL" half of MultiDAG+CL is a
trainer plug-in, :mod:`merc.training.plugins.curriculum`, usable with any model). Built
on DAG-ERC (Shen et al., ACL 2021), whose code fixes what the paper leaves open.

Pipeline (paper eq. number in brackets):

1. Modality encoders [1]: a bidirectional LSTM over the dialogue for text, a fully
   connected layer (+ReLU) for audio and visual (``encoders``, from
   :func:`merc.models.layers.encoders.build_encoder`). Inputs and codes are zeroed at
   utterances where their modality is unavailable (``batch.availability``; the base
   class's ``models_missing``).
2. Concatenation of the available modalities [2], then DAG-ERC's input layer
   ``H^0 = ReLU(W [h^t || h^a || h^v])`` to the GNN width (MultiDAG's code feeds the
   concatenated features through DAG-ERC's ``fc1`` the same way).
3. ``num_layers`` DAG-GNN layers [3-6] (:class:`merc.models.layers.dag.DAGLayer`, run by
   :class:`~merc.models.layers.dag.DAGStack`) over the DAG of
   :func:`merc.data.graphs.dag_adjacency`.
4. All layers' states and the concatenated encoder outputs are concatenated [7]
   (DAG-ERC appends the layer input, too) and classified by DAG-ERC's feed-forward
   network: ``mlp_layers`` Linear+ReLU layers, dropout, a linear output layer.

Speed: each DAG-GNN layer is one loop over positions ``0..T-1`` with tensor operations
over all ``B`` dialogues of the batch at that position, so a batch costs ``T`` steps per
layer whatever the number of dialogues.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.data.batching import Batch
from merc.errors import ConfigError
from merc.models.base import MercModel
from merc.models.layers.dag import DAGStack, dag_classifier_mlp
from merc.models.layers.encoders import RECURRENT_KINDS, EncoderSpec, build_encoder, encoder_kinds
from merc.models.output import ModelOutput
from merc.models.registry import register_model

#: MultiDAG eq. 1: a bidirectional LSTM for text, a fully connected layer for audio and visual.
MULTIDAG_ENCODERS: dict[str, str] = {"t": "bilstm", "a": "fc", "v": "fc"}


@register_model("multidag")
class MultiDAG(MercModel):
    """MultiDAG (Nguyen et al., 2024): modality encoders, concatenation, DAG-GNN, classifier.

    Args:
        in_dims: Feature dim per modality, e.g. ``{"t": 384, "a": 100, "v": 256}``.
        num_classes: Number of classes.
        hidden_size: Width of the encoders and of the DAG-GNN states. Default 300
            (DAG-ERC and MultiDAG+CL code, ``--hidden_dim 300``). A bidirectional
            recurrent encoder has ``hidden_size // 2`` units per direction.
        num_layers: DAG-GNN layers ``L``. Default 4 (paper Section 3.2: 4 for IEMOCAP,
            2 for MELD).
        dropout: Dropout on the encoder outputs and before the output layer. Default 0.4
            (paper Section 3.2: 0.4 for IEMOCAP, 0.1 for MELD).
        speaker_window: How many of a speaker's own previous turns the DAG edges reach
            back to. Default 1 (DAG-ERC ``--windowp 1``).
        encoders: Encoder kind per modality; default :data:`MULTIDAG_ENCODERS`.
        rnn_layers: Stacked layers of a recurrent encoder. Default 1 (the paper says "a
            bidirectional LSTM").
        mlp_layers: Linear+ReLU layers of the classifier before its output layer.
            Default 2 (DAG-ERC ``--mlp_layers 2``).
        attention: ``"linear"`` (paper eq. 3, DAG-ERC default) or ``"dot"`` (DAG-ERC's
            dot-product gatherer); see :class:`~merc.models.layers.dag.DAGLayer`.
        unimodal_heads: Linear probes per modality on the codes (no effect on training).

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, d_m]``, ``batch.parties`` ``[B, T]``
        - output: ``logits`` ``[N, C]``; ``embeddings`` ``[N, (L + 1) * hidden + M * hidden]``
    """

    models_missing = True

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        hidden_size: int = 300,
        num_layers: int = 4,
        dropout: float = 0.4,
        speaker_window: int = 1,
        encoders: EncoderSpec = None,
        rnn_layers: int = 1,
        mlp_layers: int = 2,
        attention: Literal["linear", "dot"] = "linear",
        unimodal_heads: bool = True,
    ) -> None:
        super().__init__(in_dims, num_classes, unimodal_heads=unimodal_heads)
        if hidden_size < 2:
            raise ConfigError(f"multidag hidden_size must be >= 2, got {hidden_size}")
        if num_layers < 1 or mlp_layers < 1 or rnn_layers < 1:
            raise ConfigError("multidag num_layers, mlp_layers and rnn_layers must be >= 1")
        if speaker_window < 1:
            raise ConfigError(f"multidag speaker_window must be >= 1, got {speaker_window}")
        self.speaker_window = speaker_window
        self.drop = nn.Dropout(dropout)
        kinds = encoder_kinds(encoders, self.modalities, MULTIDAG_ENCODERS, "multidag")
        built = {
            m: build_encoder(
                kinds[m], d, hidden_size, num_layers=rnn_layers if kinds[m] in RECURRENT_KINDS else 1, dropout=dropout
            )
            for m, d in self.in_dims.items()
        }
        self.add_encoders(built, {m: enc.output_size for m, enc in built.items()})
        fused = sum(self.code_dims.values())
        # DAG-ERC's network (shared with merc.models.dagerc): input layer, DAG-GNN layers,
        # feed-forward classifier over all layers' states and the fused codes.
        self.input_proj = nn.Linear(fused, hidden_size)
        self.layers = DAGStack(hidden_size, num_layers, attention)
        self.mlp = dag_classifier_mlp(hidden_size * (num_layers + 1) + fused, hidden_size, mlp_layers)
        self.output = nn.Linear(hidden_size, num_classes)

    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        """Eqs. 2-7: concatenation, DAG-GNN layers over the padded dialogues, classifier."""
        x = self.drop(torch.cat([codes[m] for m in self.modalities], dim=-1))  # [N, sum h_m]
        h0 = batch.unflatten(F.relu(self.input_proj(x)))  # [B, T, hidden]
        states = self.layers(h0, batch.lengths, batch.parties, self.speaker_window)  # [B, T, (L+1) hidden]
        # Classify only real utterances: flatten before the MLP.
        rep = torch.cat([batch.flatten(states), x], dim=-1)
        logits = self.output(self.drop(self.mlp(rep)))
        return ModelOutput(logits=logits, embeddings=rep)
