r"""MMGCN: multimodal fusion via a deep graph convolution network (Hu et al., ACL 2021).

Hu, Liu, Zhao, Jin. "MMGCN: Multimodal Fusion via Deep Graph Convolution Network for
Emotion Recognition in Conversation." ACL-IJCNLP 2021 (arXiv:2107.06779). Implemented
from the paper and the facts of the authors' code (``hujingwen6666/MMGCN``: ``model.py``
``DialogueGCNModel``, ``model_mm.py`` ``MM_GCN``, ``model_GCN.py`` ``GCNII_lyc``, the
README commands); the code here is merc's own. MM-DFN (:mod:`merc.models.mmdfn`) is the
same family: it imports everything below and changes only what its paper changes.

Pipeline, for ``M`` modalities and ``N`` utterances:

1. **Modality encoders** (the paper's modality encoder): each modality is projected by
   ``Linear(d_m, hidden_size)`` (the code's ``linear_a/v/l``, 200 units); text then runs
   through a 2-layer bidirectional LSTM over the dialogue (``hidden_size // 2`` units per
   direction, the code's ``lstm_l`` with ``D_e = 100``); audio and visual stop at the
   projection (the code's default ``av_using_lstm=False``: "fully connected"). Kinds per
   modality come from ``encoders``: ``"linear"`` is the projection alone, any other kind of
   :func:`merc.models.layers.encoders.build_encoder` runs on the projection.
2. **Speaker embedding**: an embedding of the speaker is added to the
   encoded features; the code adds it to the text features only
   (``speaker_modalities="text"``; ``"all"`` adds it to every modality) and indexes it
   by the IEMOCAP speaker role M/F (``n_speakers = 2``: merc's global speaker ids,
   ``speaker_ids="global"``) or, on MELD, the per-dialogue speaker index (``9``
   parties: ``speaker_ids="party"``, then ``max_parties`` is the embedding's size and a
   larger dialogue is a :class:`~merc.errors.DataError`).
3. **Graph** (the paper's graph construction; :func:`merc.data.graphs.mmgcn_graph`): one node per utterance
   and modality; intra-modal edges join every two utterances of a dialogue in one
   modality (self loops included), inter-modal edges the modality nodes of one
   utterance. Edge weights are the angular similarity of the node features,
   ``1 - arccos(sim) / pi``, normalised as ``D^{-1/2} A D^{-1/2}``
   (:func:`merc.models.layers.deep_gcn.normalized_graph`).
4. **Deep GCN** (the paper's spectral domain graph convolution; :class:`merc.models.layers.deep_gcn.DeepGCN`): input layer
   ``ReLU(Linear(hidden_size, graph_hidden_size))``, then ``num_layers`` GCNII layers
   (PyG's ``GCN2Conv``: initial residual ``alpha``, identity mapping
   ``beta_l = log(lamda / l + 1)``), the output concatenated with the layer's input
   (the code's ``use_residue``): ``hidden_size + graph_hidden_size`` per node.
5. **Classifier**: an utterance's ``M`` node outputs are concatenated
   (``[N, M * (hidden_size + graph_hidden_size)]``, 900 in the code), then dropout, ReLU
   and ``Linear(., C)``.

``fusion="late"`` builds one unimodal network per modality instead: the modality's own
graph (:func:`~merc.data.graphs.mmgcn_graph` over that modality alone: intra-modal edges
only), its own deep GCN and its own classifier on that modality's node outputs; the fused
logits are the sum of the ``M`` unimodal logits, which ``fuse`` returns as
``unimodal_logits`` (``fills_unimodal_logits``; no probe heads are built, and
:meth:`~MMGCN.modality_parameters` gives each modality its encoder plus its unimodal
network). It is what SPCL-style curricula and gradient-modulation plug-ins need: the
modalities meet only in the sum. Since the classifier is linear after the ReLU, the
summed logits are the graph-fusion classifier on the concatenated node outputs of
graphs without inter-modal edges, each modality with its own GCN.

Choices where paper and code differ or are silent (documented, exposed):

- ``num_layers`` defaults to 4, the README's ``--Deep_GCN_nlayers 4`` (IEMOCAP and MELD
  commands). The released ``DialogueGCNModel`` passes ``nlayers=64`` to ``MM_GCN``
  whatever that flag says.
- The GCNII layer has separate weights for the propagated and the initial states
  (``separate_initial_weight``: the code's ``variant=True``; see
  :mod:`merc.models.layers.deep_gcn` for how PyG's form relates to the code's).
- Zero feature vectors get a cosine of 0 with every other node (the code divides by
  zero); padding never becomes a node, so a dialogue's predictions do not depend on its
  batch mates (the code builds one adjacency per batch, block-diagonal all the same).
- Missing modalities are not modelled: absent features enter as they are (zero or
  imputed), as in the code.
- The code selects its checkpoint on the test set; merc selects on validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from merc.data.batching import Batch
from merc.data.graphs import mmgcn_graph
from merc.errors import ConfigError, resolve_choice
from merc.models.base import MercModel
from merc.models.layers.deep_gcn import DeepGCN, DynamicFusionGCN, normalized_graph
from merc.models.layers.dropout import FastDropout
from merc.models.layers.encoders import EncoderSpec, build_encoder, encoder_kinds
from merc.models.layers.graph_attention import NodeBlocks
from merc.models.output import ModelOutput
from merc.models.registry import register_model

#: MMGCN's modality encoder (paper and code): a BiLSTM for text; audio and visual are the linear projection alone.
MMGCN_ENCODERS: dict[str, str] = {"t": "bilstm", "a": "linear", "v": "linear"}
FUSIONS: tuple[str, ...] = ("graph", "late")
SPEAKER_IDS: tuple[str, ...] = ("global", "party")
SPEAKER_MODALITIES: tuple[str, ...] = ("text", "all")


class GraphModalityEncoder(nn.Module):
    """One modality's encoder in the MMGCN family: projection, context encoder, optional speaker context.

    ``p = Linear(d, width)(x)`` per utterance; ``h = p`` for kind ``"linear"``, else the
    kind's encoder over ``p`` (a recurrent kind reads each dialogue in order); with a
    ``speaker`` module (MM-DFN) ``h + speaker_weight * speaker(p, batch)``.

    Args:
        in_dim: Feature dim ``d``.
        width: Projection and output width.
        kind: An encoder kind of :func:`~merc.models.layers.encoders.build_encoder`.
        context_layers: Layers of the context encoder (recurrent, Transformer, fc).
        dropout: Between stacked recurrent layers / inside Transformer layers.
        speaker: ``speaker(p [N, width], batch) -> [N, width]`` or ``None``.
        speaker_weight: Its weight.

    Shapes:
        - x ``[B, T, d]`` -> ``[N, width]``
    """

    def __init__(
        self,
        in_dim: int,
        width: int,
        kind: str,
        context_layers: int,
        dropout: float,
        speaker: nn.Module | None = None,
        speaker_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if context_layers < 1:
            raise ConfigError(f"context_layers must be >= 1, got {context_layers}")
        self.projection = nn.Linear(in_dim, width)
        self.context = (
            None if kind == "linear" else build_encoder(kind, width, width, num_layers=context_layers, dropout=dropout)
        )
        self.speaker = speaker
        self.speaker_weight = float(speaker_weight)
        self.output_size = width

    def forward(self, x: Tensor, batch: Batch) -> Tensor:
        p = self.projection(batch.flatten(x))
        h = p if self.context is None else self.context(batch.unflatten(p), batch)
        if self.speaker is not None:
            h = h + self.speaker_weight * self.speaker(p, batch)
        return h


def node_blocks(batch: Batch, num_modalities: int) -> NodeBlocks:
    """Dense layout of the ``M * N`` graph nodes: dialogue ``b``, slot ``k * T + position``."""
    n = batch.num_utterances
    offsets = torch.arange(num_modalities, device=batch.mask.device) * batch.max_len
    return NodeBlocks(
        block=batch.utterance_dialogue.repeat(num_modalities),
        slot=offsets.repeat_interleave(n) + batch.utterance_position.repeat(num_modalities),
        num_blocks=batch.batch_size,
        size=num_modalities * batch.max_len,
    )


class GraphBranch(nn.Module):
    """MMGCN's graph, deep GCN and classifier over some modalities (all: graph fusion; one: a late-fusion branch).

    Args:
        modalities: Node blocks, in order.
        stack: The deep GCN (:class:`~merc.models.layers.deep_gcn.DeepGCN` or its gated form).
        num_classes: ``C``.
        dropout: Classifier dropout.
        intra_modal, inter_modal, window: Graph switches of :func:`~merc.data.graphs.mmgcn_graph`.

    Shapes:
        - codes ``{m: [N, h]}`` -> logits ``[N, C]`` and fused ``[N, M * stack.output_size]``
    """

    def __init__(
        self,
        modalities: tuple[str, ...],
        stack: DeepGCN,
        num_classes: int,
        dropout: float,
        intra_modal: bool,
        inter_modal: bool,
        window: int,
    ) -> None:
        super().__init__()
        self.modalities = modalities
        self.stack = stack
        self.intra_modal = intra_modal
        self.inter_modal = inter_modal
        self.window = window
        self.output_size = len(modalities) * stack.output_size
        # The code's classifier: dropout, ReLU, one linear layer on the concatenated node outputs.
        self.classifier = nn.Sequential(FastDropout(dropout), nn.ReLU(), nn.Linear(self.output_size, num_classes))

    def forward(self, batch: Batch, codes: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        mods = self.modalities
        n = batch.num_utterances
        graph = mmgcn_graph(
            batch.lengths, mods, intra_modal=self.intra_modal, inter_modal=self.inter_modal, window=self.window
        )
        x = torch.cat([codes[m].float() for m in mods])  # node k * N + n
        out = self.stack(x, normalized_graph(x, graph.edge_index, node_blocks(batch, len(mods))))
        fused = out.view(len(mods), n, -1).transpose(0, 1).reshape(n, -1)
        return self.classifier(fused), fused


class MultimodalGraphModel(MercModel):
    """The MMGCN family's shared model: encoders, speaker embedding, graph fusion or late fusion.

    Not registered; :class:`MMGCN` and :class:`merc.models.mmdfn.MMDFN` are, each with its
    paper's defaults. ``dynamic_fusion=None`` builds MMGCN's deep GCN, a bool MM-DFN's
    (:class:`~merc.models.layers.deep_gcn.DynamicFusionGCN`, gated when true);
    ``speaker_context`` maps each modality to its speaker-level encoder and weight
    (MM-DFN), empty for MMGCN. See :class:`MMGCN` for the other arguments.
    """

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        *,
        num_speakers: int,
        num_parties: int,
        hidden_size: int,
        graph_hidden_size: int,
        num_layers: int,
        alpha: float,
        lamda: float,
        dropout: float,
        separate_initial_weight: bool,
        residual_input: bool,
        use_speaker_embedding: bool,
        speaker_ids: str,
        speaker_modalities: str,
        use_intra_modal_edges: bool,
        use_inter_modal_edges: bool,
        intra_window: int,
        fusion: str,
        encoders: EncoderSpec,
        default_encoders: Mapping[str, str],
        context_layers: int,
        unimodal_heads: bool,
        dynamic_fusion: bool | None = None,
        speaker_context: Mapping[str, tuple[nn.Module, float]] | None = None,
    ) -> None:
        name = type(self).model_name
        chosen_fusion = resolve_choice(f"{name} fusion", fusion, FUSIONS)
        late = chosen_fusion == "late"
        # The late variant returns its own unimodal logits: no probe heads.
        super().__init__(in_dims, num_classes, unimodal_heads=unimodal_heads and not late)
        self.fusion = chosen_fusion
        self.fills_unimodal_logits = late
        if hidden_size < 2 or graph_hidden_size < 1:
            raise ConfigError(f"{name}: hidden_size must be >= 2 and graph_hidden_size >= 1")
        mods = self.modalities
        self.hidden_size = hidden_size
        self.speaker_ids = resolve_choice(f"{name} speaker ids", speaker_ids, SPEAKER_IDS)
        self.speaker_modalities = resolve_choice(f"{name} speaker modalities", speaker_modalities, SPEAKER_MODALITIES)
        kinds = encoder_kinds(encoders, mods, default_encoders, name)
        speakers = dict(speaker_context or {})
        built: dict[str, nn.Module] = {}
        for m, d in self.in_dims.items():
            speaker, weight = speakers.get(m, (None, 0.0))
            built[m] = GraphModalityEncoder(d, hidden_size, kinds[m], context_layers, dropout, speaker, weight)
        self.add_encoders(built, {m: hidden_size for m in mods})

        # The code adds the embedding to the text features only; without text it has none.
        self.speaker_targets = tuple(m for m in mods if self.speaker_modalities == "all" or m == "t")
        rows = num_speakers if self.speaker_ids == "global" else num_parties
        self.speaker_embedding = (
            nn.Embedding(max(rows, 1), hidden_size) if use_speaker_embedding and self.speaker_targets else None
        )
        if self.speaker_embedding is not None and self.speaker_ids == "party":
            self.max_parties = rows

        def stack() -> DeepGCN:
            common = (hidden_size, graph_hidden_size, num_layers, alpha, lamda, dropout)
            if dynamic_fusion is None:
                return DeepGCN(*common, separate_initial_weight, residual_input)
            return DynamicFusionGCN(*common, separate_initial_weight, residual_input, gated=dynamic_fusion)

        def branch(branch_modalities: tuple[str, ...]) -> GraphBranch:
            return GraphBranch(
                branch_modalities,
                stack(),
                num_classes,
                dropout,
                intra_modal=use_intra_modal_edges,
                inter_modal=use_inter_modal_edges,
                window=intra_window,
            )

        if late:
            # One unimodal network per modality: its own graph (intra-modal edges only), GCN and classifier.
            late_branches = {m: branch((m,)) for m in mods}
            self.branches = nn.ModuleDict(late_branches)
            self.fused_size = sum(b.output_size for b in late_branches.values())
        else:
            self.branch = branch(mods)
            self.fused_size = self.branch.output_size

    def _speaker_vectors(self, batch: Batch) -> Tensor:
        """``[N, hidden_size]`` speaker embeddings of the real utterances."""
        assert self.speaker_embedding is not None
        return self.speaker_embeddings(batch, self.speaker_embedding, self.speaker_ids)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """Modality encoders, plus the speaker embedding on ``speaker_targets``: ``{m: [N, hidden_size]}``."""
        codes = super().encode(batch)
        if self.speaker_embedding is None:
            return codes
        speaker = self._speaker_vectors(batch)
        return {m: h + speaker if m in self.speaker_targets else h for m, h in codes.items()}

    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        """Graph fusion over all modalities, or the sum of the unimodal networks (``fusion="late"``)."""
        if self.fusion == "graph":
            logits, fused = self.branch(batch, codes)
            return ModelOutput(logits=logits, embeddings=fused)
        unimodal = {}
        parts = []
        for m in self.modalities:
            unimodal[m], fused_m = self.branches[m](batch, codes)
            parts.append(fused_m)
        logits = torch.stack(list(unimodal.values())).sum(0)
        return ModelOutput(logits=logits, unimodal_logits=unimodal, embeddings=torch.cat(parts, dim=-1))

    def modality_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Per-modality groups: the encoder and unimodal head; in the late variant the encoder and its whole unimodal network."""
        groups = super().modality_parameters()
        if self.fusion == "late":
            for m in self.modalities:
                groups[m] = groups[m] + list(self.branches[m].parameters())
        return groups


