"""CORECT: relational temporal GNN with auxiliary cross-modality interaction.

Nguyen, Mai, Le, Kieu, Le. "Conversation Understanding using Relational Temporal Graph
Neural Networks with Auxiliary Cross-Modality Interaction." EMNLP 2023. Reference
code: ``leson502/CORECT_EMNLP2023`` (hyper-parameters from its ``train.py`` and
``run_train.sh``; the code here is merc's own).

Pipeline (Section 3, Figure 2), for a batch of ``B`` dialogues, ``M`` modalities,
hidden size ``h``:

1. **Unimodal encoders** (3.1.1, eq. 1-2): a Transformer encoder over each dialogue's
   text features followed by a linear map to ``h``; a two-layer fully connected
   network (Linear-ReLU-Linear-ReLU) for audio and visual features.
2. **Speaker embedding** (3.1.2, eq. 3-4): ``X_m = eta * Emb(speaker) + X_m`` for every
   modality; the reference adds the embedding as is (``eta = 1``) and indexes it by
   the IEMOCAP speaker role (M/F), i.e. merc's global speaker id on IEMOCAP.
3. **RT-GCN** (3.2): the multimodal graph of :func:`merc.data.graphs.build_corect_graph`
   (``M`` nodes per utterance, cross-modal + past/future relations in the window
   ``[P, F]``), an RGCN layer (eq. 7), then a Graph Transformer with ``gnn_heads``
   concatenated heads (eq. 8-9), BatchNorm and LeakyReLU as in the reference; an
   utterance's ``M`` node outputs are concatenated: ``[N, M * gnn_heads * h]``.
4. **P-CM** (3.3, eq. 11-13): for every ordered modality pair ``s -> t`` a
   ``pcm_layers``-layer cross-modal transformer (``pcm_heads`` heads) over the padded
   ``[B, T, h]`` dialogue tensors with key padding masks; per target modality the
   ``M - 1`` outputs are concatenated and refined by a self-attention transformer
   (``pcm_memory_layers`` layers; the reference's ``num_self_att=3``, which the paper's
   Figure 5 shows as the final transformer); all are concatenated:
   ``[N, M * (M - 1) * h]``.
5. **Classifier** (3.4, eq. 14-17): ``[G, Z]`` -> Linear(h) -> ReLU -> Dropout -> Linear(C).

Choices where the paper and code differ or are silent (all documented, some exposed):

- Temporal edge direction follows the reference (``window_owner="source"``): see
  :func:`merc.data.graphs.build_corect_graph` for what each node then aggregates;
  ``"target"`` gives the paper's reading of eq. 6.
- The window slice is the reference's ``[i - P, i + F)``.
- Every node keeps its self relation in all ablations, as the reference does.
- Padding is masked everywhere (text Transformer and P-CM attend only to the real
  utterances of the same dialogue; the reference attends to padding), so predictions
  of a dialogue do not depend on its batch mates in evaluation mode. In training
  mode the Graph Transformer's BatchNorm uses batch statistics, as in the reference.
- Missing modalities (``batch.availability``) are not modelled: CORECT assumes all
  modalities of every utterance are present; absent ones enter as their (zero)
  features.
- The reference's text Transformer has no positional encoding; neither has this one.

Speed (CPU; ``bench/bench_corect.py`` times it against the reference), same function:

- Encoders, speaker embedding and classifier work on the ``N`` real utterances
  (``[N, d]``), never on the padded ``[B, T, d]`` grid; the text Transformer's
  per-utterance parts too, only its attention sees the padded grid
  (:mod:`merc.models.layers.transformer`).
- The Graph Transformer is evaluated as masked dense attention per dialogue
  (:mod:`merc.models.layers.graph_attention`) instead of PyG's per-edge gathers, and
  the RGCN for all relations at once (:mod:`merc.models.layers.relational_conv`)
  instead of PyG's round per relation; both from the PyG modules' own weights.
- Dropout masks come from random bits (:mod:`merc.models.layers.dropout`) because
  PyTorch's CPU ``bernoulli_`` is slow (``bench/bench_cpu_kernels.py``). Same
  distribution, another random stream than ``nn.Dropout``.
- Under ``training.precision=bf16-mixed`` on CPU the text Transformer (projections,
  feed-forward, attention) and the Graph Transformer (projections, attention) run in
  bfloat16 at bucketed shapes so that oneDNN reuses its compiled kernels; the RGCN,
  P-CM, BatchNorm and classifier stay float32 (:mod:`merc.models.layers.precision`).
  Accuracy against the reference and speed: ``bench/results/corect.json``.
- Every fast path above sits behind one switch: ``MERC_FAST_KERNELS=0`` runs the plain
  PyTorch / PyG modules instead (:mod:`merc.models.layers.fast`; tests check both agree).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import RGCNConv, TransformerConv

from merc.data.batching import Batch
from merc.data.graphs import (
    CORECT_NUM_RELATIONS,
    build_corect_graph,
    corect_relation_names,
    cross_modal_relation,
    temporal_relation,
)
from merc.errors import ConfigError, resolve_choice
from merc.models.base import MercModel
from merc.models.layers.crossmodal import CrossModalTransformer
from merc.models.layers.dropout import FastDropout
from merc.models.layers.encoders import EncoderSpec, build_encoder, encoder_kinds
from merc.models.layers.graph_attention import NodeBlocks, block_transformer_conv, supports_block_attention
from merc.models.layers.precision import cpu_autocast_active, float32_region
from merc.models.layers.relational_conv import relational_mean_conv, supports_fused_rgcn
from merc.models.output import ModelOutput
from merc.models.registry import register_model


class NodeBatchNorm(nn.BatchNorm1d):
    """BatchNorm over graph nodes that tolerates a single-node batch in training.

    PyTorch cannot estimate a variance from one value and raises; a training batch of
    one one-utterance dialogue with one modality has exactly one node, so such a batch
    is normalised with the running statistics instead.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


