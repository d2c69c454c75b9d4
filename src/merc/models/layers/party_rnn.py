r"""DialogueRNN's recurrence: global, party and emotion GRUs over a padded batch of dialogues.

Majumder, Poria, Hazarika, Mihalcea, Gelbukh, Cambria. "DialogueRNN: An Attentive RNN for
Emotion Detection in Conversations." AAAI 2019, Section "Our Model" (code:
github.com/declare-lab/conv-emotion, ``DialogueRNN/model.py``).

At utterance :math:`t`, spoken by party :math:`s = s(u_t)`:

.. math::
    g_t &= \mathrm{GRU}_G\big(g_{t-1},\ u_t \oplus q_{s,t-1}\big)
        && \text{global state} \\
    \alpha &= \mathrm{softmax}\big(u_t^\top W_\alpha [g_1, \dots, g_{t-1}]\big), \quad
    c_t = \alpha\, [g_1, \dots, g_{t-1}]^\top
        && \text{context ($c_1 = 0$)} \\
    q_{s,t} &= \mathrm{GRU}_P\big(q_{s,t-1},\ u_t \oplus c_t\big)
        && \text{speaker update} \\
    q_{i,t} &= q_{i,t-1} \ \text{or}\ \mathrm{GRU}_L\big(q_{i,t-1},\ u_t \oplus q_{s,t}\big),
        \ i \neq s && \text{listener update} \\
    e_t &= \mathrm{GRU}_E\big(e_{t-1},\ q_{s,t}\big)
        && \text{emotion state}

where :math:`\mathrm{GRU}(h, x)` has hidden state :math:`h` and input :math:`x`, and all
states start at zero. The paper's active listener reads the listener's own visual cues,
which utterance-level features do not have; the authors' code (``listener_state``) feeds
:math:`u_t \oplus q_{s,t}`, the utterance and the speaker's new state, as here.
``context_attention="simple"`` is the code's alternative score :math:`w^\top g_j`,
independent of :math:`u_t`.

Vectorised: one step per position ``t`` for every dialogue of the batch at once. Party
states are a ``[B, P, D_p]`` tensor (``P``: most parties of a dialogue in the batch); the
speaker's state is gathered by its per-dialogue index (``batch.parties``) and written back
through a one-hot mask. Dialogues are walked longest first, so the ones still running at
``t`` are a prefix of the batch: padding is never computed and cannot change any state,
and a dialogue's states do not depend on its batch mates. The context attention at step
``t`` reads all ``t - 1`` earlier global states, so the backward pass keeps
``O(T^2 B D_g)`` numbers per batch, as the authors' code (which concatenates the history
every step) does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.errors import resolve_choice

#: ``context_attention`` choices: eq. 3's bilinear score, or the code's ``simple`` one.
CONTEXT_ATTENTIONS = ("general", "simple")


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each dialogue's first ``lengths[b]`` positions; padding stays in place.

    Its own inverse. Used for the backward pass of BiDialogueRNN.

    Shapes:
        - input: ``x [B, T, ...]``, ``lengths [B]``
        - output: like ``x``

    >>> reverse_padded(torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2])).tolist()
    [[3, 2, 1], [5, 4, 0]]
    """
    t = x.shape[1]
    pos = torch.arange(t, device=x.device)[None, :]
    lengths = lengths.to(x.device)[:, None]
    index = torch.where(pos < lengths, lengths - 1 - pos, pos)  # [B, T]
    index = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


