r"""BiDDIN: intra- and inter-modal influence for emotion detection in conversations.

Zhang, Zhang, Li, Zhu, Zhou. "Modeling both Intra- and Inter-modal Influence for
Real-Time Emotion Detection in Conversations." ACM Multimedia 2020, pages 503-511.
Reference code: ``MANLP-suda/BiDDIN`` (``my_cla_model2.py``: ``IEMOCAPBiModelTri``, run
by ``my_IEMOCAP.py``, whose arguments give the defaults below; the code here is merc's
own). One of the four backbones of SPCL (Section 4.2 of the SPCL paper, in a late-fusion
form, see ``fusion="late"``).

BiDDIN extends DialogueRNN to several modalities. For each modality ``m`` and each
reading direction of the dialogue (forward, and the dialogue reversed):

1. ``u_{m,t} = W_m x_{m,t}`` (a per-modality dense layer to ``D_m``) and a global state
   ``g_{m,t}`` of the dialogue read so far (``D_g``).
2. **Intra- and inter-modal influence**: at utterance ``t`` every modality attends over
   the global states of *every* modality's history, its own (intra-modal) and the
   others' (inter-modal), with DialogueRNN's ``general`` matching attention,

   .. math::
       c_{m \leftarrow n, t} = \sum_{j < t} \operatorname{softmax}_j
       \big( (W_{m n} u_{m,t})^\top \tilde g_{n,j} \big) \, \tilde g_{n,j},
       \qquad \tilde g_{n,j} = g_{n,j} + \mathrm{PE}(j),

   and the ``M`` contexts of modality ``m`` are combined by a self-attention gate,
   ``c_{m,t} = W_c [ (1 + \alpha_k) c_{m \leftarrow k, t} ]_k`` with
   ``\alpha = \operatorname{softmax}_k (w^\top c_{m \leftarrow k, t})``.
3. A party GRU updates the speaker's state ``q_{m,s(t)} = GRU_p([u_{m,t}; c_{m,t}],
   q_{m,s(t)})`` (listeners keep theirs) and an emotion GRU reads it,
   ``e_{m,t} = GRU_e(q_{m,s(t)}, e_{m,t-1})``.
4. The emotion states of all modalities and both directions are concatenated,
   ``[N, 2 M D_e]``, attended over the dialogue by a 4-head self-attention with a
   residual connection and layer normalisation, then
   ``Linear -> ReLU -> Dropout -> Linear(C)``.

merc's model contract (encode each modality alone, then fuse) and its vectorisation
rule shape two choices, both documented here:

- **The global states are the per-modality encoders.** In DialogueRNN the global GRU
  also reads the previous speaker state, which here depends on the other modalities;
  merc's encoder for modality ``m`` is ``u_m = W_m x_m`` followed by a bidirectional GRU
  over the dialogue (``build_encoder("bigru", D_m, 2 D_g)``) whose forward half is the
  forward reading's ``g_m`` and whose backward half is the reversed reading's. Each
  code (``[u_m ; g_m]``, ``D_m + 2 D_g``) thus depends on its own modality only, and the
  influence modules, party and emotion GRUs, attention and classifier form ``fuse``.
  Any other encoder kind can be chosen; a unidirectional or non-recurrent one gives one
  context that both readings use.
- **Vectorised over the batch.** The attention of step 2 is computed for all steps at
  once under a causal mask (the history ``j < t`` of the reading), and the party and
  emotion GRUs of all modalities and both readings step over positions together as one
  grouped GRU (:func:`gru_update`, the update of ``nn.GRUCell``), never over dialogues.

Where the reference's code departs from its evident intent or from merc's rules:

- Its context gate takes the softmax over the batch dimension (``dim=0`` of a
  ``[batch, M, D_g]`` tensor); here over the ``M`` contexts. Its weighting of the
  emotion states takes a softmax over a singleton dimension (all weights 1), so the
  states are simply concatenated here.
- Attention never reaches padding: the history attention is restricted to the
  dialogue, and the final self-attention masks padded keys (the reference attends to
  them), so predictions do not depend on batch mates.
- The reference's final layer norm is created anew at each call, so it never learns:
  here a layer norm without affine parameters. The history's positional encoding is
  DialogueRNN's sinusoidal one with dropout (one dropout mask for the dialogue, not one
  per step).
- The classifier's hidden width follows the reference's per-modality-count models:
  ``max(2, M) * D_h`` (two modalities: ``2 D_h``; three: ``3 D_h``; one: ``2 D_h``).
- One modality: the context is its own history attention alone (the reference's
  single-modality model), no gate.

``fusion="late"`` (SPCL's BiDDIN backbone): one unimodal network per modality, the same
architecture run on that modality alone (its own encoder, intra-modal attention, party
and emotion GRUs, self-attention and classifier, no inter-modal influence); the fused
logits are the sum of the unimodal logits, which ``fuse`` returns as
``unimodal_logits``. That variant has no probe heads, and each modality's parameter
group (:meth:`BiDDIN.modality_parameters`) holds its whole unimodal network.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.data.batching import Batch
from merc.errors import ConfigError, resolve_choice
from merc.models.base import MercModel
from merc.models.layers.dropout import dropout as fast_dropout
from merc.models.layers.encoders import EncoderSpec, ModalityEncoder, build_encoder, encoder_kinds
from merc.models.layers.positional import sinusoidal_positions
from merc.models.layers.precision import cpu_autocast_active
from merc.models.output import ModelOutput
from merc.models.registry import register_model

BIDDIN_FUSIONS: tuple[str, ...] = ("intermodal", "late")
READINGS: tuple[str, ...] = ("forward", "backward")
#: Encoder kinds whose two halves are the two readings' global states.
BIDIRECTIONAL_KINDS: tuple[str, ...] = ("bigru", "bilstm")


def gru_update(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """The state update of ``nn.GRUCell`` from its two affine maps.

    ``gi = W_ih x + b_ih`` and ``gh = W_hh h + b_hh`` (gates ``r, z, n`` in PyTorch's
    order); computing them outside lets a recurrence project its inputs for all steps
    at once and step several cells as one batched product.

    Shapes:
        - gi, gh: ``[..., 3 H]``; h: ``[..., H]``; output ``[..., H]``
    """
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)


def reversal_index(mask: Tensor) -> Tensor:
    """``long [B, T]``: position ``len - 1 - t`` for real utterances, ``t`` at padding (an involution).

    ``x.gather(1, index)`` reverses every dialogue inside its length; applying it twice
    gives ``x`` back.
    """
    pos = torch.arange(mask.shape[1], device=mask.device)[None, :].expand_as(mask)
    lengths = mask.sum(1, keepdim=True)
    return torch.where(mask, lengths - 1 - pos, pos)


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``x [B, T, ...]`` reordered along time by ``index [B, T]``."""
    view = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, view)


