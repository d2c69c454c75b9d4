"""MGCMA-specific behaviour: the 2-Wasserstein similarity, the contrastive losses, the switches, the token path."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from helpers import DIMS, make_batch, make_dataset
from merc.config import load_recipe
from merc.data.batching import Batch, collate, to_tensors
from merc.errors import ConfigError, DataError
from merc.models import build_model
from merc.models.layers.crossmodal import CrossModalLayer
from merc.models.layers.fast import use_fast_kernels
from merc.models.mgcma import (
    MGCMA,
    NullAlignedCrossLayer,
    TokenAlignmentBlock,
    TokenStates,
    gaussian_wasserstein,
    lift_code_change,
    pool_tokens,
    symmetric_info_nce,
)
from merc.models.registry import check_model_arguments
from merc.training.trainer import TrainConfig

SMALL: dict[str, Any] = dict(hidden_size=8, num_heads=2, ffn_size=16)
SEQ_DIMS = {"t": 5, "a": 4, "v": 3}


def _mgcma(modalities: str = "ta", seed: int = 0, **kwargs: Any) -> MGCMA:
    torch.manual_seed(seed)
    options = {**SMALL, **kwargs}
    model = build_model("mgcma", in_dims={m: DIMS[m] for m in modalities}, num_classes=3, **options)
    assert isinstance(model, MGCMA)
    return model


def _sequences(num: int, modalities: str, max_len: int = 6, seed: int = 0) -> tuple[dict, dict]:
    """Random token sequences ``{m: [num, max_len, d']}``, zero past random lengths in ``1..max_len``."""
    g = torch.Generator().manual_seed(seed)
    sequences, lengths = {}, {}
    for m in modalities:
        length = torch.randint(1, max_len + 1, (num,), generator=g)
        seq = torch.randn(num, max_len, SEQ_DIMS[m], generator=g)
        seq = seq * (torch.arange(max_len)[None, :] < length[:, None])[..., None]
        sequences[m], lengths[m] = seq, length
    return sequences, lengths


def _with_sequences(batch: Batch, sequences: dict, lengths: dict) -> Batch:
    return dataclasses.replace(batch, sequences=sequences, sequence_lengths=lengths)


# -- the distribution-level similarity -----------------------------------------------------------------
def _w2_general(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """The 2-Wasserstein distance between any two Gaussians (Bures form), written out with matrix square roots."""
    root2 = scipy.linalg.sqrtm(cov2)
    cross = scipy.linalg.sqrtm(root2 @ cov1 @ root2)
    sq = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * np.real(cross)))
    return math.sqrt(max(sq, 0.0))


def test_wasserstein_of_diagonal_gaussians_matches_the_general_formula() -> None:
    rng = np.random.default_rng(0)
    mean_a, mean_b = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    sigma_a, sigma_b = rng.uniform(0.2, 2.0, size=(3, 4)), rng.uniform(0.2, 2.0, size=(5, 4))
    expected = np.array(
        [
            [_w2_general(mean_a[i], np.diag(sigma_a[i] ** 2), mean_b[j], np.diag(sigma_b[j] ** 2)) for j in range(5)]
            for i in range(3)
        ]
    )
    args = [torch.tensor(x, dtype=torch.float64) for x in (mean_a, sigma_a, mean_b, sigma_b)]
    torch.testing.assert_close(gaussian_wasserstein(*args, squared=False).numpy(), expected, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(gaussian_wasserstein(*args).numpy(), expected**2, rtol=1e-6, atol=1e-8)
    # Identical Gaussians: distance 0 with a finite gradient (W_2, not only W_2^2).
    mu = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    gaussian_wasserstein(mu, torch.ones(2, 4), mu, torch.ones(2, 4), squared=False).sum().backward()
    assert mu.grad is not None and torch.isfinite(mu.grad).all()


def test_symmetric_info_nce_on_a_hand_case() -> None:
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    rows = -math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(3) / (math.exp(1) + math.exp(3)))
    cols = -math.log(math.exp(2) / (math.exp(2) + math.exp(1))) - math.log(math.exp(3) / (1 + math.exp(3)))
    assert float(symmetric_info_nce(logits)) == pytest.approx(0.5 * (rows / 2 + cols / 2), rel=1e-6)
    # Perfect alignment with a large scale costs nothing; one item alone is its own positive.
    assert float(symmetric_info_nce(100.0 * torch.eye(3))) == pytest.approx(0.0, abs=1e-6)
    assert float(symmetric_info_nce(torch.tensor([[-5.0]]))) == pytest.approx(0.0)


def _states(means: dict[str, torch.Tensor], sigmas: dict[str, torch.Tensor]) -> dict[str, TokenStates]:
    """One-token states whose pooled Gaussians are ``N(means[m], sigmas[m]^2)``."""
    return {
        m: TokenStates(
            means[m][:, None], sigmas[m].log()[:, None], torch.ones(len(means[m]), 1, dtype=torch.bool), means[m]
        )
        for m in means
    }


def test_distribution_loss_is_infonce_of_eq5_similarity_over_the_pairs() -> None:
    p, q, tau = 0.1, 4.0, 0.5
    model = _mgcma(
        "tav",
        wasserstein_scale=p,
        wasserstein_shift=q,
        distribution_temperature=tau,
        learnable_temperature=False,
    )
    g = torch.Generator().manual_seed(1)
    means = {m: torch.randn(3, 8, generator=g) for m in "tav"}
    sigmas = {m: torch.rand(3, 8, generator=g) + 0.5 for m in "tav"}
    got = model.distribution_loss(means, _states(means, sigmas))

    def pair_loss(a: str, b: str) -> float:
        total = 0.0
        logits = [[0.0] * 3 for _ in range(3)]
        for i, j in itertools.product(range(3), range(3)):
            w = float(((means[a][i] - means[b][j]) ** 2).sum() + ((sigmas[a][i] - sigmas[b][j]) ** 2).sum())
            logits[i][j] = (-p * w + q) / tau
        for i in range(3):
            row = [math.exp(x) for x in logits[i]]
            col = [math.exp(logits[k][i]) for k in range(3)]
            total += -math.log(row[i] / sum(row)) - math.log(col[i] / sum(col))
        return total / 6  # mean over the 3 rows and the 3 columns, halved

    expected = sum(pair_loss(a, b) for a, b in [("t", "a"), ("t", "v"), ("a", "v")]) / 3
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # W_2 instead of W_2^2, and q cancels in the softmax.
    root = _mgcma("ta", squared_wasserstein=False, distribution_temperature=tau, learnable_temperature=False)
    shifted = _mgcma(
        "ta", squared_wasserstein=False, distribution_temperature=tau, learnable_temperature=False, wasserstein_shift=-9
    )
    two = {m: means[m] for m in "ta"}
    w = gaussian_wasserstein(means["t"], sigmas["t"], means["a"], sigmas["a"], squared=False)
    expected_root = symmetric_info_nce((-root.wasserstein_scale * w + root.wasserstein_shift) / tau)
    states = _states(two, {m: sigmas[m] for m in "ta"})
    torch.testing.assert_close(root.distribution_loss(two, states), expected_root)
    torch.testing.assert_close(shifted.distribution_loss(two, states), expected_root)


def test_instance_loss_is_symmetric_infonce_of_cosines() -> None:
    model = _mgcma("ta", instance_temperature=0.2, learnable_temperature=False)
    pooled = {m: torch.randn(4, 8) for m in "ta"}
    z = {m: F.normalize(model.instance_projections[m](pooled[m]), dim=-1) for m in "ta"}
    expected = symmetric_info_nce(z["t"] @ z["a"].T / 0.2)
    torch.testing.assert_close(model.instance_loss(pooled), expected)


def test_learnable_temperatures_start_at_tau_and_are_clamped() -> None:
    model = _mgcma("ta", distribution_temperature=0.07, instance_temperature=0.5)
    assert model.distribution_temperature is not None and model.instance_temperature is not None
    assert float(model.distribution_temperature().detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    assert float(model.instance_temperature().detach()) == pytest.approx(2.0, rel=1e-5)
    with torch.no_grad():
        model.distribution_temperature.log_scale.fill_(10.0)
    assert float(model.distribution_temperature().detach()) == 100.0
    names = {n for n, _ in model.named_parameters()}
    assert {"distribution_temperature.log_scale", "instance_temperature.log_scale"} <= names
    fixed = _mgcma("ta", learnable_temperature=False)
    assert not any("temperature" in n for n, _ in fixed.named_parameters())


# -- the switches -----------------------------------------------------------------------------
def _names(model: torch.nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def test_each_switch_removes_exactly_its_part() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    full = _mgcma("ta").train()
    out = full(batch)
    assert {"distribution_alignment", "instance_alignment"} <= set(out.aux_losses)
    parts = {
        "use_distribution_alignment": (
            ("encoders.t.constructor.", "encoders.a.constructor.", "distribution_temperature."),
            "distribution_alignment",
        ),
        "use_token_alignment": (("token_alignment.", "token_norms."), None),
        "use_instance_alignment": (("instance_projections.", "instance_temperature."), "instance_alignment"),
    }
    for switch, (prefixes, loss) in parts.items():
        model = _mgcma("ta", **{switch: False}).train()
        removed = {n for n in _names(full) if n.startswith(prefixes)}
        assert removed, switch
        assert _names(model) == _names(full) - removed, switch
        losses = set(model(batch).aux_losses) - {"unimodal_probe"}
        expected = {"distribution_alignment", "instance_alignment"} - ({loss} if loss else set())
        assert losses == expected, switch


def test_without_a_loss_the_prediction_is_the_full_models() -> None:
    """The IAM and the DAM loss only train: with the full model's weights the logits are the same."""
    batch, _ = make_batch((1, 7, 3), "ta")
    full = _mgcma("ta").eval()
    with torch.no_grad():
        reference = full(batch).logits
    cases = [
        ({"use_instance_alignment": False}, "instance_alignment"),
        ({"distribution_loss_weight": 0.0}, "distribution_alignment"),
    ]
    for options, absent in cases:
        model = _mgcma("ta", seed=5, **options).eval()
        missing, _ = model.load_state_dict(full.state_dict(), strict=False)
        assert not missing
        with torch.no_grad():
            torch.testing.assert_close(model(batch).logits, reference)
        assert absent not in model.train()(batch).aux_losses


def test_without_token_alignment_the_classifier_reads_the_pooled_means() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    model = _mgcma("ta", use_token_alignment=False).eval()
    with torch.no_grad():
        out = model(batch)
    torch.testing.assert_close(out.embeddings, torch.cat([out.unimodal_features[m] for m in "ta"], dim=-1))
    assert len(model.token_alignment) == 0


def test_one_modality_has_nothing_to_align_and_three_align_every_pair() -> None:
    batch, _ = make_batch((1, 7, 3), "tav")
    alone = _mgcma("t").train()
    assert alone.distribution_temperature is None and len(alone.instance_projections) == 0
    assert alone.encoders["t"].constructor.log_sigma_proj is None
    assert len(alone.token_alignment[0].cross_attention) == 0
    assert set(alone(batch).aux_losses) == {"unimodal_probe"}
    three = _mgcma("tav")
    assert sorted(three.token_alignment[0].cross_attention) == sorted(["ta", "tv", "at", "av", "vt", "va"])
    assert isinstance(three.token_alignment[0].cross_attention["ta"], NullAlignedCrossLayer)
    plain = _mgcma("tav", null_alignment=False)
    assert not isinstance(plain.token_alignment[0].cross_attention["ta"], NullAlignedCrossLayer)


def test_token_block_wiring_self_then_cross_from_the_self_outputs() -> None:
    torch.manual_seed(0)
    block = TokenAlignmentBlock("tav", 8, 2, 16, dropout=0.0).eval()
    lengths = {"t": torch.tensor([3, 1, 4]), "a": torch.tensor([2, 5, 1]), "v": torch.tensor([1, 1, 2])}
    x = {m: torch.randn(3, int(n.max()), 8) for m, n in lengths.items()}
    padding = {m: torch.arange(x[m].shape[1])[None, :] >= n[:, None] for m, n in lengths.items()}
    with torch.no_grad():
        out = block(x, padding)
        own = {m: block.self_attention[m](x[m], key_padding_mask=padding[m]) for m in "tav"}
        for target in "tav":
            crossed = [
                block.cross_attention[target + s](own[target], own[s], key_padding_mask=padding[s])
                for s in "tav"
                if s != target
            ]
            torch.testing.assert_close(out[target], (crossed[0] + crossed[1]) / 2)
    two = TokenAlignmentBlock("ta", 8, 2, 16, dropout=0.0).eval()
    with torch.no_grad():
        pair = two({m: x[m] for m in "ta"}, {m: padding[m] for m in "ta"})
        own_t = two.self_attention["t"](x["t"], key_padding_mask=padding["t"])
        own_a = two.self_attention["a"](x["a"], key_padding_mask=padding["a"])
        torch.testing.assert_close(pair["t"], two.cross_attention["ta"](own_t, own_a, key_padding_mask=padding["a"]))


def test_null_alignment_keeps_queries_meaningful_over_one_source_token() -> None:
    torch.manual_seed(0)
    target, source = torch.randn(4, 3, 8), torch.randn(4, 1, 8)
    for layer, queries_matter in ((NullAlignedCrossLayer(8, 2, 16, 0.0), True), (CrossModalLayer(8, 2), False)):
        layer(target, source).sum().backward()
        assert layer.norm_query.weight.grad is not None
        assert bool(layer.norm_query.weight.grad.abs().sum() > 0) == queries_matter


# -- the token/frame path ----------------------------------------------------------------------------
def test_sequence_path_reads_the_tokens_and_ignores_padding() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    model = _mgcma("ta", sequence_dims={m: SEQ_DIMS[m] for m in "ta"}).eval()
    sequences, lengths = _sequences(batch.num_utterances, "ta", max_len=6)
    with torch.no_grad():
        reference = model(_with_sequences(batch, sequences, lengths)).logits
        # Garbage in the padding and a longer padded length change nothing.
        noisy = {}
        for m, seq in sequences.items():
            longer = torch.randn(seq.shape[0], 10, seq.shape[2]) * 50
            real = torch.arange(10)[None, :] < lengths[m][:, None]
            longer[:, :6] = torch.where(real[:, :6, None], seq, longer[:, :6])
            noisy[m] = longer
        torch.testing.assert_close(
            model(_with_sequences(batch, noisy, lengths)).logits, reference, rtol=1e-4, atol=1e-5
        )
        # The tokens matter: changing one real token of one utterance moves that utterance only.
        moved = {m: s.clone() for m, s in sequences.items()}
        moved["a"][4, 0] += 3.0
        changed = model(_with_sequences(batch, moved, lengths)).logits
        without = model(batch).logits  # the fallback: utterance vectors
    assert not torch.allclose(changed[4], reference[4])
    keep = [i for i in range(batch.num_utterances) if i != 4]
    torch.testing.assert_close(changed[keep], reference[keep])
    assert not torch.allclose(without, reference)


def test_sequence_path_does_not_depend_on_batch_mates() -> None:
    ds = make_dataset((1, 7, 3, 5), "ta", seed=1)
    items = to_tensors(ds)["train"]
    model = _mgcma("ta", sequence_dims={m: SEQ_DIMS[m] for m in "ta"}).eval()
    sequences, lengths = _sequences(16, "ta", max_len=9, seed=3)
    offsets = [0, 1, 8, 11, 16]
    with torch.no_grad():
        together = model(_with_sequences(collate(items, ds.modalities), sequences, lengths)).logits
        for i, item in enumerate(items):
            rows = slice(offsets[i], offsets[i + 1])
            longest = int(max(lengths[m][rows].max() for m in "ta"))
            own = {m: s[rows, :longest] for m, s in sequences.items()}  # a shorter padded length
            alone = model(
                _with_sequences(collate([item], ds.modalities), own, {m: v[rows] for m, v in lengths.items()})
            )
            torch.testing.assert_close(alone.logits, together[rows], rtol=1e-4, atol=1e-5)


def test_fallback_for_missing_sequences_and_empty_utterances() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    seq_model = _mgcma("ta", sequence_dims={m: SEQ_DIMS[m] for m in "ta"}).eval()
    plain = _mgcma("ta").eval()
    sequences, lengths = _sequences(batch.num_utterances, "ta")
    with torch.no_grad():
        # A model built without sequence_dims reads the utterance vectors, sequences or not.
        torch.testing.assert_close(plain(_with_sequences(batch, sequences, lengths)).logits, plain(batch).logits)
        # An utterance with no audio frames uses its audio vector: its prediction is the one
        # where the whole batch has no audio sequences.
        empty = dict(lengths)
        empty["a"] = lengths["a"].clone()
        empty["a"][[2, 9]] = 0
        zeroed = dict(sequences)
        zeroed["a"] = sequences["a"] * (torch.arange(6)[None, :] < empty["a"][:, None])[..., None]
        partial = seq_model(_with_sequences(batch, zeroed, empty)).logits
        no_audio = seq_model(_with_sequences(batch, {"t": sequences["t"]}, {"t": lengths["t"]})).logits
    torch.testing.assert_close(partial[[2, 9]], no_audio[[2, 9]])
    assert not torch.allclose(partial[3], no_audio[3])


def test_gradients_reach_the_sequence_projections() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    model = _mgcma("ta", sequence_dims={m: SEQ_DIMS[m] for m in "ta"}).train()
    sequences, lengths = _sequences(batch.num_utterances, "ta")
    out = model(_with_sequences(batch, sequences, lengths))
    (F.cross_entropy(out.logits, batch.flat_labels) + sum(out.aux_losses.values())).backward()
    for m in "ta":
        encoder = model.encoders[m]
        assert encoder.sequence_proj.weight.grad is not None and encoder.sequence_proj.weight.grad.abs().sum() > 0
        # Every utterance has tokens: the fallback projection is not read.
        assert encoder.utterance_proj.weight.grad is None
    dead = [
        n
        for n, p in model.named_parameters()
        if "utterance_proj" not in n and (p.grad is None or not p.grad.abs().sum())
    ]
    assert not dead


def test_bad_sequences_are_clear_errors() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    model = _mgcma("ta", sequence_dims={"t": SEQ_DIMS["t"]})
    sequences, lengths = _sequences(batch.num_utterances, "t")
    with pytest.raises(DataError, match="sequence_dims"):
        model(_with_sequences(batch, {"t": sequences["t"][..., :-1]}, lengths))
    with pytest.raises(DataError, match="one row and one length"):
        model(_with_sequences(batch, {"t": sequences["t"][:5]}, lengths))
    too_long = {"t": lengths["t"] + 10}
    with pytest.raises(DataError, match="lengths"):
        model(_with_sequences(batch, sequences, too_long))


# -- the hook lift ------------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_lift_code_change_pools_to_the_hooked_code(pooling: str) -> None:
    g = torch.Generator().manual_seed(0)
    valid = torch.arange(5)[None, :] < torch.tensor([1, 3, 5, 2])[:, None]
    tokens = torch.randn(4, 5, 6, generator=g) * valid[..., None]
    code = pool_tokens(tokens, valid, pooling)  # type: ignore[arg-type]
    hooked = torch.randn(4, 6, generator=g)
    lifted = lift_code_change(tokens, valid, code, hooked)
    torch.testing.assert_close(pool_tokens(lifted, valid, pooling), hooked)  # type: ignore[arg-type]
    assert (lifted[~valid] == 0).all()
    torch.testing.assert_close(lift_code_change(tokens, valid, code, torch.zeros_like(code)), torch.zeros_like(tokens))
    torch.testing.assert_close(lift_code_change(tokens, valid, code, 2.5 * code), 2.5 * tokens)
    assert torch.equal(lift_code_change(tokens, valid, code, code.clone()), tokens)


@pytest.mark.parametrize("fast", [False, True])
def test_a_hook_that_zeroes_a_modality_zeroes_its_tokens(fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    model = _mgcma("ta", sequence_dims={m: SEQ_DIMS[m] for m in "ta"}).eval()
    sequences, lengths = _sequences(batch.num_utterances, "ta")
    seq_batch = _with_sequences(batch, sequences, lengths)
    captured: dict[str, torch.Tensor] = {}

    def drop_audio(_: Batch, codes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: torch.zeros_like(c) if m == "a" else c for m, c in codes.items()}

    # The TAM's input tokens (padded grid or packed rows, whichever path runs).
    block = model.token_alignment[0]
    name = "forward_packed" if fast else "forward"
    original = getattr(block, name)

    def capture(tokens: dict[str, torch.Tensor], *args: object) -> dict[str, torch.Tensor]:
        captured.setdefault("a", tokens["a"])
        return original(tokens, *args)

    monkeypatch.setattr(block, name, capture)
    with torch.no_grad(), model.before_fuse(drop_audio), use_fast_kernels(fast):
        model(seq_batch)
    assert captured["a"].numel() and (captured["a"] == 0).all()


# -- recipes and options -----------------------------------------------------------------------------
def test_constructor_errors() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        _mgcma("ta", hidden_size=10, num_heads=4)
    with pytest.raises(ConfigError, match="even"):
        _mgcma("ta", hidden_size=9, num_heads=3)
    with pytest.raises(ConfigError, match="sequence_dims"):
        _mgcma("ta", sequence_dims={"v": 3})
    with pytest.raises(ConfigError, match="wasserstein_scale"):
        _mgcma("ta", wasserstein_scale=0.0)
    with pytest.raises(ConfigError, match="temperatures"):
        _mgcma("ta", instance_temperature=0.0)


def test_no_alignment_losses_in_evaluation() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    model = _mgcma("ta").eval()
    with torch.no_grad():
        assert model(batch).aux_losses == {}


def test_recipe_and_ablation_overrides() -> None:
    recipe = load_recipe("mgcma", "default")
    TrainConfig.from_dict(recipe["training"])
    options = check_model_arguments("mgcma", recipe["model"])
    model = build_model("mgcma", in_dims={"t": 384, "a": 100}, num_classes=6, **options)
    assert isinstance(model, MGCMA)
    assert model.use_distribution_alignment and model.use_token_alignment and model.use_instance_alignment
    switches = check_model_arguments(
        "mgcma", {"use_distribution_alignment": "false", "use_token_alignment": "no", "pooling": "FIRST"}
    )
    assert switches == {"use_distribution_alignment": False, "use_token_alignment": False, "pooling": "first"}
    with pytest.raises(ConfigError, match="model.pooling"):
        check_model_arguments("mgcma", {"pooling": "max"})


@pytest.mark.parametrize("modalities", ["ta", "tav", "t"])
@pytest.mark.parametrize("pooling", ["mean", "first"])
@pytest.mark.parametrize("null_alignment", [True, False])
def test_packed_token_path_equals_the_padded_path(modalities: str, pooling: str, null_alignment: bool) -> None:
    """The fast path (real tokens only) and the plain padded path: same logits, losses and gradients."""
    batch, _ = make_batch((1, 7, 3), modalities)
    sequences, lengths = _sequences(batch.num_utterances, modalities, max_len=9)
    lengths[modalities[0]][2] = 0  # an utterance without tokens: the fallback token
    batch = _with_sequences(batch, sequences, lengths)
    results = {}
    for fast in (False, True):
        model = _mgcma(
            modalities,
            sequence_dims={m: SEQ_DIMS[m] for m in modalities},
            pooling=pooling,
            null_alignment=null_alignment,
            dropout=0.0,
        ).train()
        with use_fast_kernels(fast):
            out = model(batch)
            loss = out.logits.square().sum() + sum(out.aux_losses.values())
            loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[fast] = (out.logits.detach(), {k: v.detach() for k, v in out.aux_losses.items()}, grads)
    (plain_logits, plain_aux, plain_grads), (fast_logits, fast_aux, fast_grads) = results[False], results[True]
    torch.testing.assert_close(fast_logits, plain_logits, rtol=1e-4, atol=1e-5)
    assert fast_aux.keys() == plain_aux.keys()
    for key in plain_aux:
        torch.testing.assert_close(fast_aux[key], plain_aux[key], rtol=1e-4, atol=1e-5)
    assert fast_grads.keys() == plain_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(fast_grads[name], plain_grads[name], rtol=1e-3, atol=1e-5, msg=name)