class PartyRNN(nn.Module):
    """One direction of DialogueRNN (see the module docstring for the equations).

    Args:
        input_size: Utterance representation width ``D_m``.
        global_size: Global state width ``D_g`` (code IEMOCAP: 500).
        party_size: Party state width ``D_p`` (code IEMOCAP: 500).
        emotion_size: Emotion state width ``D_e`` (code IEMOCAP: 300).
        listener_state: Update the listeners' states with ``GRU_L`` (the paper's
            DialogueRNN_l) instead of keeping them.
        context_attention: ``"general"`` (eq. 3) or ``"simple"``.
        dropout: Dropout on every new global, party and emotion state, inside the
            recurrence (the code's ``rec_dropout``).

    Shapes:
        - input: ``u [B, T, D_m]``, ``parties`` ``long [B, T]`` (per-dialogue speaker index,
          padding ignored), ``lengths [B]``
        - output: emotion states ``[B, T, D_e]``, zero at padding
    """

    def __init__(
        self,
        input_size: int,
        global_size: int,
        party_size: int,
        emotion_size: int,
        listener_state: bool = False,
        context_attention: str = "general",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.global_size = global_size
        self.party_size = party_size
        self.emotion_size = emotion_size
        self.context_attention = resolve_choice("DialogueRNN context attention", context_attention, CONTEXT_ATTENTIONS)
        self.global_cell = nn.GRUCell(input_size + party_size, global_size)
        self.party_cell = nn.GRUCell(input_size + global_size, party_size)
        self.emotion_cell = nn.GRUCell(party_size, emotion_size)
        self.listener_cell = nn.GRUCell(input_size + party_size, party_size) if listener_state else None
        if self.context_attention == "general":
            self.context_score: nn.Linear = nn.Linear(input_size, global_size, bias=False)  # W_alpha
        else:
            self.context_score = nn.Linear(global_size, 1, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, u: Tensor, parties: Tensor, lengths: Tensor) -> Tensor:
        b, t, _ = u.shape
        if t == 0:
            return u.new_zeros(b, 0, self.emotion_size)
        lengths = lengths.to(u.device)
        pos = torch.arange(t, device=u.device)
        valid = pos[None, :] < lengths[:, None]
        order = torch.argsort(lengths, descending=True, stable=True)
        # One host synchronisation: dialogues running at each position, parties per dialogue.
        stats = torch.cat([valid.sum(0), torch.where(valid, parties, 0).amax().reshape(1) + 1])
        *active, num_parties = stats.tolist()
        u, parties = u[order], parties[order]
        dm = self.input_size
        gc, pc, ec, lc = self.global_cell, self.party_cell, self.emotion_cell, self.listener_cell
        # What depends on u_t only is computed for all positions at once (one large product
        # instead of T small ones): the u_t halves of the GRU input gates and the context
        # query W_alpha^T u_t. Same parameters and maths as nn.GRUCell on [u_t, x].
        g_in = F.linear(u, gc.weight_ih[:, :dm], gc.bias_ih).unbind(1)  # T x [B, 3 D_g]
        p_in = F.linear(u, pc.weight_ih[:, :dm], pc.bias_ih).unbind(1)  # T x [B, 3 D_p]
        l_in = F.linear(u, lc.weight_ih[:, :dm], lc.bias_ih).unbind(1) if lc is not None else None
        query = self.context_score(u).unbind(1) if self.context_attention == "general" else None
        party_ids = parties.unbind(1)
        # Weights are split once per call, not per step: a slice taken inside the loop would
        # cost a full-size zero-filled gradient buffer per step in the backward pass.
        # q_{s,t-1} feeds the global unit's input gates and the party unit's hidden gates.
        w_speaker = torch.cat([gc.weight_ih[:, dm:], pc.weight_hh], dim=0)  # [3 D_g + 3 D_p, D_p]
        b_speaker = torch.cat([torch.zeros_like(gc.bias_ih), pc.bias_hh])
        w_context = pc.weight_ih[:, dm:]  # [3 D_p, D_g]
        w_listen = lc.weight_ih[:, dm:] if lc is not None else None
        split = 3 * self.global_size
        q = u.new_zeros(b, num_parties, self.party_size)
        g_prev = u.new_zeros(b, self.global_size)
        e_prev = u.new_zeros(b, self.emotion_size)
        past: Tensor | None = None  # [n, t - 1, D_g]: g_1 .. g_{t-1} of the running dialogues
        rows = b
        outputs: list[Tensor] = []
        for i in range(t):
            n = active[i]
            if n == 0:  # only padding from here on
                break
            if n < rows:
                # Rows are sorted by length: dialogues that ended are the last rows. They are
                # dropped from every state once, when they end.
                q, g_prev, e_prev = q[:n], g_prev[:n], e_prev[:n]
                past = past[:n] if past is not None else None
                rows = n
            step = slice(0, n) if n < b else slice(None)
            who = party_ids[i][step]
            speaker = F.one_hot(who, num_parties).to(torch.bool)  # [n, P]
            q_speaker = q.gather(1, who.view(n, 1, 1).expand(n, 1, self.party_size)).squeeze(1)  # q_{s,t-1}
            from_speaker = torch.addmm(b_speaker, q_speaker, w_speaker.t())
            g_gates = g_in[i][step] + from_speaker[:, :split]
            g_hidden = F.linear(g_prev, gc.weight_hh, gc.bias_hh)
            g = self.drop(_gru(g_gates, g_hidden, g_prev))
            p_gates = p_in[i][step]
            if past is not None:
                if query is None:
                    score = self.context_score(past).squeeze(-1)
                else:
                    score = torch.bmm(past, query[i][step].unsqueeze(-1)).squeeze(-1)
                context = torch.bmm(F.softmax(score, dim=-1).unsqueeze(1), past).squeeze(1)
                p_gates = p_gates + F.linear(context, w_context)
            # else c_1 = 0: no earlier global state
            past = g.unsqueeze(1) if past is None else torch.cat([past, g.unsqueeze(1)], dim=1)
            q_new = self.drop(_gru(p_gates, from_speaker[:, split:], q_speaker))  # q_{s,t}
            if lc is not None and l_in is not None and w_listen is not None:
                # The listeners' input u_t || q_{s,t} is the same for every listener.
                l_gates = (l_in[i][step] + F.linear(q_new, w_listen)).unsqueeze(1)
                l_hidden = F.linear(q, lc.weight_hh, lc.bias_hh)  # [n, P, 3 D_p]
                kept = self.drop(_gru(l_gates.expand_as(l_hidden), l_hidden, q))
            else:
                kept = q
            q = torch.where(speaker.unsqueeze(-1), q_new.unsqueeze(1), kept)
            e_prev = self.drop(ec(q_new, e_prev))
            g_prev = g
            outputs.append(e_prev)
        if not outputs:
            return u.new_zeros(b, t, self.emotion_size)
        out = torch.stack([F.pad(e, (0, 0, 0, b - e.shape[0])) for e in outputs], dim=1)
        if out.shape[1] < t:
            out = F.pad(out, (0, 0, 0, t - out.shape[1]))
        return out[torch.argsort(order)]


def _gru(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """``nn.GRUCell`` from its input and hidden gate pre-activations (PyTorch's gate order r, z, n)."""
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)


__all__ = ["CONTEXT_ATTENTIONS", "PartyRNN", "reverse_padded"]
