r"""Mi-CGA: cross-modal graph attention for incomplete modalities (Nguyen et al., 2025).

Nguyen, Kieu, Ha, Phan, Le. "Mi-CGA: Cross-modal Graph Attention Network for robust
emotion recognition in the presence of incomplete modalities." Neurocomputing 2025
(doi:10.1016/j.neucom.2025.129342). Equation numbers below are the paper's.

Pipeline for one batch (the masks come from the data: :mod:`merc.data.missing`):

1. **Unimodal encoders** [1-3]: a BiLSTM over the dialogue for text, a linear layer for
   audio and visual, each to ``hidden_size``.
2. **Incomplete representation** [7]: :math:`X^{miss} = X\odot\mathcal M`, the encoder
   outputs zeroed where ``batch.availability`` says a modality is missing.
3. **Speaker embedding** [8-9]: :math:`X^{miss}_{spk} = \eta S_{emb}\oplus X^{miss}` with
   :math:`S_{emb}\in\mathbb R^{N\times|S|}` the one-hot of the utterance's party
   (``num_parties`` columns).
4. **Feature Estimation (FE)** [10-12]: a GCN encoder :math:`f_\phi` on each dialogue's
   fully connected graph with :math:`\tilde A=\hat D^{-1/2}(A+I)\hat D^{-1/2}` and a
   linear decoder :math:`g_\theta` give the reconstruction :math:`\hat X=g_\theta(f_\phi(
   X^{miss}_{spk},\tilde A))`. :math:`X^{coarse}` is :math:`X^{miss}_{spk}` with its
   *missing* entries populated from :math:`\hat X`, and the smoothing of eq. 12 is read
   exactly as printed, :math:`X^{FE}=(1-\lambda)X^{coarse}+\lambda X^{miss}_{spk}`: an
   available entry stays :math:`x`, a missing one becomes :math:`(1-\lambda)\hat x`.
   (Section 5.5.1's prose says a larger :math:`\lambda` gives "more influence from the
   coarse estimated features", the opposite of eq. 12; at the default 0.5 both agree.)
5. **MulGAT** [13-18]: ``gat_layers`` ``torch_geometric`` ``GATv2Conv`` layers with
   ``gat_heads`` concatenated heads on the same fully connected graph, then the
   projection :math:`\Psi`. Ablation ``use_mulgat=False`` (the paper's CGA_G) feeds
   :math:`X^{FE}` to the classifier instead.
6. **CMA** [19-24]: scaled dot-product cross-modal attention between the modality blocks
   of :math:`X^{FE}` over the utterances of the dialogue, pairs a-t, t-v, v-a in both
   directions (pairs of the modalities present). ``use_cma=False`` is CGA_C.
7. **Classifier** [25-26]: :math:`[X_{GAT}, X_{Cross}]`, Linear + ReLU, Linear.

Loss [27-30]: the trainer's cross-entropy plus ``aux_losses["reconstruction"]``, the MSE
of eq. 29 or the sparse KL of eq. 30 (sparsity :math:`p`), weighted by
``reconstruction_weight``. Two choices the paper leaves open, and why:

- Where: only at entries whose features the data has (``batch.availability``). Mi-CGA
  and GCNet simulate missingness on complete data and can compare with the hidden
  truth; merc's masked datasets zero missing features, so their truth is unknown. The
  loss is evaluated on the decoder output :math:`\hat X` (at an available entry
  :math:`X^{FE}=X` by construction, so eq. 29 on :math:`X^{FE}` would be identically 0).
  With ``train_mask_rate > 0`` a share of the available entries is additionally hidden
  from the model during training (GCNet's per-batch masks), so the decoder is also
  trained to impute entries it did not see.
- Target: the encoders' output, detached. The encoders are trained jointly; a gradient
  through the target would reward shrinking the codes rather than reconstructing them.
- KL: eq. 30 with :math:`\hat p` the mean activation :math:`\mathrm{sigmoid}(\hat x)` of
  each feature dimension over the loss entries (the sparse auto-encoder of the paper's
  ref. [43], "the fraction of activation of neurons"), averaged over dimensions.

Graph construction is vectorised for the whole batch: dense ``[B, T, T]`` masks for the
GCN, and one batched ``edge_index`` built with tensor ops for GATv2 (no Python loop over
dialogues, utterances or edges); no edge crosses dialogues, so a dialogue's prediction
does not depend on its batch mates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.data.batching import Batch
from merc.data.graphs import fully_connected_edges, normalized_dialogue_adjacency
from merc.errors import ConfigError, resolve_choice
from merc.models.base import MercModel
from merc.models.layers.encoders import EncoderSpec, build_encoder, encoder_kinds
from merc.models.output import ModelOutput
from merc.models.registry import register_model

if TYPE_CHECKING:
    from torch_geometric.nn import GATv2Conv

RECONSTRUCTION_LOSSES: tuple[str, ...] = ("kl", "mse", "none")
#: Mi-CGA eq. 23: the three modality pairs, each attended in both directions.
CMA_PAIRS: tuple[tuple[str, str], ...] = (("a", "t"), ("t", "v"), ("v", "a"))
#: Mi-CGA eq. 1-3: a BiLSTM over the dialogue for text, a linear layer for audio and visual.
MICGA_ENCODERS: dict[str, str] = {"t": "bilstm", "a": "linear", "v": "linear"}


# -- blocks ----------------------------------------------------------------------------------
class DenseGCNLayer(nn.Module):
    r"""One GCN layer :math:`H' = \tilde A H W (+ H W_{root})` on dense per-dialogue graphs.

    Args:
        in_dim: Input width.
        out_dim: Output width.
        root_weight: Add a separate transform of the node's own features (PyG
            ``GraphConv``'s root weight). Off in the paper's GCN; see :class:`MiCGA`.

    Shapes:
        - x: ``[B, T, in_dim]``, adjacency ``[B, T, T]``; output ``[B, T, out_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int, root_weight: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim)
        self.root = nn.Linear(in_dim, out_dim, bias=False) if root_weight else None

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        out = adjacency @ self.lin(x)
        if self.root is not None:
            out = out + self.root(x)
        return out


