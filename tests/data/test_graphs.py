"""Graph builders against plain Python references (one loop per dialogue and utterance).

The CORECT reference mirrors the authors' ``edge_perms`` (window slice
``array[max(0, i - P) : min(L, i + F)]``, the window owner as edge source); the DAG
reference mirrors DAG-ERC's ``get_adj_v1``.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from helpers import make_batch
from merc.data.graphs import (
    CORECT_NUM_RELATIONS,
    build_corect_graph,
    corect_relation_names,
    cross_modal_relation,
    dag_adjacency,
    temporal_relation,
    utterance_index,
)
from merc.data.schema import MODALITIES
from merc.errors import ConfigError, DataError

ORDERS = [p for r in (1, 2, 3) for c in itertools.combinations("tav", r) for p in itertools.permutations(c)]


def _window(i: int, length: int, past: int, future: int) -> list[int]:
    """The reference's ``eff_array`` for owner ``i`` (``-1`` = unbounded)."""
    lo = 0 if past < 0 else max(0, i - past)
    hi = length if future < 0 else min(length, i + future)
    return list(range(length))[lo:hi]


def corect_reference(
    lengths: list[int],
    mods: tuple[str, ...],
    past: int,
    future: int,
    temporal: bool,
    multimodal: bool,
    self_loops: bool,
    owner: str,
) -> list[tuple[int, int, int]]:
    n_total = sum(lengths)
    edges = []
    offset = 0
    for length in lengths:
        for i in range(length):
            for k, m in enumerate(mods):
                node = k * n_total + offset + i
                for kt, mt in enumerate(mods):
                    if (m == mt and self_loops) or (m != mt and multimodal):
                        edges.append((node, kt * n_total + offset + i, cross_modal_relation(m, mt)))
                if not temporal:
                    continue
                for j in _window(i, length, past, future):
                    if j == i:
                        continue
                    other = k * n_total + offset + j
                    rel = temporal_relation(m, "past" if j < i else "future")
                    edges.append((node, other, rel) if owner == "source" else (other, node, rel))
        offset += length
    return sorted(edges)


def dag_reference(lengths: list[int], speakers: list[list[int]], turns: int | None) -> list[tuple[int, int, int]]:
    edges = []
    offset = 0
    for length, spk in zip(lengths, speakers, strict=True):
        for i in range(length):
            count = 0
            for j in range(i - 1, -1, -1):
                edges.append((offset + j, offset + i, int(spk[j] == spk[i])))
                if spk[j] == spk[i]:
                    count += 1
                    if turns is not None and count == turns:
                        break
        offset += length
    return sorted(edges)


def _triples(edge_index: torch.Tensor, kinds: torch.Tensor) -> list[tuple[int, int, int]]:
    return sorted(zip(edge_index[0].tolist(), edge_index[1].tolist(), kinds.tolist(), strict=True))


def test_relation_ids_are_stable_and_distinct() -> None:
    names = corect_relation_names()
    assert CORECT_NUM_RELATIONS == 15 and len(set(names)) == 15 and "" not in names
    ids = [cross_modal_relation(s, t) for s in MODALITIES for t in MODALITIES]
    ids += [temporal_relation(m, k) for m in MODALITIES for k in ("past", "future")]
    assert sorted(ids) == list(range(15))
    # The id of a modality pair does not depend on which other modalities exist.
    g_av = build_corect_graph(torch.tensor([2]), "av", use_temporal=False)
    g_tav = build_corect_graph(torch.tensor([2]), "tav", use_temporal=False)
    assert set(g_av.edge_type.tolist()) == {cross_modal_relation(s, t) for s in "av" for t in "av"}
    assert set(g_av.edge_type.tolist()) < set(g_tav.edge_type.tolist())
    with pytest.raises(ConfigError, match="past"):
        temporal_relation("t", "present")


