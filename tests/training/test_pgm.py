"""PGM (CSS, AAAI 2026): the min-norm solvers against brute force, the conflict-free direction,
the gradients written per parameter group, options, the ``--balance`` switch, a fit end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import Tensor, nn

from helpers import KillAt, assert_same_training, make_dataset
from merc.data.batching import Batch, to_tensors
from merc.data.schema import MercDataset
from merc.errors import ConfigError
from merc.models import build_model
from merc.models.base import MercModel
from merc.models.output import ModelOutput
from merc.training.plugins import build_plugins
from merc.training.plugins.base import TrainerPlugin
from merc.training.plugins.pgm import (
    ParetoGradientModulation,
    build_pgm,
    check_pgm,
    frank_wolfe_weights,
    min_norm_weights,
    three_task_weights,
    two_task_weight,
)
from merc.training.trainer import TrainConfig, Trainer


def _brute_force(gram: np.ndarray) -> float:
    """The QP's optimum by SLSQP from every vertex and the centre (the authors' solver), best kept."""
    n = gram.shape[0]
    best = math.inf
    starts = [np.full(n, 1.0 / n), *np.eye(n)]
    for start in starts:
        res = minimize(
            lambda w: w @ gram @ w,
            start,
            jac=lambda w: 2 * gram @ w,
            bounds=[(0.0, 1.0)] * n,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 1000},
        )
        best = min(best, float(res.x @ gram @ res.x))
    return best


def _grid_optimum(gram: np.ndarray, steps: int = 400) -> float:
    """The QP's optimum on a dense grid of the 2- or 3-simplex."""
    n = gram.shape[0]
    t = np.linspace(0.0, 1.0, steps + 1)
    if n == 2:
        w = np.stack([t, 1 - t], axis=1)
    else:
        a, b = np.meshgrid(t, t, indexing="ij")
        keep = a + b <= 1.0 + 1e-12
        w = np.stack([a[keep], b[keep], np.clip(1 - a[keep] - b[keep], 0, None)], axis=1)
    return float(np.einsum("ki,ij,kj->k", w, gram, w).min())


def _random_gram(rng: np.random.Generator, tasks: int, dim: int, normalise: bool) -> np.ndarray:
    g = rng.normal(size=(tasks, dim))
    # Some shared direction in part of the cases, so that interior and edge optima both occur.
    g += rng.uniform(0, 2) * rng.normal(size=(1, dim))
    if normalise:
        g /= np.linalg.norm(g, axis=1, keepdims=True)
    return g @ g.T


def _check_weights(w: np.ndarray, n: int) -> None:
    assert w.shape == (n,)
    assert (w >= -1e-12).all() and abs(w.sum() - 1.0) < 1e-9


# -- the solvers ---------------------------------------------------------------------------
@pytest.mark.parametrize("tasks", [2, 3])
def test_exact_solvers_match_brute_force_on_random_gradients(tasks: int) -> None:
    rng = np.random.default_rng(0)
    interior = edges = 0
    for trial in range(60):
        gram = _random_gram(rng, tasks, dim=int(rng.integers(2, 6)), normalise=bool(trial % 2))
        w = min_norm_weights(gram)
        _check_weights(w, tasks)
        got = float(w @ gram @ w)
        assert got <= _brute_force(gram) + 1e-9
        assert got <= _grid_optimum(gram) + 1e-12
        interior += bool((w > 1e-9).all())
        edges += bool((w <= 1e-9).any())
    assert interior and edges  # both kinds of optimum were exercised


def test_two_task_closed_form_by_hand() -> None:
    # g1 = (1, 0), g2 = (0, 2): min over the segment at gamma = 4/5, d = (0.8, 0.4).
    assert two_task_weight(1.0, 0.0, 4.0) == pytest.approx(0.8)
    # g2 = 2 g1: the shorter one alone.
    assert two_task_weight(1.0, 2.0, 4.0) == 1.0 and two_task_weight(4.0, 2.0, 1.0) == 0.0
    assert two_task_weight(1.0, 1.0, 1.0) == 0.5  # equal gradients: any point, the middle


def test_three_task_solver_handles_singular_and_degenerate_grams() -> None:
    # Two equal gradients and an opposite one: the optimum is d = 0, reached on an edge.
    g = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    w = three_task_weights(g @ g.T)
    _check_weights(w, 3)
    assert float(w @ (g @ g.T) @ w) == pytest.approx(0.0, abs=1e-12)
    # Three unit vectors at 120 degrees: the interior point 1/3 each.
    angles = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
    g = np.stack([np.cos(angles), np.sin(angles)], 1)
    np.testing.assert_allclose(three_task_weights(g @ g.T), np.full(3, 1 / 3), atol=1e-9)


