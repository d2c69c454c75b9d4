"""Modality-balance plug-ins (RNA, OGM-GE, OPM, FAGM, Ada2I): each equation on hand-checked cases,
the refusal of models without per-modality parts, options, the ``--balance`` switch, resume."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers import KillAt, assert_same_training, make_dataset
from merc.data.batching import IGNORE_INDEX, Batch, collate, to_tensors
from merc.data.schema import MercDataset
from merc.errors import ConfigError
from merc.models import build_model
from merc.models.base import MercModel
from merc.models.output import ModelOutput
from merc.training.plugins import build_plugins
from merc.training.plugins.base import TrainerPlugin
from merc.training.plugins.curriculum import build_curriculum
from merc.training.plugins.modality_balance import (
    Ada2IGradientModulation,
    FineGrainedAdaptiveGradientModulation,
    OnTheFlyGradientModulation,
    OnTheFlyPredictionModulation,
    RelativeNormAlignment,
    build_ada2i_gm,
    build_fagm,
    build_ogm_ge,
    build_opm,
    build_rna,
    check_fagm,
    check_ogm_ge,
    discrepancy_ratios,
)
from merc.training.trainer import TrainConfig, Trainer

SECTIONS = ("rna", "ogm-ge", "opm", "fagm", "ada2i-gm")
#: Options that make each plug-in act within a 2-epoch run.
ACTIVE: dict[str, dict[str, object]] = {
    "rna": {"enabled": True},
    "ogm-ge": {"enabled": True, "alpha": 0.5},
    "opm": {"enabled": True, "start_epoch": 0, "p_exe": 1.0},
    "fagm": {"enabled": True, "gamma": 0.5, "score_scale": 10.0},
    "ada2i-gm": {"enabled": True, "alpha": 0.5},
}


# -- a model whose every number can be followed by hand -----------------------------------
class _Linear(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, h)

    def forward(self, x: Tensor, batch: Batch) -> Tensor:
        return batch.flatten(self.lin(x))


class _Toy(MercModel):
    """Linear encoders, fused logits ``classifier(cat(codes))``; probe heads; no dropout."""

    model_name = "toy"

    def __init__(self, in_dims: Mapping[str, int], num_classes: int, code_dim: int = 2) -> None:
        super().__init__(in_dims, num_classes, unimodal_heads=True, unimodal_loss_weight=0.0)
        self.add_encoders(
            {m: _Linear(d, code_dim) for m, d in self.in_dims.items()}, dict.fromkeys(self.modalities, code_dim)
        )
        self.classifier = nn.Linear(code_dim * len(self.modalities), num_classes)

    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        return ModelOutput(logits=self.classifier(torch.cat([codes[m] for m in self.modalities], dim=-1)))


class _LateToy(_Toy):
    """Late fusion: ``fuse`` returns its own unimodal logits (no base-class heads)."""

    model_name = "late-toy"

    def __init__(self, in_dims: Mapping[str, int], num_classes: int, code_dim: int = 2) -> None:
        super().__init__(in_dims, num_classes, code_dim)
        self.fills_unimodal_logits = True
        self.heads = nn.ModuleDict({m: nn.Linear(code_dim, num_classes) for m in self.modalities})

    def fuse(self, batch: Batch, codes: Mapping[str, Tensor]) -> ModelOutput:
        unimodal = {m: self.heads[m](c) for m, c in codes.items()}
        return ModelOutput(logits=torch.stack(list(unimodal.values())).sum(0), unimodal_logits=unimodal)


def _toy_trainer(
    plugins: Sequence[TrainerPlugin] = (),
    modalities: str = "tav",
    code_dim: int = 2,
    seed: int = 0,
    model_cls: type[_Toy] = _Toy,
) -> tuple[Trainer, Batch, MercDataset]:
    ds = make_dataset((3, 5, 4), modalities, seed=1)
    torch.manual_seed(seed)
    model = model_cls(ds.dims, ds.num_classes, code_dim=code_dim)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.01, patience=0, show_progress=False, seed=seed)
    trainer = Trainer(model, to_tensors(ds), ds.modalities, ds.num_classes, cfg, plugins=list(plugins))
    return trainer, collate(trainer.train_items, ds.modalities), ds


def _peaked_logits(labels: Tensor, num_classes: int, strengths: Tensor) -> Tensor:
    """Logits ``strengths[j]`` on the true class of utterance ``j``, 0 elsewhere."""
    logits = torch.zeros(len(labels), num_classes)
    rows = torch.nonzero(labels != IGNORE_INDEX).squeeze(1)
    logits[rows, labels[rows]] = strengths[rows]
    return logits


def _true_probability(strength: float, num_classes: int) -> float:
    return math.exp(strength) / (math.exp(strength) + num_classes - 1)


def _known_scores(batch: Batch, num_classes: int) -> tuple[Batch, ModelOutput, dict[str, float]]:
    """Unimodal logits with hand-computable scores (t dominant, a middle, v weakest), two utterances unlabelled.

    Returns the batch with those labels removed, the output and the scores :math:`s^m`.
    """
    labels = batch.labels.clone()
    labels[0, 0] = IGNORE_INDEX
    labels[1, 2] = IGNORE_INDEX
    batch = dataclasses.replace(batch, labels=labels)
    flat = batch.flat_labels
    n = len(flat)
    strengths = {"t": torch.where(torch.arange(n) % 2 == 0, 3.0, 1.0), "a": torch.full((n,), 1.0), "v": torch.zeros(n)}
    logits = {m: _peaked_logits(flat, num_classes, s) for m, s in strengths.items()}
    # Unlabelled rows get extreme logits: counted by mistake, they would change every score.
    for m in logits:
        logits[m][flat == IGNORE_INDEX] = torch.linspace(-20, 20, num_classes)
    labelled = (flat != IGNORE_INDEX).tolist()
    scores = {
        m: sum(_true_probability(float(s), num_classes) for s, keep in zip(strengths[m], labelled, strict=True) if keep)
        for m in strengths
    }
    return batch, ModelOutput(logits=torch.zeros(n, num_classes), unimodal_logits=logits), scores


def _random_grads(model: nn.Module, seed: int = 5) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _grads(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _group_of(name: str) -> str | None:
    for m in "tav":
        if name.startswith((f"encoders.{m}.", f"unimodal_classifiers.{m}.")):
            return m
    return None


# -- OGM-GE ---------------------------------------------------------------------------
def test_ogm_ge_scales_dominant_gradients_by_one_minus_tanh_alpha_rho() -> None:
    trainer, batch, ds = _toy_trainer()
    batch, output, s = _known_scores(batch, ds.num_classes)
    # One-to-others ratios, averaged over the other two modalities (OGM-GE eq. 9 for M = 3).
    rho = {"t": (s["t"] / s["a"] + s["t"] / s["v"]) / 2, "a": (s["a"] / s["t"] + s["a"] / s["v"]) / 2}
    rho["v"] = (s["v"] / s["t"] + s["v"] / s["a"]) / 2
    assert rho["t"] > 1 and rho["a"] > 1 and rho["v"] < 1
    alpha = 0.5
    expected = {"t": 1 - math.tanh(alpha * rho["t"]), "a": 1 - math.tanh(alpha * rho["a"]), "v": 1.0}
    plugin = OnTheFlyGradientModulation(alpha=alpha, noise=False)
    before = _random_grads(trainer.model)
    plugin.after_backward(trainer, batch, output)
    after = _grads(trainer.model)
    for name, g in before.items():
        m = _group_of(name)
        k = expected[m] if m is not None else 1.0  # shared fusion parameters are untouched
        torch.testing.assert_close(after[name], g * k, msg=name)
    assert not torch.equal(after["encoders.t.lin.weight"], before["encoders.t.lin.weight"])
    torch.testing.assert_close(after["encoders.v.lin.weight"], before["encoders.v.lin.weight"], rtol=0, atol=0)
    metrics = plugin.epoch_metrics(trainer)
    assert metrics["ratio"] == pytest.approx(rho)
    assert metrics["coefficient"] == pytest.approx(expected)


def test_ogm_ge_two_modalities_is_the_papers_ratio() -> None:
    trainer, batch, ds = _toy_trainer(modalities="ta")
    flat = batch.flat_labels
    n = len(flat)
    logits = {"t": _peaked_logits(flat, ds.num_classes, torch.full((n,), 2.0)), "a": torch.zeros(n, ds.num_classes)}
    ratio = _true_probability(2.0, ds.num_classes) / (1 / ds.num_classes)
    plugin = OnTheFlyGradientModulation(alpha=0.3, noise=False)
    before = _random_grads(trainer.model)
    plugin.after_backward(trainer, batch, ModelOutput(logits=torch.zeros(n, ds.num_classes), unimodal_logits=logits))
    after = _grads(trainer.model)
    k = 1 - math.tanh(0.3 * ratio)
    torch.testing.assert_close(after["encoders.t.lin.weight"], before["encoders.t.lin.weight"] * k)
    torch.testing.assert_close(after["encoders.a.lin.weight"], before["encoders.a.lin.weight"])


def test_ogm_ge_outside_its_epochs_leaves_gradients_alone() -> None:
    trainer, batch, ds = _toy_trainer()
    batch, output, _ = _known_scores(batch, ds.num_classes)
    plugin = OnTheFlyGradientModulation(alpha=0.5, noise=True, start_epoch=1, end_epoch=3)
    before = _random_grads(trainer.model)
    plugin.after_backward(trainer, batch, output)  # trainer.epoch == 0
    for name, g in _grads(trainer.model).items():
        assert torch.equal(g, before[name]), name
    assert plugin.epoch_metrics(trainer)["coefficient"] == {"t": 1.0, "a": 1.0, "v": 1.0}
    trainer.epoch = 4
    plugin.after_backward(trainer, batch, output)
    assert torch.equal(_grads(trainer.model)["encoders.t.lin.weight"], before["encoders.t.lin.weight"])


def test_batch_without_labels_is_not_modulated() -> None:
    trainer, batch, ds = _toy_trainer()
    batch, output, _ = _known_scores(batch, ds.num_classes)
    batch = dataclasses.replace(batch, labels=torch.full_like(batch.labels, IGNORE_INDEX))
    before = _random_grads(trainer.model)
    for plugin in (OnTheFlyGradientModulation(alpha=1.0), Ada2IGradientModulation(alpha=1.0)):
        plugin.after_backward(trainer, batch, output)
        assert plugin.epoch_metrics(trainer) == {}
    for name, g in _grads(trainer.model).items():
        assert torch.equal(g, before[name]), name


def _noisy_run(noise: bool, seed: int = 0, cls: type = OnTheFlyGradientModulation, alpha: float = 0.5):
    trainer, batch, ds = _toy_trainer(code_dim=16, seed=0)
    trainer.config.seed = seed
    batch, output, _ = _known_scores(batch, ds.num_classes)
    plugin = cls(alpha=alpha, noise=noise)
    before = _random_grads(trainer.model)
    noiseless = cls(alpha=alpha, noise=False)
    coefficients = noiseless.coefficients(output, batch.flat_labels)[1]
    rng = torch.get_rng_state()
    plugin.after_backward(trainer, batch, output)
    assert torch.equal(torch.get_rng_state(), rng)  # its own generator: dropout's stream is untouched
    return before, _grads(trainer.model), coefficients


def test_ogm_ge_noise_changes_gradients_only_when_on_and_is_seeded() -> None:
    before, off, k = _noisy_run(noise=False)
    _, on, _ = _noisy_run(noise=True)
    _, again, _ = _noisy_run(noise=True)
    _, other_seed, _ = _noisy_run(noise=True, seed=1)
    for name, g in before.items():
        m = _group_of(name)
        scaled = g * (k[m] if m else 1.0)
        torch.testing.assert_close(off[name], scaled)
        assert torch.equal(on[name], again[name]), name
        if m is None:
            assert torch.equal(on[name], g), name  # shared parameters get no noise
        else:
            assert not torch.allclose(on[name], scaled), name  # every modality, the weakest too
            assert not torch.equal(on[name], other_seed[name]), name
    # GE noise has the std of the gradient before the coefficient (OGM-GE code).
    for m in "tav":
        name = f"encoders.{m}.lin.weight"
        drawn = on[name] - before[name] * k[m]
        assert float(drawn.std()) == pytest.approx(float(before[name].std()), rel=0.25), m


# -- Ada2I ----------------------------------------------------------------------------
def test_ada2i_modulates_every_modality_above_the_weakest() -> None:
    trainer, batch, ds = _toy_trainer()
    batch, output, s = _known_scores(batch, ds.num_classes)
    alpha = 0.3
    # Eq. 17 ratio to the weakest (v); eq. 18 coefficient 1 - tanh(alpha * rho) for rho > 1.
    expected = {"t": 1 - math.tanh(alpha * s["t"] / s["v"]), "a": 1 - math.tanh(alpha * s["a"] / s["v"]), "v": 1.0}
    plugin = Ada2IGradientModulation(alpha=alpha, noise=False)
    before = _random_grads(trainer.model)
    plugin.after_backward(trainer, batch, output)
    after = _grads(trainer.model)
    for name, g in before.items():
        m = _group_of(name)
        torch.testing.assert_close(after[name], g * (expected[m] if m else 1.0), msg=name)
    assert plugin.epoch_metrics(trainer)["ratio"] == pytest.approx({m: s[m] / s["v"] for m in "tav"})


def test_ada2i_noise_has_the_std_of_the_scaled_gradient() -> None:
    before, off, k = _noisy_run(noise=False, cls=Ada2IGradientModulation, alpha=0.35)
    _, on, _ = _noisy_run(noise=True, cls=Ada2IGradientModulation, alpha=0.35)
    assert k["t"] < 0.5
    for m in "tav":
        name = f"encoders.{m}.lin.weight"
        torch.testing.assert_close(off[name], before[name] * k[m])
        drawn = on[name] - before[name] * k[m]
        assert float(drawn.std()) == pytest.approx(k[m] * float(before[name].std()), rel=0.25), m


def test_discrepancy_ratios_by_hand() -> None:
    ratios = discrepancy_ratios({"t": 3.0, "a": 1.2, "v": 1.0})
    assert ratios == pytest.approx({"t": (3 / 1.2 + 3) / 2, "a": (1.2 / 3 + 1.2) / 2, "v": (1 / 3 + 1 / 1.2) / 2})
    assert discrepancy_ratios({"t": 2.0}) == {"t": 1.0}
    with pytest.raises(ValueError, match="weakest"):
        discrepancy_ratios({"t": 1.0}, against="min")


# -- OPM ------------------------------------------------------------------------------
def _codes(n: int, widths: Mapping[str, int], seed: int = 0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, d, generator=gen) for m, d in widths.items()}


def test_opm_zeroes_the_dominant_codes_and_rescales_the_rest() -> None:
    trainer, batch, _ = _toy_trainer()
    plugin = OnTheFlyPredictionModulation(q_base=1.0, lam=0.5, p_exe=1.0, start_epoch=0, score_batch="previous")
    # rho_t = (3/1.2 + 3/1)/2 = 2.75 -> q_t = min(1, 1 * (1 + 0.5 tanh(1.75))) = 1; a and v have rho < 1 -> 0.
    plugin.last_scores = {"t": 3.0, "a": 1.2, "v": 1.0}
    widths = {"t": 4, "a": 3, "v": 5}
    codes = _codes(10, widths)
    trainer.model.train()
    out = plugin.before_fuse(trainer, batch, dict(codes))
    assert out is not None
    theta = widths["t"] * 1.0 / sum(widths.values())
    assert torch.equal(out["t"], torch.zeros_like(codes["t"]))
    for m in "av":
        torch.testing.assert_close(out[m], codes[m] / (1 - theta))
    assert plugin.last_drop_probabilities == {"t": 1.0, "a": 0.0, "v": 0.0}


def test_opm_drops_with_the_papers_probability() -> None:
    trainer, batch, _ = _toy_trainer()
    plugin = OnTheFlyPredictionModulation(q_base=0.5, lam=0.5, p_exe=1.0, start_epoch=0, score_batch="previous")
    plugin.last_scores = {"t": 2.0, "a": 1.0, "v": 1.0}  # rho_t = 2, rho_a = rho_v = 0.75
    q_t = 0.5 * (1 + 0.5 * math.tanh(2.0 - 1.0))
    widths = {"t": 2, "a": 2, "v": 4}
    codes = {m: torch.ones(4000, d) for m, d in widths.items()}
    trainer.model.train()
    out = plugin.before_fuse(trainer, batch, codes)
    assert out is not None
    scale = 1 / (1 - widths["t"] * q_t / sum(widths.values()))
    dropped_t = (out["t"] == 0).all(1).float().mean()
    assert float(dropped_t) == pytest.approx(q_t, abs=0.03)
    assert out["t"].unique().tolist() == [0.0, pytest.approx(scale)]
    torch.testing.assert_close(out["a"], torch.full_like(codes["a"], scale))
    assert plugin.epoch_metrics(trainer)["drop_probability"] == pytest.approx({"t": q_t, "a": 0.0, "v": 0.0})


def test_opm_acts_only_in_training_in_its_epochs_and_when_executed() -> None:
    trainer, batch, _ = _toy_trainer()
    codes = _codes(6, {"t": 2, "a": 2, "v": 2})
    scores = {"t": 3.0, "a": 1.0, "v": 1.0}
    never = OnTheFlyPredictionModulation(q_base=1.0, p_exe=0.0, start_epoch=0, score_batch="previous")
    late = OnTheFlyPredictionModulation(q_base=1.0, p_exe=1.0, start_epoch=2, score_batch="previous")
    on = OnTheFlyPredictionModulation(q_base=1.0, p_exe=1.0, start_epoch=0, score_batch="previous")
    for plugin in (never, late, on):
        plugin.last_scores = dict(scores)
    trainer.model.train()
    assert never.before_fuse(trainer, batch, dict(codes)) is None
    assert late.before_fuse(trainer, batch, dict(codes)) is None
    assert on.before_fuse(trainer, batch, dict(codes)) is not None
    trainer.model.eval()
    assert on.before_fuse(trainer, batch, dict(codes)) is None
    # No scores yet (first batch of a run in "previous" mode): nothing to modulate by.
    fresh = OnTheFlyPredictionModulation(q_base=1.0, p_exe=1.0, start_epoch=0, score_batch="previous")
    trainer.model.train()
    assert fresh.before_fuse(trainer, batch, dict(codes)) is None


def _mean_true_probability(logits: Tensor, labels: Tensor) -> float:
    keep = labels != IGNORE_INDEX
    return float(F.softmax(logits[keep].detach(), dim=-1).gather(1, labels[keep][:, None]).mean())


def test_opm_scores_the_current_batch_with_the_models_heads() -> None:
    plugin = OnTheFlyPredictionModulation(q_base=0.5, lam=0.5, p_exe=1.0, start_epoch=0)
    trainer, batch, _ = _toy_trainer([plugin], seed=3)
    assert plugin.score_source(trainer.model) == "current"
    trainer.model.train()
    output = trainer.model(batch)  # the hook runs inside the forward
    s = {m: _mean_true_probability(output.unimodal_logits[m], batch.flat_labels) for m in "tav"}
    rho = {m: sum(s[m] / s[k] for k in "tav" if k != m) / 2 for m in "tav"}
    expected = {m: min(1.0, 0.5 * (1 + 0.5 * math.tanh(r - 1))) if r > 1 else 0.0 for m, r in rho.items()}
    assert plugin.last_drop_probabilities == pytest.approx(expected)
    assert max(expected.values()) > 0


def test_opm_previous_scores_count_only_kept_utterances() -> None:
    plugin = OnTheFlyPredictionModulation(q_base=0.9, lam=0.0, p_exe=1.0, start_epoch=0, score_batch="previous")
    trainer, batch, _ = _toy_trainer([plugin], model_cls=_LateToy)
    plugin.last_scores = {"t": 3.0, "a": 1.0, "v": 1.0}
    trainer.model.train()
    output = trainer.model(batch)
    kept = plugin._kept
    assert kept is not None and not bool(kept["t"].all())
    plugin.on_batch_end(trainer, batch, output, 0.0)
    labels = batch.flat_labels
    for m in "tav":
        own = labels.masked_fill(~kept[m], IGNORE_INDEX)
        assert plugin.last_scores[m] == pytest.approx(_mean_true_probability(output.unimodal_logits[m].detach(), own))


def test_opm_current_scores_need_the_base_heads() -> None:
    plugin = OnTheFlyPredictionModulation(score_batch="current")
    trainer, _, _ = _toy_trainer([plugin], model_cls=_LateToy)
    with pytest.raises(ConfigError, match="score_batch=previous"):
        trainer.fit()
    assert OnTheFlyPredictionModulation().score_source(trainer.model) == "previous"


# -- FAGM -----------------------------------------------------------------------------
def _toy_loss(model: _Toy, codes: dict[str, Tensor], labels: Tensor) -> float:
    logits = model.classifier(torch.cat([codes[m] for m in model.modalities], dim=-1))
    keep = labels != IGNORE_INDEX
    return float(F.cross_entropy(logits[keep], labels[keep]))


@pytest.mark.parametrize("beta", [1.0, 0.5, 0.0])
def test_fagm_scales_modality_and_shared_column_gradients_as_its_equations(beta: float) -> None:
    gamma, scale = 0.5, 10.0
    plugin = FineGrainedAdaptiveGradientModulation(gamma=gamma, beta=beta, score_scale=scale)
    trainer, batch, _ = _toy_trainer([plugin], seed=2)
    model = trainer.model
    assert isinstance(model, _Toy)
    labels = batch.flat_labels
    with torch.no_grad():
        codes = {m: model.encoders[m](batch.features[m], batch) for m in "tav"}
        base = _toy_loss(model, codes, labels)
        contribution = torch.tensor(
            [_toy_loss(model, {k: c * (k != m) for k, c in codes.items()}, labels) - base for m in "tav"]
        )
    ratio = torch.softmax(scale * contribution, dim=0)
    dominance = dict(zip("tav", ((ratio - ratio.min()) ** gamma).tolist(), strict=True))
    assert min(dominance.values()) == 0 and max(dominance.values()) > 0.05
    model.train()
    before = _random_grads(model)
    plugin.after_backward(trainer, batch, ModelOutput(logits=torch.zeros(len(labels), 3)))
    assert model.training  # back in training mode after its ablation passes
    after = _grads(model)
    assert plugin.dominance == pytest.approx(dominance)
    assert plugin.contributions == pytest.approx(dict(zip("tav", contribution.tolist(), strict=True)), abs=1e-6)
    for name, g in before.items():
        m = _group_of(name)
        if m is not None:
            torch.testing.assert_close(after[name], g * (1 - dominance[m]), msg=name)
    # The classifier reads cat(codes): a column of modality m depends on m only, so its
    # excess dependence is mean |code| > 0 and the largest floor(beta * 2) of m's two
    # columns are scaled by 1 - dominance[m]; the bias is never touched.
    factor = torch.ones(6)
    for k, m in enumerate("tav"):
        strength = codes[m].abs().mean(0)
        chosen = strength.argsort(descending=True)[: math.floor(beta * 2)]
        factor[2 * k + chosen] = 1 - dominance[m]
    torch.testing.assert_close(after["classifier.weight"], before["classifier.weight"] * factor[None, :])
    assert torch.equal(after["classifier.bias"], before["classifier.bias"])


def test_fagm_estimates_every_tau_steps_of_an_epoch() -> None:
    plugin = FineGrainedAdaptiveGradientModulation(tau=2)
    trainer, batch, _ = _toy_trainer([plugin])
    calls: list[int] = []
    estimate = plugin.estimate

    def counted(tr: Trainer, b: Batch) -> None:
        calls.append(plugin._step)
        estimate(tr, b)

    plugin.estimate = counted  # type: ignore[method-assign,assignment]
    output = ModelOutput(logits=torch.zeros(batch.num_utterances, 3))
    for _ in range(3):
        _random_grads(trainer.model)
        plugin.after_backward(trainer, batch, output)
    assert calls == [0, 2]
    plugin.on_epoch_start(trainer, 1)
    plugin.after_backward(trainer, batch, output)
    assert calls == [0, 2, 0]


def test_fagm_leaves_the_global_random_stream_alone() -> None:
    plugin = FineGrainedAdaptiveGradientModulation()
    ds = make_dataset((3, 5, 4), "tav", seed=1)
    model = build_model("bclstm", in_dims=ds.dims, num_classes=ds.num_classes, hidden_size=4, dense_size=4)
    trainer = Trainer(model, to_tensors(ds), ds.modalities, ds.num_classes, TrainConfig(show_progress=False), [plugin])
    batch = collate(trainer.train_items, ds.modalities)
    model.train()
    output = model(batch)
    _random_grads(model)
    rng = torch.get_rng_state()
    plugin.after_backward(trainer, batch, output)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training


# -- RNA ------------------------------------------------------------------------------
def _features_with_norms(n: int, norms: Mapping[str, float], width: int = 3) -> dict[str, Tensor]:
    out = {}
    for m, r in norms.items():
        f = torch.zeros(n, width)
        f[:, 0] = r
        out[m] = f.requires_grad_()
    return out


def test_rna_loss_is_the_mean_pairwise_squared_ratio_gap() -> None:
    trainer, batch, _ = _toy_trainer()
    n = batch.num_utterances
    features = _features_with_norms(n, {"t": 2.0, "a": 1.0, "v": 4.0})
    # Utterances where v is missing, and a zero code, must not count in the mean norms.
    availability = batch.availability.clone()
    availability[0, 0, 2] = False
    availability[1, 1, 2] = False
    batch = dataclasses.replace(batch, availability=availability)
    missing = trainer.model.flat_availability(batch)[:, 2] == 0
    with torch.no_grad():
        features["v"][missing, 0] = 100.0
        features["a"][3] = 0.0
    output = ModelOutput(logits=torch.zeros(n, 3), unimodal_features=features)
    pairs = ((2 / 1 - 1) ** 2 + (2 / 4 - 1) ** 2 + (1 / 4 - 1) ** 2) / 3
    term = RelativeNormAlignment(weight=0.7).loss_terms(trainer, batch, output)["rna"]
    assert float(term.detach()) == pytest.approx(0.7 * pairs)
    mean = 7 / 3
    centred = sum((mu / mean - 1) ** 2 for mu in (2.0, 1.0, 4.0)) / 3
    centred_term = RelativeNormAlignment(extension="mean").loss_terms(trainer, batch, output)["rna"]
    assert float(centred_term.detach()) == pytest.approx(centred)
    term.backward()
    grad = features["v"].grad
    assert grad is not None
    # d/d mu_v of the pair loss is positive (v's norm is the largest): descent shrinks v's codes.
    assert float(grad[~missing, 0].sum()) > 0
    assert torch.all(grad[missing] == 0)


def test_rna_on_two_modalities_is_the_papers_loss() -> None:
    trainer, batch, _ = _toy_trainer(modalities="ta")
    n = batch.num_utterances
    output = ModelOutput(logits=torch.zeros(n, 3), unimodal_features=_features_with_norms(n, {"t": 3.0, "a": 2.0}))
    plugin = RelativeNormAlignment()
    assert float(plugin.loss_terms(trainer, batch, output)["rna"].detach()) == pytest.approx((3 / 2 - 1) ** 2)
    assert plugin.epoch_metrics(trainer) == {"mean_norm": {"t": 3.0, "a": 2.0}, "loss": pytest.approx(0.25)}


# -- models without per-modality parts ------------------------------------------------------
@pytest.mark.parametrize("section", SECTIONS)
@pytest.mark.parametrize("model_name", ["gcnet", "bclstm-no-heads"])
def test_models_without_unimodal_parts_are_refused(section: str, model_name: str) -> None:
    ds = make_dataset((3, 4), "tav")
    if model_name == "gcnet":
        model = build_model("gcnet", in_dims=ds.dims, num_classes=ds.num_classes)
        match = "fuses the modalities"
    else:
        model = build_model("bclstm", in_dims=ds.dims, num_classes=ds.num_classes, hidden_size=4, unimodal_heads=False)
        match = "unimodal_heads"
    plugins = build_plugins({section: {"enabled": True}}, ds)
    assert len(plugins) == 1 and plugins[0].needs_per_modality
    with pytest.raises(ConfigError, match=match):
        Trainer(model, to_tensors(ds), ds.modalities, ds.num_classes, TrainConfig(show_progress=False), plugins)


# -- options, builders, the --balance switch --------------------------------------------------
BUILDERS = {"rna": build_rna, "ogm-ge": build_ogm_ge, "opm": build_opm, "fagm": build_fagm, "ada2i-gm": build_ada2i_gm}


def test_builders_defaults_and_enabled() -> None:
    ds = make_dataset((3,), "tav")
    ogm = build_ogm_ge({"enabled": True}, ds)
    assert isinstance(ogm, OnTheFlyGradientModulation)
    assert (ogm.alpha, ogm.noise, ogm.start_epoch, ogm.end_epoch) == (0.1, True, 0, 50)
    ada = build_ada2i_gm({"alpha": "0.4"}, ds)  # present without `enabled`: on; YAML strings parse
    assert isinstance(ada, Ada2IGradientModulation) and (ada.alpha, ada.end_epoch) == (0.4, None)
    opm = build_opm({"enabled": "yes", "lambda": 0.25, "end_epoch": "null"}, ds)
    assert isinstance(opm, OnTheFlyPredictionModulation)
    assert (opm.q_base, opm.lam, opm.p_exe, opm.start_epoch, opm.end_epoch) == (0.5, 0.25, 0.7, 6, None)
    fagm = build_fagm({"tau": 3.0}, ds)
    assert isinstance(fagm, FineGrainedAdaptiveGradientModulation) and (fagm.gamma, fagm.beta, fagm.tau) == (1, 1, 3)
    rna = build_rna({"extension": "Mean"}, ds)
    assert isinstance(rna, RelativeNormAlignment) and (rna.weight, rna.extension) == (1.0, "mean")
    for section, build in BUILDERS.items():
        assert build({"enabled": False}, ds) is None, section
        assert build_plugins({section: {"enabled": "false"}}, ds) == []
        (plugin,) = build_plugins({section: {"enabled": True}}, ds)
        assert plugin.name == section


@pytest.mark.parametrize(
    ("section", "options", "match"),
    [
        ("rna", {"lamda": 1}, "lamda"),
        ("rna", {"lambda": -0.1}, "rna.lambda"),
        ("rna", {"extension": "triples"}, "extension"),
        ("ogm-ge", {"alfa": 0.1}, "alfa"),
        ("ogm-ge", {"alpha": 0}, "ogm-ge.alpha"),
        ("ogm-ge", {"noise": "maybe"}, "ogm-ge.noise"),
        ("ogm-ge", {"start_epoch": 2.5}, "ogm-ge.start_epoch"),
        ("ogm-ge", {"start_epoch": 5, "end_epoch": 2}, "end_epoch"),
        ("ogm-ge", {"enabled": "ture"}, "ogm-ge.enabled"),
        ("opm", {"q_base": 1.5}, "opm.q_base"),
        ("opm", {"p_exe": -0.1}, "opm.p_exe"),
        ("opm", {"score_batch": "next"}, "score_batch"),
        ("opm", {"drop": 0.5}, "drop"),
        ("fagm", {"gamma": 0}, "fagm.gamma"),
        ("fagm", {"beta": 2}, "fagm.beta"),
        ("fagm", {"tau": 0}, "fagm.tau"),
        ("fagm", {"score_scale": "nan"}, "fagm.score_scale"),
        ("ada2i-gm", {"alpha": "big"}, "ada2i-gm.alpha"),
        ("ada2i-gm", {"end_epoch": -1}, "ada2i-gm.end_epoch"),
    ],
)
def test_bad_options_name_the_key(section: str, options: dict, match: str) -> None:
    ds = make_dataset((3,), "tav")
    with pytest.raises(ConfigError, match=match):
        BUILDERS[section](options, ds)
    with pytest.raises(ConfigError, match=match):
        build_plugins({section: options}, ds)


def test_checks_refuse_a_section_that_is_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        check_ogm_ge([0.1])  # type: ignore[arg-type]
    assert check_fagm({}) == {"enabled": True, "gamma": 1.0, "beta": 1.0, "tau": 1, "score_scale": 0.1}


@pytest.mark.parametrize("section", SECTIONS)
def test_balance_switch_sets_enabled_and_bad_overrides_fail_early(section: str) -> None:
    from merc.cli import build_parser, plugin_overrides
    from merc.training.runner import resolve_recipe

    args = build_parser().parse_args(
        ["train", "--model", "bclstm", "--dataset", "synthetic", "--out", "o", "--balance", section]
    )
    overrides = plugin_overrides(args)
    assert overrides == [f"{section}.enabled=true"]
    recipe = resolve_recipe("bclstm", "synthetic", overrides)
    assert recipe[section] == {"enabled": True}
    (plugin,) = [p for p in build_plugins(recipe, make_dataset((3,), "tav")) if p.name == section]
    assert plugin.needs_per_modality
    key = {"rna": "lambda", "ogm-ge": "alpha", "opm": "p_exe", "fagm": "tau", "ada2i-gm": "alpha"}[section]
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        resolve_recipe("bclstm", "synthetic", [*overrides, f"{section}.{key}=-3"])
    with pytest.raises(ConfigError, match="typo_key"):
        resolve_recipe("bclstm", "synthetic", [*overrides, f"{section}.typo_key=1"])


# -- end to end, with the curriculum, across a resume -------------------------------------------
def _fit_dataset() -> MercDataset:
    return make_dataset((5, 7, 3, 6, 4, 8), "tav", seed=4, separable=True)


def _trainer(ds: MercDataset, plugins: list[TrainerPlugin], run_dir=None, epochs: int = 2) -> Trainer:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model("bclstm", in_dims=ds.dims, num_classes=ds.num_classes, hidden_size=8, dense_size=8)
    cfg = TrainConfig(epochs=epochs, batch_size=2, lr=0.01, patience=0, show_progress=False, seed=3)
    return Trainer(model, to_tensors(ds), ds.modalities, ds.num_classes, cfg, plugins=plugins, run_dir=run_dir)


METRIC_KEYS = {
    "rna": {"mean_norm", "loss"},
    "ogm-ge": {"ratio", "coefficient"},
    "opm": {"drop_probability", "executed_share", "dropped_share", "score_batch"},
    "fagm": {"contribution", "dominance", "coefficient", "penalised_share"},
    "ada2i-gm": {"ratio", "coefficient"},
}


@pytest.mark.parametrize("section", SECTIONS)
def test_fit_records_the_plugins_epoch_metrics(section: str) -> None:
    ds = _fit_dataset()
    baseline = _trainer(ds, [])
    baseline.fit()
    trainer = _trainer(ds, build_plugins({section: ACTIVE[section]}, ds))
    trainer.fit()
    for entry in trainer.history:
        metrics = entry["plugins"][section]
        assert set(metrics) == METRIC_KEYS[section]
        for value in metrics.values():
            if isinstance(value, dict):
                assert set(value) == {"t", "a", "v"}
                assert all(math.isfinite(v) for v in value.values())
    json.dumps(trainer.history)
    if section == "rna":
        assert trainer.history[-1]["train_loss_terms"]["rna"] > 0
    # The plug-in changed how the model trained.
    differs = [not torch.equal(v, baseline.model.state_dict()[k]) for k, v in trainer.model.state_dict().items()]
    assert any(differs)


RESUME_CASES: list[tuple[str, dict[str, object]]] = [(s, ACTIVE[s]) for s in SECTIONS]
RESUME_CASES.append(("opm", {**ACTIVE["opm"], "score_batch": "previous"}))


@pytest.mark.parametrize(("section", "options"), RESUME_CASES, ids=[f"{s}-{len(o)}" for s, o in RESUME_CASES])
def test_composes_with_the_curriculum_and_resumes_exactly(tmp_path, section: str, options: dict) -> None:  # type: ignore[no-untyped-def]
    ds = _fit_dataset()

    def plugins() -> list[TrainerPlugin]:
        curriculum = build_curriculum({"buckets": 2}, ds)
        assert curriculum is not None
        return [curriculum, *build_plugins({section: options}, ds)]

    straight = _trainer(ds, plugins(), tmp_path / "a")
    straight.fit()
    killed = _trainer(ds, [*plugins(), KillAt(1)], tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert killed.epoch == 1
    resumed = _trainer(ds, plugins(), tmp_path / "b")
    resumed.fit()
    assert resumed.resumed_at_epoch == 1
    assert_same_training(resumed, straight)
    assert all(section in h["plugins"] for h in straight.history)


def test_shifted_coefficient_form_is_continuous_at_one() -> None:
    from merc.training.plugins.modality_balance import check_ogm_ge, modulation_coefficients

    ratios = {"t": 1.0 + 1e-9, "a": 2.0, "v": 0.5}
    paper = modulation_coefficients(ratios, alpha=0.5)
    shifted = modulation_coefficients(ratios, alpha=0.5, form="shifted")
    assert paper["t"] == pytest.approx(1 - math.tanh(0.5)) and shifted["t"] == pytest.approx(1.0)
    assert shifted["a"] == pytest.approx(1 - math.tanh(0.5 * 1.0)) and paper["a"] == pytest.approx(1 - math.tanh(1.0))
    assert paper["v"] == shifted["v"] == 1.0
    assert check_ogm_ge({"coefficient": "shifted"})["coefficient"] == "shifted"
    with pytest.raises(ConfigError, match="coefficient"):
        check_ogm_ge({"coefficient": "smooth"})
