"""DialogueRNN's recurrence against a per-dialogue, per-utterance reference written as the authors' cell."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from merc.errors import ConfigError
from merc.models.layers.party_rnn import PartyRNN, reverse_padded

DM, DG, DP, DE = 5, 7, 6, 4


def _rnn(listener_state: bool = False, context_attention: str = "general", seed: int = 0) -> PartyRNN:
    torch.manual_seed(seed)
    return PartyRNN(DM, DG, DP, DE, listener_state, context_attention).double().eval()


def _batch(lengths: list[int], parties: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    u = torch.randn(len(lengths), t, DM, generator=g, dtype=torch.float64)
    spk = torch.randint(0, parties, (len(lengths), t), generator=g)
    for b, n in enumerate(lengths):
        u[b, n:] = 0
        spk[b, n:] = 0
    return u, spk, torch.tensor(lengths)


def _reference(rnn: PartyRNN, u: torch.Tensor, speakers: list[int], num_parties: int) -> torch.Tensor:
    """One dialogue, one utterance at a time, as DialogueRNNCell in the authors' code.

    Every party's speaker update is computed and the speaker's is kept through the party
    mask (``q = q_l * (1 - mask) + q_s * mask``), as the code does.
    """
    history: list[torch.Tensor] = []
    q = u.new_zeros(num_parties, DP)
    e = u.new_zeros(DE)
    out = []
    for t, s in enumerate(speakers):
        g_prev = history[-1] if history else u.new_zeros(DG)
        g = rnn.global_cell(torch.cat([u[t], q[s]])[None], g_prev[None])[0]
        if history:
            past = torch.stack(history)  # [t, D_g]
            if rnn.context_attention == "general":
                score = past @ rnn.context_score(u[t])
            else:
                score = rnn.context_score(past).squeeze(-1)
            c = F.softmax(score, dim=0) @ past
        else:
            c = u.new_zeros(DG)
        q_speak = rnn.party_cell(torch.cat([u[t], c]).expand(num_parties, -1), q)
        if rnn.listener_cell is not None:
            q_listen = rnn.listener_cell(torch.cat([u[t], q_speak[s]]).expand(num_parties, -1), q)
        else:
            q_listen = q
        mask = F.one_hot(torch.tensor(s), num_parties).to(u.dtype)[:, None]
        q = q_listen * (1 - mask) + q_speak * mask
        e = rnn.emotion_cell(q[s][None], e[None])[0]
        history.append(g)
        out.append(e)
    return torch.stack(out)


@pytest.mark.parametrize("listener_state", [False, True])
@pytest.mark.parametrize("context_attention", ["general", "simple"])
def test_matches_per_utterance_reference(listener_state: bool, context_attention: str) -> None:
    rnn = _rnn(listener_state, context_attention)
    u, spk, lengths = _batch([1, 9, 4, 12, 6], parties=3)
    with torch.no_grad():
        out = rnn(u, spk, lengths)
        assert out.shape == (5, 12, DE)
        for b, n in enumerate(lengths.tolist()):
            ref = _reference(rnn, u[b, :n], spk[b, :n].tolist(), 3)
            torch.testing.assert_close(out[b, :n], ref)
            assert out[b, n:].abs().sum() == 0  # padding is never computed


def test_first_utterance_by_hand() -> None:
    # t = 1: no context (c_1 = 0), all states start at zero.
    rnn = _rnn()
    u, spk, lengths = _batch([3], parties=2, seed=4)
    with torch.no_grad():
        out = rnn(u, spk, lengths)
        q1 = rnn.party_cell(torch.cat([u[0, 0], torch.zeros(DG, dtype=torch.float64)])[None])
        e1 = rnn.emotion_cell(q1)
    torch.testing.assert_close(out[0, 0], e1[0])


def test_listener_update_moves_the_silent_party() -> None:
    # Dialogue A B A. Without listener updates B's first turn reads its initial (zero)
    # state; with them, A's first turn already moved B's state, so B's turn differs.
    u, _, lengths = _batch([3], parties=2, seed=2)
    spk = torch.tensor([[0, 1, 0]])
    plain, listening = _rnn(False), _rnn(True)
    listening.load_state_dict(plain.state_dict(), strict=False)  # the same shared cells
    with torch.no_grad():
        a, b = plain(u, spk, lengths), listening(u, spk, lengths)
    torch.testing.assert_close(a[0, 0], b[0, 0])
    assert not torch.allclose(a[0, 1], b[0, 1])


def test_speakers_matter_and_outputs_are_causal() -> None:
    rnn = _rnn()
    u, spk, lengths = _batch([8], parties=2, seed=3)
    alternating = torch.arange(8)[None] % 2
    with torch.no_grad():
        ref = rnn(u, alternating, lengths)
        # One speaker throughout: every turn reads the previous turn's party state.
        one = rnn(u, torch.zeros_like(alternating), lengths)
        torch.testing.assert_close(one[0, 0], ref[0, 0])
        assert not torch.allclose(one[0, 1:], ref[0, 1:])
        later = u.clone()
        later[0, 5:] += 1.0
        moved = rnn(later, alternating, lengths)
    torch.testing.assert_close(moved[0, :5], ref[0, :5])
    assert not torch.allclose(moved[0, 5:], ref[0, 5:])


def test_one_step_per_position_for_all_dialogues(monkeypatch: pytest.MonkeyPatch) -> None:
    rnn = _rnn()
    rows: list[int] = []
    original = rnn.emotion_cell.forward

    def counting(x, h=None):  # type: ignore[no-untyped-def]
        rows.append(x.shape[0])
        return original(x, h)

    monkeypatch.setattr(rnn.emotion_cell, "forward", counting)
    lengths = [5, 9, 3, 9, 1]
    u, spk, lengths_t = _batch(lengths, parties=4)
    with torch.no_grad():
        rnn(u, spk, lengths_t)
    assert rows == [sum(n > i for n in lengths) for i in range(9)]


def test_padding_and_batch_mates_do_not_matter() -> None:
    rnn = _rnn(listener_state=True)
    u, spk, lengths = _batch([4, 10, 7], parties=5, seed=1)
    with torch.no_grad():
        together = rnn(u, spk, lengths)
        for b, n in enumerate(lengths.tolist()):
            alone = rnn(u[b : b + 1, :n], spk[b : b + 1, :n], lengths[b : b + 1])
            torch.testing.assert_close(together[b, :n], alone[0])


def test_padding_gets_no_gradient_and_other_dialogues_none() -> None:
    rnn = PartyRNN(DM, DG, DP, DE, listener_state=True)
    u, spk, lengths = _batch([3, 8], parties=2)
    u = u.float().requires_grad_()
    out = rnn(u, spk, lengths)
    out[0, :3].sum().backward()
    assert u.grad is not None and torch.isfinite(u.grad).all()
    assert u.grad[0, 3:].abs().sum() == 0 and u.grad[1].abs().sum() == 0


def test_reverse_padded_is_its_own_inverse() -> None:
    x = torch.arange(12.0).reshape(2, 3, 2)
    lengths = torch.tensor([3, 2])
    rev = reverse_padded(x, lengths)
    assert rev[0].tolist() == [[4.0, 5.0], [2.0, 3.0], [0.0, 1.0]]
    assert rev[1].tolist() == [[8.0, 9.0], [6.0, 7.0], [10.0, 11.0]]  # padding stays put
    torch.testing.assert_close(reverse_padded(rev, lengths), x)


def test_unknown_context_attention_lists_options() -> None:
    with pytest.raises(ConfigError, match="general"):
        PartyRNN(DM, DG, DP, DE, context_attention="concat")
