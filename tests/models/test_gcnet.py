"""GCNet specifics: window graphs and relation types, reconstruction loss, switches."""

from __future__ import annotations

import pytest
import torch

from helpers import DIMS, make_dataset
from merc.data.batching import collate, to_tensors
from merc.data.graphs import window_edges
from merc.data.missing import apply_missing
from merc.data.schema import MercDataset
from merc.errors import ConfigError
from merc.models import build_model

SMALL = {"hidden_size": 8}


def _model(modalities: str = "tav", seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(
        "gcnet", in_dims={m: DIMS[m] for m in modalities}, num_classes=3, **{"num_parties": 2, **SMALL, **kw}
    )


def _batch(ds: MercDataset):
    return collate(to_tensors(ds)["train"], ds.modalities)


def test_window_edges_counts_relations_and_dialogue_boundaries() -> None:
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    parties = torch.tensor([[0, 1, 0, 1, 1, 0], [1, 0, 1, 0, 0, 0]])
    (src, dst), temporal, speaker = window_edges(mask, parties, 2, 1, 2)
    dialogue = torch.tensor([0] * 6 + [1] * 3)
    assert (dialogue[src] == dialogue[dst]).all()
    offset = src - dst  # j - i within a dialogue (consecutive node ids)
    assert offset.min() == -2 and offset.max() == 1
    # Dialogue of 6 with window [-2, +1]: sum over i of |{j : i-2 <= j <= i+1}|.
    expected = sum(min(i + 1, 5) - max(i - 2, 0) + 1 for i in range(6)) + sum(
        min(i + 1, 2) - max(i - 2, 0) + 1 for i in range(3)
    )
    assert src.numel() == expected
    torch.testing.assert_close(temporal, torch.sign(offset) + 1)
    flat_party = parties[mask]
    torch.testing.assert_close(speaker, flat_party[dst] * 2 + flat_party[src])
    # -1: unbounded; the whole dialogue (self loops included).
    (s_all, _), _, _ = window_edges(mask, parties, -1, -1, 2)
    assert s_all.numel() == 36 + 9


def test_relation_counts_follow_num_parties() -> None:
    model = _model(num_parties=3)
    assert model.graphs["speaker"].conv1.num_relations == 9
    assert model.graphs["temporal"].conv1.num_relations == 3


def test_reconstruction_loss_switch_and_scale() -> None:
    batch = _batch(apply_missing(make_dataset((3, 6, 4), "tav"), 0.4, seed=0))
    model = _model().train()
    torch.manual_seed(0)
    aux = model(batch).aux_losses
    assert set(aux) == {"reconstruction"} and float(aux["reconstruction"].detach()) > 0
    assert _model(reconstruction_loss="none").train()(batch).aux_losses == {}
    assert model.eval()(batch).aux_losses == {}
    with pytest.raises(ConfigError, match="reconstruction loss"):
        _model(reconstruction_loss="kl")


def test_reconstruction_loss_matches_gcnet_formula() -> None:
    batch = _batch(apply_missing(make_dataset((3, 5), "tav", seed=1), 0.4, seed=3))
    model = _model(dropout=0.0).train()
    out = model(batch)
    recon = model.reconstruction(out.embeddings)
    expected, start = 0.0, 0
    avail = batch.flatten(batch.availability)
    for k, m in enumerate(("t", "a", "v")):
        d = DIMS[m]
        err = ((recon[:, start : start + d] - batch.flatten(batch.features[m])) ** 2).sum(-1) / d
        expected = expected + (err * avail[:, k]).sum()
        start += d
    torch.testing.assert_close(out.aux_losses["reconstruction"], expected / batch.num_utterances)


def test_features_at_missing_entries_are_never_read() -> None:
    batch = _batch(apply_missing(make_dataset((4, 6, 3), "tav", seed=2), 0.5, seed=0))
    model = _model().train()
    torch.manual_seed(1)
    ref = model(batch)
    for k, m in enumerate(("t", "a", "v")):
        batch.features[m][~batch.availability[..., k] & batch.mask] = 1e3
    torch.manual_seed(1)
    out = model(batch)
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.aux_losses["reconstruction"], ref.aux_losses["reconstruction"])


def test_time_attention_adds_parameters_and_runs() -> None:
    base = {n for n, _ in _model().named_parameters()}
    attn_model = _model(time_attention=True)
    extra = {n for n, _ in attn_model.named_parameters()} - base
    assert extra and all(".attention." in n for n in extra)
    out = attn_model.train()(_batch(make_dataset((1, 4, 6))))
    assert out.logits.shape == (11, 3) and torch.isfinite(out.logits).all()


def test_train_mask_rate_acts_in_training_only() -> None:
    batch = _batch(make_dataset((4, 6), "tav"))
    plain, masked = _model(seed=2), _model(seed=2, train_mask_rate=0.5)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(batch).logits, masked.eval()(batch).logits)
        torch.manual_seed(0)
        x = plain.train()(batch).logits
        torch.manual_seed(0)
        y = masked.train()(batch).logits
    assert not torch.allclose(x, y)


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ConfigError, match="windows"):
        _model(window_past=-2)
    with pytest.raises(ConfigError, match="train_mask_rate"):
        _model(train_mask_rate=2.0)
