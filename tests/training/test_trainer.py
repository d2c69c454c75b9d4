"""The trainer: validation-only selection, resumable checkpoints, plug-in hooks."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import KillAt, assert_same_training, make_dataset
from merc.data.batching import to_tensors
from merc.models import build_model
from merc.training.plugins.base import TrainerPlugin
from merc.training.trainer import TrainConfig, Trainer


def _trainer(tmp_path=None, epochs: int = 6, plugins=(), patience: int = 0, seed: int = 0) -> Trainer:
    ds = make_dataset((5, 7, 3, 6, 4, 8), "ta", seed=4, separable=True)
    torch.manual_seed(seed)
    model = build_model("bclstm", in_dims=ds.dims, num_classes=ds.num_classes, hidden_size=8, dense_size=8)
    cfg = TrainConfig(epochs=epochs, batch_size=2, lr=0.01, patience=patience, show_progress=False, seed=seed)
    return Trainer(model, to_tensors(ds), ds.modalities, ds.num_classes, cfg, plugins=list(plugins), run_dir=tmp_path)


def test_selects_best_validation_epoch_and_tests_once() -> None:
    tr = _trainer(epochs=8)
    fit = tr.fit()
    scores = [h["valid_weighted_f1"] for h in tr.history]
    assert fit["best_epoch"] == scores.index(max(scores))
    tr.test()
    with pytest.raises(RuntimeError, match="once"):
        tr.test()


def test_early_stopping() -> None:
    tr = _trainer(epochs=200, patience=3)
    fit = tr.fit()
    assert fit["epochs_run"] < 200
    assert fit["epochs_run"] - 1 - fit["best_epoch"] == 3


def test_resume_after_kill_equals_uninterrupted_run(tmp_path) -> None:
    straight = _trainer(tmp_path / "a", epochs=6)
    straight.fit()
    killed = _trainer(tmp_path / "b", epochs=6, plugins=[KillAt(3)])
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert killed.epoch == 3
    resumed = _trainer(tmp_path / "b", epochs=6)  # a fresh process: new model, same folder
    resumed.fit()
    assert resumed.epoch == 6
    assert_same_training(resumed, straight)
    # The checkpoint loads with weights_only=True (no pickled objects).
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert json.loads(state["history"])[-1]["epoch"] == 5


class _Recorder(TrainerPlugin):
    name = "recorder"

    def __init__(self) -> None:
        self.events: list[str] = []
        self.grad_seen_before_step = True

    def select_training_dialogues(self, trainer, epoch, indices):
        self.events.append(f"select{epoch}")
        return indices[:2] if epoch == 0 else indices

    def on_epoch_start(self, trainer, epoch):
        self.events.append(f"start{epoch}")
        self.snapshot = None

    def after_backward(self, trainer, batch, output):
        self.events.append("after_backward")
        p = next(trainer.model.parameters())
        self.grad_seen_before_step &= p.grad is not None
        self.before = p.detach().clone()

    def on_batch_end(self, trainer, batch, output, loss):
        self.events.append("batch_end")
        # The optimiser stepped between after_backward and here.
        assert not torch.equal(self.before, next(trainer.model.parameters()).detach())

    def on_epoch_end(self, trainer, epoch, valid_metrics):
        self.events.append(f"end{epoch}")


def test_hooks_order_and_dialogue_selection() -> None:
    rec = _Recorder()
    tr = _trainer(epochs=2, plugins=[rec])
    tr.fit()
    first = rec.events[: rec.events.index("end0") + 1]
    # Epoch 0 sees 2 dialogues = 1 batch of 2.
    assert first == ["select0", "start0", "after_backward", "batch_end", "end0"]
    assert rec.events.count("after_backward") == 1 + 3  # epoch 1: 6 dialogues / 2
    assert rec.grad_seen_before_step


class _ZeroWeights(TrainerPlugin):
    name = "zero"

    def utterance_weights(self, trainer, batch, output, utterance_loss):
        self.n = utterance_loss.shape[0]
        return torch.zeros_like(utterance_loss)


def test_utterance_weights_hook_weights_the_classification_loss() -> None:
    plugin = _ZeroWeights()
    tr = _trainer(epochs=1, plugins=[plugin])
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.model.unimodal_loss_weight = 0.0
    tr.model.use_unimodal_heads = False  # no probe loss either
    tr.train_epoch()
    assert plugin.n > 0
    assert tr.last_loss_terms == {"classification": 0.0}
    # Zero loss and no aux loss: Adam with zero gradients leaves the weights unchanged.
    for k, v in tr.model.state_dict().items():
        torch.testing.assert_close(v, before[k])


class _Weights(TrainerPlugin):
    def __init__(self, name: str, value: float) -> None:
        self.name, self.value = name, value

    def utterance_weights(self, trainer, batch, output, utterance_loss):
        return torch.full_like(utterance_loss, self.value)


class _Term(TrainerPlugin):
    def __init__(self, name: str, term: str, value: float) -> None:
        self.name, self.term, self.value = name, term, value

    def loss_terms(self, trainer, batch, output):
        return {self.term: output.logits.sum() * 0 + self.value}


def test_plugins_compose_weights_multiply_and_terms_add_under_their_names() -> None:
    from merc.data.batching import collate

    plain = _trainer(epochs=1)
    both = _trainer(
        epochs=1, plugins=[_Weights("a", 0.5), _Weights("b", 3.0), _Term("c", "extra", 2.0), _Term("d", "more", 0.25)]
    )
    both.model.load_state_dict(plain.model.state_dict())
    batch = collate(plain.train_items, plain.modalities)
    plain.model.eval(), both.model.eval()
    out = plain.model(batch)
    base = plain.loss_terms(batch, out)
    terms = both.loss_terms(batch, both.model(batch))
    assert set(terms) == set(base) | {"extra", "more"}
    torch.testing.assert_close(terms["classification"], 1.5 * base["classification"])
    assert float(terms["extra"].detach()) == 2.0 and float(terms["more"].detach()) == 0.25
    both.model.train()
    both.train_epoch()
    assert {"classification", "extra", "more"} <= set(both.last_loss_terms)
    assert both.last_loss_terms["extra"] == pytest.approx(2.0)


def test_two_loss_terms_with_one_name_are_an_error() -> None:
    from merc.data.batching import collate
    from merc.errors import ConfigError

    tr = _trainer(epochs=1, plugins=[_Term("c", "extra", 1.0), _Term("d", "extra", 2.0)])
    batch = collate(tr.train_items, tr.modalities)
    with pytest.raises(ConfigError, match="extra"):
        tr.loss_terms(batch, tr.model(batch))


def test_history_records_each_loss_term() -> None:
    tr = _trainer(epochs=2)
    tr.fit()
    terms = tr.history[-1]["train_loss_terms"]
    assert "classification" in terms and all(isinstance(v, float) for v in terms.values())
    assert tr.history[-1]["train_loss"] == pytest.approx(sum(terms.values()), rel=1e-5)


class _ZeroText(TrainerPlugin):
    name = "zero-text"
    needs_per_modality = True

    def __init__(self) -> None:
        self.calls = 0

    def before_fuse(self, trainer, batch, codes):
        self.calls += 1
        return {m: (c * 0 if m == "t" else c) for m, c in codes.items()}


def test_before_fuse_hook_changes_what_is_fused_not_the_codes() -> None:
    from merc.data.batching import collate

    plugin = _ZeroText()
    plain = _trainer(epochs=1)
    hooked = _trainer(epochs=1, plugins=[plugin])
    hooked.model.load_state_dict(plain.model.state_dict())
    plain.model.eval(), hooked.model.eval()
    batch = collate(plain.train_items, plain.modalities)
    a, b = plain.model(batch), hooked.model(batch)
    assert plugin.calls == 1
    assert not torch.allclose(a.logits, b.logits)
    # Unimodal outputs come from the codes before the hook.
    torch.testing.assert_close(a.unimodal_logits["t"], b.unimodal_logits["t"])


@pytest.mark.parametrize("name", ["micga", "corect"])
def test_unimodal_probes_do_not_change_how_the_model_trains(name: str) -> None:
    # Probes read detached codes and are clipped on their own: with and without them the
    # model's own weights follow the same trajectory.
    ds = make_dataset((3, 6, 4, 5), "tav", seed=4, separable=True)
    states = []
    for heads in (True, False):
        torch.manual_seed(0)
        model = build_model(
            name, in_dims={"t": 12, "a": 6, "v": 8}, num_classes=3, num_speakers=2, num_parties=2, unimodal_heads=heads
        )
        tr = Trainer(
            model,
            to_tensors(ds),
            ds.modalities,
            3,
            TrainConfig(epochs=2, lr=0.01, batch_size=2, patience=0, clip_grad_norm=0.05, show_progress=False),
        )
        tr.fit()
        states.append({k: v for k, v in model.state_dict().items() if not k.startswith("unimodal_classifiers.")})
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=1e-5, atol=1e-6, msg=key)
