"""Ada2I-specific behaviour: the tensor-ring contraction against the full tensor, AMW, switches, losses, recipes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from helpers import DIMS, make_batch
from merc.config import load_recipe
from merc.data.batching import Batch
from merc.errors import ConfigError
from merc.models import build_model
from merc.models.ada2i import Ada2I, TensorRingFeatureWeighting, reference_heads, ring_order
from merc.models.layers.encoders import TransformerEncoder
from merc.models.registry import check_model_arguments
from merc.training.trainer import TrainConfig

SMALL: dict[str, Any] = dict(hidden_size=8, tensor_rank=3, encoder_ffn_size=16)


def _ada2i(modalities: str = "tav", seed: int = 0, **kwargs: Any) -> Ada2I:
    torch.manual_seed(seed)
    model = build_model(
        "ada2i", in_dims={m: DIMS[m] for m in modalities}, num_classes=3, num_speakers=2, num_parties=2, **kwargs
    )
    assert isinstance(model, Ada2I)
    return model


def _cores(layer: TensorRingFeatureWeighting, m: str, z: torch.Tensor) -> torch.Tensor:
    """Eq. 4-5 written out: Theta_i = (z W1 ⊗ z W2) ⊙ (z W3 ⊗ z W4), the Kronecker product per row."""
    linear = layer.cores[m]
    assert isinstance(linear, torch.nn.Linear)
    w, b = linear.weight, linear.bias
    r = layer.rank
    q1, q2, k1, k2 = (z @ w[j * r : (j + 1) * r].T + b[j * r : (j + 1) * r] for j in range(4))
    gq = torch.stack([torch.kron(q1[i], q2[i]) for i in range(z.shape[0])]).view(-1, r, r)
    gk = torch.stack([torch.kron(k1[i], k2[i]) for i in range(z.shape[0])]).view(-1, r, r)
    return gq * gk


def _full_ring_reference(
    layer: TensorRingFeatureWeighting, batch: Batch, z: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per dialogue, the whole tensor ring over all utterance combinations, then averaged.

    Returns the open rings ``{m: [N, r, r]}`` (the full open tensor averaged over the other
    modalities' utterances) and the closed ring tensor averaged the same way ``{m: [N]}``.
    """
    mods = layer.modalities
    letters = "ijk"[: len(mods)]
    bonds = "abcd"
    opened: dict[str, list[torch.Tensor]] = {m: [] for m in mods}
    closed: dict[str, list[torch.Tensor]] = {m: [] for m in mods}
    offsets = [0, *torch.cumsum(batch.lengths, 0).tolist()]
    for d in range(batch.batch_size):
        rows = slice(offsets[d], offsets[d + 1])
        theta = {m: _cores(layer, m, z[m][rows]) for m in mods}
        for m in mods:
            ring = (m, *ring_order(mods, m))  # the same ring read from m
            # Core q: [n, bond q, bond q+1]; the last bond is left open (open) or tied to the first (closed).
            operands = [theta[n] for n in ring]
            specs = [f"{letters[q]}{bonds[q]}{bonds[q + 1]}" for q in range(len(ring))]
            full_open = torch.einsum(",".join(specs) + f"->{letters}a{bonds[len(ring)]}", *operands)
            closed_specs = specs[:-1] + [specs[-1][:2] + "a"]
            full_closed = torch.einsum(",".join(closed_specs) + f"->{letters}", *operands)
            others = tuple(range(1, len(ring)))  # utterance axes of the other modalities
            opened[m].append(full_open.mean(dim=others) if others else full_open)
            closed[m].append(full_closed.mean(dim=others) if others else full_closed)
    return ({m: torch.cat(v) for m, v in opened.items()}, {m: torch.cat(v) for m, v in closed.items()})


def test_reference_heads_and_ring_order() -> None:
    assert [reference_heads(d) for d in (768, 512, 1024, 300, 342, 12, 7)] == [6, 8, 8, 5, 6, 6, 7]
    assert [ring_order("tav", m) for m in "tav"] == [("a", "v"), ("v", "t"), ("t", "a")]
    assert ring_order("tv", "v") == ("t",) and ring_order("a", "a") == ()