@pytest.mark.parametrize("seed", range(12))
def test_corect_graph_matches_reference(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(8):
        lengths = [rng.choice([1, 1, 2, 3, rng.randint(4, 25)]) for _ in range(rng.randint(1, 5))]
        mods = rng.choice(ORDERS)
        past = rng.choice([-1, 0, 1, 2, 5, 11, 40])
        future = rng.choice([-1, 0, 1, 2, 4, 9, 40])
        flags = dict(
            temporal=rng.random() < 0.8,
            multimodal=rng.random() < 0.8,
            self_loops=rng.random() < 0.8,
            owner=rng.choice(["source", "target"]),
        )
        g = build_corect_graph(
            torch.tensor(lengths),
            mods,
            past=past,
            future=future,
            use_temporal=flags["temporal"],
            use_multimodal=flags["multimodal"],
            use_self_loops=flags["self_loops"],
            window_owner=flags["owner"],
        )
        expected = corect_reference(lengths, mods, past, future, **flags)
        got = _triples(g.edge_index, g.edge_type)
        assert got == expected, (lengths, mods, past, future, flags)
        assert len(set(got)) == len(got), "duplicate edges"
        assert g.edge_index.dtype == torch.long and g.edge_type.dtype == torch.long


def test_corect_graph_node_ids_and_batch_input() -> None:
    batch, _ = make_batch((1, 7, 3), "tav")
    g = build_corect_graph(batch, batch.modalities)
    n = batch.num_utterances
    assert g.num_nodes == 3 * n
    assert g.node_utterance.tolist() == list(range(n)) * 3
    assert g.node_modality.tolist() == [0] * n + [1] * n + [2] * n
    same = build_corect_graph(batch.lengths, batch.modalities)
    assert _triples(g.edge_index, g.edge_type) == _triples(same.edge_index, same.edge_type)
    # Every edge stays inside one dialogue, and temporal edges inside one modality.
    src, dst = g.edge_index
    dialogue = batch.utterance_dialogue
    assert torch.equal(dialogue[g.node_utterance[src]], dialogue[g.node_utterance[dst]])
    temporal = g.edge_type >= 9
    assert torch.equal(g.node_modality[src[temporal]], g.node_modality[dst[temporal]])


def test_length_one_dialogues_have_only_same_utterance_edges() -> None:
    g = build_corect_graph(torch.tensor([1, 1]), "tav", past=11, future=9)
    assert g.edge_index.shape == (2, 18)  # 2 utterances x 3 x 3 modality pairs
    assert torch.equal(g.node_utterance[g.edge_index[0]], g.node_utterance[g.edge_index[1]])
    g1 = build_corect_graph(torch.tensor([1]), "t", use_self_loops=False, use_multimodal=True)
    assert g1.edge_index.shape == (2, 0) and g1.edge_type.shape == (0,)


def test_corect_graph_rejects_bad_input() -> None:
    with pytest.raises(DataError):
        build_corect_graph(torch.tensor([2]), "tx")
    with pytest.raises(DataError, match="repeated"):
        build_corect_graph(torch.tensor([2]), "tt")
    with pytest.raises(ConfigError, match="window owner"):
        build_corect_graph(torch.tensor([2]), "t", window_owner="both")
    with pytest.raises(ValueError, match="at least one"):
        build_corect_graph(torch.tensor([2, 0]), "t")


@pytest.mark.parametrize("seed", range(12))
def test_dag_matches_dag_erc_reference(seed: int) -> None:
    rng = random.Random(100 + seed)
    for _ in range(8):
        lengths = [rng.choice([1, 2, 3, rng.randint(4, 30)]) for _ in range(rng.randint(1, 5))]
        parties = rng.randint(1, 4)
        speakers = [[rng.randrange(parties) for _ in range(n)] for n in lengths]
        pad = max(lengths) + rng.randint(0, 2)  # wider padding than needed must not matter
        spk = torch.full((len(lengths), pad), 0, dtype=torch.long)
        for b, s in enumerate(speakers):
            spk[b, : len(s)] = torch.tensor(s)
        turns = rng.choice([1, 1, 2, 3, None])
        adj, same = dag_adjacency(torch.tensor(lengths), spk, speaker_window=turns or 10_000)
        assert _dense_triples(adj, same, lengths) == dag_reference(lengths, speakers, turns)


def _dense_triples(adj: torch.Tensor, same: torch.Tensor, lengths: list[int]) -> list[tuple[int, int, int]]:
    """Dense ``[B, T, T]`` masks as (source, target, same speaker) over flat utterance ids."""
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    b, i, j = adj.nonzero(as_tuple=True)
    return sorted(
        (offsets[bb] + jj, offsets[bb] + ii, int(same[bb, ii, jj]))
        for bb, ii, jj in zip(b.tolist(), i.tolist(), j.tolist(), strict=True)
    )


def test_dag_window_rule_by_hand() -> None:
    # Speakers A B A B A: utterance 4 (A) looks back to 2 (its last A turn), and with
    # two turns to 0; utterance 1 (B) has no earlier B turn, so it links all predecessors.
    spk = torch.tensor([[0, 1, 0, 1, 0]])
    adj, _ = dag_adjacency(torch.tensor([5]), spk)
    assert adj[0, 4].nonzero().squeeze(1).tolist() == [2, 3]
    adj2, _ = dag_adjacency(torch.tensor([5]), spk, speaker_window=2)
    assert adj2[0, 4].nonzero().squeeze(1).tolist() == [0, 1, 2, 3]
    assert not adj[0, 0].any()
    with pytest.raises(ConfigError):
        dag_adjacency(torch.tensor([5]), spk, speaker_window=0)


def test_dag_stays_inside_dialogues_and_ignores_padding() -> None:
    batch, _ = make_batch((1, 7, 3), "t")
    adj, same = dag_adjacency(batch.lengths, batch.parties)
    assert not (adj & ~batch.mask[:, :, None]).any() and not (adj & ~batch.mask[:, None, :]).any()
    assert torch.equal(adj, adj.tril(-1))  # acyclic: edges only from earlier utterances
    assert torch.equal(same & adj, (batch.parties[:, :, None] == batch.parties[:, None, :]) & adj)


def test_utterance_index_matches_batch_maps() -> None:
    batch, _ = make_batch((4, 1, 6), "t")
    idx = utterance_index(batch.lengths)
    assert torch.equal(idx.dialogue, batch.utterance_dialogue)
    assert torch.equal(idx.position, batch.utterance_position)
    assert idx.offsets.tolist() == [0, 4, 5]


# -- DialogueGCN's speaker-level graph ------------------------------------------------------
from merc.data.graphs import dialoguegcn_graph, dialoguegcn_num_relations, dialoguegcn_relation  # noqa: E402


def dialoguegcn_reference(
    speakers: list[list[int]], past: int, future: int, num_parties: int, owner: str
) -> list[tuple[int, int, int, int]]:
    """(source, target, relation, owner) of every edge, one loop per dialogue, owner and window slot.

    The window is the authors' ``edge_perms`` slice; relations come from a string-keyed
    table filled as their ``edge_type_mapping`` (``'0'`` iff source before target).
    """
    mapping: dict[str, int] = {}
    for a in range(num_parties):
        for b in range(num_parties):
            mapping[f"{a}{b}0"] = len(mapping)
            mapping[f"{a}{b}1"] = len(mapping)
    edges = []
    offset = 0
    for spk in speakers:
        length = len(spk)
        for j in range(length):
            lo = 0 if past == -1 else max(0, j - past)
            hi = length if future == -1 else min(length, j + future + 1)
            for k in range(lo, hi):
                src, tgt = (j, k) if owner == "source" else (k, j)
                relation = mapping[f"{spk[src]}{spk[tgt]}{'0' if src < tgt else '1'}"]
                edges.append((offset + src, offset + tgt, relation, offset + j))
        offset += length
    return sorted(edges)


@pytest.mark.parametrize("seed", range(12))
def test_dialoguegcn_graph_matches_loop_reference(seed: int) -> None:
    rng = random.Random(300 + seed)
    for _ in range(6):
        lengths = [rng.choice([1, 2, 3, rng.randint(4, 40)]) for _ in range(rng.randint(1, 5))]
        num_parties = rng.randint(1, 4)
        speakers = [[rng.randrange(num_parties) for _ in range(n)] for n in lengths]
        pad = max(lengths) + rng.randint(0, 2)  # wider padding than needed must not matter
        mask = torch.zeros(len(lengths), pad, dtype=torch.bool)
        parties = torch.full((len(lengths), pad), num_parties + 5, dtype=torch.long)  # junk at padding
        for b, s in enumerate(speakers):
            mask[b, : len(s)] = True
            parties[b, : len(s)] = torch.tensor(s)
        past, future = rng.choice([-1, 0, 1, 3, 10]), rng.choice([-1, 0, 2, 10])
        owner = rng.choice(["source", "target"])
        g = dialoguegcn_graph(mask, parties, past, future, num_parties, window_owner=owner)
        got = sorted(zip(g.edge_index[0].tolist(), g.edge_index[1].tolist(), g.edge_type.tolist(), g.owner.tolist()))
        assert got == dialoguegcn_reference(speakers, past, future, num_parties, owner)
        assert int(g.edge_type.max()) < dialoguegcn_num_relations(num_parties)


def test_dialoguegcn_graph_by_hand() -> None:
    # Speakers A B A, window one back and none ahead, owner = source (the authors' code):
    # node 1 (B) owns {0, 1}: edges 1->0 (B->A, source after target) and 1->1 (self).
    mask = torch.tensor([[True, True, True]])
    g = dialoguegcn_graph(mask, torch.tensor([[0, 1, 0]]), 1, 0, 2)
    edges = sorted(zip(g.edge_index[0].tolist(), g.edge_index[1].tolist(), g.edge_type.tolist()))
    assert edges == [(0, 0, 1), (1, 0, 5), (1, 1, 7), (2, 1, 3), (2, 2, 1)]
    assert dialoguegcn_relation(1, 0, False, 2) == 5 and dialoguegcn_relation(0, 1, False, 2) == 3
    # The self edge is "source not before target" (the code's else branch), never type 2*k.
    self_loop = g.edge_index[0] == g.edge_index[1]
    assert (g.edge_type[self_loop] % 2 == 1).all()
    # Owner = target: node i aggregates its own window; same window sizes swap the edges.
    t = dialoguegcn_graph(mask, torch.tensor([[0, 1, 0]]), 0, 1, 2, window_owner="target")
    assert sorted(zip(t.edge_index[0].tolist(), t.edge_index[1].tolist(), t.edge_type.tolist())) == edges
    assert torch.equal(t.owner, t.edge_index[1]) and torch.equal(g.owner, g.edge_index[0])


def test_dialoguegcn_graph_rejects_bad_settings_and_too_many_speakers() -> None:
    mask = torch.tensor([[True, True]])
    with pytest.raises(ConfigError, match="windows"):
        dialoguegcn_graph(mask, torch.tensor([[0, 1]]), -2, 1)
    with pytest.raises(ConfigError, match="window owner"):
        dialoguegcn_graph(mask, torch.tensor([[0, 1]]), 1, 1, window_owner="both")
    with pytest.raises(DataError, match="speakers"):
        dialoguegcn_graph(mask, torch.tensor([[0, 2]]), 1, 1, num_parties=2)


# -- MMGCN's multimodal graph (mmgcn_graph) -------------------------------------------------
def mmgcn_reference(
    lengths: list[int], mods: str, intra: bool, inter: bool, self_loops: bool, window: int
) -> list[tuple[int, int, int]]:
    """(source, target, kind) of MMGCN's graph, one loop per dialogue, utterance and modality pair
    (the authors' ``create_big_adj``: full intra-modal blocks with their diagonal, inter-modal
    diagonals between every two modality blocks)."""
    from merc.data.graphs import MMGCN_INTER, MMGCN_INTRA

    n = sum(lengths)
    edges = []
    offset = 0
    for length in lengths:
        for i in range(length):
            for k in range(len(mods)):
                for j in range(length):
                    near = window < 0 or abs(i - j) <= window
                    if intra and near and (i != j or self_loops):
                        edges.append((k * n + offset + j, k * n + offset + i, MMGCN_INTRA))
                for k2 in range(len(mods)):
                    if inter and k2 != k:
                        edges.append((k2 * n + offset + i, k * n + offset + i, MMGCN_INTER))
        offset += length
    return sorted(edges)


@pytest.mark.parametrize("seed", range(10))
def test_mmgcn_graph_matches_reference(seed: int) -> None:
    from merc.data.graphs import mmgcn_graph

    rng = random.Random(100 + seed)
    for _ in range(8):
        lengths = [rng.choice([1, 1, 2, 3, rng.randint(4, 20)]) for _ in range(rng.randint(1, 5))]
        mods = "".join(rng.choice(ORDERS))
        flags = dict(
            intra=rng.random() < 0.8,
            inter=rng.random() < 0.8,
            self_loops=rng.random() < 0.8,
            window=rng.choice([-1, -1, 0, 1, 3, 30]),
        )
        g = mmgcn_graph(
            torch.tensor(lengths),
            mods,
            intra_modal=flags["intra"],
            inter_modal=flags["inter"],
            self_loops=flags["self_loops"],
            window=flags["window"],
        )
        got = _triples(g.edge_index, g.edge_kind)
        assert got == mmgcn_reference(lengths, mods, **flags), (lengths, mods, flags)
        assert len(set(got)) == len(got), "duplicate edges"
        assert g.num_nodes == len(mods) * sum(lengths)
        assert g.edge_index.dtype == torch.long and g.edge_kind.dtype == torch.long


def test_mmgcn_graph_node_layout_and_batch_input() -> None:
    from merc.data.graphs import MMGCN_EDGE_KINDS, MMGCN_INTER, MMGCN_INTRA, mmgcn_graph

    batch, _ = make_batch((1, 7, 3), "tav")
    g = mmgcn_graph(batch, "tav")
    n = batch.num_utterances
    assert g.node_utterance.tolist() == list(range(n)) * 3
    assert g.node_modality.tolist() == [0] * n + [1] * n + [2] * n
    assert _triples(g.edge_index, g.edge_kind) == _triples(*mmgcn_graph(batch.lengths, "tav")[:2])
    # Complete per dialogue and modality (self loops included), one inter edge per ordered modality pair.
    intra = int((g.edge_kind == MMGCN_INTRA).sum())
    assert intra == 3 * (1 + 49 + 9) and int((g.edge_kind == MMGCN_INTER).sum()) == 6 * n
    src, dst = g.edge_index
    dialogue = batch.utterance_dialogue
    assert torch.equal(dialogue[g.node_utterance[src]], dialogue[g.node_utterance[dst]])
    inter = g.edge_kind == MMGCN_INTER
    assert torch.equal(g.node_utterance[src[inter]], g.node_utterance[dst[inter]])
    assert (g.node_modality[src[inter]] != g.node_modality[dst[inter]]).all()
    assert torch.equal(g.node_modality[src[~inter]], g.node_modality[dst[~inter]])
    assert MMGCN_EDGE_KINDS[MMGCN_INTRA] == "intra" and MMGCN_EDGE_KINDS[MMGCN_INTER] == "inter"
    # Undirected: every edge comes with its reverse.
    assert sorted(zip(src.tolist(), dst.tolist())) == sorted(zip(dst.tolist(), src.tolist()))


def test_mmgcn_graph_edge_cases() -> None:
    from merc.data.graphs import mmgcn_graph

    single = mmgcn_graph(torch.tensor([1]), "t", self_loops=False)
    assert single.edge_index.shape == (2, 0) and single.edge_kind.shape == (0,)
    assert mmgcn_graph(torch.tensor([1]), "t").edge_index.tolist() == [[0], [0]]
    assert mmgcn_graph(torch.tensor([4]), "av", intra_modal=False).edge_index.shape == (2, 8)
    with pytest.raises(ConfigError, match="window"):
        mmgcn_graph(torch.tensor([2]), "t", window=-2)
    with pytest.raises(DataError):
        mmgcn_graph(torch.tensor([2]), "tt")