#: CORECT's encoders (Section 3.1.1): a Transformer for text (eq. 1), a two-layer FC network for audio and visual (eq. 2).
CORECT_ENCODERS: dict[str, str] = {"t": "transformer", "a": "fc", "v": "fc"}


class RTGCN(nn.Module):
    """RT-GCN's graph learning (Section 3.2.2): RGCN (eq. 7) then a Graph Transformer (eq. 8-9).

    Args:
        hidden: Node feature dim ``h`` (in and out of the RGCN, per head of the Graph Transformer).
        num_relations: Relation types the RGCN distinguishes.
        heads: Graph Transformer heads, concatenated (A.3: 7).

    The RGCN is PyG's ``RGCNConv``, evaluated for all relations at once
    (:func:`merc.models.layers.relational_conv.relational_mean_conv`, the same function
    in a handful of operations instead of a dozen per relation). The Graph Transformer
    is PyG's ``TransformerConv``; given ``blocks`` (the dialogue and slot of every node)
    it is evaluated as masked dense attention per dialogue
    (:func:`merc.models.layers.graph_attention.block_transformer_conv`, the same
    function without PyG's per-edge gather/scatter; ``MERC_FAST_KERNELS=0`` runs PyG's own
    forward, :mod:`merc.models.layers.fast`).

    Shapes:
        - x: ``[V, h]``; edge_index: ``[2, E]``; edge_type: ``[E]`` in ``0 .. num_relations - 1``
        - output: ``[V, heads * h]``
    """

    def __init__(self, hidden: int, num_relations: int, heads: int) -> None:
        super().__init__()
        self.rgcn = RGCNConv(hidden, hidden, num_relations)  # mean over each relation's neighbours + root, eq. 7
        self.graph_transformer = TransformerConv(hidden, hidden, heads=heads, concat=True)
        self.norm = NodeBatchNorm(heads * hidden)

    def forward(self, x: Tensor, edge_index: Tensor, edge_type: Tensor, blocks: NodeBlocks | None = None) -> Tensor:
        # Under CPU autocast only the Graph Transformer's products run in bfloat16 (at
        # bucketed shapes); PyG's RGCN would run ragged bfloat16 products, slower than
        # float32 on CPU (merc.models.layers.precision).
        x, precision = float32_region(x)
        with precision:
            if supports_fused_rgcn(self.rgcn, x):
                g = relational_mean_conv(self.rgcn, x, edge_index, edge_type)
            else:
                g = self.rgcn(x, edge_index, edge_type)
        if blocks is not None and supports_block_attention(self.graph_transformer):
            g = block_transformer_conv(self.graph_transformer, g, edge_index, blocks)
        else:
            with precision:
                g = self.graph_transformer(g, edge_index)
        g, precision = float32_region(g)
        with precision:
            return F.leaky_relu(self.norm(g))


