r"""CMATH: Cross-Modality Augmented Transformer with Hierarchical Variational Distillation.

Zhu, Cheng, Yang, Chen, Wang, Yao. "Cross-Modality Augmented Transformer with
Hierarchical Variational Distillation for Multimodal Emotion Recognition in
Conversation" (CMATH; preprint, Elsevier; text in
``shared/papers/cmath-cross-modality-augmented-transformer.txt``). The authors'
repository (``cjw-MER/CMATH``) holds only a README ("Code will be released"), so every
choice the paper leaves open is made here, documented below and exposed as a
constructor argument. CMATH's eq. 9-12 follow the intra-/inter-modal Transformer of SDT
(Ma et al., IEEE TMM 2024, which the paper cites; code ``butterfliesss/SDT``); where
CMATH is silent, SDT's published settings are the tie-breaker. The code here is merc's
own.

Pipeline (paper Figure 2), for a batch of dialogues with ``N`` real utterances, ``d``
the common width (``hidden_size``):

1. **Modality reconstruction** (Section 4.1.1, eq. 1-4), the encoder of each modality
   (:class:`ConvReconstructionEncoder`): a ``Conv1D`` over the dialogue's utterances
   (channels = features) compresses ``U_m`` ``[n, d_m]`` to ``U'_m`` ``[n, d]`` (eq. 1,
   the modality's code); a second ``Conv1D`` maps it back, ``U''_m`` (eq. 2), and

   .. math::
       \mathcal{L}_{rec} = \sum_{m} \mathrm{MSE}(U_m, U''_m)                 (eq. 3-4)

2. **Speaker and position** (eq. 5-8): ``H_m = U'_m + S + P`` with ``S`` a trainable
   embedding of the utterance's speaker within the dialogue (eq. 5) and ``P`` the
   sinusoidal encoding of its position in the dialogue (eq. 6-7,
   :func:`sinusoidal_positions`); one ``S`` and ``P`` shared by the modalities.
3. **CMA-Transformer** per central modality ``c`` (Section 4.1.2, eq. 9-14,
   :class:`CMATransformer`), post-norm layers (:class:`PostNormAttentionLayer`):

   .. math::
       H_{a\to c} &= \mathrm{Norm}(\mathrm{FFN}(\hat H) + \hat H),\;
           \hat H = \mathrm{Norm}(\mathrm{CA}(H_c, H_a, H_a) + H_c)
           \quad\text{for each auxiliary } a                                  (eq. 9, 10)\\
       H_{c\to c} &= \mathrm{Norm}(\mathrm{FFN}(\hat H) + \hat H),\;
           \hat H = \mathrm{Norm}(\mathrm{SA}(H_c) + \textstyle\sum_a H_{a\to c} + H_c)  (eq. 11)\\
       H'_c &= \mathrm{Gate}(H_{c\to c}, H_{a_1\to c}, H_{a_2\to c})          (eq. 12)

   Attention runs within each dialogue over its real utterances only
   (:func:`merc.models.layers.attention.block_attention` with the key-padding mask), so
   an utterance's output never depends on padding or on other dialogues.
4. **Variational fusion** (Section 4.2.1, eq. 15-17, :class:`VariationalFusion`): per
   modality ``mu_m = MLP^mu_m(H'_m)`` and ``log sigma_m^2 = MLP^sigma_m(H'_m)``; the
   multimodal Gaussian averages them (eq. 16) and ``H'_x = mu_x + eps * sigma_x``
   (eq. 17, reparameterisation) in training, ``H'_x = mu_x`` in evaluation
   (deterministic predictions).
5. **Classifiers** (eq. 19): ``Y_m = Classifier_m(H'_m)`` and the fused prediction
   ``logits = Y_x = Classifier_x(H'_x)``, each one ``Linear`` (the softmax is the loss's).
6. **Hierarchical distillation** (Section 4.2.2, eq. 18, 23):

   .. math::
       \mathcal{L}_{mse} = \sum_m \mathrm{MSE}(H'_m, H'_x), \qquad
       \mathcal{L}_{kl} = \sum_m \mathrm{KL}(\mathrm{softmax}(Y_x)\,\|\,\mathrm{softmax}(Y_m))

   ``Y_x`` is the teacher of eq. 23 (``y^x log(y^x / y^m)``).

Loss (eq. 24, with eq. 22's ``L_ce = L_ce^x + sum_m L_ce^m``):
``L = L_ce^x + sum_m L_ce^m + L_rec + gamma_1 L_mse + gamma_2 L_kl``. The trainer computes
``L_ce^x`` from ``logits``; the model's ``aux_losses`` hold the rest, each already
multiplied by its weight, in training only:

- ``"modality_ce"``: ``modality_ce_weight * sum_m L_ce^m`` (eq. 20, 22; weight 1),
- ``"reconstruction"``: ``reconstruction_weight * L_rec`` (eq. 4, 24; weight 1),
- ``"distill_mse"``: ``gamma_1 * L_mse`` (``low_level_weight``; Section 5.3: 1.0 on
  IEMOCAP and MELD),
- ``"distill_kl"``: ``gamma_2 * L_kl`` (``high_level_weight``; 1.8 IEMOCAP, 1.2 MELD).

**Reweighting plug-ins** (Pareto gradient modulation treats each named aux loss as a
task): :attr:`CMATH.aux_loss_weights` maps each of these names to the weight it was
multiplied by, so a task's unweighted loss is ``aux_losses[name] /
model.aux_loss_weights[name]``; a term whose weight is 0 (or whose part is switched
off) is not emitted. ``"unimodal_probe"`` (the base class's probes on detached codes)
has no weight there: it trains the probes only and never reaches the model.

Ablations (Table 4), constructor switches:

- ``use_reconstruction=False`` ("w/o MR"): the encoder is one ``Linear(d_m, d)`` per
  utterance (a fully-connected layer, as the paper's variant), no ``"reconstruction"``;
  speaker and position are still added.
- ``use_cma_transformer=False`` ("w/o CMA-T"): ``H'_m = H_m`` (no attention, no gate).
- ``use_low_level_distillation=False`` ("w/o LLD"): no ``"distill_mse"``.
- ``use_high_level_distillation=False`` ("w/o HLD"): no ``"distill_kl"``.
- both distillation switches off ("w/o HD").

Where the paper is open (choices, each a constructor argument):

- Kernel size ``k_m`` of eq. 1-2 is not given: default 1 (``kernel_size``), as SDT's
  input convolutions; odd sizes > 1 mix neighbouring utterances of the same dialogue
  ("same" zero padding, padded steps zeroed first so that a dialogue's codes do not
  depend on the batch).
- Eq. 3-4 and 18 write squared Frobenius norms under the name MSE: here the mean over
  utterances and features (PyTorch's ``MSELoss``) per modality, summed over modalities,
  which keeps gamma_1 = 1 on the scale of the cross-entropies. Eq. 23's sum over
  utterances is averaged likewise (SDT's ``KLDivLoss`` sum over utterances divided by
  their count).
- Eq. 12's ``Gate``: not defined. Here SDT's multimodal gated fusion
  (:class:`SourceGate`): a shared bias-free ``Linear(d, d)`` scores each source per
  feature, a softmax over the sources weighs them, ``H'_c = sum_k w_k * H_k``.
- Eq. 15's second MLP outputs ``log sigma^2`` (positivity without a clamp; VAE
  convention) and eq. 16 averages the standard deviations as printed
  (``variance_average="std"``); ``"logvar"`` averages the log-variances instead. The
  MLPs are ``Linear -> ReLU -> Linear`` with hidden width ``d``
  (``variational_hidden_size``), one pair per modality (eq. 15 does not say whether
  the modalities share them).
- Heads, layers, FFN width, dropout: not given. One layer per attention block (eq. 9-11
  as written), 4 heads (500 = 4 x 125, SDT's ~128-wide heads; must divide ``d``), FFN
  width ``d`` and dropout 0.5 (SDT), ReLU FFN (Vaswani et al., which the paper cites).
  Dropout acts on ``H_m`` (after adding ``S + P``, as SDT), on each attention and FFN
  output before its residual sum, and inside the FFN.
- The speaker of eq. 5 is the index of the speaker within the dialogue
  (``Batch.parties``, rows ``num_parties``; eq. 5's ``m`` speakers of the conversation).
  Positions are 0-based.
- ``V_s``'s initialisation is not given. PyTorch's ``N(0, 1)`` (SDT's) makes ``S``
  about ``sqrt(d)`` times larger than the codes of z-scored features; on
  ``iemocap6-synthav`` the fused prediction then stayed at the class prior for the
  first epochs (a 24-dialogue probe: 33% train accuracy after 12 epochs at lr 1e-3,
  53% with ``N(0, 0.02^2)`` or without ``S``). Default ``speaker_init_std=0.02``
  (BERT's embedding initialisation); ``1.0`` restores PyTorch's default.
- Distillation teachers are not detached (SDT does not detach its teacher);
  ``detach_teacher=True`` stops their gradients. ``distill_temperature`` (default 1,
  unscaled as eq. 23) divides both logits of the KL as SDT's ``temp``.

Modality subsets: with two modalities each CMA-Transformer has one auxiliary. With one
modality the CMA-Transformer degenerates to its self-attention branch (eq. 11 without
cross-modal terms) and no gate (a softmax over one source is the identity); the
variational fusion is that modality's Gaussian; distillation still ties ``H'_m`` and
``Y_m`` to the sampled ``H'_x`` and ``Y_x``.

``unimodal_logits`` are merc's linear probes on the codes ``U'_m`` (base class),
because CMATH's own ``Y_m`` read every modality through the CMA-Transformer, not one;
missing modalities are not modelled (absent ones enter as their zero features).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.data.batching import IGNORE_INDEX, Batch
from merc.errors import ConfigError
from merc.models.base import MercModel
from merc.models.layers.attention import block_attention
from merc.models.layers.encoders import build_encoder
from merc.models.layers.positional import sinusoidal_positions
from merc.models.output import ModelOutput
from merc.models.registry import register_model


class ConvReconstructionEncoder(nn.Module):
    """Modality reconstruction (eq. 1-3): Conv1D down to the common space, Conv1D back up.

    The convolutions run over each dialogue's utterances (channels are features), with
    "same" zero padding; padded steps are zeroed before each, so a dialogue's codes are
    those it has alone.

    Args:
        in_dim: ``d_m``.
        size: ``d``, the common width.
        kernel_size: ``k_m`` (odd).

    Shapes:
        - forward: x ``[B, T, d_m]`` -> ``U'_m`` ``[N, d]``
        - reconstruct: codes ``[N, d]`` -> ``U''_m`` ``[N, d_m]``
    """

    def __init__(self, in_dim: int, size: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"cmath kernel_size must be odd and >= 1 (same-length Conv1D), got {kernel_size}")
        self.down = nn.Conv1d(in_dim, size, kernel_size, padding=kernel_size // 2)
        self.up = nn.Conv1d(size, in_dim, kernel_size, padding=kernel_size // 2)

    @staticmethod
    def _convolve(conv: nn.Conv1d, grid: Tensor, batch: Batch) -> Tensor:
        """``conv`` over the utterance axis of ``grid`` ``[B, T, c]`` (zeroed at padding) -> ``[N, c']``."""
        grid = grid.masked_fill(~batch.mask[..., None], 0.0)
        return batch.flatten(conv(grid.transpose(1, 2)).transpose(1, 2))

    def forward(self, x: Tensor, batch: Batch) -> Tensor:
        return self._convolve(self.down, x, batch)

    def reconstruct(self, codes: Tensor, batch: Batch) -> Tensor:
        """Eq. 2: ``U''_m`` from the codes ``U'_m``."""
        return self._convolve(self.up, batch.unflatten(codes), batch)

    def reconstruction_error(self, x: Tensor, codes: Tensor, batch: Batch) -> Tensor:
        """Eq. 3 as a mean: the squared error of ``U''_m`` against ``U_m`` over real utterances and features."""
        return F.mse_loss(self.reconstruct(codes, batch), batch.flatten(x))


class PostNormAttentionLayer(nn.Module):
    """One post-norm (cross- or self-)attention layer of eq. 9-11, on packed rows.

    ``out = Norm(FFN(h) + h)``, ``h = Norm(Attn(query, source, source) + sum(extra) +
    query)``; ``extra`` is eq. 11's cross-modal outputs added before the first norm
    (empty for eq. 9-10).

    Args:
        size: ``d``.
        num_heads: Attention heads (divide ``d``).
        ffn_size: Hidden width of the FFN.
        dropout: On the attention and FFN outputs and inside the FFN.

    Shapes:
        - query, source ``[N, d]`` (``Batch.flat_index`` order; the same utterances),
          extra ``[N, d]`` each -> ``[N, d]``
    """

    def __init__(self, size: int, num_heads: int, ffn_size: int, dropout: float) -> None:
        super().__init__()
        if size % num_heads:
            raise ConfigError(f"cmath hidden_size {size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(size, size)
        self.key_value = nn.Linear(size, 2 * size)
        self.out = nn.Linear(size, size)
        self.norm_attention = nn.LayerNorm(size)
        self.ffn = nn.Sequential(nn.Linear(size, ffn_size), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_size, size))
        self.norm_ffn = nn.LayerNorm(size)
        self.dropout = nn.Dropout(dropout)

    def attend(self, query: Tensor, source: Tensor, batch: Batch) -> Tensor:
        """Multi-head attention of each utterance to the real utterances of its dialogue ``[N, d]``."""
        qkv = torch.cat([self.query(query), self.key_value(source)], dim=-1)
        attended = block_attention(qkv, batch.flat_index, batch.mask[:, None, :], self.num_heads)
        return self.out(attended)

    def forward(self, query: Tensor, source: Tensor, batch: Batch, extra: Sequence[Tensor] = ()) -> Tensor:
        h = query + self.dropout(self.attend(query, source, batch))
        for term in extra:
            h = h + term
        h = self.norm_attention(h)
        return self.norm_ffn(h + self.dropout(self.ffn(h)))


class SourceGate(nn.Module):
    """Eq. 12's gate (SDT's multimodal gated fusion): ``sum_k softmax_k(W H_k) * H_k``, per feature.

    Args:
        size: ``d``.

    Shapes:
        - sources: ``K`` tensors ``[N, d]`` -> ``[N, d]``
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.score = nn.Linear(size, size, bias=False)

    def weights(self, stacked: Tensor) -> Tensor:
        """Softmax over the sources ``[N, K, d]`` of their scores."""
        return torch.softmax(self.score(stacked), dim=1)

    def forward(self, sources: Sequence[Tensor]) -> Tensor:
        stacked = torch.stack(list(sources), dim=1)  # [N, K, d]
        return (self.weights(stacked) * stacked).sum(dim=1)


class CMATransformer(nn.Module):
    """The CMA-Transformer of one central modality (eq. 9-13).

    Args:
        central: The central modality ``c``.
        auxiliaries: The other modalities (cross-attention sources, eq. 9-10); may be empty.
        size, num_heads, ffn_size, dropout: As :class:`PostNormAttentionLayer`.

    Shapes:
        - h ``{m: [N, d]}`` (``H_m``) -> ``H'_c`` ``[N, d]``
    """

    def __init__(
        self, central: str, auxiliaries: Sequence[str], size: int, num_heads: int, ffn_size: int, dropout: float
    ) -> None:
        super().__init__()
        self.central = central
        self.auxiliaries = tuple(auxiliaries)
        self.cross = nn.ModuleDict(
            {a: PostNormAttentionLayer(size, num_heads, ffn_size, dropout) for a in self.auxiliaries}
        )
        self.self_attention = PostNormAttentionLayer(size, num_heads, ffn_size, dropout)
        # One source needs no gate (the softmax over one source is 1): no dead parameters.
        self.gate = SourceGate(size) if self.auxiliaries else None

    def branches(self, h: Mapping[str, Tensor], batch: Batch) -> list[Tensor]:
        """``[H_{c->c}, H_{a1->c}, ...]``: eq. 11's output, then eq. 9-10's per auxiliary."""
        own = h[self.central]
        crossed = [self.cross[a](own, h[a], batch) for a in self.auxiliaries]
        return [self.self_attention(own, own, batch, extra=crossed), *crossed]

    def forward(self, h: Mapping[str, Tensor], batch: Batch) -> Tensor:
        outputs = self.branches(h, batch)
        return self.gate(outputs) if self.gate is not None else outputs[0]


def _mlp(size: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, size))


class VariationalFusion(nn.Module):
    """Eq. 15-17: per-modality Gaussians, averaged into one, sampled by reparameterisation.

    Args:
        modalities: The modalities.
        size: ``d``.
        hidden: Hidden width of each MLP.
        variance_average: ``"std"`` (eq. 16 as printed: average ``sigma_m``) or
            ``"logvar"`` (average ``log sigma_m^2``).

    Shapes:
        - h ``{m: [N, d]}`` -> ``(H'_x, mu_x, sigma_x)``, each ``[N, d]``; ``H'_x = mu_x``
          in evaluation mode.
    """

    def __init__(
        self, modalities: Sequence[str], size: int, hidden: int, variance_average: Literal["std", "logvar"] = "std"
    ) -> None:
        super().__init__()
        if variance_average not in ("std", "logvar"):
            raise ConfigError(f"cmath variance_average must be 'std' or 'logvar', got {variance_average!r}")
        self.modalities = tuple(modalities)
        self.variance_average = variance_average
        self.mean = nn.ModuleDict({m: _mlp(size, hidden) for m in self.modalities})
        self.log_variance = nn.ModuleDict({m: _mlp(size, hidden) for m in self.modalities})

    def distributions(self, h: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Eq. 15: ``({m: mu_m}, {m: log sigma_m^2})``."""
        return (
            {m: self.mean[m](h[m]) for m in self.modalities},
            {m: self.log_variance[m](h[m]) for m in self.modalities},
        )

    def combine(self, means: Mapping[str, Tensor], log_variances: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Eq. 16: ``(mu_x, sigma_x)``, the averages over modalities."""
        mean = torch.stack([means[m] for m in self.modalities]).mean(0)
        logvar = torch.stack([log_variances[m] for m in self.modalities])
        if self.variance_average == "std":
            std = torch.exp(0.5 * logvar).mean(0)
        else:
            std = torch.exp(0.5 * logvar.mean(0))
        return mean, std

    def forward(self, h: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        mean, std = self.combine(*self.distributions(h))
        if not self.training:
            return mean, mean, std
        return mean + torch.randn_like(std) * std, mean, std  # eq. 17


@register_model("cmath")
class CMATH(MercModel):
    """CMATH (Zhu et al.): Conv1D reconstruction, CMA-Transformers, variational fusion, hierarchical distillation.

    Args:
        in_dims: Feature dim per modality, e.g. ``{"t": 1024, "a": 1582, "v": 342}``.
        num_classes: Number of classes ``C``.
        num_parties: Most speakers in one dialogue (rows of eq. 5's speaker embedding).
        hidden_size: ``d`` (Section 5.8, Figure 4: best 500 on IEMOCAP, 400 on MELD).
        num_heads: Attention heads of every layer (not given; 4, must divide ``d``).
        ffn_size: FFN hidden width (not given; ``None``: ``d``, as SDT).
        dropout: Dropout (not given; 0.5, SDT's default).
        kernel_size: ``k_m`` of eq. 1-2, one odd int or one per modality (not given; 1).
        variational_hidden_size: Hidden width of eq. 15's MLPs (``None``: ``d``).
        variance_average: What eq. 16 averages: ``"std"`` (as printed) or ``"logvar"``.
        reconstruction_weight: Weight of ``L_rec`` (eq. 24: 1).
        modality_ce_weight: Weight of ``sum_m L_ce^m`` (eq. 22: 1).
        low_level_weight: ``gamma_1`` (Section 5.3: 1.0 on IEMOCAP and MELD).
        high_level_weight: ``gamma_2`` (Section 5.3: 1.8 on IEMOCAP, 1.2 on MELD).
        distill_temperature: Divides both logits of the KL (not in the paper: 1).
        detach_teacher: Stop the gradients of ``H'_x`` / ``Y_x`` in the distillation losses.
        use_reconstruction: Table 4 "w/o MR" when false (a ``Linear`` encoder, no ``L_rec``).
        use_cma_transformer: Table 4 "w/o CMA-T" when false (``H'_m = H_m``).
        use_low_level_distillation: Table 4 "w/o LLD" when false (no ``L_mse``).
        use_high_level_distillation: Table 4 "w/o HLD" when false (no ``L_kl``); both
            distillation switches off is "w/o HD".
        use_speaker_embedding: Add eq. 5's ``S`` (not an ablation of the paper).
        speaker_init_std: Standard deviation of ``V_s``'s initial entries (not given;
            0.02, see the module docstring; 1.0 is PyTorch's default, as SDT).
        use_position_encoding: Add eq. 6-7's ``P`` (not an ablation of the paper).
        position_scale: Amplitude of ``P`` in eq. 8 (``H_m = U'_m + S + scale * P``; not given
            by the paper, which does not fix the scale of the features either; 0.1, merc's
            choice; 1.0 adds ``P`` as printed). At amplitude 1 the encoding (RMS 0.71, half
            of its dims nearly constant) outweighed merc's codes of z-scored features (RMS
            about 0.6): on ``synthetic`` and ``iemocap6-synthav`` the fused prediction stayed
            at the majority class for 6 epochs at lr 3e-3 and at 3e-4, and learned at 0.1.
        unimodal_heads: merc's linear probes on the codes (``unimodal_logits``).

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, d_m]``
        - output: ``logits`` ``[N, C]`` (``Y_x``); ``embeddings`` ``[N, d]`` (``H'_x``:
          sampled in training, ``mu_x`` in evaluation); ``unimodal_features[m]`` the
          codes ``U'_m`` ``[N, d]``; ``aux_losses`` (training) ``"modality_ce"``,
          ``"reconstruction"``, ``"distill_mse"``, ``"distill_kl"``, weighted by
          :attr:`aux_loss_weights`.

    >>> model = CMATH({"t": 12, "a": 6}, num_classes=3, hidden_size=8, num_heads=2)
    >>> sorted(model.cma), model.cma["t"].auxiliaries
    (['a', 't'], ('a',))
    """

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        num_parties: int = 2,
        hidden_size: int = 500,
        num_heads: int = 4,
        ffn_size: int | None = None,
        dropout: float = 0.5,
        kernel_size: int | dict[str, int] = 1,
        variational_hidden_size: int | None = None,
        variance_average: Literal["std", "logvar"] = "std",
        reconstruction_weight: float = 1.0,
        modality_ce_weight: float = 1.0,
        low_level_weight: float = 1.0,
        high_level_weight: float = 1.8,
        distill_temperature: float = 1.0,
        detach_teacher: bool = False,
        use_reconstruction: bool = True,
        use_cma_transformer: bool = True,
        use_low_level_distillation: bool = True,
        use_high_level_distillation: bool = True,
        use_speaker_embedding: bool = True,
        speaker_init_std: float = 0.02,
        use_position_encoding: bool = True,
        position_scale: float = 0.1,
        unimodal_heads: bool = True,
    ) -> None:
        super().__init__(in_dims, num_classes, unimodal_heads=unimodal_heads)
        d = int(hidden_size)
        ffn = d if ffn_size is None else int(ffn_size)
        var_hidden = d if variational_hidden_size is None else int(variational_hidden_size)
        if min(d, num_heads, ffn, var_hidden, num_parties) < 1:
            raise ConfigError(
                "cmath hidden_size, num_heads, ffn_size, variational_hidden_size and num_parties must be >= 1, got "
                f"{d}, {num_heads}, {ffn}, {var_hidden}, {num_parties}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"cmath dropout must be in [0, 1), got {dropout}")
        weights = {
            "reconstruction_weight": reconstruction_weight,
            "modality_ce_weight": modality_ce_weight,
            "low_level_weight": low_level_weight,
            "high_level_weight": high_level_weight,
        }
        negative = {k: v for k, v in weights.items() if v < 0}
        if negative:
            raise ConfigError(f"cmath loss weights must be >= 0, got {negative}")
        if speaker_init_std <= 0:
            raise ConfigError(f"cmath speaker_init_std must be > 0, got {speaker_init_std}")
        if distill_temperature <= 0:
            raise ConfigError(f"cmath distill_temperature must be > 0, got {distill_temperature}")
        kernels = self._kernel_sizes(kernel_size)

        self.hidden_size = d
        self.use_reconstruction = bool(use_reconstruction)
        self.use_cma_transformer = bool(use_cma_transformer)
        self.use_low_level_distillation = bool(use_low_level_distillation)
        self.use_high_level_distillation = bool(use_high_level_distillation)
        self.use_speaker_embedding = bool(use_speaker_embedding)
        self.use_position_encoding = bool(use_position_encoding)
        if not math.isfinite(position_scale) or position_scale < 0:
            raise ConfigError(f"cmath position_scale must be a finite number >= 0, got {position_scale}")
        self.position_scale = float(position_scale)
        self.reconstruction_weight = float(reconstruction_weight)
        self.modality_ce_weight = float(modality_ce_weight)
        self.low_level_weight = float(low_level_weight)
        self.high_level_weight = float(high_level_weight)
        self.distill_temperature = float(distill_temperature)
        self.detach_teacher = bool(detach_teacher)

        encoders: dict[str, nn.Module] = {
            m: ConvReconstructionEncoder(dim, d, kernels[m])
            if self.use_reconstruction
            else build_encoder("linear", dim, d)  # Table 4 "w/o MR": a fully-connected layer
            for m, dim in self.in_dims.items()
        }
        self.add_encoders(encoders, {m: d for m in self.modalities})
        self.speaker_embedding = nn.Embedding(num_parties, d) if self.use_speaker_embedding else None
        if self.speaker_embedding is not None:
            nn.init.normal_(self.speaker_embedding.weight, std=float(speaker_init_std))
            self.max_parties = int(num_parties)
        self.input_dropout = nn.Dropout(dropout)
        self.cma = nn.ModuleDict(
            {
                c: CMATransformer(c, [a for a in self.modalities if a != c], d, int(num_heads), ffn, dropout)
                for c in (self.modalities if self.use_cma_transformer else ())
            }
        )
        self.variational = VariationalFusion(self.modalities, d, var_hidden, variance_average)
        self.modality_classifiers = nn.ModuleDict({m: nn.Linear(d, self.num_classes) for m in self.modalities})
        self.classifier = nn.Linear(d, self.num_classes)

    def _kernel_sizes(self, kernel_size: int | Mapping[str, int]) -> dict[str, int]:
        if isinstance(kernel_size, Mapping):
            missing = [m for m in self.modalities if m not in kernel_size]
            if missing:
                raise ConfigError(f"cmath kernel_size has no entry for modality {', '.join(missing)}")
            return {m: int(kernel_size[m]) for m in self.modalities}
        return {m: int(kernel_size) for m in self.modalities}

    @property
    def aux_loss_weights(self) -> dict[str, float]:
        """The weight each emitted aux loss was multiplied by (``aux_losses[k] / weight`` is the unweighted task loss).

        Only the terms the model emits in training are listed: a part switched off or a
        zero weight removes its entry.
        """
        weights = {
            "modality_ce": self.modality_ce_weight,
            "reconstruction": self.reconstruction_weight if self.use_reconstruction else 0.0,
            "distill_mse": self.low_level_weight if self.use_low_level_distillation else 0.0,
            "distill_kl": self.high_level_weight if self.use_high_level_distillation else 0.0,
        }
        return {name: w for name, w in weights.items() if w > 0}

    # -- the modules -------------------------------------------------------------------
    def augment(self, batch: Batch, codes: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Eq. 8: ``H_m = U'_m + S + P`` ``{m: [N, d]}`` (before dropout)."""
        context: Tensor | None = None
        if self.speaker_embedding is not None:
            context = self.speaker_embeddings(batch, self.speaker_embedding, "party")
        if self.use_position_encoding:
            reference = next(iter(codes.values()))
            positions = sinusoidal_positions(batch.utterance_position, self.hidden_size).to(reference.dtype)
            positions = self.position_scale * positions
            context = positions if context is None else context + positions
        return {m: codes[m] if context is None else codes[m] + context for m in self.modalities}

    def refine(self, batch: Batch, h: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Eq. 13-14: ``H'_m`` per central modality (``H_m`` itself without the CMA-Transformer)."""
        if not self.use_cma_transformer:
            return dict(h)
        return {c: self.cma[c](h, batch) for c in self.modalities}

    def distillation_losses(
        self, refined: Mapping[str, Tensor], fused: Tensor, modality_logits: Mapping[str, Tensor], logits: Tensor
    ) -> dict[str, Tensor]:
        """Eq. 18 and 23, unweighted: ``{"distill_mse": L_mse, "distill_kl": L_kl}`` (the switched-on ones)."""
        losses: dict[str, Tensor] = {}
        if self.use_low_level_distillation:
            teacher = fused.detach() if self.detach_teacher else fused
            losses["distill_mse"] = torch.stack(
                [F.mse_loss(refined[m].float(), teacher.float()) for m in self.modalities]
            ).sum()
        if self.use_high_level_distillation:
            t = self.distill_temperature
            teacher_logits = logits.detach() if self.detach_teacher else logits
            target = F.log_softmax(teacher_logits.float() / t, dim=-1)
            losses["distill_kl"] = torch.stack(
                [
                    F.kl_div(
                        F.log_softmax(modality_logits[m].float() / t, dim=-1),
                        target,
                        reduction="batchmean",
                        log_target=True,
                    )
                    for m in self.modalities
                ]
            ).sum()
        return losses

    # -- the contract ------------------------------------------------------------------
    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        """Speaker/position, CMA-Transformers, variational fusion and the classifiers on the codes ``{m: [N, d]}``."""
        h = {m: self.input_dropout(x) for m, x in self.augment(batch, codes).items()}
        refined = self.refine(batch, h)
        fused, _, _ = self.variational(refined)
        logits = self.classifier(fused)
        aux: dict[str, Tensor] = {}
        if self.training and batch.num_utterances:
            modality_logits = {m: self.modality_classifiers[m](refined[m]) for m in self.modalities}
            weights = self.aux_loss_weights
            labels = batch.flat_labels
            if "modality_ce" in weights and (labels != IGNORE_INDEX).any():
                ce = torch.stack(
                    [
                        F.cross_entropy(modality_logits[m].float(), labels, ignore_index=IGNORE_INDEX)
                        for m in self.modalities
                    ]
                ).sum()
                aux["modality_ce"] = weights["modality_ce"] * ce
            for name, value in self.distillation_losses(refined, fused, modality_logits, logits).items():
                if name in weights:
                    aux[name] = weights[name] * value
        return ModelOutput(logits=logits, aux_losses=aux, embeddings=fused)

    def _with_unimodal_outputs(self, batch: Batch, codes: Mapping[str, Tensor], output: ModelOutput) -> ModelOutput:
        # L_rec belongs to the encoders and the codes as encoded: a before-fuse hook
        # (modality dropout, OPM) changes what is fused, not what is reconstructed.
        output = super()._with_unimodal_outputs(batch, codes, output)
        weight = self.aux_loss_weights.get("reconstruction", 0.0)
        if not (self.training and weight > 0 and batch.num_utterances):
            return output
        errors = []
        for m in self.modalities:
            encoder = self.encoders[m]
            assert isinstance(encoder, ConvReconstructionEncoder)
            errors.append(encoder.reconstruction_error(batch.features[m], codes[m], batch).float())
        aux = dict(output.aux_losses)
        aux["reconstruction"] = weight * torch.stack(errors).sum()
        return dataclasses.replace(output, aux_losses=aux)


__all__ = [
    "CMATH",
    "CMATransformer",
    "ConvReconstructionEncoder",
    "PostNormAttentionLayer",
    "SourceGate",
    "VariationalFusion",
]
