"""Sinusoidal position encodings (Vaswani et al., NeurIPS 2017), shared by the models that add them.

BiDDIN (its memory positions), CMATH (eq. 6-7) and CSS (its utterance positions) all use
the Transformer's encoding ``P[i, 2k] = sin(i / 10000^(2k/d))``,
``P[i, 2k+1] = cos(i / 10000^(2k/d))``, interleaved.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sinusoidal_positions(positions: Tensor, size: int) -> Tensor:
    """The encodings of integer positions, sin on even and cos on odd features.

    Shapes:
        - positions ``long [N]`` -> ``float32 [N, size]``

    >>> sinusoidal_positions(torch.tensor([0, 1]), 4)
    tensor([[0.0000, 1.0000, 0.0000, 1.0000],
            [0.8415, 0.5403, 0.0100, 0.9999]])
    >>> sinusoidal_positions(torch.tensor([2]), 3).shape  # odd sizes drop the last cos
    torch.Size([1, 3])
    """
    pairs = torch.arange(0, size, 2, dtype=torch.float32, device=positions.device)
    frequencies = torch.exp(pairs * (-math.log(10000.0) / size))  # 10000^(-2k/d)
    angle = positions.to(torch.float32)[:, None] * frequencies[None, :]
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)[:, :size]


__all__ = ["sinusoidal_positions"]
