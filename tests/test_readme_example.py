"""The README's "Adding a model" example is real code: it registers, builds, trains a step and meets the contract."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from helpers import make_batch
from merc.models import build_model, list_models
from merc.models import registry as model_registry

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Adding a model") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_adding_a_model_example_works() -> None:
    code = _example()
    assert len(code.splitlines()) < 45  # short enough to read
    try:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_meanpool"})
        assert "meanpool" in list_models()
        model = build_model("meanpool", in_dims={"t": 12, "a": 6, "v": 8}, num_classes=3, num_speakers=2, num_parties=2)
        batch, _ = make_batch((1, 7, 3), "tav")
        out = model.train()(batch)
        assert out.logits.shape == (11, 3) and set(out.unimodal_logits) == {"t", "a", "v"}
        loss = torch.nn.functional.cross_entropy(out.logits, batch.flat_labels) + sum(out.aux_losses.values())
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        assert set(model.modality_parameters()) == {"t", "a", "v"}
    finally:
        model_registry._MODELS.pop("meanpool", None)
