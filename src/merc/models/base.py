"""Base class of every merc model: encode each modality, then fuse.

The base class owns ``forward`` (the model contract every plug-in relies on)::

    check the batch -> apply availability -> codes = encode(batch)      {m: [N, h_m]}
        -> before-fuse hooks (OPM, modality dropout)                    {m: [N, h_m]}
        -> fuse(batch, codes) -> ModelOutput                            logits [N, C]
        -> unimodal heads on the codes                                  unimodal_logits {m: [N, C]}

A model implements ``encode`` (usually the default: one encoder per modality from
:func:`merc.models.layers.encoders.build_encoder`, installed with :meth:`add_encoders`)
and ``fuse``. Models that fuse before any per-modality computation (GCNet reads the
concatenated inputs with one BiLSTM) set ``fuses_early = True``: their codes are the
inputs themselves, they have no unimodal heads, and plug-ins that need per-modality
parts refuse them with a clear error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.data.batching import IGNORE_INDEX, Batch
from merc.data.missing import drop_available
from merc.data.schema import parse_modalities
from merc.errors import ConfigError, DataError
from merc.models.output import ModelOutput

#: ``hook(batch, codes) -> codes or None``, called between encoding and fusion.
BeforeFuseHook = Callable[[Batch, dict[str, Tensor]], "dict[str, Tensor] | None"]


class MercModel(nn.Module):
    """A conversation model: ``forward(batch) -> ModelOutput`` (see the module docstring).

    Args:
        in_dims: Feature dim per modality the model uses, e.g. ``{"t": 384}``.
        num_classes: Number of emotion classes.
        unimodal_heads: Add a linear classifier per modality on its code, so that
            ``unimodal_logits`` exist (gradient modulation, curricula, per-modality
            metrics). With ``unimodal_loss_weight = 0`` the heads are probes: trained on
            the *detached* codes (``aux_losses["unimodal_probe"]``), they measure what
            each modality's code carries without changing how the model learns.
        unimodal_loss_weight: If > 0, the heads' cross-entropy flows into the encoders,
            times this weight (``aux_losses["unimodal_ce"]``; bc-LSTM's unimodal
            networks, the subspace-mapping paper's auxiliary loss).

    Class attributes a model may set:
        fuses_early: The model mixes modalities before encoding them one by one.
        models_missing: The model sees availability: inputs and codes are zeroed where
            a modality is missing (or hidden from it in training, ``train_mask_rate``).
            Models without it take the features as given (zero or imputed).

    Subclasses declare every other hyper-parameter as a typed constructor argument with
    the paper's default.
    """

    model_name: ClassVar[str] = ""
    fuses_early: ClassVar[bool] = False
    models_missing: ClassVar[bool] = False

    def __init__(
        self,
        in_dims: Mapping[str, int],
        num_classes: int,
        unimodal_heads: bool = True,
        unimodal_loss_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise DataError(f"num_classes must be at least 2, got {num_classes}")
        if unimodal_loss_weight < 0:
            raise ConfigError(f"unimodal_loss_weight must be >= 0, got {unimodal_loss_weight}")
        self.modalities: tuple[str, ...] = parse_modalities(list(in_dims))
        self.in_dims: dict[str, int] = {m: int(in_dims[m]) for m in self.modalities}
        self.num_classes = int(num_classes)
        self.use_unimodal_heads = bool(unimodal_heads) and not self.fuses_early
        self.unimodal_loss_weight = float(unimodal_loss_weight)
        #: Share of available entries hidden from the model in training (``models_missing`` only).
        self.train_mask_rate = 0.0
        #: Most parties per dialogue the model can represent (``None``: any number).
        self.max_parties: int | None = None
        #: The model's ``fuse`` returns its own ``unimodal_logits`` (late fusion: the fused
        #: logits are their sum); then no base-class heads are needed.
        self.fills_unimodal_logits = False
        self.encoders = nn.ModuleDict()
        self.unimodal_classifiers = nn.ModuleDict()
        self.code_dims: dict[str, int] = {}
        self._before_fuse_hooks: list[BeforeFuseHook] = []

    # -- building --------------------------------------------------------------------
    def add_encoders(self, encoders: Mapping[str, nn.Module], code_dims: Mapping[str, int]) -> None:
        """Install one encoder per modality (``encoders[m](x [B, T, d_m], batch) -> [N, code_dims[m]]``).

        Also builds the unimodal heads. Their initialisation draws from a forked random
        stream, so the modules a subclass builds after them are initialised as without them.
        """
        if set(encoders) != set(self.modalities):
            raise ConfigError(f"{self.model_name}: encoders for {sorted(encoders)} but modalities {self.modalities}")
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        self.set_code_dims(code_dims)

    def set_code_dims(self, code_dims: Mapping[str, int]) -> None:
        """Declare the width of each modality's code (and build the unimodal heads)."""
        self.code_dims = {m: int(code_dims[m]) for m in self.modalities}
        if self.use_unimodal_heads:
            with torch.random.fork_rng(devices=[]):
                self.unimodal_classifiers = nn.ModuleDict(
                    {m: nn.Linear(d, self.num_classes) for m, d in self.code_dims.items()}
                )

    # -- the contract ----------------------------------------------------------------
    def forward(self, batch: Batch) -> ModelOutput:
        self.check_batch(batch)
        batch = self.apply_availability(batch)
        codes = self.encode(batch)
        if self.models_missing:
            visible = self.flat_availability(batch)
            codes = {m: c * visible[:, k, None].to(c.dtype) for k, (m, c) in enumerate(codes.items())}
        fuse_in = codes
        for hook in self._before_fuse_hooks:
            changed = hook(batch, dict(fuse_in))
            if changed is not None:
                fuse_in = changed
        output = self.fuse(batch, fuse_in)
        return self._with_unimodal_outputs(batch, codes, output)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """Each modality on its own: ``{m: [N, h_m]}`` for the real utterances."""
        return {m: self.encoders[m](batch.features[m], batch) for m in self.modalities}

    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:  # pragma: no cover - abstract
        """Combine the codes ``{m: [N, h_m]}`` into the fused prediction."""
        raise NotImplementedError

    def _with_unimodal_outputs(self, batch: Batch, codes: Mapping[str, Tensor], output: ModelOutput) -> ModelOutput:
        if self.fuses_early:
            return output
        features = output.unimodal_features or dict(codes)
        logits = output.unimodal_logits
        aux = dict(output.aux_losses)
        if not logits and self.use_unimodal_heads:
            flows = self.unimodal_loss_weight > 0
            logits = {m: self.unimodal_classifiers[m](c if flows else c.detach()) for m, c in codes.items()}
            if self.training:
                labels = batch.flat_labels
                ce = torch.stack(
                    [F.cross_entropy(lg.float(), labels, ignore_index=IGNORE_INDEX) for lg in logits.values()]
                ).sum()
                if (labels != IGNORE_INDEX).any():
                    if flows:
                        aux["unimodal_ce"] = self.unimodal_loss_weight * ce
                    else:
                        aux["unimodal_probe"] = ce
        return dataclasses.replace(output, unimodal_logits=logits, unimodal_features=features, aux_losses=aux)

    # -- availability ------------------------------------------------------------------
    def model_availability(self, batch: Batch) -> Tensor:
        """``bool [B, T, M]`` availability of the model's modalities (false at padding)."""
        cols = [batch.modalities.index(m) for m in self.modalities]
        return batch.availability[..., cols] & batch.mask[..., None]

    def flat_availability(self, batch: Batch) -> Tensor:
        """``bool [N, M]`` availability of the model's modalities at the real utterances."""
        return batch.flatten(self.model_availability(batch))

    def apply_availability(self, batch: Batch) -> Batch:
        """The batch the encoders see.

        Models without ``models_missing`` see the batch as given. The others see their
        inputs zeroed where a modality is unavailable (token/frame ``sequences`` too, with
        ``sequence_lengths`` 0 there); in training with
        ``train_mask_rate > 0`` a random share of the available entries is hidden too
        (:func:`merc.data.missing.drop_available`, redrawn every batch) and the batch as
        given is kept in ``Batch.complete`` for reconstruction targets.
        """
        if not self.models_missing:
            return batch
        available = self.model_availability(batch)
        visible = available
        if self.training and self.train_mask_rate > 0:
            visible = available & ~drop_available(available, self.train_mask_rate)
        features = dict(batch.features)
        for k, m in enumerate(self.modalities):
            features[m] = batch.features[m] * visible[..., k, None].to(batch.features[m].dtype)
        cols = [batch.modalities.index(m) for m in self.modalities]
        availability = batch.availability.clone()
        availability[..., cols] = visible
        # Token/frame-level inputs follow the same mask: a hidden utterance has no frames.
        sequences, sequence_lengths = dict(batch.sequences), dict(batch.sequence_lengths)
        flat_visible = batch.flatten(visible)
        for k, m in enumerate(self.modalities):
            if m in batch.sequences:
                sequences[m] = batch.sequences[m] * flat_visible[:, k, None, None].to(batch.sequences[m].dtype)
                sequence_lengths[m] = batch.sequence_lengths[m] * flat_visible[:, k]
        return dataclasses.replace(
            batch,
            features=features,
            availability=availability,
            sequences=sequences,
            sequence_lengths=sequence_lengths,
            complete=batch if visible is not available else None,
        )

    # -- plug-in surface ---------------------------------------------------------------
    @property
    def has_unimodal_logits(self) -> bool:
        """Whether every output carries ``unimodal_logits`` (own late-fusion logits or the base heads)."""
        return not self.fuses_early and (self.fills_unimodal_logits or self.use_unimodal_heads)

    def modality_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Disjoint parameter groups per modality (its encoder and unimodal head).

        Gradient-modulation plug-ins (OGM-GE, Ada2I, FAGM) rescale these.

        Raises:
            ConfigError: the model fuses early (no per-modality parameters).
        """
        self.require_per_modality("per-modality parameter groups")
        groups: dict[str, list[nn.Parameter]] = {}
        for m in self.modalities:
            params = list(self.encoders[m].parameters()) if m in self.encoders else []
            if m in self.unimodal_classifiers:
                params += list(self.unimodal_classifiers[m].parameters())
            groups[m] = params
        return groups

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters every training objective shares (multi-objective plug-ins balance these).

        The Pareto gradient modulator (``pgm``, CSS, AAAI 2026) solves for loss weights
        from the per-loss gradients on these parameters and writes the combined gradient
        only there. Default: every trainable parameter except the per-modality unimodal
        heads (``unimodal_classifiers``), which only the unimodal losses reach. A model
        whose shared trunk is narrower (CSS: the encoders up to its per-modality
        representations) overrides this.
        """
        heads = {id(p) for p in self.unimodal_classifiers.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in heads]

    def probe_parameters(self) -> list[nn.Parameter]:
        """Parameters of the unimodal probes (heads trained on detached codes), else ``[]``.

        The trainer keeps them out of the model's gradient clipping, so that adding
        probes does not change how the model itself trains.
        """
        if self.use_unimodal_heads and self.unimodal_loss_weight == 0 and not self.fills_unimodal_logits:
            return list(self.unimodal_classifiers.parameters())
        return []

    def require_per_modality(self, what: str) -> None:
        """Raise a clear error if the model has no per-modality parts (``fuses_early``)."""
        if self.fuses_early:
            raise ConfigError(
                f"{self.model_name} fuses the modalities before encoding them, so it has no {what}; "
                "use a model that encodes each modality first (see `merc models`)"
            )

    def register_before_fuse(self, hook: BeforeFuseHook) -> Callable[[], None]:
        """Call ``hook(batch, codes)`` between encoding and fusion; returns a function that removes it."""
        self.require_per_modality("codes to change before fusion")
        self._before_fuse_hooks.append(hook)

        def remove() -> None:
            if hook in self._before_fuse_hooks:
                self._before_fuse_hooks.remove(hook)

        return remove

    @contextmanager
    def before_fuse(self, hook: BeforeFuseHook) -> Iterator[None]:
        """``with model.before_fuse(hook): ...``, the hook registered for the block only."""
        remove = self.register_before_fuse(hook)
        try:
            yield
        finally:
            remove()

    # -- input checks ------------------------------------------------------------------
    def speaker_embeddings(self, batch: Batch, embedding: nn.Embedding, ids: str) -> Tensor:
        """``[N, h]`` rows of ``embedding`` for the real utterances' speakers.

        Args:
            batch: The batch.
            embedding: One row per speaker id.
            ids: ``"global"`` (dataset speaker ids, ``Batch.speakers``) or ``"party"``
                (per-dialogue index, ``Batch.parties``).

        Raises:
            DataError: a speaker id without a row (never clamped).
        """
        flat = batch.flatten(batch.speakers if ids == "global" else batch.parties)
        rows = embedding.num_embeddings
        if flat.numel() and int(flat.max()) >= rows:
            raise DataError(
                f"{self.model_name}: {ids} speaker id {int(flat.max())} but the model has {rows} "
                "speaker embeddings; build it with the dataset's num_speakers/num_parties"
            )
        return embedding(flat)

    def check_batch(self, batch: Batch) -> None:
        """Raise a clear error if the batch lacks a modality, has the wrong dims or too many parties."""
        for m in self.modalities:
            if m not in batch.features:
                raise DataError(
                    f"{self.model_name}: batch has no {m!r} features (model built for {''.join(self.modalities)})"
                )
            d = batch.features[m].shape[-1]
            if d != self.in_dims[m]:
                raise DataError(
                    f"{self.model_name}: {m!r} features have dim {d}, the model was built for {self.in_dims[m]}"
                )
        if self.max_parties is not None and batch.num_utterances:
            most = int(batch.parties.max()) + 1
            if most > self.max_parties:
                raise DataError(
                    f"{self.model_name}: a dialogue has {most} speakers but the model was built for at most "
                    f"{self.max_parties} (num_parties); build it with the dataset's num_parties"
                )