@pytest.mark.parametrize("tasks", [4, 5, 7])
def test_frank_wolfe_matches_brute_force_beyond_three_tasks(tasks: int) -> None:
    rng = np.random.default_rng(tasks)
    for trial in range(20):
        gram = _random_gram(rng, tasks, dim=int(rng.integers(3, 12)), normalise=bool(trial % 2))
        w = min_norm_weights(gram)
        _check_weights(w, tasks)
        assert float(w @ gram @ w) <= _brute_force(gram) + 1e-6
    # On three tasks Frank-Wolfe and the exact solver agree.
    gram = _random_gram(rng, 3, 5, True)
    assert float(frank_wolfe_weights(gram) @ gram @ frank_wolfe_weights(gram)) == pytest.approx(
        float(three_task_weights(gram) @ gram @ three_task_weights(gram)), abs=1e-8
    )


def test_min_norm_direction_has_nonnegative_inner_product_with_every_task() -> None:
    rng = np.random.default_rng(1)
    for tasks in (2, 3, 4, 6):
        for _ in range(20):
            g = rng.normal(size=(tasks, 8))
            w = min_norm_weights(g @ g.T)
            d = w @ g
            # KKT: <d, g_i> >= |d|^2 >= 0 for every task (up to the solver's tolerance).
            assert (g @ d >= d @ d - 1e-6).all()


# -- the plug-in on a model whose gradients are known ----------------------------------------
class _TwoLossModel(MercModel):
    """A shared weight ``w`` (2-vector) and a head ``u``; the tests' losses: L1 = <w, a>, L2 = <w, b> + 3 u."""

    def __init__(self) -> None:
        super().__init__({"t": 2}, num_classes=2, unimodal_heads=False)
        self.shared = nn.Parameter(torch.ones(2))
        self.head = nn.Parameter(torch.zeros(1))

    def fuse(self, batch: Batch, codes: dict[str, Tensor]) -> ModelOutput:  # type: ignore[override]
        raise NotImplementedError

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.shared]


class _Stub:
    def __init__(self, model: MercModel) -> None:
        self.model = model


def _pgm_grads(a: Tensor, b: Tensor, **options: object) -> tuple[Tensor, Tensor, ParetoGradientModulation]:
    model = _TwoLossModel()
    pgm = ParetoGradientModulation(**options)  # type: ignore[arg-type]
    trainer = _Stub(model)
    pgm.on_fit_start(trainer)  # type: ignore[arg-type]
    terms = {
        "classification": (model.shared * a).sum(),
        "aux": (model.shared * b).sum() + 3.0 * model.head.sum(),
    }
    output = ModelOutput(logits=torch.zeros(1, 2), aux_losses={"aux": terms["aux"]})
    batch = _one_labelled_batch()
    assert pgm.backward(trainer, batch, output, terms)  # type: ignore[arg-type]
    assert model.shared.grad is not None and model.head.grad is not None
    return model.shared.grad, model.head.grad, pgm


def _one_labelled_batch() -> Batch:
    from merc.data.batching import collate

    ds = make_dataset((2,), "t")
    return collate(to_tensors(ds)["train"], ds.modalities)


def test_conflicting_gradients_lose_their_conflicting_component() -> None:
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([-1.0, 1.0])  # <a, b> < 0: conflict
    shared, head, pgm = _pgm_grads(a, b, normalize=False)
    assert float(a @ (a + b)) == 0.0  # the plain sum does nothing for L1 ...
    assert float(shared @ a) > 0 and float(shared @ b) > 0  # ... the min-norm point improves both
    # By hand: gamma = (|b|^2 - <a,b>) / |a - b|^2 = 3 / 5.
    assert pgm.last_weights == pytest.approx({"classification": 0.6, "aux": 0.4})
    torch.testing.assert_close(shared, 0.6 * a + 0.4 * b)
    torch.testing.assert_close(head, torch.tensor([3.0]))  # not shared: the plain sum