class PairwiseCrossModal(nn.Module):
    """P-CM (Section 3.3, eq. 11-13): cross-modal transformers for every ordered modality pair.

    Args:
        modalities: At least two modalities, in output order.
        hidden: Feature dim ``h`` of every modality.
        heads: Heads of the cross-modal transformers (A.3: 2).
        layers: Cross-modal layers ``D`` (reference ``num_crossmodal``: 2).
        memory_layers: Self-attention layers over each target's concatenated cross-modal
            outputs (reference ``num_self_att``: 3); 0 skips them.
        memory_heads: Heads of those layers (reference ``self_att_nheads``: 2).
        dropout: Dropout inside the blocks (reference: 0).

    Shapes:
        - features: ``{m: [B, T, h]}``; padding: ``bool [B, T]`` (true = padding)
        - output: ``[B, T, M * (M - 1) * h]``, target-major: for each target modality, its
          ``M - 1`` sources in ``modalities`` order.
    """

    def __init__(
        self,
        modalities: tuple[str, ...],
        hidden: int,
        heads: int,
        layers: int,
        memory_layers: int,
        memory_heads: int,
        dropout: float,
    ) -> None:
        super().__init__()
        if len(modalities) < 2:
            raise ConfigError("P-CM needs at least two modalities")
        self.modalities = modalities
        self.cross = nn.ModuleDict(
            {
                f"{s}2{t}": CrossModalTransformer(hidden, heads, layers, dropout=dropout)
                for t in modalities
                for s in modalities
                if s != t
            }
        )
        width = hidden * (len(modalities) - 1)
        if memory_layers and width % memory_heads:
            raise ConfigError(f"P-CM memory width {width} is not divisible by {memory_heads} heads")
        self.memory = (
            nn.ModuleDict(
                {
                    t: CrossModalTransformer(width, memory_heads, memory_layers, cross=False, dropout=dropout)
                    for t in modalities
                }
            )
            if memory_layers
            else None
        )
        self.output_size = len(modalities) * width

    def forward(self, features: Mapping[str, Tensor], padding: Tensor) -> Tensor:
        outs = []
        for t in self.modalities:
            parts = [
                self.cross[f"{s}2{t}"](features[t], features[s], key_padding_mask=padding)
                for s in self.modalities
                if s != t
            ]
            z = torch.cat(parts, dim=-1)
            if self.memory is not None:
                z = self.memory[t](z, key_padding_mask=padding)
            outs.append(z)
        return torch.cat(outs, dim=-1)


