r"""RSM: representation subspace mapping with a unimodal auxiliary loss.

Du, Zhang, Wang, Xu, Wu, Zhang, Zhao, Yu, Lou. "Integrating Representation Subspace
Mapping with Unimodal Auxiliary Loss for Attention-based Multimodal Emotion
Recognition." LREC-COLING 2024. No reference code is public; the subspace losses follow
MISA (Hazarika, Zimmermann, Poria, ACM MM 2020), from which the paper takes CMD, the
difference and the reconstruction losses, and where the paper is silent the choices
below are merc's, each a constructor argument. The code here is merc's own.

Pipeline (Figure 2, Section 3), for a batch with ``N`` real utterances, every modality
``m`` at width ``h`` (``hidden_size``, Table 2: 100):

1. **Unimodal encoders** (Section 3.3, :class:`RSMModalityEncoder`, the model's
   ``encoders[m]``). *Context path* (the paper's): ``Linear(d_m, h)`` (the FC that
   reduces ComParE / BERT vectors to 100), a Bi-GRU over each dialogue's utterances, a
   multi-head self-attention over the dialogue (``num_heads``, Table 2: 4), dropout
   (Table 2: 0.2, "after self-attention"): ``U_m`` ``[N, h]``. *Token path* (when
   ``Batch.sequences`` has ``m`` and the model was built with ``sequence_dims[m]``):
   ``Linear(d'_m, h)`` per token/frame, a Bi-GRU over each utterance's tokens (packed,
   so padding never enters), self-attention over the utterance's tokens (padded keys
   masked), dropout, then attention pooling over the real tokens to one vector per
   utterance (fast path, ``MERC_FAST_KERNELS`` on: the projection, attention and pooling
   read the real tokens only, attention within utterances grouped by length; tested
   against the padded path). An utterance with no tokens (length 0) has its vector
   ``Linear(d_m, h)(features)`` as its one token. A modality without sequences in the
   batch takes the context path.
2. **Unimodal auxiliary loss** (Section 3.4, eq. 1-3): the base class's per-modality
   linear heads on ``U_m`` (``unimodal_classifiers``), their cross-entropies summed
   over modalities, ``L_ua``, weight 1 in eq. 13 (``unimodal_loss_weight``;
   ``aux_losses["unimodal_ce"]``).
3. **Representation subspace mapping** (Section 3.5, eq. 4): one public encoder shared
   by all modalities and one unique (private) encoder per modality,
   ``U^pub_m = E^pub(U_m)``, ``U^uni_m = E^uni_m(U_m)``, each ``Linear(h, h)`` and a
   sigmoid (MISA's form; ``subspace_activation``). The subspace loss (eq. 9)

   .. math::
       L_{sp} = L_{rec} + L_{cyc} + \alpha (L_{sim} + L_{dif})

   with ``L_sim`` the central moment discrepancy of the public codes
   (:func:`central_moment_discrepancy`, eq. 5), ``L_dif`` the orthogonality of unique
   to unique and unique to public codes (:func:`orthogonality_loss`, eq. 6),
   ``L_rec = sum_m ||U_m - D_m(U^pub_m + U^uni_m)||^2 / d_h`` (eq. 7, ``D_m`` a
   ``Linear(h, h)`` decoder per modality) and
   ``L_cyc = sum_m ||U^uni_m - E^uni_m(D_m(U^pub_m + U^uni_m))||^2 / d_h`` (eq. 8), each
   averaged over the batch's utterances.
4. **Cross-modality attention** (Section 3.6, eq. 10-11): for each ordered pair
   ``s -> t`` multi-head attention with queries ``U^uni_t P_q`` and keys/values
   ``U^uni_s P_k``, ``U^uni_s P_v`` (the MulT strategy), over the utterances of each
   dialogue (an utterance's unique code has one vector, so the sequence attended over
   is its dialogue), then dropout: ``F^uni_{s->t}`` ``[N, h]``.
5. **Fusion and classifier** (Section 3.6): ``[F^uni_{a->t}, F^uni_{t->a}, U^pub_a,
   U^pub_t]`` concatenated (``embeddings``), then ``Linear(., h) -> ReLU -> Linear(h, C)``.
   The trainer's cross-entropy of the logits is ``L_task`` (eq. 12).

Losses (eq. 13, ``L_total = L_task + L_ua + beta L_sp``), named in ``aux_losses`` and
already weighted, training only, so that a multi-objective plug-in (``--balance pgm``)
can treat each as a task: ``"unimodal_ce"`` (``unimodal_loss_weight * L_ua``),
``"cmd"`` (``beta * alpha * L_sim``), ``"difference"`` (``beta * alpha * L_dif``),
``"reconstruction"`` (``beta * L_rec``), ``"cycle"`` (``beta * L_cyc``). A term with a zero
weight is left out.

Ablations (Table 6 and Table 7), each removing exactly its part:

- ``unimodal_loss_weight=0``: no ``L_ua`` (Table 6 last row, Table 3 "w/o L_ua", Table 7
  "w/o L_ua"); the heads stay as probes on the detached codes (merc's contract).
- ``use_subspace_loss=False``: the subspace mapping without ``L_sp`` (Table 6 "w/o
  L_sp"): no decoders, no ``cmd``/``difference``/``reconstruction``/``cycle`` losses.
- ``use_cross_modal_attention=False``: no cross-modality attention (Table 6 "w/o
  cross-modality attention"): the unique codes enter the concatenation as they are,
  ``[U^uni_m..., U^pub_m...]``.
- ``use_subspace_mapping=False``: no public or unique encoders and no ``L_sp``; the
  codes ``U_m`` take the unique codes' place (so with cross-modal attention on it
  attends over the ``U_m``). With ``use_cross_modal_attention=False`` this is Table 7's
  "Bi-GRU" (``rnn_cell="lstm"``: its "Bi-LSTM"), with or without ``L_ua``.
- ``use_cycle_loss=False``: ``L_sp`` without ``L_cyc`` (MISA's subspace loss), not in the
  paper's tables.

More modalities than the paper's two (it uses audio and text): pair terms are averaged
over the modality pairs and per-modality terms summed over modalities, so that with two
modalities every loss is the paper's: ``L_sim`` is the mean CMD over unordered pairs;
``L_dif`` the mean unique-unique orthogonality over unordered pairs plus the sum over
modalities of the unique-public one; ``L_rec``, ``L_cyc`` and ``L_ua`` sum over
modalities. Cross-modal attention runs for every ordered pair and all ``M (M - 1)``
outputs are concatenated (``tav``: six), then the ``M`` public codes.

One modality: nothing is cross-modal. There is no ``L_sim`` and no unique-unique term,
the public encoder is a second private encoder (kept apart from the unique one by the
unique-public orthogonality), cross-modal attention has no source (the unique code
enters as it is), and the fused features are ``[U^uni_m, U^pub_m]``.

Where the paper is open (each a constructor argument):

- ``K`` of eq. 5 (``cmd_moments``) is not given: 5, as MISA's code and Zellinger et
  al.'s experiments.
- ``||.||_2`` in eq. 5 and 6 is "the squared Frobenius norm" (the paper). CMD uses it
  (``cmd_norm="squared"``); ``"l2"`` is Zellinger et al.'s and MISA's plain norm.
- Eq. 6 as printed, ``||A^T B||_F^2`` of raw ``[N, h]`` codes, grows with ``N^2`` and the
  codes' scale; the default is MISA's normalisation (``difference_normalization="misa"``:
  each code matrix centred over the batch, each row scaled to unit L2 norm, then the
  *mean* of the squared entries of ``A^T B``). ``"none"`` is eq. 6 as printed.
- The forms of ``E^pub``, ``E^uni_m`` (``Linear`` + sigmoid: MISA's; the sigmoid keeps
  the codes bounded, which CMD assumes) and ``D_m`` (one ``Linear``, MISA's) are not
  given; the unimodal heads are linear; the classifier's hidden width is not given
  (``classifier_hidden_size``, default ``h``; 0: one linear layer on the fused features).
- Hidden size 100 is the width of every code: the Bi-GRU has ``h / 2`` units per
  direction.
- The self-attention of Section 3.3 is multi-head scaled dot-product attention with a
  residual connection (``self_attention_residual``), the cross-modality attention of
  eq. 10-11 without one (as printed). Both have an output projection merging the heads.
- The token path pools by attention (``token_pooling="attention"``: a learned score
  per token, softmax over the utterance's real tokens) or by the mean (``"mean"``); it
  reads no dialogue context (the cross-modal attention over the dialogue is then the
  only context).
- Reconstruction and cycle targets are not detached (MISA); ``L_sp`` and ``L_ua`` are
  computed on the batch's utterances, CMD's moments over all of them.
- ``unimodal_heads=False`` removes the heads and with them ``L_ua``.

Before-fuse hooks (modality dropout, OPM) change the codes the mapping reads: the
subspace losses are those of the codes as fused.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.data.batching import Batch
from merc.errors import ConfigError, DataError, resolve_choice
from merc.models.base import MercModel
from merc.models.layers.attention import block_attention, length_bucketed_attention, rows_to_grid
from merc.models.layers.encoders import ModalityEncoder
from merc.models.layers.fast import fast_kernels_enabled
from merc.models.layers.precision import cpu_autocast_active
from merc.models.layers.recurrent import ContextualRNN
from merc.models.output import ModelOutput
from merc.models.registry import register_model

SubspaceActivation = Literal["sigmoid", "tanh", "relu", "none"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "none": nn.Identity,
}


# -- the subspace losses ---------------------------------------------------------------
def central_moment_discrepancy(
    x: Tensor, y: Tensor, moments: int = 5, norm: Literal["squared", "l2"] = "squared"
) -> Tensor:
    r"""Eq. 5: CMD between the empirical distributions of two sets of codes.

    .. math::
        \mathrm{CMD}_K(X, Y) = \lVert E(X) - E(Y)\rVert
            + \sum_{k=2}^{K} \lVert C_k(X) - C_k(Y)\rVert,\qquad
        C_k(X) = E\big((X - E(X))^k\big)

    with expectations over the rows and powers element-wise (one moment per coordinate).

    Args:
        x: ``[N, h]`` codes of one modality.
        y: ``[N', h]`` codes of another.
        moments: ``K``, the highest central moment (>= 1).
        norm: ``"squared"``: the squared L2 norm of each moment difference (the paper's
            "squared Frobenius norm"); ``"l2"``: the L2 norm (Zellinger et al., MISA).

    Returns:
        A scalar.

    >>> x = torch.tensor([[0.0], [1.0]]); y = torch.tensor([[0.0], [0.0]])
    >>> float(central_moment_discrepancy(x, y, moments=2))  # (0.5)^2 + (0.25)^2
    0.3125
    """
    mean_x, mean_y = x.mean(0), y.mean(0)
    centred_x, centred_y = x - mean_x, y - mean_y
    differences = [mean_x - mean_y]
    differences += [centred_x.pow(k).mean(0) - centred_y.pow(k).mean(0) for k in range(2, moments + 1)]
    stacked = torch.stack(differences)  # [K, h]
    squares = stacked.pow(2).sum(-1)
    if norm == "squared":
        return squares.sum()
    # The square root's gradient is infinite at 0; a tiny floor keeps equal moments finite.
    return squares.clamp_min(1e-12).sqrt().sum()


def orthogonality_loss(a: Tensor, b: Tensor, normalization: Literal["misa", "none"] = "misa") -> Tensor:
    r"""One term of eq. 6: how far two code matrices are from orthogonal, ``||A^T B||_F^2``.

    Args:
        a: ``[N, h]`` codes.
        b: ``[N, h']`` codes of the same utterances.
        normalization: ``"misa"``: each matrix centred over its rows, each row scaled to
            unit L2 norm, then the *mean* of the squared entries of ``A^T B`` (MISA's
            difference loss: independent of the batch size and of the codes' scale);
            ``"none"``: ``||A^T B||_F^2`` of the codes as they are (eq. 6 as printed).

    Returns:
        A scalar.

    >>> a = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); b = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    >>> float(orthogonality_loss(a, b, "none"))  # A^T B = [[2, 0], [0, 0]]
    4.0
    """
    if normalization == "none":
        return (a.transpose(0, 1) @ b).pow(2).sum()
    a = F.normalize(a - a.mean(0, keepdim=True), dim=1, eps=1e-6)
    b = F.normalize(b - b.mean(0, keepdim=True), dim=1, eps=1e-6)
    return (a.transpose(0, 1) @ b).pow(2).mean()


# -- attention of packed rows ----------------------------------------------------------
class PackedMultiheadAttention(nn.Module):
    """Multi-head scaled dot-product attention between packed rows of the same blocks.

    Queries from ``target`` rows, keys and values from ``source`` rows at the same grid
    positions (eq. 10: ``softmax(Q_t K_s^T / sqrt(d)) V_s`` per head, ``d`` the head
    width), heads merged by an output projection. ``source = target`` is self-attention.
    Runs through :func:`merc.models.layers.attention.block_attention`: the rows are
    laid out per block (dialogue, or utterance for tokens) and keys outside ``allowed``
    are never attended to.

    Args:
        size: Row width ``h`` (queries, keys, values and output).
        num_heads: Heads; must divide ``size``.

    Parameters:
        ``query`` (``P_q``), ``key`` (``P_k``), ``value`` (``P_v``), ``out`` (head merge),
        each ``Linear(h, h)``.

    Shapes:
        - target, source: ``[R, h]``; index: ``long [R]`` positions in the ``B x S`` grid;
          allowed: ``bool [B, 1, S]`` (the keys of each block)
        - output: ``[R, h]``
    """

    def __init__(self, size: int, num_heads: int) -> None:
        super().__init__()
        if num_heads < 1 or size % num_heads:
            raise ConfigError(f"attention width {size} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.query = nn.Linear(size, size)
        self.key = nn.Linear(size, size)
        self.value = nn.Linear(size, size)
        self.out = nn.Linear(size, size)

    def forward(self, target: Tensor, source: Tensor, index: Tensor, allowed: Tensor) -> Tensor:
        qkv = torch.cat([self.query(target), self.key(source), self.value(source)], dim=-1)
        return self.out(block_attention(qkv, index, allowed, self.num_heads))

    def forward_bucketed(self, x: Tensor, index: Tensor, valid: Tensor) -> Tensor:
        """Self-attention of packed rows ``x`` within blocks grouped by length (the token path's fast path).

        The same attention as ``forward(x, x, index, valid[:, None, :])``, laid out per
        group of similar length (:func:`merc.models.layers.attention.length_bucketed_attention`):
        utterances' token counts vary widely (IEMOCAP-4 training: median 14, longest 109) where
        one grid pays for the longest.

        Shapes:
            - x: ``[R, h]``; index: ``long [R]`` positions in the ``B x S`` grid of valid
              (``bool [B, S]``, true at the rows)
            - output: ``[R, h]``
        """
        q, k, v = self.query(x), self.key(x), self.value(x)
        return self.out(length_bucketed_attention(q, index, valid.shape[1], k, v, index, valid, self.num_heads))


# -- the unimodal encoder ----------------------------------------------------------------
class RSMModalityEncoder(ModalityEncoder):
    """Section 3.3 for one modality: FC, Bi-GRU, self-attention, dropout (``encoders[m]``).

    Two paths (see the module docstring): the *context path* over the utterances of each
    dialogue (the paper's), and the *token path* over each utterance's tokens/frames
    with attention pooling, taken when the batch carries ``batch.sequences[modality]``
    and the encoder was built with ``sequence_dim``.

    Args:
        modality: The modality letter (which ``batch.sequences`` entry to read).
        in_dim: ``d_m`` of ``batch.features[modality]``.
        size: ``h``, the output width (``h / 2`` recurrent units per direction).
        num_heads: Self-attention heads.
        dropout: After the self-attention.
        rnn_cell: ``"gru"`` (the paper) or ``"lstm"`` (Table 7's Bi-LSTM).
        use_self_attention: The self-attention layer (``False``: the Bi-GRU's outputs).
        self_attention_residual: Add the attention's input to its output.
        sequence_dim: ``d'_m`` of ``batch.sequences[modality]``; ``None``: context path only.
        token_pooling: ``"attention"`` or ``"mean"`` over an utterance's real tokens.

    Shapes:
        - x: ``[B, T, d_m]``; optional ``batch.sequences[modality]`` ``[N, L, d'_m]`` with
          ``batch.sequence_lengths[modality]`` ``long [N]``
        - output: ``[N, h]``
    """

    def __init__(
        self,
        modality: str,
        in_dim: int,
        size: int,
        num_heads: int,
        dropout: float,
        rnn_cell: Literal["gru", "lstm"] = "gru",
        use_self_attention: bool = True,
        self_attention_residual: bool = True,
        sequence_dim: int | None = None,
        token_pooling: Literal["attention", "mean"] = "attention",
    ) -> None:
        super().__init__(size, None, "none")
        if size % 2:
            raise ConfigError(f"rsm hidden_size must be even (h / 2 units per Bi-GRU direction), got {size}")
        self.modality = modality
        self.dropout = dropout
        self.use_self_attention = use_self_attention
        self.self_attention_residual = self_attention_residual
        self.token_pooling = token_pooling
        # The FC of Section 3.3; on the token path it also embeds an utterance without tokens.
        self.input_projection = nn.Linear(in_dim, size)
        self.context_rnn = ContextualRNN(size, size // 2, cell=rnn_cell, bidirectional=True)
        self.context_attention = PackedMultiheadAttention(size, num_heads) if use_self_attention else None
        self.sequence_dim = sequence_dim
        self.token_projection: nn.Linear | None = None
        self.token_rnn: ContextualRNN | None = None
        self.token_attention: PackedMultiheadAttention | None = None
        self.token_score: nn.Sequential | None = None
        if sequence_dim is not None:
            self.token_projection = nn.Linear(sequence_dim, size)
            self.token_rnn = ContextualRNN(size, size // 2, cell=rnn_cell, bidirectional=True)
            self.token_attention = PackedMultiheadAttention(size, num_heads) if use_self_attention else None
            if token_pooling == "attention":
                self.token_score = nn.Sequential(nn.Linear(size, size), nn.Tanh(), nn.Linear(size, 1, bias=False))

    def _attend(self, attention: PackedMultiheadAttention | None, x: Tensor, index: Tensor, allowed: Tensor) -> Tensor:
        """Self-attention of packed rows ``x`` within their blocks, residual, dropout."""
        if attention is not None:
            attended = attention(x, x, index, allowed)
            x = x + attended if self.self_attention_residual else attended
        return F.dropout(x, self.dropout, self.training)

    def encode_core(self, x: Tensor, batch: Batch) -> Tensor:
        if self.sequence_dim is not None and self.modality in batch.sequences:
            return self.encode_tokens(batch)
        return self.encode_context(x, batch)

    def encode_context(self, x: Tensor, batch: Batch) -> Tensor:
        """The context path: ``[B, T, d_m]`` -> ``[N, h]``, attention within each dialogue."""
        h = self.context_rnn.forward_flat(self.input_projection(batch.flatten(x)), batch)
        return self._attend(self.context_attention, h, batch.flat_index, batch.mask[:, None, :])

    def encode_tokens(self, batch: Batch) -> Tensor:
        """The token path: ``batch.sequences[m]`` ``[N, L, d'_m]`` -> ``[N, h]``."""
        assert self.token_projection is not None and self.token_rnn is not None
        sequences = batch.sequences[self.modality]
        lengths = batch.sequence_lengths[self.modality].to(sequences.device)
        if sequences.dim() != 3 or sequences.shape[-1] != self.sequence_dim:
            raise DataError(
                f"rsm: {self.modality!r} sequences have shape {tuple(sequences.shape)}, the model was built for "
                f"[N, L, {self.sequence_dim}] (sequence_dims)"
            )
        n = sequences.shape[0]
        # Steps past the batch's longest utterance are never read: drop them before any work.
        longest = max(1, int(lengths.max())) if lengths.numel() else 1
        sequences = sequences[:, :longest]
        if sequences.shape[1] < longest:
            sequences = F.pad(sequences, (0, 0, 0, longest - sequences.shape[1]))
        fast = fast_kernels_enabled()
        if fast:
            # Project the real tokens only (a MiniLM token grid is mostly padding); the GRU packs anyway.
            real = torch.arange(longest, device=sequences.device)[None, :] < lengths[:, None]
            at = torch.nonzero(real.reshape(-1), as_tuple=False).squeeze(1)
            projected = self.token_projection(sequences.reshape(n * longest, -1).index_select(0, at))
            tokens = rows_to_grid(projected, at, n, longest)
        else:
            tokens = self.token_projection(sequences)  # [N, L, h]
        empty = lengths == 0
        if bool(empty.any()):
            utterance = self.input_projection(batch.flatten(batch.features[self.modality]))  # [N, h]
            first = (torch.arange(longest, device=tokens.device)[None, :] == 0) & empty[:, None]  # [N, L]
            tokens = torch.where(first[..., None], utterance[:, None, :].to(tokens.dtype), tokens)
        lengths = lengths.clamp_min(1)
        h = self.token_rnn(tokens, lengths)  # [N, L, h], zero past each length
        valid = torch.arange(longest, device=h.device)[None, :] < lengths[:, None]  # [N, L]
        index = torch.nonzero(valid.reshape(-1), as_tuple=False).squeeze(1)
        rows = h.reshape(n * longest, -1)[index]
        if fast:
            # Attention within utterances grouped by length, pooling over the real rows only.
            if self.token_attention is not None:
                attended = self.token_attention.forward_bucketed(rows, index, valid)
                rows = rows + attended if self.self_attention_residual else attended
            rows = F.dropout(rows, self.dropout, self.training)
            utterance = index.div(longest, rounding_mode="floor")
            if self.token_score is not None:
                scores = self.token_score(rows).squeeze(-1).float()
                grid_scores = scores.new_full((n * longest,), float("-inf")).index_copy(0, index, scores)
                weights = torch.softmax(grid_scores.view(n, longest), dim=1).view(-1)[index].to(rows.dtype)
            else:
                weights = (1.0 / lengths.to(rows.dtype))[utterance]
            return rows.new_zeros(n, rows.shape[-1]).index_add(0, utterance, rows * weights[:, None])
        rows = self._attend(self.token_attention, rows, index, valid[:, None, :])
        grid = rows_to_grid(rows, index, n, longest)
        if self.token_score is not None:
            scores = self.token_score(grid).squeeze(-1).masked_fill(~valid, float("-inf"))
            weights = torch.softmax(scores.float(), dim=1).to(grid.dtype)
        else:
            weights = valid.to(grid.dtype) / lengths[:, None].to(grid.dtype)
        return (weights[..., None] * grid).sum(1)


# -- the model ---------------------------------------------------------------------------
@register_model("rsm")
class RSM(MercModel):
    """RSM (Du et al., LREC-COLING 2024): Bi-GRU + self-attention encoders, public/unique subspaces, cross-modal attention.

    Args:
        in_dims: Feature dim per modality, e.g. ``{"t": 768, "a": 6373}``.
        num_classes: Number of classes ``C``.
        hidden_size: ``h``, the width of every code (Table 2 "hidden size": 100).
        num_heads: Self- and cross-modality attention heads (Table 2: 4).
        dropout: After the self-attention and the cross-modality attention (Table 2: 0.2).
        alpha: ``alpha`` of eq. 9, the weight of ``L_sim + L_dif`` in ``L_sp`` (Table 2: 0.1).
        beta: ``beta`` of eq. 13, the weight of ``L_sp`` (Table 2: 0.1).
        unimodal_loss_weight: Weight of ``L_ua`` (eq. 13: 1); 0 is the "w/o L_ua" ablation.
        cmd_moments: ``K`` of eq. 5 (not given in the paper; MISA's 5).
        cmd_norm: ``"squared"`` (the paper) or ``"l2"`` (Zellinger et al., MISA).
        difference_normalization: ``"misa"`` (default) or ``"none"`` (eq. 6 as printed);
            see :func:`orthogonality_loss`.
        subspace_activation: After the public and unique encoders' ``Linear`` (MISA:
            sigmoid).
        classifier_hidden_size: Hidden width of the classifier; ``None``: ``h``; 0: one
            linear layer.
        rnn_cell: ``"gru"`` (the paper) or ``"lstm"`` (Table 7's Bi-LSTM rows).
        use_self_attention: The encoders' self-attention (Section 3.3).
        self_attention_residual: Residual connection around it.
        use_subspace_mapping: The public and unique encoders (Section 3.5); ``False``
            removes them and ``L_sp`` (Table 7's "Bi-GRU" with the attention off).
        use_subspace_loss: ``L_sp`` (Table 6 "w/o L_sp": ``False``, no decoders).
        use_cycle_loss: ``L_cyc`` inside ``L_sp`` (eq. 8).
        use_cross_modal_attention: Section 3.6 (Table 6 "w/o cross-modality attention":
            ``False``).
        sequence_dims: Token/frame dim ``d'_m`` per modality with ``batch.sequences``
            (the runner passes the dataset's); ``None``: the context path only.
        token_pooling: Token path pooling, ``"attention"`` or ``"mean"``.
        unimodal_heads: The per-modality heads (``unimodal_logits``; also ``L_ua``).

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, d_m]``; optional ``batch.sequences[m]``
          ``[N, L_m, d'_m]`` with ``batch.sequence_lengths[m]`` ``long [N]``
        - output: ``logits`` ``[N, C]``; ``unimodal_logits[m]`` ``[N, C]``;
          ``unimodal_features[m]`` = ``U_m`` ``[N, h]``; ``embeddings`` ``[N, F]`` the
          fused features (``F = (M (M - 1) + M) h`` with the full model, ``M >= 2``);
          ``aux_losses``: ``unimodal_ce``, ``cmd``, ``difference``, ``reconstruction``,
          ``cycle`` (training only)

    >>> model = RSM({"t": 12, "a": 6}, num_classes=4, hidden_size=8, num_heads=2)
    >>> sorted(model.cross_attention), model.classifier_input_size
    (['a_to_t', 't_to_a'], 32)
    """

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        hidden_size: int = 100,
        num_heads: int = 4,
        dropout: float = 0.2,
        alpha: float = 0.1,
        beta: float = 0.1,
        unimodal_loss_weight: float = 1.0,
        cmd_moments: int = 5,
        cmd_norm: Literal["squared", "l2"] = "squared",
        difference_normalization: Literal["misa", "none"] = "misa",
        subspace_activation: SubspaceActivation = "sigmoid",
        classifier_hidden_size: int | None = None,
        rnn_cell: Literal["gru", "lstm"] = "gru",
        use_self_attention: bool = True,
        self_attention_residual: bool = True,
        use_subspace_mapping: bool = True,
        use_subspace_loss: bool = True,
        use_cycle_loss: bool = True,
        use_cross_modal_attention: bool = True,
        sequence_dims: Mapping[str, int] | None = None,
        token_pooling: Literal["attention", "mean"] = "attention",
        unimodal_heads: bool = True,
    ) -> None:
        super().__init__(in_dims, num_classes, unimodal_heads=unimodal_heads, unimodal_loss_weight=unimodal_loss_weight)
        if hidden_size < 2 or cmd_moments < 1:
            raise ConfigError(f"rsm hidden_size must be >= 2 and cmd_moments >= 1, got {hidden_size}, {cmd_moments}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"rsm dropout must be in [0, 1), got {dropout}")
        if min(alpha, beta) < 0:
            raise ConfigError(f"rsm alpha and beta must be >= 0, got {alpha}, {beta}")
        if classifier_hidden_size is not None and classifier_hidden_size < 0:
            raise ConfigError(f"rsm classifier_hidden_size must be >= 0, got {classifier_hidden_size}")
        unknown = sorted(set(sequence_dims or {}) - set(self.modalities))
        if unknown:
            raise ConfigError(f"rsm sequence_dims for {unknown}, but the model's modalities are {self.modalities}")
        # String choices go through the one resolver (direct construction skips the recipe check).
        cmd_norm = resolve_choice("rsm cmd_norm", cmd_norm, ["squared", "l2"])  # type: ignore[assignment]
        difference_normalization = resolve_choice(  # type: ignore[assignment]
            "rsm difference_normalization", difference_normalization, ["misa", "none"]
        )
        subspace_activation = resolve_choice(  # type: ignore[assignment]
            "rsm subspace_activation", subspace_activation, list(_ACTIVATIONS)
        )
        token_pooling = resolve_choice("rsm token_pooling", token_pooling, ["attention", "mean"])  # type: ignore[assignment]
        h = int(hidden_size)
        self.hidden_size = h
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.cmd_moments = int(cmd_moments)
        self.cmd_norm = cmd_norm
        self.difference_normalization = difference_normalization
        self.use_subspace_mapping = bool(use_subspace_mapping)
        self.use_subspace_loss = self.use_subspace_mapping and bool(use_subspace_loss)
        self.use_cycle_loss = bool(use_cycle_loss)
        self.sequence_dims: dict[str, int] = {m: int(d) for m, d in (sequence_dims or {}).items()}
        self.pairs: tuple[tuple[str, str], ...] = tuple(itertools.permutations(self.modalities, 2))
        self.use_cross_modal_attention = bool(use_cross_modal_attention) and bool(self.pairs)

        self.add_encoders(
            {
                m: RSMModalityEncoder(
                    m,
                    d,
                    h,
                    num_heads,
                    dropout,
                    rnn_cell=rnn_cell,
                    use_self_attention=use_self_attention,
                    self_attention_residual=self_attention_residual,
                    sequence_dim=self.sequence_dims.get(m),
                    token_pooling=token_pooling,
                )
                for m, d in self.in_dims.items()
            },
            {m: h for m in self.modalities},
        )
        activation = _ACTIVATIONS[subspace_activation]
        self.public_encoder: nn.Module | None = None
        self.private_encoders = nn.ModuleDict()
        if self.use_subspace_mapping:
            self.public_encoder = nn.Sequential(nn.Linear(h, h), activation())
            self.private_encoders = nn.ModuleDict(
                {m: nn.Sequential(nn.Linear(h, h), activation()) for m in self.modalities}
            )
        self.dropout = float(dropout)
        parts = len(self.pairs) if self.use_cross_modal_attention else len(self.modalities)
        if self.use_subspace_mapping:
            parts += len(self.modalities)
        self.classifier_input_size = parts * h
        width = h if classifier_hidden_size is None else int(classifier_hidden_size)
        self.classifier: nn.Module = (
            nn.Sequential(nn.Linear(self.classifier_input_size, width), nn.ReLU(), nn.Linear(width, self.num_classes))
            if width > 0
            else nn.Linear(self.classifier_input_size, self.num_classes)
        )
        # Optional parts last, so that switching one off leaves the others' initialisation unchanged.
        self.cross_attention = nn.ModuleDict(
            {f"{s}_to_{t}": PackedMultiheadAttention(h, num_heads) for s, t in self.pairs}
            if self.use_cross_modal_attention
            else {}
        )
        self.decoders = nn.ModuleDict({m: nn.Linear(h, h) for m in self.modalities} if self.use_subspace_loss else {})

    # -- the parts -----------------------------------------------------------------------
    def subspaces(self, codes: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Eq. 4: ``(U^pub, U^uni)``, ``{m: [N, h]}`` each; without the mapping ``({}, codes)``."""
        if self.public_encoder is None:
            return {}, dict(codes)
        public = {m: self.public_encoder(codes[m]) for m in self.modalities}
        unique = {m: self.private_encoders[m](codes[m]) for m in self.modalities}
        return public, unique

    def cross_modal(self, batch: Batch, unique: Mapping[str, Tensor]) -> list[Tensor]:
        """Eq. 10-11 for every ordered pair ``s -> t``: ``F^uni_{s->t}`` ``[N, h]`` (attention within dialogues)."""
        allowed = batch.mask[:, None, :]
        return [
            F.dropout(
                self.cross_attention[f"{s}_to_{t}"](unique[t], unique[s], batch.flat_index, allowed),
                self.dropout,
                self.training,
            )
            for s, t in self.pairs
        ]

    def subspace_losses(
        self, codes: Mapping[str, Tensor], public: Mapping[str, Tensor], unique: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """The unweighted terms of eq. 9: ``{"cmd", "difference", "reconstruction", "cycle"}`` (scalars).

        Pair terms are averaged over unordered modality pairs, per-modality terms summed
        (the module docstring); ``"cmd"`` is absent with one modality.
        """
        pairs = list(itertools.combinations(self.modalities, 2))
        losses: dict[str, Tensor] = {}
        if pairs:
            losses["cmd"] = torch.stack(
                [central_moment_discrepancy(public[a], public[b], self.cmd_moments, self.cmd_norm) for a, b in pairs]
            ).mean()
        own = torch.stack(
            [orthogonality_loss(unique[m], public[m], self.difference_normalization) for m in self.modalities]
        ).sum()
        if pairs:
            own = (
                own
                + torch.stack(
                    [orthogonality_loss(unique[a], unique[b], self.difference_normalization) for a, b in pairs]
                ).mean()
            )
        losses["difference"] = own
        reconstructed = {m: self.decoders[m](public[m] + unique[m]) for m in self.modalities}
        losses["reconstruction"] = torch.stack([F.mse_loss(reconstructed[m], codes[m]) for m in self.modalities]).sum()
        if self.use_cycle_loss:
            losses["cycle"] = torch.stack(
                [F.mse_loss(self.private_encoders[m](reconstructed[m]), unique[m]) for m in self.modalities]
            ).sum()
        return losses

    def loss_weights(self) -> dict[str, float]:
        """The weight of each named subspace loss in eq. 13 (``beta alpha`` or ``beta``)."""
        return {
            "cmd": self.beta * self.alpha,
            "difference": self.beta * self.alpha,
            "reconstruction": self.beta,
            "cycle": self.beta,
        }

    # -- the contract ----------------------------------------------------------------------
    def _precision(self, batch: Batch) -> contextlib.AbstractContextManager[object]:
        """Float32 for the small fusion and the moment losses under CPU autocast (powers up to ``K``)."""
        return torch.autocast("cpu", enabled=False) if cpu_autocast_active(batch.mask) else contextlib.nullcontext()

    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        """Subspace mapping, cross-modal attention, concatenation and classifier on the codes ``{m: [N, h]}``."""
        with self._precision(batch):
            codes = {m: codes[m].float() for m in self.modalities}
            public, unique = self.subspaces(codes)
            if self.use_cross_modal_attention:
                parts = self.cross_modal(batch, unique)
            else:
                parts = [unique[m] for m in self.modalities]
            parts += [public[m] for m in self.modalities if m in public]
            fused = torch.cat(parts, dim=-1)
            logits = self.classifier(fused)
            aux: dict[str, Tensor] = {}
            if self.training and self.use_subspace_loss and self.beta > 0:
                weights = self.loss_weights()
                for name, value in self.subspace_losses(codes, public, unique).items():
                    if weights[name] > 0:
                        aux[name] = weights[name] * value
        return ModelOutput(logits=logits, aux_losses=aux, embeddings=fused)


__all__ = [
    "RSM",
    "PackedMultiheadAttention",
    "RSMModalityEncoder",
    "central_moment_discrepancy",
    "orthogonality_loss",
]