@register_model("mmgcn")
class MMGCN(MultimodalGraphModel):
    """MMGCN (Hu et al., ACL 2021): one deep spectral GCN over a graph of all modalities' utterance nodes.

    Args:
        in_dims: Feature dim per modality, e.g. ``{"t": 100, "a": 1582, "v": 342}``.
        num_classes: Number of classes.
        num_speakers: Global speakers of the dataset (embedding rows, ``speaker_ids="global"``).
        num_parties: Most speakers in one dialogue (embedding rows, ``speaker_ids="party"``).
        hidden_size: Projection, encoder and node width (code: ``hidden_a/v/l = 2 * D_e = 200``).
        graph_hidden_size: Deep GCN width (code ``graph_h``: 100).
        num_layers: GCNII layers (README ``--Deep_GCN_nlayers 4``; see the module docstring).
        alpha: Initial-residual weight (code: 0.1).
        lamda: ``lambda`` of the identity mapping ``beta_l = log(lambda / l + 1)`` (code: 0.5).
        dropout: Dropout in the deep GCN, the classifier and between LSTM layers (README: 0.4).
        separate_initial_weight: Own weights for the initial residual (code ``variant=True``).
        residual_input: The classifier reads ``[x, H^{(L)}]`` per node (code ``use_residue``).
        use_speaker_embedding: Add the speaker embedding (README ``--use_speaker``).
        speaker_ids: ``"global"`` (dataset speaker ids: IEMOCAP's M/F roles, as the code)
            or ``"party"`` (per-dialogue speaker index: MELD in the code).
        speaker_modalities: ``"text"`` (the code) or ``"all"``: where the embedding is added.
        use_intra_modal_edges: Intra-modal edges of the graph.
        use_inter_modal_edges: Inter-modal edges of the graph.
        intra_window: Largest turn distance of an intra-modal edge; -1 (the paper and the
            code): the whole dialogue.
        fusion: ``"graph"`` (the paper) or ``"late"`` (one unimodal network per modality,
            logits summed; see the module docstring).
        encoders: Encoder kind per modality; default :data:`MMGCN_ENCODERS`
            (``{"t": "bilstm", "a": "linear", "v": "linear"}``); ``"linear"`` is the projection alone.
        context_layers: Layers of a non-linear encoder (code: 2-layer LSTM).
        unimodal_heads: Linear probes per modality on the codes (graph fusion only).

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, d_m]``
        - output: ``logits`` ``[N, C]``; ``embeddings`` ``[N, M * (hidden_size + graph_hidden_size)]``
    """

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        num_speakers: int = 2,
        num_parties: int = 2,
        hidden_size: int = 200,
        graph_hidden_size: int = 100,
        num_layers: int = 4,
        alpha: float = 0.1,
        lamda: float = 0.5,
        dropout: float = 0.4,
        separate_initial_weight: bool = True,
        residual_input: bool = True,
        use_speaker_embedding: bool = True,
        speaker_ids: Literal["global", "party"] = "global",
        speaker_modalities: Literal["text", "all"] = "text",
        use_intra_modal_edges: bool = True,
        use_inter_modal_edges: bool = True,
        intra_window: int = -1,
        fusion: Literal["graph", "late"] = "graph",
        encoders: EncoderSpec = None,
        context_layers: int = 2,
        unimodal_heads: bool = True,
    ) -> None:
        super().__init__(
            in_dims,
            num_classes,
            num_speakers=num_speakers,
            num_parties=num_parties,
            hidden_size=hidden_size,
            graph_hidden_size=graph_hidden_size,
            num_layers=num_layers,
            alpha=alpha,
            lamda=lamda,
            dropout=dropout,
            separate_initial_weight=separate_initial_weight,
            residual_input=residual_input,
            use_speaker_embedding=use_speaker_embedding,
            speaker_ids=speaker_ids,
            speaker_modalities=speaker_modalities,
            use_intra_modal_edges=use_intra_modal_edges,
            use_inter_modal_edges=use_inter_modal_edges,
            intra_window=intra_window,
            fusion=fusion,
            encoders=encoders,
            default_encoders=MMGCN_ENCODERS,
            context_layers=context_layers,
            unimodal_heads=unimodal_heads,
        )


__all__ = [
    "FUSIONS",
    "MMGCN",
    "MMGCN_ENCODERS",
    "GraphBranch",
    "GraphModalityEncoder",
    "MultimodalGraphModel",
    "node_blocks",
]