@register_model("corect")
class CORECT(MercModel):
    """CORECT (Nguyen et al., EMNLP 2023): RT-GCN over a multimodal temporal graph + P-CM.

    Args:
        in_dims: Feature dim per modality, e.g. ``{"t": 384, "a": 100, "v": 512}``.
        num_classes: Number of classes.
        num_speakers: Global speakers of the dataset (embedding rows for
            ``speaker_ids="global"``).
        num_parties: Most speakers in one dialogue (rows for ``speaker_ids="party"``).
        hidden_size: ``h`` of encoders, RGCN, each Graph Transformer head, P-CM and the
            classifier (reference ``--hidden_size``: 100).
        dropout: Dropout of the classifier and the text Transformer (A.3: 0.5).
        use_rtgcn: RT-GCN branch ("w/o RT-GCN" in Tables 5 and 8).
        use_pcm: P-CM branch ("w/o P-CM"); absent with one modality.
        use_multimodal_relations: Cross-modal relations R_multi ("w/o R_multi"); the
            self relation stays.
        use_temporal_relations: Past/future relations R_temp ("w/o R_temp").
        use_speaker_embedding: Add the speaker embedding (Section 4.3: -1.70 w-F1 without).
        speaker_ratio: ``eta`` of eq. 4 (reference: 1, the embedding added as is).
        speaker_ids: ``"global"`` (dataset speaker ids; IEMOCAP's M/F roles, as the
            reference) or ``"party"`` (per-dialogue speaker index, for corpora such as
            MELD whose test speakers are unseen in training).
        past_window: ``P`` (Section 4.3 / A.3: 11 on IEMOCAP; 5 on short dialogues).
        future_window: ``F`` (9 on IEMOCAP; 4 on short dialogues).
        window_owner: Temporal edge direction, ``"source"`` (reference) or ``"target"``,
            see :func:`merc.data.graphs.build_corect_graph`.
        gnn_heads: Graph Transformer heads (A.3: 7).
        pcm_heads: P-CM cross-modal heads (A.3: 2).
        pcm_layers: P-CM cross-modal layers ``D`` (reference ``num_crossmodal``: 2).
        pcm_memory_layers: P-CM self-attention layers per target (reference ``num_self_att``: 3).
        pcm_memory_heads: Their heads (reference ``self_att_nheads``: 2).
        pcm_dropout: Dropout inside P-CM (reference: 0).
        encoders: Encoder kind per modality (:func:`merc.models.layers.encoders.build_encoder`);
            default :data:`CORECT_ENCODERS` (text ``"transformer"``, audio/visual ``"fc"``);
            ``{"t": "fc"}`` is the reference's ``--rnn ffn``.
        transformer_layers: Layers of a ``"transformer"`` encoder (reference ``encoder_nlayers``: 2).
        transformer_heads: Its heads; 0 picks them as the reference
            (:func:`~merc.models.layers.encoders.auto_heads`).
        transformer_ffn_size: Its feed-forward size (PyTorch default, as the reference: 2048).
        fc_layers: Linear+ReLU layers of an ``"fc"`` encoder (eq. 2: 2).
        unimodal_heads: Linear probes per modality on the codes
            (:class:`~merc.models.base.MercModel`); CORECT itself has none, they do not
            change its training.

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, d_m]``
        - output: ``logits`` ``[N, C]``; ``embeddings`` ``[N, H]``, the fused ``[G, Z]`` of eq. 14
    """

    relation_lookup: Tensor  # long [15]: stable relation id -> RGCN relation index (-1 = unused)

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        num_speakers: int = 2,
        num_parties: int = 2,
        hidden_size: int = 100,
        dropout: float = 0.5,
        use_rtgcn: bool = True,
        use_pcm: bool = True,
        use_multimodal_relations: bool = True,
        use_temporal_relations: bool = True,
        use_speaker_embedding: bool = True,
        speaker_ratio: float = 1.0,
        speaker_ids: Literal["global", "party"] = "global",
        past_window: int = 11,
        future_window: int = 9,
        window_owner: Literal["source", "target"] = "source",
        gnn_heads: int = 7,
        pcm_heads: int = 2,
        pcm_layers: int = 2,
        pcm_memory_layers: int = 3,
        pcm_memory_heads: int = 2,
        pcm_dropout: float = 0.0,
        encoders: EncoderSpec = None,
        transformer_layers: int = 2,
        transformer_heads: int = 0,
        transformer_ffn_size: int = 2048,
        fc_layers: int = 2,
        unimodal_heads: bool = True,
    ) -> None:
        super().__init__(in_dims, num_classes, unimodal_heads=unimodal_heads)
        h = hidden_size
        mods = self.modalities
        self.hidden_size = h
        self.use_multimodal_relations = use_multimodal_relations
        self.use_temporal_relations = use_temporal_relations
        self.past_window = past_window
        self.future_window = future_window
        self.window_owner = resolve_choice("CORECT window owner", window_owner, ["source", "target"])
        self.speaker_ids = resolve_choice("CORECT speaker ids", speaker_ids, ["global", "party"])
        self.speaker_ratio = speaker_ratio

        kinds = encoder_kinds(encoders, mods, CORECT_ENCODERS, "corect")
        self.add_encoders(
            {
                m: build_encoder(
                    kinds[m],
                    d,
                    h,
                    num_layers=transformer_layers if kinds[m] == "transformer" else fc_layers,
                    num_heads=transformer_heads,
                    ffn_size=transformer_ffn_size,
                    dropout=dropout,
                )
                for m, d in self.in_dims.items()
            },
            {m: h for m in mods},
        )
        n_ids = num_speakers if self.speaker_ids == "global" else num_parties
        self.speaker_embedding = nn.Embedding(max(n_ids, 1), h) if use_speaker_embedding else None

        # RGCN weights only for the relations this configuration can produce; the graph's
        # stable ids (0..14) map to them through a lookup table.
        used = sorted(
            {cross_modal_relation(s, t) for s in mods for t in mods if s == t or use_multimodal_relations}
            | ({temporal_relation(m, k) for m in mods for k in ("past", "future")} if use_temporal_relations else set())
        )
        lookup = torch.full((CORECT_NUM_RELATIONS,), -1, dtype=torch.long)
        lookup[used] = torch.arange(len(used))
        self.register_buffer("relation_lookup", lookup, persistent=False)
        self.relation_ids: tuple[int, ...] = tuple(used)
        self.rtgcn = RTGCN(h, len(used), gnn_heads) if use_rtgcn else None

        self.pcm = (
            PairwiseCrossModal(mods, h, pcm_heads, pcm_layers, pcm_memory_layers, pcm_memory_heads, pcm_dropout)
            if use_pcm and len(mods) > 1
            else None
        )
        fused = (len(mods) * gnn_heads * h if self.rtgcn is not None else 0) + (
            self.pcm.output_size if self.pcm is not None else 0
        )
        # With neither branch (an ablation, or "w/o RT-GCN" on one modality) the
        # classifier reads the encoded features, as the reference does.
        self.fused_size = fused or len(mods) * h
        self.classifier = nn.Sequential(
            nn.Linear(self.fused_size, h), nn.ReLU(), FastDropout(dropout), nn.Linear(h, num_classes)
        )

    @property
    def relation_names(self) -> list[str]:
        """Names of the relations the RGCN distinguishes, e.g. ``["t->t", "t:past", ...]``."""
        names = corect_relation_names()
        return [names[i] for i in self.relation_ids]

    def _speaker_vectors(self, batch: Batch) -> Tensor:
        """``[N, h]`` speaker embeddings of the real utterances (eq. 3-4, times ``eta``)."""
        assert self.speaker_embedding is not None
        return self.speaker_ratio * self.speaker_embeddings(batch, self.speaker_embedding, self.speaker_ids)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """Unimodal encoders plus speaker embedding (eq. 1-4) of the real utterances: ``{m: [N, h]}``."""
        codes = super().encode(batch)
        if self.speaker_embedding is None:
            return codes
        speaker = self._speaker_vectors(batch)
        return {m: h + speaker for m, h in codes.items()}

    def fuse(self, batch: Batch, encoded: Mapping[str, Tensor]) -> ModelOutput:
        """RT-GCN, P-CM and classifier on the encoded utterances ``{m: [N, h]}``.

        Under CPU autocast RT-GCN picks its own precision (:class:`RTGCN`); P-CM and the
        classifier are small and ragged and run in float32 (merc.models.layers.precision).
        """
        float32 = torch.autocast("cpu", enabled=False) if cpu_autocast_active(batch.mask) else contextlib.nullcontext()
        encoded = {m: h.float() for m, h in encoded.items()}  # no copy when already float32
        flat = [encoded[m] for m in self.modalities]  # M x [N, h]
        n_utt = batch.num_utterances
        parts = []
        if self.rtgcn is not None:
            graph = build_corect_graph(
                batch.lengths.to(self.relation_lookup.device),
                self.modalities,
                past=self.past_window,
                future=self.future_window,
                use_temporal=self.use_temporal_relations,
                use_multimodal=self.use_multimodal_relations,
                window_owner=self.window_owner,
            )
            # Dense per-dialogue layout of the nodes: dialogue b, slot k * T + position.
            mods = len(self.modalities)
            blocks = NodeBlocks(
                block=batch.utterance_dialogue.repeat(mods),
                slot=(torch.arange(mods, device=batch.mask.device) * batch.max_len).repeat_interleave(n_utt)
                + batch.utterance_position.repeat(mods),
                num_blocks=batch.batch_size,
                size=mods * batch.max_len,
            )
            nodes = self.rtgcn(torch.cat(flat, dim=0), graph.edge_index, self.relation_lookup[graph.edge_type], blocks)
            # Node k * N + n is utterance n in modality k: regroup per utterance.
            parts.append(nodes.view(len(self.modalities), n_utt, -1).transpose(0, 1).reshape(n_utt, -1))
        with float32:
            if self.pcm is not None:
                # P-CM attends within dialogues: padded [B, T, h] with key masks; padded rows are dropped.
                padded = {m: batch.unflatten(encoded[m]) for m in self.modalities}
                parts.append(batch.flatten(self.pcm(padded, ~batch.mask)))
            fused = torch.cat(parts or flat, dim=-1)
            return ModelOutput(logits=self.classifier(fused), embeddings=fused)
