"""Conversation graphs for graph-based ERC models, built for a whole batch at once.

Every builder here is pure tensor code over the batch: no Python loop runs per edge,
per utterance or per dialogue (the only loops are over the constant number of
modalities), so building the graph of a batch costs a few vectorised ops on the
batch's device. Nodes are the batch's *real* utterances, numbered by their flat index
``n`` in :attr:`merc.data.batching.Batch.flat_index` order (dialogue-major:
``n = offset[b] + t`` with ``offset = cumsum(lengths) - lengths``); padding never
becomes a node, so a dialogue's graph does not depend on its batch mates.

Two graphs:

- :func:`build_corect_graph`: CORECT's multimodal graph (Nguyen et al., EMNLP 2023,
  Section 3.2.1, eq. 5-6): one node per utterance per modality, cross-modal relations
  between the nodes of one utterance and past/future temporal relations within one
  modality.
- :func:`dag_adjacency`: DAG-ERC's directed acyclic graph (Shen et al., ACL 2021), also
  the graph of MultiDAG+CL: every utterance receives edges from its predecessors back to
  the most recent earlier utterance(s) of its own speaker, as dense per-dialogue masks
  (the layout :class:`merc.models.layers.dag.DAGLayer` walks).

Edges follow PyTorch Geometric's convention: ``edge_index[0]`` is the source,
``edge_index[1]`` the target, and with the default ``flow="source_to_target"`` a
message-passing layer aggregates, at each node, the messages of the edges that
*enter* it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from merc.data.batching import Batch
from merc.data.schema import MODALITIES, parse_modalities
from merc.errors import ConfigError, DataError, resolve_choice

#: Number of CORECT relation types: ``3 * 3`` cross-modal (incl. self) + ``2 * 3`` temporal.
CORECT_NUM_RELATIONS: int = len(MODALITIES) ** 2 + 2 * len(MODALITIES)
_TEMPORAL_BASE = len(MODALITIES) ** 2
_TEMPORAL_KINDS = ("past", "future")


def cross_modal_relation(source: str, target: str) -> int:
    """CORECT relation id of the edge from ``source``'s node to ``target``'s node of one utterance.

    ``3 * c(source) + c(target)`` with ``c`` the canonical modality index
    (:data:`merc.data.schema.MODALITIES`: t=0, a=1, v=2), so the id of a modality pair
    never depends on which modalities a model uses. ``source == target`` is the node's
    self relation (ids 0, 4, 8).

    >>> cross_modal_relation("t", "t"), cross_modal_relation("a", "v")
    (0, 5)
    """
    return len(MODALITIES) * MODALITIES.index(source) + MODALITIES.index(target)


def temporal_relation(modality: str, kind: str) -> int:
    """CORECT relation id of a ``"past"`` or ``"future"`` edge within ``modality``.

    ``9 + c(modality)`` for past, ``12 + c(modality)`` for future. Past/future is
    judged from the utterance that owns the window (see :func:`build_corect_graph`):
    a past edge joins the owner to an earlier utterance.

    >>> temporal_relation("t", "past"), temporal_relation("v", "future")
    (9, 14)
    """
    kind = resolve_choice("temporal relation", kind, _TEMPORAL_KINDS)
    return _TEMPORAL_BASE + len(MODALITIES) * _TEMPORAL_KINDS.index(kind) + MODALITIES.index(modality)


def corect_relation_names() -> list[str]:
    """Readable name of every CORECT relation id, e.g. ``"a->v"``, ``"t:past"``.

    >>> corect_relation_names()[:4], corect_relation_names()[9]
    (['t->t', 't->a', 't->v', 'a->t'], 't:past')
    """
    names = [""] * CORECT_NUM_RELATIONS
    for s in MODALITIES:
        for t in MODALITIES:
            names[cross_modal_relation(s, t)] = f"{s}->{t}"
        for kind in _TEMPORAL_KINDS:
            names[temporal_relation(s, kind)] = f"{s}:{kind}"
    return names


class UtteranceIndex(NamedTuple):
    """Where each flat utterance sits (see :func:`utterance_index`)."""

    dialogue: Tensor  # long [N], batch row of utterance n
    position: Tensor  # long [N], position of utterance n in its dialogue
    offsets: Tensor  # long [B], flat index of each dialogue's first utterance


def utterance_index(lengths: Tensor) -> UtteranceIndex:
    """Dialogue, in-dialogue position and dialogue offsets of the ``N = sum(lengths)`` utterances.

    Matches :attr:`Batch.utterance_dialogue` / :attr:`Batch.utterance_position` for a
    batch collated from dialogues of these lengths.

    >>> utterance_index(torch.tensor([2, 1])).position.tolist()
    [0, 1, 0]
    """
    lengths = lengths.long()
    offsets = torch.cumsum(lengths, 0) - lengths
    dialogue = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    position = torch.arange(dialogue.numel(), device=lengths.device) - offsets[dialogue]
    return UtteranceIndex(dialogue, position, offsets)


def _lengths_of(source: Batch | Tensor) -> Tensor:
    lengths = source.lengths if isinstance(source, Batch) else source
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D [B], got shape {tuple(lengths.shape)}")
    if (lengths < 1).any():
        raise ValueError("every dialogue needs at least one utterance (a length < 1 was given)")
    return lengths.long()


class CorectGraph(NamedTuple):
    """CORECT's multimodal graph of a batch (see :func:`build_corect_graph`).

    Attributes:
        edge_index: ``long [2, E]`` source and target node ids.
        edge_type: ``long [E]`` relation ids in ``0 .. CORECT_NUM_RELATIONS - 1``.
        node_utterance: ``long [M * N]`` flat utterance index of each node.
        node_modality: ``long [M * N]`` canonical modality index of each node (t=0, a=1, v=2).
        num_nodes: ``M * N``.
    """

    edge_index: Tensor
    edge_type: Tensor
    node_utterance: Tensor
    node_modality: Tensor
    num_nodes: int


def _window_pairs(position: Tensor, length_of: Tensor, max_offset: int, direction: int) -> tuple[Tensor, Tensor]:
    """(owner, neighbour) flat-index pairs with ``neighbour = owner + direction * o``, ``1 <= o <= max_offset``.

    One ``[N, max_offset]`` grid for all offsets: no loop over offsets or utterances.
    """
    if max_offset <= 0:
        empty = position.new_empty(0)
        return empty, empty
    steps = torch.arange(1, max_offset + 1, device=position.device) * direction
    target_pos = position[:, None] + steps[None, :]
    inside = (target_pos >= 0) & (target_pos < length_of[:, None])
    owner, col = inside.nonzero(as_tuple=True)
    return owner, owner + steps[col]


def _stack_edges(
    sources: list[Tensor], targets: list[Tensor], kinds: list[Tensor], device: torch.device | str | None
) -> tuple[Tensor, Tensor]:
    """Concatenated ``edge_index [2, E]`` and edge labels ``[E]`` of edge groups (empty when none)."""
    if not sources:
        return torch.empty(2, 0, dtype=torch.long, device=device), torch.empty(0, dtype=torch.long, device=device)
    return torch.stack([torch.cat(sources), torch.cat(targets)]), torch.cat(kinds)


def build_corect_graph(
    source: Batch | Tensor,
    modalities: Sequence[str],
    past: int = 11,
    future: int = 9,
    use_temporal: bool = True,
    use_multimodal: bool = True,
    use_self_loops: bool = True,
    window_owner: str = "source",
) -> CorectGraph:
    """CORECT's multimodal conversation graph for a whole batch (Section 3.2.1, eq. 5-6).

    **Nodes**: one per utterance per modality, modality-major: node ``k * N + n`` is
    utterance ``n`` (flat index) seen through ``modalities[k]``, as the reference
    implementation packs them, so ``x = torch.cat([batch.flatten(h[m]) for m in
    modalities])`` gives the node features and ``out.view(M, N, -1)`` splits them back.

    **Relations** (ids stable whatever modalities are present, see
    :func:`cross_modal_relation`, :func:`temporal_relation`, :func:`corect_relation_names`):

    - cross-modal ``R_multi`` (eq. 5), ids 0-8: for every ordered pair of distinct
      modalities, an edge between the two nodes of the same utterance
      (``use_multimodal``), plus each node's self relation on the diagonal
      (``use_self_loops``). With one modality only the self relation remains.
    - temporal ``R_temp`` (eq. 6), ids 9-14: within one modality, between an
      utterance (the window owner) and the utterances of the same dialogue inside its
      window: ``past`` relation to the ``P`` preceding utterances
      ``[i - P, i - 1]``, ``future`` relation to the ``F - 1`` following utterances
      ``[i + 1, i + F - 1]``. This is the reference implementation's half-open slice
      ``[i - P, i + F)``, which produced the published numbers (the paper's eq. 6
      writes open bounds on both sides). A negative ``past``/``future`` takes the
      whole dialogue on that side; windows longer than the dialogue are clipped.

    The reference always keeps the self relation (in its ``temp``, ``multi`` and
    ``temp_multi`` edge settings alike), hence ``use_self_loops`` separate from
    ``use_multimodal``: the "w/o R_multi" ablation drops only the cross-modal pairs.

    **Direction**: ``window_owner="source"`` (default, as in the reference's
    ``edge_perms``) puts the window owner at ``edge_index[0]``: under PyG's
    source-to-target flow utterance ``i`` then *aggregates* from the utterances whose
    windows contain it: from its ``P`` successors over ``past``-typed edges (``i`` lies
    in their past) and from its ``F - 1`` predecessors over ``future``-typed edges.
    ``window_owner="target"`` reverses
    every temporal edge so that ``i`` aggregates from its own window (``P`` past,
    ``F - 1`` future), the paper's reading of eq. 6. Cross-modal edges come in both
    directions, so they are unaffected.

    Args:
        source: A :class:`Batch` or its ``lengths`` ``long [B]`` (each >= 1).
        modalities: Modalities of the node blocks, in block order (e.g. a model's
            ``("t", "a", "v")``); the order fixes node ids, never relation ids.
        past: Past window ``P`` (paper: 11 on IEMOCAP, 5 on short dialogues).
        future: Future window ``F`` (paper: 9 on IEMOCAP, 4 on short dialogues).
        use_temporal: Add the past/future relations (``False``: "w/o R_temp").
        use_multimodal: Add the cross-modal pairs (``False``: "w/o R_multi").
        use_self_loops: Add each node's self relation.
        window_owner: ``"source"`` (reference) or ``"target"``, see above.

    Returns:
        A :class:`CorectGraph`; edges grouped by relation family, then by modality.

    Shapes:
        - ``edge_index``: ``[2, E]``; ``edge_type``: ``[E]``
        - ``node_utterance``, ``node_modality``: ``[M * N]``

    >>> g = build_corect_graph(torch.tensor([2]), "ta", past=1, future=2)
    >>> sorted(zip(g.edge_index[0].tolist(), g.edge_index[1].tolist(), g.edge_type.tolist()))
    [(0, 0, 0), (0, 1, 12), (0, 2, 1), (1, 0, 9), (1, 1, 0), (1, 3, 1), (2, 0, 3), (2, 2, 4), (2, 3, 13), (3, 1, 3), (3, 2, 10), (3, 3, 4)]
    """
    mods = tuple(modalities)
    parse_modalities(mods)  # raises DataError on an unknown or repeated letter
    owner_mode = resolve_choice("window owner", window_owner, ["source", "target"])
    lengths = _lengths_of(source)
    device = lengths.device
    n_utt = int(lengths.sum())
    index = utterance_index(lengths)
    utt = torch.arange(n_utt, device=device)

    sources: list[Tensor] = []
    targets: list[Tensor] = []
    types: list[Tensor] = []

    def add(src: Tensor, dst: Tensor, relation: int) -> None:
        sources.append(src)
        targets.append(dst)
        types.append(torch.full_like(src, relation))

    # R_multi: the M x M node pairs of each utterance (a loop over modality pairs only).
    for ks, ms in enumerate(mods):
        for kt, mt in enumerate(mods):
            if (ms == mt and use_self_loops) or (ms != mt and use_multimodal):
                add(ks * n_utt + utt, kt * n_utt + utt, cross_modal_relation(ms, mt))

    # R_temp: (owner, neighbour) pairs shared by all modalities, then one block per modality.
    if use_temporal and n_utt:
        longest = int(lengths.max())
        reach_past = longest - 1 if past < 0 else min(past, longest - 1)
        reach_future = longest - 1 if future < 0 else min(max(future - 1, 0), longest - 1)
        length_of = lengths[index.dialogue]
        for kind, reach, direction in (("past", reach_past, -1), ("future", reach_future, 1)):
            owner, neighbour = _window_pairs(index.position, length_of, reach, direction)
            if owner_mode == "target":
                owner, neighbour = neighbour, owner
            for k, m in enumerate(mods):
                add(k * n_utt + owner, k * n_utt + neighbour, temporal_relation(m, kind))

    edge_index, edge_type = _stack_edges(sources, targets, types, device)
    canonical = torch.tensor([MODALITIES.index(m) for m in mods], dtype=torch.long, device=device)
    return CorectGraph(
        edge_index=edge_index,
        edge_type=edge_type,
        node_utterance=utt.repeat(len(mods)),
        node_modality=canonical.repeat_interleave(n_utt),
        num_nodes=len(mods) * n_utt,
    )


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


__all__ = [
    "CORECT_NUM_RELATIONS",
    "CorectGraph",
    "UtteranceIndex",
    "build_corect_graph",
    "dag_adjacency",
    "corect_relation_names",
    "cross_modal_relation",
    "temporal_relation",
    "utterance_index",
]


# -- fully connected and windowed dialogue graphs (Mi-CGA, GCNet) ---------------------------
def flat_node_ids(mask: Tensor) -> Tensor:
    """Node id of every ``(b, t)`` slot in flat order (``-1`` at padding).

    Shapes:
        - mask: ``bool [B, T]``; output ``long [B * T]``.
    """
    flat = mask.reshape(-1)
    return torch.where(flat, flat.long().cumsum(0) - 1, torch.full_like(flat, -1, dtype=torch.long))


def fully_connected_edges(mask: Tensor, self_loops: bool = False) -> Tensor:
    """``edge_index`` of the fully connected graph of every dialogue in the batch.

    Nodes are numbered in :attr:`merc.data.batching.Batch.flat_index` order, so node
    features are ``batch.flatten(x)``. No edge joins two dialogues.

    Args:
        mask: ``bool [B, T]`` real utterances.
        self_loops: Include ``i -> i`` edges.

    Shapes:
        - output: ``long [2, E]`` (source, target), ``E = sum(n_b * (n_b - 1))`` without
          self loops.

    >>> fully_connected_edges(torch.tensor([[True, True], [True, False]])).tolist()
    [[1, 0], [0, 1]]
    """
    t = mask.shape[1]
    pair = mask[:, :, None] & mask[:, None, :]
    if not self_loops:
        pair = pair & ~torch.eye(t, dtype=torch.bool, device=mask.device)[None]
    b, i, j = pair.nonzero(as_tuple=True)
    node = flat_node_ids(mask)
    return torch.stack([node[b * t + j], node[b * t + i]])


def normalized_dialogue_adjacency(mask: Tensor) -> Tensor:
    r"""Dense :math:`\tilde A = \hat D^{-1/2}(A+I)\hat D^{-1/2}` of each dialogue's complete graph.

    Mi-CGA Section 3.3.1. With every utterance linked to every other, :math:`A+I` is
    all ones on the dialogue's ``n x n`` block and :math:`\tilde A = 1/n` there (zero at
    padding): one GCN propagation is the dialogue mean.

    Shapes:
        - mask: ``bool [B, T]``; output ``float [B, T, T]``.
    """
    a_hat = (mask[:, :, None] & mask[:, None, :]).float()
    inv_sqrt = a_hat.sum(-1).clamp_min(1.0).rsqrt() * mask.float()
    return inv_sqrt[:, :, None] * a_hat * inv_sqrt[:, None, :]


def window_edges(
    mask: Tensor, parties: Tensor, window_past: int, window_future: int, num_parties: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched window graph of GCNet with its temporal and speaker relation types.

    Node ``i`` receives an edge from every utterance ``j`` of its dialogue with
    ``i - window_past <= j <= i + window_future`` (``-1``: unbounded on that side),
    ``j == i`` included. Nodes are numbered in ``batch.flat_index`` order.

    Args:
        mask: ``bool [B, T]`` real utterances.
        parties: ``long [B, T]`` per-dialogue speaker index, below ``num_parties`` at real
            utterances (a larger one is an error: clamping would merge speakers' relations).
        window_past: Past context (``-1`` = whole past).
        window_future: Future context (``-1`` = whole future).
        num_parties: Speakers per dialogue the relation set covers.

    Returns:
        ``edge_index`` ``long [2, E]`` (source ``j``, target ``i``), temporal relation
        ``long [E]`` (0 past, 1 now, 2 future: ``j`` before, at, after ``i``) and speaker
        relation ``long [E]`` (``party_i * num_parties + party_j``).

    >>> m = torch.tensor([[True, True, True]])
    >>> ei, tr, sr = window_edges(m, torch.tensor([[0, 1, 0]]), 1, 0, 2)
    >>> ei.tolist(), tr.tolist(), sr.tolist()
    ([[0, 0, 1, 1, 2], [0, 1, 1, 2, 2]], [1, 0, 1, 0, 1], [0, 2, 3, 1, 0])
    """
    t = mask.shape[1]
    pos = torch.arange(t, device=mask.device)
    offset = pos[None, :] - pos[:, None]  # [i, j] -> j - i
    allowed = torch.ones_like(offset, dtype=torch.bool)
    if window_past >= 0:
        allowed &= offset >= -window_past
    if window_future >= 0:
        allowed &= offset <= window_future
    pair = mask[:, :, None] & mask[:, None, :] & allowed[None]
    b, i, j = pair.nonzero(as_tuple=True)
    node = flat_node_ids(mask)
    edge_index = torch.stack([node[b * t + j], node[b * t + i]])
    temporal = torch.sign(j - i) + 1
    if bool((parties[mask] >= num_parties).any()):
        raise DataError(
            f"a dialogue has {int(parties[mask].max()) + 1} speakers but the speaker relations cover "
            f"{num_parties} (num_parties); build the model with the dataset's num_parties"
        )
    speaker = parties[b, i] * num_parties + parties[b, j]
    return edge_index, temporal, speaker


