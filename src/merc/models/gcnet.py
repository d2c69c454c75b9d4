r"""GCNet: graph completion network for incomplete modalities (Lian et al., TPAMI 2023).

Lian, Chen, Sun, Liu, Tao. "GCNet: Graph Completion Network for Incomplete Multimodal
Learning in Conversation." IEEE TPAMI 45(7), 2023 (arXiv:2203.02177). Implemented from
the paper and the facts of its code (github.com/zeroQiaoba/GCNet, ``gcnet/``):

1. The masked features of all modalities are concatenated per utterance and read by a
   2-layer bidirectional LSTM (``hidden_size`` units per direction): ``[B, T, 2 D_e]``.
2. Two graph networks over the utterances of each dialogue, both with edges from every
   utterance ``j`` in the window ``[i - window_past, i + window_future]`` to ``i``
   (self included):

   - **TGNN** (temporal): relation = the order of ``j`` relative to ``i`` (past, now,
     future; 3 relations);
   - **SGNN** (speaker): relation = the (speaker of ``i``, speaker of ``j``) pair
     (``num_parties ** 2`` relations; the code is limited to two speakers).

   Each is an ``RGCNConv`` (``2 D_e -> G``) then a ``GraphConv`` (``G -> G``), the output
   concatenated with its input (``D_h = 2 D_e + G``), a 2-layer BiLSTM over the dialogue,
   optional nodal attention (``time_attention``, the code's ``MatchingAttention`` of type
   ``general2``) and ``ReLU(Linear(2 D_h -> D_h))``.
3. The two graph outputs are summed; a linear classifier and a linear reconstruction
   head (``D_h ->`` the concatenated input features) read the sum.

Loss: the trainer's cross-entropy plus ``aux_losses["reconstruction"]`` = the code's
``MaskedReconLoss``: squared error summed over features divided by each modality's dim,
summed over the (utterance, modality) entries in the loss, divided by the number of
utterances. GCNet evaluates it at the entries its random masks hid, whose complete
features it holds; merc's masked datasets zero missing features, so here the loss covers
the entries the data has (``batch.availability``): the visible ones and, with
``train_mask_rate > 0``, those hidden from the model during training -- GCNet's
per-batch masks, redrawn every forward pass, restricted to features that exist.

Graphs are built for the whole batch with tensor ops from dense ``[B, T, T]`` masks; no
edge crosses dialogues and every LSTM runs on packed sequences, so a dialogue's
prediction does not depend on its batch mates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.data.batching import Batch
from merc.data.graphs import window_edges
from merc.errors import ConfigError, resolve_choice
from merc.models.base import MercModel
from merc.models.layers.recurrent import ContextualRNN
from merc.models.layers.relational_conv import grouped_relational_conv
from merc.models.output import ModelOutput
from merc.models.registry import register_model

if TYPE_CHECKING:
    from torch_geometric.nn import GraphConv, RGCNConv

GRAPH_KINDS: tuple[str, ...] = ("temporal", "speaker")
GCNET_RECONSTRUCTION_LOSSES: tuple[str, ...] = ("mse", "none")


class NodalAttention(nn.Module):
    """GCNet's optional attention over the dialogue (code: ``MatchingAttention`` general2).

    For each utterance, scores ``tanh(W x_i + b) . x_j`` over the dialogue's utterances,
    softmax restricted to real utterances, attention-pooled states.

    Shapes:
        - x ``[B, T, D]``, mask ``bool [B, T]``; output ``[B, T, D]``
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.transform = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        scores = torch.tanh(self.transform(x) @ x.transpose(1, 2))
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        return torch.softmax(scores, dim=-1) @ x


