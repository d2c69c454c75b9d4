"""Test helpers: tiny hand-built datasets and batches (no files, no downloads)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from merc.data.batching import collate, to_tensors
from merc.data.schema import Conversation, MercDataset
from merc.training.plugins.base import TrainerPlugin

# Small models on 2 cores: one intra-op thread avoids OpenMP oversubscription.
torch.set_num_threads(1)
os.environ.setdefault("MERC_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache", "merc"))

DIMS = {"t": 12, "a": 6, "v": 8}


def make_dataset(
    lengths: Sequence[int] = (1, 7, 3, 5),
    modalities: str = "tav",
    num_classes: int = 3,
    seed: int = 0,
    separable: bool = False,
) -> MercDataset:
    """Random dialogues (same ones in train/valid/test); ``separable`` makes labels learnable."""
    rng = np.random.default_rng(seed)
    protos = {m: rng.normal(size=(num_classes, d)) * 2 for m, d in DIMS.items()}
    convs = []
    for i, n in enumerate(lengths):
        labels = rng.integers(0, num_classes, n)
        feats = {}
        for m in modalities:
            noise = rng.normal(size=(n, DIMS[m]))
            feats[m] = (protos[m][labels] + 0.3 * noise if separable else noise).astype(np.float32)
        speakers = [f"s{(j + i) % 2}" for j in range(n)]
        convs.append(Conversation(id=f"d{i}", speakers=speakers, labels=labels, features=feats))
    splits = {s: [c.replace(split=s, id=f"{s}-{c.id}") for c in convs] for s in ("train", "valid", "test")}
    return MercDataset(
        name="tiny",
        label_names=[f"c{k}" for k in range(num_classes)],
        splits=splits,
        modalities=tuple(m for m in "tav" if m in modalities),
    )


def make_batch(lengths: Sequence[int] = (1, 7, 3), modalities: str = "tav", seed: int = 0):
    ds = make_dataset(lengths, modalities, seed=seed)
    return collate(to_tensors(ds)["train"], ds.modalities), ds


def assert_same_training(resumed, straight) -> None:
    """Two trainers went through the same epochs (history without timings) to the same weights."""

    def strip(history):
        return [{k: v for k, v in e.items() if k != "seconds"} for e in history]

    assert strip(resumed.history) == strip(straight.history)
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v)


def assert_same_function(module, reference, candidate, x, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    """``candidate(x)`` equals ``reference(x)`` in value, input gradient and ``module``'s parameter gradients.

    Both are functions of ``module``'s parameters (e.g. a PyG layer and merc's re-evaluation
    of it); the output is weighted by fixed random weights before the backward pass.
    """
    weights = None

    def run(fn):
        nonlocal weights
        module.zero_grad()
        inp = x.clone().requires_grad_()
        out = fn(inp)
        if weights is None:
            weights = torch.randn(out.shape)
        (out * weights).sum().backward()
        assert inp.grad is not None
        return out.detach(), inp.grad, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    ref = run(reference)
    got = run(candidate)
    torch.testing.assert_close(got[0], ref[0], rtol=rtol, atol=atol)
    torch.testing.assert_close(got[1], ref[1], rtol=10 * rtol, atol=atol)
    assert got[2].keys() == ref[2].keys()
    for name in ref[2]:
        torch.testing.assert_close(got[2][name], ref[2][name], rtol=10 * rtol, atol=atol, msg=name)


class KillAt(TrainerPlugin):
    """Interrupts training at the start of one epoch (as Ctrl-C or a kill would)."""

    name = "kill"

    def __init__(self, epoch: int) -> None:
        self.kill_epoch = epoch

    def on_epoch_start(self, trainer, epoch: int) -> None:
        if epoch == self.kill_epoch:
            raise KeyboardInterrupt
