"""The shared contract every registered model must pass (timm's tests/test_models.py idea).

Shapes, finite outputs, gradients reach every parameter, every modality subset, ragged
dialogue lengths, invariance to padding and batch composition, determinism, and a tiny
overfitting run that catches wiring mistakes shape tests miss.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from helpers import DIMS, make_batch, make_dataset
from merc.data.batching import collate, to_tensors
from merc.data.missing import apply_missing
from merc.models import build_model, get_model_class, list_models
from merc.models.output import ModelOutput
from merc.training.trainer import TrainConfig, Trainer

MODELS = list_models()
SUBSETS = ["".join(c) for r in (1, 2, 3) for c in itertools.combinations("tav", r)]
NUM_CLASSES = 3


def _build(name: str, modalities: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(
        name, in_dims={m: DIMS[m] for m in modalities}, num_classes=NUM_CLASSES, num_speakers=2, num_parties=2
    )


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("modalities", SUBSETS)
def test_output_contract_every_subset(name: str, modalities: str) -> None:
    batch, _ = make_batch((1, 7, 3), modalities)
    model = _build(name, modalities).train()
    out = model(batch)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (11, NUM_CLASSES)
    assert torch.isfinite(out.logits).all()
    for m, lg in out.unimodal_logits.items():
        assert m in modalities and lg.shape == (11, NUM_CLASSES) and torch.isfinite(lg).all()
    for key, aux in out.aux_losses.items():
        assert aux.dim() == 0 and torch.isfinite(aux), key


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    batch, _ = make_batch((1, 7, 3, 5), "tav")
    model = _build(name, "tav").train()
    out = model(batch)
    loss = torch.nn.functional.cross_entropy(out.logits, batch.flat_labels)
    loss = (
        loss
        + sum(out.aux_losses.values())
        + sum(lg.sum() * 0 + lg.logsumexp(-1).mean() for lg in out.unimodal_logits.values())
    )
    loss.backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert not missing, f"no (finite) gradient for: {missing}"
    dead = [n for n, p in model.named_parameters() if p.requires_grad and p.grad.abs().sum() == 0]
    assert not dead, f"all-zero gradient for: {dead}"


@pytest.mark.parametrize("name", MODELS)
def test_predictions_do_not_depend_on_padding_or_batch_mates(name: str) -> None:
    ds = make_dataset((1, 7, 3, 12), "tav", seed=1)
    items = to_tensors(ds)["train"]
    model = _build(name, "tav").eval()
    with torch.no_grad():
        together = model(collate(items, ds.modalities)).logits
        offsets = [0, 1, 8, 11, 23]
        for i, item in enumerate(items):
            alone = model(collate([item], ds.modalities)).logits
            torch.testing.assert_close(together[offsets[i] : offsets[i + 1]], alone, rtol=1e-4, atol=1e-5)
        # Another order of the same dialogues gives the same per-dialogue predictions.
        reordered = model(collate([items[3], items[1], items[0], items[2]], ds.modalities)).logits
        torch.testing.assert_close(reordered[:12], together[11:23], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(reordered[12:19], together[1:8], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_predictions_do_not_depend_on_other_dialogues_masks(name: str) -> None:
    ds = make_dataset((5, 7, 3), "tav", seed=3)
    items_a = to_tensors(apply_missing(ds, 0.3, seed=1))["train"]
    items_b = to_tensors(apply_missing(ds, 0.6, seed=2))["train"]
    model = _build(name, "tav").eval()
    with torch.no_grad():
        reference = model(collate(items_a, ds.modalities)).logits[:5]
        # Dialogue 0 keeps its masks; its batch mates carry other masks.
        mixed = model(collate([items_a[0], *items_b[1:]], ds.modalities)).logits[:5]
    torch.testing.assert_close(mixed, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_deterministic_under_seed(name: str) -> None:
    batch, _ = make_batch((4, 6), "tav")
    outs = []
    for _ in range(2):
        model = _build(name, "tav", seed=3).train()
        torch.manual_seed(7)
        outs.append(model(batch).logits)
    torch.testing.assert_close(outs[0], outs[1])


@pytest.mark.parametrize("name", MODELS)
def test_wrong_feature_dim_is_a_clear_error(name: str) -> None:
    from merc.errors import DataError

    batch, _ = make_batch((3, 2), "t")
    model = build_model(name, in_dims={"t": DIMS["t"] + 1}, num_classes=NUM_CLASSES, num_speakers=2, num_parties=2)
    with pytest.raises(DataError, match="dim"):
        model(batch)


#: Learning rates of the overfitting test where 3e-3 is outside a model's range: CSS's
#: degree-3 polynomial fusion diverges there, and whether it recovers within 60 epochs
#: depended on the machine (it did on earlier sessions' machines, not on a later one).
#: Its recipe trains at 1e-4; test_css_fits_the_tiny_set_at_this_rate_for_three_seeds
#: checks the rate used here.
OVERFIT_LR = {"css": 1e-3}


def _tiny_set_accuracy(name: str, seed: int = 0) -> float:
    """Training accuracy after 60 epochs on five separable dialogues."""
    ds = make_dataset((6, 9, 4, 8, 5), "tav", seed=2, separable=True)
    model = _build(name, "tav", seed=seed)
    trainer = Trainer(
        model,
        to_tensors(ds),
        ds.modalities,
        ds.num_classes,
        TrainConfig(
            epochs=60,
            lr=OVERFIT_LR.get(name, 0.003),
            batch_size=5,
            patience=0,
            show_progress=False,
            clip_grad_norm=5.0,
        ),
    )
    trainer.fit()
    return float(trainer.evaluate(trainer.train_items)["accuracy"])


@pytest.mark.parametrize("name", MODELS)
def test_overfits_a_tiny_set(name: str) -> None:
    assert _tiny_set_accuracy(name) >= 95.0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_css_fits_the_tiny_set_at_this_rate_for_three_seeds(seed: int) -> None:
    """The other seeds of OVERFIT_LR["css"] (seed 0 is test_overfits_a_tiny_set's)."""
    assert _tiny_set_accuracy("css", seed) >= 95.0


# -- the modality contract: encode each modality, then fuse ---------------------------------
PER_MODALITY = [n for n in MODELS if not get_model_class(n).fuses_early]
EARLY = [n for n in MODELS if get_model_class(n).fuses_early]


@pytest.mark.parametrize("name", PER_MODALITY)
def test_modality_parameter_groups_are_disjoint_and_cover_the_encoders(name: str) -> None:
    model = _build(name, "tav")
    groups = model.modality_parameters()
    assert set(groups) == {"t", "a", "v"}
    ids = {m: {id(p) for p in ps} for m, ps in groups.items()}
    for a, b in itertools.combinations(ids, 2):
        assert not ids[a] & ids[b], f"{a} and {b} share parameters"
    for m in "tav":
        encoder = {id(p) for p in model.encoders[m].parameters()}
        assert encoder and encoder <= ids[m]
        assert {id(p) for p in model.unimodal_classifiers[m].parameters()} <= ids[m]
    # Nothing outside the encoders and unimodal heads is in a group.
    named = dict(model.named_parameters())
    grouped = set().union(*ids.values())
    assert all(n.startswith(("encoders.", "unimodal_classifiers.")) for n, p in named.items() if id(p) in grouped)


@pytest.mark.parametrize("name", PER_MODALITY)
def test_each_code_depends_only_on_its_own_modality(name: str) -> None:
    batch, _ = make_batch((1, 7, 3), "tav")
    model = _build(name, "tav").eval()
    with torch.no_grad():
        codes = model.encode(model.apply_availability(batch))
        for m in "tav":
            features = dict(batch.features)
            features[m] = features[m] + 3.0 * torch.randn_like(features[m])
            moved = model.encode(model.apply_availability(dataclasses.replace(batch, features=features)))
            for other in "tav":
                assert moved[other].shape == (11, model.code_dims[other])
                if other == m:
                    assert not torch.allclose(moved[other], codes[other]), f"{m}'s code ignores {m}"
                else:
                    torch.testing.assert_close(moved[other], codes[other], msg=f"{other}'s code moved with {m}")


@pytest.mark.parametrize("name", PER_MODALITY)
def test_unimodal_logits_and_features_for_every_per_modality_model(name: str) -> None:
    batch, _ = make_batch((1, 7, 3), "tav")
    model = _build(name, "tav").train()
    out = model(batch)
    assert set(out.unimodal_logits) == set(out.unimodal_features) == {"t", "a", "v"}
    for m in "tav":
        assert out.unimodal_logits[m].shape == (11, NUM_CLASSES)
        assert out.unimodal_features[m].shape == (11, model.code_dims[m])
    # The heads are trained: a unimodal loss term (a probe on detached codes unless the paper
    # lets it flow into the encoders), or the model's own unimodal logits are part of its
    # fusion (fills_unimodal_logits: trained by its loss).
    assert model.fills_unimodal_logits or {"unimodal_probe", "unimodal_ce"} & set(out.aux_losses)
    off = build_model(
        name, in_dims=DIMS, num_classes=NUM_CLASSES, num_speakers=2, num_parties=2, unimodal_heads=False
    ).train()
    assert off(batch).unimodal_logits == {}


@pytest.mark.parametrize("name", PER_MODALITY)
def test_a_before_fuse_hook_changes_the_fusion_only(name: str) -> None:
    batch, _ = make_batch((1, 7, 3), "tav")
    model = _build(name, "tav").eval()
    with torch.no_grad():
        plain = model(batch)
        seen: list[set[str]] = []

        def drop_text(b, codes):
            seen.append(set(codes))
            return {m: torch.zeros_like(c) if m == "t" else c for m, c in codes.items()}

        with model.before_fuse(drop_text):
            dropped = model(batch)
        after = model(batch)
    assert seen == [{"t", "a", "v"}]
    assert not torch.allclose(plain.logits, dropped.logits)
    torch.testing.assert_close(after.logits, plain.logits)  # removed again
    torch.testing.assert_close(dropped.unimodal_logits["t"], plain.unimodal_logits["t"])


@pytest.mark.parametrize("name", EARLY)
def test_early_fusion_models_refuse_per_modality_plugins(name: str) -> None:
    from merc.errors import ConfigError
    from merc.training.plugins.base import TrainerPlugin

    class NeedsModalities(TrainerPlugin):
        name = "needs-modalities"
        needs_per_modality = True

    model = _build(name, "tav")
    with pytest.raises(ConfigError, match="fuses the modalities"):
        model.modality_parameters()
    with pytest.raises(ConfigError, match="fuses the modalities"):
        model.register_before_fuse(lambda b, c: c)
    ds = make_dataset((3, 4), "tav")
    with pytest.raises(ConfigError, match="needs-modalities"):
        Trainer(
            model,
            to_tensors(ds),
            ds.modalities,
            ds.num_classes,
            TrainConfig(show_progress=False),
            plugins=[NeedsModalities()],
        )
    batch, _ = make_batch((1, 7, 3), "tav")
    assert model.train()(batch).unimodal_logits == {}


@pytest.mark.parametrize("name", MODELS)
def test_too_many_parties_is_an_error_never_clamped(name: str) -> None:
    from merc.errors import DataError

    model = _build(name, "tav")
    if model.max_parties is None and name != "corect":
        pytest.skip(f"{name} has no per-party parameters")
    batch, _ = make_batch((1, 7, 3), "tav")
    parties = batch.parties.clone()
    parties[1, :3] = torch.tensor([0, 1, 2])  # a third speaker in a model built for two
    speakers = batch.speakers.clone()
    speakers[1, 2] = 2
    bad = dataclasses.replace(batch, parties=parties, speakers=speakers)
    with pytest.raises(DataError, match="speaker"):
        model(bad)
