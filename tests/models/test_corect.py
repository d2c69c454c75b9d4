"""CORECT-specific behaviour: ablation switches, relation sets, edge direction, speakers, recipes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import merc.models.corect as corect_module
from helpers import DIMS, make_batch
from merc.config import load_recipe
from merc.errors import ConfigError, DataError
from merc.models import build_model
from merc.models.corect import CORECT
from merc.training.trainer import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "corect"


def _corect(modalities: str = "tav", seed: int = 0, **kwargs: object) -> CORECT:
    torch.manual_seed(seed)
    model = build_model(
        "corect", in_dims={m: DIMS[m] for m in modalities}, num_classes=3, num_speakers=2, num_parties=2, **kwargs
    )
    assert isinstance(model, CORECT)
    return model


def _param_prefixes(model: torch.nn.Module) -> set[str]:
    return {name.split(".")[0] for name, _ in model.named_parameters()}


def test_paper_defaults() -> None:
    model = _corect()
    assert (model.past_window, model.future_window) == (11, 9)
    assert model.rtgcn is not None and model.rtgcn.graph_transformer.heads == 7
    assert model.pcm is not None
    first_cross = next(iter(model.pcm.cross.values())).layers[0].attn
    assert first_cross.num_heads == 2 and len(next(iter(model.pcm.cross.values())).layers) == 2
    assert model.classifier[2].p == 0.5
    assert model.speaker_embedding is not None and model.speaker_ratio == 1.0
    # 3 x 3 cross-modal (incl. self) + 3 x 2 temporal relations.
    assert len(model.relation_names) == 15 and model.rtgcn.rgcn.num_relations == 15


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, 15),
        ({"use_multimodal_relations": False}, 3 + 6),
        ({"use_temporal_relations": False}, 9),
        ({"use_multimodal_relations": False, "use_temporal_relations": False}, 3),
    ],
)
def test_relation_switches_change_the_rgcn_relations(kwargs: dict[str, bool], expected: int) -> None:
    model = _corect(**kwargs)
    assert model.rtgcn is not None and model.rtgcn.rgcn.num_relations == expected
    names = model.relation_names
    assert {"t->t", "a->a", "v->v"} <= set(names)  # the self relation always stays
    assert any("->" in n and n[0] != n[-1] for n in names) == kwargs.get("use_multimodal_relations", True)
    assert any(":" in n for n in names) == kwargs.get("use_temporal_relations", True)


def test_single_modality_has_no_pcm_and_no_cross_modal_relations() -> None:
    model = _corect("t", use_pcm=True, use_multimodal_relations=True)
    assert model.pcm is None and "pcm" not in _param_prefixes(model)
    assert model.relation_names == ["t->t", "t:past", "t:future"]
    batch, _ = make_batch((1, 7, 3), "t")
    assert model(batch).logits.shape == (11, 3)
    two = _corect("av")
    assert two.pcm is not None and sorted(two.pcm.cross) == ["a2v", "v2a"]
    assert two.relation_names == ["a->a", "a->v", "v->a", "v->v", "a:past", "v:past", "a:future", "v:future"]


def test_branch_switches_change_the_parameter_set_and_fused_size() -> None:
    full = _corect()
    assert {"encoders", "speaker_embedding", "rtgcn", "pcm", "classifier", "unimodal_classifiers"} == _param_prefixes(
        full
    )
    assert full.fused_size == 3 * 7 * 100 + 3 * 2 * 100
    no_gnn = _corect(use_rtgcn=False)
    assert "rtgcn" not in _param_prefixes(no_gnn) and no_gnn.fused_size == 3 * 2 * 100
    no_pcm = _corect(use_pcm=False)
    assert "pcm" not in _param_prefixes(no_pcm) and no_pcm.fused_size == 3 * 7 * 100
    neither = _corect(use_rtgcn=False, use_pcm=False)
    assert neither.fused_size == 3 * 100  # the encoded features, as the reference
    no_spk = _corect(use_speaker_embedding=False)
    assert "speaker_embedding" not in _param_prefixes(no_spk)
    no_memory = _corect(pcm_memory_layers=0)
    assert no_memory.pcm is not None and no_memory.pcm.memory is None
    batch, _ = make_batch((1, 7, 3), "tav")
    for model in (no_gnn, no_pcm, neither, no_spk, no_memory):
        out = model.eval()(batch)
        assert out.logits.shape == (11, 3) and out.embeddings is not None
        assert out.embeddings.shape == (11, model.fused_size)


def _perturbation_reach(model: CORECT, position: int, length: int = 7) -> list[bool]:
    """Which utterances' predictions change when utterance ``position`` of one dialogue changes."""
    batch, _ = make_batch((length,), "".join(model.modalities), seed=5)
    model.eval()
    with torch.no_grad():
        before = model(batch).logits
        for m in batch.features:
            batch.features[m][0, position] += torch.randn_like(batch.features[m][0, position])
        after = model(batch).logits
    return [(not torch.allclose(a, b, atol=1e-6)) for a, b in zip(before, after, strict=True)]


def test_without_context_relations_utterances_are_independent() -> None:
    # FC text encoder, no P-CM, no temporal edges: nothing connects two utterances.
    isolated = _corect(use_temporal_relations=False, use_pcm=False, encoders={"t": "fc"})
    assert _perturbation_reach(isolated, 3) == [False, False, False, True, False, False, False]
    temporal = _corect(use_pcm=False, encoders={"t": "fc"})
    assert sum(_perturbation_reach(temporal, 3)) > 1


