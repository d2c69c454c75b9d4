"""Directed acyclic conversation graphs and the DAG-GNN layer of DAG-ERC / MultiDAG.

Shen, Wu, Yang, Quan. "Directed Acyclic Graph Network for Conversational Emotion
Recognition." ACL 2021 (DAG-ERC), and Nguyen, Nguyen, Ha, Le. "Curriculum Learning Meets
Directed Acyclic Graph for Multimodal Emotion Recognition." LREC-COLING 2024 (MultiDAG,
Section 2.1.2, eqs. 3-6).

Two pieces, both vectorised over the dialogues of a padded batch:

- :func:`merc.data.graphs.dag_adjacency` builds the dense ``[B, T, T]`` predecessor mask of every dialogue
  (edge list builders for graph libraries live in :mod:`merc.data`; a recurrent DAG
  layer wants the dense mask).
- :class:`DAGLayer` is one DAG-GNN layer. Nodes are computed in topological order, i.e.
  position by position; position ``i`` of *every* dialogue in the batch is computed in one
  step, so a forward pass costs ``T = max(lengths)`` steps, not ``sum(lengths)``. Dialogues
  are walked longest first (:class:`DAGSchedule`), so the dialogues still running at a
  position are a prefix of the batch and padding is never computed.

DAG-ERC and MultiDAG share the network around the layers too: :class:`DAGStack` runs
``L`` layers over a batch's DAG and returns the concatenation of all their states, and
:func:`dag_classifier_mlp` builds DAG-ERC's feed-forward classifier. Both are plain
containers (an ``nn.ModuleList``, an ``nn.Sequential``), so a model holding them keeps
flat parameter names (``layers.0.*``, ``mlp.0.*``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.data.graphs import dag_adjacency
from merc.errors import resolve_choice


def predecessor_windows(adj: Tensor) -> list[int]:
    """For each position ``i``, how far back its earliest predecessor lies, max over the batch.

    A step of :class:`DAGLayer` only looks at positions ``i - w_i .. i - 1``, which keeps
    a step's cost proportional to the DAG's reach (a few turns) instead of ``i``.

    Shapes:
        - input: ``bool [B, T, T]``
        - output: ``T`` python ints, ``0`` where no dialogue has a predecessor
    """
    t = adj.shape[-1]
    if t == 0:
        return []
    has = adj.any(-1)  # [B, T]
    first = adj.to(torch.int8).argmax(-1)  # first true column (0 when none)
    reach = torch.where(has, torch.arange(t, device=adj.device)[None, :] - first, torch.zeros_like(first))
    return [int(w) for w in reach.amax(0).tolist()]


@dataclass(frozen=True)
class DAGSchedule:
    """How a batch is walked position by position; built once, shared by all layers.

    Attributes:
        order: ``long [B]`` dialogues by decreasing length. In this order the dialogues
            still running at position ``i`` are a prefix of the batch, so a step works on
            a view of the first ``active[i]`` rows and padding is never computed.
        inverse: ``long [B]`` the permutation undoing ``order``.
        active: Per position, how many dialogues are longer than it.
        windows: Per position, :func:`predecessor_windows`.
    """

    order: Tensor
    inverse: Tensor
    active: list[int]
    windows: list[int]


def dag_schedule(lengths: Tensor, adj: Tensor) -> DAGSchedule:
    """The :class:`DAGSchedule` of a batch (one host synchronisation)."""
    t = adj.shape[-1]
    lengths = lengths.to(adj.device)
    order = torch.argsort(lengths, descending=True, stable=True)
    active = (lengths[None, :] > torch.arange(t, device=adj.device)[:, None]).sum(1)
    return DAGSchedule(order, torch.argsort(order), [int(a) for a in active.tolist()], predecessor_windows(adj))


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

    Forward arguments: ``h_prev`` (:math:`H^{l-1}`), ``adj`` and ``same_speaker`` from
    :func:`dag_adjacency`, ``lengths``, and optionally the batch's :class:`DAGSchedule`
    (built from ``lengths`` and ``adj`` when not given; pass it to share it across layers).

    Shapes:
        - input: ``h_prev [B, T, D]``, ``adj`` and ``same_speaker`` ``bool [B, T, T]``,
          ``lengths [B]``
        - output: ``[B, T, D]``, zero at padding
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
        self,
        h_prev: Tensor,
        adj: Tensor,
        same_speaker: Tensor,
        lengths: Tensor,
        schedule: DAGSchedule | None = None,
    ) -> Tensor:
        b, t, d = h_prev.shape
        if schedule is None:
            schedule = dag_schedule(lengths, adj)
        order = schedule.order
        h_prev, adj, same_speaker = h_prev[order], adj[order], same_speaker[order]
        u = self.score_vectors(h_prev)
        # Everything that depends on H^{l-1} only is computed for all positions at once (one
        # large product instead of T small ones): the node unit's input gates and the
        # context unit's hidden gates. Same parameters and maths as nn.GRUCell.
        node_gi = F.linear(h_prev, self.gru_node.weight_ih, self.gru_node.bias_ih)  # [B, T, 3D]
        ctx_gh = F.linear(h_prev, self.gru_context.weight_hh, self.gru_context.bias_hh)
        # What depends on the message M_i is one product per step: [W_same W_other] for
        # eq. 4 and the node unit's hidden gates stacked with the context unit's input gates.
        w_rel = torch.cat((self.w_same.weight, self.w_other.weight), dim=1)  # [D, 2D]
        w_msg = torch.cat((self.gru_node.weight_hh, self.gru_context.weight_ih), dim=0)  # [6D, D]
        b_msg = torch.cat((self.gru_node.bias_hh, self.gru_context.bias_ih), dim=0)
        zero = h_prev.new_zeros(b, d)
        # unbind once: indexing [:, i] inside the loop would make autograd scatter each
        # step's gradient into a fresh full-size [B, T, .] buffer (quadratic in T).
        xs, us, gis, ghs = (v.unbind(1) for v in (h_prev, u, node_gi, ctx_gh))
        states: list[Tensor] = []
        for i in range(t):
            n, w = schedule.active[i], schedule.windows[i]
            if n == 0:  # only padding from here on
                states.extend([zero] * (t - i))
                break
            if w == 0:
                message = zero[:n]
            else:
                # Rows are sorted by length, so the n running dialogues are rows :n of every
                # earlier state too (an earlier position has at least as many running).
                ctx = torch.stack([s[:n] for s in states[i - w : i]], dim=1)  # [n, w, D]
                message = self.aggregate(ctx, us[i][:n], adj[:n, i, i - w : i], same_speaker[:n, i, i - w : i], w_rel)
            states.append(self.step(xs[i][:n], message, gis[i][:n], ghs[i][:n], w_msg, b_msg))
        if not states:
            return h_prev.new_zeros(b, 0, d)
        out = torch.stack([F.pad(s, (0, 0, 0, b - s.shape[0])) for s in states], dim=1)
        return out[schedule.inverse]

    @staticmethod
    def aggregate(ctx: Tensor, u: Tensor, edge: Tensor, same: Tensor, w_rel: Tensor) -> Tensor:
        """Eqs. 3-4 for position ``i`` of every dialogue: ``M_i [B, D]`` from predecessors ``ctx [B, w, D]``."""
        score = torch.bmm(ctx, u.unsqueeze(-1)).squeeze(-1)  # [B, w]
        # Every running utterance i >= 1 has an edge from i - 1; the finite fill (not -inf)
        # and the mask product still keep a row without edges NaN-free (M = 0).
        attn = F.softmax(score.masked_fill(~edge, torch.finfo(score.dtype).min), dim=-1) * edge
        by_relation = torch.stack((attn * same, attn * ~same), dim=1)  # [B, 2, w]
        # W_r is linear, so sum_j a_ij W_r H_j = W_r sum_j a_ij H_j: one product per step
        # instead of one per predecessor.
        agg = torch.bmm(by_relation, ctx).flatten(1)  # [B, 2D] = [same-speaker sum, other sum]
        return agg @ w_rel.t()

    def step(self, x: Tensor, message: Tensor, node_gi: Tensor, ctx_gh: Tensor, w_msg: Tensor, b_msg: Tensor) -> Tensor:
        """Eqs. 5-6 at one position: ``GRU_H(x, M) + GRU_M(M, x)`` with precomputed ``x`` gates."""
        node_gh, ctx_gi = torch.addmm(b_msg, message, w_msg.t()).chunk(2, dim=-1)
        return _gru(node_gi, node_gh, message) + _gru(ctx_gi, ctx_gh, x)


def _gru(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """``nn.GRUCell`` from its two gate pre-activations (gate order r, z, n as in PyTorch)."""
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)


class DAGStack(nn.ModuleList):
    r"""``L`` DAG-GNN layers over the DAG of a batch, with DAG-ERC's all-layer readout.

    DAG-ERC (Shen et al., 2021; MultiDAG eq. 7) classifies each utterance from the
    concatenation of its states in every layer, :math:`H^0_i \| H^1_i \| \dots \| H^L_i`.
    This module builds the DAG of :func:`merc.data.graphs.dag_adjacency` and the walk
    schedule once per batch (shared by all layers), runs the layers in order and returns
    that concatenation. The model appends the layer input's source (DAG-ERC's code: the
    utterance features) itself.

    Args:
        hidden_size: State size ``D`` of every layer.
        num_layers: ``L``.
        attention: Gatherer of every layer, ``"linear"`` or ``"dot"`` (:class:`DAGLayer`).

    Forward arguments: ``h0`` (:math:`H^0`), ``lengths``, ``parties`` (per-dialogue speaker
    index) and ``speaker_window`` (:func:`~merc.data.graphs.dag_adjacency`).

    Shapes:
        - input: ``h0 [B, T, D]``, ``lengths [B]``, ``parties [B, T]``
        - output: ``[B, T, (L + 1) * D]``
    """

    def __init__(self, hidden_size: int, num_layers: int, attention: str = "linear") -> None:
        super().__init__([DAGLayer(hidden_size, attention) for _ in range(num_layers)])

    def forward(self, h0: Tensor, lengths: Tensor, parties: Tensor, speaker_window: int = 1) -> Tensor:  # type: ignore[override]
        adj, same = dag_adjacency(lengths, parties, speaker_window)
        schedule = dag_schedule(lengths, adj)  # one host sync per batch, shared by all layers
        h, states = h0, [h0]
        for layer in self:
            h = layer(h, adj, same, lengths, schedule)
            states.append(h)
        return torch.cat(states, dim=-1)


def dag_classifier_mlp(in_size: int, hidden_size: int, mlp_layers: int) -> nn.Sequential:
    """DAG-ERC's feed-forward classifier body: ``mlp_layers`` x (Linear + ReLU) to ``hidden_size``.

    DAG-ERC's code (``--mlp_layers``, default 2) follows it with dropout and the linear
    output layer, which the model owns.

    >>> dag_classifier_mlp(10, 4, 2)
    Sequential(
      (0): Linear(in_features=10, out_features=4, bias=True)
      (1): ReLU()
      (2): Linear(in_features=4, out_features=4, bias=True)
      (3): ReLU()
    )
    """
    layers: list[nn.Module] = []
    width = in_size
    for _ in range(mlp_layers):
        layers += [nn.Linear(width, hidden_size), nn.ReLU()]
        width = hidden_size
    return nn.Sequential(*layers)


__all__ = ["DAGLayer", "DAGSchedule", "DAGStack", "dag_classifier_mlp", "dag_schedule", "predecessor_windows"]
