"""DAG-ERC specifics: the network shared with MultiDAG, the readout, the DAG's causality and speakers, recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import DIMS, make_dataset
from merc.config import load_recipe
from merc.data.batching import collate, to_tensors
from merc.models import build_model
from merc.models.dagerc import DAGERC
from merc.models.multidag import MultiDAG
from merc.models.registry import check_model_arguments
from merc.training.trainer import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "dagerc"


def _model(modalities: str = "tav", seed: int = 0, **kwargs) -> DAGERC:  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    kwargs.setdefault("hidden_size", 16)
    kwargs.setdefault("num_layers", 2)
    model = build_model("dagerc", in_dims={m: DIMS[m] for m in modalities}, num_classes=3, **kwargs)
    assert isinstance(model, DAGERC)
    return model.eval()


def _batch(lengths: tuple[int, ...], modalities: str = "tav", seed: int = 0):  # type: ignore[no-untyped-def]
    ds = make_dataset(lengths, modalities, seed=seed)
    return collate(to_tensors(ds)["train"], ds.modalities)


def test_same_network_as_multidag_without_its_encoders() -> None:
    # MultiDAG = DAG-ERC + contextual encoders (+ dropout on their outputs, + zeroing of
    # missing modalities). With linear encoders and in eval mode the two are one function.
    batch = _batch((1, 7, 3, 12))
    dag = _model(code_size=16)
    torch.manual_seed(1)
    multi = build_model("multidag", in_dims=DIMS, num_classes=3, hidden_size=16, num_layers=2, encoders="linear")
    assert isinstance(multi, MultiDAG)
    assert list(dag.state_dict()) == list(multi.state_dict())
    dag.load_state_dict(multi.state_dict())
    multi.eval()
    with torch.no_grad():
        torch.testing.assert_close(dag(batch).logits, multi(batch).logits)


def test_codes_are_as_wide_as_the_features_and_the_readout_appends_them() -> None:
    batch = _batch((4, 6))
    model = _model()
    assert model.code_dims == DIMS
    assert [type(model.encoders[m]).__name__ for m in "tav"] == ["UtteranceEncoder"] * 3
    with torch.no_grad():
        out = model(batch)
        codes = model.encode(batch)
    fused = torch.cat([codes[m] for m in "tav"], dim=-1)
    assert out.embeddings is not None and out.embeddings.shape == (10, 16 * 3 + sum(DIMS.values()))
    torch.testing.assert_close(out.embeddings[:, 16 * 3 :], fused)  # [H^0 .. H^L, x]
    assert not torch.allclose(out.embeddings[:, 16:32], out.embeddings[:, 32:48])  # layers differ


def test_prediction_is_causal() -> None:
    # Linear encoders are per utterance and the DAG only points forward in time.
    batch = _batch((8,), seed=1)
    changed = _batch((8,), seed=1)
    changed.features["t"] = changed.features["t"].clone()
    changed.features["t"][0, 5:] += 3.0
    model = _model()
    with torch.no_grad():
        a, b = model(batch).logits, model(changed).logits
    torch.testing.assert_close(a[:5], b[:5])
    assert not torch.allclose(a[5:], b[5:])


def test_speakers_window_and_layers_change_the_output() -> None:
    batch = _batch((10,), "t", seed=2)
    model = _model("t")
    with torch.no_grad():
        ref = model(batch).logits
        one_speaker = _batch((10,), "t", seed=2)
        one_speaker.parties = torch.zeros_like(one_speaker.parties)
        assert not torch.allclose(model(one_speaker).logits, ref)
        wider = _model("t", speaker_window=2)
        wider.load_state_dict(model.state_dict())
        assert not torch.allclose(wider(batch).logits, ref)
        torch.testing.assert_close(wider(batch).logits[:3], ref[:3])  # same predecessors so far
        deeper = _model("t", num_layers=3)
        assert len(deeper.layers) == 3 and deeper.mlp[0].in_features == 16 * 4 + DIMS["t"]


def test_dropout_only_before_the_output_layer() -> None:
    # The code's DAGERC_fushion drops only inside its output MLP; the codes and the graph
    # states are deterministic in training mode.
    batch = _batch((5, 3))
    model = _model(dropout=0.9).train()
    seen: list[torch.Tensor] = []
    model.mlp.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    model(batch)
    model(batch)
    torch.testing.assert_close(seen[0], seen[1])


def test_code_size_and_encoder_choice() -> None:
    model = _model("ta", code_size=10, encoders={"t": "bigru"})
    assert model.code_dims == {"t": 10, "a": 10}
    assert type(model.encoders["t"]).__name__ == "RecurrentEncoder"


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_build(recipe: Path) -> None:
    cfg = load_recipe("dagerc", recipe.stem)
    TrainConfig.from_dict(cfg["training"])
    options = check_model_arguments("dagerc", cfg["model"])
    model = build_model("dagerc", in_dims={"t": 12, "a": 6, "v": 8}, num_classes=6, **options)
    assert isinstance(model, DAGERC)


def test_recipes_hold_the_authors_values() -> None:
    iemocap = load_recipe("dagerc", "iemocap6")  # no file of its own: the default
    meld = load_recipe("dagerc", "meld7")
    assert iemocap["model"]["num_layers"] == 4 and iemocap["model"]["dropout"] == 0.2
    assert iemocap["model"]["hidden_size"] == 300 and iemocap["model"]["speaker_window"] == 1
    assert iemocap["training"]["lr"] == 0.0005 and iemocap["training"]["batch_size"] == 16
    assert iemocap["training"]["epochs"] == 30 and iemocap["training"]["optimizer"] == "adamw"
    assert meld["model"]["num_layers"] == 2 and meld["model"]["dropout"] == 0.1
    assert meld["training"]["lr"] == 0.00001 and meld["training"]["batch_size"] == 64
    assert meld["training"]["epochs"] == 70 and meld["model"]["hidden_size"] == 300