def test_temporal_edge_direction() -> None:
    # Window [1, 1]: each owner links only its previous utterance (no future: F - 1 = 0).
    # Two hops (RGCN, Graph Transformer). Reference direction: edges leave the owner,
    # so utterance 3 reaches its predecessors 2 and 1; "target" reverses that.
    common = dict(use_pcm=False, encoders={"t": "fc"}, past_window=1, future_window=1)
    source = _corect(**common)
    assert _perturbation_reach(source, 3) == [False, True, True, True, False, False, False]
    target = _corect(window_owner="target", **common)
    assert _perturbation_reach(target, 3) == [False, False, False, True, True, True, False]


def test_speaker_embedding_uses_the_chosen_ids() -> None:
    batch, _ = make_batch((4, 3), "ta")
    swapped = make_batch((4, 3), "ta")[0]
    swapped.speakers = 1 - swapped.speakers  # global ids change, parties do not
    with torch.no_grad():
        glob = _corect("ta").eval()
        assert not torch.allclose(glob(batch).logits, glob(swapped).logits)
        party = _corect("ta", speaker_ids="party").eval()
        torch.testing.assert_close(party(batch).logits, party(swapped).logits)
        none = _corect("ta", use_speaker_embedding=False).eval()
        torch.testing.assert_close(none(batch).logits, none(swapped).logits)
    too_many = make_batch((4, 3), "ta")[0]
    too_many.speakers[0, 0] = 5
    with pytest.raises(DataError, match="speaker"):
        glob(too_many)


def test_single_node_training_batch() -> None:
    # One one-utterance dialogue, one modality: one graph node in a BatchNorm in training.
    batch, _ = make_batch((1,), "a")
    model = _corect("a").train()
    out = model(batch)
    out.logits.sum().backward()
    assert torch.isfinite(out.logits).all()


def test_precision_of_each_part_under_bf16_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    # bf16-mixed on CPU: text Transformer and Graph Transformer in bfloat16, the ragged
    # rest (RGCN, P-CM, classifier) in float32 (merc.models.layers.precision).
    batch, _ = make_batch((5, 2, 7), "tav")
    model = _corect("tav", transformer_heads=2).train()
    seen: dict[str, torch.dtype] = {}

    def record(name: str):
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            seen[name] = out.dtype

        return hook

    assert model.rtgcn is not None and model.pcm is not None
    model.encoders["t"].register_forward_hook(record("text encoder"))
    model.rtgcn.register_forward_hook(record("rtgcn"))
    model.pcm.register_forward_hook(record("pcm"))
    model.classifier.register_forward_hook(record("classifier"))

    # RGCN and Graph Transformer run as functions of their PyG modules' weights.
    def recording(name: str, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def recorded(*args: object, **kwargs: object) -> torch.Tensor:
            out = fn(*args, **kwargs)
            seen[name] = out.dtype
            return out

        return recorded

    for name, attr in (("rgcn", "relational_mean_conv"), ("graph transformer", "block_transformer_conv")):
        monkeypatch.setattr(corect_module, attr, recording(name, getattr(corect_module, attr)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    out.logits.float().sum().backward()
    assert seen == {
        "text encoder": torch.bfloat16,
        "rgcn": torch.float32,
        "graph transformer": torch.bfloat16,
        "rtgcn": torch.float32,
        "pcm": torch.float32,
        "classifier": torch.float32,
    }
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="window owner"):
        _corect(window_owner="both")
    with pytest.raises(ConfigError, match="speaker ids"):
        _corect(speaker_ids="names")
    with pytest.raises(ConfigError, match="divisible"):
        _corect(pcm_heads=3)
    with pytest.raises(ConfigError, match="has no argument"):
        _corect(num_heads=3)


@pytest.mark.parametrize("recipe", ["default", "iemocap6", "iemocap4-cogmen", "meld7"])
def test_recipes_build(recipe: str) -> None:
    data = load_recipe("corect", recipe)  # the dataset's file over default.yaml
    TrainConfig.from_dict(data["training"])
    model = _corect(**data["model"])
    assert model.past_window == (5 if recipe == "meld7" else 11)
    assert data["training"]["lr"] == 0.0003 and data["training"]["batch_size"] == 10


@pytest.mark.parametrize("modalities", ["t", "tav"])
def test_block_graph_attention_matches_pyg(modalities: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The Graph Transformer runs as dense per-dialogue attention; PyG's TransformerConv
    # on the same graph and weights gives the same outputs and gradients.
    import merc.models.corect as corect_module

    batch, _ = make_batch((1, 7, 3), modalities)

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = _corect(modalities, seed=1).eval()
        out = model(batch).logits
        out.pow(2).sum().backward()
        return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    block_out, block_grads = run()
    monkeypatch.setattr(corect_module, "supports_block_attention", lambda conv: False)
    pyg_out, pyg_grads = run()
    torch.testing.assert_close(block_out, pyg_out, rtol=1e-5, atol=1e-5)
    assert block_grads.keys() == pyg_grads.keys()
    for name, grad in pyg_grads.items():
        torch.testing.assert_close(block_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_text_encoder_keeps_pytorch_layout_and_function() -> None:
    # Same state-dict keys as nn.TransformerEncoder; packed forward = PyTorch's padded one.
    model = _corect("t", seed=2).eval()
    enc = model.encoders["t"]
    assert "encoder.layers.1.self_attn.in_proj_weight" in enc.state_dict()
    batch, _ = make_batch((1, 7, 3), "t")
    x = batch.features["t"]
    with torch.no_grad():
        padded = enc.out(enc.encoder(x, src_key_padding_mask=~batch.mask))
        packed = enc(x, batch)
    torch.testing.assert_close(packed, batch.flatten(padded), rtol=1e-5, atol=1e-5)
