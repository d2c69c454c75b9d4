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
