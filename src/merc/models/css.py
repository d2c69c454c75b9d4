r"""CSS: two-stage encoders, gated cross-modal attention and Synergistic Polynomial Fusion.

Lyu, Xiong, Chen, Wang, Dai, Wang. "Cross-Space Synergy: A Unified Framework for
Multimodal Emotion Recognition in Conversation." AAAI 2026 (arXiv 2512.03521;
authors' code: ``m1iz/CSS``). The paper's representation component; its optimisation
component, the Pareto gradient modulator (PGM), is the trainer plug-in
:mod:`merc.training.plugins.pgm` (recipe section ``pgm``, ``--balance pgm``), so that it
works for any model with several losses. The code here is merc's own.

Pipeline for a batch with ``N`` real utterances, ``d`` = ``hidden_size``:

0. **Initialisation**: per modality a projection ``W^(m)`` (``Linear(D_m, d)``, no bias:
   the authors' 1x1 ``Conv1d``), plus a learnable speaker embedding and the sinusoidal
   encoding of the utterance's position in its dialogue, then dropout:
   ``h^(m) [N, d]``.
1. **Modality-aware encoding** (intra-modal): per modality ``intra_layers``
   Transformer layers over the dialogue's utterances (bidirectional, padding masked;
   post-LayerNorm, GELU): ``h^(m)_Ma [N, d]``.
2. **Interaction-aware encoding** (gated cross-attention): for query modality ``m`` with
   ``q = W_q h^(m)``, each other modality ``m~`` is gated by the query and the gated sum
   is the keys' and values' input (the paper's formulation):

   .. math::
       g^{(\tilde m)} = \sigma(W_g^{(\tilde m)} q + b^{(\tilde m)}),\qquad
       k^{(m)} = v^{(m)} = \sum_{\tilde m\ne m} g^{(\tilde m)}\odot h^{(\tilde m)},\qquad
       h^{(m)}_{Ia} = \mathrm{LN}\big(h^{(m)} + W_o\,\mathrm{MHA}(q, W_k k^{(m)}, W_v v^{(m)})\big)

   One attention module serves the three query modalities (the authors' code).
3. **Merge**: ``h~^(m) = W^(m)_r [h^(m)_Ma ; h^(m)_Ia] + b^(m)_r`` (modality-specific).
4. **Synergistic Polynomial Fusion** (:class:`SynergisticPolynomialFusion`), rank ``R``,
   order ``p``: for ``j = 1..p``

   .. math::
       z_j = \sum_m \lambda^{(m)}_j\,\phi\big(\tilde h^{(m)} W^{(m)}_j\big) + w_j,\qquad
       z = z_1\odot\cdots\odot z_p,\qquad
       H = \big(\mathrm{sign}(z)\odot\sqrt{|z| + \epsilon}\big) W_{out} + b_{out}

   with modality- and order-specific factors ``W^(m)_j [d, R]``, static gates
   ``lambda^(m)_j = sigmoid(theta^(m)_j)`` and anchors ``w_j [R]``. Expanding the
   product gives every unimodal, bimodal and trimodal interaction up to degree ``p``;
   the anchors keep the lower-degree terms, the signed square root tames the degree-``p``
   growth.
5. **Classifiers**: fused ``logits = Linear(d, C)(H)``; per modality
   ``unimodal_logits[m] = Linear(d, C)(Dropout(ReLU(h~^(m))))`` (the model's own heads,
   ``unimodal_classifiers``).

Losses: the trainer's cross-entropy of ``logits`` is ``L1``; the model returns
``aux_losses["unimodal"]`` = ``L2`` = the sum over modalities of the unimodal
cross-entropies, and ``aux_losses["distillation"]`` = ``L3`` = the sum over modalities of
``KL(softmax(logits / T) || softmax(unimodal_logits[m] / T))`` averaged over the real
utterances (soft labels from the fused prediction), each times its weight (1: the
fixed-weight baseline; the ``pgm`` plug-in replaces the weights by Pareto ones).

Ablation switches (constructor arguments; recipes: ``model.key=value``): ``use_spf``
(false: ``H = Linear(M d, d)`` of the concatenated ``h~``), ``use_gates``,
``use_anchors``, ``signed_sqrt``, ``modality_specific_factors`` (false: one ``W_j``
shared by the modalities, the prior-work baseline), ``use_interaction`` (false: no
stage 2), ``unimodal_loss_weight`` / ``distillation_loss_weight`` (0 drops ``L2`` /
``L3``), ``use_speaker_embedding``, ``use_positional_encoding``.

Where the paper (as available: abstract, framework figure, reviews quoting its
equations; see ``notes-css.md``) is open or differs from the authors' code, the choice
made, and the argument that changes it:

- Stage 2 reads the stage-0 features ``h^(m)`` (figure: the two stages in parallel; the
  code); ``interaction_input="intra"`` reads ``h^(m)_Ma`` (one review's reading).
- Gates: the paper's vector gates per other modality and a free sum, values equal to
  keys; the authors' code uses one scalar convex gate and separate value inputs (not
  offered). The residual adds the stage-0 input (the code adds the projected query).
- The code's SDT-style self-gates on each stream before the merge are not in the paper
  and not used.
- ``phi`` is GELU as the code (``spf_activation="identity"`` removes it: SPF is then an
  exact CP-factorised polynomial, ``tests/models/test_css.py`` checks it against the full
  tensor). Gates start at ``theta = 1`` (code), factors, anchors and ``W_out`` are
  Xavier-normal, ``b_out = 0``, ``epsilon = 1e-6`` (code).
- SPF's input: each ``h~^(m)`` is layer-normalised (no affine parameters) before the
  factors (``spf_input_norm``, default on). Neither the paper nor the code does this; the
  degree-``p`` product of unnormalised ``d = 1024`` features grows as the ``p``-th power
  of their scale, and at learning rates above the code's 1e-4 (the shared test suite
  trains at 3e-3) training diverged without it. ``spf_input_norm=False`` is the code's
  form. The intra-modal layers are post-LayerNorm (the original Transformer), so their
  output is normalised too; the code's layer normalises only before its feed-forward.
- The code adds a residual ``Linear(M d, d)`` of the concatenated ``h~`` to ``H``, not in
  the figure: ``spf_residual=True`` adds it (default off).
- ``L3``'s target is not detached (code; ``detach_distillation_target=True`` detaches
  it), and has no ``T^2`` factor (code). ``L2`` is not class-weighted (the trainer's class
  weights stay in ``L1``).
- Speakers: ``speaker_ids="party"`` (per-dialogue speaker index; the code's MELD slots)
  or ``"global"`` (dataset speakers; IEMOCAP's M/F roles, as the code's one-hot).
  Speaker embedding and positional encoding are added once, at stage 0 (the code adds
  them again inside every encoder).
- One modality: no stage 2 (nothing to attend to), ``h~ = W_r h_Ma + b_r``. Two
  modalities: each query's gated sum has one term.
- The trunk PGM balances (:meth:`shared_parameters`): everything that produces ``h~``
  (projections, speaker embedding, both stages, merge layers); not SPF nor the
  classifiers (the code's list, which also leaves the speaker embedding out).

The per-modality code (the contract's ``encode``) is ``[h^(m) ; h^(m)_Ma]`` (``2 d``),
or ``h^(m)_Ma`` alone when stage 2 does not read ``h^(m)``: both depend on the
modality alone. Stage 2 onwards is ``fuse``. Before-fuse hooks (modality dropout, OPM)
change what is fused; the unimodal logits stay those of the codes as encoded (the
contract), so while a hook is registered stages 2-3 run again on the unhooked codes for
them. ``L2`` and ``L3`` use the heads on the fused (hooked) representations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.data.batching import IGNORE_INDEX, Batch
from merc.errors import ConfigError
from merc.models.base import MercModel
from merc.models.layers.attention import block_attention
from merc.models.layers.positional import sinusoidal_positions
from merc.models.layers.transformer import PackedTransformerEncoderLayer
from merc.models.output import ModelOutput
from merc.models.registry import register_model

#: Added under the signed square root (the authors' code).
SQRT_EPS = 1e-6


def signed_square_root(z: Tensor, eps: float = SQRT_EPS) -> Tensor:
    """``sign(z) * sqrt(|z| + eps)``: SPF's normalisation of the degree-``p`` product.

    >>> signed_square_root(torch.tensor([4.0, -9.0, 0.0]), eps=0.0).tolist()
    [2.0, -3.0, 0.0]
    """
    return torch.sign(z) * torch.sqrt(z.abs() + eps)


class SynergisticPolynomialFusion(nn.Module):
    r"""SPF (CSS, AAAI 2026): low-rank polynomial fusion of order ``p`` (module docstring, step 4).

    Args:
        num_modalities: ``M``.
        in_size: Width ``d`` of every modality's representation.
        out_size: Width of ``H``.
        rank: ``R`` (paper/code: 16).
        order: ``p`` (code: 3 on IEMOCAP, 4 on MELD).
        use_gates: Static scalar gates ``lambda^(m)_j = sigmoid(theta^(m)_j)``; false: 1.
        use_anchors: Anchors ``w_j``; false: none (only degree-``p`` terms remain).
        signed_sqrt: The signed square root; false: ``H = z W_out + b_out``.
        modality_specific: A factor ``W^(m)_j`` per modality; false: one ``W_j`` for all.
        activation: ``phi``: ``"gelu"`` (tanh approximation, the code) or ``"identity"``.
        residual: Add ``Linear(M d, out)`` of the concatenated inputs (the code's extra path).
        input_norm: Layer-normalise (without affine parameters) each modality's input
            before the factors (merc's choice, module docstring); false: the code's form.

    Shapes:
        - x ``[N, M, d]`` -> ``[N, out_size]``; :meth:`interactions` ``[N, M, d] -> [N, R]``
    """

    def __init__(
        self,
        num_modalities: int,
        in_size: int,
        out_size: int,
        rank: int = 16,
        order: int = 3,
        use_gates: bool = True,
        use_anchors: bool = True,
        signed_sqrt: bool = True,
        modality_specific: bool = True,
        activation: Literal["gelu", "identity"] = "gelu",
        residual: bool = False,
        input_norm: bool = True,
    ) -> None:
        super().__init__()
        if min(num_modalities, in_size, out_size, rank, order) < 1:
            raise ConfigError(
                f"SPF sizes must be >= 1, got modalities {num_modalities}, in {in_size}, out {out_size}, "
                f"rank {rank}, order {order}"
            )
        if activation not in ("gelu", "identity"):
            raise ConfigError(f"SPF activation {activation!r}: choose gelu or identity")
        self.order, self.rank = int(order), int(rank)
        self.signed_sqrt = bool(signed_sqrt)
        self.activation = activation
        self.input_norm = bool(input_norm)
        factor_count = num_modalities if modality_specific else 1
        self.factors = nn.Parameter(torch.empty(order, factor_count, in_size, rank))
        for j in range(order):
            for m in range(factor_count):
                nn.init.xavier_normal_(self.factors.data[j, m])
        self.gate_logits = nn.Parameter(torch.ones(order, num_modalities)) if use_gates else None
        self.anchors = nn.Parameter(nn.init.xavier_normal_(torch.empty(order, rank))) if use_anchors else None
        self.out = nn.Linear(rank, out_size)
        nn.init.xavier_normal_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.residual = nn.Linear(num_modalities * in_size, out_size) if residual else None

    def gates(self) -> Tensor:
        """``lambda [p, M]`` (ones without gates)."""
        if self.gate_logits is None:
            return self.factors.new_ones(self.order, 1)
        return torch.sigmoid(self.gate_logits)

    def interactions(self, x: Tensor) -> Tensor:
        """``z = z_1 * ... * z_p`` ``[N, R]`` before the signed square root (float32 at least)."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        x = x.to(dtype)
        projected = torch.einsum("nmd,pmdr->npmr", x, self.factors.to(dtype))  # [N, p, M, R]
        if self.activation == "gelu":
            projected = F.gelu(projected, approximate="tanh")
        z = (projected * self.gates().to(dtype)[None, :, :, None]).sum(2)  # [N, p, R]
        if self.anchors is not None:
            z = z + self.anchors.to(dtype)
        return z.prod(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        # The degree-p product in float32 whatever the autocast: bfloat16's 8-bit mantissa
        # compounds over p factors.
        with torch.autocast(x.device.type, enabled=False):
            z = self.interactions(F.layer_norm(x.float(), x.shape[-1:]) if self.input_norm else x)
            if self.signed_sqrt:
                z = signed_square_root(z)
            h = F.linear(z, self.out.weight.float(), self.out.bias.float())
            if self.residual is not None:
                h = h + F.linear(x.flatten(1).float(), self.residual.weight.float(), self.residual.bias.float())
        return h


class ModalityAwareEncoder(nn.Module):
    """Stages 0-1 of one modality: projection, speaker/position context, intra-modal Transformer.

    Args:
        in_dim: Feature dim ``D_m``.
        hidden: ``d``.
        num_heads: Attention heads (must divide ``d``).
        ffn_size: Feed-forward width.
        num_layers: Transformer layers (code: 1).
        dropout: After adding the context and inside the layers.

    Shapes:
        - x ``[B, T, D_m]``, context ``[N, d]`` -> ``(h [N, d], h_Ma [N, d])``
    """

    def __init__(self, in_dim: int, hidden: int, num_heads: int, ffn_size: int, num_layers: int, dropout: float):
        super().__init__()
        if hidden % num_heads:
            raise ConfigError(f"css hidden_size {hidden} is not divisible by {num_heads} heads")
        self.projection = nn.Linear(in_dim, hidden, bias=False)
        self.dropout = dropout
        self.layers = nn.ModuleList(
            PackedTransformerEncoderLayer(
                hidden,
                num_heads,
                dim_feedforward=ffn_size,
                dropout=dropout,
                activation="gelu",
                norm_first=False,
                batch_first=True,
            )
            for _ in range(num_layers)
        )

    def forward(self, x: Tensor, batch: Batch, context: Tensor | None) -> tuple[Tensor, Tensor]:
        h = self.projection(batch.flatten(x))
        if context is not None:
            h = h + context.to(h.dtype)
        h = F.dropout(h, self.dropout, self.training)
        out = h
        padding = ~batch.mask
        for layer in self.layers:
            assert isinstance(layer, PackedTransformerEncoderLayer)
            out = layer.forward_packed(out, batch.flat_index, padding)
        return h, out


class GatedCrossModalAttention(nn.Module):
    r"""Stage 2 (interaction-aware encoding): each modality attends to the gated sum of the others.

    Args:
        modalities: The model's modalities (at least two).
        hidden: ``d``.
        num_heads: Heads (must divide ``d``).
        dropout: On the attention weights and the output before the residual.

    Parameters: ``query``, ``key``, ``value``, ``out`` (shared by the query modalities),
    ``gates[m~]`` (``W_g^(m~)``, one per gated modality), ``norm``.

    Shapes:
        - inputs ``{m: [N, d]}`` -> ``{m: [N, d]}``
    """

    def __init__(self, modalities: Sequence[str], hidden: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if len(modalities) < 2:
            raise ConfigError("gated cross-modal attention needs at least two modalities")
        self.modalities = tuple(modalities)
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.gates = nn.ModuleDict({m: nn.Linear(hidden, hidden) for m in self.modalities})
        self.norm = nn.LayerNorm(hidden)

    def forward(self, batch: Batch, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        allowed = batch.mask[:, None, :]  # every query sees its dialogue's real utterances
        p = self.dropout if self.training else 0.0
        out: dict[str, Tensor] = {}
        for m in self.modalities:
            q = self.query(inputs[m])
            mixed = torch.stack([torch.sigmoid(self.gates[o](q)) * inputs[o] for o in self.modalities if o != m]).sum(0)
            qkv = torch.cat([q, self.key(mixed), self.value(mixed)], dim=-1)
            attended = block_attention(qkv, batch.flat_index, allowed, self.num_heads, p)
            out[m] = self.norm(inputs[m] + F.dropout(self.out(attended.to(q.dtype)), p, self.training))
        return out


@register_model("css")
class CSS(MercModel):
    """CSS (Lyu et al., AAAI 2026): two-stage encoders, gated cross-attention, SPF, unimodal and distillation losses.

    Args:
        in_dims: Feature dim per modality, e.g. ``{"t": 1024, "a": 1582, "v": 342}``.
        num_classes: ``C``.
        num_speakers: Dataset speakers (embedding rows for ``speaker_ids="global"``).
        num_parties: Most speakers in a dialogue (rows for ``speaker_ids="party"``).
        hidden_size: ``d`` (code: 1024).
        num_heads: Heads of every attention (code: 8).
        ffn_size: Feed-forward width of the intra-modal layers (code: 1024).
        intra_layers: Modality-aware Transformer layers (code: 1).
        dropout: Dropout of stages 0-2 and of the unimodal heads' input (code: 0.5).
        rank: SPF rank ``R`` (code: 16).
        order: SPF order ``p`` (code: 3 on IEMOCAP, 4 on MELD).
        temperature: Distillation temperature ``T`` (code: 1 on IEMOCAP, 4 on MELD).
        unimodal_loss_weight: Weight of ``L2`` (1; 0 drops it).
        distillation_loss_weight: Weight of ``L3`` (1; 0 drops it).
        use_spf: SPF; false: ``Linear(M d, d)`` on the concatenated ``h~`` ("w/o SPF").
        use_gates: SPF's static gates.
        use_anchors: SPF's anchors ``w_j``.
        signed_sqrt: SPF's signed square root.
        modality_specific_factors: SPF factors per modality (false: shared).
        spf_activation: ``phi`` of SPF: ``"gelu"`` (code) or ``"identity"``.
        spf_residual: The code's residual ``Linear(M d, d)`` added to ``H``.
        spf_input_norm: Layer-normalise each ``h~`` at SPF's input (merc's choice, see
            the module docstring; false: the code's form).
        use_interaction: Stage 2 (gated cross-attention); false: ``h~ = W_r h_Ma + b_r``.
        interaction_input: What stage 2 reads: ``"projected"`` (stage 0, figure and
            code) or ``"intra"`` (``h_Ma``).
        detach_distillation_target: Stop ``L3``'s gradient into the fused branch.
        use_speaker_embedding: Add the speaker embedding at stage 0.
        use_positional_encoding: Add the sinusoidal position encoding at stage 0.
        speaker_ids: ``"party"`` or ``"global"`` (module docstring).
        unimodal_heads: The per-modality heads (and with them ``L2``, ``L3``); false: the
            fused branch alone.

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, D_m]``
        - output: ``logits`` ``[N, C]``; ``unimodal_logits[m]`` ``[N, C]``; ``embeddings``
          ``H`` ``[N, d]``; ``aux_losses`` ``"unimodal"``, ``"distillation"`` (training)

    >>> model = CSS({"t": 12, "a": 6}, num_classes=3, hidden_size=16, num_heads=2, ffn_size=16, rank=4)
    >>> model.spf.factors.shape, model.code_dims
    (torch.Size([3, 2, 16, 4]), {'t': 32, 'a': 32})
    """

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        num_speakers: int = 2,
        num_parties: int = 2,
        hidden_size: int = 1024,
        num_heads: int = 8,
        ffn_size: int = 1024,
        intra_layers: int = 1,
        dropout: float = 0.5,
        rank: int = 16,
        order: int = 3,
        temperature: float = 1.0,
        unimodal_loss_weight: float = 1.0,
        distillation_loss_weight: float = 1.0,
        use_spf: bool = True,
        use_gates: bool = True,
        use_anchors: bool = True,
        signed_sqrt: bool = True,
        modality_specific_factors: bool = True,
        spf_activation: Literal["gelu", "identity"] = "gelu",
        spf_residual: bool = False,
        spf_input_norm: bool = True,
        use_interaction: bool = True,
        interaction_input: Literal["projected", "intra"] = "projected",
        detach_distillation_target: bool = False,
        use_speaker_embedding: bool = True,
        use_positional_encoding: bool = True,
        speaker_ids: Literal["party", "global"] = "party",
        unimodal_heads: bool = True,
    ) -> None:
        super().__init__(in_dims, num_classes, unimodal_heads=unimodal_heads, unimodal_loss_weight=unimodal_loss_weight)
        if min(hidden_size, num_heads, ffn_size, intra_layers, rank, order) < 1:
            raise ConfigError(
                "css hidden_size, num_heads, ffn_size, intra_layers, rank and order must be >= 1, got "
                f"{hidden_size}, {num_heads}, {ffn_size}, {intra_layers}, {rank}, {order}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"css dropout must be in [0, 1), got {dropout}")
        if temperature <= 0:
            raise ConfigError(f"css temperature must be > 0, got {temperature}")
        if distillation_loss_weight < 0:
            raise ConfigError(f"css distillation_loss_weight must be >= 0, got {distillation_loss_weight}")
        if interaction_input not in ("projected", "intra"):
            raise ConfigError(f"css interaction_input {interaction_input!r}: choose projected or intra")
        if speaker_ids not in ("party", "global"):
            raise ConfigError(f"css speaker_ids {speaker_ids!r}: choose party or global")
        d = int(hidden_size)
        self.hidden_size = d
        self.temperature = float(temperature)
        self.distillation_loss_weight = float(distillation_loss_weight)
        self.detach_distillation_target = bool(detach_distillation_target)
        self.use_positional_encoding = bool(use_positional_encoding)
        self.speaker_ids = speaker_ids
        self.dropout = float(dropout)
        self.fills_unimodal_logits = self.use_unimodal_heads
        self.use_interaction = bool(use_interaction) and len(self.modalities) > 1
        #: The code carries the stage-0 features for stage 2 (``[h ; h_Ma]``), else ``h_Ma``.
        self.code_has_projected = self.use_interaction and interaction_input == "projected"

        width = 2 * d if self.code_has_projected else d
        self.add_encoders(
            {
                m: ModalityAwareEncoder(D, d, int(num_heads), int(ffn_size), int(intra_layers), self.dropout)
                for m, D in self.in_dims.items()
            },
            {m: width for m in self.modalities},
        )
        rows = num_speakers if speaker_ids == "global" else num_parties
        self.speaker_embedding = nn.Embedding(max(int(rows), 1), d) if use_speaker_embedding else None
        if use_speaker_embedding and speaker_ids == "party":
            self.max_parties = int(num_parties)
        self.interaction = (
            GatedCrossModalAttention(self.modalities, d, int(num_heads), self.dropout) if self.use_interaction else None
        )
        merged = 2 * d if self.use_interaction else d
        self.merge = nn.ModuleDict({m: nn.Linear(merged, d) for m in self.modalities})
        self.spf = (
            SynergisticPolynomialFusion(
                len(self.modalities),
                d,
                d,
                rank=int(rank),
                order=int(order),
                use_gates=use_gates,
                use_anchors=use_anchors,
                signed_sqrt=signed_sqrt,
                modality_specific=modality_specific_factors,
                activation=spf_activation,
                residual=spf_residual,
                input_norm=spf_input_norm,
            )
            if use_spf
            else None
        )
        self.concat_fusion = None if use_spf else nn.Linear(len(self.modalities) * d, d)
        self.classifier = nn.Linear(d, self.num_classes)
        # CSS's unimodal classifiers on h~ are the per-modality heads of merc's contract.
        self.unimodal_classifiers = (
            nn.ModuleDict({m: nn.Linear(d, self.num_classes) for m in self.modalities})
            if self.use_unimodal_heads
            else nn.ModuleDict()
        )

    # -- stages ------------------------------------------------------------------------
    def context(self, batch: Batch) -> Tensor | None:
        """Speaker embedding plus positional encoding ``[N, d]`` (``None`` with neither)."""
        parts = []
        if self.speaker_embedding is not None:
            parts.append(self.speaker_embeddings(batch, self.speaker_embedding, self.speaker_ids))
        if self.use_positional_encoding:
            parts.append(sinusoidal_positions(batch.utterance_position, self.hidden_size))
        if not parts:
            return None
        return torch.stack(parts).sum(0)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """Stages 0-1 per modality: ``{m: [h ; h_Ma]}`` ``[N, 2d]`` (``h_Ma`` ``[N, d]`` alone, see the module docstring)."""
        context = self.context(batch)
        codes = {}
        for m in self.modalities:
            projected, intra = self.encoders[m](batch.features[m], batch, context)
            codes[m] = torch.cat([projected, intra], dim=-1) if self.code_has_projected else intra
        return codes

    def representations(self, batch: Batch, codes: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Stages 2-3: ``h~^(m)`` ``{m: [N, d]}`` from the codes."""
        d = self.hidden_size
        if self.code_has_projected:
            projected = {m: codes[m][:, :d] for m in self.modalities}
            intra = {m: codes[m][:, d:] for m in self.modalities}
        else:
            projected = intra = {m: codes[m] for m in self.modalities}
        if self.interaction is None:
            return {m: self.merge[m](intra[m]) for m in self.modalities}
        inter = self.interaction(batch, projected)
        return {m: self.merge[m](torch.cat([intra[m], inter[m].to(intra[m].dtype)], dim=-1)) for m in self.modalities}

    def unimodal_scores(self, reps: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The unimodal classifiers ``{m: [N, C]}`` on ``Dropout(ReLU(h~^(m)))``."""
        return {
            m: self.unimodal_classifiers[m](F.dropout(F.relu(reps[m]), self.dropout, self.training))
            for m in self.modalities
        }

    def fusion(self, reps: Mapping[str, Tensor]) -> Tensor:
        """``H`` ``[N, d]``: SPF of the stacked ``h~`` (or the concatenation's linear map)."""
        stacked = torch.stack([reps[m] for m in self.modalities], dim=1)  # [N, M, d]
        if self.spf is not None:
            return self.spf(stacked)
        assert self.concat_fusion is not None
        return self.concat_fusion(stacked.flatten(1))

    # -- the contract ------------------------------------------------------------------
    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        reps = self.representations(batch, codes)
        fused = self.fusion(reps)
        logits = self.classifier(fused.to(self.classifier.weight.dtype)).float()
        unimodal = {m: s.float() for m, s in self.unimodal_scores(reps).items()} if self.use_unimodal_heads else {}
        aux: dict[str, Tensor] = {}
        if self.training and unimodal:
            labels = batch.flat_labels
            if self.unimodal_loss_weight > 0 and (labels != IGNORE_INDEX).any():
                ce = torch.stack([F.cross_entropy(s, labels, ignore_index=IGNORE_INDEX) for s in unimodal.values()])
                aux["unimodal"] = self.unimodal_loss_weight * ce.sum()
            if self.distillation_loss_weight > 0:
                aux["distillation"] = self.distillation_loss_weight * self.distillation_loss(logits, unimodal)
        return ModelOutput(logits=logits, unimodal_logits=unimodal, aux_losses=aux, embeddings=fused)

    def distillation_loss(self, logits: Tensor, unimodal: Mapping[str, Tensor]) -> Tensor:
        """``L3``: sum over modalities of ``KL(softmax(logits/T) || softmax(s_m/T))``, mean over utterances."""
        # The target as log-probabilities: a fused probability that underflows to 0 would
        # otherwise give 0 * log 0 in the gradient of the (not detached) target, NaN.
        target = F.log_softmax(logits / self.temperature, dim=-1)
        if self.detach_distillation_target:
            target = target.detach()
        return torch.stack(
            [
                F.kl_div(F.log_softmax(s / self.temperature, dim=-1), target, reduction="batchmean", log_target=True)
                for s in unimodal.values()
            ]
        ).sum()

    def _with_unimodal_outputs(self, batch: Batch, codes: Mapping[str, Tensor], output: ModelOutput) -> ModelOutput:
        # A before-fuse hook changed what was fused: the unimodal logits are those of the
        # codes as encoded (merc's contract), so stages 2-3 run once more on them.
        if self._before_fuse_hooks and output.unimodal_logits:
            scores = self.unimodal_scores(self.representations(batch, codes))
            output = dataclasses.replace(output, unimodal_logits={m: s.float() for m, s in scores.items()})
        return super()._with_unimodal_outputs(batch, codes, output)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trunk up to ``h~`` (projections, speaker embedding, both stages, merge layers); see the module docstring."""
        modules: list[nn.Module | None] = [self.encoders, self.speaker_embedding, self.interaction, self.merge]
        return [p for mod in modules if mod is not None for p in mod.parameters() if p.requires_grad]


__all__ = [
    "CSS",
    "GatedCrossModalAttention",
    "ModalityAwareEncoder",
    "SynergisticPolynomialFusion",
    "signed_square_root",
]
