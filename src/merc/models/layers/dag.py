"""Directed acyclic conversation graphs and the DAG-GNN layer of DAG-ERC / MultiDAG.

Shen, Wu, Yang, Quan. "Directed Acyclic Graph Network for Conversational Emotion
Recognition." ACL 2021 (DAG-ERC), and Nguyen, Nguyen, Ha, Le. "Curriculum Learning Meets
Directed Acyclic Graph for Multimodal Emotion Recognition." LREC-COLING 2024 (MultiDAG,
Section 2.1.2, eqs. 3-6).

Two pieces, both vectorised over the dialogues of a padded batch:

- :func:`dag_adjacency` builds the dense ``[B, T, T]`` predecessor mask of every dialogue
  (edge list builders for graph libraries live in :mod:`merc.data`; a recurrent DAG
  layer wants the dense mask).
- :class:`DAGLayer` is one DAG-GNN layer. Nodes are computed in topological order, i.e.
  position by position; position ``i`` of *every* dialogue in the batch is computed in one
  step, so a forward pass costs ``T = max(lengths)`` steps, not ``sum(lengths)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.errors import ConfigError, resolve_choice


def dag_adjacency(lengths: Tensor, parties: Tensor, speaker_window: int = 1) -> tuple[Tensor, Tensor]:
    """Dense DAG predecessor masks of a padded batch of dialogues (DAG-ERC's graph).

    Utterance ``i`` receives an edge from every earlier utterance ``j < i`` back to, and
    including, the ``speaker_window``-th most recent earlier utterance of its own speaker
    (DAG-ERC's graph construction, ``get_adj_v1`` with ``windowp`` in its code). A speaker's first utterance (fewer than
    ``speaker_window`` earlier ones of its own) is linked to every earlier utterance. With
    ``speaker_window=1`` in a dyadic dialogue ``A B B A`` the last ``A`` receives edges from
    both ``B`` and the first ``A``.

    Vectorised: ``j`` is a predecessor of ``i`` iff ``j < i`` and fewer than
    ``speaker_window`` utterances of ``i``'s speaker lie strictly between ``j`` and ``i``.

    Args:
        lengths: ``long [B]`` utterances per dialogue.
        parties: ``long [B, T]`` per-dialogue speaker index (padding values are ignored).
        speaker_window: How many of the speaker's own previous turns the edges reach back
            to. Default 1 (DAG-ERC and MultiDAG+CL code, ``--windowp 1``).

    Returns:
        ``(adj, same_speaker)``: ``adj[b, i, j]`` is true iff ``j`` is a DAG predecessor
        of ``i``; ``same_speaker[b, i, j]`` is true iff both are real utterances of the
        same speaker (the edge relation of eq. 4). Both false at padding.

    Shapes:
        - input: ``lengths [B]``, ``parties [B, T]``
        - output: ``bool [B, T, T]`` twice

    >>> adj, same = dag_adjacency(torch.tensor([4]), torch.tensor([[0, 1, 1, 0]]))
    >>> adj[0].int().tolist()
    [[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0]]
    """
    if speaker_window < 1:
        raise ConfigError(f"speaker_window must be >= 1, got {speaker_window}")
    b, t = parties.shape
    device = parties.device
    pos = torch.arange(t, device=device)
    valid = pos[None, :] < lengths.to(device)[:, None]  # [B, T]
    pair_valid = valid[:, :, None] & valid[:, None, :]
    same = (parties[:, :, None] == parties[:, None, :]) & pair_valid  # [B, T(i), T(j)]
    earlier = pos[None, :] < pos[:, None]  # [T(i), T(j)]: j < i
    own_earlier = (same & earlier).to(torch.int32)
    # own_between[b, i, j] = number of k with j < k < i spoken by i's speaker (reverse
    # cumulative sum over k, minus k = j itself).
    own_from = own_earlier.flip(-1).cumsum(-1).flip(-1)
    own_between = own_from - own_earlier
    adj = earlier & pair_valid & (own_between < speaker_window)
    return adj, same


def predecessor_windows(adj: Tensor) -> list[int]:
    """For each position ``i``, how far back its earliest predecessor lies, max over the batch.

    A step of :class:`DAGLayer` only looks at positions ``i - w_i .. i - 1``, which keeps
    a step's cost proportional to the DAG's reach (a few turns) instead of ``i``.

    Shapes:
        - input: ``bool [B, T, T]``
        - output: ``T`` python ints, ``0`` where no dialogue has a predecessor
    """
    t = adj.shape[-1]
    has = adj.any(-1)  # [B, T]
    first = adj.to(torch.int8).argmax(-1)  # first true column (0 when none)
    reach = torch.where(has, torch.arange(t, device=adj.device)[None, :] - first, torch.zeros_like(first))
    return [int(w) for w in reach.amax(0).tolist()] if t else []


class DAGLayer(nn.Module):
    r"""One DAG-GNN layer (DAG-ERC; MultiDAG eqs. 3-6).

    For node ``i`` (in topological order), with :math:`H^{l-1}_i` its state from the
    previous layer and :math:`H^l_j` the states this layer already computed for its
    predecessors :math:`j \in \mathcal{N}_i`:

    .. math::
        a_{ij} &= \mathrm{softmax}_{j\in\mathcal{N}_i}\big(s(H^{l-1}_i, H^l_j)\big) \\
        M^l_i &= \textstyle\sum_{j\in\mathcal{N}_i} a_{ij}\, W^l_{r_{ij}} H^l_j \\
        \tilde H^l_i &= \mathrm{GRU}^l_H(H^{l-1}_i, M^l_i) \qquad \text{(node information unit)}\\
        C^l_i &= \mathrm{GRU}^l_M(M^l_i, H^{l-1}_i) \qquad \text{(context information unit)}\\
        H^l_i &= \tilde H^l_i + C^l_i

    where :math:`\mathrm{GRU}(x, h)` has input :math:`x` and hidden state :math:`h`
    (eq. 5, so the two units swap roles), :math:`r_{ij}` is same/other speaker, and a node
    without predecessors gets :math:`M^l_i = 0` (DAG-ERC's first utterance).

    ``attention="linear"`` is eq. 3, :math:`s = w^\top [H^l_j \,\|\, H^{l-1}_i]`
    (DAG-ERC's default ``rgcn`` gatherer). The query half of that score is the same for
    every ``j`` and cancels in the softmax, so only :math:`w_K^\top H^l_j` is computed
    (and no bias, which cancels too): the result is identical to the paper's and DAG-ERC's,
    without parameters that can never receive a gradient. ``attention="dot"`` is DAG-ERC's
    ``dotprod`` gatherer, :math:`s = (W_Q H^{l-1}_i)^\top (W_K H^l_j)`, where the query
    does matter.

    Args:
        hidden_size: State size ``D`` (input and output).
        attention: ``"linear"`` (paper, default) or ``"dot"``.

    Shapes:
        - input: ``h_prev [B, T, D]``, ``adj`` and ``same_speaker`` ``bool [B, T, T]``
          from :func:`dag_adjacency`
        - output: ``[B, T, D]`` (values at padding are meaningless; nothing reads them)
    """

    def __init__(self, hidden_size: int, attention: str = "linear") -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.attention = resolve_choice("DAG attention", attention, ["linear", "dot"])
        if self.attention == "linear":
            self.key = nn.Linear(hidden_size, 1, bias=False)
            self.query: nn.Linear | None = None
        else:
            self.key = nn.Linear(hidden_size, hidden_size, bias=False)
            self.query = nn.Linear(hidden_size, hidden_size)
        # Relation-specific transforms of eq. 4 (DAG-ERC: Wr0 for same speaker, Wr1 other).
        self.w_same = nn.Linear(hidden_size, hidden_size, bias=False)
        self.w_other = nn.Linear(hidden_size, hidden_size, bias=False)
        self.gru_node = nn.GRUCell(hidden_size, hidden_size)
        self.gru_context = nn.GRUCell(hidden_size, hidden_size)

    def score_vectors(self, h_prev: Tensor) -> Tensor:
        """``u [B, T, D]`` with score ``s(i, j) = H^l_j . u_i`` (up to terms constant in ``j``)."""
        if self.query is None:
            return self.key.weight.reshape(1, 1, -1).expand(h_prev.shape[0], h_prev.shape[1], -1)
        # (W_Q q)^T (W_K k) = k^T (W_K^T W_Q q): one product per query, none per step.
        return self.query(h_prev) @ self.key.weight

    def forward(
        self, h_prev: Tensor, adj: Tensor, same_speaker: Tensor, windows: list[int] | None = None
    ) -> Tensor:
        b, t, d = h_prev.shape
        if windows is None:
            windows = predecessor_windows(adj)
        u = self.score_vectors(h_prev)
        neg = torch.finfo(h_prev.dtype).min
        zero = h_prev.new_zeros(b, d)
        states: list[Tensor] = []
        for i in range(t):
            w = windows[i]
            if w == 0:
                message = zero
            else:
                ctx = torch.stack(states[i - w:i], dim=1)  # [B, w, D] current-layer predecessors
                edge = adj[:, i, i - w:i]
                same = same_speaker[:, i, i - w:i]
                score = torch.bmm(ctx, u[:, i, :, None]).squeeze(-1)  # [B, w]
                # A finite fill (not -inf) keeps rows without any edge (padding) NaN-free;
                # multiplying by the mask then zeroes them.
                attn = F.softmax(score.masked_fill(~edge, neg), dim=-1) * edge
                by_relation = torch.stack((attn * same, attn * ~same), dim=1)  # [B, 2, w]
                agg = torch.bmm(by_relation, ctx)  # [B, 2, D]
                # W_r is linear, so sum_j a_ij W_r H_j = W_r sum_j a_ij H_j: two products per
                # step instead of two per predecessor.
                message = self.w_same(agg[:, 0]) + self.w_other(agg[:, 1])
            x = h_prev[:, i]
            states.append(self.gru_node(x, message) + self.gru_context(message, x))
        return torch.stack(states, dim=1) if states else h_prev.new_zeros(b, 0, d)


__all__ = ["DAGLayer", "dag_adjacency", "predecessor_windows"]
