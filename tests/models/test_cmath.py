"""CMATH-specific behaviour: each equation on hand-checkable cases, the ablation switches, padding, recipes."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from helpers import DIMS, make_batch, make_dataset
from merc.config import load_recipe
from merc.data.batching import collate, to_tensors
from merc.errors import ConfigError
from merc.models import build_model
from merc.models.cmath import (
    CMATH,
    CMATransformer,
    ConvReconstructionEncoder,
    PostNormAttentionLayer,
    SourceGate,
    VariationalFusion,
)
from merc.models.layers.encoders import UtteranceEncoder
from merc.models.layers.positional import sinusoidal_positions
from merc.models.registry import check_model_arguments
from merc.training.trainer import TrainConfig

SMALL: dict[str, Any] = dict(hidden_size=8, num_heads=2)


def _cmath(modalities: str = "tav", seed: int = 0, **kwargs: Any) -> CMATH:
    torch.manual_seed(seed)
    options = {**SMALL, **kwargs}
    model = build_model(
        "cmath", in_dims={m: DIMS[m] for m in modalities}, num_classes=3, num_speakers=2, num_parties=2, **options
    )
    assert isinstance(model, CMATH)
    return model


def _train_forward(model: CMATH, batch, seed: int = 5):
    torch.manual_seed(seed)
    return model.train()(batch)


# -- eq. 6-7: sinusoidal positions ---------------------------------------------------------
def test_sinusoidal_positions_follow_eq_6_7() -> None:
    p = sinusoidal_positions(torch.tensor([0, 3]), 6)
    expected = torch.tensor(
        [
            [0.0, 1.0, 0.0, 1.0, 0.0, 1.0],
            [
                math.sin(3),
                math.cos(3),
                math.sin(3 / 10000 ** (2 / 6)),
                math.cos(3 / 10000 ** (2 / 6)),
                math.sin(3 / 10000 ** (4 / 6)),
                math.cos(3 / 10000 ** (4 / 6)),
            ],
        ]
    )
    torch.testing.assert_close(p, expected)
    assert sinusoidal_positions(torch.tensor([2]), 5).shape == (1, 5)  # odd width: the last sin kept


def test_speaker_and_position_are_added_to_every_modality() -> None:
    batch, _ = make_batch((1, 7, 3))
    model = _cmath().eval()
    codes = {m: torch.zeros(batch.num_utterances, 8) for m in "tav"}
    h = model.augment(batch, codes)
    assert model.speaker_embedding is not None
    speakers = model.speaker_embedding(batch.flatten(batch.parties))
    expected = speakers + 0.1 * sinusoidal_positions(batch.utterance_position, 8)  # position_scale 0.1
    for m in "tav":
        torch.testing.assert_close(h[m], expected)
    as_printed = _cmath(position_scale=1.0).eval()
    as_printed.load_state_dict(model.state_dict())
    full = speakers + sinusoidal_positions(batch.utterance_position, 8)
    torch.testing.assert_close(as_printed.augment(batch, codes)["t"], full)
    with pytest.raises(ConfigError, match="position_scale"):
        _cmath(position_scale=-1.0)
    # The second dialogue's utterances are at positions 0..6 of that dialogue.
    assert batch.utterance_position[1:8].tolist() == list(range(7))
    # V_s starts at the scale of the codes (N(0, 0.02^2)), not PyTorch's N(0, 1).
    assert 0.01 < float(model.speaker_embedding.weight.detach().std()) < 0.04
    assert 0.5 < float(_cmath(speaker_init_std=1.0).speaker_embedding.weight.detach().std()) < 1.5  # type: ignore[union-attr]
    off = _cmath(use_speaker_embedding=False, use_position_encoding=False).eval()
    assert off.speaker_embedding is None and off.max_parties is None
    assert all(torch.equal(v, codes[m]) for m, v in off.augment(batch, codes).items())


# -- eq. 1-4: modality reconstruction --------------------------------------------------------
def test_reconstruction_error_by_hand() -> None:
    enc = ConvReconstructionEncoder(in_dim=2, size=1, kernel_size=1)
    with torch.no_grad():
        enc.down.weight.copy_(torch.tensor([[[1.0], [1.0]]]))  # U' = x1 + x2
        enc.down.bias.zero_()
        enc.up.weight.copy_(torch.tensor([[[1.0]], [[0.0]]]))  # U'' = (U', 0)
        enc.up.bias.copy_(torch.tensor([0.0, 1.0]))  # U'' = (U', 1)
    batch, _ = make_batch((2, 1), "t")
    x = torch.tensor([[[1.0, 2.0], [0.0, 1.0]], [[3.0, -1.0], [0.0, 0.0]]])  # [B=2, T=2, 2], padding last
    codes = enc(x, batch)
    torch.testing.assert_close(codes, torch.tensor([[3.0], [1.0], [2.0]]))
    # U'' = [[3, 1], [1, 1], [2, 1]] against U = [[1, 2], [0, 1], [3, -1]]:
    # squared errors 4, 1, 1, 0, 1, 4 -> mean 11 / 6.
    torch.testing.assert_close(enc.reconstruction_error(x, codes, batch), torch.tensor(11 / 6))


def test_wider_kernels_see_only_their_own_dialogue() -> None:
    enc = ConvReconstructionEncoder(in_dim=DIMS["t"], size=4, kernel_size=3)
    ds = make_dataset((2, 5, 3), "t", seed=4)
    items = to_tensors(ds)["train"]
    together = collate(items, ds.modalities)
    x = together.features["t"]
    codes = enc(x, together)
    # Utterance 0 of dialogue 1 sees (zero, u0, u1) of its own dialogue: Conv1D by hand.
    d1 = x[1]
    w, b = enc.down.weight, enc.down.bias  # [4, d, 3]
    by_hand = w[:, :, 1] @ d1[0] + w[:, :, 2] @ d1[1] + b
    torch.testing.assert_close(codes[2], by_hand)
    # The last utterance of dialogue 1 sees (u3, u4, zero), not dialogue 2's first utterance.
    torch.testing.assert_close(codes[6], w[:, :, 0] @ d1[3] + w[:, :, 1] @ d1[4] + b)
    for i, item in enumerate(items):
        alone = collate([item], ds.modalities)
        start = [0, 2, 7][i]
        torch.testing.assert_close(
            enc(alone.features["t"], alone), codes[start : start + len(item)], rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(
            enc.reconstruct(codes[start : start + len(item)], alone),
            enc.reconstruct(codes, together)[start : start + len(item)],
            rtol=1e-5,
            atol=1e-6,
        )


def test_model_reconstruction_loss_is_eq_4() -> None:
    batch, _ = make_batch((1, 7, 3))
    model = _cmath(reconstruction_weight=0.5)
    out = _train_forward(model, batch)
    codes = model.encode(batch)
    expected = sum(
        F.mse_loss(
            model.encoders[m].up(batch.unflatten(codes[m]).transpose(1, 2)).transpose(1, 2)[batch.mask],
            batch.flatten(batch.features[m]),
        )
        for m in "tav"
    )
    torch.testing.assert_close(out.aux_losses["reconstruction"], 0.5 * expected)
    assert model.aux_loss_weights["reconstruction"] == 0.5


def test_reconstruction_uses_the_codes_as_encoded_not_the_hooked_ones() -> None:
    batch, _ = make_batch((1, 7, 3))
    model = _cmath()
    plain = _train_forward(model, batch)
    with model.before_fuse(lambda b, c: {m: torch.zeros_like(v) for m, v in c.items()}):
        hooked = _train_forward(model, batch)
    torch.testing.assert_close(hooked.aux_losses["reconstruction"], plain.aux_losses["reconstruction"])
    assert not torch.allclose(hooked.logits, plain.logits)


# -- eq. 9-12: CMA-Transformer ---------------------------------------------------------------
def _reference_layer(layer: PostNormAttentionLayer, query, source, batch, extra=()) -> torch.Tensor:
    """Eq. 9 / 11 with a loop over dialogues and PyTorch's attention (no dropout)."""
    heads = layer.num_heads
    rows = []
    offsets = [0, *torch.cumsum(batch.lengths, 0).tolist()]
    for b in range(batch.batch_size):
        q = layer.query(query[offsets[b] : offsets[b + 1]])
        k, v = layer.key_value(source[offsets[b] : offsets[b + 1]]).chunk(2, dim=-1)
        n, d = q.shape

        q, k, v = (t.view(n, heads, d // heads).transpose(0, 1) for t in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(n, d)
        rows.append(layer.out(att))
    h = query + torch.cat(rows) + sum(extra, torch.zeros_like(query))
    h = layer.norm_attention(h)
    return layer.norm_ffn(h + layer.ffn(h))


def test_post_norm_layer_matches_a_per_dialogue_reference() -> None:
    torch.manual_seed(0)
    batch, _ = make_batch((1, 7, 3))
    layer = PostNormAttentionLayer(8, 2, 16, dropout=0.0).eval()
    query, source, extra = (torch.randn(11, 8) for _ in range(3))
    torch.testing.assert_close(layer(query, source, batch), _reference_layer(layer, query, source, batch))
    torch.testing.assert_close(
        layer(query, source, batch, extra=[extra]), _reference_layer(layer, query, source, batch, [extra])
    )


def test_gate_by_hand() -> None:
    gate = SourceGate(2)
    with torch.no_grad():
        gate.score.weight.copy_(math.log(3.0) * torch.eye(2))
    # Feature 0: scores (ln 3, 0) -> weights (3/4, 1/4) on values (1, 0); feature 1 mirrored.
    out = gate([torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])])
    torch.testing.assert_close(out, torch.tensor([[0.75, 0.75]]))
    with torch.no_grad():
        gate.score.weight.zero_()  # equal scores: the mean of the sources
    sources = [torch.randn(4, 2) for _ in range(3)]
    torch.testing.assert_close(gate(sources), torch.stack(sources).mean(0))


