"""Modality encoders and their one resolver, :func:`build_encoder`.

Every merc model encodes each modality on its own before fusing (the model contract,
:class:`merc.models.base.MercModel`). The encoders the published systems use differ only
in kind and size, so they come from one resolver, in the style of PyTorch Geometric's
``resolver.py``: a normalised string picks the module, an unknown one is an error that
lists the choices.

Kinds (``ENCODER_KINDS``):

- ``"linear"``: one ``Linear(d, h)`` per utterance (Mi-CGA's audio/visual encoders).
- ``"fc"``: ``num_layers`` x ``Linear + ReLU`` per utterance (CORECT eq. 2 with 2 layers,
  MultiDAG eq. 1 with 1).
- ``"lstm"`` / ``"bilstm"`` / ``"gru"`` / ``"bigru"``: a recurrent network over each
  dialogue's utterances (packed, so padding never enters); the bidirectional ones have
  ``h // 2`` units per direction, so the output is ``h`` wide either way.
- ``"transformer"``: PyTorch's post-norm ReLU Transformer encoder over each dialogue's
  utterances (attention masked to the dialogue, no positional encoding), then
  ``Linear(d, h)`` (CORECT eq. 1); its layers run on the real utterances only
  (:class:`merc.models.layers.transformer.PackedTransformerEncoderLayer`).

Every encoder may end in a projection ``Linear(h, output_size)`` and an activation
(bc-LSTM's dense layer with ``tanh``). Input: the padded ``[B, T, d]`` features of one
modality and the batch (lengths, masks); output: ``[N, out]``, one row per real
utterance in :attr:`merc.data.batching.Batch.flat_index` order.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Union

import torch
from torch import Tensor, nn

from merc.data.batching import Batch
from merc.errors import ConfigError, resolve_choice
from merc.models.layers.precision import linear, pad_rows
from merc.models.layers.recurrent import ContextualRNN
from merc.models.layers.transformer import PackedTransformerEncoderLayer

#: An encoder kind, as a constructor annotation (recipes are checked against it).
EncoderKind = Literal["linear", "fc", "lstm", "bilstm", "gru", "bigru", "transformer"]
#: What a model's ``encoders`` argument takes: one kind, a kind per modality, or ``None`` (the paper's).
EncoderSpec = Union[EncoderKind, Mapping[str, EncoderKind], None]  # noqa: UP007 (a runtime alias)
#: Encoder kinds :func:`build_encoder` knows.
ENCODER_KINDS: tuple[str, ...] = typing.get_args(EncoderKind)
#: The kinds that read a dialogue's utterances in order.
RECURRENT_KINDS: tuple[str, ...] = ("lstm", "bilstm", "gru", "bigru")
#: Activations that may close an encoder.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "none": lambda x: x,
    "relu": torch.relu,
    "tanh": torch.tanh,
}


def auto_heads(dim: int) -> int:
    """CORECT's reference rule for the text Transformer's heads: the first ``h`` in 7..14 dividing ``dim``, else 1.

    >>> auto_heads(768), auto_heads(384), auto_heads(100), auto_heads(17)
    (8, 8, 10, 1)
    """
    return next((h for h in range(7, 15) if dim % h == 0), 1)


class ModalityEncoder(nn.Module):
    """Base of every modality encoder: ``forward(x [B, T, d], batch) -> [N, output_size]``.

    Subclasses implement :meth:`encode_core`; the optional projection and activation are
    applied here.
    """

    def __init__(self, core_size: int, output_size: int | None, activation: str) -> None:
        super().__init__()
        self.activation_name = resolve_choice("encoder activation", activation, list(ACTIVATIONS))
        self.projection = nn.Linear(core_size, output_size) if output_size else None
        self.output_size = output_size or core_size

    def encode_core(self, x: Tensor, batch: Batch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor, batch: Batch) -> Tensor:
        h = self.encode_core(x, batch)
        if self.projection is not None:
            h = self.projection(h)
        return ACTIVATIONS[self.activation_name](h)


class UtteranceEncoder(ModalityEncoder):
    """``linear`` / ``fc``: the same network applied to every utterance on its own.

    Shapes:
        - x ``[B, T, d]`` -> ``[N, h]`` (only real utterances are computed)
    """

    def __init__(
        self, in_dim: int, hidden: int, num_layers: int, relu: bool, output_size: int | None, activation: str
    ) -> None:
        super().__init__(hidden, output_size, activation)
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers):
            layers.append(nn.Linear(width, hidden))
            if relu:
                layers.append(nn.ReLU())
            width = hidden
        self.net = nn.Sequential(*layers)

    def encode_core(self, x: Tensor, batch: Batch) -> Tensor:
        return self.net(batch.flatten(x))


class RecurrentEncoder(ModalityEncoder):
    """``lstm`` / ``bilstm`` / ``gru`` / ``bigru`` over each dialogue (:class:`ContextualRNN`).

    Shapes:
        - x ``[B, T, d]`` -> ``[N, h]``
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        cell: str,
        bidirectional: bool,
        num_layers: int,
        dropout: float,
        output_size: int | None,
        activation: str,
    ) -> None:
        if bidirectional and hidden % 2:
            raise ConfigError(
                f"a bidirectional {cell} encoder needs an even width (h // 2 per direction), got {hidden}"
            )
        per_direction = hidden // 2 if bidirectional else hidden
        super().__init__(hidden, output_size, activation)
        self.rnn = ContextualRNN(
            in_dim, per_direction, num_layers=num_layers, cell=cell, bidirectional=bidirectional, dropout=dropout
        )

    def encode_core(self, x: Tensor, batch: Batch) -> Tensor:
        return self.rnn.forward_flat(batch.flatten(x), batch)


