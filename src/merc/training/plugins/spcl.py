r"""Self-paced curriculum learning for modality balance (SPCL, Nguyen et al., 2026).

Nguyen, Le, Le, Nguyen. "Leveraging self-paced curriculum learning for enhanced modality
balance in multimodal conversational emotion recognition." Neural Computing and
Applications, 2026 (arXiv:2605.21565), Section 3, Algorithm 1, Tables 2, 5, 6, 8, Section
5.2. SPCL scores every training utterance from the model's own outputs in the current
batch and reweights its classification loss: easy utterances (low difficulty) train first,
the threshold grows every epoch until all of them train. It only needs the model
contract's unimodal logits, so it works with every merc model that has them (late fusion,
or the base class's unimodal heads); early-fusion models are refused.

Difficulty measurer (Section 3.3.1)
-----------------------------------
For dialogue :math:`i` with utterances :math:`j`, labels :math:`y_{ij}` and unimodal
logits :math:`z^m_{ij}` (eq. 1), the cross-modal logit is their sum (eq. 2) and the
*utterance-level score* its cross-entropy (eq. 3):

.. math::
    z^{joint}_{ij} = \sum_m z^m_{ij}, \qquad
    l_{ij} = -\log \mathrm{softmax}(z^{joint}_{ij})_{y_{ij}}

The *conversation-level score* is the standard deviation over modalities of each
modality's summed true-class probability in the dialogue (eqs. 4-5), shared by all of the
dialogue's utterances:

.. math::
    s^m_i = \sum_{j} \mathrm{softmax}(z^m_{ij})_{y_{ij}}, \qquad
    s_i = \sigma(s^a_i, s^t_i, s^v_i)

and the difficulty is their harmonic mean (eq. 6):

.. math::
    \rho_{ij} = \frac{2 s_i l_{ij}}{s_i + l_{ij}}

Table 5's ablations drop one score from eq. 6: without the utterance score
:math:`\rho_{ij} = s_i`, without the conversation score :math:`\rho_{ij} = l_{ij}`
(``use_utterance_score`` / ``use_conversation_score``).

Learning scheduler (Sections 3.3.2, 3.4, 5.2.3)
-----------------------------------------------
The weight :math:`v_{ij}` of an utterance at threshold :math:`\lambda` is the paper's hard
regulariser (eq. 7) or one of the two soft ones of Section 5.2.3, whose closed forms the
paper takes from Wang et al.'s curriculum survey (its ref. [58]): linear (Jiang et al.,
2014) and logistic:

.. math::
    v^{hard}_{ij} = \mathbb{1}[\rho_{ij} \le \lambda], \qquad
    v^{lin}_{ij} = \max\left(0, 1 - \frac{\rho_{ij}}{\lambda}\right), \qquad
    v^{log}_{ij} = \frac{1 + e^{-\lambda}}{1 + e^{\rho_{ij} - \lambda}}

and the SPCL loss averages the weighted losses over the selected utterances (eq. 11):

.. math::
    \mathcal{L}_{SPCL} = \frac{\sum_{ij} v_{ij} l_{ij}}{\sum_{ij} v_{ij}}

:math:`v` is a constant of the step (computed without gradient), as in self-paced
learning's alternating optimisation and the authors' code. The trainer's classification
term is :math:`\sum_{ij} w_{ij} \ell_{ij} / n_{lab}` over the batch's labelled
utterances, so the plug-in returns :math:`w_{ij} = v_{ij} \, n_{lab} / \sum v` (eq. 11 per
batch, ``loss_normalisation="selected"``); with every utterance selected :math:`w = 1` and
the loss is the plain cross-entropy.

The threshold starts at :math:`\varepsilon` and follows a pacing function of the epoch
:math:`t` (0-based, Algorithm 1 updates it after each epoch) over :math:`T` epochs
(``training.epochs``): the paper's exponential pacing (eq. 8) or one of Table 8's:

.. math::
    \text{exponential:}\quad \lambda^{(t)} = \min(\varepsilon \alpha^t, \lambda_{max})

    \text{cosine:}\quad \lambda^{(t)} = \varepsilon + \frac{\lambda_{max} - \varepsilon}{2}
        \left(1 - \cos\frac{\pi t}{T}\right)

    \text{moving average:}\quad \lambda^{(t)} = \begin{cases}
        \mu \lambda^{(t-1)} + (1 - \mu)\, \bar\rho^{(t-1)} & t < t_0 \\
        \max \rho^{(t-1)} & t \ge t_0 \end{cases}

    \text{competence:}\quad c_t = \min\left(1, \sqrt{t \frac{1 - c_0^2}{T} + c_0^2}\right),
        \quad \lambda^{(t)} = \mathrm{Quantile}(\rho^{(t-1)}, c_t)

with :math:`\lambda^{(0)} = \varepsilon` for all four; :math:`\rho^{(t-1)}` are the
difficulties of the labelled training utterances of the previous epoch, as measured in its
batches (:math:`\bar\rho` their mean). Competence-based pacing is Platanios et al.'s
(NAACL 2019, the paper's ref. [65]).

Defaults and their source
-------------------------
- ``epsilon = 0.8``, ``alpha = 1.1``: Table 6's best setting (v0) of MMGCN on IEMOCAP,
  inside Table 2's search ranges (:math:`\varepsilon \in [0.6, 1.2]`,
  :math:`\alpha \in [1.05, 1.4]`, one range for both corpora). The paper gives no value per
  dataset, so there are no dataset defaults; its best values depend on the backbone (Table 6:
  MM-DFN v0 is 0.4 / 1.2, outside Table 2's range for :math:`\varepsilon`). The authors'
  README lists per backbone x modalities values (``cl_threshold`` = epsilon, ``cl_growth`` =
  alpha), full modalities (atv): IEMOCAP BiDDIN 0.7 / 1.85, DialogueGCN 0.7 / 1.25, MM-DFN
  0.4 / 1.2, MMGCN 0.4 / 1.1; MELD BiDDIN 0.75 / 1.05, DialogueGCN 0.7 / 1.25, MM-DFN 0.2 /
  1.6, MMGCN 0.4 / 1.25. Recipes set them in their ``spcl:`` section.
- ``regularizer = "hard"``, ``pacing = "exponential"``: the paper's method (eqs. 7-8;
  Tables 7 and 9 compare the alternatives).
- ``max_threshold = 60``: the authors' code caps the exponential threshold at 60
  (``increase_threshold``); merc uses it as the cap and as cosine's :math:`\lambda_{max}`,
  which Table 8 does not define.

Choices where the paper is vague (each an option)
-------------------------------------------------
- ``utterance_logits``: ``"unimodal-sum"`` (default, eq. 2 literally) scores the sum of the
  unimodal logits; ``"fused"`` the model's fused logits. They coincide for late-fusion models
  (the paper's four backbones, merc's ``fusion="late"`` variants); for other models the
  unimodal logits are the base class's heads (probes unless ``unimodal_loss_weight > 0``).
  Either way :math:`l_{ij}` is the unweighted cross-entropy of eq. 3, also under
  ``training.class_weighted_loss`` (which weights the loss SPCL then reweights).
- ``conversation_std``: ``"sample"`` (default, Bessel-corrected, :math:`M - 1` in the
  denominator: ``torch.std`` as the authors' code calls it) or ``"population"`` (:math:`M`).
  Either needs two or more modalities (the plug-in refuses one modality unless
  ``use_conversation_score`` is off).
- ``score_normalisation``: ``"none"`` (default; eq. 6 and the authors' code combine the raw
  scores, although :math:`s_i` grows with the dialogue's length and :math:`l_{ij}` does not)
  or ``"batch-mean"``: each score divided by its mean over the batch's labelled utterances
  before eq. 6 (then :math:`\varepsilon` is relative to an average difficulty of 1).
- ``loss_normalisation``: ``"selected"`` (default, eq. 11: divide by :math:`\sum v`) or
  ``"labelled"`` (divide by the number of labelled utterances, as the authors' code does:
  ``(loss * v).mean()``), which also scales the gradient by the selected share.
- Statistics are batch-level, as the paper states (Section 5.2.6): the scores come from the
  training forward pass of the batch (dropout on, before the step). merc's batches hold
  whole dialogues, so :math:`s_i` never mixes dialogues; only ``"batch-mean"``
  normalisation and eq. 11's denominator depend on the batch's other dialogues.
- Unlabelled utterances have no :math:`y_{ij}`: they add nothing to :math:`s^m_i` (eq. 4's
  indicator is 0 for every class), get no difficulty, weight 0 and are not counted.
  Missing modalities are scored from whatever logits the model gives for them.
- :math:`\rho_{ij} = 0` when :math:`s_i + l_{ij} = 0` (the limit; the authors' code computes
  ``2 / (1/s + 1/l)``, also 0 when either score is 0).
- Hard selection keeps :math:`\rho = \lambda` (eq. 7's :math:`\le`, the authors' code).
- Table 8's moving average writes :math:`\alpha` for its smoothing factor and sums
  :math:`\rho` over the dataset: merc uses a separate momentum :math:`\mu` = ``ma_momentum``
  (default 0.9; ``alpha`` is the exponential growth factor, > 1) and the *mean* difficulty
  (a sum over thousands of utterances would select everything after one epoch);
  :math:`t_0` = ``ma_full_epoch`` (default :math:`\lfloor T/2 \rfloor`, the paper gives none).
- Competence pacing: :math:`c_0` = ``competence_start`` (default 0.01, Platanios et al.'s);
  the quantile is over the previous epoch's difficulties (linear interpolation), so one
  threshold holds per epoch as Table 8 writes it.

Recipe section (``merc train ... --balance spcl`` sets ``spcl.enabled=true``)::

    spcl:
      epsilon: 0.8
      alpha: 1.1
      regularizer: hard        # linear, logistic
      pacing: exponential      # cosine, moving-average, competence

``history.json`` records per epoch, under ``plugins.spcl``: ``selected_share`` (the curriculum
expanding rate of Section 5.2.2, :math:`\sum v / n_{lab}` over the epoch's labelled training
utterances, so weighted by :math:`v` for soft regularisers), ``included_share`` (share with
:math:`v > 0`), ``threshold``, ``mean_difficulty`` and the mean of each score used.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from merc.errors import ConfigError
from merc.training.plugins.base import TrainerPlugin
from merc.training.plugins.registry import PluginOption, register_plugin

# torch, the trainer and the evaluation helpers are imported inside the functions that use
# them: the plug-in registry imports this module to build `merc train`'s switches, and the
# command-line parser must stay torch-free (tests/test_import_direction.py).
if TYPE_CHECKING:
    from torch import Tensor

    from merc.data.batching import Batch
    from merc.data.schema import MercDataset
    from merc.models.output import ModelOutput
    from merc.training.trainer import Trainer

log = logging.getLogger(__name__)

#: Self-paced regularisers: the paper's hard one (eq. 7) and the soft ones of Section 5.2.3.
REGULARIZERS = ("hard", "linear", "logistic")
#: Threshold pacing: eq. 8 and Table 8.
PACINGS = ("exponential", "cosine", "moving-average", "competence")
#: What the utterance score (eq. 3) is the cross-entropy of.
UTTERANCE_LOGITS = ("unimodal-sum", "fused")
#: The standard deviation of eq. 5: Bessel-corrected (``torch.std``) or over M.
CONVERSATION_STDS = ("sample", "population")
#: How the two scores are scaled before the harmonic mean (eq. 6).
SCORE_NORMALISATIONS = ("none", "batch-mean")
#: The denominator of the weighted loss: eq. 11's selected count or the labelled count.
LOSS_NORMALISATIONS = ("selected", "labelled")

_RANGES: dict[str, tuple[Any, str]] = {
    "epsilon": (lambda v: v > 0, "a finite number > 0 (the initial threshold, eq. 8)"),
    "alpha": (lambda v: v > 1, "a finite number > 1 (the threshold's growth, eq. 8)"),
    "max_threshold": (lambda v: v > 0, "a finite number > 0"),
    "ma_momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "ma_full_epoch": (lambda v: v >= 1, "an integer >= 1 or null (half the epochs)"),
    "competence_start": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "regularizer": REGULARIZERS,
    "pacing": PACINGS,
    "utterance_logits": UTTERANCE_LOGITS,
    "conversation_std": CONVERSATION_STDS,
    "score_normalisation": SCORE_NORMALISATIONS,
    "loss_normalisation": LOSS_NORMALISATIONS,
}


@dataclass
class SPCLConfig:
    r"""The ``spcl:`` recipe section, checked (see the module docstring for every choice).

    Args:
        enabled: Build the plug-in (a section without ``enabled`` means on).
        epsilon: Initial threshold :math:`\varepsilon` (Table 6 v0 of MMGCN on IEMOCAP).
        alpha: Growth :math:`\alpha > 1` of exponential pacing (same source).
        regularizer: ``hard`` (eq. 7), ``linear`` or ``logistic`` (Section 5.2.3).
        pacing: ``exponential`` (eq. 8), ``cosine``, ``moving-average`` or ``competence``
            (Table 8).
        max_threshold: Cap of exponential pacing and cosine's :math:`\lambda_{max}`
            (60: the authors' code); at least ``epsilon``.
        ma_momentum: Moving-average pacing's smoothing factor :math:`\mu`.
        ma_full_epoch: Moving-average pacing's :math:`t_0` (``None``: half the epochs).
        competence_start: Competence pacing's :math:`c_0` (Platanios et al.: 0.01).
        use_utterance_score: Include :math:`l_{ij}` (Table 5's "w/o utt-score" is false).
        use_conversation_score: Include :math:`s_i` (Table 5's "w/o conv-score" is false).
        utterance_logits: ``unimodal-sum`` (eq. 2) or ``fused``.
        conversation_std: ``sample`` (authors' code) or ``population``.
        score_normalisation: ``none`` (eq. 6) or ``batch-mean``.
        loss_normalisation: ``selected`` (eq. 11) or ``labelled`` (authors' code).

    Raises:
        ConfigError: A value of the wrong type, out of range or not among the choices,
            ``max_threshold < epsilon``, or both scores switched off.
    """

    enabled: bool = True
    epsilon: float = 0.8
    alpha: float = 1.1
    regularizer: str = "hard"
    pacing: str = "exponential"
    max_threshold: float = 60.0
    ma_momentum: float = 0.9
    ma_full_epoch: int | None = None
    competence_start: float = 0.01
    use_utterance_score: bool = True
    use_conversation_score: bool = True
    utterance_logits: str = "unimodal-sum"
    conversation_std: str = "sample"
    score_normalisation: str = "none"
    loss_normalisation: str = "selected"

    def __post_init__(self) -> None:
        from merc.training.trainer import check_option

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "ma_full_epoch":
                if value is not None and not (isinstance(value, str) and value.strip().lower() in ("null", "none")):
                    setattr(self, f.name, check_option(f.name, 1, value, "spcl", _RANGES, _CHOICES))
                else:
                    setattr(self, f.name, None)
                continue
            setattr(self, f.name, check_option(f.name, f.default, value, "spcl", _RANGES, _CHOICES))
        if self.max_threshold < self.epsilon:
            raise ConfigError(
                f"spcl.max_threshold={self.max_threshold} is below spcl.epsilon={self.epsilon}: the threshold "
                "starts at epsilon and grows up to max_threshold"
            )
        if not (self.use_utterance_score or self.use_conversation_score):
            raise ConfigError(
                "spcl.use_utterance_score and spcl.use_conversation_score are both false: the difficulty "
                "(eq. 6) needs at least one of the two scores"
            )


def check_spcl(section: Mapping[str, Any]) -> SPCLConfig:
    """The ``spcl:`` section's options, checked (no data needed).

    Raises:
        ConfigError: An unknown key, or a value :class:`SPCLConfig` refuses.

    >>> check_spcl({"epsilon": "0.7", "pacing": "Moving_Average"}).pacing
    'moving-average'
    """
    if not isinstance(section, Mapping):
        raise ConfigError(f"the spcl section must be a mapping of options, got {section!r}")
    names = [f.name for f in dataclasses.fields(SPCLConfig)]
    unknown = sorted(str(k) for k in section if k not in names)
    if unknown:
        raise ConfigError(f"unknown spcl option(s) {', '.join(unknown)}; valid: {', '.join(names)}")
    return SPCLConfig(**{str(k): v for k, v in section.items()})


# -- difficulty measurer ---------------------------------------------------------------
@dataclass
class SPCLDifficulty:
    r"""Scores of one batch (values at unlabelled utterances are 0 and meaningless).

    Attributes:
        difficulty: ``[N]`` :math:`\rho_{ij}` (eq. 6, or one score under an ablation).
        utterance_score: ``[N]`` :math:`l_{ij}` (eq. 3; ``None`` when not used).
        conversation_score: ``[N]`` :math:`s_i` of each utterance's dialogue (``None`` when not used).
        dialogue_score: ``[B]`` :math:`s_i` per dialogue (``None`` when not used).
        labelled: ``bool [N]``, the utterances that have a difficulty.
    """

    difficulty: Tensor
    utterance_score: Tensor | None
    conversation_score: Tensor | None
    dialogue_score: Tensor | None
    labelled: Tensor


def spcl_difficulty(
    unimodal_logits: Mapping[str, Tensor],
    labels: Tensor,
    utterance_dialogue: Tensor,
    num_dialogues: int,
    *,
    fused_logits: Tensor | None = None,
    use_utterance_score: bool = True,
    use_conversation_score: bool = True,
    conversation_std: str = "sample",
    score_normalisation: str = "none",
) -> SPCLDifficulty:
    r"""SPCL's difficulty of every utterance of a batch (eqs. 2-6), without gradient.

    Vectorised over utterances and dialogues: per-dialogue sums are one ``index_add`` per
    modality.

    Args:
        unimodal_logits: ``{m: [N, C]}`` :math:`z^m_{ij}`.
        labels: ``[N]`` class ids, :data:`~merc.data.batching.IGNORE_INDEX` where unlabelled.
        utterance_dialogue: ``[N]`` dialogue (batch row) of each utterance, in ``[0, B)``.
        num_dialogues: ``B``.
        fused_logits: ``[N, C]``; if given, :math:`l_{ij}` is its cross-entropy instead of
            that of :math:`\sum_m z^m_{ij}` (``utterance_logits="fused"``).
        use_utterance_score: Include :math:`l_{ij}` (default True).
        use_conversation_score: Include :math:`s_i` (default True).
        conversation_std: ``"sample"`` (default) or ``"population"``.
        score_normalisation: ``"none"`` (default) or ``"batch-mean"``.

    Shapes:
        - output ``difficulty``: ``[N]``; ``dialogue_score``: ``[B]``.

    Raises:
        ConfigError: No unimodal logits, both scores off, one modality with the
            conversation score on, or an unknown choice.

    >>> import torch
    >>> z = {"t": torch.tensor([[2.0, 0.0], [0.0, 1.0]]), "a": torch.zeros(2, 2)}
    >>> d = spcl_difficulty(z, torch.tensor([0, 0]), torch.tensor([0, 0]), 1)
    >>> [round(x, 4) for x in d.difficulty.tolist()]
    [0.1155, 0.196]
    """
    import torch
    import torch.nn.functional as F

    from merc.data.batching import IGNORE_INDEX
    from merc.errors import resolve_choice
    from merc.evaluation.imbalance import true_class_probabilities

    std_kind = resolve_choice("spcl conversation_std", conversation_std, CONVERSATION_STDS)
    normalisation = resolve_choice("spcl score_normalisation", score_normalisation, SCORE_NORMALISATIONS)
    if not unimodal_logits:
        raise ConfigError("SPCL needs unimodal logits (late fusion or unimodal heads); the model output has none")
    if not (use_utterance_score or use_conversation_score):
        raise ConfigError("the SPCL difficulty needs the utterance score, the conversation score or both")
    if use_conversation_score and len(unimodal_logits) < 2:
        raise ConfigError(
            f"SPCL's conversation score is a standard deviation over modalities, but there is only "
            f"{', '.join(unimodal_logits)}; use two or more modalities or set spcl.use_conversation_score=false"
        )
    with torch.no_grad(), torch.autocast(device_type=labels.device.type, enabled=False):
        labels = labels.long()
        labelled = labels != IGNORE_INDEX
        zero = torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device)
        utt: Tensor | None = None
        conv: Tensor | None = None
        dialogue_score: Tensor | None = None
        if use_utterance_score:
            if fused_logits is not None:
                joint = fused_logits.float()
            else:
                joint = torch.stack([z.float() for z in unimodal_logits.values()]).sum(0)
            # Cross-entropy from log-softmax: -log(p) of an underflowed p would be inf.
            utt = F.cross_entropy(joint, labels, ignore_index=IGNORE_INDEX, reduction="none")
        if use_conversation_score:
            rows = utterance_dialogue[labelled].long()
            sums = []
            for z in unimodal_logits.values():  # one scatter per modality (M is 2 or 3)
                p = true_class_probabilities(z, labels)
                sums.append(torch.zeros(num_dialogues, dtype=torch.float32, device=z.device).index_add_(0, rows, p))
            dialogue_score = torch.stack(sums).std(dim=0, correction=1 if std_kind == "sample" else 0)
            conv = dialogue_score[utterance_dialogue.long()]
        if normalisation == "batch-mean" and bool(labelled.any()):
            utt = None if utt is None else utt / utt[labelled].mean().clamp_min(1e-12)
            conv = None if conv is None else conv / conv[labelled].mean().clamp_min(1e-12)
        if utt is not None and conv is not None:
            total = conv + utt
            rho = torch.where(total > 0, 2 * conv * utt / total.clamp_min(1e-30), zero)
        elif utt is not None:
            rho = utt
        else:
            assert conv is not None
            rho = conv
        rho = torch.where(labelled, rho, zero)
    return SPCLDifficulty(rho, utt, conv, dialogue_score, labelled)


# -- learning scheduler ----------------------------------------------------------------
def self_paced_weights(difficulty: Tensor, threshold: float, regularizer: str = "hard") -> Tensor:
    r"""Self-paced weights :math:`v` at threshold :math:`\lambda` (eq. 7, Section 5.2.3).

    Args:
        difficulty: ``[N]`` :math:`\rho \ge 0`.
        threshold: :math:`\lambda > 0`.
        regularizer: ``"hard"`` (default): :math:`\mathbb{1}[\rho \le \lambda]`;
            ``"linear"``: :math:`\max(0, 1 - \rho / \lambda)`; ``"logistic"``:
            :math:`(1 + e^{-\lambda}) / (1 + e^{\rho - \lambda})`.

    Returns:
        ``[N]`` float weights in ``[0, 1]``.

    >>> import torch
    >>> self_paced_weights(torch.tensor([0.5, 1.0, 1.5]), 1.0).tolist()
    [1.0, 1.0, 0.0]
    >>> self_paced_weights(torch.tensor([0.5, 1.0, 1.5]), 1.0, "linear").tolist()
    [0.5, 0.0, 0.0]
    """
    import torch

    from merc.errors import resolve_choice

    kind = resolve_choice("spcl regularizer", regularizer, REGULARIZERS)
    if not threshold > 0:
        raise ConfigError(f"the self-paced threshold must be > 0, got {threshold}")
    rho = difficulty.float()
    if kind == "hard":
        return (rho <= threshold).float()
    if kind == "linear":
        return (1.0 - rho / threshold).clamp_min(0.0)
    return (1.0 + math.exp(-threshold)) / (1.0 + torch.exp(rho - threshold))


def exponential_threshold(epoch: int, epsilon: float, alpha: float, max_threshold: float = math.inf) -> float:
    r""":math:`\min(\varepsilon \alpha^t, \lambda_{max})` (eq. 8 unrolled; no overflow for large ``t``).

    >>> round(exponential_threshold(2, 0.8, 1.1), 6)
    0.968
    """
    log_value = math.log(epsilon) + epoch * math.log(alpha)
    if log_value >= math.log(max_threshold):
        return float(max_threshold)
    if log_value > 700:  # beyond float range: alpha**epoch would raise OverflowError
        return math.inf
    return float(min(epsilon * alpha**epoch, max_threshold))


def cosine_threshold(epoch: int, total_epochs: int, lambda_min: float, lambda_max: float) -> float:
    r""":math:`\lambda_{min} + \frac{\lambda_{max} - \lambda_{min}}{2}(1 - \cos(\pi t / T))` (Table 8).

    >>> cosine_threshold(5, 10, 1.0, 3.0)
    2.0
    """
    return lambda_min + (lambda_max - lambda_min) / 2 * (1 - math.cos(math.pi * epoch / total_epochs))


def moving_average_threshold(
    epoch: int,
    previous_threshold: float,
    mean_difficulty: float,
    max_difficulty: float,
    momentum: float,
    full_epoch: int,
) -> float:
    r"""Table 8's moving-average pacing for epoch ``t >= 1`` from epoch ``t - 1``'s statistics.

    :math:`\mu \lambda^{(t-1)} + (1 - \mu) \bar\rho^{(t-1)}` before ``full_epoch`` (:math:`t_0`),
    then :math:`\max \rho^{(t-1)}`.

    >>> moving_average_threshold(1, 1.0, 2.0, 5.0, 0.75, 3)
    1.25
    >>> moving_average_threshold(3, 1.0, 2.0, 5.0, 0.75, 3)
    5.0
    """
    if epoch >= full_epoch:
        return max_difficulty
    return momentum * previous_threshold + (1 - momentum) * mean_difficulty


def competence(epoch: int, total_epochs: int, initial: float) -> float:
    r"""Platanios et al.'s competence :math:`\min(1, \sqrt{t (1 - c_0^2) / T + c_0^2})` (Table 8).

    >>> competence(0, 10, 0.1), competence(10, 10, 0.1)
    (0.1, 1.0)
    """
    return min(1.0, math.sqrt(epoch * (1 - initial**2) / total_epochs + initial**2))


# -- the plug-in -----------------------------------------------------------------------
#: Options that define the schedule: a resumed run must have the same ones.
_SCHEDULE_KEYS = (
    "epsilon",
    "alpha",
    "regularizer",
    "pacing",
    "max_threshold",
    "ma_momentum",
    "ma_full_epoch",
    "competence_start",
)


class SPCL(TrainerPlugin):
    """Self-paced curriculum over utterances by SPCL difficulty (Algorithm 1).

    Every training batch: the difficulty of each labelled utterance from the model's
    outputs (:func:`spcl_difficulty`), its weight at the epoch's threshold
    (:func:`self_paced_weights`), and the weights the trainer multiplies the
    per-utterance losses by. The threshold follows the pacing function from epoch to epoch.

    Args:
        config: The checked options (default: :class:`SPCLConfig`'s defaults).
    """

    name = "spcl"
    needs_per_modality = True

    def __init__(self, config: SPCLConfig | None = None) -> None:
        self.config = config if config is not None else SPCLConfig()
        self.threshold = float(self.config.epsilon)
        #: Threshold of the next epoch (moving-average and competence pacing), set at epoch end.
        self.next_threshold: float | None = None
        self.last_epoch = -1
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._max_difficulty: Tensor | None = None
        self._difficulties: list[Tensor] = []
        self._stats: dict[str, float] | None = None

    # -- schedule ----------------------------------------------------------------------
    def full_epoch(self, total_epochs: int) -> int:
        """Moving-average pacing's :math:`t_0`."""
        if self.config.ma_full_epoch is not None:
            return int(self.config.ma_full_epoch)
        return max(1, total_epochs // 2)

    def threshold_for_epoch(self, epoch: int, total_epochs: int) -> float:
        r""":math:`\lambda^{(t)}`; data-driven pacings use the state of the previous epoch."""
        c = self.config
        if epoch <= 0:
            return float(c.epsilon)
        if c.pacing == "exponential":
            return exponential_threshold(epoch, c.epsilon, c.alpha, c.max_threshold)
        if c.pacing == "cosine":
            return cosine_threshold(epoch, max(total_epochs, 1), c.epsilon, c.max_threshold)
        if self.next_threshold is None:
            log.warning(
                "spcl: no statistics of epoch %d (a checkpoint without SPCL state?); %s pacing restarts at epsilon=%g",
                epoch - 1,
                c.pacing,
                c.epsilon,
            )
            return float(c.epsilon)
        return float(self.next_threshold)

    # -- hooks -------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer) -> None:
        model = trainer.model
        if self.config.use_conversation_score and len(model.modalities) < 2:
            raise ConfigError(
                f"SPCL's conversation score is a standard deviation over modalities, but the model uses only "
                f"{''.join(model.modalities)}; train on two or more modalities or set "
                "spcl.use_conversation_score=false"
            )
        if self.config.utterance_logits == "unimodal-sum" and not model.fills_unimodal_logits:
            log.info(
                "spcl: %s is not a late-fusion model, so its unimodal logits come from its unimodal heads; the "
                "utterance score is the loss of their sum (eq. 2). spcl.utterance_logits=fused scores the "
                "model's own prediction instead",
                model.model_name,
            )

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.threshold = self.threshold_for_epoch(epoch, trainer.config.epochs)
        self.last_epoch = epoch
        self._reset_epoch()
        log.info("spcl epoch %d: threshold %.4g (%s pacing)", epoch, self.threshold, self.config.pacing)

    def difficulty(self, batch: Batch, output: ModelOutput) -> SPCLDifficulty:
        """The batch's :class:`SPCLDifficulty` under this plug-in's options."""
        if not output.unimodal_logits:
            raise ConfigError(
                "the spcl plug-in needs unimodal logits but the model returned none; use a late-fusion model "
                "or set model.unimodal_heads=true"
            )
        c = self.config
        return spcl_difficulty(
            output.unimodal_logits,
            batch.flat_labels,
            batch.utterance_dialogue,
            batch.batch_size,
            fused_logits=output.logits if c.utterance_logits == "fused" else None,
            use_utterance_score=c.use_utterance_score,
            use_conversation_score=c.use_conversation_score,
            conversation_std=c.conversation_std,
            score_normalisation=c.score_normalisation,
        )

    def utterance_weights(
        self, trainer: Trainer, batch: Batch, output: ModelOutput, utterance_loss: Tensor
    ) -> Tensor | None:
        import torch

        scores = self.difficulty(batch, output)
        labelled = scores.labelled
        v = torch.where(labelled, self_paced_weights(scores.difficulty, self.threshold, self.config.regularizer), 0.0)
        if trainer.model.training:
            self._accumulate(scores, v)
        if self.config.loss_normalisation == "selected":
            selected = v.sum()
            # Eq. 11 per batch: the trainer divides by the labelled count, so scale by n_lab / sum(v);
            # a batch with nothing selected contributes no classification loss.
            scale = torch.where(selected > 0, labelled.sum() / selected.clamp_min(1e-12), 0.0)
            v = v * scale
        return v.to(utterance_loss.dtype).detach()

    def _accumulate(self, scores: SPCLDifficulty, v: Tensor) -> None:
        import torch

        keep = scores.labelled
        rho = scores.difficulty[keep].double()
        parts = {
            "count": keep.sum().double(),
            "selected": v[keep].double().sum(),
            "included": (v[keep] > 0).double().sum(),
            "difficulty": rho.sum(),
        }
        if scores.utterance_score is not None:
            parts["utterance_score"] = scores.utterance_score[keep].double().sum()
        if scores.conversation_score is not None:
            parts["conversation_score"] = scores.conversation_score[keep].double().sum()
        for key, value in parts.items():
            self._sums[key] = self._sums[key] + value if key in self._sums else value
        if rho.numel():
            top = rho.max()
            self._max_difficulty = top if self._max_difficulty is None else torch.maximum(self._max_difficulty, top)
            if self.config.pacing == "competence":
                self._difficulties.append(rho.float().cpu())
        self._stats = None

    def _epoch_stats(self) -> dict[str, float]:
        if self._stats is None:
            sums = {k: float(v) for k, v in self._sums.items()}
            n = sums.get("count", 0.0)
            stats: dict[str, float] = {"labelled_utterances": n}
            if n > 0:
                stats["selected_share"] = sums["selected"] / n
                stats["included_share"] = sums["included"] / n
                stats["mean_difficulty"] = sums["difficulty"] / n
                for key in ("utterance_score", "conversation_score"):
                    if key in sums:
                        stats[f"mean_{key}"] = sums[key] / n
                if self._max_difficulty is not None:
                    stats["max_difficulty"] = float(self._max_difficulty)
            self._stats = stats
        return self._stats

    def on_epoch_end(self, trainer: Trainer, epoch: int, valid_metrics: dict[str, Any]) -> None:
        import torch

        c = self.config
        stats = self._epoch_stats()
        if c.pacing not in ("moving-average", "competence"):
            return
        if "mean_difficulty" not in stats:
            self.next_threshold = self.threshold
        elif c.pacing == "moving-average":
            self.next_threshold = moving_average_threshold(
                epoch + 1,
                self.threshold,
                stats["mean_difficulty"],
                stats["max_difficulty"],
                c.ma_momentum,
                self.full_epoch(trainer.config.epochs),
            )
        else:
            level = competence(epoch + 1, max(trainer.config.epochs, 1), c.competence_start)
            self.next_threshold = float(torch.quantile(torch.cat(self._difficulties).double(), level))
        if not self.next_threshold > 0:
            # Eq. 7 needs lambda > 0; all-zero difficulties (a perfect batch) would give 0.
            self.next_threshold = float(c.epsilon)

    def epoch_metrics(self, trainer: Trainer) -> dict[str, Any]:
        stats = {k: v for k, v in self._epoch_stats().items() if k != "max_difficulty"}
        stats["labelled_utterances"] = int(stats["labelled_utterances"])
        return {"threshold": self.threshold, **stats}

    def state_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "next_threshold": self.next_threshold,
            "last_epoch": self.last_epoch,
            "schedule": {k: getattr(self.config, k) for k in _SCHEDULE_KEYS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("schedule", {})
        ours = {k: getattr(self.config, k) for k in _SCHEDULE_KEYS}
        if saved != ours:
            diff = ", ".join(f"{k}: {saved.get(k)!r} -> {ours[k]!r}" for k in _SCHEDULE_KEYS if saved.get(k) != ours[k])
            raise ConfigError(
                f"the checkpoint's SPCL schedule differs from this run's ({diff}); resume with the original "
                "spcl options or use a new --out"
            )
        self.threshold = float(state["threshold"])
        nxt = state.get("next_threshold")
        self.next_threshold = None if nxt is None else float(nxt)
        self.last_epoch = int(state.get("last_epoch", -1))


def _check_spcl_section(section: dict[str, Any]) -> None:
    check_spcl(section)


@register_plugin(
    "spcl",
    help="SPCL self-paced curriculum (Nguyen et al. 2026): utterance x conversation difficulty, growing threshold",
    group="balance",
    options=(
        PluginOption("spcl-epsilon", "epsilon", float, "SPCL initial threshold epsilon (default 0.8: Table 6)"),
        PluginOption("spcl-alpha", "alpha", float, "SPCL threshold growth alpha > 1 (default 1.1: Table 6)"),
    ),
    check=lambda section: _check_spcl_section(section),
)
def build_spcl(section: dict[str, Any], dataset: MercDataset) -> SPCL | None:
    """Build SPCL from a recipe's ``spcl:`` section (``None`` when ``enabled`` is false).

    Keys: the fields of :class:`SPCLConfig`, checked by :func:`check_spcl`. The paper gives
    no per-dataset values, so ``dataset`` sets nothing (see the module docstring).
    """
    config = check_spcl(section)
    if not config.enabled:
        return None
    return SPCL(config)


__all__ = [
    "CONVERSATION_STDS",
    "LOSS_NORMALISATIONS",
    "PACINGS",
    "REGULARIZERS",
    "SCORE_NORMALISATIONS",
    "SPCL",
    "SPCLConfig",
    "SPCLDifficulty",
    "UTTERANCE_LOGITS",
    "build_spcl",
    "check_spcl",
    "competence",
    "cosine_threshold",
    "exponential_threshold",
    "moving_average_threshold",
    "self_paced_weights",
    "spcl_difficulty",
]
