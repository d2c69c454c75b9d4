"""DAG adjacency and the DAG-GNN layer against brute-force, one-utterance-at-a-time references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from merc.data.graphs import dag_adjacency
from merc.errors import ConfigError
from merc.models.layers.dag import DAGLayer, dag_schedule, predecessor_windows


def _reference_adjacency(speakers: list[int], window: int, t: int) -> torch.Tensor:
    """DAG-ERC's ``get_adj_v1``: walk back from ``i - 1``, stop at the window-th own turn."""
    a = torch.zeros(t, t, dtype=torch.bool)
    for i, s in enumerate(speakers):
        own = 0
        for j in range(i - 1, -1, -1):
            a[i, j] = True
            if speakers[j] == s:
                own += 1
                if own == window:
                    break
    return a


def _random_batch(seed: int, lengths: list[int], parties: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    spk = torch.randint(0, parties, (len(lengths), t), generator=g)
    for b, n in enumerate(lengths):
        spk[b, n:] = 0  # padding value must not matter
    return torch.tensor(lengths), spk


@pytest.mark.parametrize("window", [1, 2, 3])
@pytest.mark.parametrize("seed", range(5))
def test_adjacency_matches_dag_erc_rule(window: int, seed: int) -> None:
    lengths, spk = _random_batch(seed, [1, 9, 4, 12, 7])
    adj, same = dag_adjacency(lengths, spk, window)
    t = spk.shape[1]
    for b, n in enumerate(lengths.tolist()):
        speakers = spk[b, :n].tolist()
        expected = torch.zeros(t, t, dtype=torch.bool)
        expected[:n, :n] = _reference_adjacency(speakers, window, n)
        assert torch.equal(adj[b], expected), (b, speakers)
        exp_same = torch.zeros(t, t, dtype=torch.bool)
        for i in range(n):
            for j in range(n):
                exp_same[i, j] = speakers[i] == speakers[j]
        assert torch.equal(same[b], exp_same)


def test_adjacency_hand_example() -> None:
    # A B B A C: C speaks first at 4, so it sees everything; the last A reaches back to A.
    adj, same = dag_adjacency(torch.tensor([5]), torch.tensor([[0, 1, 1, 0, 2]]))
    assert adj[0].nonzero().tolist() == [[1, 0], [2, 1], [3, 0], [3, 1], [3, 2], [4, 0], [4, 1], [4, 2], [4, 3]]
    assert same[0, 3, 0] and not same[0, 3, 1]


def test_bad_window_is_an_error() -> None:
    with pytest.raises(ConfigError):
        dag_adjacency(torch.tensor([2]), torch.tensor([[0, 1]]), 0)


def test_predecessor_windows() -> None:
    adj, _ = dag_adjacency(torch.tensor([5, 3]), torch.tensor([[0, 1, 1, 0, 2], [0, 0, 1, 0, 0]]))
    # Row 0 reaches back 0,1,1,3,4; row 1 reaches back 0,1,2: the max per position.
    assert predecessor_windows(adj) == [0, 1, 2, 3, 4]


def test_schedule_sorts_longest_first_and_counts_running_dialogues() -> None:
    lengths = torch.tensor([2, 5, 1, 5])
    adj, _ = dag_adjacency(lengths, torch.zeros(4, 5, dtype=torch.long))
    sched = dag_schedule(lengths, adj)
    assert sched.order.tolist() == [1, 3, 0, 2]
    assert sched.order[sched.inverse].tolist() == [0, 1, 2, 3]
    assert sched.active == [4, 3, 2, 2, 2]
    assert sched.windows == [0, 1, 1, 1, 1]


def _reference_layer(
    layer: DAGLayer,
    h_prev: torch.Tensor,
    speakers: list[int],
    window: int,
    query_w: torch.Tensor,
    query_b: torch.Tensor,
) -> torch.Tensor:
    """One dialogue, one utterance at a time, eqs. 3-6 written out per predecessor.

    For ``linear`` attention the full eq. 3 score ``w_K.H_j + w_Q.H_i + b`` is used with an
    arbitrary query half (``query_w``, ``query_b``): it must not change anything.
    """
    n = len(speakers)
    adj = _reference_adjacency(speakers, window, n)
    out: list[torch.Tensor] = []
    for i in range(n):
        x = h_prev[i]
        preds = [j for j in range(i) if adj[i, j]]
        if preds:
            if layer.attention == "linear":
                scores = torch.stack([layer.key(out[j]).squeeze(-1) + query_w @ x + query_b for j in preds])
            else:
                assert layer.query is not None
                scores = torch.stack([layer.query(x) @ layer.key(out[j]) for j in preds])
            a = F.softmax(scores, dim=0)
            msg = sum(
                a[k] * (layer.w_same if speakers[j] == speakers[i] else layer.w_other)(out[j])
                for k, j in enumerate(preds)
            )
        else:
            msg = torch.zeros_like(x)
        node = layer.gru_node(x[None], msg[None])[0]
        ctx = layer.gru_context(msg[None], x[None])[0]
        out.append(node + ctx)
    return torch.stack(out)


@pytest.mark.parametrize("attention", ["linear", "dot"])
@pytest.mark.parametrize("window", [1, 2])
def test_layer_matches_per_utterance_reference(attention: str, window: int) -> None:
    torch.manual_seed(0)
    d = 8
    layer = DAGLayer(d, attention).double()
    lengths, spk = _random_batch(3, [1, 8, 5, 11], parties=3)
    h_prev = torch.randn(len(lengths), spk.shape[1], d, dtype=torch.float64)
    adj, same = dag_adjacency(lengths, spk, window)
    out = layer(h_prev, adj, same, lengths)
    assert out.shape == h_prev.shape
    qw, qb = torch.randn(d, dtype=torch.float64), torch.randn((), dtype=torch.float64)
    for b, n in enumerate(lengths.tolist()):
        ref = _reference_layer(layer, h_prev[b, :n], spk[b, :n].tolist(), window, qw, qb)
        torch.testing.assert_close(out[b, :n], ref)


def test_layer_padding_rows_stay_finite_and_get_no_gradient_nan() -> None:
    torch.manual_seed(0)
    layer = DAGLayer(6)
    lengths, spk = _random_batch(1, [2, 9])
    h_prev = torch.randn(2, 9, 6, requires_grad=True)
    adj, same = dag_adjacency(lengths, spk)
    out = layer(h_prev, adj, same, lengths)
    assert torch.isfinite(out).all()
    assert out[0, 2:].abs().sum() == 0  # padding is never computed
    out[0, :2].sum().backward()
    assert torch.isfinite(h_prev.grad).all()
    # Dialogue 0 never reads dialogue 1.
    assert h_prev.grad[1].abs().sum() == 0


def test_unknown_attention_lists_options() -> None:
    with pytest.raises(ConfigError, match="dot"):
        DAGLayer(4, "bilinear")
