"""MultiDAG: multimodal directed acyclic graph network (Nguyen et al., LREC-COLING 2024).

Nguyen, Nguyen, Ha, Le. "Curriculum Learning Meets Directed Acyclic Graph for Multimodal
Emotion Recognition." LREC-COLING 2024, Section 2.1 (the "+CL" half of MultiDAG+CL is a
trainer plug-in, :mod:`merc.training.plugins.curriculum`, usable with any model). Built
on DAG-ERC (Shen et al., ACL 2021), whose code fixes what the paper leaves open.

Pipeline (paper eq. number in brackets):

1. Modality encoders [1]: a bidirectional LSTM over the dialogue for text, a fully
   connected layer (+ReLU) for audio and visual. An encoder's output is zeroed at
   utterances where its modality is unavailable (``batch.availability``).
2. Concatenation of the available modalities [2], then DAG-ERC's input layer
   ``H^0 = ReLU(W [h^t || h^a || h^v])`` to the GNN width (MultiDAG's code feeds the
   concatenated features through DAG-ERC's ``fc1`` the same way).
3. ``num_layers`` DAG-GNN layers [3-6] (:class:`merc.models.layers.dag.DAGLayer`) over the
   DAG of :func:`merc.models.layers.dag.dag_adjacency`.
4. All layers' states and the concatenated encoder outputs are concatenated [7]
   (DAG-ERC appends the layer input, too) and classified by DAG-ERC's feed-forward
   network: ``mlp_layers`` Linear+ReLU layers, dropout, a linear output layer.

Speed: each DAG-GNN layer is one loop over positions ``0..T-1`` with tensor operations
over all ``B`` dialogues of the batch at that position, so a batch costs ``T`` steps per
layer whatever the number of dialogues.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from merc.data.batching import Batch
from merc.errors import ConfigError
from merc.models.base import MercModel
from merc.models.layers.dag import DAGLayer, dag_adjacency, dag_schedule
from merc.models.layers.recurrent import DialogueRNN
from merc.models.output import ModelOutput
from merc.models.registry import register_model


@register_model("multidag")
class MultiDAG(MercModel):
    """MultiDAG (Nguyen et al., 2024): modality encoders, concatenation, DAG-GNN, classifier.

    Args:
        in_dims: Feature dim per modality, e.g. ``{"t": 384, "a": 100, "v": 256}``.
        num_classes: Number of classes.
        hidden_size: Width of the encoders and of the DAG-GNN states. Default 300
            (DAG-ERC and MultiDAG+CL code, ``--hidden_dim 300``). The text BiLSTM has
            ``hidden_size // 2`` units per direction.
        num_layers: DAG-GNN layers ``L``. Default 4 (paper Section 3.2: 4 for IEMOCAP,
            2 for MELD).
        dropout: Dropout on the encoder outputs and before the output layer. Default 0.4
            (paper Section 3.2: 0.4 for IEMOCAP, 0.1 for MELD).
        speaker_window: How many of a speaker's own previous turns the DAG edges reach
            back to. Default 1 (DAG-ERC ``--windowp 1``).
        text_encoder_layers: Stacked BiLSTM layers of the text encoder. Default 1 (the
            paper says "a bidirectional LSTM").
        mlp_layers: Linear+ReLU layers of the classifier before its output layer.
            Default 2 (DAG-ERC ``--mlp_layers 2``).
        attention: ``"linear"`` (paper eq. 3, DAG-ERC default) or ``"dot"`` (DAG-ERC's
            dot-product gatherer); see :class:`~merc.models.layers.dag.DAGLayer`.

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, d_m]``, ``batch.parties`` ``[B, T]``
        - output: ``logits`` ``[N, C]``; ``embeddings`` ``[N, (L + 1) * hidden + M * hidden]``
    """

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        hidden_size: int = 300,
        num_layers: int = 4,
        dropout: float = 0.4,
        speaker_window: int = 1,
        text_encoder_layers: int = 1,
        mlp_layers: int = 2,
        attention: str = "linear",
    ) -> None:
        super().__init__(in_dims, num_classes)
        if hidden_size < 2:
            raise ConfigError(f"multidag hidden_size must be >= 2, got {hidden_size}")
        if num_layers < 1 or mlp_layers < 1 or text_encoder_layers < 1:
            raise ConfigError("multidag num_layers, mlp_layers and text_encoder_layers must be >= 1")
        if speaker_window < 1:
            raise ConfigError(f"multidag speaker_window must be >= 1, got {speaker_window}")
        self.speaker_window = speaker_window
        self.drop = nn.Dropout(dropout)
        self.text_encoder: DialogueRNN | None = None
        self.fc_encoders = nn.ModuleDict()
        enc_dims: dict[str, int] = {}
        for m, d in self.in_dims.items():
            if m == "t":
                self.text_encoder = DialogueRNN(d, hidden_size // 2, num_layers=text_encoder_layers,
                                                bidirectional=True, dropout=dropout)
                enc_dims[m] = self.text_encoder.output_size
            else:
                self.fc_encoders[m] = nn.Linear(d, hidden_size)
                enc_dims[m] = hidden_size
        fused = sum(enc_dims.values())
        self.input_proj = nn.Linear(fused, hidden_size)
        self.layers = nn.ModuleList([DAGLayer(hidden_size, attention) for _ in range(num_layers)])
        mlp: list[nn.Module] = []
        width = hidden_size * (num_layers + 1) + fused
        for _ in range(mlp_layers):
            mlp += [nn.Linear(width, hidden_size), nn.ReLU()]
            width = hidden_size
        self.mlp = nn.Sequential(*mlp)
        self.output = nn.Linear(hidden_size, num_classes)

    def encode(self, batch: Batch) -> torch.Tensor:
        """Eqs. 1-2: per-modality encodings, masked by availability, concatenated ``[B, T, sum d]``."""
        parts = []
        for m in self.modalities:
            x = batch.features[m]
            h = self.text_encoder(x, batch.lengths) if m == "t" and self.text_encoder is not None \
                else F.relu(self.fc_encoders[m](x))
            # A missing modality contributes a zero vector, not the encoder's bias.
            parts.append(h * batch.modality_available(m).unsqueeze(-1).to(h.dtype))
        return self.drop(torch.cat(parts, dim=-1))

    def forward(self, batch: Batch) -> ModelOutput:
        self.check_batch(batch)
        x = self.encode(batch)
        adj, same = dag_adjacency(batch.lengths, batch.parties, self.speaker_window)
        schedule = dag_schedule(batch.lengths, adj)  # one host sync per batch, shared by all layers
        h = F.relu(self.input_proj(x))
        states = [h]
        for layer in self.layers:
            h = layer(h, adj, same, batch.lengths, schedule)
            states.append(h)
        states.append(x)
        # Classify only real utterances: flatten before the MLP.
        rep = batch.flatten(torch.cat(states, dim=-1))
        logits = self.output(self.drop(self.mlp(rep)))
        return ModelOutput(logits=logits, embeddings=rep)
