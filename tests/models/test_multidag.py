"""MultiDAG specifics: batch-vectorised DAG walk, causality, speaker relations, availability, recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import DIMS, make_dataset
from merc.config import load_recipe, load_yaml
from merc.data.batching import collate, to_tensors
from merc.models import build_model
from merc.models.layers.dag import DAGLayer
from merc.models.multidag import MultiDAG
from merc.training.trainer import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "multidag"


def _model(modalities: str = "tav", seed: int = 0, **kwargs) -> MultiDAG:  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    kwargs.setdefault("hidden_size", 16)
    kwargs.setdefault("num_layers", 2)
    model = build_model("multidag", in_dims={m: DIMS[m] for m in modalities}, num_classes=3, **kwargs)
    assert isinstance(model, MultiDAG)
    return model.eval()


def test_one_step_per_position_not_per_utterance(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = DAGLayer.step

    def counting(self, x, *args):  # type: ignore[no-untyped-def]
        calls.append(x.shape[0])
        return original(self, x, *args)

    monkeypatch.setattr(DAGLayer, "step", counting)
    ds = make_dataset((5, 9, 3, 9, 1, 7), "tav")
    batch = collate(to_tensors(ds)["train"], ds.modalities)
    model = _model(num_layers=3)
    with torch.no_grad():
        model(batch)
    t, n = batch.max_len, batch.num_utterances
    assert len(calls) == 3 * t  # 27 steps, not 3 * 34
    assert n > t
    # Each step works on the dialogues still running at that position, all at once.
    lengths = batch.lengths.tolist()
    assert calls[:t] == [sum(length > i for length in lengths) for i in range(t)]
    assert sum(calls) == 3 * n


def test_prediction_invariant_to_batch_mates() -> None:
    ds = make_dataset((4, 11, 2, 8), "tav", seed=5)
    items = to_tensors(ds)["train"]
    model = _model()
    with torch.no_grad():
        alone = model(collate([items[1]], ds.modalities)).logits
        for mates in ([0, 1], [1, 3, 2], [3, 2, 0, 1]):
            out = model(collate([items[i] for i in mates], ds.modalities)).logits
            start = sum(len(items[i]) for i in mates[: mates.index(1)])
            torch.testing.assert_close(out[start : start + 11], alone, rtol=1e-5, atol=1e-6)


def test_graph_part_is_causal_without_the_bidirectional_text_encoder() -> None:
    # Audio/visual encoders are per utterance and the DAG only points forward in time, so
    # without text an utterance's prediction ignores every later utterance.
    ds = make_dataset((8,), "av", seed=1)
    items = to_tensors(ds)["train"]
    model = _model("av")
    base = collate(items, ds.modalities)
    changed = collate(items, ds.modalities)
    changed.features["a"] = changed.features["a"].clone()
    changed.features["a"][0, 5:] += 3.0
    with torch.no_grad():
        a, b = model(base).logits, model(changed).logits
    torch.testing.assert_close(a[:5], b[:5])
    assert not torch.allclose(a[5:], b[5:])


def test_speaker_relations_and_window_change_the_output() -> None:
    ds = make_dataset((10,), "a", seed=2)
    batch = collate(to_tensors(ds)["train"], ds.modalities)
    model = _model("a")
    with torch.no_grad():
        ref = model(batch).logits
        one_speaker = collate(to_tensors(ds)["train"], ds.modalities)
        one_speaker.parties = torch.zeros_like(one_speaker.parties)
        assert not torch.allclose(model(one_speaker).logits, ref)
        wider = _model("a", speaker_window=2)
        wider.load_state_dict(model.state_dict())
        assert not torch.allclose(wider(batch).logits, ref)
        # The first two utterances have the same predecessors under both windows.
        torch.testing.assert_close(wider(batch).logits[:3], ref[:3])


def test_unavailable_modality_is_ignored() -> None:
    ds = make_dataset((6,), "ta", seed=3)
    model = _model("ta")
    batch = collate(to_tensors(ds)["train"], ds.modalities)
    batch.availability[0, 2, 1] = False  # audio of utterance 2 missing
    other = collate(to_tensors(ds)["train"], ds.modalities)
    other.availability = batch.availability.clone()
    other.features["a"] = other.features["a"].clone()
    other.features["a"][0, 2] = 100.0  # whatever sits there must not matter
    with torch.no_grad():
        torch.testing.assert_close(model(batch).logits, model(other).logits)


def test_dot_attention_variant_builds_and_runs() -> None:
    ds = make_dataset((3, 6), "t")
    model = _model("t", attention="dot")
    out = model(collate(to_tensors(ds)["train"], ds.modalities))
    assert out.logits.shape == (9, 3)
    assert out.embeddings is not None and out.embeddings.shape == (9, 16 * 3 + 16)


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_build(recipe: Path) -> None:
    assert "curriculum" not in load_yaml(recipe)  # off by default; switched on from the command line
    cfg = load_recipe("multidag", recipe.stem)  # the dataset's file over default.yaml
    TrainConfig.from_dict(cfg["training"])
    model = build_model("multidag", in_dims={"t": 12, "a": 6, "v": 8}, num_classes=6, **cfg["model"])
    assert isinstance(model, MultiDAG)


def test_recipes_hold_the_papers_values() -> None:
    iemocap = load_recipe("multidag", "iemocap6")
    meld = load_recipe("multidag", "meld7")
    assert iemocap["training"]["lr"] == 0.0005 and iemocap["training"]["epochs"] == 30
    assert iemocap["model"]["dropout"] == 0.4 and iemocap["model"]["num_layers"] == 4
    assert meld["training"]["lr"] == 0.00001 and meld["training"]["epochs"] == 60
    assert meld["model"]["dropout"] == 0.1 and meld["model"]["num_layers"] == 2
