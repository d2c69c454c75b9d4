"""COGMEN: contextualized GNN based multimodal emotion recognition.

Joshi, Bhat, Jain, Singh, Modi. "COGMEN: COntextualized GNN based Multimodal Emotion
recognitioN." NAACL 2022 (arXiv:2205.02455). Reference code:
``Exploration-Lab/COGMEN`` (architecture and defaults from its ``cogmen/model/*.py`` and
``train.py``; the README's training command is ``train.py --dataset=iemocap_4
--modalities=atv --from_begin --epochs=55``, all else default). The code here is merc's
own.

Pipeline (paper Figure 2), for a batch of dialogues with ``N`` real utterances:

1. **Context extractor**: the modalities of each utterance concatenated,
   ``x_i = [u_a ; u_t ; u_v]``, read by a Transformer encoder over the dialogue
   (PyTorch's post-norm ReLU ``nn.TransformerEncoder``, heads = the first of 7..14
   dividing the width, as the reference's ``SeqContext``) followed by
   ``Linear(width, h)``: ``z_i`` ``[N, h]``.
2. **Graph formation**: every utterance is linked to the utterances of its dialogue in
   the window ``[i - wp, i + wf]`` (itself included); an edge's relation is the pair
   (speaker of its source, speaker of its target) times whether the source comes
   before the target: ``2 S^2`` relations for ``S`` speakers. COGMEN's graph code is
   DialogueGCN's (the reference acknowledges it), so the graph is
   :func:`merc.data.graphs.dialoguegcn_graph` with the window owner at the source, as
   the reference's ``batch_graphify``.
3. **RGCN + Graph Transformer**: PyG ``RGCNConv(h, h)`` (mean per relation + root),
   then ``TransformerConv(h, h, heads)`` with concatenated heads, BatchNorm and
   LeakyReLU: the same block as CORECT's RT-GCN, reused from
   :class:`merc.models.corect.RTGCN` (with its fast CPU paths).
4. **Emotion classifier**: ``Linear(heads * h, h) -> ReLU -> Dropout -> Linear(h, C)``.

Choices where the reference and merc differ (documented, some exposed):

- **Per-modality encoders** (merc's model contract): each modality is first projected
  by its own encoder (``linear`` by default, to its own width unless
  ``projection_size`` is set), and ``fuse`` concatenates the codes before the
  Transformer. With the default widths the Transformer reads a vector of the same
  width as the reference's concatenated features; the projections are the only
  addition, a learnt per-modality re-basis that lets unimodal probes, gradient
  modulation and before-fuse hooks act on each modality.
- The Transformer attends only to the real utterances of the same dialogue (the
  reference attends to the zero padding of the batch), so a dialogue's predictions do
  not depend on its batch mates.
- COGMEN has no speaker embedding: speakers enter only through the relation types.
  The reference indexes them by IEMOCAP's speaker role (M/F), i.e. merc's global
  speaker ids (``speaker_ids="global"``); ``"party"`` uses the per-dialogue speaker
  index, for corpora whose test speakers are unseen in training (MELD).
- The reference's optional highway layer and unused emotion attention are left out;
  ``concat_graph_input`` is its ``--concat_gin_gout``.
- Missing modalities are not modelled (absent ones enter as their zero features).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from merc.data.batching import Batch
from merc.data.graphs import dialoguegcn_graph, dialoguegcn_num_relations
from merc.errors import ConfigError, DataError, resolve_choice
from merc.models.base import MercModel
from merc.models.corect import RTGCN
from merc.models.layers.encoders import EncoderSpec, build_encoder, encoder_kinds
from merc.models.layers.graph_attention import NodeBlocks
from merc.models.output import ModelOutput
from merc.models.registry import register_model

#: Per-modality encoders in front of COGMEN's concatenation: one linear projection each.
COGMEN_ENCODERS: dict[str, str] = {"t": "linear", "a": "linear", "v": "linear"}


@register_model("cogmen")
class COGMEN(MercModel):
    """COGMEN (Joshi et al., NAACL 2022): Transformer context, speaker-relational RGCN + Graph Transformer.

    Args:
        in_dims: Feature dim per modality, e.g. ``{"t": 384, "a": 100, "v": 512}``.
        num_classes: Number of classes.
        num_speakers: Global speakers of the dataset (relations for ``speaker_ids="global"``;
            the reference's ``n_speakers``: 2 on IEMOCAP).
        num_parties: Most speakers in one dialogue (relations for ``speaker_ids="party"``).
        hidden_size: ``h``: Transformer output, RGCN, each Graph Transformer head and the
            classifier's hidden layer (``--hidden_size``: 100).
        dropout: Dropout inside the Transformer layers and in the classifier
            (``--drop_rate``: 0.5).
        transformer_layers: Transformer encoder layers (``--seqcontext_nlayer``: 2).
        transformer_heads: Its heads; 0 picks them as the reference (the first of 7..14
            dividing the concatenated width, else 1).
        transformer_ffn_size: Its feed-forward width (PyTorch's default, as the reference: 2048).
        gnn_heads: Graph Transformer heads, concatenated (``--gnn_nheads``: 1).
        past_window: ``wp`` (``--wp``: 5; ``-1``: the whole past).
        future_window: ``wf`` (``--wf``: 5; ``-1``: the whole future).
        speaker_ids: ``"global"`` (dataset speaker ids, as the reference) or ``"party"``
            (per-dialogue speaker index).
        use_graph: The RGCN + Graph Transformer ("w/o GNN" ablation: the classifier reads
            the Transformer's output).
        use_speaker_relations: Relation types by speaker pair; ``False`` keeps only the
            past/future direction (2 relations), an ablation of the speaker dependencies.
        concat_graph_input: Classify ``[z_i ; graph output]`` (``--concat_gin_gout``: off).
        encoders: Encoder kind per modality before the concatenation
            (:func:`~merc.models.layers.encoders.build_encoder`); default
            :data:`COGMEN_ENCODERS` (``"linear"``).
        projection_size: Width of each modality's code; ``None`` keeps each modality's
            feature dim (the Transformer then has the reference's width).
        unimodal_heads: Linear probes per modality on the codes
            (:class:`~merc.models.base.MercModel`); COGMEN itself has none, they do not
            change its training.

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, d_m]``
        - output: ``logits`` ``[N, C]``; ``embeddings`` ``[N, H]``, the classifier's input
    """

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        num_speakers: int = 2,
        num_parties: int = 2,
        hidden_size: int = 100,
        dropout: float = 0.5,
        transformer_layers: int = 2,
        transformer_heads: int = 0,
        transformer_ffn_size: int = 2048,
        gnn_heads: int = 1,
        past_window: int = 5,
        future_window: int = 5,
        speaker_ids: Literal["global", "party"] = "global",
        use_graph: bool = True,
        use_speaker_relations: bool = True,
        concat_graph_input: bool = False,
        encoders: EncoderSpec = None,
        projection_size: int | None = None,
        unimodal_heads: bool = True,
    ) -> None:
        super().__init__(in_dims, num_classes, unimodal_heads=unimodal_heads)
        if min(hidden_size, gnn_heads, transformer_layers) < 1:
            raise ConfigError(
                f"cogmen hidden_size, gnn_heads and transformer_layers must be >= 1, got "
                f"{hidden_size}, {gnn_heads}, {transformer_layers}"
            )
        if past_window < -1 or future_window < -1:
            raise ConfigError(f"cogmen windows must be >= 0 or -1 (unbounded), got {past_window}, {future_window}")
        h = hidden_size
        self.hidden_size = h
        self.past_window = int(past_window)
        self.future_window = int(future_window)
        self.speaker_ids = resolve_choice("COGMEN speaker ids", speaker_ids, ["global", "party"])
        self.num_speaker_ids = max(int(num_speakers if self.speaker_ids == "global" else num_parties), 1)
        if self.speaker_ids == "party":
            self.max_parties = self.num_speaker_ids  # the relations cover num_parties ** 2 pairs
        self.use_speaker_relations = bool(use_speaker_relations)
        self.concat_graph_input = bool(concat_graph_input)

        kinds = encoder_kinds(encoders, self.modalities, COGMEN_ENCODERS, "cogmen")
        widths = {m: int(projection_size) if projection_size else d for m, d in self.in_dims.items()}
        self.add_encoders({m: build_encoder(kinds[m], d, widths[m]) for m, d in self.in_dims.items()}, widths)
        # The context extractor over the concatenated codes: Transformer + Linear(width, h).
        self.context = build_encoder(
            "transformer",
            sum(widths.values()),
            h,
            num_layers=transformer_layers,
            num_heads=transformer_heads,
            ffn_size=transformer_ffn_size,
            dropout=dropout,
        )
        self.num_relations = dialoguegcn_num_relations(self.num_speaker_ids) if self.use_speaker_relations else 2
        self.gnn = RTGCN(h, self.num_relations, gnn_heads) if use_graph else None
        graph_out = gnn_heads * h if self.gnn is not None else 0
        self.classifier_input = graph_out + (h if self.gnn is None or self.concat_graph_input else 0)
        self.classifier = nn.Sequential(
            nn.Linear(self.classifier_input, h), nn.ReLU(), nn.Dropout(dropout), nn.Linear(h, num_classes)
        )

    def _speaker_index(self, batch: Batch) -> Tensor:
        """``long [B, T]`` speaker ids of the relations, checked against the model's relation set."""
        ids = batch.speakers if self.speaker_ids == "global" else batch.parties
        if batch.num_utterances and int(ids[batch.mask].max()) >= self.num_speaker_ids:
            raise DataError(
                f"cogmen: {self.speaker_ids} speaker id {int(ids[batch.mask].max())} but the relations cover "
                f"{self.num_speaker_ids} speakers; build it with the dataset's num_speakers/num_parties"
            )
        return ids

    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        """Context extractor, graph and classifier on the per-modality codes ``{m: [N, w_m]}``."""
        fused = torch.cat([codes[m] for m in self.modalities], dim=-1)  # x_i = [u_a ; u_t ; u_v] up to order
        z = self.context(batch.unflatten(fused), batch)  # [N, h]
        if self.gnn is None:
            features = z
        else:
            graph = dialoguegcn_graph(
                batch.mask, self._speaker_index(batch), self.past_window, self.future_window, self.num_speaker_ids
            )
            relation = graph.edge_type if self.use_speaker_relations else graph.edge_type % 2
            blocks = NodeBlocks(
                block=batch.utterance_dialogue,
                slot=batch.utterance_position,
                num_blocks=batch.batch_size,
                size=batch.max_len,
            )
            g = self.gnn(z, graph.edge_index, relation, blocks)  # [N, heads * h]
            features = torch.cat([z, g], dim=-1) if self.concat_graph_input else g
        return ModelOutput(logits=self.classifier(features), embeddings=features)


__all__ = ["COGMEN", "COGMEN_ENCODERS"]
