"""RSM-specific behaviour: CMD and orthogonality values, the loss wiring, each ablation, both input paths."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import DIMS, make_batch, make_dataset
from merc.config import load_recipe
from merc.data.batching import Batch, collate, to_tensors
from merc.errors import ConfigError, DataError
from merc.models import build_model
from merc.models.layers.fast import use_fast_kernels
from merc.models.registry import check_model_arguments
from merc.models.rsm import RSM, RSMModalityEncoder, central_moment_discrepancy, orthogonality_loss
from merc.training.trainer import TrainConfig, Trainer

SMALL: dict[str, Any] = dict(hidden_size=8, num_heads=2, dropout=0.0)
SEQ_DIMS = {"t": 5, "a": 4}


def _rsm(modalities: str = "ta", seed: int = 0, **kwargs: Any) -> RSM:
    torch.manual_seed(seed)
    model = build_model("rsm", in_dims={m: DIMS[m] for m in modalities}, num_classes=3, **{**SMALL, **kwargs})
    assert isinstance(model, RSM)
    return model


def _names(model: torch.nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def _with_sequences(batch: Batch, seed: int = 0, max_len: int = 6, empty: bool = True) -> Batch:
    """``batch`` with random token/frame sequences of t and a (utterance 2 without tokens if ``empty``)."""
    g = torch.Generator().manual_seed(seed)
    n = batch.num_utterances
    lengths = torch.randint(1, max_len + 1, (n,), generator=g)
    if empty:
        lengths[2] = 0
    sequences, sequence_lengths = {}, {}
    for m, d in SEQ_DIMS.items():
        seq = torch.randn(n, max_len, d, generator=g)
        seq = seq * (torch.arange(max_len)[None, :] < lengths[:, None])[..., None]
        sequences[m], sequence_lengths[m] = seq, lengths.clone()
    return dataclasses.replace(batch, sequences=sequences, sequence_lengths=sequence_lengths)


# -- the loss functions against direct computations -----------------------------------------
def _numpy_cmd(x: np.ndarray, y: np.ndarray, k: int, squared: bool) -> float:
    def norm(v: np.ndarray) -> float:
        return float((v**2).sum()) if squared else float(np.sqrt((v**2).sum()))

    total = norm(x.mean(0) - y.mean(0))
    for order in range(2, k + 1):
        total += norm(((x - x.mean(0)) ** order).mean(0) - ((y - y.mean(0)) ** order).mean(0))
    return total


@pytest.mark.parametrize("moments", [1, 2, 5])
@pytest.mark.parametrize("norm", ["squared", "l2"])
def test_cmd_matches_a_direct_numpy_computation(moments: int, norm: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((13, 6))
    y = rng.random((9, 6)) ** 2  # another distribution, another sample size
    got = central_moment_discrepancy(torch.tensor(x), torch.tensor(y), moments, norm)  # type: ignore[arg-type]
    assert float(got) == pytest.approx(_numpy_cmd(x, y, moments, norm == "squared"), rel=1e-10)
    assert float(central_moment_discrepancy(torch.tensor(x), torch.tensor(x), moments, norm)) < 1e-5  # type: ignore[arg-type]


def test_orthogonality_loss_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(11, 5)), rng.normal(size=(11, 7))
    printed = float(orthogonality_loss(torch.tensor(a), torch.tensor(b), "none"))
    assert printed == pytest.approx(float(np.linalg.norm(a.T @ b, "fro") ** 2), rel=1e-10)

    def misa(z: np.ndarray) -> np.ndarray:
        z = z - z.mean(0)
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    normalised = float(orthogonality_loss(torch.tensor(a), torch.tensor(b), "misa"))
    assert normalised == pytest.approx(float(((misa(a).T @ misa(b)) ** 2).mean()), rel=1e-10)
    # Orthogonal codes cost nothing; the normalised form ignores the codes' scale.
    e = torch.eye(4)
    assert float(orthogonality_loss(e[:, :2], e[:, 2:], "none")) == 0.0
    scaled = float(orthogonality_loss(torch.tensor(a) * 7.0, torch.tensor(b), "misa"))
    assert scaled == pytest.approx(normalised, rel=1e-9)


# -- the losses the model reports -------------------------------------------------------------
def test_aux_losses_are_the_papers_terms_with_their_weights() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    model = _rsm("ta", alpha=0.3, beta=0.2).train()  # dropout 0: the forward is deterministic
    out = model(batch)
    assert set(out.aux_losses) == {"unimodal_ce", "cmd", "difference", "reconstruction", "cycle"}
    with torch.no_grad():
        codes = model.encode(batch)
        pub, uni = model.subspaces(codes)
        cmd = central_moment_discrepancy(pub["t"], pub["a"], 5, "squared")
        # Eq. 6: ||U_t^uni^T U_a^uni|| + ||U_a^uni^T U_a^pub|| + ||U_t^uni^T U_t^pub||.
        dif = sum(
            orthogonality_loss(x, y) for x, y in [(uni["t"], uni["a"]), (uni["a"], pub["a"]), (uni["t"], pub["t"])]
        )
        rec = {m: model.decoders[m](pub[m] + uni[m]) for m in "ta"}
        rec_loss = sum(((codes[m] - rec[m]) ** 2).sum(1).mean() / 8 for m in "ta")  # eq. 7, d_h = 8
        cyc_loss = sum(((uni[m] - model.private_encoders[m](rec[m])) ** 2).sum(1).mean() / 8 for m in "ta")
        ua = sum(F.cross_entropy(model.unimodal_classifiers[m](codes[m]), batch.flat_labels) for m in "ta")
    torch.testing.assert_close(out.aux_losses["cmd"], 0.2 * 0.3 * cmd)
    torch.testing.assert_close(out.aux_losses["difference"], 0.2 * 0.3 * dif)
    torch.testing.assert_close(out.aux_losses["reconstruction"], 0.2 * rec_loss)
    torch.testing.assert_close(out.aux_losses["cycle"], 0.2 * cyc_loss)
    torch.testing.assert_close(out.aux_losses["unimodal_ce"], ua)  # eq. 3, weight 1 in eq. 13
    assert not model.eval()(batch).aux_losses  # training only


def test_fused_features_are_the_cross_modal_and_public_codes() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    model = _rsm("ta").eval()
    with torch.no_grad():
        out = model(batch)
        pub, uni = model.subspaces(model.encode(batch))
        crossed = model.cross_modal(batch, uni)  # [F_{t->a}, F_{a->t}] in pair order
    assert [f"{s}_to_{t}" for s, t in model.pairs] == ["t_to_a", "a_to_t"]
    torch.testing.assert_close(out.embeddings, torch.cat([*crossed, pub["t"], pub["a"]], dim=-1))
    torch.testing.assert_close(out.logits, model.classifier(out.embeddings))


def test_cross_modal_attention_stays_within_a_dialogue() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    model = _rsm("ta").eval()
    with torch.no_grad():
        _, uni = model.subspaces(model.encode(batch))
        base = model.cross_modal(batch, uni)
        moved = {m: u.clone() for m, u in uni.items()}
        moved["a"][1:8] += 5.0  # dialogue 1's audio
        after = model.cross_modal(batch, moved)
    for f0, f1 in zip(base, after):
        torch.testing.assert_close(f0[[0, 8, 9, 10]], f1[[0, 8, 9, 10]])
    assert not torch.allclose(base[1][1:8], after[1][1:8])  # a -> t in dialogue 1 moved


# -- the ablation switches (Table 6, Table 7) --------------------------------------------------
FULL_PARTS = {"encoders", "unimodal_classifiers", "public_encoder", "private_encoders", "classifier"}
FULL_PARTS |= {"cross_attention", "decoders"}


def test_the_full_model_has_every_part() -> None:
    assert {n.split(".")[0] for n in _names(_rsm("ta"))} == FULL_PARTS


def test_without_cross_modal_attention_concatenates_the_unique_codes() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    full, ablated = _rsm("ta").train(), _rsm("ta", use_cross_modal_attention=False).train()
    assert _names(ablated) == {n for n in _names(full) if not n.startswith("cross_attention.")}
    assert set(ablated(batch).aux_losses) == set(full(batch).aux_losses)
    ablated.eval()
    with torch.no_grad():
        out = ablated(batch)
        pub, uni = ablated.subspaces(ablated.encode(batch))
    torch.testing.assert_close(out.embeddings, torch.cat([uni["t"], uni["a"], pub["t"], pub["a"]], dim=-1))


def test_without_subspace_loss_removes_the_decoders_and_the_four_losses_only() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    full, ablated = _rsm("ta").train(), _rsm("ta", use_subspace_loss=False).train()
    assert _names(ablated) == {n for n in _names(full) if not n.startswith("decoders.")}
    assert set(ablated(batch).aux_losses) == {"unimodal_ce"}
    # Everything else is built (and initialised) as in the full model: same predictions.
    full.eval(), ablated.eval()
    with torch.no_grad():
        torch.testing.assert_close(ablated(batch).logits, full(batch).logits)


def test_without_unimodal_loss_the_heads_are_probes_and_the_rest_is_unchanged() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    full, ablated = _rsm("ta").train(), _rsm("ta", unimodal_loss_weight=0.0).train()
    assert _names(ablated) == _names(full)
    got, ref = ablated(batch).aux_losses, full(batch).aux_losses
    assert "unimodal_ce" not in got and "unimodal_probe" in got
    for name in ("cmd", "difference", "reconstruction", "cycle"):
        torch.testing.assert_close(got[name], ref[name])


def test_without_subspace_mapping_is_the_plain_bigru_model() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    full = _rsm("ta").train()
    bigru = _rsm("ta", use_subspace_mapping=False, use_cross_modal_attention=False).train()
    removed = ("public_encoder.", "private_encoders.", "decoders.", "cross_attention.")
    assert _names(bigru) == {n for n in _names(full) if not n.startswith(removed)}
    assert set(bigru(batch).aux_losses) == {"unimodal_ce"}
    bigru.eval()
    with torch.no_grad():
        out = bigru(batch)
        codes = bigru.encode(batch)
    torch.testing.assert_close(out.embeddings, torch.cat([codes["t"], codes["a"]], dim=-1))
    # With cross-modal attention on, it attends over the codes themselves.
    attending = _rsm("ta", use_subspace_mapping=False)
    assert attending.classifier_input_size == 2 * 8 and len(attending.cross_attention) == 2


def test_bilstm_and_other_switches() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    lstm = _rsm("ta", rnn_cell="lstm", use_subspace_mapping=False, use_cross_modal_attention=False)
    encoder = lstm.encoders["t"]
    assert isinstance(encoder, RSMModalityEncoder) and isinstance(encoder.context_rnn.rnn, torch.nn.LSTM)
    no_attention = _rsm("ta", use_self_attention=False)
    assert not any(".context_attention." in n for n in _names(no_attention))
    no_cycle = _rsm("ta", use_cycle_loss=False).train()
    assert set(no_cycle(batch).aux_losses) == {"unimodal_ce", "cmd", "difference", "reconstruction"}
    alpha_zero = _rsm("ta", alpha=0.0).train()
    assert set(alpha_zero(batch).aux_losses) == {"unimodal_ce", "reconstruction", "cycle"}


# -- modality subsets -----------------------------------------------------------------------
def test_three_modalities_average_pair_terms_and_concatenate_every_ordered_pair() -> None:
    batch, _ = make_batch((1, 7, 3), "tav")
    model = _rsm("tav", alpha=1.0, beta=1.0).train()
    assert sorted(model.cross_attention) == sorted(f"{s}_to_{t}" for s, t in itertools.permutations("tav", 2))
    assert model.classifier_input_size == (6 + 3) * 8
    out = model(batch)
    with torch.no_grad():
        pub, uni = model.subspaces(model.encode(batch))
    pairs = list(itertools.combinations("tav", 2))
    cmd = sum(central_moment_discrepancy(pub[a], pub[b]) for a, b in pairs) / 3
    dif = sum(orthogonality_loss(uni[a], uni[b]) for a, b in pairs) / 3
    dif = dif + sum(orthogonality_loss(uni[m], pub[m]) for m in "tav")
    torch.testing.assert_close(out.aux_losses["cmd"], cmd)
    torch.testing.assert_close(out.aux_losses["difference"], dif)


def test_one_modality_degenerates_as_documented() -> None:
    batch, _ = make_batch((1, 7, 3), "a")
    model = _rsm("a").train()
    assert not model.cross_attention and model.classifier_input_size == 2 * 8
    out = model(batch)
    assert set(out.aux_losses) == {"unimodal_ce", "difference", "reconstruction", "cycle"}
    with torch.no_grad():
        pub, uni = model.subspaces(model.encode(batch))
    torch.testing.assert_close(out.aux_losses["difference"], 0.01 * orthogonality_loss(uni["a"], pub["a"]))
    torch.testing.assert_close(out.embeddings, torch.cat([uni["a"], pub["a"]], dim=-1))


# -- the two input paths ----------------------------------------------------------------------
def test_token_path_is_taken_when_the_batch_has_sequences() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    seq_batch = _with_sequences(batch)
    model = _rsm("ta", sequence_dims=SEQ_DIMS).eval()
    with torch.no_grad():
        context = model.encode(batch)  # no sequences: the context path
        tokens = model.encode(seq_batch)
        # The token path reads the tokens, not the utterance vectors (except where an utterance has none).
        features = {m: f + 3.0 for m, f in seq_batch.features.items()}
        moved = model.encode(dataclasses.replace(seq_batch, features=features))
    for m in "ta":
        assert not torch.allclose(context[m], tokens[m])
        keep = torch.arange(11) != 2
        torch.testing.assert_close(moved[m][keep], tokens[m][keep])
        assert not torch.allclose(moved[m][2], tokens[m][2])  # the empty utterance uses its vector
    # A model built without sequence_dims takes the context path whatever the batch holds.
    plain = _rsm("ta").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain.encode(seq_batch)["t"], plain.encode(batch)["t"])


def test_only_the_modalities_with_sequences_take_the_token_path() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    seq_batch = _with_sequences(batch)
    text_only = dataclasses.replace(
        seq_batch,
        sequences={"t": seq_batch.sequences["t"]},
        sequence_lengths={"t": seq_batch.sequence_lengths["t"]},
    )
    model = _rsm("ta", sequence_dims=SEQ_DIMS).eval()
    with torch.no_grad():
        mixed, tokens, context = model.encode(text_only), model.encode(seq_batch), model.encode(batch)
    torch.testing.assert_close(mixed["t"], tokens["t"])
    torch.testing.assert_close(mixed["a"], context["a"])


def test_token_path_ignores_padding_and_other_utterances() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    seq_batch = _with_sequences(batch, max_len=6)
    model = _rsm("ta", sequence_dims=SEQ_DIMS, dropout=0.2).eval()
    # Garbage past each utterance's length, and more padding columns.
    noisy = {}
    for m, seq in seq_batch.sequences.items():
        lengths = seq_batch.sequence_lengths[m]
        padded = F.pad(seq, (0, 0, 0, 5))
        garbage = 100 * torch.randn_like(padded)
        past = torch.arange(padded.shape[1])[None, :] >= lengths[:, None]
        noisy[m] = torch.where(past[..., None], garbage, padded)
    noisy_batch = dataclasses.replace(seq_batch, sequences=noisy)
    # Utterance 4 gets a much longer sequence: the batch's longest changes, nobody else's code does.
    longer = {m: F.pad(s, (0, 0, 0, 10)) for m, s in seq_batch.sequences.items()}
    longer_lengths = {m: lengths.clone() for m, lengths in seq_batch.sequence_lengths.items()}
    for m in longer:
        longer[m][4, :16] = torch.randn(16, SEQ_DIMS[m])
        longer_lengths[m][4] = 16
    longer_batch = dataclasses.replace(seq_batch, sequences=longer, sequence_lengths=longer_lengths)
    with torch.no_grad():
        codes, noisy_codes, longer_codes = (model.encode(b) for b in (seq_batch, noisy_batch, longer_batch))
        torch.testing.assert_close(model(noisy_batch).logits, model(seq_batch).logits)
    others = torch.arange(11) != 4
    for m in "ta":
        torch.testing.assert_close(noisy_codes[m], codes[m])
        torch.testing.assert_close(longer_codes[m][others], codes[m][others], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(longer_codes[m][4], codes[m][4])


@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_token_path_trains_every_token_module(pooling: str) -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    seq_batch = _with_sequences(batch)
    model = _rsm("ta", sequence_dims=SEQ_DIMS, token_pooling=pooling, dropout=0.2).train()
    out = model(seq_batch)
    loss = F.cross_entropy(out.logits, seq_batch.flat_labels) + sum(out.aux_losses.values())
    loss.backward()
    for m in "ta":
        for part in ("token_projection", "token_rnn", "token_attention", "input_projection"):
            params = list(getattr(model.encoders[m], part).parameters())
            assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), (m, part)
        if pooling == "attention":
            assert model.encoders[m].token_score is not None
        else:
            assert model.encoders[m].token_score is None


def test_token_path_in_a_training_run() -> None:
    """Sequences from the data layer (``Conversation.sequences``), through the trainer."""
    ds = make_dataset((6, 9, 4, 8, 5), "ta", seed=2, separable=True)
    rng = np.random.default_rng(0)
    for conv in ds.conversations():
        # Each utterance's frames scatter around its (learnable) feature vector.
        conv.sequences = {
            "a": [f + 0.5 * rng.normal(size=(int(rng.integers(1, 6)), f.shape[0])) for f in conv.features["a"]]
        }
        conv.sequences["a"] = [s.astype(np.float32) for s in conv.sequences["a"]]
    torch.manual_seed(0)
    model = build_model(
        "rsm", in_dims={"t": DIMS["t"], "a": DIMS["a"]}, num_classes=3, sequence_dims={"a": DIMS["a"]}, hidden_size=16
    )
    items = to_tensors(ds)
    assert "a" in collate(items["train"], ds.modalities).sequences
    trainer = Trainer(
        model,
        items,
        ds.modalities,
        ds.num_classes,
        TrainConfig(epochs=40, lr=0.003, batch_size=5, patience=0, show_progress=False),
    )
    trainer.fit()
    assert trainer.evaluate(trainer.train_items)["accuracy"] >= 95.0


def test_bad_sequences_are_clear_errors() -> None:
    batch, _ = make_batch((1, 7, 3), "ta")
    model = _rsm("ta", sequence_dims={"a": 3})
    with pytest.raises(DataError, match="sequence_dims"):
        model(_with_sequences(batch))  # a's tokens are 4 wide
    with pytest.raises(ConfigError, match="sequence_dims"):
        _rsm("ta", sequence_dims={"v": 3})


# -- configuration ---------------------------------------------------------------------------
def test_recipe_holds_the_papers_settings() -> None:
    recipe = load_recipe("rsm", "iemocap4")
    model, training = recipe["model"], TrainConfig.from_dict(recipe["training"])
    assert (model["hidden_size"], model["num_heads"], model["dropout"]) == (100, 4, 0.2)  # Table 2
    assert (model["alpha"], model["beta"], model["unimodal_loss_weight"]) == (0.1, 0.1, 1.0)
    assert (training.batch_size, training.epochs, training.weight_decay) == (20, 150, 1e-5)
    built = build_model("rsm", in_dims={"t": 384, "a": 100}, num_classes=4, **model)
    assert isinstance(built, RSM) and built.classifier_input_size == 4 * 100  # [F_at, F_ta, U_a^pub, U_t^pub]


def test_bad_options_fail_when_the_recipe_is_read() -> None:
    with pytest.raises(ConfigError, match="model.cmd_norm"):
        check_model_arguments("rsm", {"cmd_norm": "cubic"})
    with pytest.raises(ConfigError, match="model.rnn_cell"):
        check_model_arguments("rsm", {"rnn_cell": "rnn"})
    with pytest.raises(ConfigError, match="subspace_activation"):
        _rsm("ta", subspace_activation="softplus")  # built directly, without the recipe check
    with pytest.raises(ConfigError, match="heads"):
        _rsm("ta", hidden_size=10, num_heads=4)
    with pytest.raises(ConfigError, match="even"):
        _rsm("ta", hidden_size=9, num_heads=3)


@pytest.mark.parametrize("pooling", ["attention", "mean"])
@pytest.mark.parametrize("use_self_attention", [True, False])
def test_token_fast_path_equals_the_padded_path(pooling: str, use_self_attention: bool) -> None:
    """Real tokens only + length-bucketed attention (fast) against the padded grid (plain): codes, logits, gradients."""
    batch, _ = make_batch((1, 7, 3), "ta")
    seq_batch = _with_sequences(batch, max_len=11)
    results = {}
    for fast in (False, True):
        model = _rsm("ta", sequence_dims=SEQ_DIMS, token_pooling=pooling, use_self_attention=use_self_attention).train()
        with use_fast_kernels(fast):
            out = model(seq_batch)
            (out.logits.square().sum() + sum(out.aux_losses.values())).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[fast] = (out.logits.detach(), grads)
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-4, atol=1e-5)
    assert results[True][1].keys() == results[False][1].keys()
    for name, grad in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], grad, rtol=1e-3, atol=1e-5, msg=name)
