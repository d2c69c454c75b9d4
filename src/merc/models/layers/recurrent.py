"""Contextual recurrent encoder over the utterances of padded dialogues."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from merc.errors import resolve_choice

_RNNS: dict[str, Any] = {"lstm": nn.LSTM, "gru": nn.GRU}


class ContextualRNN(nn.Module):
    """A (bi)directional LSTM/GRU run over each dialogue's utterances (the contextual level of bc-LSTM).

    Not DialogueRNN (Majumder et al., 2019), which tracks party states: this is the
    plain recurrent context encoder that bc-LSTM, MultiDAG and GCNet share.

    Padding never reaches the recurrence (packed sequences), so a dialogue's output does
    not depend on how long the other dialogues in its batch are.

    Args:
        input_size: Utterance feature dim ``d``.
        hidden_size: Hidden units per direction ``h``.
        num_layers: Stacked layers.
        cell: ``"lstm"`` or ``"gru"``.
        bidirectional: Read the dialogue in both directions (bc-LSTM) or only forward.
        dropout: Dropout between stacked layers.

    Shapes:
        - input: ``[B, T, d]`` and lengths ``[B]``
        - output: ``[B, T, h * (2 if bidirectional else 1)]``, zero at padding
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        cell: str = "lstm",
        bidirectional: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        rnn_cls = _RNNS[resolve_choice("recurrent cell", cell, list(_RNNS))]
        self.rnn: nn.Module = rnn_cls(
            input_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.output_size = hidden_size * (2 if bidirectional else 1)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out


__all__ = ["ContextualRNN"]