# -- DialogueGCN's speaker-level graph ------------------------------------------------------
def dialoguegcn_num_relations(num_parties: int) -> int:
    """Relation types of DialogueGCN's graph: ``2 * num_parties ** 2`` (Ghosal et al., EMNLP 2019).

    >>> dialoguegcn_num_relations(2)
    8
    """
    return 2 * num_parties**2


def dialoguegcn_relation(source_party: int, target_party: int, source_earlier: bool, num_parties: int) -> int:
    """DialogueGCN relation id of an edge: ``2 * (source_party * num_parties + target_party) + d``.

    ``d = 0`` if the source utterance comes *before* the target, ``d = 1`` if it comes
    after it **or is the target itself** (the self edge): the numbering and the
    self-edge convention of the authors' ``edge_type_mapping`` (key ``speaker_src``,
    ``speaker_tgt``, ``'0'`` iff ``src < tgt``, else ``'1'``), so the self edge shares
    the relation of the edges that bring a later utterance's message.

    >>> dialoguegcn_relation(0, 0, True, 2), dialoguegcn_relation(0, 0, False, 2), dialoguegcn_relation(1, 0, True, 2)
    (0, 1, 4)
    """
    return 2 * (source_party * num_parties + target_party) + (0 if source_earlier else 1)


class DialogueGCNGraph(NamedTuple):
    """DialogueGCN's graph of a batch (see :func:`dialoguegcn_graph`).

    Attributes:
        edge_index: ``long [2, E]`` source and target node ids (flat utterance index).
        edge_type: ``long [E]`` relation ids (:func:`dialoguegcn_relation`).
        owner: ``long [E]`` the node whose context window produced the edge (the query
            of the edge attention, whose weights are normalised over the owner's edges):
            ``edge_index[0]`` or ``edge_index[1]``.
    """

    edge_index: Tensor
    edge_type: Tensor
    owner: Tensor


