r"""MM-DFN: multimodal dynamic fusion network (Hu et al., ICASSP 2022).

Hu, Hou, Wei, Jiang, Mo. "MM-DFN: Multimodal Dynamic Fusion Network for Emotion
Recognition in Conversations." ICASSP 2022 (arXiv:2203.02385). Implemented from the
paper and the facts of the authors' code (``zerohd4869/MM-DFN``: ``code/model.py``
``DialogueGNNModel`` with ``graph_type='GDF'``, ``code/model_mm.py`` ``MM_GCN``,
``code/model_GCN.py`` ``GCNII_lyc`` with ``reason_flag``, ``script/run_train_ie.sh`` and
``run_train_me.sh``); the code here is merc's own.

MM-DFN is MMGCN (:mod:`merc.models.mmgcn`) with a new fusion module; everything else
(graph builder, edge weights, node layout, classifier, late-fusion switch) is MMGCN's,
imported from there. It differs where its paper does:

1. **Modality encoders**: a bidirectional GRU over the dialogue for text (the code's
   ``lstm_l`` is an ``nn.GRU``: 2 layers, ``hidden_size // 2`` units per direction, after
   the ``Linear(d, hidden_size)`` projection), the projection alone for audio and visual,
   plus a **speaker-level context**: the projected utterances of each speaker of a
   dialogue, in order, run through a 2-layer bidirectional GRU and are added back with a
   weight per modality, ``h_m = c_m + w_m s_m`` (the code's ``use_crn_speaker``, on by
   default, ``--speaker_weights a-v-l``: ``3-0-1`` on IEMOCAP, ``0.5-0.5-1.5`` on MELD).
   The code shares one speaker GRU across modalities; here each modality has its own
   (:class:`SpeakerContextRNN`), so that codes and parameter groups stay per modality
   (the model contract), and a modality with weight 0 has none. The code pads each
   speaker's sequence with zeros read by the backward direction; here the sequences are
   packed, and a dialogue may have any number of speakers (the code keeps
   ``n_speakers``: 2 on IEMOCAP, 9 on MELD). The code's speaker embedding
   (``--use_speaker``) is off in its scripts: ``use_speaker_embedding=False``.
2. **Graph-based dynamic fusion** (GDF): MMGCN's graph and GCNII layers, each layer's
   input gated by an LSTM cell running across the layers (update, forget and output
   gates over the previous layer's state) and the layer outputs summed
   (:class:`merc.models.layers.deep_gcn.DynamicFusionGCN`). ``dynamic_fusion=False`` is
   the code's ``GF`` setting: MMGCN's deep GCN.
3. **Hyper-parameters** (scripts and ``run_train_erc.py`` defaults): 16 GCN layers on
   IEMOCAP (sweep 16/32), ``alpha = 0.2``, ``lamda = 0.5``, dropout 0.4.

The classifier reads the concatenated ``[x, H'^{(L)}]`` node outputs of an utterance,
then dropout, ReLU and a linear layer, as MMGCN. ``fusion="late"``: one unimodal network
per modality (its own single-modality graph, GDF stack and classifier), logits summed
(see :mod:`merc.models.mmgcn`). The code trains with a focal loss (``gamma`` 0.5) that
merc's trainer does not have; merc uses its cross-entropy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from merc.data.batching import Batch
from merc.errors import ConfigError
from merc.models.layers.encoders import EncoderSpec
from merc.models.layers.recurrent import ContextualRNN
from merc.models.mmgcn import MultimodalGraphModel
from merc.models.registry import register_model

#: MM-DFN's encoders: a bidirectional GRU for text (the code's ``nn.GRU``), the linear projection for audio/visual.
MMDFN_ENCODERS: dict[str, str] = {"t": "bigru", "a": "linear", "v": "linear"}
#: Speaker-context weight per modality (``run_train_ie.sh``: ``--speaker_weights 3-0-1``, in a-v-l order).
MMDFN_SPEAKER_WEIGHTS: dict[str, float] = {"t": 1.0, "a": 3.0, "v": 0.0}


class PartyIndex(NamedTuple):
    """Each speaker's utterances of each dialogue as one sequence (see :func:`party_index`).

    Attributes:
        group: ``long [N]`` sequence of each flat utterance (one per dialogue and speaker present).
        rank: ``long [N]`` its position in that sequence.
        lengths: ``long [G]`` length of each sequence.
    """

    group: Tensor
    rank: Tensor
    lengths: Tensor


def party_index(batch: Batch) -> PartyIndex:
    """Where each utterance sits in its speaker's sequence, for the whole batch at once.

    Sequences are numbered by dialogue, then by party (``batch.parties``); an utterance's
    rank counts the earlier utterances of its speaker in its dialogue. No loop: a stable
    sort by (dialogue, party) keeps the dialogue order inside each sequence.

    >>> from merc.data.batching import collate, ConversationTensors
    >>> items = [ConversationTensors("a", {}, torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 0]),
    ...          torch.zeros(3, dtype=torch.long), torch.ones(3, 0, dtype=torch.bool))]
    >>> idx = party_index(collate(items, ()))
    >>> idx.group.tolist(), idx.rank.tolist(), idx.lengths.tolist()
    ([0, 1, 0], [0, 0, 1], [2, 1])
    """
    parties = batch.flatten(batch.parties)
    n = parties.numel()
    per_dialogue = int(parties.max()) + 1 if n else 1
    key = batch.utterance_dialogue * per_dialogue + parties
    order = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=batch.batch_size * per_dialogue)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(key)
    rank[order] = torch.arange(n, device=key.device) - starts[key[order]]
    present = counts > 0
    compact = torch.cumsum(present.long(), 0) - 1
    return PartyIndex(group=compact[key], rank=rank, lengths=counts[present])


class SpeakerContextRNN(nn.Module):
    """MM-DFN's speaker-level context: a bidirectional GRU over each speaker's utterances of a dialogue.

    Args:
        width: Input and output width (``width // 2`` units per direction).
        num_layers: Stacked layers (code: 2).
        dropout: Between stacked layers (code: the model's dropout).

    Shapes:
        - p ``[N, width]`` (projected utterances, flat order) -> ``[N, width]``
    """

    def __init__(self, width: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        if width % 2:
            raise ConfigError(f"the speaker-level GRU is bidirectional: it needs an even width, got {width}")
        self.rnn = ContextualRNN(width, width // 2, num_layers=num_layers, cell="gru", dropout=dropout)

    def forward(self, p: Tensor, batch: Batch) -> Tensor:
        idx = party_index(batch)
        padded = p.new_zeros(int(idx.lengths.numel()), int(idx.lengths.max()), p.shape[-1])
        padded[idx.group, idx.rank] = p
        return self.rnn(padded, idx.lengths)[idx.group, idx.rank]


@register_model("mmdfn")
class MMDFN(MultimodalGraphModel):
    """MM-DFN (Hu et al., ICASSP 2022): MMGCN's multimodal graph with graph-based dynamic fusion.

    Args:
        in_dims: Feature dim per modality.
        num_classes: Number of classes.
        num_speakers: Global speakers (rows of the optional speaker embedding, ``"global"``).
        num_parties: Most speakers per dialogue (its rows with ``speaker_ids="party"``).
        hidden_size: Projection, encoder and node width (code: 200).
        graph_hidden_size: GCN width (code ``graph_h``: 100).
        num_layers: GDF layers (``run_train_erc.py`` default and first of the IEMOCAP sweep: 16).
        alpha: Initial-residual weight (code ``--alpha`` default 0.2).
        lamda: ``lambda`` of ``beta_l = log(lambda / l + 1)`` (code ``--lamda``: 0.5).
        dropout: Dropout in the stack, the classifier and between GRU layers (code default 0.4).
        separate_initial_weight: Own weights for the initial residual (code ``variant=True``).
        residual_input: Classifier reads ``[x, H'^{(L)}]`` (code ``use_residue``).
        dynamic_fusion: The gated layers (GDF); ``False`` is MMGCN's deep GCN (code ``GF``).
        use_speaker_context: The speaker-level GRU of the encoders (code ``use_crn_speaker``).
        speaker_weights: Its weight per modality (default :data:`MMDFN_SPEAKER_WEIGHTS`, the
            IEMOCAP script's ``3-0-1``; modalities left out weigh 0).
        use_speaker_embedding: MMGCN's speaker embedding (code ``--use_speaker``, off).
        speaker_ids: Ids of that embedding, ``"global"`` or ``"party"``.
        speaker_modalities: Where that embedding is added, ``"text"`` or ``"all"``.
        use_intra_modal_edges: Intra-modal edges of the graph.
        use_inter_modal_edges: Inter-modal edges of the graph.
        intra_window: Largest turn distance of an intra-modal edge (-1: the whole dialogue).
        fusion: ``"graph"`` (the paper) or ``"late"`` (unimodal networks, logits summed).
        encoders: Encoder kind per modality; default :data:`MMDFN_ENCODERS`.
        context_layers: Layers of the context and speaker GRUs (code: 2).
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
        num_layers: int = 16,
        alpha: float = 0.2,
        lamda: float = 0.5,
        dropout: float = 0.4,
        separate_initial_weight: bool = True,
        residual_input: bool = True,
        dynamic_fusion: bool = True,
        use_speaker_context: bool = True,
        speaker_weights: Mapping[str, float] | None = None,
        use_speaker_embedding: bool = False,
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
        weights = dict(MMDFN_SPEAKER_WEIGHTS if speaker_weights is None else speaker_weights)
        unknown = [m for m in weights if m not in ("t", "a", "v")]
        if unknown or not all(math.isfinite(float(w)) for w in weights.values()):
            raise ConfigError(f"mmdfn speaker_weights: expected finite weights for t, a, v, got {weights}")
        speaker_context: dict[str, tuple[nn.Module, float]] = {}
        if use_speaker_context:
            for m in in_dims:
                if float(weights.get(m, 0.0)) != 0.0:
                    speaker_context[m] = (SpeakerContextRNN(hidden_size, context_layers, dropout), float(weights[m]))
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
            default_encoders=MMDFN_ENCODERS,
            context_layers=context_layers,
            unimodal_heads=unimodal_heads,
            dynamic_fusion=dynamic_fusion,
            speaker_context=speaker_context,
        )
        self.speaker_weights = {m: float(weights.get(m, 0.0)) for m in self.modalities}


__all__ = ["MMDFN", "MMDFN_ENCODERS", "MMDFN_SPEAKER_WEIGHTS", "PartyIndex", "SpeakerContextRNN", "party_index"]
