r"""PGM: the Pareto gradient modulator of CSS, as a trainer plug-in for any model with several losses.

Lyu, Xiong, Chen, Wang, Dai, Wang. "Cross-Space Synergy: A Unified Framework for
Multimodal Emotion Recognition in Conversation." AAAI 2026 (arXiv 2512.03521; code:
``m1iz/CSS``). CSS trains three objectives at once (the fused cross-entropy
:math:`\mathcal{L}_1`, the unimodal cross-entropies :math:`\mathcal{L}_2`, the
distillation KL :math:`\mathcal{L}_3`, :mod:`merc.models.css`) and steers each update
along a Pareto-stationary direction of them instead of their plain sum. Per batch, with
:math:`g_i = \nabla_{\theta_s}\mathcal{L}_i` the gradient of task :math:`i` on the
*shared* parameters :math:`\theta_s` (:meth:`merc.models.MercModel.shared_parameters`)
and :math:`\hat g_i = g_i / (\lVert g_i\rVert_2 + 10^{-8})` (the paper normalises;
``normalize: false`` uses :math:`g_i`):

.. math::
    Q = \hat G \hat G^\top,\qquad
    \gamma^\star = \arg\min_{\gamma\in\Delta}\ \tfrac12\,\gamma^\top Q\gamma,\qquad
    \Delta = \{\gamma \succeq 0,\ \mathbf 1^\top\gamma = 1\}

the min-norm point of the convex hull of the task gradients (MGDA, Sener & Koltun,
NeurIPS 2018). Its direction :math:`d = \sum_i\gamma_i\hat g_i` has
:math:`\langle d, \hat g_i\rangle \ge \lVert d\rVert^2 \ge 0` for every task (the KKT
conditions of the QP): it drops the components along which the tasks conflict, and it
is zero exactly when no direction improves every task (Pareto stationarity).

The QP is solved exactly for two tasks (closed form, :func:`two_task_weight`) and three
(:func:`three_task_weights`: the stationary point of the simplex's affine hull if it lies
inside, else the best of the three edges), and by Frank-Wolfe with exact line search
beyond (:func:`frank_wolfe_weights`). The authors' code calls SciPy's SLSQP on the 3x3
problem; the minimiser is the same.

What is written into ``.grad`` (the plug-in replaces the trainer's ``loss.backward()``
through :meth:`~merc.training.plugins.base.TrainerPlugin.backward`; one
``autograd.grad`` per task):

- shared parameters, ``direction``:

  - ``loss_weights`` (default; the paper's "final losses after PGM" and the authors'
    code, where :math:`\gamma` weights the losses): :math:`\sum_i \gamma_i g_i`, the
    *unnormalised* gradients weighted by the QP's :math:`\gamma` (with
    ``normalize: true`` the weights come from the normalised gradients, so the
    conflict-free guarantee above holds for the normalised set, not always for this sum);
  - ``min_norm``: the min-norm point itself, :math:`\sum_i\gamma_i\hat g_i`
    (:math:`\sum_i\gamma_i g_i` when ``normalize: false``, where both options coincide);

- every other trainable parameter, ``non_shared``: ``sum`` (default) the plain sum
  :math:`\sum_i g_i` (task-specific parameters answer to their own losses); ``weighted``:
  :math:`\sum_i\gamma_i g_i`, what the authors' code does (its ``total_loss.backward()``
  reaches every parameter).

Choices where the paper and code leave room:

- The tasks (``tasks``): by default the trainer's ``classification`` term and every
  auxiliary loss the model returns (``ModelOutput.aux_losses``), except the base class's
  ``unimodal_probe`` (heads on detached codes, no gradient on shared parameters). For
  CSS that is :math:`\mathcal{L}_1`, ``unimodal`` (:math:`\mathcal{L}_2`) and
  ``distillation`` (:math:`\mathcal{L}_3`), the paper's three. A list names a subset.
  Loss terms that are not tasks (other plug-ins' terms, aux losses left out) are added
  with weight 1 to every parameter.
- A task whose shared gradient is zero on a batch (e.g. a loss that does not reach the
  shared parameters) would be the QP's trivial optimum (:math:`d = 0`): it is left out of
  that batch's QP and added with weight 1. With fewer than two tasks left the batch gets
  the plain sum.
- PGM acts in training only (the authors' evaluation loop also solves the QP, unused).
- Class weights of the classification term (``training.class_weighted_loss``) stay in
  that term.

A model with one loss only (``classification``) is refused with a
:class:`~merc.errors.ConfigError` at the first batch, as is a ``tasks`` name that is no
loss term. Cost: one backward pass per task instead of one.

Recipe section (defaults shown; ``merc train ... --balance pgm`` sets ``pgm.enabled=true``)::

    pgm: {tasks: null, normalize: true, direction: loss_weights, non_shared: sum, max_iter: 1000, tol: 1.0e-10}

Epoch metrics (``history.json``, ``plugins.pgm``): ``weights`` (mean :math:`\gamma` per
task over the epoch's batches), ``min_cosine`` (mean over batches of the smallest
pairwise cosine between task gradients; negative: conflict) and ``conflict_share``
(share of batches with a negative one). PGM keeps no state between batches, so its
checkpoint state is empty.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from merc.errors import ConfigError
from merc.training.plugins.base import TrainerPlugin
from merc.training.plugins.modality_balance import GROUP, _check_section, _EpochMeans, _Option
from merc.training.plugins.registry import register_plugin

# Torch-free at import: ``merc --help`` builds the ``--balance`` switch from this module.
if TYPE_CHECKING:
    from torch import Tensor

    from merc.data.batching import Batch
    from merc.data.schema import MercDataset
    from merc.models.output import ModelOutput
    from merc.training.trainer import Trainer

DIRECTIONS = ("loss_weights", "min_norm")
NON_SHARED = ("sum", "weighted")
#: Aux losses that never are tasks by default: heads on detached codes.
NOT_TASKS = frozenset({"unimodal_probe"})
#: Added to a gradient's norm before normalising (the authors' code).
_NORM_EPS = 1e-8
#: A shared gradient at most this norm counts as zero (its task leaves the QP).
_ZERO_NORM = 1e-12


# -- the min-norm QP on the simplex -----------------------------------------------------
def _objective(gram: np.ndarray, weights: np.ndarray) -> float:
    return float(weights @ gram @ weights)


def two_task_weight(q11: float, q12: float, q22: float) -> float:
    r"""Weight :math:`\gamma` of task 1 minimising :math:`\lVert\gamma g_1 + (1-\gamma) g_2\rVert^2`.

    .. math:: \gamma = \mathrm{clip}\Big(\frac{Q_{22} - Q_{12}}{Q_{11} - 2Q_{12} + Q_{22}}, 0, 1\Big)

    (``1/2`` when the two gradients are equal: every point is optimal).

    >>> two_task_weight(1.0, -1.0, 1.0), two_task_weight(1.0, 0.0, 4.0), two_task_weight(1.0, 2.0, 4.0)
    (0.5, 0.8, 1.0)
    """
    denominator = q11 - 2.0 * q12 + q22
    if denominator <= 1e-18:
        return 0.5
    return float(min(1.0, max(0.0, (q22 - q12) / denominator)))


def three_task_weights(gram: np.ndarray) -> np.ndarray:
    r"""The exact min-norm weights of three tasks.

    The QP is convex, so its minimiser is the stationary point of the plane
    :math:`\mathbf 1^\top\gamma = 1` (:math:`Q\gamma = \mu\mathbf 1`, a 4x4 linear system,
    least squares when :math:`Q` is singular) if that point is feasible, else it lies on
    an edge of the simplex, where :func:`two_task_weight` is exact; the best candidate is
    returned.

    Shapes:
        - gram ``[3, 3]`` -> ``[3]``
    """
    candidates = []
    kkt = np.zeros((4, 4))
    kkt[:3, :3] = gram
    kkt[:3, 3] = -1.0
    kkt[3, :3] = 1.0
    rhs = np.array([0.0, 0.0, 0.0, 1.0])
    solution, *_ = np.linalg.lstsq(kkt, rhs, rcond=None)
    interior = solution[:3]
    if np.allclose(kkt @ solution, rhs, atol=1e-9) and (interior >= -1e-12).all():
        interior = np.clip(interior, 0.0, None)
        candidates.append(interior / interior.sum())
    for i, j in itertools.combinations(range(3), 2):
        edge = np.zeros(3)
        edge[i] = two_task_weight(gram[i, i], gram[i, j], gram[j, j])
        edge[j] = 1.0 - edge[i]
        candidates.append(edge)
    return min(candidates, key=lambda w: _objective(gram, w))


def frank_wolfe_weights(gram: np.ndarray, max_iter: int = 1000, tol: float = 1e-10) -> np.ndarray:
    r"""Min-norm weights of any number of tasks by Frank-Wolfe with away steps and exact line search.

    From the uniform weights, each step either moves towards the vertex :math:`e_t`,
    :math:`t = \arg\min_t (Q\gamma)_t` (the Frank-Wolfe step of MGDA's solver), or away from
    the worst vertex in use, :math:`s = \arg\max_{s:\gamma_s>0} (Q\gamma)_s`, whichever gap is
    larger, by the step that minimises the quadratic along that line. Away steps let a
    weight reach exactly 0, so the method converges linearly where plain Frank-Wolfe
    zigzags towards an optimum on a face of the simplex (Lacoste-Julien & Jaggi, NeurIPS
    2015). Stops when the duality gap :math:`\gamma^\top Q\gamma - (Q\gamma)_t` (an upper
    bound on the objective's distance to the optimum) is at most ``tol``, or after
    ``max_iter`` steps.

    Shapes:
        - gram ``[T, T]`` -> ``[T]``
    """
    tasks = gram.shape[0]
    weights = np.full(tasks, 1.0 / tasks)
    for _ in range(max_iter):
        product = gram @ weights
        current = float(weights @ product)
        toward = int(np.argmin(product))
        forward_gap = current - float(product[toward])
        if forward_gap <= tol:
            break
        support = np.flatnonzero(weights > 0)
        away = int(support[np.argmax(product[support])])
        if forward_gap >= float(product[away]) - current or weights[away] >= 1.0:
            direction = -weights.copy()
            direction[toward] += 1.0
            longest = 1.0
        else:
            direction = weights.copy()
            direction[away] -= 1.0
            longest = float(weights[away] / (1.0 - weights[away]))
        curvature = float(direction @ gram @ direction)
        slope = float(direction @ product)
        step = longest if curvature <= 1e-18 else min(longest, max(0.0, -slope / curvature))
        weights = weights + step * direction
        weights[np.abs(weights) < 1e-15] = 0.0
        if step == longest and direction[away] < 0 and longest < 1.0:
            weights[away] = 0.0  # a drop step: the away vertex leaves the support exactly
        weights = np.clip(weights, 0.0, None)
        weights /= weights.sum()
    return weights


def min_norm_weights(gram: np.ndarray, max_iter: int = 1000, tol: float = 1e-10) -> np.ndarray:
    r"""Weights :math:`\gamma\in\Delta` minimising :math:`\gamma^\top Q\gamma` (module docstring).

    Exact for one to three tasks, Frank-Wolfe beyond.

    >>> min_norm_weights(np.array([[1.0, -1.0], [-1.0, 1.0]])).tolist()
    [0.5, 0.5]
    """
    gram = np.asarray(gram, dtype=np.float64)
    tasks = gram.shape[0]
    if gram.shape != (tasks, tasks) or tasks == 0:
        raise ValueError(f"min_norm_weights needs a square Gram matrix, got shape {gram.shape}")
    if tasks == 1:
        return np.ones(1)
    if tasks == 2:
        first = two_task_weight(gram[0, 0], gram[0, 1], gram[1, 1])
        return np.array([first, 1.0 - first])
    if tasks == 3:
        return three_task_weights(gram)
    return frank_wolfe_weights(gram, max_iter, tol)


# -- the plug-in ---------------------------------------------------------------------------
class ParetoGradientModulation(TrainerPlugin):
    r"""PGM (CSS, AAAI 2026): min-norm loss weights on the shared parameters' per-task gradients.

    See the module docstring for the QP, the written gradients and the choices made.

    Args:
        tasks: Names of the loss terms to balance; ``None``: ``classification`` and every
            model aux loss except ``unimodal_probe``.
        normalize: Solve the QP on L2-normalised gradients (paper: true).
        direction: ``"loss_weights"`` (paper, authors' code) or ``"min_norm"``.
        non_shared: ``"sum"`` (default) or ``"weighted"`` (authors' code).
        max_iter: Frank-Wolfe steps (four tasks or more).
        tol: Frank-Wolfe duality-gap tolerance.

    Shapes:
        - per task: the gradients of :meth:`~merc.models.MercModel.shared_parameters`
        - Gram matrix ``[T, T]``; weights ``[T]``
    """

    name = "pgm"

    def __init__(
        self,
        tasks: Sequence[str] | None = None,
        normalize: bool = True,
        direction: str = "loss_weights",
        non_shared: str = "sum",
        max_iter: int = 1000,
        tol: float = 1e-10,
    ) -> None:
        if direction not in DIRECTIONS:
            raise ConfigError(f"pgm.direction={direction!r}: choose one of {', '.join(DIRECTIONS)}")
        if non_shared not in NON_SHARED:
            raise ConfigError(f"pgm.non_shared={non_shared!r}: choose one of {', '.join(NON_SHARED)}")
        if tasks is not None and len(set(tasks)) != len(tasks):
            raise ConfigError(f"pgm.tasks={list(tasks)!r} names a task twice")
        self.tasks = None if tasks is None else tuple(tasks)
        self.normalize = bool(normalize)
        self.direction = direction
        self.non_shared = non_shared
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self._checked = False
        self._shared_ids: set[int] = set()
        self._means = _EpochMeans()
        self._batches = 0
        self._conflicts = 0
        #: The weights of the last balanced batch (task -> gamma), for inspection and tests.
        self.last_weights: dict[str, float] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        self._shared_ids = {id(p) for p in trainer.model.shared_parameters()}
        if not self._shared_ids:
            raise ConfigError(f"pgm: {trainer.model.model_name} declares no shared parameters to balance")

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._means.reset()
        self._batches = self._conflicts = 0

    def task_names(self, terms: Mapping[str, Tensor], output: ModelOutput) -> list[str]:
        """The tasks of a batch, in the terms' order (see ``tasks``)."""
        if self.tasks is None:
            return [n for n in terms if n == "classification" or (n in output.aux_losses and n not in NOT_TASKS)]
        return [n for n in terms if n in self.tasks]

    def _check_first_batch(self, trainer: Trainer, batch: Batch, terms: Mapping[str, Tensor], tasks: list[str]) -> None:
        if self.tasks is not None:
            unknown = [t for t in self.tasks if t not in terms]
            if unknown:
                raise ConfigError(
                    f"pgm.tasks names {', '.join(unknown)}, which {trainer.model.model_name} does not return; "
                    f"its loss terms: {', '.join(terms)}"
                )
        if len(tasks) < 2 and bool((batch.flat_labels >= 0).any()):
            raise ConfigError(
                f"pgm balances several losses, but {trainer.model.model_name} trains with "
                f"{', '.join(repr(t) for t in tasks) or 'no task'} only (loss terms: {', '.join(terms)}); use a model "
                "with auxiliary losses (e.g. css) or one with flowing unimodal heads (model.unimodal_loss_weight > 0)"
            )
        self._checked = True

    def backward(self, trainer: Trainer, batch: Batch, output: ModelOutput, terms: dict[str, Tensor]) -> bool:
        import torch

        tasks = self.task_names(terms, output)
        if not self._checked:
            self._check_first_batch(trainer, batch, terms, tasks)
        if len(tasks) < 2:
            return False
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        shared = [k for k, p in enumerate(params) if id(p) in self._shared_ids]
        fixed = [n for n in terms if n not in tasks]
        sources: list[Tensor] = [terms[n] for n in tasks]
        if fixed:
            sources.append(torch.stack([terms[n] for n in fixed]).sum())
        # One backward pass per task (and one for the fixed terms), the graph kept in between.
        grads: list[list[Tensor | None]] = []
        for k, source in enumerate(sources):
            if not source.requires_grad:  # a constant term (e.g. a loss switched off by its weight)
                grads.append([None] * len(params))
                continue
            grads.append(
                list(torch.autograd.grad(source, params, retain_graph=k < len(sources) - 1, allow_unused=True))
            )
        task_grads, fixed_grads = grads[: len(tasks)], (grads[len(tasks)] if fixed else None)

        gram = torch.zeros(len(tasks), len(tasks), dtype=torch.float64)
        for k in shared:
            stacked = [g[k] for g in task_grads]
            if all(g is None for g in stacked):
                continue
            ref = next(g for g in stacked if g is not None)
            flat = torch.stack([(g if g is not None else torch.zeros_like(ref)).flatten().double() for g in stacked])
            gram += (flat @ flat.T).cpu()
        norms = gram.diagonal().clamp_min(0).sqrt()
        balanced = [i for i in range(len(tasks)) if float(norms[i]) > _ZERO_NORM]
        weights = torch.ones(len(tasks), dtype=torch.float64)  # tasks outside the QP: weight 1
        scales = torch.ones(len(tasks), dtype=torch.float64)
        if len(balanced) >= 2:
            sub = gram[balanced][:, balanced]
            if self.normalize:
                inv = 1.0 / (norms[balanced] + _NORM_EPS)
                sub = sub * inv[:, None] * inv[None, :]
                if self.direction == "min_norm":
                    scales[balanced] = inv
            gamma = min_norm_weights(sub.numpy(), self.max_iter, self.tol)
            weights[balanced] = torch.from_numpy(gamma)
            self._record(
                [tasks[i] for i in balanced],
                gamma,
                sub.numpy() if self.normalize else _cosines(sub.numpy()),
            )
        shared_coef = (weights * scales).tolist()
        other_coef = weights.tolist() if self.non_shared == "weighted" else [1.0] * len(tasks)
        shared_set = set(shared)
        for k, p in enumerate(params):
            coef = shared_coef if k in shared_set else other_coef
            total: Tensor | None = None
            for c, g in zip(coef, task_grads, strict=True):
                grad = g[k]
                if grad is not None:
                    total = grad * c if total is None else total + grad * c
            extra = fixed_grads[k] if fixed_grads is not None else None
            if extra is not None:
                total = extra if total is None else total + extra
            if total is not None:
                p.grad = total.to(p.dtype)
        return True

    def _record(self, tasks: list[str], gamma: np.ndarray, cosines: np.ndarray) -> None:
        self.last_weights = {t: float(w) for t, w in zip(tasks, gamma, strict=True)}
        self._means.add("weights", self.last_weights)
        off = cosines[~np.eye(len(tasks), dtype=bool)]
        smallest = float(off.min())
        self._means.add("min_cosine", smallest)
        self._batches += 1
        self._conflicts += int(smallest < 0)

    def epoch_metrics(self, trainer: Trainer) -> dict[str, Any]:
        out = self._means.result()
        if self._batches:
            out["conflict_share"] = self._conflicts / self._batches
        return out


def _cosines(gram: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None)) + _NORM_EPS
    return gram / norms[:, None] / norms[None, :]


# -- options and registration ---------------------------------------------------------------
def _tasks(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"pgm.tasks={value!r}: expected a list of loss-term names (e.g. [classification, unimodal])")
    return tuple(value)


def check_pgm(section: Mapping[str, Any]) -> dict[str, Any]:
    """The ``pgm:`` section's options, checked (module docstring); ``tasks`` as a tuple or ``None``."""
    opts = _check_section(
        "pgm",
        section,
        {
            "tasks": _Option(None, nullable=True),
            "normalize": _Option(True),
            "direction": _Option("loss_weights", choices=DIRECTIONS),
            "non_shared": _Option("sum", choices=NON_SHARED),
            "max_iter": _Option(1000, lambda v: 1 <= v <= 10**7, "an integer in [1, 10000000]"),
            "tol": _Option(1e-10, lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0"),
        },
    )
    opts["tasks"] = _tasks(opts["tasks"])
    if opts["tasks"] is not None and len(set(opts["tasks"])) != len(opts["tasks"]):
        raise ConfigError(f"pgm.tasks={list(opts['tasks'])!r} names a task twice")
    return opts


def _check_pgm_section(section: dict[str, Any]) -> None:
    check_pgm(section)


@register_plugin(
    "pgm",
    help="PGM (CSS, AAAI 2026): Pareto min-norm weights of the model's losses on its shared parameters",
    group=GROUP,
    check=_check_pgm_section,
)
def build_pgm(section: dict[str, Any], dataset: MercDataset) -> ParetoGradientModulation | None:
    """The PGM plug-in of a recipe's ``pgm:`` section (``None`` when ``enabled: false``)."""
    opts = check_pgm(section)
    if not opts.pop("enabled"):
        return None
    return ParetoGradientModulation(**opts)


__all__ = [
    "DIRECTIONS",
    "NON_SHARED",
    "ParetoGradientModulation",
    "build_pgm",
    "check_pgm",
    "frank_wolfe_weights",
    "min_norm_weights",
    "three_task_weights",
    "two_task_weight",
]
