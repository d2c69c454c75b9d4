"""Mi-CGA specifics: graphs, feature estimation (eq. 10-12), losses (eq. 29-30), ablations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import DIMS, make_dataset
from merc.data.batching import collate, to_tensors
from merc.data.graphs import fully_connected_edges, normalized_dialogue_adjacency
from merc.data.missing import apply_missing
from merc.data.schema import MercDataset
from merc.errors import ConfigError
from merc.models import build_model
from merc.models.micga import reconstruction_loss

SMALL = {"hidden_size": 8, "fe_hidden": 8, "gat_hidden": 4, "cma_dim": 4, "classifier_hidden": 8}


def _model(modalities: str = "tav", seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(
        "micga", in_dims={m: DIMS[m] for m in modalities}, num_classes=3, num_parties=2, **{**SMALL, **kw}
    )


def _masked(lengths=(3, 6, 4), rate: float = 0.5, seed: int = 0) -> MercDataset:
    return apply_missing(make_dataset(lengths, "tav", seed=seed), rate, seed=seed)


def test_fully_connected_edges_stay_inside_dialogues() -> None:
    mask = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
    src, dst = fully_connected_edges(mask)
    dialogue = torch.tensor([0, 0, 0, 1, 2, 2])  # node -> dialogue, flat order
    assert src.numel() == 3 * 2 + 0 + 2 * 1
    assert (dialogue[src] == dialogue[dst]).all() and (src != dst).all()
    assert len({(int(a), int(b)) for a, b in zip(src, dst)}) == src.numel()
    assert fully_connected_edges(mask, self_loops=True).shape[1] == 9 + 1 + 4


def test_symmetric_normalised_complete_graph_is_the_dialogue_mean() -> None:
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    adj = normalized_dialogue_adjacency(mask)
    torch.testing.assert_close(adj[0], torch.full((4, 4), 0.25))
    torch.testing.assert_close(adj[1, :2, :2], torch.full((2, 2), 0.5))
    assert (adj[1, 2:] == 0).all() and (adj[1, :, 2:] == 0).all()


def test_ablation_switches_change_the_parameter_set() -> None:
    full = {n for n, _ in _model().named_parameters()}
    no_gat = {n for n, _ in _model(use_mulgat=False).named_parameters()}
    no_cma = {n for n, _ in _model(use_cma=False).named_parameters()}
    assert any(n.startswith("gat.") for n in full) and not any(n.startswith("gat") for n in no_gat)
    assert any(n.startswith("cma.") for n in full) and not any(n.startswith("cma.") for n in no_cma)
    assert {k.split(".")[1] for k in full if k.startswith("cma.")} == {
        "a_to_t",
        "t_to_a",
        "t_to_v",
        "v_to_t",
        "v_to_a",
        "a_to_v",
    }
    # Two modalities: one pair, both directions; one modality: no CMA at all.
    assert {k.split(".")[1] for k, _ in _model("ta").named_parameters() if k.startswith("cma.")} == {"a_to_t", "t_to_a"}
    assert not any(k.startswith("cma.") for k, _ in _model("v").named_parameters())
    root = {n for n, _ in _model(fe_root_weight=True).named_parameters()}
    assert root - full == {"fe_encoder.0.root.weight", "fe_encoder.1.root.weight"}


@pytest.mark.parametrize("kw", [{"use_mulgat": False}, {"use_cma": False}, {"use_mulgat": False, "use_cma": False}])
def test_ablations_still_predict(kw) -> None:
    batch = collate(to_tensors(_masked())["train"], ("t", "a", "v"))
    out = _model(**kw).train()(batch)
    assert out.logits.shape == (13, 3) and torch.isfinite(out.logits).all()


def test_reconstruction_loss_switch() -> None:
    batch = collate(to_tensors(_masked())["train"], ("t", "a", "v"))
    for kind in ("kl", "mse"):
        aux = _model(reconstruction_loss=kind).train()(batch).aux_losses
        assert set(aux) == {"reconstruction", "unimodal_probe"} and float(aux["reconstruction"].detach()) > 0
    assert set(_model(reconstruction_loss="none").train()(batch).aux_losses) == {"unimodal_probe"}
    assert set(_model(reconstruction_weight=0.0).train()(batch).aux_losses) == {"unimodal_probe"}
    assert _model().eval()(batch).aux_losses == {}  # evaluation adds nothing to the loss
    with pytest.raises(ConfigError, match="reconstruction loss"):
        _model(reconstruction_loss="l1")
    torch.manual_seed(0)
    m1 = _model(reconstruction_loss="mse", reconstruction_weight=1.0).train()
    torch.manual_seed(5)
    one = m1(batch).aux_losses["reconstruction"]
    m3 = _model(reconstruction_loss="mse", reconstruction_weight=3.0).train()
    torch.manual_seed(5)
    torch.testing.assert_close(m3(batch).aux_losses["reconstruction"], 3 * one)


def test_reconstruction_loss_values() -> None:
    recon = torch.zeros(1, 2, 2, 3)
    target = torch.ones(1, 2, 2, 3)
    entries = torch.tensor([[[True, False], [True, True]]])
    recon[0, 0, 1] = 100.0  # an excluded entry must not count
    assert float(reconstruction_loss("mse", recon, target, entries)) == pytest.approx(1.0)
    # KL(p || p_hat) is zero when the mean activation equals p, positive otherwise.
    logit = float(np.log(0.2 / 0.8))
    assert float(reconstruction_loss("kl", torch.full((1, 2, 2, 3), logit), target, entries, 0.2)) == pytest.approx(
        0.0, abs=1e-6
    )
    assert float(reconstruction_loss("kl", torch.zeros(1, 2, 2, 3), target, entries, 0.2)) > 0.1


def _perturb_fe(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in list(model.fe_encoder.parameters()) + list(model.fe_decoder.parameters()):
            p.add_(torch.randn_like(p))


def test_feature_estimation_fills_only_missing_entries_and_lambda_reads_eq_12() -> None:
    ds = make_dataset((3, 6, 4), "tav", seed=0)
    complete = collate(to_tensors(ds)["train"], ds.modalities)
    masked = collate(to_tensors(apply_missing(ds, 0.5, seed=0))["train"], ds.modalities)
    for lam, changes_masked in ((0.5, True), (1.0, False)):
        model = _model(smoothing_lambda=lam).eval()
        with torch.no_grad():
            before_c, before_m = model(complete).logits, model(masked).logits
            _perturb_fe(model)
            after_c, after_m = model(complete).logits, model(masked).logits
        # Nothing missing: the FE output is never used, so its weights do not matter.
        torch.testing.assert_close(before_c, after_c)
        # lambda = 1: X_FE = X_miss (zero at missing entries), the reconstruction is unused.
        assert (not torch.allclose(before_m, after_m)) == changes_masked


def test_features_at_missing_entries_are_never_read() -> None:
    batch = collate(to_tensors(_masked())["train"], ("t", "a", "v"))
    garbage = {m: f.clone() for m, f in batch.features.items()}
    for k, m in enumerate(("t", "a", "v")):
        missing = ~batch.availability[..., k] & batch.mask
        garbage[m][missing] = 1e3
    model = _model(reconstruction_loss="mse").train()
    torch.manual_seed(1)
    ref = model(batch)
    batch.features = garbage
    torch.manual_seed(1)
    out = model(batch)
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.aux_losses["reconstruction"], ref.aux_losses["reconstruction"])


def test_train_mask_rate_hides_entries_in_training_only() -> None:
    batch = collate(to_tensors(make_dataset((4, 6), "tav", seed=0))["train"], ("t", "a", "v"))
    plain, masked = _model(seed=2), _model(seed=2, train_mask_rate=0.5)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(batch).logits, masked.eval()(batch).logits)
        torch.manual_seed(0)
        a = plain.train()(batch)
        torch.manual_seed(0)
        b = masked.train()(batch)
    assert not torch.allclose(a.logits, b.logits)
    assert float(b.aux_losses["reconstruction"].detach()) > 0


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ConfigError, match="smoothing_lambda"):
        _model(smoothing_lambda=1.5)
    with pytest.raises(ConfigError, match="sparsity"):
        _model(sparsity=0.0)
    with pytest.raises(ConfigError, match="even"):
        _model(hidden_size=7)


def test_gat_skip_feeds_the_utterance_features_to_the_classifier() -> None:
    """gat_skip=True: the classifier reads [X_GAT, X_FE]; an utterance's own code then
    reaches its logits directly, not only through the dialogue-wide attention."""
    from merc.models import build_model

    torch.manual_seed(0)
    plain = build_model("micga", in_dims={"t": 6}, num_classes=3, hidden_size=8, gat_hidden=4, classifier_hidden=5)
    torch.manual_seed(0)
    skip = build_model(
        "micga", in_dims={"t": 6}, num_classes=3, hidden_size=8, gat_hidden=4, classifier_hidden=5, gat_skip=True
    )
    d_bar = skip.num_parties + 8
    assert skip.classifier_hidden.in_features == plain.classifier_hidden.in_features + d_bar
    # Without MulGAT the option has nothing to skip.
    none = build_model("micga", in_dims={"t": 6}, num_classes=3, hidden_size=8, use_mulgat=False, gat_skip=True)
    assert none.classifier_hidden.in_features == none.num_parties + 8