def test_cma_transformer_wires_eq_9_to_12() -> None:
    torch.manual_seed(1)
    batch, _ = make_batch((1, 7, 3))
    block = CMATransformer("t", ["a", "v"], 8, 2, 8, dropout=0.0).eval()
    h = {m: torch.randn(11, 8) for m in "tav"}
    a_to_t = block.cross["a"](h["t"], h["a"], batch)  # eq. 9: queries from t, keys/values from a
    v_to_t = block.cross["v"](h["t"], h["v"], batch)  # eq. 10
    t_to_t = block.self_attention(h["t"], h["t"], batch, extra=[a_to_t, v_to_t])  # eq. 11
    branches = block.branches(h, batch)
    for got, want in zip(branches, [t_to_t, a_to_t, v_to_t], strict=True):
        torch.testing.assert_close(got, want)
    assert block.gate is not None
    torch.testing.assert_close(block(h, batch), block.gate([t_to_t, a_to_t, v_to_t]))  # eq. 12
    # The auxiliary modality enters through the keys and values only.
    moved = dict(h, a=h["a"] + 1.0)
    assert not torch.allclose(block(moved, batch), block(h, batch))


def test_one_modality_degenerates_to_self_attention() -> None:
    batch, _ = make_batch((1, 7, 3), "t")
    model = _cmath("t").eval()
    block = model.cma["t"]
    assert block.auxiliaries == () and len(block.cross) == 0 and block.gate is None
    h = {"t": torch.randn(11, 8)}
    torch.testing.assert_close(block(h, batch), block.self_attention(h["t"], h["t"], batch))
    two = _cmath("ta")
    assert two.cma["t"].auxiliaries == ("a",) and two.cma["a"].auxiliaries == ("t",)


