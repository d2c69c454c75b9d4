r"""MGCMA: multi-granularity cross-modal alignment of speech and text tokens.

Wang, Zhao, Sun, Wang, Zhou, Qin. "Enhancing Multimodal Emotion Recognition through
Multi-Granularity Cross-Modal Alignment." ICASSP 2025 (arXiv:2412.20821). No official
code is public (``/work/shared/papers/notes-mgcma.md``); the paper's text available to
merc gives the structure, eq. 5 and the token-block wiring, and leaves most details
open. Where it is silent, the choices below are merc's, each a constructor argument.
The closest public precedent for the distribution part, MAP (Ji et al., CVPR 2023,
``IIGROUP/MAP``), settled the constructor's layout and the similarity constants; the
code here is merc's own.

MGCMA works on the *tokens/frames* of each utterance (BERT tokens, wav2vec 2.0 frames)
and is an utterance-level model: it reads no dialogue context and no speakers. For a
batch with ``N`` real utterances, every modality ``m`` at width ``h`` (``hidden_size``):

1. **Inputs.** ``Batch.sequences[m]`` ``[N, L_m, d'_m]`` with ``sequence_lengths[m]``
   (a key-padding mask everywhere, so padding never matters), projected
   ``Linear(d'_m, h)``, then LayerNorm. *Fallback:* a modality without sequences in the
   batch (or not in ``sequence_dims``) uses each utterance's vector
   ``batch.features[m]`` as a length-1 sequence (``Linear(d_m, h)``), and so does an
   utterance whose sequence length is 0. So MGCMA runs on every merc dataset; with
   length-1 sequences attention is trivial and the model is an utterance-level
   alignment model.
2. **Distribution-based alignment (DAM), coarse.** The distribution constructor
   (:class:`DistributionConstructor`, MAP's layout): ``x' = LN(GELU(W x))``, one
   multi-head self-attention over the utterance's tokens, its (heads-concatenated)
   output split into two halves, each projected back to ``h``:

   .. math::
       \mu = x + W_\mu a_{1:h/2},\ \mu \leftarrow \mu + \mathrm{MLP}_\mu(\mathrm{LN}(\mu)),\qquad
       \log\sigma = W_\sigma a_{h/2:h},\ \log\sigma \leftarrow \log\sigma + \mathrm{MLP}_\sigma(\mathrm{LN}(\log\sigma))

   per token. The utterance's Gaussian is ``N(mu_bar, diag(sigma_bar^2))`` with
   ``mu_bar`` the pooled ``mu`` tokens and ``sigma_bar = exp(pooled log sigma)``.
   The 2-Wasserstein distance between diagonal Gaussians has the closed form
   (:func:`gaussian_wasserstein`)

   .. math::
       W_2^2(\mathcal N_1, \mathcal N_2) = \lVert\mu_1-\mu_2\rVert_2^2 + \lVert\sigma_1-\sigma_2\rVert_2^2,

   the similarity is eq. 5, ``Sim = -p W + q`` (``p > 0``), and the loss is a
   symmetric InfoNCE over the batch (:func:`symmetric_info_nce`): utterance ``i``'s
   speech and text Gaussians are the positive pair, every other utterance of the batch
   a negative, logits ``Sim / tau``. ``aux_losses["distribution_alignment"]``.
3. **Token-based alignment (TAM), fine.** ``token_blocks`` blocks
   (:class:`TokenAlignmentBlock`). Block ``i``: a self-attention layer per modality on
   block ``i-1``'s cross-attention outputs (block 1: the ``mu`` tokens), then a
   cross-attention layer per ordered pair, queries from the target's self-attention
   output, keys/values from the source's (the paper: "the inputs for cross-attention
   ... are sourced from the i-th block's self-attention outputs"). So speech becomes
   text-aware and text speech-aware. Layers are merc's pre-LN
   :class:`~merc.models.layers.crossmodal.CrossModalLayer` (attention + FFN); a
   LayerNorm closes the stack; the outputs are pooled to ``x~_m`` ``[N, h]``.
4. **Instance-based alignment (IAM).** Per modality a linear projection of ``x~_m``,
   L2-normalised; cosine similarities over the batch, symmetric InfoNCE with its own
   temperature. ``aux_losses["instance_alignment"]``.
5. **Classifier.** ``Linear(M h, h) -> ReLU -> Dropout -> Linear(h, C)`` on the
   concatenated ``x~_m`` (``embeddings``); the trainer's cross-entropy is the
   paper's final CE loss, so ``L = L_CE + alpha L_dist + beta L_inst``.

Ablations (the paper's ablation table, one switch per module; each removes exactly its
part): ``use_distribution_alignment=False`` removes the constructor (the projected tokens
go straight to the TAM) and its loss; ``use_token_alignment=False`` removes the blocks
(the pooled ``mu`` tokens go to the IAM and the classifier); ``use_instance_alignment=False``
removes the projection heads and their loss. ``distribution_loss_weight=0`` keeps the
constructor as an encoder without its loss.

Choices where the paper is open (notes-mgcma.md section 7):

- Sizes: ``hidden_size`` 256, ``num_heads`` 4 (64-dim heads, as BERT-base and MAP),
  FFN ``4 h`` (MAP, MulT), ``token_blocks`` 2, dropout 0.1 (MAP): not stated.
- TAM reads the constructor's ``mu`` tokens: the paper's order "distribution-based,
  token-based, then instance-based" is a pipeline (its ablation on the order), as in
  MAP where the ``mu`` tokens continue into the cross-modal layers.
- Pooling (``pooling``): the masked mean over real tokens (``"first"``: the first token,
  BERT's ``[CLS]``), for the Gaussians and for ``x~_m``. ``sigma_bar`` pools ``log sigma``
  (a geometric mean of the token scales), so it stays positive.
- ``W``: the *squared* distance by default (MAP's contrastive distance);
  ``squared_wasserstein=False`` uses ``W_2`` itself. ``p = 1/200`` and ``q = 4`` are
  MAP's ``negative_scale`` and ``shift``; they are constants. Note that ``q`` cancels in
  the softmax of InfoNCE (every logit of a row shifts by ``q / tau``), so it is kept
  for eq. 5's fidelity only.
- Temperatures: CLIP's parametrisation, a learnable ``log(1 / tau)`` per loss initialised
  at ``tau = 0.07`` (MAP's initial value) with the scale clamped at 100
  (``learnable_temperature=False``: fixed ``tau``).
- Contrastive losses: in-batch negatives over all real utterances of the batch (other
  dialogues' too; no labels needed, so unlabelled utterances count), symmetric
  (both retrieval directions averaged), computed in training only.
- Loss weights ``alpha = beta = 1`` (not stated).
- Cross-attention directions: both (each modality queries the other). Each cross layer
  may also attend to a zero "NULL" key/value (``null_alignment``, on by default): a
  token without a counterpart in the other modality need not align to an unrelated one,
  and with the length-1 fallback the cross-attention still depends on its queries
  (over a single key the softmax is 1 whatever the query).
- Three modalities (``tav``): the DAM and IAM losses are the mean over the three
  modality pairs; in the TAM each modality has one cross-attention layer per other
  modality and its block output is their mean (for two modalities: the paper's block).
- One modality: nothing to align. The constructor still encodes (``mu`` tokens, no
  ``sigma`` branch, no loss), the TAM blocks are self-attention only, there is no IAM.

merc's contract: ``encode`` returns per modality the pooled ``mu`` tokens ``[N, h]`` (the
utterance Gaussian's mean; ``unimodal_features``, probed by the base class's heads);
``fuse`` reads the token states of that forward. A before-fuse hook (OPM, FAGM, modality
dropout) acts on those codes; its change is carried to the tokens by
:func:`lift_code_change` (scale each utterance's tokens by the projection of the new code
on the old, shift by the rest), so the tokens' pooled code *is* the hooked code: a
zeroed code zeroes the utterance's tokens, a code scaled by ``k`` scales them by ``k``.
The DAM loss reads the hooked means.

Speed (fast path behind :mod:`merc.models.layers.fast`, ``MERC_FAST_KERNELS=0`` for the
plain one; ``tests/models/test_mgcma.py`` checks that both give the same logits, losses
and gradients): MiniLM tokens of IEMOCAP-6 training utterances number 15 at the median
and 109 at most, so a padded ``[N, L]`` batch grid is mostly padding (16% real in the
first ``iemocap6-synthav@ta`` batch, ``bench/bench_fast_path.py``); the fast path projects only the real tokens, runs the
TAM's LayerNorms, projections and FFNs on them
(:meth:`~merc.models.layers.crossmodal.CrossModalLayer.forward_packed`) and attends
within utterances grouped by length
(:func:`~merc.models.layers.attention.length_bucketed_attention`), in the constructor too.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.data.batching import Batch
from merc.errors import ConfigError, DataError
from merc.models.base import MercModel
from merc.models.layers.attention import length_bucketed_attention, rows_to_grid
from merc.models.layers.crossmodal import CrossModalLayer
from merc.models.layers.dropout import dropout
from merc.models.layers.fast import fast_kernels_enabled
from merc.models.layers.precision import cpu_autocast_active
from merc.models.layers.transformer import packed_self_attention
from merc.models.output import ModelOutput
from merc.models.registry import register_model

Pooling = Literal["mean", "first"]

#: CLIP's bound on a learnable logit scale (``1 / tau <= 100``), which keeps InfoNCE stable.
MAX_LOGIT_SCALE = 100.0


# -- functions -------------------------------------------------------------------------------
def pool_tokens(x: Tensor, valid: Tensor, pooling: Pooling = "mean") -> Tensor:
    """One vector per utterance from its real tokens.

    Args:
        x: ``[N, L, h]`` token states.
        valid: ``bool [N, L]``, true at real tokens (at least one per row).
        pooling: ``"mean"`` over the real tokens, or ``"first"`` (the first token).

    Shapes:
        - output: ``[N, h]``

    >>> x = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> pool_tokens(x, torch.tensor([[True, True, False]])).tolist()
    [[2.0]]
    """
    if pooling == "first":
        return x[:, 0]
    weights = valid.to(x.dtype)
    return (x * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0)


def pool_token_rows(rows: Tensor, index: Tensor, valid: Tensor, pooling: Pooling = "mean") -> Tensor:
    """:func:`pool_tokens` of packed tokens: the rows of the real tokens at ``index`` of the ``N x L`` grid.

    Args:
        rows: ``[T, h]`` the real tokens.
        index: ``long [T]`` their positions in the grid (row-major: utterance ``index // L``).
        valid: ``bool [N, L]`` real tokens (at least one per utterance, the first among them).
        pooling: ``"mean"`` or ``"first"``.

    Shapes:
        - output: ``[N, h]``

    >>> valid = torch.tensor([[True, True, False], [True, False, False]])
    >>> pool_token_rows(torch.tensor([[1.0], [3.0], [5.0]]), torch.tensor([0, 1, 3]), valid).tolist()
    [[2.0], [5.0]]
    """
    n, length = valid.shape
    utterance = index.div(length, rounding_mode="floor")
    if pooling == "first":
        first = index.remainder(length) == 0
        return rows.new_zeros(n, rows.shape[-1]).index_copy(0, utterance[first], rows[first])
    counts = valid.sum(1, keepdim=True).clamp_min(1).to(rows.dtype)
    return rows.new_zeros(n, rows.shape[-1]).index_add(0, utterance, rows) / counts


def gaussian_wasserstein(
    mean_a: Tensor, sigma_a: Tensor, mean_b: Tensor, sigma_b: Tensor, squared: bool = True
) -> Tensor:
    r"""Pairwise 2-Wasserstein distances between diagonal Gaussians.

    For :math:`\mathcal N(\mu, \mathrm{diag}\,\sigma^2)` the Bures term reduces to the
    squared difference of the standard deviations, so
    :math:`W_2^2 = \lVert\mu_a-\mu_b\rVert^2 + \lVert\sigma_a-\sigma_b\rVert^2`: the squared
    Euclidean distance of the stacked ``[mu, sigma]`` vectors, computed as a Gram matrix
    (no ``[N, N, 2h]`` tensor).

    Args:
        mean_a, sigma_a: ``[N_a, h]`` means and standard deviations (``sigma > 0``).
        mean_b, sigma_b: ``[N_b, h]``.
        squared: Return :math:`W_2^2` (default) or :math:`W_2`.

    Shapes:
        - output: ``[N_a, N_b]``

    >>> mu, sigma = torch.zeros(1, 2), torch.ones(1, 2)
    >>> gaussian_wasserstein(mu, sigma, mu + 3.0, 2 * sigma).tolist()
    [[20.0]]
    """
    a = torch.cat([mean_a, sigma_a], dim=-1)
    b = torch.cat([mean_b, sigma_b], dim=-1)
    gram = a @ b.T
    sq = (a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * gram
    sq = sq.clamp_min(0.0)  # rounding can make an exact 0 slightly negative
    # sqrt has an infinite slope at 0: keep the gradient finite for identical Gaussians.
    return sq if squared else sq.clamp_min(1e-12).sqrt()


def symmetric_info_nce(logits: Tensor) -> Tensor:
    """Symmetric InfoNCE (CLIP) of a square similarity matrix, positives on the diagonal.

    ``(CE(logits, i) + CE(logits^T, i)) / 2``: row ``i`` retrieves column ``i`` among
    all columns and column ``i`` retrieves row ``i``.

    Args:
        logits: ``[N, N]``, ``logits[i, j]`` the scaled similarity of item ``i`` of the
            first modality and item ``j`` of the second.

    >>> round(float(symmetric_info_nce(torch.zeros(4, 4))), 4) == round(math.log(4), 4)
    True
    """
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def lift_code_change(tokens: Tensor, valid: Tensor, encoded: Tensor, hooked: Tensor) -> Tensor:
    """Carry a before-fuse hook's change of utterance codes over to their tokens.

    Per utterance, ``k = <hooked, encoded> / |encoded|^2`` (0 for a zero code) and the
    tokens become ``k * tokens + (hooked - k * encoded)`` at the real positions. As the
    code is the pooled tokens (mean or first token), the new tokens pool to ``hooked``
    exactly; a zeroed code gives zero tokens, a code scaled by ``k`` scales the tokens.

    Args:
        tokens: ``[N, L, h]`` token states whose pooled code is ``encoded``.
        valid: ``bool [N, L]`` real tokens.
        encoded, hooked: ``[N, h]`` the code before and after the hooks.

    Shapes:
        - output: ``[N, L, h]``, zero at padding

    >>> tokens = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])
    >>> code = tokens.mean(1)
    >>> lift_code_change(tokens, torch.ones(1, 2, dtype=torch.bool), code, 2 * code).tolist()
    [[[2.0, 0.0], [6.0, 4.0]]]
    """
    norm = (encoded * encoded).sum(-1)
    scale = torch.where(norm > 0, (hooked * encoded).sum(-1) / norm.clamp_min(torch.finfo(norm.dtype).tiny), 0.0)
    shift = hooked - scale[:, None] * encoded
    lifted = tokens * scale[:, None, None] + shift[:, None, :]
    return lifted * valid[..., None].to(lifted.dtype)


# -- modules ---------------------------------------------------------------------------------
@dataclass
class TokenStates:
    """One modality's token states after its encoder (a forward's hand-over from ``encode`` to ``fuse``).

    Attributes:
        mean: ``[N, L, h]`` the ``mu`` tokens (the projected tokens without a constructor).
        log_sigma: ``[N, L, h]`` or ``None`` (no constructor, or no distribution loss).
        valid: ``bool [N, L]`` real tokens (at least one per utterance).
        code: ``[N, h]`` the pooled ``mean``: the modality's code as ``encode`` returned it.
    """

    mean: Tensor
    log_sigma: Tensor | None
    valid: Tensor
    code: Tensor


class DistributionConstructor(nn.Module):
    r"""DAM's distribution constructor: per token a Gaussian mean and log standard deviation.

    MAP's layout (Ji et al., CVPR 2023, "probability distribution encoder"), as described
    in the module docstring: ``x' = LN(GELU(W x))``; multi-head self-attention of ``x'``
    over each utterance's real tokens (:func:`~merc.models.layers.transformer.packed_self_attention`,
    padding never computed); its heads-concatenated output ``a`` split in two halves;
    ``mu = x + W_mu a_1`` then ``mu + MLP(LN(mu))``; ``log sigma = W_sigma a_2`` then
    ``log sigma + MLP(LN(log sigma))`` (MLPs ``h -> ffn_size -> h``, GELU).

    Args:
        size: Token width ``h`` (even).
        num_heads: Attention heads (divide ``h``).
        ffn_size: Hidden width of the two MLPs.
        dropout: On the attention weights, the projections and the MLPs (MGCMA: the model's).
        with_sigma: Build the ``log sigma`` branch (only the distribution loss reads it).

    Shapes:
        - x: ``[N, L, h]``; valid: ``bool [N, L]`` (at least one true per row)
        - output: ``(mu, log_sigma)``, ``[N, L, h]`` each (``log_sigma`` ``None`` without
          the branch), zero at padding

    >>> layer = DistributionConstructor(8, num_heads=2, ffn_size=16)
    >>> mu, log_sigma = layer(torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool))
    >>> mu.shape, log_sigma.shape
    (torch.Size([3, 5, 8]), torch.Size([3, 5, 8]))
    """

    def __init__(self, size: int, num_heads: int, ffn_size: int, dropout: float = 0.0, with_sigma: bool = True) -> None:
        super().__init__()
        if size % 2 or size % num_heads:
            raise ConfigError(
                f"the distribution constructor needs an even width divisible by {num_heads} heads, got {size}"
            )
        half = size // 2
        self.num_heads = num_heads
        self.dropout = dropout
        self.pre = nn.Linear(size, size)
        self.pre_norm = nn.LayerNorm(size)
        self.qkv = nn.Linear(size, 3 * size)
        self.mean_proj = nn.Linear(half, size)
        self.mean_norm = nn.LayerNorm(size)
        self.mean_mlp = _mlp(size, ffn_size, dropout)
        self.with_sigma = with_sigma
        self.log_sigma_proj = nn.Linear(half, size) if with_sigma else None
        self.log_sigma_norm = nn.LayerNorm(size) if with_sigma else None
        self.log_sigma_mlp = _mlp(size, ffn_size, dropout) if with_sigma else None

    def forward(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor | None]:
        n, length, size = x.shape
        index = torch.nonzero(valid.reshape(-1), as_tuple=False).squeeze(1)  # real tokens in the N x L grid
        rows = x.reshape(n * length, size).index_select(0, index)  # [T, h]
        pre = self.pre_norm(F.gelu(self.pre(rows)))
        p = self.dropout if self.training else 0.0
        qkv = self.qkv(pre)
        if fast_kernels_enabled():
            # Utterances grouped by token count: one [N, L, L] grid at the longest L is mostly padding.
            q, k, v = qkv.chunk(3, dim=1)
            attended = length_bucketed_attention(q, index, length, k, v, index, valid, self.num_heads, p)
        else:
            attended = packed_self_attention(qkv, index, ~valid, self.num_heads, p)
        attended = attended.to(rows.dtype)
        mean_half, sigma_half = attended.chunk(2, dim=-1)
        mean = rows + dropout(self.mean_proj(mean_half), p, self.training)
        mean = mean + self.mean_mlp(self.mean_norm(mean))
        log_sigma = None
        if self.log_sigma_proj is not None and self.log_sigma_norm is not None and self.log_sigma_mlp is not None:
            log_sigma = dropout(self.log_sigma_proj(sigma_half), p, self.training)
            log_sigma = rows_to_grid(log_sigma + self.log_sigma_mlp(self.log_sigma_norm(log_sigma)), index, n, length)
        return rows_to_grid(mean, index, n, length), log_sigma


def _mlp(size: int, hidden: int, p: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(size, hidden), nn.GELU(), nn.Dropout(p), nn.Linear(hidden, size), nn.Dropout(p))


class ModalityTokenEncoder(nn.Module):
    """One modality's token encoder: input projection (sequence or utterance fallback), LayerNorm, constructor.

    Args:
        utterance_dim: ``d_m`` of ``batch.features[m]`` (the length-1 fallback).
        sequence_dim: ``d'_m`` of ``batch.sequences[m]``; ``None``: the fallback only.
        size: Token width ``h``.
        constructor: The modality's :class:`DistributionConstructor`, or ``None``
            (``use_distribution_alignment=False``: the projected tokens are the output).

    Shapes:
        - features: ``[N, d_m]``; sequences: ``[N, L, d'_m]`` or ``None``; lengths: ``long [N]``
        - output: ``(mean, log_sigma, valid)``: ``[N, L', h]``, ``[N, L', h]`` or ``None``,
          ``bool [N, L']`` with ``L' = max(1, lengths.max())`` (1 for the fallback)
    """

    def __init__(
        self, utterance_dim: int, sequence_dim: int | None, size: int, constructor: DistributionConstructor | None
    ) -> None:
        super().__init__()
        self.utterance_proj = nn.Linear(utterance_dim, size)
        self.sequence_proj = nn.Linear(sequence_dim, size) if sequence_dim is not None else None
        self.norm = nn.LayerNorm(size)
        self.constructor = constructor

    def tokens(self, features: Tensor, sequences: Tensor | None, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """Projected tokens ``[N, L', h]`` and the real-token mask ``bool [N, L']``."""
        if sequences is None or lengths is None or self.sequence_proj is None:
            ones = torch.ones(features.shape[0], 1, dtype=torch.bool, device=features.device)
            return self.utterance_proj(features)[:, None, :], ones
        # Padding past the longest utterance of the batch is never read: drop it before any work.
        longest = max(1, int(lengths.max())) if lengths.numel() else 1
        sequences = sequences[:, :longest]
        if sequences.shape[1] < longest:  # an all-empty batch with L = 0: one slot for the fallback
            sequences = F.pad(sequences, (0, 0, 0, longest - sequences.shape[1]))
        position = torch.arange(longest, device=sequences.device)
        valid = position[None, :] < lengths[:, None]
        if fast_kernels_enabled():
            # Project the real tokens only; padding stays zero (it is masked everywhere after).
            index = torch.nonzero(valid.reshape(-1), as_tuple=False).squeeze(1)
            rows = self.sequence_proj(sequences.reshape(-1, sequences.shape[-1]).index_select(0, index))
            tokens = rows_to_grid(rows, index, *valid.shape)
        else:
            tokens = self.sequence_proj(sequences)  # [N, L', h]
        empty = lengths == 0
        if bool(empty.any()):
            # An utterance without tokens has its vector as its one token (the documented fallback).
            fallback = (position[None, :] == 0) & empty[:, None]
            utterance = self.utterance_proj(features).to(tokens.dtype)
            tokens = torch.where(fallback[..., None], utterance[:, None, :], tokens)
            valid = valid | fallback
        return tokens, valid

    def forward(
        self, features: Tensor, sequences: Tensor | None, lengths: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        tokens, valid = self.tokens(features, sequences, lengths)
        tokens = self.norm(tokens) * valid[..., None].to(tokens.dtype)
        if self.constructor is None:
            return tokens, None, valid
        mean, log_sigma = self.constructor(tokens, valid)
        return mean, log_sigma, valid


class NullAlignedCrossLayer(CrossModalLayer):
    """A cross-attention :class:`~merc.models.layers.crossmodal.CrossModalLayer` that may align a query to *nothing*.

    The attention appends one zero key and value to every source sequence (PyTorch's
    ``nn.MultiheadAttention(add_zero_attn=True)``), the NULL word of statistical word
    alignment: a speech frame with no counterpart among the text tokens can put its
    weight there instead of spreading it over unrelated tokens. It also keeps the
    queries meaningful when the source has one token (the length-1 fallback), where a
    softmax over a single key is 1 whatever the query.

    Args:
        dim: Token width.
        num_heads: Attention heads.
        ffn_dim: FFN hidden width.
        dropout: Residual/FFN dropout and attention-weight dropout.

    Shapes:
        - as :class:`~merc.models.layers.crossmodal.CrossModalLayer` (``cross=True``)
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__(dim, num_heads, cross=True, ffn_dim=ffn_dim, dropout=dropout, attn_dropout=dropout)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True, add_zero_attn=True)


class TokenAlignmentBlock(nn.Module):
    """One TAM block: self-attention per modality, then cross-attention between modalities.

    The self-attention layer of modality ``m`` reads the previous block's output of ``m``;
    the cross-attention layer ``m <- n`` takes its queries from ``m``'s self-attention
    output and its keys and values from ``n``'s (paper, Section 2: block ``i``'s
    cross-attention inputs come from block ``i``'s self-attention outputs). With more
    than one source (``tav``), ``m``'s output is the mean of its cross layers' outputs;
    with one modality the block is self-attention only. Layers:
    :class:`~merc.models.layers.crossmodal.CrossModalLayer` (pre-LN attention + FFN).

    Args:
        modalities: The modalities, canonical order.
        size: Token width ``h``.
        num_heads: Attention heads.
        ffn_size: FFN hidden width.
        dropout: Residual/FFN dropout and attention-weight dropout.
        null_alignment: Cross-attention layers that may align a query to nothing
            (:class:`NullAlignedCrossLayer`); ``False``: plain cross-attention.

    Shapes:
        - tokens: ``{m: [N, L_m, h]}``; padding: ``{m: bool [N, L_m]}`` (true = padding)
        - output: ``{m: [N, L_m, h]}``; a real token depends only on its own utterance's
          real tokens
    """

    def __init__(
        self,
        modalities: Sequence[str],
        size: int,
        num_heads: int,
        ffn_size: int,
        dropout: float,
        null_alignment: bool = True,
    ) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.self_attention = nn.ModuleDict(
            {
                m: CrossModalLayer(
                    size, num_heads, cross=False, ffn_dim=ffn_size, dropout=dropout, attn_dropout=dropout
                )
                for m in self.modalities
            }
        )
        self.cross_attention = nn.ModuleDict(
            {
                target + source: NullAlignedCrossLayer(size, num_heads, ffn_size, dropout)
                if null_alignment
                else CrossModalLayer(
                    size, num_heads, cross=True, ffn_dim=ffn_size, dropout=dropout, attn_dropout=dropout
                )
                for target, source in itertools.permutations(self.modalities, 2)
            }
        )

    def forward(self, tokens: Mapping[str, Tensor], padding: Mapping[str, Tensor]) -> dict[str, Tensor]:
        own = {m: self.self_attention[m](tokens[m], key_padding_mask=padding[m]) for m in self.modalities}
        if len(self.modalities) < 2:
            return own
        out = {}
        for target in self.modalities:
            sources = [s for s in self.modalities if s != target]
            crossed = [
                self.cross_attention[target + s](own[target], own[s], key_padding_mask=padding[s]) for s in sources
            ]
            out[target] = crossed[0] if len(crossed) == 1 else torch.stack(crossed).mean(0)
        return out

    def forward_packed(
        self, rows: Mapping[str, Tensor], index: Mapping[str, Tensor], valid: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """:meth:`forward` on the real tokens only (:meth:`CrossModalLayer.forward_packed`).

        Args:
            rows: ``{m: [T_m, h]}`` the real tokens; index: ``{m: long [T_m]}`` their
                positions in the ``N x L_m`` grid; valid: ``{m: bool [N, L_m]}``.

        Shapes:
            - output: ``{m: [T_m, h]}``, equal to :meth:`forward`'s real tokens
        """
        own = {
            m: cast(CrossModalLayer, self.self_attention[m]).forward_packed(rows[m], index[m], valid[m])
            for m in self.modalities
        }
        if len(self.modalities) < 2:
            return own
        out = {}
        for target in self.modalities:
            crossed = [
                cast(CrossModalLayer, self.cross_attention[target + s]).forward_packed(
                    own[target], index[target], valid[target], own[s], index[s], valid[s]
                )
                for s in self.modalities
                if s != target
            ]
            out[target] = crossed[0] if len(crossed) == 1 else torch.stack(crossed).mean(0)
        return out


class _Temperature(nn.Module):
    """A contrastive logit scale ``1 / tau``: CLIP's learnable ``log(1 / tau)`` (clamped at 100) or a constant."""

    def __init__(self, tau: float, learnable: bool) -> None:
        super().__init__()
        value = torch.tensor(math.log(1.0 / tau))
        self.log_scale: Tensor
        if learnable:
            self.log_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_scale", value)

    def forward(self) -> Tensor:
        return self.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)


# -- the model -------------------------------------------------------------------------------
@register_model("mgcma")
class MGCMA(MercModel):
    """MGCMA (Wang et al., ICASSP 2025): distribution-, token- and instance-level alignment of speech and text tokens.

    See the module docstring for the pipeline, the losses and every choice the paper
    leaves open.

    Args:
        in_dims: Utterance feature dim per modality (``batch.features[m]``, the length-1
            fallback), e.g. ``{"t": 768, "a": 768}``. Speech + text (``ta``) in the paper;
            any subset works (see the module docstring for one and three modalities).
        num_classes: Number of classes ``C``.
        sequence_dims: Token/frame dim per modality that has ``batch.sequences``
            (passed by the runner when the dataset has them); ``None``: utterance
            vectors only. Modalities not listed use the fallback.
        hidden_size: Token width ``h`` (not stated; 256).
        num_heads: Attention heads of the constructor and the TAM (not stated; 4).
        ffn_size: FFN/MLP hidden width; ``None``: ``4 h`` (MAP, MulT).
        token_blocks: TAM blocks ``N`` (not stated; 2).
        dropout: In every attention, FFN and the classifier (MAP: 0.1).
        pooling: ``"mean"`` over real tokens or ``"first"`` token (``[CLS]``).
        null_alignment: The TAM's cross-attention may align a token to nothing (a zero
            key and value, :class:`NullAlignedCrossLayer`; not in the paper, see the
            module docstring); ``False``: plain cross-attention, whose query LayerNorms
            then get no gradient from length-1 (fallback) sources.
        use_distribution_alignment: The DAM (constructor and loss); ablation switch.
        use_token_alignment: The TAM blocks; ablation switch.
        use_instance_alignment: The IAM (projection heads and loss); ablation switch.
        wasserstein_scale: ``p`` of eq. 5 (MAP's ``negative_scale``: 1/200).
        wasserstein_shift: ``q`` of eq. 5 (MAP's ``shift``: 4; cancels in InfoNCE).
        squared_wasserstein: ``W`` in eq. 5 is ``W_2^2`` (MAP) or ``W_2``.
        distribution_temperature: Initial (or fixed) ``tau`` of the DAM loss (MAP: 0.07).
        instance_temperature: Initial (or fixed) ``tau`` of the IAM loss (CLIP: 0.07).
        learnable_temperature: Learn ``log(1 / tau)`` (CLIP, MAP) or keep it fixed.
        distribution_loss_weight: ``alpha`` (not stated; 1).
        instance_loss_weight: ``beta`` (not stated; 1).
        classifier_hidden_size: Hidden width of the classifier; ``None``: ``h``; 0: one
            linear layer.
        unimodal_heads: Linear probes on each modality's code (base class).

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, d_m]``; optional ``batch.sequences[m]``
          ``[N, L_m, d'_m]`` and ``batch.sequence_lengths[m]`` ``long [N]``
        - output: ``logits`` ``[N, C]``; ``unimodal_features[m]`` ``[N, h]`` (pooled ``mu``);
          ``embeddings`` ``[N, M h]`` (the pooled TAM outputs); ``aux_losses``
          ``"distribution_alignment"`` and ``"instance_alignment"`` (training, two or
          more modalities)

    >>> model = MGCMA({"t": 12, "a": 6}, num_classes=3, hidden_size=8, num_heads=2)
    >>> sorted(model.token_alignment[0].cross_attention)
    ['at', 'ta']
    """

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        sequence_dims: Mapping[str, int] | None = None,
        hidden_size: int = 256,
        num_heads: int = 4,
        ffn_size: int | None = None,
        token_blocks: int = 2,
        dropout: float = 0.1,
        pooling: Pooling = "mean",
        null_alignment: bool = True,
        use_distribution_alignment: bool = True,
        use_token_alignment: bool = True,
        use_instance_alignment: bool = True,
        wasserstein_scale: float = 1.0 / 200.0,
        wasserstein_shift: float = 4.0,
        squared_wasserstein: bool = True,
        distribution_temperature: float = 0.07,
        instance_temperature: float = 0.07,
        learnable_temperature: bool = True,
        distribution_loss_weight: float = 1.0,
        instance_loss_weight: float = 1.0,
        classifier_hidden_size: int | None = None,
        unimodal_heads: bool = True,
    ) -> None:
        super().__init__(in_dims, num_classes, unimodal_heads=unimodal_heads)
        h = int(hidden_size)
        ffn = 4 * h if ffn_size is None else int(ffn_size)
        if min(h, num_heads, ffn, token_blocks) < 1:
            raise ConfigError(
                "mgcma hidden_size, num_heads, ffn_size and token_blocks must be >= 1, got "
                f"{h}, {num_heads}, {ffn}, {token_blocks}"
            )
        if h % num_heads:
            raise ConfigError(f"mgcma hidden_size {h} is not divisible by num_heads {num_heads}")
        if use_distribution_alignment and h % 2:
            raise ConfigError(f"mgcma hidden_size must be even (the constructor splits it in two), got {h}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"mgcma dropout must be in [0, 1), got {dropout}")
        if pooling not in ("mean", "first"):
            raise ConfigError(f"mgcma pooling must be 'mean' or 'first', got {pooling!r}")
        if wasserstein_scale <= 0:
            raise ConfigError(f"mgcma wasserstein_scale (p of eq. 5) must be > 0, got {wasserstein_scale}")
        if min(distribution_temperature, instance_temperature) <= 0:
            raise ConfigError(f"mgcma temperatures must be > 0, got {distribution_temperature}, {instance_temperature}")
        if min(distribution_loss_weight, instance_loss_weight) < 0:
            raise ConfigError(
                f"mgcma loss weights must be >= 0, got {distribution_loss_weight}, {instance_loss_weight}"
            )
        if classifier_hidden_size is not None and classifier_hidden_size < 0:
            raise ConfigError(f"mgcma classifier_hidden_size must be >= 0, got {classifier_hidden_size}")
        unknown = sorted(set(sequence_dims or {}) - set(self.modalities))
        if unknown:
            raise ConfigError(f"mgcma sequence_dims for {unknown}, but the model's modalities are {self.modalities}")
        self.sequence_dims: dict[str, int] = {m: int(d) for m, d in (sequence_dims or {}).items()}
        self.hidden_size = h
        self.pooling: Pooling = pooling
        self.use_distribution_alignment = bool(use_distribution_alignment)
        self.use_token_alignment = bool(use_token_alignment)
        self.use_instance_alignment = bool(use_instance_alignment)
        self.wasserstein_scale = float(wasserstein_scale)
        self.wasserstein_shift = float(wasserstein_shift)
        self.squared_wasserstein = bool(squared_wasserstein)
        self.distribution_loss_weight = float(distribution_loss_weight)
        self.instance_loss_weight = float(instance_loss_weight)
        # Alignment losses need a pair of modalities; their parts are built only then
        # (a part no loss reaches would be a parameter without gradient).
        pairs = len(self.modalities) >= 2
        self.aligns_distributions = self.use_distribution_alignment and pairs
        self.aligns_instances = self.use_instance_alignment and pairs

        self.add_encoders(
            {
                m: ModalityTokenEncoder(
                    d,
                    self.sequence_dims.get(m),
                    h,
                    DistributionConstructor(h, num_heads, ffn, dropout, with_sigma=self.aligns_distributions)
                    if self.use_distribution_alignment
                    else None,
                )
                for m, d in self.in_dims.items()
            },
            {m: h for m in self.modalities},
        )
        self.distribution_temperature = (
            _Temperature(distribution_temperature, learnable_temperature) if self.aligns_distributions else None
        )
        self.token_alignment = nn.ModuleList(
            [
                TokenAlignmentBlock(self.modalities, h, num_heads, ffn, dropout, null_alignment)
                for _ in range(token_blocks if self.use_token_alignment else 0)
            ]
        )
        # The TAM's pre-LN layers leave their residual stream un-normalised: a LayerNorm closes it.
        self.token_norms = nn.ModuleDict(
            {m: nn.LayerNorm(h) for m in self.modalities} if self.use_token_alignment else {}
        )
        self.instance_projections = nn.ModuleDict(
            {m: nn.Linear(h, h) for m in self.modalities} if self.aligns_instances else {}
        )
        self.instance_temperature = (
            _Temperature(instance_temperature, learnable_temperature) if self.aligns_instances else None
        )
        width = h if classifier_hidden_size is None else int(classifier_hidden_size)
        fused = len(self.modalities) * h
        self.classifier: nn.Module = (
            nn.Sequential(nn.Linear(fused, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, self.num_classes))
            if width > 0
            else nn.Linear(fused, self.num_classes)
        )
        self._token_states: dict[str, TokenStates] | None = None

    # -- input checks ------------------------------------------------------------------------
    def check_batch(self, batch: Batch) -> None:
        """The base checks, plus each read sequence's dim, row count and lengths."""
        super().check_batch(batch)
        for m in self.sequence_dims:
            if m not in batch.sequences:
                continue
            seq = batch.sequences[m]
            lengths = batch.sequence_lengths.get(m)
            if seq.dim() != 3 or seq.shape[-1] != self.sequence_dims[m]:
                raise DataError(
                    f"mgcma: {m!r} sequences have shape {tuple(seq.shape)}, the model was built for "
                    f"[N, L, {self.sequence_dims[m]}] (sequence_dims)"
                )
            if lengths is None or lengths.shape != (batch.num_utterances,) or seq.shape[0] != batch.num_utterances:
                raise DataError(
                    f"mgcma: {m!r} sequences need one row and one length per real utterance "
                    f"({batch.num_utterances}), got {seq.shape[0]} rows and lengths "
                    f"{None if lengths is None else tuple(lengths.shape)}"
                )
            if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > seq.shape[1]):
                raise DataError(f"mgcma: {m!r} sequence lengths outside [0, {seq.shape[1]}]")

    # -- the contract ------------------------------------------------------------------------
    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """Per modality the pooled ``mu`` tokens ``[N, h]``; the token states are kept for ``fuse``."""
        states: dict[str, TokenStates] = {}
        for m in self.modalities:
            encoder = self.encoders[m]
            sequences = batch.sequences.get(m) if m in self.sequence_dims else None
            lengths = batch.sequence_lengths.get(m) if sequences is not None else None
            mean, log_sigma, valid = encoder(batch.flatten(batch.features[m]), sequences, lengths)
            states[m] = TokenStates(mean, log_sigma, valid, pool_tokens(mean, valid, self.pooling))
        self._token_states = states
        return {m: s.code for m, s in states.items()}

    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        """TAM, IAM and the classifier on this forward's token states; the alignment losses in training."""
        states = self._token_states
        self._token_states = None
        if states is None:
            raise RuntimeError("mgcma.fuse reads the token states of encode: call the model, not fuse alone")
        tokens = {
            m: s.mean if codes[m] is s.code else lift_code_change(s.mean, s.valid, s.code, codes[m])
            for m, s in states.items()
        }
        if self.use_token_alignment and fast_kernels_enabled():
            # Fast path: the TAM on the real tokens only (a MiniLM token grid is mostly padding).
            valid = {m: s.valid for m, s in states.items()}
            index = {m: torch.nonzero(v.reshape(-1), as_tuple=False).squeeze(1) for m, v in valid.items()}
            rows = {m: x.reshape(-1, x.shape[-1]).index_select(0, index[m]) for m, x in tokens.items()}
            for block in self.token_alignment:
                rows = cast(TokenAlignmentBlock, block).forward_packed(rows, index, valid)
            pooled = {
                m: pool_token_rows(self.token_norms[m](rows[m]), index[m], valid[m], self.pooling)
                for m in self.modalities
            }
        else:
            padding = {m: ~s.valid for m, s in states.items()}
            for block in self.token_alignment:
                tokens = block(tokens, padding)
            if self.use_token_alignment:
                tokens = {m: self.token_norms[m](x) for m, x in tokens.items()}
            pooled = {m: pool_tokens(tokens[m], states[m].valid, self.pooling) for m in self.modalities}
        fused = torch.cat([pooled[m] for m in self.modalities], dim=-1)
        logits = self.classifier(fused)
        aux: dict[str, Tensor] = {}
        if self.training and batch.num_utterances:
            with self._float32():
                if self.aligns_distributions and self.distribution_loss_weight > 0:
                    aux["distribution_alignment"] = self.distribution_loss_weight * self.distribution_loss(
                        {m: codes[m] for m in self.modalities}, states
                    )
                if self.aligns_instances and self.instance_loss_weight > 0:
                    aux["instance_alignment"] = self.instance_loss_weight * self.instance_loss(pooled)
        return ModelOutput(logits=logits, aux_losses=aux, embeddings=fused)

    # -- the alignment losses ----------------------------------------------------------------
    def distribution_loss(self, means: Mapping[str, Tensor], states: Mapping[str, TokenStates]) -> Tensor:
        """DAM: symmetric InfoNCE of eq. 5's similarity ``-p W + q`` between the utterance Gaussians, mean over pairs.

        Args:
            means: ``{m: [N, h]}`` the Gaussians' means (the codes fusion sees).
            states: The token states (their ``log_sigma`` tokens give the scales).
        """
        assert self.distribution_temperature is not None
        sigma = {}
        for m, s in states.items():
            assert s.log_sigma is not None
            sigma[m] = pool_tokens(s.log_sigma, s.valid, self.pooling).float().exp()
        scale = self.distribution_temperature()
        losses = []
        for a, b in itertools.combinations(self.modalities, 2):
            distance = gaussian_wasserstein(
                means[a].float(), sigma[a], means[b].float(), sigma[b], squared=self.squared_wasserstein
            )
            similarity = -self.wasserstein_scale * distance + self.wasserstein_shift  # eq. 5
            losses.append(symmetric_info_nce(similarity * scale))
        return torch.stack(losses).mean()

    def instance_loss(self, pooled: Mapping[str, Tensor]) -> Tensor:
        """IAM: symmetric InfoNCE of the cosine similarities of the projected ``x~_m``, mean over pairs."""
        assert self.instance_temperature is not None
        z = {m: F.normalize(self.instance_projections[m](pooled[m].float()), dim=-1) for m in self.modalities}
        scale = self.instance_temperature()
        losses = [symmetric_info_nce(z[a] @ z[b].T * scale) for a, b in itertools.combinations(self.modalities, 2)]
        return torch.stack(losses).mean()

    def _float32(self) -> contextlib.AbstractContextManager[object]:
        """Contrastive logits in float32 under CPU autocast: bfloat16 Gram matrices lose the small distance gaps."""
        probe = next(self.parameters())
        return torch.autocast("cpu", enabled=False) if cpu_autocast_active(probe) else contextlib.nullcontext()


__all__ = [
    "MGCMA",
    "DistributionConstructor",
    "ModalityTokenEncoder",
    "TokenAlignmentBlock",
    "TokenStates",
    "gaussian_wasserstein",
    "lift_code_change",
    "pool_token_rows",
    "pool_tokens",
    "symmetric_info_nce",
]