@pytest.mark.parametrize("modalities", ["tav", "av", "t"])
def test_tensor_ring_contraction_matches_the_full_tensor(modalities: str) -> None:
    # Eq. 6's Theta^m_i A^(n1) A^(n2) with per-dialogue pools is the open tensor ring of
    # eq. 3 (cores Theta, eq. 4-5) over every utterance combination of the dialogue,
    # averaged over the other modalities' utterances; its trace is the closed ring.
    batch, _ = make_batch((4, 3, 1), modalities, seed=2)
    torch.manual_seed(1)
    layer = TensorRingFeatureWeighting(tuple(modalities), size=5, rank=3, beta=0.1, dropout=0.0)
    z = {m: torch.randn(batch.num_utterances, 5) for m in modalities}
    with torch.no_grad():
        for m in modalities:
            torch.testing.assert_close(layer.coefficients(m, z[m]), _cores(layer, m, z[m]))
        got = layer.rings(batch, z)
        want_open, want_closed = _full_ring_reference(layer, batch, z)
    for m in modalities:
        assert got[m].shape == (8, 3, 3)
        torch.testing.assert_close(got[m], want_open[m], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[m].diagonal(dim1=1, dim2=2).sum(-1), want_closed[m], rtol=1e-5, atol=1e-6)
    if len(modalities) == 3:
        # One ring: the three traces are the same closed tensor, averaged to each modality's axis.
        assert not torch.allclose(got["t"], got["a"])  # distinct open rings
        totals = {m: got[m][:4].diagonal(dim1=1, dim2=2).sum(-1).mean() for m in modalities}  # dialogue 0
        torch.testing.assert_close(totals["t"], totals["a"])
        torch.testing.assert_close(totals["t"], totals["v"])


def test_theta_softmax_is_eq_4_as_printed() -> None:
    torch.manual_seed(0)
    plain = TensorRingFeatureWeighting(("t",), size=5, rank=3, beta=0.0, dropout=0.0)
    soft = TensorRingFeatureWeighting(("t",), size=5, rank=3, beta=0.0, dropout=0.0, theta_softmax=True)
    soft.load_state_dict(plain.state_dict())
    z = torch.randn(6, 5)
    with torch.no_grad():
        product = plain.coefficients("t", z)
        normalised = soft.coefficients("t", z)
    torch.testing.assert_close(normalised.flatten(1).sum(-1), torch.ones(6))
    torch.testing.assert_close(normalised, torch.softmax(product.flatten(1) / 3, dim=-1).view(6, 3, 3))


def test_afw_is_eq_7_with_its_feature_loss() -> None:
    batch, _ = make_batch((4, 3), "tav", seed=3)
    torch.manual_seed(0)
    layer = TensorRingFeatureWeighting(("t", "a", "v"), size=5, rank=2, beta=0.3, dropout=0.0).train()
    z = {m: torch.randn(batch.num_utterances, 5) for m in "tav"}
    out, loss = layer(batch, z)
    rings = layer.rings(batch, z)
    distances = []
    for m in "tav":
        att = layer.weights[m](rings[m].flatten(1))
        torch.testing.assert_close(out[m], att * z[m] + 0.3 * z[m])
        distances.append((att - layer.mapping[m](z[m])).abs())
    assert loss is not None
    torch.testing.assert_close(loss, torch.cat(distances).mean())
    assert layer.eval()(batch, z)[1] is None


def test_amw_normalisation_makes_scores_scale_free() -> None:
    model = _ada2i(**SMALL).eval()
    torch.manual_seed(3)
    z = {m: torch.randn(11, 8) for m in "tav"}
    scale = torch.rand(11, 1) * 10 + 0.1  # a positive scale per utterance
    with torch.no_grad():
        scores = model.modality_scores(z)
        scaled = model.modality_scores({**z, "a": z["a"] * scale})
        for m in "tav":
            torch.testing.assert_close(scaled[m], scores[m])
            cos = scores[m] - model.fusion_bias / 3
            assert cos.abs().max() <= 1 + 1e-6
        head = model.unimodal_classifiers["v"]
        assert isinstance(head, torch.nn.Linear)
        head.weight.mul_(5.0)  # the head's norm does not matter either
        torch.testing.assert_close(model.modality_scores(z)["v"], scores["v"])
    plain = _ada2i(use_amw=False, **SMALL).eval()
    with torch.no_grad():
        before = plain.modality_scores(z)
        after = plain.modality_scores({**z, "a": z["a"] * scale})
    assert not torch.allclose(before["a"], after["a"])
    torch.testing.assert_close(after["t"], before["t"])