# -- eq. 15-17: variational fusion -----------------------------------------------------------
def _constant_fusion(average: str) -> VariationalFusion:
    fusion = VariationalFusion("ta", 2, 3, average)  # type: ignore[arg-type]
    with torch.no_grad():
        for m, mean, logvar in (("t", [1.0, 2.0], [0.0, 2.0]), ("a", [3.0, -2.0], [2.0, -2.0])):
            for net, bias in ((fusion.mean[m], mean), (fusion.log_variance[m], logvar)):
                net[2].weight.zero_()
                net[2].bias.copy_(torch.tensor(bias))
    return fusion


@pytest.mark.parametrize("average", ["std", "logvar"])
def test_variational_fusion_averages_eq_16(average: str) -> None:
    fusion = _constant_fusion(average).eval()
    h = {m: torch.randn(4, 2) for m in "ta"}
    fused, mean, std = fusion(h)
    torch.testing.assert_close(mean, torch.tensor([[2.0, 0.0]]).expand(4, 2))
    if average == "std":  # mean of sigma_m = exp(logvar / 2)
        want = torch.tensor([(1 + math.e) / 2, (math.e + 1 / math.e) / 2])
    else:  # exp of the mean log-variance / 2
        want = torch.tensor([math.exp(0.5), 1.0])
    torch.testing.assert_close(std, want.expand(4, 2))
    torch.testing.assert_close(fused, mean)  # evaluation: deterministic, the mean
    torch.testing.assert_close(fusion(h)[0], fused)


