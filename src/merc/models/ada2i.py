r"""Ada2I: adaptive feature and modality weighting for balanced multimodal ERC.

Nguyen, Le, Mai, Le. "Ada2I: Enhancing Modality Balance for Multimodal Conversational
Emotion Recognition." ACM Multimedia 2024 (doi:10.1145/3664647.3681648). Reference code:
``leson502/ADA2I`` (``model/net.py``, ``model/AFW.py``, ``train.py``, ``run.sh``); it
settles what the paper leaves open, as listed below. The code here is merc's own.

Pipeline (paper Figure 2), for a batch of dialogues with ``N`` real utterances, every
modality ``m`` encoded to the same width ``h`` (``hidden_size``):

1. **Modality encoders** (Section 3.2, eq. 2): per modality a Transformer over the
   dialogue's utterances (PyTorch's post-norm ReLU layers, ``encoder_layers`` of them,
   heads the first of 5..14 dividing ``d_m``, as the reference's
   ``Transfomer_Encoder``), then ``Linear(d_m, h)``: ``Z^m`` ``[N, h]``.
2. **Adaptive Feature Weighting** (AFW, Section 3.3, eq. 3-7), ``afw_layers`` layers
   (:class:`TensorRingFeatureWeighting`). For each utterance ``i`` and modality ``m``
   the tensor-ring cores (eq. 5, the mode-1 Khatri-Rao product of two projections, one
   ``r x r`` matrix per utterance)

   .. math::
       G^m_{Q,i} = (Z^m_i W^{(1)}_{Q_m}) \otimes (Z^m_i W^{(2)}_{Q_m}),\quad
       G^m_{K,i} = (Z^m_i W^{(1)}_{K_m}) \otimes (Z^m_i W^{(2)}_{K_m}),\quad
       \Theta^m_i = G^m_{Q,i} \odot G^m_{K,i}                                   (eq. 4)

   are chained around the ring of modalities (eq. 3, 6). The pooled matrix
   ``A^(m)`` of a dialogue is the mean of ``Theta^m`` over its real utterances, and

   .. math::
       Att_{m,i} = \mathrm{Linear}\big(\mathrm{vec}(\Theta^m_i A^{(n_1)} A^{(n_2)})\big),
       \qquad Z^{f\text{-}adapt}_m = Att_m \odot Z^m + \beta Z^m                (eq. 6, 7)

   with ``n_1, n_2`` the other modalities in ring order after ``m`` (``t -> a -> v ->
   t``). By linearity ``Theta^t_i A^a A^v`` is the *open* tensor ring
   ``Tr{Theta^t, Theta^a, Theta^v}`` (eq. 3 with the cores ``Theta``, the bond between
   the last and the first core left uncut) averaged over the audio and visual
   utterances of the dialogue, and its trace is the closed ring tensor averaged over
   them (``tests/models/test_ada2i.py`` checks both against the full ``n x n x n``
   tensor of a dialogue).
   Dropout follows each layer.
3. **Adaptive Modality Weighting** (AMW, Section 3.4, eq. 8): per modality a head
   ``W^m`` ``[C, h]`` (``unimodal_classifiers[m]``, no bias) and one shared bias ``b``;
   each class's weight row and each feature vector are L2-normalised,

   .. math::
       s^m_{ik} = \cos\langle W^m_k, Z^{f\text{-}adapt}_{m,i}\rangle + b_k / M,
       \qquad Z^{m\text{-}adapt}_i = \sum_m s^m_i                                (eq. 8, 16)

   ``s^m`` is what ``unimodal_logits[m]`` holds: eq. 16's per-modality score, whose
   softmax at the true class the ``ada2i-gm`` gradient-modulation plug-in sums into
   ``s^m_t``.
4. **Classifier** (eq. 9): ``logits = MLP(Z^{m-adapt})``, ``Linear(C, H) -> ReLU ->
   Linear(H, C)``.

So the fused logits are the MLP of the sum of the unimodal logits:
``logits == mlp(sum(unimodal_logits.values()))`` (exactly, when no before-fuse hook is
registered; see below).

Losses (eq. 10-14, ``L_main = L_cls + L_modal + L_feature``, all weights 1):
``L_cls`` is the trainer's cross-entropy of ``logits``; the model adds
``aux_losses["modal"]``, the cross-entropy of ``Z^{m-adapt}`` (eq. 13), and
``aux_losses["feature"]``, the L1 distance between each layer's ``Att_m`` and the
Attention Mapping Network's ``\hat{Att}_m = \Phi_m(Z^m)`` (eq. 11-12; ``Phi_m`` one
``Linear(h, h)`` per modality as the reference's ``AttentionMapping``, reading the
layer's input), summed over AFW layers. Both only in training.

Gradient modulation (eq. 15-19) is not part of the model: the trainer plug-in of recipe
section ``ada2i-gm`` (option ``alpha``) rescales the gradients of
:meth:`~merc.models.base.MercModel.modality_parameters` (each modality's encoder and its
head ``W^m``) from ``unimodal_logits``. Table 5's "w/o training optimization" ablation
is the model trained without that section; "w/o AFW" and "w/o AMW" are ``use_afw=False``
and ``use_amw=False``.

Where the paper is vague or its printed form and the reference code differ (the
reference produced the published numbers):

- Eq. 4 prints ``softmax(G_Q ⊙ G_K / sqrt(d_k))`` without saying over which axis or
  what ``d_k`` is; the reference uses the plain product. Default: the plain product;
  ``theta_softmax=True`` applies a softmax over each utterance's ``r x r`` entries
  scaled by ``1 / r`` (``d_k = r^2``).
- Eq. 6 prints the contraction with ``A^(t), A^(a), A^(v)``, the modality's own pool
  included; the reference multiplies by the *other* modalities' pools only, which is the
  tensor-ring reading above (each modality's core once in the ring). Here: the others,
  in cyclic ring order (the reference uses its list order, the same for ``t`` and for
  two modalities).
- ``A^(m)`` averages "across the modality dimension d_m", which by eq. 5 is the
  utterance axis of one conversation: here the mean over the dialogue's *real*
  utterances (the reference averages over the padded length of the batch, so a
  dialogue's output there depends on its batch mates).
- Eq. 7's ``Att_m Z^m``: both are ``[N, d_m]``, an element-wise product (reference).
- Eq. 12: the reference compares ``Phi_m(Z^m)`` with ``Z^{f-adapt}_m`` (a list aliased
  before eq. 7 overwrites it); here with ``Att_m``, as the paper. Its scale is the
  reference's ``nn.L1Loss``: the mean absolute difference over utterances, modalities
  and features (eq. 12 read as a sum over modalities of L1 norms would be ``M h``
  times larger at the same weight 1).
- Eq. 8's ``||W^m||``: per class row, the cosine of eq. 16 (the reference normalises
  each feature's weights across classes instead). One bias ``b`` (``fusion_bias``),
  ``b / M`` in each modality's score, as eq. 16 and the reference's ``bias / M``.
- Eq. 9's MLP: its hidden width is not given (``mlp_hidden_size``, default ``h``); the
  reference has none (its prediction is ``Z^{m-adapt}`` itself, trained by one
  cross-entropy). ``mlp_hidden_size=0`` is that: ``logits = Z^{m-adapt}`` and no
  ``"modal"`` term (it would be the classification loss counted twice).
- Unstated in the paper, from the reference: 2 encoder layers, 2 AFW layers, dropout
  0.5 in the encoders and after each AFW layer, ``r_s = r_w = tensor_rank``, every
  modality encoded to the same ``h``, no dropout when AFW is off.
- Attention and pooling never reach padding (the reference's encoder attends to the
  zero padding of the batch).
- Ada2I uses no speaker information; missing modalities are not modelled (absent ones
  enter as their zero features; a code zeroed before fusion, e.g. by a hook, has a zero
  ``Z^{f-adapt}_m`` and scores ``b / M``).

One modality: the ring has one core, so ``Att_m = Linear(vec Theta^m_i)`` (intra-modal
feature weighting only), ``Z^{m-adapt}`` is the one head's cosine plus ``b``, and the
gradient-modulation ratio is 1 (no modulation). Two modalities: one pool in each ring.

Before-fuse hooks (modality dropout, OPM) change what AFW and AMW fuse; the unimodal
logits stay those of the codes as encoded (merc's contract), so while a hook is
registered AFW and AMW run a second time on the unhooked codes for ``unimodal_logits``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.data.batching import IGNORE_INDEX, Batch
from merc.errors import ConfigError
from merc.models.base import MercModel
from merc.models.layers.encoders import EncoderSpec, build_encoder, encoder_kinds
from merc.models.layers.precision import cpu_autocast_active
from merc.models.output import ModelOutput
from merc.models.registry import register_model

#: Ada2I's modality encoders: a Transformer over each dialogue per modality (Section 3.2).
ADA2I_ENCODERS: dict[str, str] = {"t": "transformer", "a": "transformer", "v": "transformer"}


def reference_heads(dim: int) -> int:
    """The reference encoder's heads: the first ``h`` in 5..14 dividing ``dim``, else 1.

    >>> reference_heads(768), reference_heads(512), reference_heads(300), reference_heads(342), reference_heads(17)
    (6, 8, 5, 6, 1)
    """
    return next((h for h in range(5, 15) if dim % h == 0), 1)


def ring_order(modalities: Sequence[str], modality: str) -> tuple[str, ...]:
    """The other modalities in ring order after ``modality`` (the cores that follow it in the ring).

    >>> ring_order(("t", "a", "v"), "t"), ring_order(("t", "a", "v"), "a"), ring_order(("t", "a", "v"), "v")
    (('a', 'v'), ('v', 't'), ('t', 'a'))
    """
    k = list(modalities).index(modality)
    return tuple(modalities[k + 1 :]) + tuple(modalities[:k])


def khatri_rao_rows(left: Tensor, right: Tensor) -> Tensor:
    """Mode-1 Khatri-Rao product reshaped to cores: row ``i`` is ``outer(left_i, right_i)``.

    Shapes:
        - left ``[N, r_s]``, right ``[N, r_w]`` -> ``[N, r_s, r_w]``
    """
    return left[:, :, None] * right[:, None, :]


def dialogue_mean(x: Tensor, batch: Batch) -> Tensor:
    """Mean of ``x`` over each dialogue's real utterances.

    Shapes:
        - x ``[N, ...]`` (``Batch.flat_index`` order) -> ``[B, ...]``
    """
    total = x.new_zeros(batch.batch_size, *x.shape[1:]).index_add_(0, batch.utterance_dialogue, x)
    count = batch.lengths.to(device=x.device, dtype=x.dtype).clamp_min(1)
    return total / count.view(-1, *([1] * (x.dim() - 1)))


def open_ring(own: Tensor, pools: Sequence[Tensor], dialogue: Tensor) -> Tensor:
    """Eq. 6's contraction: each utterance's core times its dialogue's pooled cores, in ring order.

    Args:
        own: ``[N, r, r]`` the modality's cores ``Theta^m_i``.
        pools: ``[B, r, r]`` each, the pooled cores ``A^(n)`` of the following modalities.
        dialogue: ``long [N]`` dialogue (batch row) of each utterance.

    Returns:
        ``[N, r, r]``: ``Theta^m_i A^(n_1) A^(n_2) ...`` (``own`` itself without pools).
    """
    if not pools:
        return own
    chain = pools[0]
    for pool in pools[1:]:
        chain = torch.bmm(chain, pool)  # [B, r, r], once per dialogue
    return torch.bmm(own, chain.index_select(0, dialogue))


class TensorRingFeatureWeighting(nn.Module):
    """One AFW layer (eq. 3-7, 11-12): tensor-ring attention weights per feature, and the feature loss.

    Args:
        modalities: The modalities, canonical order (the ring's order).
        size: ``h``, every modality's width.
        rank: Tensor-ring rank ``r`` (``r_s = r_w = r``).
        beta: ``beta`` of eq. 7 (share of ``Z^m`` added back).
        dropout: Dropout on the layer's output.
        theta_softmax: Eq. 4 as printed: softmax over each utterance's ``r x r`` entries,
            scaled by ``1 / r``; ``False`` (the reference): the plain product.

    Parameters:
        ``cores[m]``: ``Linear(h, 4 r)``, the four projections ``W^(1)_Q, W^(2)_Q,
        W^(1)_K, W^(2)_K`` of eq. 5 stacked (in this order); ``weights[m]``: eq. 6's
        ``Linear(r^2, h)``; ``mapping[m]``: the Attention Mapping Network ``Phi_m`` (eq. 11).

    Shapes:
        - z ``{m: [N, h]}`` -> ``{m: [N, h]}`` and the feature loss (scalar, training only)
    """

    def __init__(
        self,
        modalities: Sequence[str],
        size: int,
        rank: int,
        beta: float,
        dropout: float,
        theta_softmax: bool = False,
    ) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.rank = rank
        self.beta = beta
        self.dropout = dropout
        self.theta_softmax = theta_softmax
        self.cores = nn.ModuleDict({m: nn.Linear(size, 4 * rank) for m in self.modalities})
        self.weights = nn.ModuleDict({m: nn.Linear(rank * rank, size) for m in self.modalities})
        self.mapping = nn.ModuleDict({m: nn.Linear(size, size) for m in self.modalities})

    def coefficients(self, modality: str, z: Tensor) -> Tensor:
        """``Theta^m`` ``[N, r, r]`` (eq. 4-5) of one modality's features ``[N, h]``."""
        q1, q2, k1, k2 = self.cores[modality](z).chunk(4, dim=-1)
        theta = khatri_rao_rows(q1, q2) * khatri_rao_rows(k1, k2)
        if self.theta_softmax:
            theta = torch.softmax(theta.flatten(1) / self.rank, dim=-1).view_as(theta)
        return theta

    def rings(self, batch: Batch, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Eq. 6's contracted rings ``{m: [N, r, r]}``, before the linear map."""
        theta = {m: self.coefficients(m, z[m]) for m in self.modalities}
        pools = {m: dialogue_mean(t, batch) for m, t in theta.items()}
        dialogue = batch.utterance_dialogue
        return {
            m: open_ring(theta[m], [pools[n] for n in ring_order(self.modalities, m)], dialogue)
            for m in self.modalities
        }

    def forward(self, batch: Batch, z: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor | None]:
        rings = self.rings(batch, z)
        out: dict[str, Tensor] = {}
        distances = []
        for m in self.modalities:
            att = self.weights[m](rings[m].flatten(1))  # Att_m [N, h]
            out[m] = F.dropout(att * z[m] + self.beta * z[m], self.dropout, self.training)
            if self.training:
                distances.append((att - self.mapping[m](z[m])).abs().mean())
        loss = torch.stack(distances).mean() if distances else None
        return out, loss


@register_model("ada2i")
class Ada2I(MercModel):
    """Ada2I (Nguyen et al., ACM MM 2024): Transformer encoders, tensor-ring AFW, cosine AMW, MLP.

    Args:
        in_dims: Feature dim per modality, e.g. ``{"t": 768, "a": 512, "v": 1024}``.
        num_classes: Number of classes ``C``.
        hidden_size: ``h``, every modality's code width (Table 2 "hidden dim": 300 on
            IEMOCAP, 200 on MELD).
        tensor_rank: ``r`` (Table 2: 11 on IEMOCAP, 6 on MELD).
        beta: ``beta`` of eq. 7, in ``[0, 1]`` (Table 2: 0.01 on IEMOCAP, 0.55 on MELD).
        dropout: In the encoders' Transformer layers and after each AFW layer (the
            reference's ``--drop_rate``: 0.5).
        encoder_layers: Transformer layers per modality (``--encoder_nlayers``: 2).
        encoder_heads: Their heads; 0 picks them as the reference
            (:func:`reference_heads`).
        encoder_ffn_size: Their feed-forward width (PyTorch's default, as the reference: 2048).
        afw_layers: Stacked AFW layers (``--mmt_nlayers``: 2 in ``run.sh``).
        theta_softmax: Eq. 4's softmax (see the module docstring; default off, as the reference).
        mlp_hidden_size: Hidden width of eq. 9's MLP; ``None``: ``h``; 0: no MLP (the
            reference: ``logits = Z^{m-adapt}``, no ``"modal"`` loss).
        feature_loss_weight: Weight of ``L_feature`` (eq. 14: 1).
        modal_loss_weight: Weight of ``L_modal`` (eq. 14: 1).
        use_afw: Adaptive Feature Weighting (Table 5 "w/o AFW": AMW reads ``Z^m``; no
            ``afw`` parameters, no ``"feature"`` loss).
        use_amw: Adaptive Modality Weighting (Table 5 "w/o AMW": the heads score
            un-normalised, ``W^m Z + b / M``, i.e. one linear layer on the concatenated
            features as the reference's ``fc_out``; same parameters).
        encoders: Encoder kind per modality
            (:func:`~merc.models.layers.encoders.build_encoder`); default
            :data:`ADA2I_ENCODERS` (the reference's other choice, its ``lstm``, is ``bilstm``).
        unimodal_heads: Report the AMW scores ``s^m`` as ``unimodal_logits``; ``False``
            hides them (the model is unchanged; plug-ins that need them refuse it).

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, d_m]``
        - output: ``logits`` ``[N, C]``; ``unimodal_logits[m]`` ``[N, C]`` (eq. 16's
          scores, summing to ``Z^{m-adapt}``); ``embeddings`` ``[N, M h]``, the
          concatenated ``Z^{f-adapt}_m``; ``aux_losses`` ``"feature"`` and ``"modal"``
          (training only)

    >>> model = Ada2I({"t": 12, "a": 6}, num_classes=3, hidden_size=8, tensor_rank=2)
    >>> sorted(model.afw[0].cores), model.afw[0].cores["t"].out_features
    (['a', 't'], 8)
    """

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        hidden_size: int = 300,
        tensor_rank: int = 11,
        beta: float = 0.01,
        dropout: float = 0.5,
        encoder_layers: int = 2,
        encoder_heads: int = 0,
        encoder_ffn_size: int = 2048,
        afw_layers: int = 2,
        theta_softmax: bool = False,
        mlp_hidden_size: int | None = None,
        feature_loss_weight: float = 1.0,
        modal_loss_weight: float = 1.0,
        use_afw: bool = True,
        use_amw: bool = True,
        encoders: EncoderSpec = None,
        unimodal_heads: bool = True,
    ) -> None:
        super().__init__(in_dims, num_classes, unimodal_heads=unimodal_heads)
        if min(hidden_size, tensor_rank, encoder_layers, afw_layers, encoder_ffn_size) < 1:
            raise ConfigError(
                "ada2i hidden_size, tensor_rank, encoder_layers, afw_layers and encoder_ffn_size must be >= 1, got "
                f"{hidden_size}, {tensor_rank}, {encoder_layers}, {afw_layers}, {encoder_ffn_size}"
            )
        if not 0.0 <= beta <= 1.0:
            raise ConfigError(f"ada2i beta must be in [0, 1] (eq. 7), got {beta}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"ada2i dropout must be in [0, 1), got {dropout}")
        if encoder_heads < 0 or (mlp_hidden_size is not None and mlp_hidden_size < 0):
            raise ConfigError(
                f"ada2i encoder_heads and mlp_hidden_size must be >= 0, got {encoder_heads}, {mlp_hidden_size}"
            )
        if min(feature_loss_weight, modal_loss_weight) < 0:
            raise ConfigError(
                f"ada2i loss weights must be >= 0, got feature {feature_loss_weight}, modal {modal_loss_weight}"
            )
        h = int(hidden_size)
        self.hidden_size = h
        self.use_afw = bool(use_afw)
        self.use_amw = bool(use_amw)
        self.feature_loss_weight = float(feature_loss_weight)
        self.modal_loss_weight = float(modal_loss_weight)
        self.fills_unimodal_logits = self.use_unimodal_heads

        kinds = encoder_kinds(encoders, self.modalities, ADA2I_ENCODERS, "ada2i")
        self.add_encoders(
            {
                m: build_encoder(
                    kinds[m],
                    d,
                    h,
                    num_layers=encoder_layers,
                    dropout=dropout,
                    num_heads=encoder_heads or reference_heads(d),
                    ffn_size=encoder_ffn_size,
                )
                for m, d in self.in_dims.items()
            },
            {m: h for m in self.modalities},
        )
        self.afw = nn.ModuleList(
            [
                TensorRingFeatureWeighting(self.modalities, h, int(tensor_rank), float(beta), dropout, theta_softmax)
                for _ in range(afw_layers if self.use_afw else 0)
            ]
        )
        # AMW's heads W^m are the per-modality heads of merc's contract (their gradients
        # are modulated with the encoder's); the bias b is shared, b / M in each score.
        # Initialised as the reference's one Linear(M h, C) on the concatenation.
        bound = 1.0 / math.sqrt(len(self.modalities) * h)
        heads = {m: nn.Linear(h, self.num_classes, bias=False) for m in self.modalities}
        for head in heads.values():
            nn.init.uniform_(head.weight, -bound, bound)
        self.unimodal_classifiers = nn.ModuleDict(heads)
        self.fusion_bias = nn.Parameter(torch.empty(self.num_classes).uniform_(-bound, bound))
        width = h if mlp_hidden_size is None else int(mlp_hidden_size)
        self.mlp = (
            nn.Sequential(nn.Linear(self.num_classes, width), nn.ReLU(), nn.Linear(width, self.num_classes))
            if width > 0
            else None
        )

    # -- the modules -------------------------------------------------------------------
    def feature_weighting(self, batch: Batch, codes: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor | None]:
        """AFW (all layers): ``Z^{f-adapt}`` ``{m: [N, h]}`` and the summed feature loss (training only)."""
        z = {m: codes[m] for m in self.modalities}
        loss: Tensor | None = None
        for layer in self.afw:
            z, layer_loss = layer(batch, z)
            if layer_loss is not None:
                loss = layer_loss if loss is None else loss + layer_loss
        return z, loss

    def modality_scores(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Eq. 16's scores ``s^m = cos<W^m_k, Z_m> + b_k / M`` ``{m: [N, C]}`` (AMW, eq. 8's summands).

        Without AMW (``use_amw=False``): ``W^m Z_m + b / M``.
        """
        share = self.fusion_bias / len(self.modalities)
        scores = {}
        for m in self.modalities:
            head = self.unimodal_classifiers[m]
            assert isinstance(head, nn.Linear)
            weight = head.weight  # [C, h]
            if self.use_amw:
                scores[m] = F.linear(F.normalize(features[m], dim=-1), F.normalize(weight, dim=-1), share)
            else:
                scores[m] = F.linear(features[m], weight, share)
        return scores

    # -- the contract ------------------------------------------------------------------
    def _precision(self, batch: Batch) -> contextlib.AbstractContextManager[object]:
        """Float32 for the small, ragged fusion under CPU autocast (:mod:`merc.models.layers.precision`)."""
        return torch.autocast("cpu", enabled=False) if cpu_autocast_active(batch.mask) else contextlib.nullcontext()

    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        """AFW, AMW and the MLP on the codes ``{m: [N, h]}``; the feature and modal losses in training."""
        with self._precision(batch):
            z, feature_loss = self.feature_weighting(batch, {m: c.float() for m, c in codes.items()})
            scores = self.modality_scores(z)
            fused = torch.stack(list(scores.values())).sum(0)  # Z^{m-adapt} [N, C], eq. 8
            logits = self.mlp(fused) if self.mlp is not None else fused
        aux: dict[str, Tensor] = {}
        labels = batch.flat_labels
        if self.training and (labels != IGNORE_INDEX).any():
            if feature_loss is not None:
                aux["feature"] = self.feature_loss_weight * feature_loss
            if self.mlp is not None:
                aux["modal"] = self.modal_loss_weight * F.cross_entropy(fused, labels, ignore_index=IGNORE_INDEX)
        return ModelOutput(
            logits=logits,
            unimodal_logits=scores if self.fills_unimodal_logits else {},
            aux_losses=aux,
            embeddings=torch.cat([z[m] for m in self.modalities], dim=-1),
        )

    def _with_unimodal_outputs(self, batch: Batch, codes: Mapping[str, Tensor], output: ModelOutput) -> ModelOutput:
        # A before-fuse hook changed what was fused: the unimodal logits are those of the
        # codes as encoded (merc's contract), so AFW and AMW run once more on them.
        if self._before_fuse_hooks and output.unimodal_logits:
            with self._precision(batch):
                z, _ = self.feature_weighting(batch, {m: c.float() for m, c in codes.items()})
                output = dataclasses.replace(output, unimodal_logits=self.modality_scores(z))
        return super()._with_unimodal_outputs(batch, codes, output)


__all__ = [
    "ADA2I_ENCODERS",
    "Ada2I",
    "TensorRingFeatureWeighting",
    "dialogue_mean",
    "khatri_rao_rows",
    "open_ring",
    "reference_heads",
    "ring_order",
]
