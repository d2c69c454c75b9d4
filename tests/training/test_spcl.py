"""SPCL self-paced curriculum (Nguyen et al. 2026, Section 3, Tables 5 and 8) as a trainer plug-in."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from helpers import KillAt, assert_same_training, make_batch, make_dataset
from merc.data.batching import IGNORE_INDEX, collate, to_tensors
from merc.errors import ConfigError
from merc.models import build_model
from merc.models.output import ModelOutput
from merc.training.plugins import build_plugins
from merc.training.plugins.curriculum import build_curriculum
from merc.training.plugins.registry import check_plugin_sections, switch_overrides
from merc.training.plugins.spcl import (
    SPCL,
    SPCLConfig,
    build_spcl,
    check_spcl,
    competence,
    cosine_threshold,
    exponential_threshold,
    moving_average_threshold,
    self_paced_weights,
    spcl_difficulty,
)
from merc.training.trainer import TrainConfig, Trainer

U = IGNORE_INDEX

# Two dialogues of two utterances; the second dialogue's last utterance is unlabelled.
LOGITS = {
    "t": [[2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]],
    "a": [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    "v": [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [5.0, 0.0, 0.0]],
}
LABELS = [0, 2, 1, U]
DIALOGUE = [0, 0, 1, 1]


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(x) for x in z]
    return [x / sum(e) for x in e]


def _std(xs: list[float], correction: int) -> float:
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - correction))


def _hand(correction: int = 1) -> tuple[list[float], list[float], list[float]]:
    """l_ij (eq. 3), s_i (eqs. 4-5) and rho_ij (eq. 6) of the labelled utterances, in plain Python."""
    labelled = [j for j, y in enumerate(LABELS) if y != U]
    joint = [[sum(LOGITS[m][j][k] for m in "tav") for k in range(3)] for j in range(4)]
    loss = [-math.log(_softmax(joint[j])[LABELS[j]]) for j in labelled]
    s_m = {m: [0.0, 0.0] for m in "tav"}
    for j in labelled:
        for m in "tav":
            s_m[m][DIALOGUE[j]] += _softmax(LOGITS[m][j])[LABELS[j]]
    s_i = [_std([s_m[m][i] for m in "tav"], correction) for i in range(2)]
    conv = [s_i[DIALOGUE[j]] for j in labelled]
    rho = [2 * s * lij / (s + lij) for s, lij in zip(conv, loss, strict=True)]
    return loss, conv, rho


def _tensors() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    return {m: torch.tensor(v) for m, v in LOGITS.items()}, torch.tensor(LABELS), torch.tensor(DIALOGUE)


# -- difficulty measurer ---------------------------------------------------------------
@pytest.mark.parametrize(("std", "correction"), [("sample", 1), ("population", 0)])
def test_difficulty_matches_hand_computation(std: str, correction: int) -> None:
    logits, labels, dialogue = _tensors()
    d = spcl_difficulty(logits, labels, dialogue, 2, conversation_std=std)
    loss, conv, rho = _hand(correction)
    keep = [0, 1, 2]
    assert d.labelled.tolist() == [True, True, True, False]
    assert d.utterance_score is not None and d.conversation_score is not None and d.dialogue_score is not None
    torch.testing.assert_close(d.utterance_score[keep], torch.tensor(loss))
    torch.testing.assert_close(d.conversation_score[keep], torch.tensor(conv))
    torch.testing.assert_close(d.difficulty[keep], torch.tensor(rho))
    assert d.difficulty[3] == 0  # unlabelled: no difficulty
    # The unlabelled utterance adds nothing to its dialogue's sums (eq. 4's indicator is 0).
    assert d.dialogue_score[1] == pytest.approx(conv[2], rel=1e-6)
    # Two dialogues really differ, and both scores matter.
    assert conv[0] != conv[2] and all(r < min(2 * c, 2 * lij) for r, c, lij in zip(rho, conv, loss, strict=True))


def test_ablation_switches_drop_one_score() -> None:
    logits, labels, dialogue = _tensors()
    loss, conv, rho = _hand()
    keep = [0, 1, 2]
    no_utt = spcl_difficulty(logits, labels, dialogue, 2, use_utterance_score=False)
    no_conv = spcl_difficulty(logits, labels, dialogue, 2, use_conversation_score=False)
    torch.testing.assert_close(no_utt.difficulty[keep], torch.tensor(conv))  # Table 5 "w/o utt-score"
    torch.testing.assert_close(no_conv.difficulty[keep], torch.tensor(loss))  # Table 5 "w/o conv-score"
    assert no_utt.utterance_score is None and no_conv.conversation_score is None
    assert not torch.allclose(no_utt.difficulty[keep], torch.tensor(rho))
    with pytest.raises(ConfigError, match="at least one"):
        SPCLConfig(use_utterance_score=False, use_conversation_score=False)
    with pytest.raises(ConfigError, match="modalities"):
        spcl_difficulty({"t": logits["t"]}, labels, dialogue, 2)
    one = spcl_difficulty({"t": logits["t"]}, labels, dialogue, 2, use_conversation_score=False)
    assert one.difficulty[0] == pytest.approx(-math.log(_softmax(LOGITS["t"][0])[0]))


def test_fused_logits_and_batch_mean_normalisation() -> None:
    logits, labels, dialogue = _tensors()
    fused = torch.tensor([[0.0, 0.0, 4.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    d = spcl_difficulty(logits, labels, dialogue, 2, fused_logits=fused)
    expected_l = [-math.log(_softmax(fused[j].tolist())[LABELS[j]]) for j in range(3)]
    assert d.utterance_score is not None
    torch.testing.assert_close(d.utterance_score[:3], torch.tensor(expected_l))
    loss, conv, _ = _hand()
    n = spcl_difficulty(logits, labels, dialogue, 2, score_normalisation="batch-mean")
    ln = [x / (sum(loss) / 3) for x in loss]
    cn = [x / (sum(conv) / 3) for x in conv]
    torch.testing.assert_close(
        n.difficulty[:3], torch.tensor([2 * a * b / (a + b) for a, b in zip(ln, cn, strict=True)])
    )


def test_harmonic_mean_is_zero_when_both_scores_are_zero() -> None:
    # Identical, perfectly confident modalities: s_i = 0 and l_ij ~ 0 (no 0/0 NaN).
    z = torch.tensor([[60.0, -60.0]])
    d = spcl_difficulty({"t": z, "a": z}, torch.tensor([0]), torch.tensor([0]), 1)
    assert torch.isfinite(d.difficulty).all() and float(d.difficulty[0]) == 0.0


def test_vectorised_difficulty_equals_a_loop_over_dialogues() -> None:
    batch, _ = make_batch((1, 7, 3, 5))
    torch.manual_seed(1)
    n = batch.num_utterances
    logits = {m: torch.randn(n, 3) * 2 for m in "tav"}
    labels = batch.flat_labels.clone()
    labels[4] = U
    d = spcl_difficulty(logits, labels, batch.utterance_dialogue, batch.batch_size)
    lengths = batch.lengths.tolist()
    start = 0
    for i, length in enumerate(lengths):
        rows = range(start, start + length)
        sums = [sum(float(torch.softmax(logits[m][j], 0)[labels[j]]) for j in rows if labels[j] != U) for m in "tav"]
        s = _std(sums, 1)
        for j in rows:
            if labels[j] == U:
                assert d.difficulty[j] == 0
                continue
            joint = torch.stack([logits[m][j] for m in "tav"]).sum(0)
            lij = float(F.cross_entropy(joint[None], labels[j : j + 1]))
            assert float(d.difficulty[j]) == pytest.approx(2 * s * lij / (s + lij), rel=1e-5), (i, j)
        start += length
    assert start == n


# -- learning scheduler ----------------------------------------------------------------
def test_weights_match_hand_values() -> None:
    rho = torch.tensor([0.0, 0.5, 1.0, 1.5, 3.0])
    assert self_paced_weights(rho, 1.0, "hard").tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]  # eq. 7: rho <= lambda
    torch.testing.assert_close(self_paced_weights(rho, 1.0, "linear"), torch.tensor([1.0, 0.5, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(self_paced_weights(rho, 2.0, "linear"), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    logistic = [(1 + math.exp(-2.0)) / (1 + math.exp(r - 2.0)) for r in rho.tolist()]
    torch.testing.assert_close(self_paced_weights(rho, 2.0, "logistic"), torch.tensor(logistic))
    assert self_paced_weights(rho, 2.0, "logistic")[0] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="hard"):
        self_paced_weights(rho, 1.0, "soft")


def test_pacing_functions_follow_their_formulas() -> None:
    eps, alpha = 0.8, 1.1
    for t in range(6):
        assert exponential_threshold(t, eps, alpha) == pytest.approx(eps * alpha**t)
    assert exponential_threshold(3, eps, alpha, max_threshold=1.0) == 1.0  # 0.8 * 1.331 capped
    assert exponential_threshold(10**6, eps, 1.4, max_threshold=60.0) == 60.0  # no OverflowError
    T = 10
    for t in (0, 3, 5, 10):
        assert cosine_threshold(t, T, eps, 4.0) == pytest.approx(
            eps + (4.0 - eps) / 2 * (1 - math.cos(math.pi * t / T))
        )
    assert cosine_threshold(0, T, eps, 4.0) == eps and cosine_threshold(T, T, eps, 4.0) == pytest.approx(4.0)
    assert moving_average_threshold(2, 1.0, 3.0, 7.0, 0.9, 5) == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)
    assert moving_average_threshold(5, 1.0, 3.0, 7.0, 0.9, 5) == 7.0
    for t in (0, 1, 4, 10, 12):
        assert competence(t, T, 0.01) == pytest.approx(min(1.0, math.sqrt(t * (1 - 0.01**2) / T + 0.01**2)))
    assert competence(10, T, 0.01) == 1.0 and competence(12, T, 0.01) == 1.0


def test_plugin_threshold_per_epoch() -> None:
    expo = SPCL(SPCLConfig(epsilon=0.5, alpha=1.3, max_threshold=2.0))
    assert [expo.threshold_for_epoch(t, 8) for t in range(7)] == pytest.approx(
        [min(0.5 * 1.3**t, 2.0) for t in range(7)]
    )
    cos = SPCL(SPCLConfig(epsilon=0.5, pacing="cosine", max_threshold=3.0))
    assert [cos.threshold_for_epoch(t, 8) for t in range(8)] == pytest.approx(
        [cosine_threshold(t, 8, 0.5, 3.0) for t in range(8)]
    )


def _fake_trainer(epochs: int = 4):  # type: ignore[no-untyped-def]
    return SimpleNamespace(model=SimpleNamespace(training=True), config=SimpleNamespace(epochs=epochs))


def _one_batch_output(seed: int = 0):  # type: ignore[no-untyped-def]
    batch, _ = make_batch((1, 7, 3, 5), seed=seed)
    g = torch.Generator().manual_seed(seed)
    n = batch.num_utterances
    uni = {m: torch.randn(n, 3, generator=g) * 2 for m in "tav"}
    return batch, ModelOutput(logits=sum(uni.values()), unimodal_logits=uni)  # type: ignore[arg-type]


def _run_epoch(plugin: SPCL, trainer, epoch: int, batch, output) -> dict:  # type: ignore[no-untyped-def]
    plugin.on_epoch_start(trainer, epoch)
    plugin.utterance_weights(trainer, batch, output, torch.zeros(batch.num_utterances))
    plugin.on_epoch_end(trainer, epoch, {})
    return plugin.epoch_metrics(trainer)


def test_data_driven_pacings_use_the_previous_epochs_difficulties() -> None:
    batch, out = _one_batch_output()
    rho = spcl_difficulty(out.unimodal_logits, batch.flat_labels, batch.utterance_dialogue, batch.batch_size).difficulty
    trainer = _fake_trainer(epochs=4)
    ma = SPCL(SPCLConfig(epsilon=0.3, pacing="moving-average", ma_momentum=0.8, ma_full_epoch=2))
    thresholds = [_run_epoch(ma, trainer, t, batch, out)["threshold"] for t in range(3)]
    lam1 = 0.8 * 0.3 + 0.2 * float(rho.mean())
    assert thresholds == pytest.approx([0.3, lam1, float(rho.max())])
    cb = SPCL(SPCLConfig(epsilon=0.3, pacing="competence", competence_start=0.1))
    thresholds = [_run_epoch(cb, trainer, t, batch, out)["threshold"] for t in range(5)]
    expected = [0.3] + [float(torch.quantile(rho.double(), competence(t, 4, 0.1))) for t in range(1, 5)]
    assert thresholds == pytest.approx(expected)
    assert thresholds[-1] == pytest.approx(float(rho.max()))  # full competence: every utterance


def test_selected_share_grows_with_the_threshold_and_reaches_one() -> None:
    batch, out = _one_batch_output()
    rho = spcl_difficulty(out.unimodal_logits, batch.flat_labels, batch.utterance_dialogue, batch.batch_size).difficulty
    plugin = SPCL(SPCLConfig(epsilon=float(rho.min()) * 1.01, alpha=2.0, max_threshold=1e6))
    trainer = _fake_trainer(epochs=30)
    shares = []
    for t in range(30):
        m = _run_epoch(plugin, trainer, t, batch, out)
        assert m["threshold"] == pytest.approx(plugin.config.epsilon * 2.0**t)
        assert m["selected_share"] == pytest.approx(float((rho <= m["threshold"]).float().mean()))
        assert m["labelled_utterances"] == batch.num_utterances
        assert m["mean_difficulty"] == pytest.approx(float(rho.mean()))
        shares.append(m["selected_share"])
        if m["threshold"] >= float(rho.max()):
            break
    assert shares[0] < 0.5 and shares[-1] == 1.0
    assert all(b >= a for a, b in zip(shares, shares[1:], strict=False)) and len(set(shares)) > 2
    soft = SPCL(SPCLConfig(epsilon=float(rho.mean()), regularizer="linear"))
    m = _run_epoch(soft, trainer, 0, batch, out)
    v = (1 - rho / float(rho.mean())).clamp_min(0)
    assert m["selected_share"] == pytest.approx(float(v.mean()))  # weighted by v
    assert m["included_share"] == pytest.approx(float((v > 0).float().mean()))


# -- with the trainer ------------------------------------------------------------------
def _trainer(plugins, epochs: int = 2, run_dir=None, modalities: str = "tav", **model_kwargs) -> Trainer:  # type: ignore[no-untyped-def]
    ds = make_dataset((5, 7, 3, 6, 4, 8), modalities, seed=4, separable=True)
    torch.manual_seed(0)
    model = build_model(
        "bclstm", in_dims=ds.dims, num_classes=ds.num_classes, hidden_size=8, dense_size=8, **model_kwargs
    )
    cfg = TrainConfig(epochs=epochs, batch_size=2, lr=0.01, patience=0, show_progress=False)
    return Trainer(model, to_tensors(ds), ds.modalities, ds.num_classes, cfg, plugins=list(plugins), run_dir=run_dir)


def _loss_with(plugin: SPCL) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
    trainer = _trainer([plugin])
    trainer.model.eval()  # no dropout: one fixed output
    batch = collate(trainer.train_items, trainer.modalities)
    output = trainer.model(batch)
    terms = trainer.loss_terms(batch, output)
    ce = F.cross_entropy(output.logits.detach(), batch.flat_labels, reduction="none")
    return float(terms["classification"].detach()), ce, plugin.difficulty(batch, output).difficulty, output.logits


def test_with_everything_selected_the_loss_is_the_plain_cross_entropy() -> None:
    loss, ce, _, _ = _loss_with(SPCL(SPCLConfig(epsilon=1e6, max_threshold=1e6)))
    assert loss == pytest.approx(float(ce.mean()), rel=1e-6)


@pytest.mark.parametrize("normalisation", ["selected", "labelled"])
def test_partial_selection_averages_over_the_selected(normalisation: str) -> None:
    probe = SPCL()
    _, ce, rho, _ = _loss_with(probe)
    lam = float(rho.median())
    loss, ce, rho, _ = _loss_with(SPCL(SPCLConfig(epsilon=lam, loss_normalisation=normalisation)))
    selected = rho <= lam
    assert 0 < int(selected.sum()) < len(rho)
    denominator = selected.sum() if normalisation == "selected" else len(rho)  # eq. 11 / authors' code
    assert loss == pytest.approx(float(ce[selected].sum() / denominator), rel=1e-5)


def test_model_without_unimodal_logits_is_refused() -> None:
    with pytest.raises(ConfigError, match="unimodal_heads"):
        _trainer([SPCL()], unimodal_heads=False)
    ds = make_dataset((3, 4), "ta")
    early = build_model("gcnet", in_dims=ds.dims, num_classes=ds.num_classes)
    with pytest.raises(ConfigError, match="spcl"):
        Trainer(early, to_tensors(ds), ds.modalities, ds.num_classes, TrainConfig(epochs=1), plugins=[SPCL()])
    batch, out = _one_batch_output()
    with pytest.raises(ConfigError, match="unimodal logits"):
        SPCL().difficulty(batch, ModelOutput(logits=out.logits))


def test_one_modality_needs_the_conversation_score_off() -> None:
    with pytest.raises(ConfigError, match="use_conversation_score"):
        _trainer([SPCL()], epochs=1, modalities="t").fit()
    tr = _trainer([SPCL(SPCLConfig(use_conversation_score=False))], epochs=1, modalities="t")
    tr.fit()
    assert "mean_conversation_score" not in tr.history[-1]["plugins"]["spcl"]


def test_end_to_end_fit_records_the_expanding_rate() -> None:
    # At initialisation the modalities agree (small s_i), so difficulties are small (~0.1 here).
    config = SPCLConfig(epsilon=0.05, alpha=2.0)
    tr = _trainer([SPCL(config)], epochs=3)
    tr.fit()
    records = [h["plugins"]["spcl"] for h in tr.history]
    assert [r["threshold"] for r in records] == pytest.approx([0.05 * 2.0**t for t in range(3)])
    for r in records:
        assert r["labelled_utterances"] == 33  # every labelled training utterance, once per epoch
        assert 0.0 <= r["selected_share"] <= 1.0 and r["included_share"] == pytest.approx(r["selected_share"])
        assert r["mean_difficulty"] > 0 and r["mean_utterance_score"] > 0 and r["mean_conversation_score"] > 0
    assert records[0]["selected_share"] < 1.0
    json.dumps(tr.history, allow_nan=False)


@pytest.mark.parametrize("pacing", ["competence", "moving-average"])
def test_composes_with_the_curriculum_and_resumes_identically(tmp_path, pacing: str) -> None:  # type: ignore[no-untyped-def]
    ds = make_dataset((5, 7, 3, 6, 4, 8), "tav", seed=4, separable=True)

    def plugins(*extra):  # type: ignore[no-untyped-def]
        cur = build_curriculum({"buckets": 2}, ds)
        return [cur, SPCL(SPCLConfig(epsilon=0.4, pacing=pacing)), *extra]

    straight = _trainer(plugins(), epochs=2, run_dir=tmp_path / "a")
    straight.fit()
    killed = _trainer(plugins(KillAt(1)), epochs=2, run_dir=tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert killed.epoch == 1
    resumed = _trainer(plugins(), epochs=2, run_dir=tmp_path / "b")
    resumed.fit()
    assert_same_training(resumed, straight)
    records = [h["plugins"]["spcl"] for h in straight.history]
    assert records[0]["threshold"] == 0.4 and records[1]["threshold"] != 0.4  # data-driven second epoch
    # The curriculum chose the dialogues SPCL scored: epoch 0 sees the easiest bucket only.
    cur = plugins()[0]
    lengths = [len(c) for c in ds.splits["train"]]
    assert records[0]["labelled_utterances"] == sum(lengths[i] for i in cur.dialogues_for_epoch(0)) < 33
    assert records[1]["labelled_utterances"] == 33


def test_state_round_trips_through_json_and_refuses_another_schedule() -> None:
    batch, out = _one_batch_output()
    trainer = _fake_trainer()
    first = SPCL(SPCLConfig(pacing="competence"))
    _run_epoch(first, trainer, 0, batch, out)
    state = json.loads(json.dumps(first.state_dict()))
    second = SPCL(SPCLConfig(pacing="competence"))
    second.load_state_dict(state)
    assert second.threshold_for_epoch(1, 4) == first.threshold_for_epoch(1, 4) != first.config.epsilon
    with pytest.raises(ConfigError, match="alpha"):
        SPCL(SPCLConfig(pacing="competence", alpha=1.2)).load_state_dict(state)


# -- options ---------------------------------------------------------------------------
def test_options_are_checked() -> None:
    c = check_spcl({"epsilon": "0.7", "alpha": 2, "pacing": "Moving_Average", "enabled": "yes", "ma_full_epoch": "3"})
    assert (c.epsilon, c.alpha, c.pacing, c.enabled, c.ma_full_epoch) == (0.7, 2.0, "moving-average", True, 3)
    defaults = check_spcl({})
    assert (defaults.epsilon, defaults.alpha, defaults.regularizer, defaults.pacing) == (
        0.8,
        1.1,
        "hard",
        "exponential",
    )
    assert (
        defaults.use_utterance_score and defaults.use_conversation_score and defaults.loss_normalisation == "selected"
    )
    bad: list[tuple[dict[str, object], str]] = [
        ({"epsilon": 0}, "epsilon"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"epsilon": "abc"}, "epsilon"),
        ({"epsilon": True}, "epsilon"),
        ({"epsilon": float("nan")}, "epsilon"),
        ({"alpha": 1.0}, "alpha"),
        ({"regularizer": "soft"}, "hard"),
        ({"pacing": "linear"}, "competence"),
        ({"utterance_logits": "joint"}, "unimodal-sum"),
        ({"conversation_std": "unbiased"}, "population"),
        ({"score_normalisation": "zscore"}, "batch-mean"),
        ({"loss_normalisation": "all"}, "selected"),
        ({"enabled": "ture"}, "enabled"),
        ({"use_utterance_score": "maybe"}, "use_utterance_score"),
        ({"ma_full_epoch": 0}, "ma_full_epoch"),
        ({"ma_full_epoch": 2.5}, "ma_full_epoch"),
        ({"ma_momentum": 1.0}, "ma_momentum"),
        ({"competence_start": 0}, "competence_start"),
        ({"epsilon": 2.0, "max_threshold": 1.0}, "max_threshold"),
        ({"threshold": 0.8}, "unknown spcl option"),
    ]
    for section, message in bad:
        with pytest.raises(ConfigError, match=message):
            check_spcl(section)
    with pytest.raises(ConfigError, match="unknown spcl option"):
        check_plugin_sections({"spcl": {"cl_growth": 1.2}})


def test_builder_and_switch() -> None:
    ds = make_dataset((3, 4), "ta")
    assert build_spcl({"enabled": False, "epsilon": 0.5}, ds) is None
    plugin = build_spcl({"epsilon": 0.5}, ds)
    assert isinstance(plugin, SPCL) and plugin.config.epsilon == 0.5 and plugin.needs_per_modality
    assert [type(p) for p in build_plugins({"spcl": {"enabled": True}}, ds)] == [SPCL]
    assert build_plugins({"spcl": {"enabled": "false"}}, ds) == []
    with pytest.raises(ConfigError):
        build_spcl({"enabled": True, "alpha": 0.9}, ds)
    overrides = switch_overrides({"balance": "spcl", "spcl-epsilon": 0.7, "spcl-alpha": 1.2})
    assert overrides == ["spcl.enabled=true", "spcl.epsilon=0.7", "spcl.alpha=1.2"]
    with pytest.raises(ConfigError, match="--balance spcl"):
        switch_overrides({"spcl-epsilon": 0.7})