def test_variational_fusion_samples_by_reparameterisation_in_training() -> None:
    fusion = _constant_fusion("std").train()
    h = {m: torch.randn(4, 2) for m in "ta"}
    torch.manual_seed(3)
    fused, mean, std = fusion(h)
    torch.manual_seed(3)
    eps = torch.randn(4, 2)
    torch.testing.assert_close(fused, mean + eps * std)  # eq. 17


def test_model_predictions_are_deterministic_in_evaluation_only() -> None:
    batch, _ = make_batch((1, 7, 3))
    model = _cmath(dropout=0.0)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(batch).logits, model(batch).logits)
        model.train()
        torch.manual_seed(0)
        first = model(batch).logits
        torch.manual_seed(1)
        second = model(batch).logits
    assert not torch.allclose(first, second)  # the sampled H'_x


# -- eq. 18, 23: hierarchical distillation --------------------------------------------------
def test_distillation_losses_by_hand() -> None:
    model = _cmath("ta")
    refined = {"t": torch.zeros(2, 8), "a": torch.ones(2, 8)}
    fused = torch.zeros(2, 8)
    logits = torch.zeros(2, 3)  # teacher: uniform over 3 classes
    student = torch.tensor([[math.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0]])  # (1/2, 1/4, 1/4), uniform
    losses = model.distillation_losses(refined, fused, {"t": student, "a": torch.zeros(2, 3)}, logits)
    torch.testing.assert_close(losses["distill_mse"], torch.tensor(1.0))  # 0 (t) + 1 (a)
    # KL(u || q) = sum_j 1/3 log((1/3) / q_j) for row 0, 0 for row 1; mean over the 2 rows.
    row0 = sum(1 / 3 * math.log((1 / 3) / q) for q in (0.5, 0.25, 0.25))
    torch.testing.assert_close(losses["distill_kl"], torch.tensor(row0 / 2))
    # The teacher is the fused side: KL(Y_x || Y_m), not the reverse.
    swapped = model.distillation_losses(refined, fused, {"t": torch.zeros(2, 3), "a": torch.zeros(2, 3)}, student)
    assert not torch.allclose(swapped["distill_kl"], losses["distill_kl"])


def test_distillation_temperature_and_teacher_detach() -> None:
    model = _cmath("t", distill_temperature=2.0, detach_teacher=True)
    fused = torch.zeros(1, 8, requires_grad=True)
    logits = torch.zeros(1, 3, requires_grad=True)
    student = torch.tensor([[2 * math.log(2.0), 0.0, 0.0]], requires_grad=True)  # /2 -> (1/2, 1/4, 1/4)
    losses = model.distillation_losses({"t": torch.ones(1, 8, requires_grad=True)}, fused, {"t": student}, logits)
    row = sum(1 / 3 * math.log((1 / 3) / q) for q in (0.5, 0.25, 0.25))
    torch.testing.assert_close(losses["distill_kl"], torch.tensor(row))
    sum(losses.values()).backward()
    assert fused.grad is None and logits.grad is None and student.grad is not None