@pytest.mark.parametrize("use_amw", [True, False])
def test_a_modality_scaled_before_fusion_changes_nothing_only_with_amw(use_amw: bool) -> None:
    # Without AFW the fusion reads each code through AMW alone: a code scaled by a positive
    # factor gives the same prediction with the normalisation, another one without it.
    model = _ada2i(use_afw=False, use_amw=use_amw, **SMALL).eval()
    batch, _ = make_batch((1, 7, 3), "tav")
    with torch.no_grad():
        plain = model(batch).logits
        with model.before_fuse(lambda b, codes: {m: c * 6.0 if m == "a" else c for m, c in codes.items()}):
            scaled = model(batch).logits
    assert torch.allclose(plain, scaled, atol=1e-6) is use_amw


@pytest.mark.parametrize("kwargs", [{}, {"use_afw": False}, {"use_amw": False}])
def test_fused_logits_are_the_mlp_of_the_summed_unimodal_logits(kwargs: dict[str, Any]) -> None:
    model = _ada2i(**SMALL, **kwargs).eval()
    assert model.fills_unimodal_logits and model.has_unimodal_logits and model.probe_parameters() == []
    batch, _ = make_batch((1, 7, 3), "tav")
    with torch.no_grad():
        out = model(batch)
    fused = sum(out.unimodal_logits.values())
    assert model.mlp is not None
    torch.testing.assert_close(out.logits, model.mlp(fused))
    assert out.embeddings is not None and out.embeddings.shape == (11, 3 * 8)
    # mlp_hidden_size=0: the reference's prediction, Z^{m-adapt} itself, and no modal loss.
    bare = _ada2i(mlp_hidden_size=0, **SMALL, **kwargs)
    with torch.no_grad():
        out = bare.eval()(batch)
    assert bare.mlp is None
    torch.testing.assert_close(out.logits, sum(out.unimodal_logits.values()))
    assert "modal" not in bare.train()(batch).aux_losses


def test_ablation_switches_remove_exactly_their_module() -> None:
    names = {n for n, _ in _ada2i(**SMALL).named_parameters()}
    assert any(n.startswith("afw.1.") for n in names)  # two AFW layers by default
    no_afw = {n for n, _ in _ada2i(use_afw=False, **SMALL).named_parameters()}
    assert no_afw == {n for n in names if not n.startswith("afw.")}
    assert {n for n, _ in _ada2i(use_amw=False, **SMALL).named_parameters()} == names  # AMW is a normalisation
    batch, _ = make_batch((1, 7, 3), "tav")
    assert set(_ada2i(use_afw=False, **SMALL).train()(batch).aux_losses) == {"modal"}
    assert set(_ada2i(use_amw=False, **SMALL).train()(batch).aux_losses) == {"feature", "modal"}
    # AFW is the only inter-modal interaction before the heads: without it a modality's
    # unimodal logits move with that modality only.
    noisy = dataclasses.replace(batch, features={**batch.features, "v": batch.features["v"] + 2.0})
    for use_afw in (True, False):
        model = _ada2i(use_afw=use_afw, **SMALL).eval()
        with torch.no_grad():
            before, after = model(batch).unimodal_logits, model(noisy).unimodal_logits
        assert not torch.allclose(before["v"], after["v"])
        assert torch.allclose(before["t"], after["t"]) is not use_afw


def test_losses_are_named_finite_and_weighted() -> None:
    batch, _ = make_batch((1, 7, 3, 5), "tav")
    model = _ada2i(dropout=0.0, **SMALL).train()
    out = model(batch)
    assert set(out.aux_losses) == {"feature", "modal"}
    for value in out.aux_losses.values():
        assert value.dim() == 0 and torch.isfinite(value) and value > 0
    fused = sum(out.unimodal_logits.values())
    torch.testing.assert_close(out.aux_losses["modal"], F.cross_entropy(fused, batch.flat_labels))
    weighted = _ada2i(dropout=0.0, feature_loss_weight=2.0, modal_loss_weight=0.5, **SMALL).train()(batch)
    torch.testing.assert_close(weighted.aux_losses["feature"], 2.0 * out.aux_losses["feature"])
    torch.testing.assert_close(weighted.aux_losses["modal"], 0.5 * out.aux_losses["modal"])
    assert model.eval()(batch).aux_losses == {}
    # No labelled utterance: no loss term (never a NaN).
    unlabelled = dataclasses.replace(batch, labels=torch.full_like(batch.labels, -100))
    assert model.train()(unlabelled).aux_losses == {}