class CrossModalAttention(nn.Module):
    r"""Mi-CGA eq. 19-21, :math:`\mathrm{CMA}_{\delta\to\gamma}`: queries from modality
    :math:`\gamma`, keys and values from :math:`\delta`, over the utterances of a dialogue.

    Args:
        query_dim: :math:`d_\gamma`.
        key_dim: :math:`d_\delta`.
        attn_dim: :math:`d_Q = d_K = d_V`.

    Shapes:
        - query ``[B, T, query_dim]``, key ``[B, T, key_dim]``, mask ``bool [B, T]``
        - output ``[B, T, attn_dim]``
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(query_dim, attn_dim, bias=False)
        self.k = nn.Linear(key_dim, attn_dim, bias=False)
        self.v = nn.Linear(key_dim, attn_dim, bias=False)
        self.scale = 1.0 / math.sqrt(attn_dim)

    def forward(self, query: Tensor, key: Tensor, mask: Tensor) -> Tensor:
        scores = (self.q(query) @ self.k(key).transpose(1, 2)) * self.scale
        # Padding is never attended to; every dialogue has a real utterance, so no row is empty.
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        return torch.softmax(scores, dim=-1) @ self.v(key)


def reconstruction_loss(kind: str, recon: Tensor, target: Tensor, entries: Tensor, sparsity: float = 0.2) -> Tensor:
    r"""Mi-CGA eq. 29 (``"mse"``) or eq. 30 (``"kl"``) over the selected entries.

    Args:
        kind: ``"mse"`` or ``"kl"``.
        recon: Decoder output per modality block, ``[..., M, d]`` (e.g. ``[N, M, d]``).
        target: Encoder output (detached), same shape.
        entries: ``bool [..., M]`` (utterance, modality) entries in the loss.
        sparsity: :math:`p` of eq. 30.

    Returns:
        Scalar; 0 when no entry is selected. MSE: mean squared error per dimension,
        averaged over entries. KL: :math:`\sum_j KL(p\,\|\,\hat p_{m,j})` averaged over the
        dimensions ``j`` and the modalities ``m`` that have entries, with :math:`\hat p_{m,j}`
        the mean of :math:`\mathrm{sigmoid}(\hat x_{m,j})` over the entries.
    """
    num_mod, dim = recon.shape[-2:]
    recon, target = recon.reshape(-1, num_mod, dim), target.reshape(-1, num_mod, dim)
    w = entries.reshape(-1, num_mod).to(recon.dtype)
    if kind == "mse":
        per_entry = (recon - target).pow(2).mean(-1)
        return (per_entry * w).sum() / w.sum().clamp_min(1.0)
    counts = w.sum(0)  # [M]
    p_hat = (torch.sigmoid(recon) * w[..., None]).sum(0) / counts.clamp_min(1.0)[:, None]
    p_hat = p_hat.clamp(1e-6, 1 - 1e-6)
    kl = sparsity * torch.log(sparsity / p_hat) + (1 - sparsity) * torch.log((1 - sparsity) / (1 - p_hat))
    present = (counts > 0).to(recon.dtype)
    return (kl.mean(-1) * present).sum() / present.sum().clamp_min(1.0)


@register_model("micga")
class MiCGA(MercModel):
    """Mi-CGA (Nguyen et al., 2025): feature estimation + MulGAT + cross-modal attention.

    Args:
        in_dims: Feature dim per modality, e.g. ``{"t": 384, "a": 100, "v": 256}``.
        num_classes: Number of classes.
        num_parties: Speaker one-hot width :math:`|S|` (dataset fact: most parties in a
            dialogue). Default 2 (IEMOCAP is dyadic).
        hidden_size: Unimodal latent dims :math:`d_t=d_a=d_v` (text: BiLSTM with
            ``hidden_size // 2`` units per direction). Default 128 (not stated; merc).
        speaker_ratio: :math:`\\eta` of eq. 9, in ``[0, 1]``. Default 1.0 (not stated).
        fe_hidden: Width of the FE encoder. Default 128 (not stated).
        fe_layers: GCN layers of the FE encoder. Default 2 (Kipf and Welling's GCN).
        fe_root_weight: Add a self transform to each FE GCN layer. Default False (the
            paper's GCN). With the symmetric-normalised complete graph a plain GCN layer
            is the dialogue mean, identical for every utterance, so the reconstruction
            cannot use the utterance's own available modalities; True keeps them.
        smoothing_lambda: :math:`\\lambda` of eq. 12. Default 0.5 (Section 4.5).
        use_mulgat: Keep MulGAT (False = CGA_G ablation, Section 5.3). Default True.
        gat_skip: The classifier also reads :math:`X^{FE}` beside :math:`X_{GAT}` (merc's
            option, not in the paper; default False). MulGAT runs on each dialogue's fully
            connected graph, so an utterance's own features are one of ``n`` attention
            inputs; with text only there is no CMA term either and the classifier sees
            only those dialogue mixtures. Measured on ``iemocap6`` text, seed 0: training
            cross-entropy stalls near 1.0 and test w-F1 is 54.35; without MulGAT 60.21;
            with ``gat_skip`` 60.06 +- 0.64 over seeds 0-2 (README, "Two gaps, measured").
        gat_layers: Stacked GATv2 layers. Default 2 (Section 4.5).
        gat_heads: Attention heads, concatenated. Default 4 (Section 4.5).
        gat_hidden: Channels per head. Default 64 (not stated).
        use_cma: Keep CMA (False = CGA_C ablation). Default True.
        cma_dim: :math:`d_Q=d_K=d_V` of the cross-modal attention. Default 64 (not stated).
        classifier_hidden: Width of :math:`W_l` in eq. 26. Default 128 (not stated).
        dropout: Dropout on encoder outputs, GAT output and classifier. Default 0.3
            (not stated).
        reconstruction_loss: ``"kl"`` (eq. 30, best in Fig. 7), ``"mse"`` (eq. 29) or
            ``"none"`` (the paper's L3). Default ``"kl"``.
        sparsity: :math:`p` of eq. 30. Default 0.2 (Section 4.5).
        reconstruction_weight: Weight of the reconstruction loss. Default 1.0 (eq. 27).
        train_mask_rate: Share of available entries hidden during training (see the
            module docstring). Default 0.0 (the paper trains on its fixed masks).
        encoders: Encoder kind per modality; default :data:`MICGA_ENCODERS` (a
            bidirectional one has ``hidden_size // 2`` units per direction).
        unimodal_heads: Linear probes per modality on the codes (no effect on training).

    Shapes:
        - input: ``batch.features[m]`` ``[B, T, d_m]``, ``batch.availability`` ``[B, T, M]``
        - output: ``logits`` ``[N, C]``; ``embeddings`` ``[N, classifier_hidden]``;
          ``aux_losses["reconstruction"]`` scalar (training only)
    """

    models_missing = True

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        num_parties: int = 2,
        hidden_size: int = 128,
        speaker_ratio: float = 1.0,
        fe_hidden: int = 128,
        fe_layers: int = 2,
        fe_root_weight: bool = False,
        smoothing_lambda: float = 0.5,
        use_mulgat: bool = True,
        gat_skip: bool = False,
        gat_layers: int = 2,
        gat_heads: int = 4,
        gat_hidden: int = 64,
        use_cma: bool = True,
        cma_dim: int = 64,
        classifier_hidden: int = 128,
        dropout: float = 0.3,
        reconstruction_loss: Literal["kl", "mse", "none"] = "kl",
        sparsity: float = 0.2,
        reconstruction_weight: float = 1.0,
        train_mask_rate: float = 0.0,
        encoders: EncoderSpec = None,
        unimodal_heads: bool = True,
    ) -> None:
        super().__init__(in_dims, num_classes, unimodal_heads=unimodal_heads)
        from torch_geometric.nn import GATv2Conv  # deferred: importing PyG costs seconds

        for name, value in (
            ("smoothing_lambda", smoothing_lambda),
            ("speaker_ratio", speaker_ratio),
            ("train_mask_rate", train_mask_rate),
        ):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"micga {name} must lie in [0, 1], got {value}")
        if not 0.0 < sparsity < 1.0:
            raise ConfigError(f"micga sparsity p must lie in (0, 1), got {sparsity}")
        if (
            min(
                num_parties,
                hidden_size,
                fe_hidden,
                fe_layers,
                gat_layers,
                gat_heads,
                gat_hidden,
                cma_dim,
                classifier_hidden,
            )
            < 1
        ):
            raise ConfigError("micga sizes (num_parties, hidden sizes, layers, heads) must be >= 1")
        self.reconstruction_kind = resolve_choice(
            "reconstruction loss", reconstruction_loss, list(RECONSTRUCTION_LOSSES)
        )
        self.num_parties = int(num_parties)
        self.max_parties = self.num_parties  # the one-hot has num_parties columns: more is an error, never clamped
        self.hidden_size = int(hidden_size)
        self.speaker_ratio = float(speaker_ratio)
        self.smoothing_lambda = float(smoothing_lambda)
        self.sparsity = float(sparsity)
        self.reconstruction_weight = float(reconstruction_weight)
        self.train_mask_rate = float(train_mask_rate)
        self.use_mulgat = use_mulgat
        self.gat_skip = bool(gat_skip) and use_mulgat
        self.use_cma = use_cma
        self.drop = nn.Dropout(dropout)

        h = self.hidden_size
        kinds = encoder_kinds(encoders, self.modalities, MICGA_ENCODERS, "micga")
        self.add_encoders(
            {m: build_encoder(kinds[m], d, h) for m, d in self.in_dims.items()}, {m: h for m in self.modalities}
        )
        width = len(self.modalities) * h
        d_bar = self.num_parties + width

        # FE: GCN encoder f_phi and linear decoder g_theta (eq. 10). The decoder predicts the
        # modality blocks only: the speaker block is never missing.
        dims = [d_bar] + [fe_hidden] * fe_layers
        self.fe_encoder = nn.ModuleList(
            [DenseGCNLayer(a, b, root_weight=fe_root_weight) for a, b in zip(dims[:-1], dims[1:])]
        )
        self.fe_decoder = nn.Linear(fe_hidden, width)

        self.gat: nn.ModuleList | None = None
        final_dim = 0
        if use_mulgat:
            convs: list[GATv2Conv] = []
            in_dim = d_bar
            for _ in range(gat_layers):
                convs.append(GATv2Conv(in_dim, gat_hidden, heads=gat_heads, concat=True))
                in_dim = gat_hidden * gat_heads
            self.gat = nn.ModuleList(convs)
            self.gat_projection = nn.Linear(in_dim, h)  # Psi of eq. 18
            final_dim += h + (d_bar if gat_skip else 0)
        else:
            final_dim += d_bar
        self.pairs = [(d, g) for d, g in CMA_PAIRS if d in self.modalities and g in self.modalities] if use_cma else []
        self.cma = nn.ModuleDict()
        for d, g in self.pairs:
            self.cma[f"{d}_to_{g}"] = CrossModalAttention(h, h, cma_dim)
            self.cma[f"{g}_to_{d}"] = CrossModalAttention(h, h, cma_dim)
        final_dim += 2 * cma_dim * len(self.pairs)
        self.classifier_hidden = nn.Linear(final_dim, classifier_hidden)
        self.classifier = nn.Linear(classifier_hidden, num_classes)

    # -- pieces ---------------------------------------------------------------------------
    def _reconstruction_targets(self, batch: Batch, codes: Tensor, visible: Tensor, available: Tensor) -> Tensor:
        """``[N, M, h]`` targets of the reconstruction loss (detached).

        A visible entry's target is its own code. An entry hidden in training
        (``train_mask_rate``) gets the code the encoder gives the data as given (recurrent
        encoders mix context, so it is computed with no entry hidden), without gradient.
        """
        target = codes.detach()
        hidden = available & ~visible
        if batch.complete is None or not bool(hidden.any()):
            return target
        given = batch.complete
        full_avail = self.model_availability(given)
        with torch.no_grad():
            full = torch.stack(
                [
                    self.encoders[m](given.features[m] * full_avail[..., k, None].to(given.features[m].dtype), given)
                    for k, m in enumerate(self.modalities)
                ],
                dim=1,
            )
        return torch.where(hidden[..., None], full, target)

    def _feature_estimation(self, x_spk: Tensor, mask: Tensor) -> Tensor:
        """Decoder output :math:`\\hat X` of eq. 10, modality blocks ``[B, T, M*h]``."""
        adjacency = normalized_dialogue_adjacency(mask)
        z = x_spk
        for layer in self.fe_encoder:
            z = self.drop(F.relu(layer(z, adjacency)))
        return self.fe_decoder(z)

    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        """Eq. 7-26 on the codes ``{m: [N, h]}`` (zeroed where not visible by the base class)."""
        mask = batch.mask
        num_mod, h = len(self.modalities), self.hidden_size
        visible = self.flat_availability(batch)  # [N, M]: what the model sees
        available = self.flat_availability(batch.complete) if batch.complete is not None else visible
        x_miss = torch.stack([codes[m] for m in self.modalities], dim=1)  # [N, M, h], eq. 7
        n_utt = x_miss.shape[0]
        parties = batch.flatten(batch.parties)
        speaker = F.one_hot(parties, self.num_parties).to(x_miss.dtype) * self.speaker_ratio
        x_spk = torch.cat([speaker, x_miss.reshape(n_utt, num_mod * h)], dim=-1)  # eq. 9

        missing = ~visible
        want_loss = self.training and self.reconstruction_kind != "none" and self.reconstruction_weight > 0
        aux: dict[str, Tensor] = {}
        if want_loss or bool(missing.any()):
            # Dropout on the padded [B, T] grid (padding stays zero): the same random stream
            # as merc's earlier dialogue-grid implementation, so its runs reproduce seed for seed.
            recon = batch.flatten(self._feature_estimation(self.drop(batch.unflatten(x_spk)), mask))
            recon = recon.reshape(n_utt, num_mod, h)
            # Eq. 10-12: X_coarse = X_miss filled at missing entries; X_FE = (1-lambda) X_coarse
            # + lambda X_miss, i.e. x where available and (1-lambda) x_hat where missing.
            x_fe_blocks = torch.where(visible[..., None], x_miss, (1.0 - self.smoothing_lambda) * recon)
            if want_loss:
                target = self._reconstruction_targets(batch, x_miss, visible, available)
                aux["reconstruction"] = self.reconstruction_weight * reconstruction_loss(
                    self.reconstruction_kind, recon, target, available, self.sparsity
                )
        else:
            x_fe_blocks = x_miss
        x_fe = torch.cat([speaker, x_fe_blocks.reshape(n_utt, num_mod * h)], dim=-1)

        parts = []
        if self.gat is not None:
            edges = fully_connected_edges(mask)
            nodes = x_fe
            for conv in self.gat:
                nodes = F.leaky_relu(conv(self.drop(nodes), edges), 0.2)
            parts.append(self.drop(self.gat_projection(nodes)))
            if self.gat_skip:
                parts.append(x_fe)
        else:
            parts.append(x_fe)
        for d, g in self.pairs:
            xd = batch.unflatten(x_fe_blocks[:, self.modalities.index(d)])
            xg = batch.unflatten(x_fe_blocks[:, self.modalities.index(g)])
            parts.append(batch.flatten(self.cma[f"{d}_to_{g}"](xg, xd, mask)))  # H^gamma, eq. 21
            parts.append(batch.flatten(self.cma[f"{g}_to_{d}"](xd, xg, mask)))  # H^delta
        hidden = self.drop(F.relu(self.classifier_hidden(torch.cat(parts, dim=-1))))
        return ModelOutput(logits=self.classifier(hidden), aux_losses=aux, embeddings=hidden)


__all__ = ["MiCGA", "CrossModalAttention", "DenseGCNLayer", "reconstruction_loss"]
