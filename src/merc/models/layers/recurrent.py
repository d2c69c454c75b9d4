"""Contextual recurrent encoder over the utterances of padded dialogues."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from merc.errors import resolve_choice
from merc.models.layers.fast import fast_kernels_enabled
from merc.models.layers.fused_rnn import fused_rnn, supports_fused_rnn
from merc.models.layers.precision import cpu_autocast_active

if TYPE_CHECKING:
    from merc.data.batching import Batch

_RNNS: dict[str, Any] = {"lstm": nn.LSTM, "gru": nn.GRU}


class ContextualRNN(nn.Module):
    """A (bi)directional LSTM/GRU run over each dialogue's utterances (the contextual level of bc-LSTM).

    Not DialogueRNN (Majumder et al., 2019), which tracks party states: this is the
    plain recurrent context encoder that bc-LSTM, MultiDAG and GCNet share.

    Padding never reaches the recurrence (packed sequences), so a dialogue's output does
    not depend on how long the other dialogues in its batch are.

    :meth:`forward_flat` reads and returns the real utterances only (``[N, d] -> [N, h']``,
    the order of :attr:`~merc.data.batching.Batch.flat_index`). Its fast path
    (:mod:`merc.models.layers.fast`) packs the flat rows with one gather and unpacks with
    one scatter, instead of padding to ``[B, T, d]``, packing, padding the output again
    and flattening it (the plain path, :meth:`forward` between ``unflatten`` and
    ``flatten``): the padded copies cost bc-LSTM's inference a quarter of its time. Under
    CPU bfloat16 autocast the fast path also casts the recurrent weights once per call at
    inference (PyTorch's CPU recurrence, under autocast, casts them again at every time
    step) and keeps training's recurrence in float32, where it is faster on CPU.

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
        out, _ = self._run(packed)
        padded, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return padded

    def forward_flat(self, x: Tensor, batch: Batch) -> Tensor:
        """The recurrence over the real utterances only: ``x [N, d] -> [N, h']`` (flat order).

        Equal to ``batch.flatten(self(batch.unflatten(x), batch.lengths))``, which is the
        plain path (taken with the fast kernels off).
        """
        if not fast_kernels_enabled():
            return batch.flatten(self(batch.unflatten(x), batch.lengths))
        rows, batch_sizes, sorted_idx = packed_order(batch.lengths.to(x.device))
        packed = PackedSequence(x[rows], batch_sizes, sorted_idx, torch.argsort(sorted_idx))
        out, _ = self._run(packed)
        flat = out.data.new_empty(x.shape[0], out.data.shape[-1])
        flat[rows] = out.data
        return flat

    def _run(self, packed: PackedSequence) -> tuple[PackedSequence, Any]:
        """``self.rnn(packed)``: the output and the final state, or on a fast path ``None`` for the state.

        With the fast kernels on (:mod:`merc.models.layers.fast`), training (gradients on)
        in float32 on CPU runs :func:`~merc.models.layers.fused_rnn.fused_rnn`, the same
        GRU / LSTM with a hand-written backward pass (``bench/bench_baselines.py`` times
        the models that use it against their authors' code). Inference
        under CPU autocast casts the weights to bfloat16 once per call. No caller reads
        the final state.
        """
        if not fast_kernels_enabled():
            return self.rnn(packed)
        autocast = cpu_autocast_active(packed.data)
        if torch.is_grad_enabled():
            # Training. Under CPU autocast a float32 island: PyTorch's CPU recurrence is
            # autograd over one small product per time step, and in bfloat16 those steps and
            # their backward are slower than in float32 (MM-DFN's bf16-mixed epoch on
            # iemocap6 was slower with a bfloat16 recurrence than with this island).
            with torch.autocast("cpu", enabled=False):
                if autocast:
                    packed = PackedSequence(
                        packed.data.float(), packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
                    )
                data = packed.data
                if data.device.type == "cpu" and data.dtype == torch.float32 and supports_fused_rnn(self.rnn):
                    return fused_rnn(self.rnn, packed), None
                return self.rnn(packed)
        if not autocast:
            return self.rnn(packed)
        # Inference: one bfloat16 copy of each weight for the whole call.
        dtype = torch.get_autocast_dtype("cpu")
        weights = {name: p.to(dtype) for name, p in self.rnn.named_parameters()}
        with torch.autocast("cpu", enabled=False):
            data = packed.data.to(dtype)
            packed = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
            return functional_call(self.rnn, weights, (packed,))


def packed_order(lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Where each row of a packed sequence comes from in the flat (dialogue-major) order.

    Args:
        lengths: ``long [B]`` utterances per dialogue (each > 0).

    Returns:
        ``(rows [N], batch_sizes [T] (CPU), sorted_indices [B])``: ``packed.data[j]`` is flat
        row ``rows[j]``, as :func:`~torch.nn.utils.rnn.pack_padded_sequence` with
        ``enforce_sorted=False`` lays it out (time-major, dialogues by decreasing length).

    >>> rows, sizes, order = packed_order(torch.tensor([2, 3]))
    >>> rows.tolist(), sizes.tolist(), order.tolist()
    ([2, 0, 3, 1, 4], [2, 2, 1], [1, 0])
    """
    sorted_lengths, sorted_idx = torch.sort(lengths, descending=True)
    starts = torch.cumsum(lengths, 0) - lengths
    steps = torch.arange(int(sorted_lengths[0]), device=lengths.device)
    present = steps[:, None] < sorted_lengths[None, :]  # [T, B]: dialogue k has step t
    rows = (starts[sorted_idx][None, :] + steps[:, None])[present]
    return rows, present.sum(1).cpu(), sorted_idx


__all__ = ["ContextualRNN", "packed_order"]
