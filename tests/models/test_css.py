"""CSS (Lyu et al., AAAI 2026): SPF against the full-tensor polynomial it factorises, the signed
square root, the three losses, every ablation switch, the shared trunk PGM balances, the recipes."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import DIMS, make_batch
from merc.errors import ConfigError
from merc.models import build_model
from merc.models.css import CSS, SynergisticPolynomialFusion, signed_square_root
from merc.models.layers.positional import sinusoidal_positions

SMALL = {"hidden_size": 16, "num_heads": 2, "ffn_size": 16, "rank": 4, "dropout": 0.0}


def _css(modalities: str = "tav", **kwargs: object) -> CSS:
    torch.manual_seed(0)
    model = build_model(
        "css", in_dims={m: DIMS[m] for m in modalities}, num_classes=3, num_parties=2, **{**SMALL, **kwargs}
    )
    assert isinstance(model, CSS)
    return model


def _randomise(spf: SynergisticPolynomialFusion) -> None:
    with torch.no_grad():
        for p in spf.parameters():
            p.copy_(torch.randn_like(p))


# -- SPF ------------------------------------------------------------------------------------
def _full_tensor_polynomial(spf: SynergisticPolynomialFusion, x: torch.Tensor) -> torch.Tensor:
    """z_r = < T_r, u (x) ... (x) u > with u = [x^1; ...; x^M; 1] and the full order-p tensor
    T_r = A_1[:, r] (x) ... (x) A_p[:, r], A_j = [lambda_j^1 W_j^1; ...; lambda_j^M W_j^M; w_j]."""
    n, m, d = x.shape
    gates = spf.gates().expand(spf.order, m)
    factors = spf.factors.expand(spf.order, m, d, spf.rank)
    anchors = spf.anchors if spf.anchors is not None else torch.zeros(spf.order, spf.rank)
    blocks = [torch.cat([*(gates[j, k] * factors[j, k] for k in range(m)), anchors[j][None]]) for j in range(spf.order)]
    u = torch.cat([x.flatten(1), torch.ones(n, 1)], dim=1)  # [N, M d + 1]
    letters = "abcdefg"[: spf.order]
    out = torch.zeros(n, spf.rank, dtype=x.dtype)
    for r in range(spf.rank):
        tensor = torch.einsum(",".join(letters) + "->" + letters, *(b[:, r] for b in blocks))  # (M d + 1)^p
        out[:, r] = torch.einsum(f"{letters},{','.join('n' + c for c in letters)}->n", tensor, *([u] * spf.order))
    return out


@pytest.mark.parametrize(("modalities", "order", "specific"), [(2, 2, True), (3, 3, True), (3, 2, False)])
def test_spf_is_the_cp_factorised_full_tensor_polynomial(modalities: int, order: int, specific: bool) -> None:
    torch.manual_seed(1)
    spf = SynergisticPolynomialFusion(
        modalities, in_size=2, out_size=3, rank=2, order=order, activation="identity", modality_specific=specific
    ).double()
    _randomise(spf)
    x = torch.randn(5, modalities, 2, dtype=torch.float64)
    torch.testing.assert_close(
        spf.interactions(x).double(), _full_tensor_polynomial(spf.double(), x), rtol=1e-5, atol=1e-6
    )


def test_spf_by_hand_two_modalities_order_two() -> None:
    # d = R = 1: z = (l11 a w11 + l12 b w12 + c1)(l21 a w21 + l22 b w22 + c2): the unimodal terms a, b,
    # the squares, the bimodal a*b and the constant.
    spf = SynergisticPolynomialFusion(
        2, 1, 1, rank=1, order=2, activation="identity", signed_sqrt=False, input_norm=False
    )
    assert spf.gate_logits is not None and spf.anchors is not None
    with torch.no_grad():
        spf.factors.copy_(torch.tensor([2.0, 3.0, 5.0, 7.0]).view(2, 2, 1, 1))  # W_j^m
        spf.gate_logits.copy_(torch.zeros(2, 2))  # lambda = 1/2
        spf.anchors.copy_(torch.tensor([[1.0], [-1.0]]))
        spf.out.weight.fill_(2.0)
        spf.out.bias.fill_(0.5)
    a, b = 0.3, -0.4
    z = (0.5 * 2 * a + 0.5 * 3 * b + 1.0) * (0.5 * 5 * a + 0.5 * 7 * b - 1.0)
    x = torch.tensor([[[a], [b]]])
    assert float(spf.interactions(x)) == pytest.approx(z)
    assert float(spf(x)) == pytest.approx(2 * z + 0.5)
    spf.signed_sqrt = True
    assert float(spf(x)) == pytest.approx(2 * (-1 if z < 0 else 1) * (abs(z) + 1e-6) ** 0.5 + 0.5, rel=1e-6)


def test_signed_square_root() -> None:
    z = torch.tensor([9.0, -4.0, 0.0, 1e-12], requires_grad=True)
    out = signed_square_root(z, eps=0.0)
    torch.testing.assert_close(out[:3], torch.tensor([3.0, -2.0, 0.0]))
    # Odd, monotone, and its gradient stays finite at 0 with the default epsilon.
    grad = torch.autograd.grad(signed_square_root(z).sum(), z)[0]
    assert torch.isfinite(grad).all()
    w = torch.linspace(-5, 5, 101)
    torch.testing.assert_close(signed_square_root(-w), -signed_square_root(w))
    assert (signed_square_root(w).diff() >= 0).all()


def test_spf_switches() -> None:
    x = torch.randn(6, 3, 4)
    plain = SynergisticPolynomialFusion(3, 4, 5, rank=3, order=3, use_gates=False, use_anchors=False, input_norm=False)
    assert plain.gate_logits is None and plain.anchors is None
    # Without anchors (and phi the identity) every term has degree p: z(c x) = c^p z(x).
    plain.activation = "identity"
    torch.testing.assert_close(plain.interactions(2 * x), 8 * plain.interactions(x), rtol=1e-5, atol=1e-5)
    # Shared factors and equal gates: z is symmetric in the modalities; specific ones are not.
    shared = SynergisticPolynomialFusion(3, 4, 5, rank=3, order=2, modality_specific=False, input_norm=False)
    assert shared.factors.shape == (2, 1, 4, 3)
    swapped = x[:, [2, 0, 1]]
    torch.testing.assert_close(shared.interactions(swapped), shared.interactions(x))
    specific = SynergisticPolynomialFusion(3, 4, 5, rank=3, order=2, input_norm=False)
    assert not torch.allclose(specific.interactions(swapped), specific.interactions(x))
    # The input norm makes H invariant to each modality's scale; the code's form is not.
    normed = SynergisticPolynomialFusion(3, 4, 5, rank=3, order=3)
    torch.testing.assert_close(
        normed(x * torch.tensor([3.0, 0.5, 2.0])[None, :, None]), normed(x), rtol=1e-4, atol=1e-4
    )
    assert not torch.allclose(specific(3 * x), specific(x))
    residual = SynergisticPolynomialFusion(3, 4, 5, rank=3, order=2, residual=True, input_norm=False)
    assert residual.residual is not None and residual.residual.in_features == 12
    with pytest.raises(ConfigError, match="SPF"):
        SynergisticPolynomialFusion(3, 4, 5, rank=0)


def test_gates_start_at_sigmoid_one_and_anchors_keep_lower_orders() -> None:
    spf = SynergisticPolynomialFusion(3, 4, 5, rank=2, order=3)
    assert spf.anchors is not None
    torch.testing.assert_close(spf.gates(), torch.full((3, 3), torch.sigmoid(torch.tensor(1.0)).item()))
    # With zero inputs only the anchors' product is left (the constant term).
    torch.testing.assert_close(spf.interactions(torch.zeros(1, 3, 4))[0], spf.anchors.prod(0))


# -- the model ------------------------------------------------------------------------------
def test_losses_are_the_papers_l2_and_l3() -> None:
    batch, _ = make_batch((2, 5, 3), "tav")
    for temperature in (1.0, 4.0):
        model = _css(temperature=temperature, unimodal_loss_weight=0.5, distillation_loss_weight=2.0).train()
        torch.manual_seed(3)
        out = model(batch)
        labels = batch.flat_labels
        l2 = sum(F.cross_entropy(out.unimodal_logits[m], labels) for m in "tav")
        p = F.softmax(out.logits / temperature, -1)
        l3 = sum(
            (p * (p.log() - F.log_softmax(out.unimodal_logits[m] / temperature, -1))).sum(-1).mean() for m in "tav"
        )
        torch.testing.assert_close(out.aux_losses["unimodal"], 0.5 * l2)
        torch.testing.assert_close(out.aux_losses["distillation"], 2.0 * l3)
    assert model.eval()(batch).aux_losses == {}


def test_loss_weights_zero_drop_the_terms_and_detach_stops_l3_into_the_fusion() -> None:
    batch, _ = make_batch((2, 5), "tav")
    assert set(_css(unimodal_loss_weight=0.0).train()(batch).aux_losses) == {"distillation"}
    assert set(_css(distillation_loss_weight=0.0).train()(batch).aux_losses) == {"unimodal"}
    for detach in (False, True):
        model = _css(detach_distillation_target=detach).train()
        model(batch).aux_losses["distillation"].backward()
        reached = model.classifier.weight.grad is not None and bool(model.classifier.weight.grad.abs().sum() > 0)
        assert reached is not detach
    off = _css(unimodal_heads=False).train()
    out = off(batch)
    assert out.unimodal_logits == {} and out.aux_losses == {}


def test_architecture_switches() -> None:
    model = _css()
    assert model.code_dims == {m: 32 for m in "tav"} and model.interaction is not None
    assert set(model.interaction.gates) == set("tav")
    intra = _css(interaction_input="intra")
    assert intra.code_dims == {m: 16 for m in "tav"} and intra.interaction is not None
    no_inter = _css(use_interaction=False)
    assert no_inter.interaction is None and no_inter.merge["t"].in_features == 16
    no_spf = _css(use_spf=False)
    assert no_spf.spf is None and no_spf.concat_fusion is not None and no_spf.concat_fusion.in_features == 48
    single = _css("t")
    assert single.interaction is None and single.code_dims == {"t": 16}
    assert _css(use_speaker_embedding=False).speaker_embedding is None
    batch, _ = make_batch((2, 5), "tav")
    for kwargs in [
        {"interaction_input": "intra"},
        {"use_interaction": False},
        {"use_spf": False},
        {"use_gates": False, "use_anchors": False, "signed_sqrt": False},
        {"modality_specific_factors": False, "spf_residual": True, "spf_input_norm": False},
        {"use_positional_encoding": False, "use_speaker_embedding": False, "speaker_ids": "global"},
        {"order": 4, "rank": 2, "spf_activation": "identity"},
    ]:
        out = _css(**kwargs).train()(batch)  # type: ignore[arg-type]
        assert out.logits.shape == (7, 3) and torch.isfinite(out.logits).all(), kwargs
    for bad in [{"hidden_size": 15}, {"temperature": 0.0}, {"dropout": 1.0}, {"order": 0}]:
        with pytest.raises(ConfigError):
            _css(**bad)  # type: ignore[arg-type]


def test_stage_two_mixes_the_other_modalities_only_when_on() -> None:
    batch, _ = make_batch((3, 4), "tav")
    features = dict(batch.features)
    features["a"] = features["a"] + 2.0
    moved = dataclasses.replace(batch, features=features)
    for use, changes in ((True, True), (False, False)):
        model = _css(use_interaction=use).eval()
        with torch.no_grad():
            before = model.representations(batch, model.encode(batch))["t"]
            after = model.representations(moved, model.encode(moved))["t"]
        assert (not torch.allclose(before, after)) is changes


def test_positional_encoding_is_the_sinusoid() -> None:
    pe = sinusoidal_positions(torch.tensor([3]), 6)[0]
    expected = [f(3 / 10000 ** (2 * k / 6)) for k in range(3) for f in (math.sin, math.cos)]
    torch.testing.assert_close(pe, torch.tensor(expected))


def test_shared_parameters_are_the_trunk_up_to_the_merged_representations() -> None:
    model = _css()
    shared = {id(p) for p in model.shared_parameters()}
    names = {n for n, p in model.named_parameters() if id(p) in shared}
    assert all(n.startswith(("encoders.", "speaker_embedding.", "interaction.", "merge.")) for n in names)
    for prefix in ("encoders.", "speaker_embedding.", "interaction.", "merge."):
        assert any(n.startswith(prefix) for n in names), prefix
    assert not any(n.startswith(("spf.", "classifier.", "unimodal_classifiers.")) for n in names)
    # The base class's default: everything but the unimodal heads.
    base = super(CSS, model).shared_parameters()
    assert {id(p) for p in base} == {
        id(p) for n, p in model.named_parameters() if not n.startswith("unimodal_classifiers.")
    }


def test_unimodal_logits_ignore_a_before_fuse_hook_but_the_losses_see_it() -> None:
    batch, _ = make_batch((2, 5), "tav")
    model = _css().eval()
    with torch.no_grad():
        plain = model(batch)
        with model.before_fuse(lambda b, c: {m: torch.zeros_like(x) for m, x in c.items()}):
            hooked = model(batch)
    for m in "tav":
        torch.testing.assert_close(hooked.unimodal_logits[m], plain.unimodal_logits[m])
    assert not torch.allclose(hooked.logits, plain.logits)


@pytest.mark.parametrize(("dataset", "order", "temperature"), [("iemocap6", 3, 1.0), ("meld7", 4, 4.0)])
def test_recipes_resolve_and_build(dataset: str, order: int, temperature: float) -> None:
    from merc.training.runner import resolve_recipe

    recipe = resolve_recipe("css", dataset, [])
    assert recipe["model"]["order"] == order and recipe["model"]["temperature"] == temperature
    model = build_model(
        "css", in_dims={"t": 8, "a": 6, "v": 4}, num_classes=6, num_speakers=2, num_parties=9, **recipe["model"]
    )
    assert isinstance(model, CSS) and model.spf is not None and model.spf.order == order
    assert "pgm" in recipe and recipe["pgm"]["enabled"] is True


def test_each_modality_subset_trains_its_losses() -> None:
    for r in (1, 2, 3):
        for subset in itertools.combinations("tav", r):
            mods = "".join(subset)
            batch, _ = make_batch((2, 4), mods)
            out = _css(mods).train()(batch)
            assert set(out.unimodal_logits) == set(mods)
            assert set(out.aux_losses) == {"unimodal", "distillation"}
