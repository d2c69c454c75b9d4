"""``training.precision``: float32 by default, opt-in bfloat16 autocast (``bf16-mixed``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import assert_same_training, make_dataset
from merc.config import apply_overrides
from merc.data.batching import to_tensors
from merc.errors import ConfigError
from merc.models import build_model
from merc.training.trainer import TrainConfig, Trainer


def _trainer(precision: str = "32", run_dir=None, epochs: int = 3, plugins=()) -> Trainer:
    # CORECT with a text Transformer: autocast reaches its bucketed products and
    # attention, and its float32 islands (RGCN, classifier; merc.models.layers.precision).
    ds = make_dataset((5, 7, 3, 6, 4, 8), "t", seed=4, separable=True)
    torch.manual_seed(0)
    model = build_model(
        "corect",
        in_dims=ds.dims,
        num_classes=ds.num_classes,
        hidden_size=8,
        gnn_heads=2,
        transformer_heads=2,
        transformer_ffn_size=16,
    )
    cfg = TrainConfig(epochs=epochs, batch_size=2, lr=0.01, patience=0, show_progress=False, precision=precision)
    return Trainer(model, to_tensors(ds), ds.modalities, ds.num_classes, cfg, plugins=list(plugins), run_dir=run_dir)


def test_default_is_float32_without_autocast() -> None:
    assert TrainConfig().precision == "32"
    with _trainer().autocast():
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("value", ["16", "bf16", "fp8-mixed", ""])
def test_unknown_precision_lists_the_choices(value: str) -> None:
    with pytest.raises(ConfigError, match=r"training\.precision.*32, bf16-mixed"):
        TrainConfig(precision=value)
    with pytest.raises(ConfigError, match="bf16-mixed"):
        TrainConfig.from_dict({"precision": value})


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.precision=bf16-mixed", "bf16-mixed"),
        ("training.precision=BF16_mixed", "bf16-mixed"),
        ("training.precision=32", "32"),  # YAML reads an int; from_dict makes it the string
    ],
)
def test_precision_from_a_recipe_override(override: str, expected: str) -> None:
    recipe = apply_overrides({"training": {"lr": 0.01}}, [override])
    assert TrainConfig.from_dict(recipe["training"]).precision == expected


def test_bf16_mixed_trains_with_float32_state_and_logits() -> None:
    tr = _trainer("bf16-mixed")
    with tr.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    losses = [tr.train_epoch() for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    # Parameters, gradients and optimiser state stay float32.
    for p in tr.model.parameters():
        assert p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
    for state in tr.optimizer.state.values():
        assert all(v.dtype == torch.float32 for k, v in state.items() if k != "step")


def test_bf16_mixed_logits_are_float32_close_to_but_not_float32_ones() -> None:
    fp32, bf16 = _trainer("32"), _trainer("bf16-mixed")
    bf16.model.load_state_dict(fp32.model.state_dict())
    _, labels32, logits32 = fp32.predict(fp32.valid_items)
    _, labels16, logits16 = bf16.predict(bf16.valid_items)
    assert logits16.dtype == np.float32 and logits32.dtype == np.float32
    np.testing.assert_array_equal(labels16, labels32)
    assert not np.array_equal(logits16, logits32)  # bf16 products really ran
    np.testing.assert_allclose(logits16, logits32, rtol=0.05, atol=0.05)
    assert np.isfinite(bf16.evaluate(bf16.valid_items)["loss"])


def test_bf16_mixed_fit_resumes_from_its_checkpoint(tmp_path) -> None:
    straight = _trainer("bf16-mixed", tmp_path / "a", epochs=4)
    straight.fit()
    first = _trainer("bf16-mixed", tmp_path / "b", epochs=2)
    first.fit()
    resumed = _trainer("bf16-mixed", tmp_path / "b", epochs=4)  # a fresh process, same folder
    resumed.fit()
    assert resumed.epoch == 4
    assert_same_training(resumed, straight)