class BiDDINEncoder(nn.Module):
    """One modality's encoder: ``u = W x`` (the reference's dense layer) and its context over the dialogue.

    Args:
        in_dim: Feature dim ``d_m``.
        utterance_size: ``D_m``.
        context: The context encoder over ``u`` (a bidirectional GRU by default), from
            :func:`~merc.models.layers.encoders.build_encoder`.

    Shapes:
        - x ``[B, T, d_m]`` -> ``[N, D_m + context width]`` (``[u ; g]``)
    """

    def __init__(self, in_dim: int, utterance_size: int, context: ModalityEncoder) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, utterance_size)
        self.context = context
        self.utterance_size = utterance_size
        self.output_size = utterance_size + context.output_size

    def forward(self, x: Tensor, batch: Batch) -> Tensor:
        u = self.projection(batch.flatten(x))
        return torch.cat([u, self.context(batch.unflatten(u), batch)], dim=-1)


class BiDDINNetwork(nn.Module):
    """BiDDIN's influence modules, party/emotion GRUs, self-attention and classifier over ``modalities``.

    Args:
        modalities: The modalities of this network (all for BiDDIN, one per network in
            the late-fusion variant).
        utterance_size: ``D_m`` of the queries ``u``.
        memory_size: Width of each reading's global states ``g`` (``D_g``).
        party_size: ``D_p``.
        emotion_size: ``D_e``.
        hidden_size: ``D_h``; the classifier's hidden layer is ``max(2, M) * D_h`` wide.
        num_classes: ``C``.
        heads: Heads of the final self-attention.
        dropout: Dropout on the emotion states and the classifier's hidden layer.
        rec_dropout: Dropout on the party/emotion states and the positional encoding.
        bidirectional: Read the dialogue forward and reversed (``False``: forward only).
        use_inter_modal: Attend over the other modalities' histories too.
        use_sequence_attention: The final self-attention (the reference's ``att2``).
        positional_encoding: Add the sinusoidal encoding to the histories.

    Shapes:
        - utterances ``{m: [B, T, D_m]}``; memories ``{(reading, m): [B, T, D_g]}`` in
          natural order
        - output: logits ``[N, C]`` and the classifier's hidden layer ``[N, max(2, M) D_h]``
    """

    def __init__(
        self,
        modalities: Sequence[str],
        utterance_size: int,
        memory_size: int,
        party_size: int,
        emotion_size: int,
        hidden_size: int,
        num_classes: int,
        heads: int,
        dropout: float,
        rec_dropout: float,
        bidirectional: bool,
        use_inter_modal: bool,
        use_sequence_attention: bool,
        positional_encoding: bool,
    ) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.readings = READINGS if bidirectional else READINGS[:1]
        self.memory_size = memory_size
        self.dropout = dropout
        self.rec_dropout = rec_dropout
        self.positional_encoding = positional_encoding
        self.sources = {m: (m, *(n for n in self.modalities if n != m and use_inter_modal)) for m in self.modalities}
        self.groups = [(r, m) for r in self.readings for m in self.modalities]
        d_m, d_g = utterance_size, memory_size
        # 'general' matching attention (DialogueRNN): query W u, keys and values the history.
        self.attention = nn.ModuleDict(
            {f"{r}_{m}_{n}": nn.Linear(d_m, d_g, bias=False) for r, m in self.groups for n in self.sources[m]}
        )
        gated = [(r, m) for r, m in self.groups if len(self.sources[m]) > 1]
        # The gate's scores go through a softmax over the contexts, where a bias cancels:
        # the reference's bias is left out (the same function).
        self.gate = nn.ModuleDict({f"{r}_{m}": nn.Linear(d_g, 1, bias=False) for r, m in gated})
        self.merge = nn.ModuleDict({f"{r}_{m}": nn.Linear(len(self.sources[m]) * d_g, d_g) for r, m in gated})
        party = {f"{r}_{m}": nn.GRUCell(d_m + d_g, party_size) for r, m in self.groups}
        emotion = {f"{r}_{m}": nn.GRUCell(party_size, emotion_size) for r, m in self.groups}
        self.party_cells = nn.ModuleDict(party)
        self.emotion_cells = nn.ModuleDict(emotion)
        # The same cells in group order (the ModuleDicts own them), for the grouped recurrence.
        self._party: list[nn.GRUCell] = list(party.values())
        self._emotion: list[nn.GRUCell] = list(emotion.values())
        width = len(self.groups) * emotion_size
        if use_sequence_attention and width % heads:
            raise ConfigError(f"biddin: emotion width {width} is not divisible by {heads} attention heads")
        self.sequence_attention = (
            nn.MultiheadAttention(width, heads, bias=False, batch_first=True) if use_sequence_attention else None
        )
        self.hidden_width = max(2, len(self.modalities)) * hidden_size
        self.linear = nn.Linear(width, self.hidden_width)
        self.classifier = nn.Linear(self.hidden_width, num_classes)

    def forward(
        self, batch: Batch, utterances: Mapping[str, Tensor], memories: Mapping[tuple[str, str], Tensor]
    ) -> tuple[Tensor, Tensor]:
        mask = batch.mask
        t = batch.max_len
        rev = reversal_index(mask)

        def read(x: Tensor, reading: str) -> Tensor:
            return x if reading == "forward" else _gather_time(x, rev)

        pos = torch.arange(t, device=mask.device)
        allowed = (pos[None, :] < pos[:, None])[None] & mask[:, None, :]  # [B, t, j]: j < t, both real
        has_history = allowed.any(-1, keepdim=True)
        pe = (
            sinusoidal_positions(torch.arange(t, device=mask.device), self.memory_size)
            if self.positional_encoding
            else None
        )

        inputs: list[Tensor] = []
        for reading in self.readings:
            keys = {}
            for n in self.modalities:
                g = read(memories[(reading, n)], reading)
                if pe is not None:
                    g = fast_dropout(g + pe, self.rec_dropout, self.training)
                keys[n] = g
            for m in self.modalities:
                u = read(utterances[m], reading)
                contexts = []
                for n in self.sources[m]:
                    scores = self.attention[f"{reading}_{m}_{n}"](u) @ keys[n].transpose(1, 2)  # [B, t, j]
                    weights = torch.softmax(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min), dim=-1)
                    contexts.append((weights * has_history) @ keys[n])  # zero context without history
                if len(contexts) > 1:
                    stacked = torch.stack(contexts, dim=2)  # [B, T, K, D_g]
                    alpha = torch.softmax(self.gate[f"{reading}_{m}"](stacked), dim=2)
                    context = self.merge[f"{reading}_{m}"](((1 + alpha) * stacked).flatten(2))
                else:
                    context = contexts[0]
                inputs.append(torch.cat([u, context], dim=-1))
        parties = torch.stack([read(batch.parties, r) for r, _ in self.groups])  # [G, B, T]
        emotions = self._recur(torch.stack(inputs), parties, mask)  # [G, B, T, D_e]
        states = [read(emotions[k], r) for k, (r, _) in enumerate(self.groups)]
        e = fast_dropout(torch.cat(states, dim=-1), self.dropout, self.training)  # [B, T, G * D_e]
        if self.sequence_attention is not None:
            attended, _ = self.sequence_attention(e, e, e, key_padding_mask=~mask, need_weights=False)
            e = F.layer_norm(attended + e, (e.shape[-1],))
        hidden = fast_dropout(F.relu(self.linear(batch.flatten(e))), self.dropout, self.training)
        return self.classifier(hidden), hidden

    def _recur(self, inputs: Tensor, parties: Tensor, mask: Tensor) -> Tensor:
        """Party and emotion GRUs of every (reading, modality) group, stepping over positions together.

        Shapes:
            - inputs ``[G, B, T, D_m + D_g]`` and parties ``[G, B, T]`` in each group's
              reading order; mask ``[B, T]``
            - output: emotion states ``[G, B, T, D_e]`` (zero at padding)
        """
        party, emotion = self._party, self._emotion
        # The party GRUs' input maps for all steps at once; the recurrent maps per step,
        # all groups in one batched product.
        gi_party = torch.stack([F.linear(inputs[k], c.weight_ih, c.bias_ih) for k, c in enumerate(party)])
        w_party = torch.stack([c.weight_hh.t() for c in party])
        b_party = torch.stack([c.bias_hh for c in party])[:, None, :]
        w_in = torch.stack([c.weight_ih.t() for c in emotion])
        b_in = torch.stack([c.bias_ih for c in emotion])[:, None, :]
        w_em = torch.stack([c.weight_hh.t() for c in emotion])
        b_em = torch.stack([c.bias_hh for c in emotion])[:, None, :]
        g, b, t = parties.shape
        num_parties = int(parties[:, mask].max()) + 1 if bool(mask.any()) else 1
        # speaker[k, b, t, p]: party p speaks at step t of dialogue b (never at padding).
        speaker = F.one_hot(parties.clamp(0, num_parties - 1), num_parties).to(inputs.dtype)
        speaker = speaker * mask[None, :, :, None].to(inputs.dtype)
        q = inputs.new_zeros(g, b, num_parties, w_party.shape[1])
        e = inputs.new_zeros(g, b, w_em.shape[1])
        active = mask.t()[:, None, :, None]  # [T, 1, B, 1]
        # Per-step views taken once (one unbind): indexing a step out of the whole tensor
        # at every step would make its backward fill a full-size gradient per step.
        gi_steps = gi_party.unbind(2)
        speaker_steps = speaker[..., None].unbind(2)  # T x [G, B, P, 1]
        out = []
        for step in range(t):
            who = speaker_steps[step]
            q_prev = (q * who).sum(2)  # the speaker's state (zero at padding)
            gh = torch.baddbmm(b_party, q_prev, w_party)
            q_new = fast_dropout(gru_update(gi_steps[step], gh, q_prev), self.rec_dropout, self.training)
            e_new = gru_update(torch.baddbmm(b_in, q_new, w_in), torch.baddbmm(b_em, e, w_em), e)
            e_new = fast_dropout(e_new, self.rec_dropout, self.training)
            q = q + who * (q_new[:, :, None, :] - q)  # listeners keep their states
            e = torch.where(active[step], e_new, e)
            out.append(e_new * active[step].to(e_new.dtype))
        return torch.stack(out, dim=2)