def test_normalised_min_norm_direction_is_conflict_free_for_unequal_scales() -> None:
    a = torch.tensor([10.0, 0.0])
    b = torch.tensor([-0.6, 0.8])
    shared, _, pgm = _pgm_grads(a, b, normalize=True, direction="min_norm")
    assert float(shared @ a) >= 0 and float(shared @ b) >= 0
    # The weights are those of the unit vectors; the direction is their min-norm point.
    ua, ub = a / a.norm(), b / b.norm()
    gamma = two_task_weight(1.0, float(ua @ ub), 1.0)
    assert pgm.last_weights["classification"] == pytest.approx(gamma)
    torch.testing.assert_close(shared, gamma * ua + (1 - gamma) * ub, rtol=1e-5, atol=1e-6)
    # "loss_weights" (the authors' code) applies the same gamma to the raw gradients.
    raw, _, _ = _pgm_grads(a, b, normalize=True)
    torch.testing.assert_close(raw, gamma * a + (1 - gamma) * b, rtol=1e-5, atol=1e-6)


def test_weighted_non_shared_option_and_fixed_terms() -> None:
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    _, head, _ = _pgm_grads(a, b, normalize=False, non_shared="weighted")
    torch.testing.assert_close(head, torch.tensor([0.4 * 3.0]))
    # Named tasks: a term that is not one (another plug-in's) joins with weight 1 everywhere.
    model = _TwoLossModel()
    pgm = ParetoGradientModulation(tasks=["classification", "aux"], normalize=False)
    pgm.on_fit_start(_Stub(model))  # type: ignore[arg-type]
    terms = {
        "classification": (model.shared * a).sum(),
        "aux": (model.shared * b).sum(),
        "rna": (model.shared * torch.tensor([0.0, 5.0])).sum() + model.head.sum(),
    }
    out = ModelOutput(logits=torch.zeros(1, 2), aux_losses={"aux": terms["aux"]})
    assert pgm.backward(_Stub(model), _one_labelled_batch(), out, terms)  # type: ignore[arg-type]
    torch.testing.assert_close(model.shared.grad, 0.6 * a + 0.4 * b + torch.tensor([0.0, 5.0]))
    torch.testing.assert_close(model.head.grad, torch.tensor([1.0]))


def test_one_loss_is_a_clear_error_and_unknown_tasks_are_named() -> None:
    ds = _dataset()
    # bc-LSTM with probe heads: its one loss (the probes' does not reach shared parameters).
    model = build_model(
        "bclstm", in_dims=ds.dims, num_classes=ds.num_classes, hidden_size=8, dense_size=8, unimodal_loss_weight=0.0
    )
    trainer = _trainer(ds, model, [ParetoGradientModulation()])
    with pytest.raises(ConfigError, match="pgm balances several losses.*'classification' only.*unimodal_probe"):
        trainer.fit()
    model = _css(ds)
    trainer = _trainer(ds, model, [ParetoGradientModulation(tasks=["classification", "unimodl"])])
    with pytest.raises(ConfigError, match="unimodl.*unimodal, distillation"):
        trainer.fit()


# -- options and the switch ----------------------------------------------------------------
def test_options_defaults_and_bad_values() -> None:
    assert check_pgm({}) == {
        "enabled": True,
        "tasks": None,
        "normalize": True,
        "direction": "loss_weights",
        "non_shared": "sum",
        "max_iter": 1000,
        "tol": 1e-10,
    }
    assert check_pgm({"tasks": "classification, unimodal"})["tasks"] == ("classification", "unimodal")
    assert build_pgm({"enabled": False}, _dataset()) is None
    cases: list[tuple[dict[str, object], str]] = [
        ({"direction": "up"}, "pgm.direction"),
        ({"non_shared": "x"}, "pgm.non_shared"),
        ({"max_iter": 0}, "pgm.max_iter"),
        ({"tasks": [1, 2]}, "pgm.tasks"),
        ({"tasks": ["a", "a"]}, "twice"),
        ({"typo_key": 1}, "typo_key"),
    ]
    for bad, match in cases:
        with pytest.raises(ConfigError, match=match):
            check_pgm(bad)


def test_balance_switch_builds_pgm() -> None:
    from merc.cli import build_parser, plugin_overrides
    from merc.training.runner import resolve_recipe

    args = build_parser().parse_args(
        ["train", "--model", "css", "--dataset", "synthetic", "--out", "o", "--balance", "pgm"]
    )
    overrides = plugin_overrides(args)
    assert overrides == ["pgm.enabled=true"]
    recipe = resolve_recipe("css", "synthetic", [*overrides, "pgm.direction=min_norm"])
    (plugin,) = [p for p in build_plugins(recipe, _dataset()) if p.name == "pgm"]
    assert isinstance(plugin, ParetoGradientModulation) and plugin.direction == "min_norm"
    with pytest.raises(ConfigError, match="pgm.direction"):
        resolve_recipe("css", "synthetic", [*overrides, "pgm.direction=sideways"])