def test_weighted_aux_losses_and_their_weights() -> None:
    batch, _ = make_batch((1, 7, 3))
    base = _train_forward(_cmath(low_level_weight=1.0, high_level_weight=1.0), batch).aux_losses
    model = _cmath(low_level_weight=2.0, high_level_weight=1.8)
    out = _train_forward(model, batch).aux_losses
    weights = model.aux_loss_weights
    assert weights == {"modality_ce": 1.0, "reconstruction": 1.0, "distill_mse": 2.0, "distill_kl": 1.8}
    assert set(weights) <= set(out) and set(out) - set(weights) == {"unimodal_probe"}
    for name, w in weights.items():  # aux_losses[name] / weight is the unweighted task loss
        torch.testing.assert_close(out[name] / w, base[name])
    assert "distill_kl" not in _cmath(high_level_weight=0.0).aux_loss_weights
    # Nothing auxiliary in evaluation.
    assert model.eval()(batch).aux_losses == {}


def test_modality_ce_is_eq_20_per_modality() -> None:
    batch, _ = make_batch((1, 7, 3))
    model = _cmath(dropout=0.0)
    out = _train_forward(model, batch)
    h = model.augment(batch, model.encode(batch))
    refined = model.refine(batch, h)
    expected = sum(F.cross_entropy(model.modality_classifiers[m](refined[m]), batch.flat_labels) for m in "tav")
    torch.testing.assert_close(out.aux_losses["modality_ce"], expected)


# -- Table 4: each switch removes exactly its part -------------------------------------------
FULL = {"modality_ce", "reconstruction", "distill_mse", "distill_kl", "unimodal_probe"}


@pytest.mark.parametrize(
    ("switches", "removed"),
    [
        ({"use_low_level_distillation": False}, {"distill_mse"}),  # w/o LLD
        ({"use_high_level_distillation": False}, {"distill_kl"}),  # w/o HLD
        ({"use_low_level_distillation": False, "use_high_level_distillation": False}, {"distill_mse", "distill_kl"}),
    ],
)
def test_distillation_switches_remove_only_their_losses(switches: dict[str, bool], removed: set[str]) -> None:
    batch, _ = make_batch((1, 7, 3))
    full_model, ablated_model = _cmath(), _cmath(**switches)
    full, ablated = _train_forward(full_model, batch), _train_forward(ablated_model, batch)
    assert set(ablated.aux_losses) == FULL - removed
    for name in FULL - removed:
        torch.testing.assert_close(ablated.aux_losses[name], full.aux_losses[name])
    # Same parameters, same predictions: distillation shapes the training only.
    torch.testing.assert_close(ablated.logits, full.logits)
    assert full_model.state_dict().keys() == ablated_model.state_dict().keys()


def test_without_modality_reconstruction_the_encoder_is_one_linear_layer() -> None:
    batch, _ = make_batch((1, 7, 3))
    model = _cmath(use_reconstruction=False)
    for m in "tav":
        encoder = model.encoders[m]
        assert isinstance(encoder, UtteranceEncoder)
        assert [type(x) for x in encoder.net] == [torch.nn.Linear]
    out = _train_forward(model, batch)
    assert set(out.aux_losses) == FULL - {"reconstruction"}
    assert "reconstruction" not in model.aux_loss_weights
    # Speaker and position are still added (the paper's w/o MR keeps them).
    assert model.speaker_embedding is not None and model.use_position_encoding


def test_without_cma_transformer_the_fusion_reads_h_m() -> None:
    batch, _ = make_batch((1, 7, 3))
    full, model = _cmath(), _cmath(use_cma_transformer=False)
    assert len(model.cma) == 0
    removed = {k for k in full.state_dict() if k.startswith("cma.")}
    assert removed and set(full.state_dict()) - removed == set(model.state_dict())
    h = {m: torch.randn(11, 8) for m in "tav"}
    assert model.refine(batch, h) == h
    out = _train_forward(model, batch)
    assert set(out.aux_losses) == FULL
    # The fused code is then the Gaussian of the H_m: no modality sees another before eq. 16.
    model.eval()
    with torch.no_grad():
        fused = model(batch).embeddings
        means, _ = model.variational.distributions(model.augment(batch, model.encode(batch)))
    assert fused is not None
    torch.testing.assert_close(fused, torch.stack(list(means.values())).mean(0))