@register_model("biddin")
class BiDDIN(MercModel):
    """BiDDIN (Zhang et al., ACM MM 2020): multimodal DialogueRNN with intra- and inter-modal influence.

    Args:
        in_dims: Feature dim per modality, e.g. ``{"t": 384, "a": 100, "v": 512}``.
        num_classes: Number of classes.
        utterance_size: ``D_m``, each modality's dense layer (``my_IEMOCAP.py``: 100).
        global_size: ``D_g``, the global states of each reading (150).
        party_size: ``D_p`` (150).
        emotion_size: ``D_e`` (100).
        hidden_size: ``D_h`` (100); the classifier's hidden layer is ``max(2, M) * D_h``.
        attention_heads: Heads of the final self-attention over the dialogue (4).
        dropout: On the emotion states and the classifier's hidden layer (``--dropout``: 0.1).
        rec_dropout: On the party/emotion states and the histories' positional encoding
            (``--rec-dropout``: 0.1).
        bidirectional: Forward and reversed readings (``IEMOCAPBiModelTri``); ``False``
            reads forward only (the real-time setting), with a ``"gru"`` encoder by default.
        use_inter_modal: Inter-modal influence (attention over the other modalities'
            histories); ``False`` keeps the intra-modal influence only (an ablation).
        use_sequence_attention: The final self-attention (the reference's ``att2=True``).
        positional_encoding: Sinusoidal encoding of the histories (reference: on).
        fusion: ``"intermodal"`` (the paper's model) or ``"late"`` (one unimodal network
            per modality, logits summed: SPCL's backbone; see the module docstring).
        encoders: Context encoder kind per modality over ``u_m``
            (:func:`~merc.models.layers.encoders.build_encoder`); default ``"bigru"``
            (``"gru"`` when not bidirectional).
        unimodal_heads: Linear probes per modality on the codes; not built with
            ``fusion="late"``, whose networks give their own unimodal logits.

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, d_m]``
        - output: ``logits`` ``[N, C]``; ``embeddings`` ``[N, H]``, the classifier's hidden
          layer (late fusion: the modalities' concatenated)
    """

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        utterance_size: int = 100,
        global_size: int = 150,
        party_size: int = 150,
        emotion_size: int = 100,
        hidden_size: int = 100,
        attention_heads: int = 4,
        dropout: float = 0.1,
        rec_dropout: float = 0.1,
        bidirectional: bool = True,
        use_inter_modal: bool = True,
        use_sequence_attention: bool = True,
        positional_encoding: bool = True,
        fusion: Literal["intermodal", "late"] = "intermodal",
        encoders: EncoderSpec = None,
        unimodal_heads: bool = True,
    ) -> None:
        self.fusion = resolve_choice("BiDDIN fusion", fusion, list(BIDDIN_FUSIONS))
        late = self.fusion == "late"
        super().__init__(in_dims, num_classes, unimodal_heads=unimodal_heads and not late)
        sizes = (utterance_size, global_size, party_size, emotion_size, hidden_size, attention_heads)
        if min(sizes) < 1:
            raise ConfigError(f"biddin sizes and attention_heads must be >= 1, got {sizes}")
        self.fills_unimodal_logits = late
        self.bidirectional = bool(bidirectional)
        default = "bigru" if self.bidirectional else "gru"
        kinds = encoder_kinds(encoders, self.modalities, dict.fromkeys("tav", default), "biddin")
        # A bidirectional recurrent encoder holds both readings' global states (D_g per
        # direction); with any other kind both readings share one D_g-wide context.
        self.split_context = {m: self.bidirectional and kinds[m] in BIDIRECTIONAL_KINDS for m in self.modalities}
        encs = {
            m: BiDDINEncoder(
                d,
                utterance_size,
                build_encoder(
                    kinds[m], utterance_size, 2 * global_size if kinds[m] in BIDIRECTIONAL_KINDS else global_size
                ),
            )
            for m, d in self.in_dims.items()
        }
        self.add_encoders(encs, {m: enc.output_size for m, enc in encs.items()})
        self.utterance_size = utterance_size
        memory = {m: encs[m].context.output_size // (2 if self.split_context[m] else 1) for m in self.modalities}
        if len(set(memory.values())) > 1:
            raise ConfigError(f"biddin: the modalities' context widths differ ({memory}); use one encoder kind")
        memory_size = next(iter(memory.values()))

        def network(mods: tuple[str, ...]) -> BiDDINNetwork:
            return BiDDINNetwork(
                mods,
                utterance_size=utterance_size,
                memory_size=memory_size,
                party_size=party_size,
                emotion_size=emotion_size,
                hidden_size=hidden_size,
                num_classes=num_classes,
                heads=attention_heads,
                dropout=dropout,
                rec_dropout=rec_dropout,
                bidirectional=self.bidirectional,
                use_inter_modal=use_inter_modal,
                use_sequence_attention=use_sequence_attention,
                positional_encoding=positional_encoding,
            )

        if late:
            self.networks = nn.ModuleDict({m: network((m,)) for m in self.modalities})
        else:
            self.network = network(self.modalities)

    def _split(
        self, codes: Mapping[str, Tensor], batch: Batch
    ) -> tuple[dict[str, Tensor], dict[tuple[str, str], Tensor]]:
        """Padded queries ``u_m`` and each reading's global states ``g_m`` from the codes ``[u ; g]``."""
        utterances, memories = {}, {}
        for m in self.modalities:
            code = batch.unflatten(codes[m].float())
            u, g = code[..., : self.utterance_size], code[..., self.utterance_size :]
            utterances[m] = u
            if self.split_context[m]:
                half = g.shape[-1] // 2
                memories[("forward", m)], memories[("backward", m)] = g[..., :half], g[..., half:]
            else:
                memories[("forward", m)] = memories[("backward", m)] = g
        return utterances, memories

    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        """Influence modules, recurrences, attention and classifier on the codes ``{m: [N, D_m + 2 D_g]}``.

        Under CPU autocast the recurrences run in float32 (small ragged products).
        """
        float32 = torch.autocast("cpu", enabled=False) if cpu_autocast_active(batch.mask) else contextlib.nullcontext()
        with float32:
            utterances, memories = self._split(codes, batch)
            if self.fusion == "late":
                logits, hidden = {}, []
                for m in self.modalities:
                    lg, hid = self.networks[m](batch, utterances, memories)
                    logits[m] = lg
                    hidden.append(hid)
                fused = torch.stack(list(logits.values())).sum(0)
                return ModelOutput(logits=fused, unimodal_logits=logits, embeddings=torch.cat(hidden, dim=-1))
            lg, hid = self.network(batch, utterances, memories)
            return ModelOutput(logits=lg, embeddings=hid)

    def modality_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Per-modality groups: the encoder (and probe head); with late fusion, the whole unimodal network."""
        groups = super().modality_parameters()
        if self.fusion == "late":
            for m in self.modalities:
                groups[m] = groups[m] + list(self.networks[m].parameters())
        return groups


__all__ = ["BIDDIN_FUSIONS", "BiDDIN", "BiDDINEncoder", "BiDDINNetwork", "gru_update", "reversal_index"]