class GraphNetwork(nn.Module):
    """One of GCNet's two graph networks (TGNN or SGNN): RGCN, GraphConv, BiLSTM.

    Args:
        in_dim: Node feature width ``2 D_e``.
        graph_dim: ``G``.
        num_relations: Relation types of the graph.
        dropout: Dropout between the stacked LSTM layers.
        time_attention: Nodal attention before the output layer.

    Shapes:
        - nodes ``[N, in_dim]`` -> output ``[B, T, in_dim + graph_dim]``
    """

    def __init__(self, in_dim: int, graph_dim: int, num_relations: int, dropout: float, time_attention: bool) -> None:
        super().__init__()
        from torch_geometric.nn import GraphConv, RGCNConv  # deferred: importing PyG costs seconds

        self.conv1: RGCNConv = RGCNConv(in_dim, graph_dim, num_relations)
        self.conv2: GraphConv = GraphConv(graph_dim, graph_dim)
        d_h = in_dim + graph_dim
        self.rnn = ContextualRNN(d_h, d_h, num_layers=2, dropout=dropout)
        self.attention = NodalAttention(2 * d_h) if time_attention else None
        self.output = nn.Linear(2 * d_h, d_h)

    def forward(self, nodes: Tensor, edge_index: Tensor, edge_type: Tensor, batch: Batch) -> Tensor:
        out = self.conv2(grouped_relational_conv(self.conv1, nodes, edge_index, edge_type), edge_index)
        states = batch.unflatten(torch.cat([nodes, out], dim=-1))
        states = self.rnn(states, batch.lengths)
        if self.attention is not None:
            states = self.attention(states, batch.mask)
        return F.relu(self.output(states))