# -- padding, batch mates, wider kernels -----------------------------------------------------
@pytest.mark.parametrize("kernel_size", [1, 3, {"t": 3, "a": 1, "v": 5}])
def test_predictions_do_not_depend_on_padding(kernel_size: Any) -> None:
    ds = make_dataset((1, 7, 3, 12), "tav", seed=1)
    items = to_tensors(ds)["train"]
    model = _cmath(kernel_size=kernel_size).eval()
    with torch.no_grad():
        together = model(collate(items, ds.modalities)).logits
        offsets = [0, 1, 8, 11, 23]
        for i, item in enumerate(items):
            alone = model(collate([item], ds.modalities)).logits
            torch.testing.assert_close(together[offsets[i] : offsets[i + 1]], alone, rtol=1e-4, atol=1e-5)


def test_padding_does_not_enter_the_reconstruction_loss() -> None:
    ds = make_dataset((2, 6), "tav", seed=2)
    items = to_tensors(ds)["train"]
    model = _cmath(kernel_size=3).train()
    encoder = model.encoders["t"]
    assert isinstance(encoder, ConvReconstructionEncoder)

    def error(batch):
        return encoder.reconstruction_error(batch.features["t"], encoder(batch.features["t"], batch), batch)

    alone = [error(collate([item], ds.modalities)) for item in items]
    together = error(collate(items, ds.modalities))  # dialogue 0 padded from 2 to 6 steps
    # A mean over real utterances only: the utterance-weighted mean of the dialogues' errors.
    torch.testing.assert_close(together, (2 * alone[0] + 6 * alone[1]) / 8)


# -- construction errors and recipes -------------------------------------------------------------
def test_clear_errors() -> None:
    with pytest.raises(ConfigError, match="odd"):
        _cmath(kernel_size=2)
    with pytest.raises(ConfigError, match="divisible"):
        _cmath(hidden_size=10, num_heads=4)
    with pytest.raises(ConfigError, match="weights"):
        _cmath(high_level_weight=-1.0)
    with pytest.raises(ConfigError, match="kernel_size"):
        _cmath(kernel_size={"t": 1})
    with pytest.raises(ConfigError, match="speaker_init_std"):
        _cmath(speaker_init_std=0.0)
    with pytest.raises(ConfigError, match="variance_average"):
        check_model_arguments("cmath", {"variance_average": "median"})


def test_recipes_load_and_build() -> None:
    data = load_recipe("cmath", "iemocap6")  # default.yaml: the paper's IEMOCAP settings
    TrainConfig.from_dict(data["training"])
    options = check_model_arguments("cmath", data["model"])
    model = _cmath(**{**options, "hidden_size": 500})
    assert model.hidden_size == 500 and model.low_level_weight == 1.0 and model.high_level_weight == 1.8
    assert data["training"]["lr"] == 0.003 and data["training"]["batch_size"] == 16
    meld = load_recipe("cmath", "meld7")
    TrainConfig.from_dict(meld["training"])
    options = check_model_arguments("cmath", meld["model"])
    assert options["hidden_size"] == 400 and options["high_level_weight"] == 1.2
    assert meld["training"]["lr"] == 0.0002 and meld["training"]["batch_size"] == 4
    ablation = check_model_arguments("cmath", {"use_cma_transformer": "false", "kernel_size": {"t": 3}})
    assert ablation == {"use_cma_transformer": False, "kernel_size": {"t": 3}}


def test_overfits_with_every_table_4_variant() -> None:
    from merc.training.trainer import Trainer

    ds = make_dataset((6, 9, 4), "tav", seed=2, separable=True)
    for switches in (
        {"use_reconstruction": False},
        {"use_cma_transformer": False},
        {"use_low_level_distillation": False, "use_high_level_distillation": False},
    ):
        model = _cmath(hidden_size=32, num_heads=2, dropout=0.1, **switches)
        trainer = Trainer(
            model,
            to_tensors(ds),
            ds.modalities,
            ds.num_classes,
            TrainConfig(epochs=60, lr=0.003, batch_size=3, patience=0, show_progress=False),
        )
        trainer.fit()
        assert trainer.evaluate(trainer.train_items)["accuracy"] >= 95.0, switches


def test_state_dict_round_trip() -> None:
    batch, _ = make_batch((1, 7, 3))
    model = _cmath().eval()
    clone = _cmath(seed=9).eval()
    clone.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(clone(batch).logits, model(batch).logits)
