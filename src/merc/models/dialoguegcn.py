r"""DialogueGCN: graph convolutional network for emotion recognition in conversation.

Ghosal, Majumder, Poria, Chhaya, Gelbukh. "DialogueGCN: A Graph Convolutional Neural
Network for Emotion Recognition in Conversation." EMNLP-IJCNLP 2019 (arXiv:1908.11540).
Implemented from the paper; hyper-parameters and details from the authors' code
(github.com/declare-lab/conv-emotion, ``DialogueGCN/``: ``model.py``, ``train_IEMOCAP.py``,
the README's IEMOCAP command) and Mian Zhang's re-implementation the authors link
(``DialogueGCN-mianzhang/``, the paper's bilinear edge attention).

Per utterance ``i`` of a dialogue:

1. **Sequential context encoder**: a 2-layer bidirectional GRU (paper) or
   LSTM (code default) over the dialogue's utterance features: ``g_i`` (``2 D_e`` wide).
2. **Speaker-level context encoder** on the directed graph of
   :func:`merc.data.graphs.dialoguegcn_graph`: edges inside a past/future window
   (``p = f = 10``), ``2 M^2`` relation types (speaker of the source, speaker of the
   target, whether the source comes first), edge weights from an attention over the
   window (eq. 1)

   .. math::

       \alpha_{ij} = \operatorname{softmax}_j \big(g_i^\top W_e\, [g_{i-p}, \dots, g_{i+f}]\big),

   then an RGCN layer with basis decomposition (eq. 2, the code's
   ``RGCNConv(..., num_bases=30)``), whose messages are the weighted sources
   :math:`\alpha_{ij} W_r g_j` (summed as the code's PyG 1.3 ``RGCNConv(edge_norm=...)``;
   ``rgcn_aggregation="mean"`` divides each relation's sum by its edge count, the
   paper's :math:`c_{i,r} = |N_i^r|`), and a ``GraphConv`` (eq. 3): ``h_i`` (``G`` wide).
3. **Emotion classifier**: :math:`[g_i; h_i]`, optionally the nodal attention of
   eq. 4-6 over the dialogue (``nodal_attention``; the code's ``MatchingAttention`` of
   type ``general2``), then ``Linear + ReLU``, dropout and ``Linear`` (eq. 7-9; the code's ``classify_node_features``).

PyG's current ``RGCNConv`` takes no edge weights; merc runs it on a bipartite graph
instead: one source row per edge holding :math:`\alpha_{e}\, g_{\mathrm{src}(e)}`, one
edge from it to the target, the targets' own features ``g`` as the root input. This is
the same function (each relation's weight is linear), with PyG's module and its basis
decomposition unchanged.

**Modalities.** The paper is text-only. merc encodes every modality on its own (a
``linear`` projection to ``modality_size`` by default, the width ``D_m = 100`` of the
code's text features) and, with ``fusion="early"`` (the default), concatenates the
codes before the sequential encoder: the paper's fusion of whatever features it reads.
``fusion="late"`` builds one DialogueGCN network per modality instead (its own
sequential encoder, edge attention, RGCN, GraphConv, nodal attention and classifier, all
on that modality's code alone); the fused logits are the sum of the per-modality
logits, which ``fuse`` returns as ``unimodal_logits`` (``fills_unimodal_logits``, no
base-class probe heads). Its ``modality_parameters()`` groups are each modality's
encoder and whole network.

**Where paper and code differ**: merc takes the paper's bilinear edge attention (eq. 1;
the original code scores with a ``Linear(2 D_e, max_seq_len)`` over absolute positions,
Mian Zhang's code with the bilinear form) and, by default and each behind an argument,
the code's window owner = edge source (``window_owner``, see :func:`~merc.data.graphs.dialoguegcn_graph`), summed RGCN
messages with an unweighted root term and the self edge in the graph, and no
activation between the graph layers (``graph_activation``; the paper writes
:math:`\sigma`). With the code's owner = source, node ``k`` receives ``j``'s message
weighted by ``j``'s attention over ``j``'s own window, so one RGCN layer already depends
on utterances up to two windows away (``tests/models/test_dialoguegcn.py`` checks both
reaches).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.data.batching import Batch
from merc.data.graphs import DialogueGCNGraph, dialoguegcn_graph
from merc.errors import ConfigError, resolve_choice
from merc.models.base import MercModel
from merc.models.gcnet import NodalAttention
from merc.models.layers.encoders import EncoderSpec, build_encoder, encoder_kinds
from merc.models.layers.recurrent import ContextualRNN
from merc.models.layers.relational_conv import grouped_relational_conv
from merc.models.output import ModelOutput
from merc.models.registry import register_model

if TYPE_CHECKING:
    from torch_geometric.nn import GraphConv, RGCNConv

CONTEXT_ENCODERS: tuple[str, ...] = ("gru", "lstm", "none")
FUSIONS: tuple[str, ...] = ("early", "late")


class EdgeAttention(nn.Module):
    r"""DialogueGCN's edge weights (eq. 1): a softmax of :math:`g_i^\top W_e g_j` over each owner's window.

    The owner ``i`` of an edge is the utterance whose window produced it
    (:attr:`merc.data.graphs.DialogueGCNGraph.owner`), ``j`` its other end; the weights
    of the edges of one owner sum to one (PyG's grouped ``softmax``, no loop).

    Args:
        dim: Node feature width ``2 D_e``.

    Shapes:
        - g ``[N, dim]``, graph with ``E`` edges -> ``[E]``
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Linear(dim, dim, bias=False)

    def forward(self, g: Tensor, graph: DialogueGCNGraph) -> Tensor:
        from torch_geometric.utils import softmax  # deferred: importing PyG costs seconds

        owner = graph.owner
        other = graph.edge_index.sum(0) - owner  # the end that is not the owner (itself for a self edge)
        scores = (g[owner] * self.weight(g)[other]).sum(-1)
        return softmax(scores, owner, num_nodes=g.shape[0])


class DialogueGCNNetwork(nn.Module):
    """One DialogueGCN: sequential encoder, edge attention, RGCN + GraphConv, classifier.

    The early-fusion model has one, on the concatenated codes; the late-fusion model one
    per modality.

    Args:
        in_dim: Input width per utterance.
        num_classes: Number of classes.
        num_relations: Relation types of the graph.
        hidden_size: ``D_e``, recurrent units per direction.
        graph_hidden_size: ``G``, width of both graph layers and the classifier's hidden layer.
        context_encoder: ``"gru"``, ``"lstm"`` (2-layer bidirectional) or ``"none"``
            (``Linear(in_dim, 2 D_e)``, the code's ``base_model='None'``).
        context_layers: Stacked recurrent layers.
        num_bases: RGCN basis decomposition (``None``: one full matrix per relation).
        rgcn_aggregation: ``"sum"`` or ``"mean"`` of each relation's weighted messages.
        graph_activation: ``"none"`` or ``"relu"`` after each graph layer.
        use_graph: ``False`` drops the speaker-level encoder (classifier on ``g`` alone).
        nodal_attention: Eq. 4-6 before the classifier.
        dropout: Between recurrent layers and after the classifier's hidden layer.

    Shapes:
        - x ``[N, in_dim]`` -> logits ``[N, C]``, hidden ``[N, G]``
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        num_relations: int,
        hidden_size: int,
        graph_hidden_size: int,
        context_encoder: str,
        context_layers: int,
        num_bases: int | None,
        rgcn_aggregation: str,
        graph_activation: str,
        use_graph: bool,
        nodal_attention: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.context_kind = context_encoder
        if context_encoder == "none":
            self.context: nn.Module = nn.Linear(in_dim, 2 * hidden_size)
        else:
            self.context = ContextualRNN(
                in_dim, hidden_size, num_layers=context_layers, cell=context_encoder, dropout=dropout
            )
        g_dim = 2 * hidden_size
        self.use_graph = use_graph
        self.graph_activation = graph_activation
        features = g_dim
        if use_graph:
            from torch_geometric.nn import GraphConv, RGCNConv  # deferred: importing PyG costs seconds

            self.edge_attention = EdgeAttention(g_dim)
            aggr = "add" if rgcn_aggregation == "sum" else "mean"
            self.rgcn: RGCNConv = RGCNConv(g_dim, graph_hidden_size, num_relations, num_bases=num_bases, aggr=aggr)
            self.graph_conv: GraphConv = GraphConv(graph_hidden_size, graph_hidden_size)
            features += graph_hidden_size
        self.attention = NodalAttention(features) if nodal_attention else None
        self.hidden = nn.Linear(features, graph_hidden_size)
        self.drop = nn.Dropout(dropout)
        self.output = nn.Linear(graph_hidden_size, num_classes)

    def forward(self, x: Tensor, batch: Batch, graph: DialogueGCNGraph, edge_type: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(self.context, ContextualRNN):
            g = self.context.forward_flat(x, batch)
        else:
            g = self.context(x)
        features = g
        if self.use_graph:
            alpha = self.edge_attention(g, graph)
            source, target = graph.edge_index
            # Eq. 2 with edge weights on PyG's RGCNConv: one weighted source row per edge.
            messages = alpha[:, None] * g[source]
            per_edge = torch.stack([torch.arange(source.numel(), device=source.device), target])
            h = self._act(grouped_relational_conv(self.rgcn, (messages, g), per_edge, edge_type))
            h = self._act(self.graph_conv(h, graph.edge_index))
            features = torch.cat([g, h], dim=-1)
        if self.attention is not None:
            features = batch.flatten(self.attention(batch.unflatten(features), batch.mask))
        hidden = self.drop(F.relu(self.hidden(features)))
        return self.output(hidden), hidden

    def _act(self, h: Tensor) -> Tensor:
        return F.relu(h) if self.graph_activation == "relu" else h


@register_model("dialoguegcn")
class DialogueGCN(MercModel):
    """DialogueGCN (Ghosal et al., EMNLP 2019): sequential encoder, speaker-level RGCN graph, classifier.

    Args:
        in_dims: Feature dim per modality.
        num_classes: Number of classes.
        num_parties: Speakers per dialogue the ``2 * num_parties ** 2`` relations cover
            (dataset fact; the code's ``n_speakers=2`` on IEMOCAP). More speakers in a
            dialogue is a :class:`~merc.errors.DataError`.
        modality_size: Code width of each modality encoder. Default 100 (the code's
            ``D_m``, the width of its text features).
        hidden_size: ``D_e``, recurrent units per direction (``g`` is ``2 D_e``). Default
            100 (``train_IEMOCAP.py``).
        graph_hidden_size: ``G``, graph layers and classifier hidden width. Default 100
            (``graph_h``).
        context_encoder: ``"gru"`` (default: the paper's bidirectional GRU),
            ``"lstm"`` (the code's ``--base-model LSTM``, its default and README
            command) or ``"none"`` (a linear layer: no sequential context).
        context_layers: Recurrent layers. Default 2 (the code's ``nn.GRU/LSTM(num_layers=2)``).
        window_past: ``p``. Default 10 (``train_IEMOCAP.py --windowp``).
        window_future: ``f``. Default 10 (``--windowf``).
        window_owner: ``"source"`` (default, the code's edge direction) or ``"target"``
            (eq. 1-2 as written): see :func:`merc.data.graphs.dialoguegcn_graph`.
        num_bases: RGCN bases. Default 30 (the code's ``RGCNConv(num_bases=30)``); ``None``
            gives one weight per relation.
        rgcn_aggregation: ``"sum"`` (default: the code's PyG 1.3 ``RGCNConv`` adds the
            weighted messages) or ``"mean"`` (eq. 2 with ``c_{i,r} = |N_i^r|``).
        graph_activation: ``"none"`` (default, the code) or ``"relu"`` (eq. 2-3's
            :math:`\\sigma`) after each graph layer.
        use_speaker_relations: Relation types by speaker pair. ``False``: 2 types (past
            and future only; the paper's ablation, the code's commented variant).
        use_temporal_relations: Relation types by direction. ``False``: ``M^2`` types.
        use_graph: The speaker-level context encoder; ``False`` is the paper's ablation
            without it (classifier on the sequential features).
        nodal_attention: Eq. 4-6 (``--nodal-attention``). Default False, the code's
            default; the README's IEMOCAP command (and merc's recipe) switch it on. Its
            scores are ``tanh``-bounded, so an utterance's own weight stays below
            ``e / (e + (n - 1) / e)`` in a dialogue of ``n``: it smooths predictions
            over the dialogue (a tiny set of independent random labels is not learnt).
        dropout: Between the recurrent layers and after the classifier's hidden layer.
            Default 0.5 (code default ``--dropout``; the README command uses 0.4).
        fusion: ``"early"`` (default: codes concatenated before the sequential encoder)
            or ``"late"`` (one network per modality, logits summed; see the module docstring).
        encoders: Encoder kind per modality. Default ``linear`` for every modality.
        unimodal_heads: Base-class probe heads on the codes (early fusion only: the late
            variant returns its own unimodal logits).

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, d_m]``, ``batch.parties`` ``[B, T]``
        - output: ``logits`` ``[N, C]``; ``embeddings`` ``[N, G]`` (``[N, M * G]`` late);
          ``unimodal_logits[m]`` ``[N, C]``
    """

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        num_parties: int = 2,
        modality_size: int = 100,
        hidden_size: int = 100,
        graph_hidden_size: int = 100,
        context_encoder: Literal["gru", "lstm", "none"] = "gru",
        context_layers: int = 2,
        window_past: int = 10,
        window_future: int = 10,
        window_owner: Literal["source", "target"] = "source",
        num_bases: int | None = 30,
        rgcn_aggregation: Literal["sum", "mean"] = "sum",
        graph_activation: Literal["none", "relu"] = "none",
        use_speaker_relations: bool = True,
        use_temporal_relations: bool = True,
        use_graph: bool = True,
        nodal_attention: bool = False,
        dropout: float = 0.5,
        fusion: Literal["early", "late"] = "early",
        encoders: EncoderSpec = None,
        unimodal_heads: bool = True,
    ) -> None:
        self.fusion = resolve_choice("DialogueGCN fusion", fusion, FUSIONS)
        super().__init__(in_dims, num_classes, unimodal_heads=unimodal_heads and self.fusion == "early")
        if min(num_parties, modality_size, hidden_size, graph_hidden_size, context_layers) < 1:
            raise ConfigError(
                "dialoguegcn num_parties, modality_size, hidden_size, graph_hidden_size and context_layers must be >= 1"
            )
        if window_past < -1 or window_future < -1:
            raise ConfigError(f"dialoguegcn windows must be >= 0 or -1 (unbounded), got {window_past}, {window_future}")
        if num_bases is not None and num_bases < 1:
            raise ConfigError(f"dialoguegcn num_bases must be >= 1 or null, got {num_bases}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dialoguegcn dropout must lie in [0, 1), got {dropout}")
        context = resolve_choice("DialogueGCN context encoder", context_encoder, CONTEXT_ENCODERS)
        self.window_owner = resolve_choice("window owner", window_owner, ["source", "target"])
        aggregation = resolve_choice("DialogueGCN RGCN aggregation", rgcn_aggregation, ["sum", "mean"])
        activation = resolve_choice("DialogueGCN graph activation", graph_activation, ["none", "relu"])
        self.num_parties = int(num_parties)
        self.max_parties = self.num_parties  # the relations cover num_parties ** 2 speaker pairs
        self.window_past = int(window_past)
        self.window_future = int(window_future)
        self.use_speaker_relations = bool(use_speaker_relations)
        self.use_temporal_relations = bool(use_temporal_relations)
        self.use_graph = bool(use_graph)
        self.fills_unimodal_logits = self.fusion == "late"

        kinds = encoder_kinds(encoders, self.modalities, dict.fromkeys(self.modalities, "linear"), "dialoguegcn")
        self.add_encoders(
            {m: build_encoder(kinds[m], d, modality_size) for m, d in self.in_dims.items()},
            dict.fromkeys(self.modalities, modality_size),
        )
        speaker_pairs = self.num_parties**2 if self.use_speaker_relations else 1
        num_relations = speaker_pairs * (2 if self.use_temporal_relations else 1)

        def network(in_dim: int) -> DialogueGCNNetwork:
            return DialogueGCNNetwork(
                in_dim,
                num_classes,
                num_relations,
                hidden_size,
                graph_hidden_size,
                context,
                context_layers,
                num_bases,
                aggregation,
                activation,
                self.use_graph,
                nodal_attention,
                dropout,
            )

        if self.fusion == "early":
            self.networks = nn.ModuleDict({"fused": network(sum(self.code_dims.values()))})
        else:
            self.networks = nn.ModuleDict({m: network(self.code_dims[m]) for m in self.modalities})

    def graph(self, batch: Batch) -> tuple[DialogueGCNGraph, Tensor]:
        """The batch's graph and the edge types of the relations in use (ablations merge them)."""
        graph = dialoguegcn_graph(
            batch.mask, batch.parties, self.window_past, self.window_future, self.num_parties, self.window_owner
        )
        edge_type = graph.edge_type  # 2 * speaker_pair + direction
        if not self.use_temporal_relations:
            edge_type = edge_type // 2
        if not self.use_speaker_relations:
            edge_type = edge_type % 2 if self.use_temporal_relations else torch.zeros_like(edge_type)
        return graph, edge_type

    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        if self.use_graph:
            graph, edge_type = self.graph(batch)
        else:  # no graph layers: nothing reads the edges
            empty = batch.flat_index.new_empty(0)
            graph, edge_type = DialogueGCNGraph(empty.view(2, 0), empty, empty), empty
        if self.fusion == "early":
            fused = torch.cat([codes[m] for m in self.modalities], dim=-1)  # [N, sum h_m]
            logits, hidden = self.networks["fused"](fused, batch, graph, edge_type)
            return ModelOutput(logits=logits, embeddings=hidden)
        outputs = {m: self.networks[m](codes[m], batch, graph, edge_type) for m in self.modalities}
        unimodal = {m: lg for m, (lg, _) in outputs.items()}
        return ModelOutput(
            logits=torch.stack(list(unimodal.values())).sum(0),
            unimodal_logits=unimodal,
            embeddings=torch.cat([h for _, h in outputs.values()], dim=-1),
        )

    def modality_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Per-modality groups: the encoder (+ probe head) early; the encoder and the modality's whole network late."""
        groups = super().modality_parameters()
        if self.fusion == "late":
            for m in self.modalities:
                groups[m] = groups[m] + list(self.networks[m].parameters())
        return groups


__all__ = ["DialogueGCN", "DialogueGCNNetwork", "EdgeAttention"]