@register_model("gcnet")
class GCNet(MercModel):
    """GCNet (Lian et al., 2023): BiLSTM, temporal + speaker RGCN graphs, classify + reconstruct.

    Args:
        in_dims: Feature dim per modality.
        num_classes: Number of classes.
        num_parties: Speakers per dialogue covered by the speaker relations (dataset
            fact). Default 2 (the code asserts at most two).
        hidden_size: ``D_e``, LSTM units per direction of the base encoder. Default 50,
            the smallest of the code's sweep (``run_gcnet.sh``: 50, 100, 200); the recipe
            uses README's IEMOCAP-6 value 200 (23M parameters on synthetic data: each graph
            network's 2-layer BiLSTM is ``D_h = 2.5 D_e`` units wide).
        graph_hidden_size: ``G``; ``None`` gives ``hidden_size // 2`` as in the code.
        window_past: Past context of the graph edges. Default 2 (``--windowp=2``).
        window_future: Future context. Default 2 (``--windowf=2``).
        dropout: Dropout between stacked LSTM layers. Default 0.5 (code default).
        time_attention: Nodal attention (``--time-attn``). Default False (README command).
        reconstruction_loss: ``"mse"`` (``--loss-recon``) or ``"none"``. Default ``"mse"``.
        reconstruction_weight: Weight of the reconstruction loss. Default 1.0 (code).
        train_mask_rate: Share of available entries hidden during training, redrawn each
            batch (GCNet's masks). Default 0.0: merc's datasets carry the masks.

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, d_m]``, ``batch.availability`` ``[B, T, M]``
        - output: ``logits`` ``[N, C]``; ``embeddings`` ``[N, D_h]``;
          ``aux_losses["reconstruction"]`` scalar (training only)

    GCNet fuses early (``fuses_early``): its codes are the (masked) input features
    themselves, it has no unimodal heads, and plug-ins that need per-modality parts
    refuse it.
    """

    fuses_early = True
    models_missing = True

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        num_parties: int = 2,
        hidden_size: int = 50,
        graph_hidden_size: int | None = None,
        window_past: int = 2,
        window_future: int = 2,
        dropout: float = 0.5,
        time_attention: bool = False,
        reconstruction_loss: Literal["mse", "none"] = "mse",
        reconstruction_weight: float = 1.0,
        train_mask_rate: float = 0.0,
    ) -> None:
        super().__init__(in_dims, num_classes)
        if min(num_parties, hidden_size) < 1 or (graph_hidden_size is not None and graph_hidden_size < 1):
            raise ConfigError("gcnet num_parties, hidden_size and graph_hidden_size must be >= 1")
        if window_past < -1 or window_future < -1:
            raise ConfigError(f"gcnet windows must be >= 0 or -1 (unbounded), got {window_past}, {window_future}")
        if not 0.0 <= train_mask_rate <= 1.0:
            raise ConfigError(f"gcnet train_mask_rate must lie in [0, 1], got {train_mask_rate}")
        self.reconstruction_kind = resolve_choice(
            "gcnet reconstruction loss", reconstruction_loss, list(GCNET_RECONSTRUCTION_LOSSES)
        )
        self.num_parties = int(num_parties)
        self.max_parties = self.num_parties  # the speaker relations cover num_parties ** 2 pairs
        self.window_past = int(window_past)
        self.window_future = int(window_future)
        self.reconstruction_weight = float(reconstruction_weight)
        self.train_mask_rate = float(train_mask_rate)
        graph_dim = int(graph_hidden_size) if graph_hidden_size is not None else max(hidden_size // 2, 1)
        input_dim = sum(self.in_dims.values())
        self.encoder = ContextualRNN(input_dim, hidden_size, num_layers=2, dropout=dropout)
        d_e2 = self.encoder.output_size
        self.graphs = nn.ModuleDict(
            {
                "temporal": GraphNetwork(d_e2, graph_dim, 3, dropout, time_attention),
                "speaker": GraphNetwork(d_e2, graph_dim, self.num_parties**2, dropout, time_attention),
            }
        )
        d_h = d_e2 + graph_dim
        self.classifier = nn.Linear(d_h, num_classes)
        self.reconstruction = nn.Linear(d_h, input_dim)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """The inputs themselves, ``{m: [N, d_m]}`` (zeroed where not visible): GCNet fuses early."""
        return {m: batch.flatten(batch.features[m]) for m in self.modalities}

    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        mask = batch.mask
        inputs = batch.unflatten(torch.cat([codes[m] for m in self.modalities], dim=-1))
        states = self.encoder(inputs, batch.lengths)
        nodes = batch.flatten(states)
        edge_index, temporal, speaker = window_edges(
            mask, batch.parties, self.window_past, self.window_future, self.num_parties
        )
        hidden = self.graphs["temporal"](nodes, edge_index, temporal, batch) + self.graphs["speaker"](
            nodes, edge_index, speaker, batch
        )
        flat_hidden = batch.flatten(hidden)
        aux: dict[str, Tensor] = {}
        if self.training and self.reconstruction_kind != "none" and self.reconstruction_weight > 0:
            # Targets are the features as given, at every entry the data has (also those
            # hidden from the model this batch).
            given = batch.complete if batch.complete is not None else batch
            recon = self.reconstruction(flat_hidden)
            aux["reconstruction"] = self.reconstruction_weight * self._reconstruction_loss(
                recon, given, self.flat_availability(given)
            )
        return ModelOutput(logits=self.classifier(flat_hidden), aux_losses=aux, embeddings=flat_hidden)

    def _reconstruction_loss(self, recon: Tensor, batch: Batch, entries: Tensor) -> Tensor:
        """GCNet's ``MaskedReconLoss`` over ``entries`` (``bool [N, M]``).

        Shapes:
            - recon ``[N, sum d_m]`` in modality order; output scalar.
        """
        total = recon.new_zeros(())
        start = 0
        for k, m in enumerate(self.modalities):
            d = self.in_dims[m]
            err = (recon[:, start : start + d] - batch.flatten(batch.features[m])).pow(2).sum(-1) / d
            total = total + (err * entries[:, k].to(err.dtype)).sum()
            start += d
        return total / max(batch.num_utterances, 1)


__all__ = ["GCNet", "GraphNetwork", "NodalAttention"]