def dialoguegcn_graph(
    mask: Tensor,
    parties: Tensor,
    window_past: int = 10,
    window_future: int = 10,
    num_parties: int = 2,
    window_owner: str = "source",
) -> DialogueGCNGraph:
    """DialogueGCN's directed speaker-level graph for a whole batch (Ghosal et al., EMNLP 2019).

    Every utterance ``i`` owns the window ``[i - window_past, i + window_future]`` of its
    dialogue (itself included, clipped to the dialogue; ``-1`` leaves a side unbounded),
    as the authors' ``edge_perms``. Each utterance ``k`` of the window gives one edge:

    - ``window_owner="source"`` (default, the authors' ``batch_graphify`` and Mian Zhang's
      re-implementation): ``i -> k``. Under PyG's source-to-target flow, ``k`` then
      aggregates from the utterances whose windows contain it; the attention weights of
      an owner's outgoing edges sum to one.
    - ``window_owner="target"``: ``k -> i``, the paper's eq. 1-2: ``i`` aggregates from its
      own window, and the weights of its incoming edges sum to one.

    With ``window_past == window_future`` both give the same edges (and relations); only
    the owner, hence the attention's normalisation, differs.

    **Relations**: ``2 * num_parties ** 2`` types (speaker of the source, speaker of the
    target, whether the source comes before the target), numbered as the authors'
    ``edge_type_mapping``: see :func:`dialoguegcn_relation`. The self edge counts as
    "source not before target" (the code's ``else`` branch).

    Built on :func:`window_edges` (no loop over edges, utterances or dialogues): a
    source-owned window ``[j - P, j + F]`` is the target-side window ``[i - F, i + P]``.

    Args:
        mask: ``bool [B, T]`` real utterances.
        parties: ``long [B, T]`` per-dialogue speaker index (``Batch.parties``).
        window_past: ``P`` (paper and code: 10; ``-1``: the whole past).
        window_future: ``F`` (paper and code: 10; ``-1``: the whole future).
        num_parties: Speakers per dialogue the relations cover.
        window_owner: ``"source"`` or ``"target"``, see above.

    Returns:
        A :class:`DialogueGCNGraph`; nodes are numbered in ``Batch.flat_index`` order.

    Raises:
        ConfigError: a window below ``-1`` or an unknown ``window_owner``.
        DataError: a dialogue has more than ``num_parties`` speakers.

    Shapes:
        - ``edge_index``: ``[2, E]``; ``edge_type``, ``owner``: ``[E]``

    >>> g = dialoguegcn_graph(torch.tensor([[True, True]]), torch.tensor([[0, 1]]), 1, 0)
    >>> g.edge_index.tolist(), g.edge_type.tolist(), g.owner.tolist()
    ([[0, 1, 1], [0, 0, 1]], [1, 5, 7], [0, 1, 1])
    """
    if window_past < -1 or window_future < -1:
        raise ConfigError(f"DialogueGCN windows must be >= 0 or -1 (unbounded), got {window_past}, {window_future}")
    owner_mode = resolve_choice("window owner", window_owner, ["source", "target"])
    if owner_mode == "source":
        edge_index, temporal, speaker = window_edges(mask, parties, window_future, window_past, num_parties)
        owner = edge_index[0]
    else:
        edge_index, temporal, speaker = window_edges(mask, parties, window_past, window_future, num_parties)
        owner = edge_index[1]
    # window_edges: speaker = party(target) * P + party(source); temporal 0 = source earlier.
    target_party, source_party = speaker // num_parties, speaker % num_parties
    edge_type = 2 * (source_party * num_parties + target_party) + (temporal > 0).long()
    return DialogueGCNGraph(edge_index=edge_index, edge_type=edge_type, owner=owner)


