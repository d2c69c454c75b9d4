r"""Modality-balance plug-ins: RNA loss, OGM-GE, OPM, FAGM and Ada2I's gradient modulation.

The methods SPCL compares against (Tables 2-5, Section 4.2: "while originally developed
for bimodal settings, these methods are extended to trimodal models"), plus Ada2I's
training strategy. Each is a recipe section and a member of the ``--balance`` switch
(``merc train ... --balance ogm-ge`` sets ``ogm-ge.enabled=true``); a section that is
present without ``enabled`` is on (an empty one, ``rna: {}``, is no section to the
registry: write ``rna: {enabled: true}``). All of them need per-modality parts
(``needs_per_modality``): the trainer refuses early-fusion models and models built with
``unimodal_heads=False`` with a clear error.

============  ====================  =========================================================
section       hook                  what it changes
============  ====================  =========================================================
``rna``       ``loss_terms``        adds :math:`\lambda\,\mathcal{L}_{RNA}` on the codes' norms
``ogm-ge``    ``after_backward``    scales each dominant modality's gradients, adds noise
``opm``       ``before_fuse``       zeroes the dominant modality's codes at random
``fagm``      ``after_backward``    scales gradients per modality and per shared weight column
``ada2i-gm``  ``after_backward``    scales every modality above the weakest one, adds noise
============  ====================  =========================================================

Notation: a batch has :math:`N` real utterances with labels :math:`y_j`; modality
:math:`m` has codes :math:`f^m_j` (``ModelOutput.unimodal_features``), unimodal logits
:math:`z^m_j` (``ModelOutput.unimodal_logits``) and parameters :math:`\theta^m`
(``model.modality_parameters()[m]``: its encoder and unimodal head). The score of a
modality is the summed true-class probability over the labelled utterances
(:func:`merc.evaluation.imbalance.true_class_scores`; OGM-GE eq. 9, Ada2I eq. 16):

.. math::
    s^m = \sum_{j:\,y_j\ \text{labelled}} \mathrm{softmax}(z^m_j)_{y_j}

RNA loss (Planamente et al., WACV 2022)
---------------------------------------
Planamente, Plizzari, Alberti, Caputo. "Domain Generalization through Audio-Visual
Relative Norm Alignment in First Person Action Recognition." WACV 2022. With
:math:`h(f) = \lVert f\rVert_2` and :math:`\mu^m = \mathbb{E}_j[h(f^m_j)]`, the mean code
norm of the batch, the paper's two-modality loss is
:math:`\mathcal{L}_{RNA} = (\mu^v / \mu^a - 1)^2`, added as
:math:`\mathcal{L} = \mathcal{L}_{cls} + \lambda\,\mathcal{L}_{RNA}` (:math:`\lambda = 1`).
merc's extension to :math:`M` modalities (``extension``):

- ``"pairs"`` (default): the mean over the :math:`M(M-1)/2` pairs :math:`i < j` in the
  model's modality order (t, a, v) of :math:`(\mu^i/\mu^j - 1)^2`. For two modalities it
  is the paper's loss (the first modality of the model in the numerator).
- ``"mean"``: every modality against the mean norm,
  :math:`\frac1M\sum_m (\mu^m/\bar\mu - 1)^2` with :math:`\bar\mu = \frac1M\sum_k\mu^k`.

The norms average over the utterances where the modality is available and its code is
not exactly zero (missing, or hidden from a ``models_missing`` model), so missing
entries do not pull a modality's norm down. Unlabelled utterances count: the loss needs
no labels.

OGM-GE (Peng et al., CVPR 2022)
-------------------------------
Peng, Wei, Deng, Wang, Hu. "Balanced Multimodal Learning via On-the-fly Gradient
Modulation." CVPR 2022 (code: GeWu-Lab/OGM-GE_CVPR2022). Per batch, the discrepancy ratio
of modality :math:`u` (eq. 9) and the coefficient (eq. 10) are

.. math::
    \rho^u = \frac{1}{M-1}\sum_{k\ne u}\frac{s^u}{s^k},\qquad
    k^u = \begin{cases} 1 - \tanh(\alpha\,\rho^u) & \rho^u > 1\\ 1 & \text{otherwise}\end{cases}

and the update (eq. 11, generalisation enhancement) is
:math:`\theta^u \leftarrow \theta^u - \eta\,(k^u\,\nabla_{\theta^u}\mathcal{L} + h)`,
:math:`h \sim \mathcal{N}(0, \sigma^2)`, :math:`\sigma` the standard deviation of that
parameter's gradient (the authors' code: ``grad.std() + 1e-8``, taken before the
coefficient, added to every modality's parameters, also those with :math:`k = 1`).
For two modalities :math:`\rho^u = s^u/s^k` is the paper's; for three, the average of
the one-to-others ratios is the extension the OGM-GE authors suggest (GeWu-Lab/OGM-GE_CVPR2022
issue 16: compute the pairwise one-to-others ratios and average them).
Note the coefficient is :math:`1 - \tanh(\alpha\rho)`, not :math:`1 - \tanh(\alpha(\rho-1))`:
eq. 10 and both authors' codes, so it jumps from 1 to :math:`1-\tanh(\alpha)` as
:math:`\rho` crosses 1. Defaults as the authors' README: :math:`\alpha = 0.1`, modulation
in epochs 0-50 (``start_epoch``/``end_epoch``, inclusive, 0-based), noise on
(``noise: false`` is the paper's OGM ablation). The noise draws come from the plug-in's
own generator on the training device, seeded from ``training.seed`` and saved in the
checkpoint, so runs are seeded and resume exactly.

OPM (Wei, Hu, Du, Wen, TPAMI 2024)
----------------------------------
Wei, Hu, Du, Wen. "On-the-fly Modulation for Balanced Multimodal Learning." IEEE TPAMI
2024 (code: GeWu-Lab/BML_TPAMI2024). On-the-fly *prediction* modulation drops the
dominant modality's features in the forward pass. With the one-to-others ratio
:math:`\rho^u` above, the drop probability is (the authors' ``calcu_q``)

.. math::
    q^u = \begin{cases}\min\bigl(1,\ q_{base}\,(1 + \lambda\tanh(\rho^u - 1))\bigr) & \rho^u > 1\\
    0 & \text{otherwise}\end{cases}

With probability ``p_exe`` a batch is modulated: every utterance keeps modality
:math:`u`'s code with probability :math:`1-q^u` (independently), and the kept codes are
scaled by :math:`1/(1-\theta)`, :math:`\theta = \sum_u d_u q^u / \sum_u d_u` (:math:`d_u`
the code widths; the authors' ``Modality_drop``). The weakest modality has
:math:`\rho \le 1`, so it is never dropped and no utterance loses every modality (the
authors then remove such samples; here none arise). Defaults as the authors' script:
:math:`q_{base} = 0.5`, :math:`\lambda = 0.5`, ``p_exe = 0.7``, no dropping in epochs
0-5 (``start_epoch = 6``: the code's warm-up). Dropping acts in training only.

Scores come from the *current* batch, as in the authors' code, when the model's unimodal
logits are the base class's heads on the codes (``score_batch: auto`` or ``current``):
the hook applies those heads to the codes it receives. For models whose unimodal logits
come out of ``fuse`` (late fusion: DialogueGCN, MMGCN), the hook cannot see them before
fusion, so the scores are those of the *previous* training batch (``score_batch:
previous``; computed in ``on_batch_end`` over the utterances where each modality was
kept, averaged per utterance, and saved in the checkpoint); the first batch of a run is
not modulated.

FAGM (Wang et al., ACM MM 2023)
-------------------------------
Wang, Liu, Li, Hu, Luo, Nie. "Unlocking the Power of Multimodal Learning for Emotion
Recognition in Conversation." ACM MM 2023 (code: iLearn-Lab/MM23-FAGM): fine-grained
adaptive gradient modulation, against the "diminishing modal marginal utility" of adding
modalities. Every ``tau`` steps (counted from each epoch's start), on the current batch
and with the model in evaluation mode, the contribution of modality :math:`m` is the
increase of the loss when its codes are zeroed before fusion,
:math:`c^m = \mathcal{L}(\text{without } m) - \mathcal{L}(\text{all})`, and its dominance

.. math::
    r = \mathrm{softmax}(\kappa\,c),\qquad \iota^m = (r^m - \min_k r^k)^{\gamma}

(:math:`\kappa` = ``score_scale``, 0.1 in the authors' code). Modality-specific
parameters are scaled, :math:`\nabla_{\theta^m} \leftarrow (1-\iota^m)\nabla_{\theta^m}`
(the least contributing modality keeps its gradient). Shared (fusion) parameters are
modulated at the *parameter* level: for each shared linear map with input
:math:`x\in\mathbb{R}^{d}` (``nn.Linear`` and similar ``weight [out, d]``, a recurrent
layer's first ``weight_ih``), :math:`\delta^m_i = \mathbb{E}\,|x_i - x_i^{\setminus m}|`
measures how much input unit :math:`i` depends on modality :math:`m`,
:math:`\Delta^m_i = \delta^m_i - \max_{k\ne m}\delta^k_i`, and the
:math:`\lfloor\beta\,|\{i: \Delta^m_i>0\}|\rfloor` units with the largest positive
:math:`\Delta^m_i` are penalised: column :math:`i` of the weight's gradient is scaled by
:math:`1 - \sum_m \iota^m\,[\text{$i$ penalised for } m]`. Choices where the text or
code left room: the loss is the trainer's classification loss (class weights included);
the reference :math:`\mathcal{L}(\text{all})` is recomputed in evaluation mode like the
ablated ones (the authors' code compares a training-mode loss, with dropout, to
evaluation-mode ones); codes are zeroed at the ``before_fuse`` point (the authors zero
a modality's inputs or encoder outputs, model by model); the authors' threshold test
(``>`` the k-th value) penalises one unit fewer than the :math:`\beta` share, merc
penalises exactly :math:`\lfloor\beta n^+\rfloor`; inputs of a module called several
times in one forward are stacked. Defaults: the authors' ``argparse`` values
:math:`\gamma = 1`, :math:`\beta = 1`, ``tau = 1``; their scripts tune per backbone
(e.g. DialogueGCN-IEMOCAP :math:`\gamma=0.05, \beta=0`; MM-DFN-IEMOCAP
:math:`\gamma=10^{-4}, \beta=0.08`). For three modalities the authors' code already
computes all three contributions; nothing else needs extending. Each estimate costs
:math:`M+1` extra forward passes without gradients.

Ada2I gradient modulation (Nguyen et al., ACM MM 2024)
------------------------------------------------------
Nguyen, Le, Mai, Le. "Ada2I: Enhancing Modality Balance for Multimodal Conversational
Emotion Recognition." ACM MM 2024, Section 3.5, eq. 15-19 (code: leson502/ADA2I). The
refined disparity ratio compares each modality with the weakest (eq. 17) and modulates
*every* modality above it (eq. 18), with Gaussian noise (eq. 19):

.. math::
    \rho^m = \frac{s^m}{\min_k s^k},\qquad
    k^m = \begin{cases} 1 - \tanh(\alpha\,\rho^m) & \rho^m > 1\\ 1 & \text{otherwise}\end{cases},\qquad
    \theta^m \leftarrow \theta^m - \eta\,\hat g(\theta^m)\,k^m + \eta\,h(\theta^m)

(:func:`merc.evaluation.imbalance.modality_ratios`). Eq. 16 scores cosine logits of
Ada2I's own heads; here :math:`s^m` comes from whatever ``unimodal_logits`` the model
returns (an Ada2I model should return its cosine logits there). The coefficient is the paper's and the
code's :math:`1-\tanh(\alpha\rho)`. :math:`h` follows the authors' code: added to the
gradient, with the standard deviation of the gradient *after* the coefficient
(``+ 1e-8``). :math:`\alpha` = 0.037 (IEMOCAP; Table 2 lists it as :math:`\eta`, the code's
``--alpha``); MELD uses 0.4 (Table 2; the authors' ``run.sh``: 0.42). The authors'
``run.sh`` modulates from their (1-based) epoch 4, i.e. ``start_epoch: 3``; the paper
does not mention it, so the default is 0.

Common to the gradient plug-ins: they act in ``after_backward``, before the trainer's
gradient clipping (Ada2I's code clips first). With Adam the noise enters the moment
estimates, as in both authors' codes, rather than the parameters as eq. 11/19 write.
A batch without labelled utterances is left alone.

Recipe sections (defaults shown)::

    rna:      {lambda: 1.0, extension: pairs}
    ogm-ge:   {alpha: 0.1, noise: true, start_epoch: 0, end_epoch: 50}
    opm:      {q_base: 0.5, lambda: 0.5, p_exe: 0.7, start_epoch: 6, end_epoch: null, score_batch: auto}
    fagm:     {gamma: 1.0, beta: 1.0, tau: 1, score_scale: 0.1}
    ada2i-gm: {alpha: 0.037, noise: true, start_epoch: 0, end_epoch: null}

Every section also takes ``enabled`` (default true). ``end_epoch: null`` never ends.
Each plug-in's epoch metrics (``history.json``, ``plugins.<section>``) are means over the
epoch's batches, per modality where it applies: ``rna``: ``mean_norm``, ``loss``;
``ogm-ge`` and ``ada2i-gm``: ``ratio``, ``coefficient`` (the applied :math:`k`, 1 outside
the epoch window); ``opm``: ``drop_probability``, ``dropped_share``, ``executed_share``,
``score_batch``; ``fagm``: ``contribution``, ``dominance``, ``coefficient``
(:math:`1-\iota`), ``penalised_share`` (of the shared weights' input columns).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from merc.errors import ConfigError
from merc.training.plugins.base import TrainerPlugin
from merc.training.plugins.registry import register_plugin

# ``merc --help`` imports this module (the registry builds the ``--balance`` switch from
# it) and must stay free of torch: torch, the trainer and the models are imported inside
# the functions that use them.
if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from merc.data.batching import Batch
    from merc.data.schema import MercDataset
    from merc.models.base import MercModel
    from merc.models.output import ModelOutput
    from merc.training.trainer import Trainer

log = logging.getLogger(__name__)

#: The shared ``--balance`` switch of these plug-ins.
GROUP = "balance"
#: Floor of a score in a denominator (as :func:`merc.evaluation.imbalance.modality_ratios`).
_EPS = 1e-12
#: Added to a gradient's standard deviation before drawing noise (both authors' codes).
_NOISE_FLOOR = 1e-8
RNA_EXTENSIONS = ("pairs", "mean")
OPM_SCORE_BATCHES = ("auto", "current", "previous")


# -- shared arithmetic -----------------------------------------------------------------
def discrepancy_ratios(scores: Mapping[str, Any], against: str = "others") -> dict[str, float]:
    r"""Each modality's score relative to the others.

    Args:
        scores: :math:`s^m` per modality (floats or scalar tensors).
        against: ``"others"``: :math:`\frac{1}{M-1}\sum_{k\ne m} s^m/s^k` (OGM-GE eq. 9,
            averaged over the other modalities for :math:`M > 2`; OPM); ``"weakest"``:
            :math:`s^m/\min_k s^k` (Ada2I eq. 17, :func:`~merc.evaluation.imbalance.modality_ratios`).

    Returns:
        ``{m: ratio}``; all 1 for a single modality.

    >>> discrepancy_ratios({"t": 3.0, "a": 1.5, "v": 1.0})
    {'t': 2.5, 'a': 1.0, 'v': 0.5}
    >>> discrepancy_ratios({"t": 3.0, "a": 1.5, "v": 1.0}, against="weakest")
    {'t': 3.0, 'a': 1.5, 'v': 1.0}
    """
    values = {m: float(s) for m, s in scores.items()}
    if against == "weakest":
        from merc.evaluation.imbalance import modality_ratios

        return modality_ratios(values, eps=_EPS)
    if against != "others":
        raise ValueError(f"against must be 'others' or 'weakest', got {against!r}")
    if len(values) < 2:
        return dict.fromkeys(values, 1.0)
    return {m: sum(v / max(values[k], _EPS) for k in values if k != m) / (len(values) - 1) for m, v in values.items()}


#: Forms of the modulation coefficient (:func:`modulation_coefficients`).
COEFFICIENT_FORMS = ("paper", "shifted")


def modulation_coefficients(ratios: Mapping[str, float], alpha: float, form: str = "paper") -> dict[str, float]:
    r""":math:`k^m = 1 - \tanh(\alpha\rho^m)` where :math:`\rho^m > 1`, else 1 (OGM-GE eq. 10, Ada2I eq. 18).

    ``form="shifted"``: :math:`k^m = 1 - \tanh(\alpha(\rho^m - 1))` instead, which is
    continuous at :math:`\rho = 1` (a barely dominant modality is barely slowed; the
    papers' form drops to :math:`1 - \tanh(\alpha)` there). Not the papers' or their
    codes' form; offered because it is the form some re-implementations use.

    >>> {m: round(k, 4) for m, k in modulation_coefficients({"t": 2.0, "a": 1.0}, alpha=0.5).items()}
    {'t': 0.2384, 'a': 1.0}
    >>> round(modulation_coefficients({"t": 2.0}, alpha=0.5, form="shifted")["t"], 4)
    0.5379
    """
    if form not in COEFFICIENT_FORMS:
        raise ValueError(f"form must be one of {', '.join(COEFFICIENT_FORMS)}, got {form!r}")
    shift = 1.0 if form == "shifted" else 0.0
    return {m: 1.0 - math.tanh(alpha * (r - shift)) if r > 1 else 1.0 for m, r in ratios.items()}


def drop_probabilities(ratios: Mapping[str, float], q_base: float, lam: float) -> dict[str, float]:
    r"""OPM's :math:`q^m = \min(1, q_{base}(1 + \lambda\tanh(\rho^m - 1)))` where :math:`\rho^m > 1`, else 0.

    >>> {m: round(q, 4) for m, q in drop_probabilities({"t": 2.0, "a": 0.5}, 0.5, 0.5).items()}
    {'t': 0.6904, 'a': 0.0}
    """
    return {
        m: min(1.0, max(0.0, q_base * (1.0 + lam * math.tanh(r - 1.0)))) if r > 1 else 0.0 for m, r in ratios.items()
    }


def relative_norm_alignment(mean_norms: Tensor, extension: str = "pairs") -> Tensor:
    r"""RNA loss of mean code norms :math:`\mu` ``[M]`` (see the module docstring for ``extension``).

    Returns:
        A scalar: ``"pairs"``: mean over :math:`i<j` of :math:`(\mu^i/\mu^j-1)^2`; ``"mean"``:
        mean over :math:`m` of :math:`(\mu^m/\bar\mu-1)^2`; 0 for fewer than two modalities.

    >>> import torch
    >>> round(float(relative_norm_alignment(torch.tensor([2.0, 1.0]))), 4)  # (2/1 - 1)^2
    1.0
    >>> round(float(relative_norm_alignment(torch.tensor([2.0, 1.0, 4.0]))), 4)  # (1 + 1/4 + 9/16) / 3
    0.6042
    """
    import torch

    if extension not in RNA_EXTENSIONS:
        raise ValueError(f"extension must be one of {', '.join(RNA_EXTENSIONS)}, got {extension!r}")
    mu = mean_norms.reshape(-1)
    count = mu.numel()
    if count < 2:
        return mu.sum() * 0.0
    if extension == "mean":
        return ((mu / mu.mean().clamp_min(_EPS) - 1.0) ** 2).mean()
    i, j = torch.triu_indices(count, count, offset=1, device=mu.device)
    return ((mu[i] / mu[j].clamp_min(_EPS) - 1.0) ** 2).mean()


def _labelled_count(labels: Tensor) -> int:
    from merc.data.batching import IGNORE_INDEX

    return int((labels != IGNORE_INDEX).sum())


def _batch_scores(unimodal_logits: Mapping[str, Tensor], labels: Tensor, reduce: str = "sum") -> dict[str, float]:
    from merc.evaluation.imbalance import true_class_scores

    detached = {m: z.detach() for m, z in unimodal_logits.items()}
    return {m: float(s) for m, s in true_class_scores(detached, labels, reduce=reduce).items()}


def _gradient_std(grad: Tensor) -> Tensor:
    # The std of a one-element tensor is undefined (NaN): such a gradient gets the floor only.
    spread = grad.std() if grad.numel() > 1 else grad.new_zeros(())
    return spread + _NOISE_FLOOR


def modulate_gradients(
    params: Sequence[nn.Parameter], coefficient: float, noise: str | None = None, generator: Any = None
) -> None:
    r"""Scale the gradients of ``params`` in place by ``coefficient``, optionally adding noise.

    Args:
        params: Parameters (those without a gradient are skipped).
        coefficient: :math:`k`.
        noise: ``None``; ``"raw"``: add :math:`\mathcal{N}(0, \sigma^2)`, :math:`\sigma` the
            gradient's std before scaling (OGM-GE); ``"scaled"``: after scaling (Ada2I).
        generator: ``torch.Generator`` on the parameters' device for the noise.
    """
    import torch

    for p in params:
        grad = p.grad
        if grad is None:
            continue
        std = _gradient_std(grad) if noise == "raw" else None
        grad.mul_(coefficient)
        if noise == "scaled":
            std = _gradient_std(grad)
        if std is not None:
            grad.add_(torch.randn(grad.shape, generator=generator, device=grad.device, dtype=grad.dtype) * std)


# -- plug-in plumbing ------------------------------------------------------------------
class _PluginRandom:
    """A plug-in's own random stream on the training device: seeded from ``training.seed``, resumable.

    Its state goes into the checkpoint (base64 text: plug-in states are JSON), so a resumed
    run draws what the uninterrupted one would have.
    """

    def __init__(self, salt: str) -> None:
        self.salt = salt
        self._generator: torch.Generator | None = None
        self._pending: str | None = None

    def generator(self, trainer: Trainer) -> torch.Generator:
        import torch

        if self._generator is None:
            gen = torch.Generator(device=trainer.device)
            gen.manual_seed((int(trainer.config.seed) + zlib.crc32(self.salt.encode())) % 2**63)
            if self._pending is not None:
                state = torch.frombuffer(bytearray(base64.b64decode(self._pending)), dtype=torch.uint8)
                try:
                    gen.set_state(state)
                except RuntimeError:
                    log.warning("%s: the saved random state is of another device type; drawing afresh", self.salt)
            self._generator, self._pending = gen, None
        return self._generator

    def state(self) -> str | None:
        if self._generator is not None:
            return base64.b64encode(self._generator.get_state().numpy().tobytes()).decode("ascii")
        return self._pending

    def load(self, state: str | None) -> None:
        self._generator, self._pending = None, state


class _EpochMeans:
    """Running means of per-modality numbers over an epoch, for :meth:`TrainerPlugin.epoch_metrics`."""

    def __init__(self) -> None:
        self._sums: dict[tuple[str, str | None], float] = {}
        self._counts: dict[tuple[str, str | None], int] = {}

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()

    def add(self, group: str, values: Mapping[str, float] | float) -> None:
        items: list[tuple[str | None, float]] = (
            list(values.items()) if isinstance(values, Mapping) else [(None, float(values))]
        )
        for key, value in items:
            slot = (group, key)
            self._sums[slot] = self._sums.get(slot, 0.0) + float(value)
            self._counts[slot] = self._counts.get(slot, 0) + 1

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (group, key), total in self._sums.items():
            mean = total / self._counts[(group, key)]
            if key is None:
                out[group] = mean
            else:
                out.setdefault(group, {})[key] = mean
        return out


class _EpochWindow:
    """Epochs ``start_epoch..end_epoch`` (inclusive, 0-based; ``end_epoch=None``: no end)."""

    start_epoch: int
    end_epoch: int | None

    def active(self, epoch: int) -> bool:
        return epoch >= self.start_epoch and (self.end_epoch is None or epoch <= self.end_epoch)


# -- RNA -------------------------------------------------------------------------------
class RelativeNormAlignment(TrainerPlugin):
    r"""RNA loss (Planamente et al., WACV 2022) over the modality codes, extended to M modalities.

    Adds the loss term ``"rna"`` :math:`= \lambda\,\mathcal{L}_{RNA}` (module docstring).

    Args:
        weight: :math:`\lambda` (paper: 1).
        extension: ``"pairs"`` (default; the paper's loss for two modalities) or ``"mean"``.

    Shapes:
        - ``output.unimodal_features[m]``: ``[N, h_m]``
        - loss: scalar
    """

    name = "rna"
    needs_per_modality = True

    def __init__(self, weight: float = 1.0, extension: str = "pairs") -> None:
        if extension not in RNA_EXTENSIONS:
            raise ConfigError(f"rna.extension={extension!r}: choose one of {', '.join(RNA_EXTENSIONS)}")
        self.weight = float(weight)
        self.extension = extension
        self._means = _EpochMeans()

    def mean_norms(self, model: MercModel, batch: Batch, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """:math:`\\mu^m` per modality with at least one counted utterance (see the module docstring)."""
        import torch

        names = [m for m in model.modalities if m in features]
        if not names:
            return {}
        norms = torch.stack([features[m].float().norm(dim=-1) for m in names], dim=1)  # [N, M]
        cols = [model.modalities.index(m) for m in names]
        counted = (model.flat_availability(batch)[:, cols] & (norms > 0)).to(norms.dtype)
        totals, counts = (norms * counted).sum(0), counted.sum(0)
        return {m: totals[k] / counts[k] for k, m in enumerate(names) if float(counts[k]) > 0}

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._means.reset()

    def loss_terms(self, trainer: Trainer, batch: Batch, output: ModelOutput) -> dict[str, Tensor]:
        import torch

        mu = self.mean_norms(trainer.model, batch, output.unimodal_features)
        if len(mu) < 2:
            zero = next(iter(output.unimodal_features.values()), output.logits).sum() * 0.0
            return {"rna": zero.float()}
        loss = relative_norm_alignment(torch.stack(list(mu.values())), self.extension)
        self._means.add("mean_norm", {m: float(v.detach()) for m, v in mu.items()})
        self._means.add("loss", float(loss.detach()))
        return {"rna": self.weight * loss}

    def epoch_metrics(self, trainer: Trainer) -> dict[str, Any]:
        return self._means.result()


# -- OGM-GE and Ada2I ------------------------------------------------------------------
class _GradientModulation(_EpochWindow, TrainerPlugin):
    """Scores -> ratios -> coefficients -> scaled gradients (+ noise): OGM-GE and Ada2I."""

    needs_per_modality = True
    #: Ratio reference (:func:`discrepancy_ratios`).
    against = "others"
    #: Noise std from the gradient before (``"raw"``) or after (``"scaled"``) the coefficient.
    noise_from = "raw"

    def __init__(
        self,
        alpha: float,
        noise: bool = True,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        coefficient: str = "paper",
    ) -> None:
        if coefficient not in COEFFICIENT_FORMS:
            raise ConfigError(f"{self.name}.coefficient={coefficient!r}: choose one of {', '.join(COEFFICIENT_FORMS)}")
        self.alpha = float(alpha)
        self.coefficient = coefficient
        self.noise = bool(noise)
        self.start_epoch = int(start_epoch)
        self.end_epoch = None if end_epoch is None else int(end_epoch)
        self._random = _PluginRandom(self.name)
        self._means = _EpochMeans()

    def coefficients(self, output: ModelOutput, labels: Tensor) -> tuple[dict[str, float], dict[str, float]] | None:
        """``(ratios, coefficients)`` of a batch, ``None`` when it has no labelled utterance."""
        if _labelled_count(labels) == 0:
            return None
        ratios = discrepancy_ratios(_batch_scores(output.unimodal_logits, labels), self.against)
        return ratios, modulation_coefficients(ratios, self.alpha, self.coefficient)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._means.reset()

    def after_backward(self, trainer: Trainer, batch: Batch, output: ModelOutput) -> None:
        result = self.coefficients(output, batch.flat_labels)
        if result is None:
            return
        ratios, coefficients = result
        active = self.active(trainer.epoch)
        self._means.add("ratio", ratios)
        self._means.add("coefficient", coefficients if active else dict.fromkeys(coefficients, 1.0))
        if not active:
            return
        groups = trainer.model.modality_parameters()
        generator = self._random.generator(trainer) if self.noise else None
        for m, k in coefficients.items():
            modulate_gradients(groups.get(m, []), k, self.noise_from if self.noise else None, generator)

    def epoch_metrics(self, trainer: Trainer) -> dict[str, Any]:
        return self._means.result()

    def state_dict(self) -> dict[str, Any]:
        return {"random": self._random.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._random.load(state.get("random"))


class OnTheFlyGradientModulation(_GradientModulation):
    r"""OGM-GE (Peng et al., CVPR 2022, eq. 9-11), one-to-others ratios for M > 2 (module docstring).

    Args:
        alpha: :math:`\alpha` of :math:`k = 1 - \tanh(\alpha\rho)` (authors' default 0.1).
        noise: Generalisation enhancement: Gaussian noise with the std of each
            parameter's (unscaled) gradient (default true; false is plain OGM).
        start_epoch: First modulated epoch (0-based; default 0).
        end_epoch: Last modulated epoch, inclusive (default 50; ``None``: no end).
        coefficient: ``"paper"`` (eq. 10) or ``"shifted"`` (:func:`modulation_coefficients`).
    """

    name = "ogm-ge"
    against = "others"
    noise_from = "raw"

    def __init__(
        self,
        alpha: float = 0.1,
        noise: bool = True,
        start_epoch: int = 0,
        end_epoch: int | None = 50,
        coefficient: str = "paper",
    ) -> None:
        super().__init__(alpha, noise, start_epoch, end_epoch, coefficient)


class Ada2IGradientModulation(_GradientModulation):
    r"""Ada2I's training optimisation strategy (Nguyen et al., ACM MM 2024, eq. 15-19).

    Args:
        alpha: :math:`\alpha` (Table 2: 0.037 IEMOCAP, 0.4 MELD).
        noise: Eq. 19's Gaussian noise :math:`h(\theta)`, std of the scaled gradient (default true).
        start_epoch: First modulated epoch (0-based; default 0; authors' ``run.sh``: 3).
        end_epoch: Last modulated epoch, inclusive (default ``None``: no end).
        coefficient: ``"paper"`` (eq. 18) or ``"shifted"`` (:func:`modulation_coefficients`).
    """

    name = "ada2i-gm"
    against = "weakest"
    noise_from = "scaled"

    def __init__(
        self,
        alpha: float = 0.037,
        noise: bool = True,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        coefficient: str = "paper",
    ) -> None:
        super().__init__(alpha, noise, start_epoch, end_epoch, coefficient)


# -- OPM -------------------------------------------------------------------------------
class OnTheFlyPredictionModulation(_EpochWindow, TrainerPlugin):
    r"""OPM (Wei et al., TPAMI 2024): drop the dominant modality's codes before fusion (module docstring).

    Args:
        q_base: Base drop probability :math:`q_{base}` (authors: 0.5).
        lam: :math:`\lambda` (authors: 0.5).
        p_exe: Probability that a batch is modulated at all (authors: 0.7).
        start_epoch: First epoch that drops (0-based; authors' warm-up: 6).
        end_epoch: Last epoch that drops, inclusive (``None``: no end).
        score_batch: ``"auto"``, ``"current"`` (base-class unimodal heads only) or ``"previous"``.

    Shapes:
        - codes: ``{m: [N, h_m]}`` in and out
    """

    name = "opm"
    needs_per_modality = True

    def __init__(
        self,
        q_base: float = 0.5,
        lam: float = 0.5,
        p_exe: float = 0.7,
        start_epoch: int = 6,
        end_epoch: int | None = None,
        score_batch: str = "auto",
    ) -> None:
        if score_batch not in OPM_SCORE_BATCHES:
            raise ConfigError(f"opm.score_batch={score_batch!r}: choose one of {', '.join(OPM_SCORE_BATCHES)}")
        self.q_base, self.lam, self.p_exe = float(q_base), float(lam), float(p_exe)
        self.start_epoch = int(start_epoch)
        self.end_epoch = None if end_epoch is None else int(end_epoch)
        self.score_batch = score_batch
        #: Scores of the last training batch (``previous`` mode), saved in the checkpoint.
        self.last_scores: dict[str, float] | None = None
        #: Drop probabilities of the last modulated batch.
        self.last_drop_probabilities: dict[str, float] | None = None
        self._kept: dict[str, Tensor] | None = None
        self._random = _PluginRandom(self.name)
        self._means = _EpochMeans()

    def score_source(self, model: MercModel) -> str:
        """``"current"`` or ``"previous"``: where this model's scores come from."""
        heads = model.use_unimodal_heads and not model.fills_unimodal_logits
        if self.score_batch == "auto":
            return "current" if heads else "previous"
        if self.score_batch == "current" and not heads:
            raise ConfigError(
                f"opm.score_batch=current needs the base class's unimodal heads, but {model.model_name} returns "
                "its own unimodal logits from fuse; use opm.score_batch=previous (or auto)"
            )
        return self.score_batch

    def on_fit_start(self, trainer: Trainer) -> None:
        self.score_source(trainer.model)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._means.reset()

    def _current_scores(self, model: MercModel, batch: Batch, codes: Mapping[str, Tensor]) -> dict[str, float] | None:
        import torch

        labels = batch.flat_labels
        if _labelled_count(labels) == 0:
            return None
        with torch.no_grad():
            logits = {m: model.unimodal_classifiers[m](c.detach()).float() for m, c in codes.items()}
        return _batch_scores(logits, labels, reduce="mean")

    def before_fuse(self, trainer: Trainer, batch: Batch, codes: dict[str, Tensor]) -> dict[str, Tensor] | None:
        import torch

        model = trainer.model
        if not model.training:  # evaluation, FAGM's ablations included: leave the training batch's mask
            return None
        self._kept = None
        if not codes or not self.active(trainer.epoch):
            return None
        if self.score_source(model) == "current":
            scores = self._current_scores(model, batch, codes)
        else:
            scores = self.last_scores
        if scores is None or set(scores) != set(codes):
            return None
        q = drop_probabilities(discrepancy_ratios(scores, "others"), self.q_base, self.lam)
        self.last_drop_probabilities = q
        self._means.add("drop_probability", q)
        generator = self._random.generator(trainer)
        device = next(iter(codes.values())).device
        execute = float(torch.rand((), generator=generator, device=device)) < self.p_exe
        self._means.add("executed_share", float(execute))
        names = list(codes)
        if not execute:
            self._means.add("dropped_share", dict.fromkeys(names, 0.0))
            return None
        n = next(iter(codes.values())).shape[0]
        probs = torch.tensor([q[m] for m in names], device=device)
        keep = torch.rand((n, len(names)), generator=generator, device=device) >= probs  # [N, M]
        widths = torch.tensor([float(codes[m].shape[-1]) for m in names], device=device)
        theta = float((widths * probs).sum() / widths.sum())
        if theta >= 1.0:  # cannot happen (the weakest modality is never dropped); never divide by 0
            return None
        scale = 1.0 / (1.0 - theta)
        self._kept = {m: keep[:, k] for k, m in enumerate(names)}
        dropped = 1.0 - keep.float().mean(0)
        self._means.add("dropped_share", {m: float(dropped[k]) for k, m in enumerate(names)})
        return {m: codes[m] * (keep[:, k, None].to(codes[m].dtype) * scale) for k, m in enumerate(names)}

    def on_batch_end(self, trainer: Trainer, batch: Batch, output: ModelOutput, loss: float) -> None:
        if not output.unimodal_logits or self.score_source(trainer.model) != "previous":
            return
        from merc.data.batching import IGNORE_INDEX

        labels = batch.flat_labels
        kept = self._kept or {}
        scores: dict[str, float] = {}
        for m, logits in output.unimodal_logits.items():
            mask = kept.get(m)
            own = labels if mask is None else labels.masked_fill(~mask, IGNORE_INDEX)
            if _labelled_count(own) == 0:
                return  # a modality without a kept labelled utterance: keep the older scores
            scores.update(_batch_scores({m: logits}, own, reduce="mean"))
        self.last_scores = scores

    def epoch_metrics(self, trainer: Trainer) -> dict[str, Any]:
        metrics = self._means.result()
        if metrics:
            metrics["score_batch"] = self.score_source(trainer.model)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"last_scores": self.last_scores, "random": self._random.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        scores = state.get("last_scores")
        self.last_scores = None if scores is None else {str(m): float(v) for m, v in scores.items()}
        self._random.load(state.get("random"))


# -- FAGM ------------------------------------------------------------------------------
@dataclass
class _SharedLinear:
    """A shared (fusion) module whose weights' columns FAGM scales: weights ``[out, in_dim]``."""

    module: nn.Module
    weights: list[nn.Parameter]
    in_dim: int


def shared_linear_modules(model: MercModel) -> list[_SharedLinear]:
    """The model's leaf modules outside every modality group with ``[out, in]`` input weights.

    ``weight`` (``nn.Linear`` and look-alikes) and a recurrent layer's first input weights
    (``weight_ih``, ``weight_ih_l0``, ``weight_ih_l0_reverse``); embeddings are left out.
    """
    from torch import nn

    own = {id(p) for group in model.modality_parameters().values() for p in group}
    own |= {id(p) for p in model.probe_parameters()}
    found = []
    for module in model.modules():
        if next(module.children(), None) is not None or isinstance(module, nn.Embedding):
            continue
        direct = dict(module.named_parameters(recurse=False))
        if not direct or any(id(p) in own for p in direct.values()):
            continue
        weights = [
            p
            for n, p in direct.items()
            if p.dim() == 2 and p.requires_grad and (n in ("weight", "weight_ih") or n.startswith("weight_ih_l0"))
        ]
        widths = {int(p.shape[1]) for p in weights}
        if len(widths) == 1:
            found.append(_SharedLinear(module, weights, widths.pop()))
    return found


def fine_grained_penalty(delta: Tensor, dominance: Tensor, beta: float) -> Tensor:
    r"""FAGM's per-unit penalty :math:`\sum_m \iota^m [\text{unit penalised for } m]` ``[d]``.

    Args:
        delta: :math:`\delta^m_i` ``[M, d]``: how much input unit :math:`i` moves when
            modality :math:`m` is removed.
        dominance: :math:`\iota^m` ``[M]``.
        beta: Share of each modality's units with :math:`\Delta^m_i > 0` that are penalised
            (the :math:`\lfloor\beta n^+\rfloor` largest).

    >>> import torch
    >>> delta = torch.tensor([[3.0, 0.0, 1.0], [0.0, 2.0, 2.0]])
    >>> fine_grained_penalty(delta, torch.tensor([0.5, 0.0]), beta=1.0)
    tensor([0.5000, 0.0000, 0.0000])
    """
    import torch

    count, width = delta.shape
    if count > 1:
        top = delta.topk(2, dim=0)
        rows = torch.arange(count, device=delta.device)[:, None]
        others = torch.where(top.indices[0][None, :] == rows, top.values[1][None, :], top.values[0][None, :])
    else:
        others = torch.zeros_like(delta)
    excess = delta - others
    positive = excess > 0
    quota = torch.floor(beta * positive.sum(1).to(delta.dtype))  # [M]
    order = excess.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(width, device=delta.device).expand(count, width))
    chosen = positive & (rank < quota[:, None])
    return (chosen.to(delta.dtype) * dominance[:, None].to(delta.dtype)).sum(0)


class FineGrainedAdaptiveGradientModulation(TrainerPlugin):
    r"""FAGM (Wang et al., ACM MM 2023): modality- and parameter-level gradient rebalancing.

    Args:
        gamma: :math:`\gamma` of :math:`\iota = (r - \min r)^\gamma` (> 0; authors' default 1).
        beta: Share of the modality-dependent input units of shared weights penalised
            (in [0, 1]; 0 modulates the modality-specific parameters only; default 1).
        tau: Re-estimate every ``tau`` steps of an epoch (default 1: every batch).
        score_scale: :math:`\kappa` of :math:`\mathrm{softmax}(\kappa c)` (authors' code: 0.1).
    """

    name = "fagm"
    needs_per_modality = True

    def __init__(self, gamma: float = 1.0, beta: float = 1.0, tau: int = 1, score_scale: float = 0.1) -> None:
        self.gamma, self.beta, self.tau, self.score_scale = float(gamma), float(beta), int(tau), float(score_scale)
        #: :math:`\iota^m` of the last estimate.
        self.dominance: dict[str, float] | None = None
        #: :math:`c^m` of the last estimate.
        self.contributions: dict[str, float] | None = None
        self._column_factors: list[tuple[list[nn.Parameter], Tensor]] = []
        self._step = 0
        self._means = _EpochMeans()

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        # The authors' step counter restarts every epoch, so nothing carries over epochs.
        self._step = 0
        self.dominance, self.contributions, self._column_factors = None, None, []
        self._means.reset()

    @contextlib.contextmanager
    def _capture(self, shared: Sequence[_SharedLinear], into: dict[int, list[Tensor]]) -> Iterator[None]:
        from torch.nn.utils.rnn import PackedSequence

        def hook_for(index: int, width: int) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
                x = args[0] if args else None
                if isinstance(x, PackedSequence):
                    x = x.data
                if x is not None and hasattr(x, "shape") and x.dim() >= 1 and x.shape[-1] == width:
                    into.setdefault(index, []).append(x.detach().reshape(-1, width).float())

            return hook

        handles = [s.module.register_forward_hook(hook_for(k, s.in_dim)) for k, s in enumerate(shared)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _forward(
        self, trainer: Trainer, batch: Batch, shared: Sequence[_SharedLinear], drop: str | None
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Classification loss and shared-module inputs with modality ``drop`` zeroed (``None``: all)."""
        import torch

        model = trainer.model
        inputs: dict[int, list[Tensor]] = {}

        def zero(_: Batch, codes: dict[str, Tensor]) -> dict[str, Tensor]:
            return {m: torch.zeros_like(c) if m == drop else c for m, c in codes.items()}

        ablation = model.before_fuse(zero) if drop is not None else contextlib.nullcontext()
        with torch.no_grad(), trainer.autocast(), ablation, self._capture(shared, inputs):
            logits = model(batch).logits.float()
        labels = batch.flat_labels
        loss = trainer.utterance_loss(logits, labels).sum() / max(_labelled_count(labels), 1)
        return loss, {k: torch.cat(v) for k, v in inputs.items()}

    def estimate(self, trainer: Trainer, batch: Batch) -> None:
        """Contributions, dominances and column factors from ``batch`` (module docstring)."""
        import torch

        model = trainer.model
        names = list(model.modalities)
        if len(names) < 2 or _labelled_count(batch.flat_labels) == 0:
            self.dominance, self.contributions, self._column_factors = None, None, []
            return
        shared = shared_linear_modules(model) if self.beta > 0 else []
        was_training = model.training
        model.eval()
        try:
            base_loss, base_inputs = self._forward(trainer, batch, shared, None)
            ablated = {m: self._forward(trainer, batch, shared, m) for m in names}
        finally:
            model.train(was_training)
        contribution = torch.stack([ablated[m][0] - base_loss for m in names])
        ratio = torch.softmax(self.score_scale * contribution, dim=0)
        dominance = (ratio - ratio.min()) ** self.gamma
        self.contributions = dict(zip(names, contribution.tolist(), strict=True))
        self.dominance = dict(zip(names, dominance.tolist(), strict=True))
        self._column_factors = []
        penalised, columns = 0.0, 0
        for k, s in enumerate(shared):
            base = base_inputs.get(k)
            others = [ablated[m][1].get(k) for m in names]
            if base is None or any(x is None or x.shape != base.shape for x in others):
                continue
            delta = torch.stack([(base - x).abs().mean(0) for x in others if x is not None])  # [M, d]
            penalty = fine_grained_penalty(delta, dominance, self.beta)
            self._column_factors.append((s.weights, 1.0 - penalty))
            penalised += float((penalty > 0).sum())
            columns += penalty.numel()
        self._means.add("contribution", self.contributions)
        self._means.add("dominance", self.dominance)
        self._means.add("coefficient", {m: 1.0 - v for m, v in self.dominance.items()})
        if columns:
            self._means.add("penalised_share", penalised / columns)

    def after_backward(self, trainer: Trainer, batch: Batch, output: ModelOutput) -> None:
        if self._step % self.tau == 0:
            self.estimate(trainer, batch)
        self._step += 1
        if self.dominance is None:
            return
        groups = trainer.model.modality_parameters()
        for m, iota in self.dominance.items():
            modulate_gradients(groups.get(m, []), 1.0 - iota)
        for weights, factor in self._column_factors:
            for p in weights:
                if p.grad is not None:
                    p.grad.mul_(factor.to(p.grad.dtype)[None, :])

    def epoch_metrics(self, trainer: Trainer) -> dict[str, Any]:
        return self._means.result()


# -- options and registration ------------------------------------------------------------
@dataclass(frozen=True)
class _Option:
    """One option of a section: default, type (of ``like``, else of the default), range or choices."""

    default: Any
    valid: Callable[[Any], bool] | None = None
    expected: str = ""
    choices: tuple[str, ...] = ()
    #: ``None`` (YAML ``null``, ``none``) allowed: "no end".
    nullable: bool = False
    like: Any = None


_EPOCH = _Option(0, lambda v: 0 <= v <= 10**6, "an integer in [0, 1000000]")
_END_EPOCH = _Option(
    None, lambda v: 0 <= v <= 10**6, "an integer in [0, 1000000] or null (no end)", nullable=True, like=0
)
_ALPHA = (lambda v: v > 0, "a finite number > 0")


def _check_section(name: str, section: Mapping[str, Any], options: Mapping[str, _Option]) -> dict[str, Any]:
    """``section`` with defaults filled in, every value converted and checked.

    Raises:
        ConfigError: An unknown key, or a value of the wrong type or out of range, naming
            ``<name>.<key>`` and what is valid.
    """
    from merc.training.trainer import check_option  # the trainer is heavy: not at import time

    if not isinstance(section, Mapping):
        raise ConfigError(f"recipe section {name!r} must be a mapping of options, got {section!r}")
    valid = ("enabled", *options)
    unknown = sorted(str(k) for k in section if k not in valid)
    if unknown:
        raise ConfigError(f"unknown {name} option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    out: dict[str, Any] = {"enabled": check_option("enabled", True, section.get("enabled", True), section=name)}
    for key, opt in options.items():
        value = section.get(key, opt.default)
        if opt.nullable and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null"))):
            out[key] = None
            continue
        ranges = {key: (opt.valid, opt.expected)} if opt.valid is not None else {}
        choices = {key: opt.choices} if opt.choices else {}
        like = opt.like if opt.like is not None else opt.default
        out[key] = check_option(key, like, value, section=name, ranges=ranges, choices=choices)
    if out.get("end_epoch") is not None and out["end_epoch"] < out.get("start_epoch", 0):
        raise ConfigError(f"{name}.end_epoch={out['end_epoch']} is before {name}.start_epoch={out['start_epoch']}")
    return out


def check_rna(section: Mapping[str, Any]) -> dict[str, Any]:
    """The ``rna:`` section's options (``enabled``, ``lambda`` >= 0, ``extension``), checked."""
    return _check_section(
        "rna",
        section,
        {
            "lambda": _Option(1.0, lambda v: v >= 0, "a finite number >= 0"),
            "extension": _Option("pairs", choices=RNA_EXTENSIONS),
        },
    )


def _gradient_options(alpha: float, end_epoch: int | None) -> dict[str, _Option]:
    return {
        "alpha": _Option(alpha, *_ALPHA),
        "noise": _Option(True),
        "start_epoch": _EPOCH,
        "end_epoch": _Option(end_epoch, _END_EPOCH.valid, _END_EPOCH.expected, nullable=True, like=0),
        "coefficient": _Option("paper", choices=COEFFICIENT_FORMS),
    }


def check_ogm_ge(section: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ogm-ge:`` section (``enabled``, ``alpha`` > 0, ``noise``, ``start_epoch``, ``end_epoch``, ``coefficient``), checked."""
    return _check_section("ogm-ge", section, _gradient_options(0.1, 50))


def check_ada2i_gm(section: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ada2i-gm:`` section (``enabled``, ``alpha`` > 0, ``noise``, ``start_epoch``, ``end_epoch``, ``coefficient``), checked."""
    return _check_section("ada2i-gm", section, _gradient_options(0.037, None))


def check_opm(section: Mapping[str, Any]) -> dict[str, Any]:
    """The ``opm:`` section (``q_base``, ``lambda``, ``p_exe`` in [0, 1], epochs, ``score_batch``), checked."""
    unit = (lambda v: 0 <= v <= 1, "a number in [0, 1]")
    return _check_section(
        "opm",
        section,
        {
            "q_base": _Option(0.5, *unit),
            "lambda": _Option(0.5, lambda v: v >= 0, "a finite number >= 0"),
            "p_exe": _Option(0.7, *unit),
            "start_epoch": _Option(6, _EPOCH.valid, _EPOCH.expected),
            "end_epoch": _END_EPOCH,
            "score_batch": _Option("auto", choices=OPM_SCORE_BATCHES),
        },
    )


def check_fagm(section: Mapping[str, Any]) -> dict[str, Any]:
    """The ``fagm:`` section (``gamma`` > 0, ``beta`` in [0, 1], ``tau`` >= 1, ``score_scale`` > 0), checked."""
    return _check_section(
        "fagm",
        section,
        {
            "gamma": _Option(1.0, lambda v: v > 0, "a finite number > 0"),
            "beta": _Option(1.0, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
            "tau": _Option(1, lambda v: 1 <= v <= 10**6, "an integer in [1, 1000000]"),
            "score_scale": _Option(0.1, lambda v: v > 0, "a finite number > 0"),
        },
    )


def _check_only(check: Callable[[Mapping[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    def run(section: dict[str, Any]) -> None:
        check(section)

    return run


@register_plugin(
    "rna",
    help="RNA loss (Planamente et al., WACV 2022): align the modalities' mean code norms",
    group=GROUP,
    check=_check_only(check_rna),
)
def build_rna(section: dict[str, Any], dataset: MercDataset) -> RelativeNormAlignment | None:
    """The RNA plug-in of a recipe's ``rna:`` section (``None`` when ``enabled: false``)."""
    opts = check_rna(section)
    return RelativeNormAlignment(opts["lambda"], opts["extension"]) if opts["enabled"] else None


@register_plugin(
    "ogm-ge",
    help="OGM-GE (Peng et al., CVPR 2022): on-the-fly gradient modulation with generalisation enhancement",
    group=GROUP,
    check=_check_only(check_ogm_ge),
)
def build_ogm_ge(section: dict[str, Any], dataset: MercDataset) -> OnTheFlyGradientModulation | None:
    """The OGM-GE plug-in of a recipe's ``ogm-ge:`` section (``None`` when ``enabled: false``)."""
    opts = check_ogm_ge(section)
    if not opts.pop("enabled"):
        return None
    return OnTheFlyGradientModulation(**opts)


@register_plugin(
    "opm",
    help="OPM (Wei et al., TPAMI 2024): drop the dominant modality's codes with adaptive probability",
    group=GROUP,
    check=_check_only(check_opm),
)
def build_opm(section: dict[str, Any], dataset: MercDataset) -> OnTheFlyPredictionModulation | None:
    """The OPM plug-in of a recipe's ``opm:`` section (``None`` when ``enabled: false``)."""
    opts = check_opm(section)
    if not opts.pop("enabled"):
        return None
    opts["lam"] = opts.pop("lambda")
    return OnTheFlyPredictionModulation(**opts)


@register_plugin(
    "fagm",
    help="FAGM (Wang et al., ACM MM 2023): fine-grained adaptive gradient modulation",
    group=GROUP,
    check=_check_only(check_fagm),
)
def build_fagm(section: dict[str, Any], dataset: MercDataset) -> FineGrainedAdaptiveGradientModulation | None:
    """The FAGM plug-in of a recipe's ``fagm:`` section (``None`` when ``enabled: false``)."""
    opts = check_fagm(section)
    if not opts.pop("enabled"):
        return None
    return FineGrainedAdaptiveGradientModulation(**opts)


@register_plugin(
    "ada2i-gm",
    help="Ada2I's gradient modulation (Nguyen et al., ACM MM 2024, eq. 15-19): ratio to the weakest modality",
    group=GROUP,
    check=_check_only(check_ada2i_gm),
)
def build_ada2i_gm(section: dict[str, Any], dataset: MercDataset) -> Ada2IGradientModulation | None:
    """The Ada2I plug-in of a recipe's ``ada2i-gm:`` section (``None`` when ``enabled: false``)."""
    opts = check_ada2i_gm(section)
    if not opts.pop("enabled"):
        return None
    return Ada2IGradientModulation(**opts)


__all__ = [
    "GROUP",
    "Ada2IGradientModulation",
    "FineGrainedAdaptiveGradientModulation",
    "OnTheFlyGradientModulation",
    "OnTheFlyPredictionModulation",
    "RelativeNormAlignment",
    "build_ada2i_gm",
    "build_fagm",
    "build_ogm_ge",
    "build_opm",
    "build_rna",
    "check_ada2i_gm",
    "check_fagm",
    "check_ogm_ge",
    "check_opm",
    "check_rna",
    "discrepancy_ratios",
    "drop_probabilities",
    "fine_grained_penalty",
    "modulate_gradients",
    "modulation_coefficients",
    "relative_norm_alignment",
    "shared_linear_modules",
]