class TransformerEncoder(ModalityEncoder):
    """``transformer``: CORECT eq. 1, a Transformer over each dialogue's utterances, then ``Linear(d, h)``.

    PyTorch's post-norm ReLU ``nn.TransformerEncoder`` (as CORECT's reference), its layers
    run on the real utterances only
    (:meth:`~merc.models.layers.transformer.PackedTransformerEncoderLayer.forward_packed`):
    attention masks the padding of each dialogue, everything else never sees it.

    Args:
        in_dim: Feature dim ``d`` (the Transformer's width).
        hidden: Output width ``h``.
        num_layers: Transformer layers.
        num_heads: Heads; 0 picks them as CORECT's reference (:func:`auto_heads`).
        ffn_size: Feed-forward width (PyTorch's default 2048).
        dropout: Dropout inside the layers.

    Shapes:
        - x ``[B, T, d]`` -> ``[N, h]``
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        num_layers: int,
        num_heads: int,
        ffn_size: int,
        dropout: float,
        output_size: int | None,
        activation: str,
    ) -> None:
        super().__init__(hidden, output_size, activation)
        heads = num_heads or auto_heads(in_dim)
        if in_dim % heads:
            raise ConfigError(f"transformer encoder: feature dim {in_dim} is not divisible by {heads} heads")
        if num_layers < 1:
            raise ConfigError(f"transformer encoder needs num_layers >= 1, got {num_layers}")
        layer = PackedTransformerEncoderLayer(
            in_dim, heads, dim_feedforward=ffn_size, dropout=dropout, batch_first=True
        )
        # nn.TransformerEncoder only holds the layers (its cloning gives every layer the
        # same initial weights, as in PyTorch and CORECT's reference); they run packed.
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.layers: list[PackedTransformerEncoderLayer] = list(self.encoder.layers)  # type: ignore[arg-type]
        self.out = nn.Linear(in_dim, hidden)

    def encode_core(self, x: Tensor, batch: Batch) -> Tensor:
        flat = batch.flatten(x)
        rows = flat.shape[0]
        padding = ~batch.mask
        # Under CPU autocast the rows are padded once for all layers (merc.models.layers.precision).
        h = pad_rows(flat)
        for layer in self.layers:
            h = layer.forward_packed(h, batch.flat_index, padding)
        return linear(h, self.out.weight, self.out.bias)[:rows]


def build_encoder(
    kind: str,
    in_dim: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    dropout: float = 0.0,
    num_heads: int = 0,
    ffn_size: int = 2048,
    output_size: int | None = None,
    activation: str = "none",
) -> ModalityEncoder:
    """Build one modality encoder by name (see the module docstring for the kinds).

    Args:
        kind: One of :data:`ENCODER_KINDS` (case and ``-``/``_`` insensitive).
        in_dim: Feature dim ``d`` of the modality.
        hidden_size: Width ``h`` of the encoder's output before the optional projection.
        num_layers: Layers (``fc``, recurrent, ``transformer``); ignored by ``linear``.
        dropout: Between stacked recurrent layers; inside Transformer layers.
        num_heads: Transformer heads (0 = :func:`auto_heads`).
        ffn_size: Transformer feed-forward width.
        output_size: If set, a final ``Linear(h, output_size)``.
        activation: ``"none"``, ``"relu"`` or ``"tanh"`` after everything.

    Raises:
        ConfigError: unknown kind (the message lists them) or an impossible size.

    >>> enc = build_encoder("BiLSTM", 12, 8)
    >>> type(enc).__name__, enc.output_size
    ('RecurrentEncoder', 8)
    """
    name = resolve_choice("modality encoder", kind, ENCODER_KINDS)
    if in_dim < 1 or hidden_size < 1 or (output_size is not None and output_size < 1):
        raise ConfigError(
            f"{name} encoder sizes must be >= 1, got in {in_dim}, hidden {hidden_size}, out {output_size}"
        )
    if name in ("linear", "fc"):
        if name == "fc" and num_layers < 1:
            raise ConfigError(f"fc encoder needs num_layers >= 1, got {num_layers}")
        return UtteranceEncoder(
            in_dim, hidden_size, 1 if name == "linear" else num_layers, name == "fc", output_size, activation
        )
    if name == "transformer":
        return TransformerEncoder(
            in_dim, hidden_size, num_layers, num_heads, ffn_size, dropout, output_size, activation
        )
    cell = "gru" if "gru" in name else "lstm"
    if num_layers < 1:
        raise ConfigError(f"{name} encoder needs num_layers >= 1, got {num_layers}")
    return RecurrentEncoder(
        in_dim, hidden_size, cell, name.startswith("bi"), num_layers, dropout, output_size, activation
    )


def encoder_kinds(
    spec: str | Mapping[str, str] | None, modalities: Sequence[str], defaults: Mapping[str, str], model: str = "model"
) -> dict[str, str]:
    """The encoder kind of each modality: a model's paper defaults, overridden by ``spec``.

    Args:
        spec: ``None`` (the defaults), one kind for every modality (``"fc"``), or a
            mapping ``{modality: kind}`` overriding some (``{"t": "fc"}``); a mapping may
            name modalities the model is not built with (a recipe covers ``tav``).
        modalities: The model's modalities.
        defaults: Kind per modality from the paper.
        model: Name used in error messages.

    >>> encoder_kinds({"t": "FC"}, ("t", "a"), {"t": "transformer", "a": "fc"})
    {'t': 'fc', 'a': 'fc'}
    """
    if spec is None:
        chosen: dict[str, str] = dict(defaults)
    elif isinstance(spec, str):
        chosen = {m: spec for m in modalities}
    elif isinstance(spec, Mapping):
        unknown = [m for m in spec if m not in ("t", "a", "v")]
        if unknown:
            raise ConfigError(f"{model} encoders: unknown modality key(s) {unknown}; use t, a, v")
        chosen = {**defaults, **{str(m): str(k) for m, k in spec.items()}}
    else:
        raise ConfigError(f"{model} encoders must be a kind or a mapping modality -> kind, got {spec!r}")
    missing = [m for m in modalities if m not in chosen]
    if missing:
        raise ConfigError(
            f"{model} has no encoder kind for modality {missing}; choose one of: {', '.join(ENCODER_KINDS)}"
        )
    return {m: resolve_choice(f"{model} encoder for {m!r}", chosen[m], ENCODER_KINDS) for m in modalities}


__all__ = [
    "ACTIVATIONS",
    "ENCODER_KINDS",
    "EncoderKind",
    "EncoderSpec",
    "RECURRENT_KINDS",
    "ModalityEncoder",
    "auto_heads",
    "build_encoder",
    "encoder_kinds",
]