# -- MMGCN's multimodal dialogue graph (MMGCN, MM-DFN) ----------------------------------------
#: Edge kind of :func:`mmgcn_graph`: two nodes of one modality (self loops included).
MMGCN_INTRA: int = 0
#: Edge kind of :func:`mmgcn_graph`: two modality nodes of one utterance.
MMGCN_INTER: int = 1
#: Names of the :func:`mmgcn_graph` edge kinds, by id.
MMGCN_EDGE_KINDS: tuple[str, ...] = ("intra", "inter")


class MMGCNGraph(NamedTuple):
    """MMGCN's multimodal graph of a batch (see :func:`mmgcn_graph`).

    Attributes:
        edge_index: ``long [2, E]`` source and target node ids.
        edge_kind: ``long [E]``, :data:`MMGCN_INTRA` or :data:`MMGCN_INTER`.
        node_utterance: ``long [M * N]`` flat utterance index of each node.
        node_modality: ``long [M * N]`` canonical modality index of each node (t=0, a=1, v=2).
        num_nodes: ``M * N``.
    """

    edge_index: Tensor
    edge_kind: Tensor
    node_utterance: Tensor
    node_modality: Tensor
    num_nodes: int


def mmgcn_graph(
    source: Batch | Tensor,
    modalities: Sequence[str],
    intra_modal: bool = True,
    inter_modal: bool = True,
    self_loops: bool = True,
    window: int = -1,
) -> MMGCNGraph:
    """MMGCN's multimodal dialogue graph for a whole batch (Hu et al., ACL 2021).

    The graph of MMGCN, reused by MM-DFN (Hu et al., ICASSP 2022), as the
    authors' ``create_big_adj`` builds it (one dense adjacency per batch there; an edge
    list here, same edges).

    **Nodes**: one per utterance per modality, modality-major as
    :func:`build_corect_graph`: node ``k * N + n`` is utterance ``n`` (flat index) seen
    through ``modalities[k]``, so ``torch.cat([codes[m] for m in modalities])`` gives the
    node features and ``out.view(M, N, -1)`` splits them back.

    **Edges**, both directions of every pair (the graph is undirected):

    - intra-modal (:data:`MMGCN_INTRA`, ``intra_modal``): between every two utterances of
      one dialogue within one modality, the dialogue's complete graph (``window=-1``, the
      paper and the code; ``window >= 0`` keeps the pairs at most ``window`` turns
      apart); with ``self_loops``, each node's self loop (the diagonal of the code's
      intra-modal blocks, weighted like every other edge).
    - inter-modal (:data:`MMGCN_INTER`, ``inter_modal``): between the nodes of one
      utterance in every two distinct modalities (none with one modality).

    Edge weights (the angular similarity of the node features) depend on the model's
    features, so the model computes them
    (:func:`merc.models.layers.deep_gcn.angular_edge_weights`).

    Args:
        source: A :class:`Batch` or its ``lengths`` ``long [B]`` (each >= 1).
        modalities: Modalities of the node blocks, in block order.
        intra_modal: Add the intra-modal edges.
        inter_modal: Add the inter-modal edges.
        self_loops: Add each node's self loop (an intra-modal edge).
        window: Largest turn distance of an intra-modal pair; ``-1``: the whole dialogue.

    Returns:
        An :class:`MMGCNGraph`; intra-modal edges first (per modality block, then per
        dialogue, target, source), then inter-modal ones (per modality pair).

    Raises:
        ConfigError: ``window`` below ``-1``.
        DataError: an unknown or repeated modality.

    Shapes:
        - ``edge_index``: ``[2, E]``; ``edge_kind``: ``[E]``
        - ``node_utterance``, ``node_modality``: ``[M * N]``

    >>> g = mmgcn_graph(torch.tensor([2]), "ta")
    >>> sorted(zip(g.edge_index[0].tolist(), g.edge_index[1].tolist(), g.edge_kind.tolist()))
    [(0, 0, 0), (0, 1, 0), (0, 2, 1), (1, 0, 0), (1, 1, 0), (1, 3, 1), (2, 0, 1), (2, 2, 0), (2, 3, 0), (3, 1, 1), (3, 2, 0), (3, 3, 0)]
    """
    mods = tuple(modalities)
    parse_modalities(mods)  # raises DataError on an unknown or repeated letter
    if window < -1:
        raise ConfigError(f"MMGCN window must be >= 0 or -1 (whole dialogue), got {window}")
    lengths = _lengths_of(source)
    device = lengths.device
    n_utt = int(lengths.sum())
    utt = torch.arange(n_utt, device=device)
    sources: list[Tensor] = []
    targets: list[Tensor] = []
    kinds: list[Tensor] = []

    if intra_modal and n_utt:
        index = utterance_index(lengths)
        longest = int(lengths.max())
        pos = torch.arange(longest, device=device)
        mask = pos[None, :] < lengths[:, None]  # [B, T]
        allowed = torch.ones(longest, longest, dtype=torch.bool, device=device)
        if window >= 0:
            allowed &= (pos[:, None] - pos[None, :]).abs() <= window
        if not self_loops:
            allowed &= ~torch.eye(longest, dtype=torch.bool, device=device)
        b, i, j = (mask[:, :, None] & mask[:, None, :] & allowed[None]).nonzero(as_tuple=True)
        target, source_utt = index.offsets[b] + i, index.offsets[b] + j
        for k in range(len(mods)):
            sources.append(k * n_utt + source_utt)
            targets.append(k * n_utt + target)
            kinds.append(torch.full_like(target, MMGCN_INTRA))
    if inter_modal:
        for ks in range(len(mods)):
            for kt in range(len(mods)):
                if ks != kt:
                    sources.append(ks * n_utt + utt)
                    targets.append(kt * n_utt + utt)
                    kinds.append(torch.full_like(utt, MMGCN_INTER))

    edge_index, edge_kind = _stack_edges(sources, targets, kinds, device)
    canonical = torch.tensor([MODALITIES.index(m) for m in mods], dtype=torch.long, device=device)
    return MMGCNGraph(
        edge_index=edge_index,
        edge_kind=edge_kind,
        node_utterance=utt.repeat(len(mods)),
        node_modality=canonical.repeat_interleave(n_utt),
        num_nodes=len(mods) * n_utt,
    )