def test_one_modality_degenerates_to_intra_modal_weighting() -> None:
    model = _ada2i("a", dropout=0.0, **SMALL).eval()
    batch, _ = make_batch((1, 7, 3), "a")
    with torch.no_grad():
        codes = model.encode(batch)
        layer = model.afw[0]
        assert isinstance(layer, TensorRingFeatureWeighting)
        torch.testing.assert_close(layer.rings(batch, codes)["a"], layer.coefficients("a", codes["a"]))
        out = model(batch)
    assert set(out.unimodal_logits) == {"a"}
    cos = out.unimodal_logits["a"] - model.fusion_bias
    assert cos.abs().max() <= 1 + 1e-6


def test_unimodal_heads_off_hides_the_scores_only() -> None:
    batch, _ = make_batch((1, 7, 3), "tav")
    shown, hidden = _ada2i(**SMALL).eval(), _ada2i(unimodal_heads=False, **SMALL).eval()
    assert not hidden.has_unimodal_logits and not hidden.fills_unimodal_logits
    with torch.no_grad():
        a, b = shown(batch), hidden(batch)
    assert b.unimodal_logits == {}
    torch.testing.assert_close(a.logits, b.logits)


def test_modality_groups_hold_encoder_and_head() -> None:
    model = _ada2i(**SMALL)
    groups = model.modality_parameters()
    for m in "tav":
        expected = [*model.encoders[m].parameters(), model.unimodal_classifiers[m].weight]
        assert {id(p) for p in groups[m]} == {id(p) for p in expected}
    grouped = {id(p) for ps in groups.values() for p in ps}
    assert id(model.fusion_bias) not in grouped
    assert not grouped & {id(p) for p in model.afw.parameters()}


def test_encoder_defaults_follow_the_reference() -> None:
    model = _ada2i()
    assert model.code_dims == {"t": 300, "a": 300, "v": 300}
    encoder = model.encoders["t"]
    assert isinstance(encoder, TransformerEncoder)
    layer = encoder.layers[0]
    assert len(encoder.layers) == 2 and layer.self_attn.num_heads == reference_heads(DIMS["t"])
    assert layer.dropout.p == 0.5 and layer.linear1.out_features == 2048
    assert len(model.afw) == 2 and model.afw[0].rank == 11 and model.afw[0].beta == 0.01


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="beta"):
        _ada2i(beta=1.5)
    with pytest.raises(ConfigError, match="tensor_rank"):
        _ada2i(tensor_rank=0)
    with pytest.raises(ConfigError, match="dropout"):
        _ada2i(dropout=1.0)
    with pytest.raises(ConfigError, match="loss weights"):
        _ada2i(feature_loss_weight=-1.0)
    with pytest.raises(ConfigError, match="model.theta_softmax"):
        check_model_arguments("ada2i", {"theta_softmax": "maybe"})


def test_recipes_load_and_build() -> None:
    data = load_recipe("ada2i", "iemocap6")  # default.yaml: Table 2's IEMOCAP column
    TrainConfig.from_dict(data["training"])
    model = _ada2i(**check_model_arguments("ada2i", data["model"]))
    assert model.hidden_size == 300 and model.afw[0].rank == 11 and model.afw[0].beta == 0.01
    assert data["training"]["lr"] == 0.00017 and data["training"]["batch_size"] == 10
    assert data["training"]["epochs"] == 50
    assert data["ada2i-gm"] == {"alpha": 0.037}
    meld = load_recipe("ada2i", "meld7")
    TrainConfig.from_dict(meld["training"])
    model = _ada2i(**check_model_arguments("ada2i", meld["model"]))
    assert model.hidden_size == 200 and model.afw[0].rank == 6 and model.afw[0].beta == 0.55
    assert meld["training"]["lr"] == 0.00012 and meld["training"]["batch_size"] == 10
    assert meld["ada2i-gm"] == {"alpha": 0.4}