def test_two_plugins_computing_gradients_are_refused() -> None:
    ds = _dataset()
    with pytest.raises(ConfigError, match="compute the gradients themselves"):
        _trainer(ds, _css(ds), [ParetoGradientModulation(), ParetoGradientModulation()])


# -- end to end --------------------------------------------------------------------------
def _dataset() -> MercDataset:
    return make_dataset((5, 7, 3, 6, 4, 8), "tav", seed=4, separable=True)


def _css(ds: MercDataset) -> MercModel:
    torch.manual_seed(0)
    return build_model(
        "css",
        in_dims=ds.dims,
        num_classes=ds.num_classes,
        num_parties=2,
        hidden_size=16,
        num_heads=2,
        ffn_size=16,
        rank=4,
        dropout=0.1,
    )


def _trainer(ds: MercDataset, model: MercModel, plugins: list[TrainerPlugin], run_dir=None, epochs: int = 3) -> Trainer:  # type: ignore[no-untyped-def]
    cfg = TrainConfig(epochs=epochs, batch_size=2, lr=0.01, patience=0, show_progress=False, seed=3)
    return Trainer(model, to_tensors(ds), ds.modalities, ds.num_classes, cfg, plugins=plugins, run_dir=run_dir)


def test_fit_with_pgm_on_css_records_weights_and_changes_training() -> None:
    ds = _dataset()
    baseline = _trainer(ds, _css(ds), [])
    baseline.fit()
    trainer = _trainer(ds, _css(ds), build_plugins({"pgm": {"enabled": True}}, ds))
    trainer.fit()
    for entry in trainer.history:
        metrics = entry["plugins"]["pgm"]
        assert set(metrics) == {"weights", "min_cosine", "conflict_share"}
        assert set(metrics["weights"]) == {"classification", "unimodal", "distillation"}
        assert sum(metrics["weights"].values()) == pytest.approx(1.0)
        assert -1.0 <= metrics["min_cosine"] <= 1.0 and 0.0 <= metrics["conflict_share"] <= 1.0
        # The trainer still logs every term unweighted.
        assert set(entry["train_loss_terms"]) == {"classification", "unimodal", "distillation"}
    json.dumps(trainer.history)
    differs = [not torch.equal(v, baseline.model.state_dict()[k]) for k, v in trainer.model.state_dict().items()]
    assert any(differs)
    assert trainer.evaluate(trainer.train_items)["accuracy"] > 50.0


def test_pgm_gradients_equal_the_weighted_per_task_gradients_in_a_real_step() -> None:
    ds = _dataset()
    model = _css(ds).train()
    pgm = ParetoGradientModulation()
    trainer = _trainer(ds, model, [pgm])
    pgm.on_fit_start(trainer)
    from merc.data.batching import collate

    batch = collate(trainer.train_items[:3], ds.modalities)
    torch.manual_seed(5)
    output = model(batch)
    terms = trainer.loss_terms(batch, output)
    assert pgm.backward(trainer, batch, output, terms)
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    gamma = pgm.last_weights
    shared = {id(p) for p in model.shared_parameters()}
    torch.manual_seed(5)
    model.zero_grad()
    output = model(batch)
    terms = trainer.loss_terms(batch, output)
    per_task = {
        name: torch.autograd.grad(t, list(model.parameters()), retain_graph=True, allow_unused=True)
        for name, t in terms.items()
    }
    for k, (name, p) in enumerate(model.named_parameters()):
        coef = gamma if id(p) in shared else dict.fromkeys(terms, 1.0)
        parts = [coef[t] * g[k] for t, g in per_task.items() if g[k] is not None]
        if parts:
            torch.testing.assert_close(got[name], torch.stack(parts).sum(0), rtol=1e-4, atol=1e-6, msg=name)


def test_pgm_resumes_exactly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ds = _dataset()
    straight = _trainer(ds, _css(ds), [ParetoGradientModulation()], tmp_path / "a")
    straight.fit()
    killed = _trainer(ds, _css(ds), [ParetoGradientModulation(), KillAt(1)], tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    resumed = _trainer(ds, _css(ds), [ParetoGradientModulation()], tmp_path / "b")
    resumed.fit()
    assert_same_training(resumed, straight)
