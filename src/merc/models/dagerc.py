"""DAG-ERC: directed acyclic graph network for conversational emotion recognition.

Shen, Wu, Yang, Quan. "Directed Acyclic Graph Network for Conversational Emotion
Recognition." ACL-IJCNLP 2021 (code: github.com/shenwzh3/DAG-ERC, model
``DAGERC_fushion``, the one ``run.py`` trains). MultiDAG (:mod:`merc.models.multidag`)
extends it with modality encoders; the two share the DAG network
(:mod:`merc.models.layers.dag`) and differ only where the papers differ.

Pipeline:

1. Utterance features. The paper reads one RoBERTa vector per utterance (text only).
   merc takes any modality subset: each modality has its own encoder, by default a
   ``linear`` map (:func:`merc.models.layers.encoders.build_encoder`) as wide as its
   features (``code_size``), and the codes are concatenated. With text alone and the
   default width this is the paper's input up to an invertible linear reparameterisation,
   so the model can express exactly the functions of the paper's network; it gives each
   modality its own parameters, as merc's model contract asks (a per-modality code,
   unimodal probes, gradient modulation).
2. Input layer ``H^0 = ReLU(W x + b)`` to the GNN width (the code's ``fc1``).
3. ``num_layers`` DAG-GNN layers (:class:`merc.models.layers.dag.DAGLayer`: relation-aware
   attention over the DAG predecessors, a node-information GRU and a context-information
   GRU whose outputs are summed) over the DAG of :func:`merc.data.graphs.dag_adjacency`
   (edges from the previous utterances back to the speaker's ``speaker_window``-th own
   previous turn).
4. The states of all layers and the layer input's source are concatenated (the code
   appends the utterance features to ``H^0 .. H^L``; here the fused codes, the features
   as the network receives them) and classified by a feed-forward network:
   ``mlp_layers`` x (Linear + ReLU), dropout, a linear output layer.

Differences from MultiDAG, as the papers: no contextual encoders (MultiDAG's BiLSTM for
text, FC for audio/visual), dropout only before the output layer (MultiDAG's code also
drops the encoder outputs), and no modelling of missing modalities (DAG-ERC sees the
features as given; MultiDAG zeroes what is unavailable).
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
from merc.models.layers.encoders import EncoderSpec, build_encoder, encoder_kinds
from merc.models.output import ModelOutput
from merc.models.registry import register_model

#: DAG-ERC reads utterance features directly: one linear map per modality (see the module docstring).
DAGERC_ENCODERS: dict[str, str] = {"t": "linear", "a": "linear", "v": "linear"}


@register_model("dagerc")
class DAGERC(MercModel):
    """DAG-ERC (Shen et al., 2021): per-modality linear codes, DAG-GNN, all-layer readout, MLP.

    Args:
        in_dims: Feature dim per modality, e.g. ``{"t": 1024}``.
        num_classes: Number of classes.
        hidden_size: Width of the input layer, of the DAG-GNN states and of the
            classifier. Default 300 (code ``--hidden_dim 300``).
        num_layers: DAG-GNN layers ``L``. Default 4 (README, IEMOCAP command
            ``--gnn_layers 4``; the code's default and the MELD command use 2).
        dropout: Dropout before the output layer. Default 0.2 (README, IEMOCAP
            ``--dropout 0.2``).
        speaker_window: How many of a speaker's own previous turns the DAG edges reach
            back to. Default 1 (code ``--windowp 1``).
        mlp_layers: Linear+ReLU layers of the classifier before its output layer.
            Default 2 (code ``--mlp_layers 2``).
        attention: ``"linear"`` (code default ``--attn_type rgcn``: a linear score of the
            node and its predecessor) or ``"dot"`` (its ``dotprod`` gatherer); see
            :class:`~merc.models.layers.dag.DAGLayer`.
        encoders: Encoder kind per modality; default :data:`DAGERC_ENCODERS`.
        code_size: Width of each modality's code; ``None`` (default) makes it the
            modality's feature dim, so a ``linear`` code loses nothing of the features.
        unimodal_heads: Linear probes per modality on the codes (no effect on training).

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, d_m]``, ``batch.parties`` ``[B, T]``
        - output: ``logits`` ``[N, C]``; ``embeddings`` ``[N, (L + 1) * hidden + sum_m h_m]``
    """

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        hidden_size: int = 300,
        num_layers: int = 4,
        dropout: float = 0.2,
        speaker_window: int = 1,
        mlp_layers: int = 2,
        attention: Literal["linear", "dot"] = "linear",
        encoders: EncoderSpec = None,
        code_size: int | None = None,
        unimodal_heads: bool = True,
    ) -> None:
        super().__init__(in_dims, num_classes, unimodal_heads=unimodal_heads)
        if hidden_size < 1:
            raise ConfigError(f"dagerc hidden_size must be >= 1, got {hidden_size}")
        if num_layers < 1 or mlp_layers < 1:
            raise ConfigError("dagerc num_layers and mlp_layers must be >= 1")
        if speaker_window < 1:
            raise ConfigError(f"dagerc speaker_window must be >= 1, got {speaker_window}")
        if code_size is not None and code_size < 1:
            raise ConfigError(f"dagerc code_size must be >= 1 or null, got {code_size}")
        self.speaker_window = speaker_window
        self.drop = nn.Dropout(dropout)
        kinds = encoder_kinds(encoders, self.modalities, DAGERC_ENCODERS, "dagerc")
        built = {m: build_encoder(kinds[m], d, code_size or d) for m, d in self.in_dims.items()}
        self.add_encoders(built, {m: enc.output_size for m, enc in built.items()})
        fused = sum(self.code_dims.values())
        self.input_proj = nn.Linear(fused, hidden_size)  # the code's fc1
        self.layers = DAGStack(hidden_size, num_layers, attention)
        self.mlp = dag_classifier_mlp(hidden_size * (num_layers + 1) + fused, hidden_size, mlp_layers)
        self.output = nn.Linear(hidden_size, num_classes)

    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        """Concatenated codes -> ``H^0`` -> DAG-GNN layers -> ``[H^0 .. H^L, x]`` -> classifier."""
        x = torch.cat([codes[m] for m in self.modalities], dim=-1)  # [N, sum h_m]
        h0 = batch.unflatten(F.relu(self.input_proj(x)))  # [B, T, hidden]
        states = self.layers(h0, batch.lengths, batch.parties, self.speaker_window)  # [B, T, (L+1) hidden]
        rep = torch.cat([batch.flatten(states), x], dim=-1)
        logits = self.output(self.drop(self.mlp(rep)))
        return ModelOutput(logits=logits, embeddings=rep)
