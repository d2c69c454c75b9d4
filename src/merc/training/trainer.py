"""The one trainer for every merc model.

- Optimiser, schedule, gradient clipping and early stopping from :class:`TrainConfig`;
  Adam/AdamW use PyTorch's fused implementation (same update up to float rounding).
- Float32 by default; ``precision="bf16-mixed"`` autocasts forward and loss to bfloat16.
- Model selection on the validation split only (weighted F1 by default); the test split
  is evaluated once, with the selected weights, by :meth:`Trainer.test`.
- A checkpoint is written atomically after every epoch (model, optimiser, schedule,
  RNG, plug-in state, best weights, history); a killed run resumes where it stopped. The
  checkpoint is the one record of the run: ``best.pt`` is derived from it (rewritten from
  its best weights on resume and at the end of training), so the two never disagree; the
  checkpoint before the last is kept as ``checkpoint.prev.pt``, the fallback when the last
  one is unreadable.
- Plug-in hooks (:class:`merc.training.plugins.base.TrainerPlugin`) at fit start, epoch
  start (curricula choose dialogues), loss reduction (self-paced weights), the backward
  pass itself (one plug-in may compute per-loss gradients instead, e.g. PGM), between
  ``backward()`` and ``optimizer.step()`` (gradient modulation), batch and epoch end.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import numbers
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from merc.data.batching import IGNORE_INDEX, Batch, ConversationTensors, iterate_batches
from merc.errors import CheckpointError, ConfigError, resolve_choice
from merc.evaluation.imbalance import unimodal_summary
from merc.evaluation.metrics import HEADLINE_METRICS, classification_metrics
from merc.models.base import BeforeFuseHook, MercModel
from merc.models.output import ModelOutput
from merc.training.plugins.base import TrainerPlugin
from merc.training.run_folder import atomic_torch_save, load_torch_file, remove_stale_temporaries

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
#: The checkpoint before the last: what a resume falls back to when the last is unreadable.
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
BEST_WEIGHTS = "best.pt"
#: Keys of a checkpoint (:meth:`Trainer._state`); a file without them is not a merc checkpoint.
CHECKPOINT_KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "epoch",
    "best_score",
    "best_epoch",
    "best_state",
    "bad_epochs",
    "history",
    "epoch_seconds",
    "torch_rng",
    "shuffle_rng",
    "plugins",
)
#: ``TrainConfig.device`` types merc trains on.
DEVICE_TYPES = ("cpu", "cuda", "mps")
#: ``TrainConfig.precision`` values: full fp32, or bf16 autocast around forward and loss.
PRECISIONS = ("32", "bf16-mixed")
#: ``TrainConfig.optimizer`` values.
OPTIMIZERS = ("adam", "adamw", "sgd")
#: ``TrainConfig.scheduler`` values.
SCHEDULERS = ("none", "cosine", "step", "plateau")
#: ``TrainConfig.selection_metric`` values: validation metrics where higher is better
#: (selection and the ``plateau`` schedule maximise the metric, so ``loss`` is not one).
SELECTION_METRICS = HEADLINE_METRICS

#: String options with a fixed set of values.
_CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": OPTIMIZERS,
    "scheduler": SCHEDULERS,
    "selection_metric": SELECTION_METRICS,
    "precision": PRECISIONS,
}
#: Numeric options: the test a value must pass and the range as the message states it.
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    # Upper bound: "epochs: 1e30" is a typo, not a plan (early stopping would hide it).
    "epochs": (lambda v: 1 <= v <= 10**6, "an integer in [1, 1000000]"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "step_size": (lambda v: v >= 1, "an integer >= 1"),
    "patience": (lambda v: v >= 0, "an integer >= 0 (0: no early stopping)"),
    "warmup_epochs": (lambda v: v >= 0, "an integer >= 0"),
    # An upper bound: OpenMP starts that many threads, and 10**6 of them stall the machine.
    "num_threads": (lambda v: 0 <= v <= 1024, "an integer in [0, 1024] (0: PyTorch's default)"),
    # A signed 64-bit integer: what torch's generators and the checkpoint's RNG state hold.
    "seed": (lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)"),
    "lr": (lambda v: v > 0, "a finite number > 0"),
    "weight_decay": (lambda v: v >= 0, "a finite number >= 0"),
    "clip_grad_norm": (lambda v: v >= 0, "a finite number >= 0 (0: no clipping)"),
    "gamma": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
}
#: Spellings a boolean option accepts besides YAML's own booleans (case-insensitive).
_TRUE_STRINGS = ("true", "yes", "1")
_FALSE_STRINGS = ("false", "no", "0")


def _to_bool(key: str, value: Any, section: str = "training") -> bool:
    """``value`` as a boolean; a typo such as ``ture`` is an error, not ``False``."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    # Ints too: the override training.show_progress=1 reaches here as YAML's int 1.
    if isinstance(value, (str, int)):
        text = str(value).strip().lower()
        if text in _TRUE_STRINGS:
            return True
        if text in _FALSE_STRINGS:
            return False
    raise ConfigError(f"{section}.{key}={value!r}: expected a boolean (true/false, yes/no or 1/0)")


def _to_int(key: str, value: Any, section: str = "training", expected: str = "an integer") -> int:
    """``value`` as an int; whole floats (``3.0``, ``1e3``) pass, ``2.7`` and booleans do not."""
    number: Any = value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                number = None
    # bool is an int subclass: "epochs: true" would otherwise silently run one epoch.
    if isinstance(number, (bool, np.bool_)) or not isinstance(number, numbers.Real):
        raise ConfigError(f"{section}.{key}={value!r}: expected {expected}")
    if isinstance(number, numbers.Integral):
        return int(number)
    as_float = float(number)
    if not (math.isfinite(as_float) and as_float.is_integer()):
        raise ConfigError(f"{section}.{key}={value!r}: expected {expected}, not a fraction")
    return int(as_float)


def _to_float(key: str, value: Any, section: str = "training", expected: str = "a finite number") -> float:
    """``value`` as a finite float (YAML reads ``3e-4`` as a string, so strings are parsed)."""
    if not isinstance(value, (bool, np.bool_)) and isinstance(value, (numbers.Real, str)):
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
    raise ConfigError(f"{section}.{key}={value!r}: expected {expected}")


def check_option(
    key: str,
    default: Any,
    value: Any,
    section: str = "training",
    ranges: Mapping[str, tuple[Callable[[Any], bool], str]] | None = None,
    choices: Mapping[str, Sequence[str]] | None = None,
) -> Any:
    """``value`` of option ``key`` converted to ``default``'s type and range-checked.

    The one converter of typed recipe options (:class:`TrainConfig` and the ``data``
    section, :class:`merc.training.runner.DataOptions`): integers refuse fractions and
    booleans, numbers refuse NaN and inf, booleans refuse typos, choices list the valid ones.

    Args:
        key: The option's name.
        default: Its default, whose type is the option's type.
        value: The value from the recipe, an override or code.
        section: The recipe section, for the message.
        ranges: ``{key: (test, "what is valid")}`` (default: the training options').
        choices: ``{key: valid strings}`` (default: the training options').

    Returns:
        The converted value (choices normalised, e.g. ``"AdamW"`` -> ``"adamw"``).

    Raises:
        ConfigError: Naming ``<section>.<key>`` and the valid values.
    """
    ranges = _RANGES if ranges is None else ranges
    choices = _CHOICES if choices is None else choices
    expected = ranges[key][1] if key in ranges else None
    converted: Any
    if isinstance(default, bool):  # before int: bool is an int subclass
        converted = _to_bool(key, value, section)
    elif isinstance(default, int):
        converted = _to_int(key, value, section, expected or "an integer")
    elif isinstance(default, float):
        converted = _to_float(key, value, section, expected or "a finite number")
    elif key in choices:
        # str(): YAML reads "precision: 32" as an int.
        converted = resolve_choice(f"{section}.{key}", str(value), list(choices[key]))
    elif isinstance(default, str):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{section}.{key}={value!r}: expected a string")
        converted = str(value)
    else:
        converted = value
    if key in ranges:
        test, expected_text = ranges[key]
        if not test(converted):
            raise ConfigError(f"{section}.{key}={value!r}: expected {expected_text}")
    return converted


def check_device(name: Any, key: str = "training.device") -> str:
    """``name`` as a device string merc can train on, checked before any data loads.

    Raises:
        ConfigError: Not a device (``tpu``), a type merc does not train on (``meta``), or
            CUDA asked for where PyTorch sees none or fewer devices.
    """
    text = str(name).strip()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ConfigError(f"{key}={name!r}: expected cpu, cuda or cuda:N (e.g. --device cpu)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={name!r}: PyTorch sees no CUDA device; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{key}={name!r}: PyTorch sees {torch.cuda.device_count()} CUDA device(s), numbered from 0"
            )
    return text


@dataclass
class TrainConfig:
    """Training hyper-parameters (the ``training`` section of a recipe).

    Args:
        epochs: Maximum number of epochs.
        batch_size: Dialogues per batch.
        lr: Learning rate.
        weight_decay: L2 penalty (AdamW: decoupled).
        optimizer: ``adam``, ``adamw`` or ``sgd``.
        momentum: SGD momentum.
        scheduler: ``none``, ``cosine``, ``step`` or ``plateau`` (on the selection metric).
        step_size: Epochs per decay for ``step``.
        gamma: Decay factor for ``step`` / ``plateau``.
        warmup_epochs: Linear warm-up epochs before the schedule.
        clip_grad_norm: Max global gradient norm; 0 disables clipping.
        patience: Early stopping after this many epochs without a better validation
            score; 0 disables early stopping.
        selection_metric: Validation metric that selects the checkpoint (higher is
            better): ``weighted_f1``, ``accuracy``, ``macro_f1`` or ``ua``.
        class_weighted_loss: Weight the cross-entropy by inverse class frequency.
        eval_batch_size: Dialogues per batch at evaluation.
        device: ``cpu``, ``cuda``, ``cuda:1`` ...
        seed: Seed of parameters, shuffling and dropout.
        num_threads: PyTorch intra-op threads; 0 leaves PyTorch's default. merc's
            default is 1: these models are small, and on a 2-core machine with any other
            load, OpenMP threads spinning against each other made epochs 20-40x slower.
        show_progress: Progress bar over epochs.
        precision: ``"32"`` (default): everything in float32. ``"bf16-mixed"``: the
            model's forward and the loss run under ``torch.autocast(dtype=bfloat16)``
            on the training device, so matrix products (most of a Transformer's
            cost) take bfloat16 inputs with float32 accumulation; parameters,
            gradients and optimiser state stay float32 and logits are cast to
            float32 before the loss and metrics. Why: CPUs with ``avx512_bf16`` /
            AMX (and recent GPUs) multiply bfloat16 several times faster than
            float32, and CORECT's text-only
            iemocap6 epoch is bound by its text Transformer's products (measured by
            ``bench/bench_corect.py``, ``bench/results/corect.json``). Models may keep small parts
            in float32 (:mod:`merc.models.layers.precision`). Opt-in because the
            numerics change: bfloat16 keeps 8 bits of mantissa, so outputs differ
            from float32 runs at about 1e-2 relative and runs are not bitwise
            comparable across precisions. On CPUs without native bfloat16 it is
            slower, not faster.
    """

    epochs: int = 60
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.9
    scheduler: str = "none"
    step_size: int = 10
    gamma: float = 0.5
    warmup_epochs: int = 0
    clip_grad_norm: float = 5.0
    patience: int = 15
    selection_metric: str = "weighted_f1"
    class_weighted_loss: bool = False
    eval_batch_size: int = 64
    device: str = "cpu"
    seed: int = 0
    num_threads: int = 1
    show_progress: bool = True
    precision: str = "32"

    def __post_init__(self) -> None:
        """Convert every field to its type and check its range or choices.

        Here rather than at first use, so that a typo (``optimizer: adan``,
        ``class_weighted_loss: ture``, ``epochs: 2.7``) fails when the recipe is read,
        before any data loads, and a config built in code gets the same checks.

        Raises:
            ConfigError: Naming ``training.<key>`` and its valid values.
        """
        for field in dataclasses.fields(self):
            setattr(self, field.name, check_option(field.name, field.default, getattr(self, field.name)))
        try:
            kind = torch.device(self.device).type
        except (RuntimeError, ValueError, TypeError):
            kind = None
        if kind not in DEVICE_TYPES:
            raise ConfigError(f"training.device={self.device!r}: expected cpu, cuda or cuda:N (e.g. --device cpu)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a recipe's ``training`` section.

        Args:
            data: Option name -> value, as YAML or an override gave it (``"3e-4"``,
                ``"yes"`` and ``3.0`` become ``0.0003``, ``True`` and ``3`` where the
                field is a float, a boolean and an int).

        Returns:
            The validated config.

        Raises:
            ConfigError: An unknown option, or a value of the wrong type or out of range.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"the training section must be a mapping of option: value, not {data!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [str(k) for k in data if k not in names]
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(unknown)}; valid: {', '.join(names)}")
        return cls(**data)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _float_logits(output: ModelOutput) -> ModelOutput:
    """``output`` with float32 logits (as is in fp32; autocast may return bfloat16 ones).

    Losses, plug-ins and metrics then see float32 whatever ``TrainConfig.precision`` is.
    """
    if output.logits.dtype == torch.float32 and all(v.dtype == torch.float32 for v in output.unimodal_logits.values()):
        return output
    return dataclasses.replace(
        output, logits=output.logits.float(), unimodal_logits={m: v.float() for m, v in output.unimodal_logits.items()}
    )


def check_state_dict(model: torch.nn.Module, state: Any) -> None:
    """Raise ``RuntimeError`` unless ``state`` has exactly ``model``'s tensor names and shapes."""
    reference = model.state_dict()
    if not isinstance(state, Mapping):
        raise RuntimeError(f"expected a state dict, got {type(state).__name__}")
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    if missing or unexpected:
        raise RuntimeError(f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")
    for key, value in reference.items():
        other = state[key]
        if not isinstance(other, Tensor) or other.shape != value.shape:
            shape = tuple(other.shape) if isinstance(other, Tensor) else type(other).__name__
            raise RuntimeError(f"{key} has shape {shape}, the model's is {tuple(value.shape)}")


class Trainer:
    """Train one model on one dataset split with validation-based selection.

    Args:
        model: Any registered merc model.
        splits: Tensors of the ``train``, ``valid`` and ``test`` conversations.
        modalities: Modalities fed to the model.
        num_classes: Number of classes.
        config: Training hyper-parameters.
        plugins: Training plug-ins (curriculum, self-paced, gradient modulation ...).
        run_dir: Folder for checkpoints; ``None`` keeps everything in memory.
        label_names: Class names for per-class metrics.
        class_weights: ``[C]`` weights for ``class_weighted_loss``.
    """

    def __init__(
        self,
        model: MercModel,
        splits: dict[str, list[ConversationTensors]],
        modalities: Sequence[str],
        num_classes: int,
        config: TrainConfig | None = None,
        plugins: Sequence[TrainerPlugin] = (),
        run_dir: str | Path | None = None,
        label_names: Sequence[str] | None = None,
        class_weights: np.ndarray | None = None,
    ) -> None:
        self.config = config or TrainConfig()
        if self.config.num_threads > 0:
            torch.set_num_threads(self.config.num_threads)
        self.device = torch.device(self.config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but PyTorch sees no CUDA device; use --device cpu")
        self.model = model.to(self.device)
        self.train_items = splits["train"]
        self.valid_items = splits["valid"]
        self.test_items = splits.get("test", [])
        self.modalities = tuple(modalities)
        self.num_classes = num_classes
        self.label_names = list(label_names) if label_names is not None else None
        self.plugins = list(plugins)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.class_weights = (
            torch.as_tensor(class_weights, dtype=torch.float32, device=self.device)
            if self.config.class_weighted_loss and class_weights is not None
            else None
        )
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler()
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.epoch = 0
        self.best_score = -math.inf
        self.best_epoch = -1
        self.best_state: dict[str, Tensor] | None = None
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.last_loss_terms: dict[str, float] = {}
        #: Each modality's own scores on the last epoch's training batches (see :meth:`train_epoch`).
        self.last_unimodal_train: dict[str, Any] = {}
        probes = {id(p) for p in self.model.probe_parameters()}
        self._clip_groups = [
            group
            for group in (
                [p for p in self.model.parameters() if id(p) not in probes],
                [p for p in self.model.parameters() if id(p) in probes],
            )
            if group
        ]
        self.epoch_seconds: list[float] = []
        #: Epochs restored from a checkpoint by :meth:`try_resume` (0: trained from scratch).
        self.resumed_at_epoch = 0
        self.test_evaluated = False
        self._attach_plugins()

    def _attach_plugins(self) -> None:
        """Check that each plug-in can work with the model; hook before-fuse plug-ins into it.

        At most one plug-in may compute the gradients itself (:meth:`TrainerPlugin.backward`).
        """
        own_backward = [p for p in self.plugins if type(p).backward is not TrainerPlugin.backward]
        if len(own_backward) > 1:
            raise ConfigError(
                f"plug-ins {', '.join(p.name for p in own_backward)} each compute the gradients themselves; use one"
            )
        #: The plug-in that replaces ``loss.backward()`` (``None``: the trainer's own).
        self._backward_plugin: TrainerPlugin | None = own_backward[0] if own_backward else None
        for plugin in self.plugins:
            if plugin.needs_per_modality:
                self.model.require_per_modality(f"per-modality parts, which the {plugin.name} plug-in needs")
                if not self.model.has_unimodal_logits:
                    raise ConfigError(
                        f"the {plugin.name} plug-in needs unimodal logits but {self.model.model_name} was built "
                        "with unimodal_heads=False; set model.unimodal_heads=true"
                    )
            if type(plugin).before_fuse is not TrainerPlugin.before_fuse:
                self.model.register_before_fuse(self._before_fuse_hook(plugin))

    def _before_fuse_hook(self, plugin: TrainerPlugin) -> BeforeFuseHook:
        def hook(batch: Batch, codes: dict[str, Tensor]) -> dict[str, Tensor] | None:
            return plugin.before_fuse(self, batch, codes)

        return hook

    # -- set-up ----------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The precision context of forward passes and losses (``TrainConfig.precision``)."""
        if self.config.precision == "bf16-mixed":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        name = resolve_choice("optimizer", c.optimizer, ["adam", "adamw", "sgd"])
        params = [p for p in self.model.parameters() if p.requires_grad]
        # Fused Adam: one kernel over all parameters instead of ~10 ops per tensor (its
        # share of a CORECT epoch: bench/results/corect_ops.json); the same update up
        # to float rounding (about 1 ulp), not bitwise PyTorch's default loop.
        fused = self.device.type in ("cpu", "cuda")
        if name == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay, fused=fused)
        if name == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay, fused=fused)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def _make_scheduler(self) -> Any:
        c = self.config
        name = resolve_choice("scheduler", c.scheduler, ["none", "cosine", "step", "plateau"])
        warm = max(c.warmup_epochs, 0)

        def warmup(epoch: int) -> float:
            return min(1.0, (epoch + 1) / (warm + 1)) if warm else 1.0

        if name == "cosine":
            span = max(c.epochs - warm, 1)
            return torch.optim.lr_scheduler.LambdaLR(
                self.optimizer,
                lambda e: warmup(e) * (0.5 * (1 + math.cos(math.pi * min(max(e - warm, 0), span) / span))),
            )
        if name == "step":
            return torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda e: warmup(e) * c.gamma ** (max(e - warm, 0) // max(c.step_size, 1))
            )
        if name == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="max", factor=c.gamma, patience=3)
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup)

    # -- checkpoints -----------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "history": json.dumps(self.history),
            "epoch_seconds": self.epoch_seconds,
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": self.generator.get_state(),
            "plugins": json.dumps({p.name: p.state_dict() for p in self.plugins}),
        }

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` atomically, keeping the one before as ``checkpoint.prev.pt``.

        The previous checkpoint is renamed aside before the new one is renamed into
        place; a kill between the two renames leaves only ``checkpoint.prev.pt``, which
        :meth:`try_resume` then reads (the epoch is repeated, exactly).
        """
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = self._state()
        current = self.run_dir / CHECKPOINT
        if current.is_file():
            os.replace(current, self.run_dir / PREVIOUS_CHECKPOINT)
        atomic_torch_save(state, current)

    def save_best(self) -> None:
        """Write ``best.pt`` (the weights selected on validation) from :attr:`best_state`.

        Called after the checkpoint that holds the same weights is written, on resume and
        at the end of :meth:`fit`: ``best.pt`` is always derived from the checkpoint, so a
        kill between the two writes cannot leave a stale ``best.pt`` behind a finished seed.
        """
        if self.run_dir is not None and self.best_state is not None:
            atomic_torch_save(self.best_state, self.run_dir / BEST_WEIGHTS)

    def _read_checkpoint(self, path: Path) -> dict[str, Any]:
        """A checkpoint file checked to be merc's and of this model (else :class:`CheckpointError`)."""
        state = load_torch_file(path, "checkpoint", map_location=self.device)
        if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
            raise CheckpointError(f"{path}: not a merc checkpoint (it lacks the trainer's state)")
        return state

    def _apply_checkpoint(self, path: Path, state: dict[str, Any]) -> None:
        try:
            check_state_dict(self.model, state["model"])
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            epoch, bad_epochs, best_epoch = int(state["epoch"]), int(state["bad_epochs"]), int(state["best_epoch"])
            best_score = float(state["best_score"])
            best_state = state["best_state"]
            if best_state is not None:
                # The selected weights must fit this model too (evaluation loads them).
                check_state_dict(self.model, best_state)
            history = json.loads(state["history"])
            epoch_seconds = [float(x) for x in state["epoch_seconds"]]
            torch_rng = state["torch_rng"].cpu()
            shuffle_rng = state["shuffle_rng"].cpu()
            plugin_states = json.loads(state["plugins"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(
                f"{path}: does not fit {self.model.model_name} with these dims and classes ({first}); "
                "the folder holds another model's checkpoint"
            ) from None
        self.epoch, self.bad_epochs, self.best_epoch = epoch, bad_epochs, best_epoch
        self.best_score, self.best_state = best_score, best_state
        self.history, self.epoch_seconds = history, epoch_seconds
        self.resumed_at_epoch = epoch
        torch.set_rng_state(torch_rng)
        self.generator.set_state(shuffle_rng)
        for p in self.plugins:
            if p.name in plugin_states:
                p.load_state_dict(plugin_states[p.name])

    def try_resume(self) -> bool:
        """Continue from ``run_dir``'s checkpoint if there is one; return whether it did.

        Reads ``checkpoint.pt``, or ``checkpoint.prev.pt`` when the last one is missing
        (a kill between the two renames of :meth:`save_checkpoint`) or unreadable
        (truncated or corrupt: a warning says so and the epoch after the previous
        checkpoint is trained again). ``best.pt`` is then rewritten from the checkpoint.

        Raises:
            CheckpointError: A checkpoint exists but none is readable, or it belongs to
                another model (other dims or classes): the message says what to do.
        """
        if self.run_dir is None:
            return False
        remove_stale_temporaries(self.run_dir)
        candidates = [p for p in (self.run_dir / CHECKPOINT, self.run_dir / PREVIOUS_CHECKPOINT) if p.is_file()]
        if not candidates:
            return False
        errors: list[CheckpointError] = []
        for path in candidates:
            try:
                state = self._read_checkpoint(path)
                self._apply_checkpoint(path, state)
            except CheckpointError as exc:
                errors.append(exc)
                continue
            if errors:
                log.warning("%s; resuming from the previous checkpoint %s instead", errors[0], path.name)
            self.save_best()
            log.info("resumed %s at epoch %d", self.run_dir, self.epoch)
            return True
        raise CheckpointError(
            f"{errors[0]}; no readable checkpoint is left: delete {self.run_dir} to train this seed again, "
            "or rerun with --overwrite"
        )

    # -- training --------------------------------------------------------------------
    def utterance_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Per-utterance cross-entropy ``[N]`` (0 where unlabelled)."""
        return F.cross_entropy(logits, labels, weight=self.class_weights, ignore_index=IGNORE_INDEX, reduction="none")

    def loss_terms(self, batch: Batch, output: ModelOutput) -> dict[str, Tensor]:
        """Every term of the training loss under its name; the loss is their sum.

        ``"classification"``: the cross-entropy of the fused logits, the utterances
        weighted by the product of the plug-ins' :meth:`~TrainerPlugin.utterance_weights`
        (sum over labelled utterances / their count); then the model's
        ``aux_losses`` and the plug-ins' :meth:`~TrainerPlugin.loss_terms`.

        Raises:
            ConfigError: two terms share a name.
        """
        per_utt = self.utterance_loss(output.logits, batch.flat_labels)
        weights: Tensor | None = None
        for plugin in self.plugins:
            w = plugin.utterance_weights(self, batch, output, per_utt)
            if w is not None:
                weights = w if weights is None else weights * w
        if weights is not None:
            per_utt = per_utt * weights
        labelled = batch.flat_labels != IGNORE_INDEX
        terms: dict[str, Tensor] = {"classification": per_utt.sum() / labelled.sum().clamp_min(1)}
        extra = [("the model", output.aux_losses)] + [(p.name, p.loss_terms(self, batch, output)) for p in self.plugins]
        for source, losses in extra:
            for name, value in losses.items():
                if name in terms:
                    raise ConfigError(f"loss term {name!r} of {source} is already defined; rename one of them")
                terms[name] = value.float()
        return terms

    def train_epoch(self) -> float:
        """One epoch over the training dialogues the plug-ins choose; returns the mean loss.

        The mean of every loss term over the epoch's batches is kept in
        :attr:`last_loss_terms` (the history records it).
        """
        self.model.train()
        indices = list(range(len(self.train_items)))
        for plugin in self.plugins:
            indices = plugin.select_training_dialogues(self, self.epoch, indices)
        for plugin in self.plugins:
            plugin.on_epoch_start(self, self.epoch)
        items = [self.train_items[i] for i in indices]
        total, count = 0.0, 0
        term_sums: dict[str, float] = {}
        seen_labels: list[Tensor] = []
        seen_unimodal: dict[str, list[Tensor]] = {}
        for batch in iterate_batches(
            items, self.modalities, self.config.batch_size, shuffle=True, generator=self.generator
        ):
            batch = batch.to(self.device)
            with self.autocast():
                output = _float_logits(self.model(batch))
                terms = self.loss_terms(batch, output)
                loss = torch.stack(list(terms.values())).sum()
            if not torch.isfinite(loss):
                bad = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {self.epoch} ({bad}); lower training.lr or check the data"
                )
            self.optimizer.zero_grad(set_to_none=True)
            if self._backward_plugin is None or not self._backward_plugin.backward(self, batch, output, terms):
                loss.backward()
            for plugin in self.plugins:
                plugin.after_backward(self, batch, output)
            if self.config.clip_grad_norm > 0:
                # Probes are clipped on their own: their gradients must not shrink the model's.
                for group in self._clip_groups:
                    torch.nn.utils.clip_grad_norm_(group, self.config.clip_grad_norm)
            self.optimizer.step()
            value = float(loss.detach())
            for plugin in self.plugins:
                plugin.on_batch_end(self, batch, output, value)
            total += value * batch.batch_size
            count += batch.batch_size
            for name, term in terms.items():
                term_sums[name] = term_sums.get(name, 0.0) + float(term.detach()) * batch.batch_size
            if output.unimodal_logits:
                keep = batch.flat_labels != IGNORE_INDEX
                seen_labels.append(batch.flat_labels[keep].cpu())
                for m, lg in output.unimodal_logits.items():
                    seen_unimodal.setdefault(m, []).append(lg.detach()[keep].float().cpu())
        self.last_loss_terms = {name: v / max(count, 1) for name, v in term_sums.items()}
        # Each modality's own accuracy / w-F1 / true-class score on the epoch's training
        # batches as they were trained (dropout on, weights moving): free, unlike a second
        # pass over the training split, and what SPCL Fig. 7 and Ada2I Fig. 5 plot.
        self.last_unimodal_train = (
            unimodal_summary(
                {m: torch.cat(v).numpy() for m, v in seen_unimodal.items()},
                torch.cat(seen_labels).numpy(),
                self.num_classes,
            )
            if seen_labels
            else {}
        )
        return total / max(count, 1)

    @torch.no_grad()
    def predict(self, items: Sequence[ConversationTensors]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predicted labels, true labels and logits of all labelled utterances of ``items``."""
        preds, labels, logits, _ = self._predict_with_unimodal(items, unimodal=False)
        return preds, labels, logits

    @torch.no_grad()
    def _predict_with_unimodal(
        self, items: Sequence[ConversationTensors], unimodal: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """:meth:`predict` plus, if asked and the model has them, the unimodal logits ``{m: [N, C]}``."""
        self.model.eval()
        labels: list[Tensor] = []
        logits: list[Tensor] = []
        per_modality: dict[str, list[Tensor]] = {}
        for batch in iterate_batches(items, self.modalities, self.config.eval_batch_size):
            batch = batch.to(self.device)
            with self.autocast():
                output = self.model(batch)
            y = batch.flat_labels
            keep = y != IGNORE_INDEX
            logits.append(output.logits[keep].float().cpu())
            labels.append(y[keep].cpu())
            if unimodal:
                for m, lg in output.unimodal_logits.items():
                    per_modality.setdefault(m, []).append(lg[keep].float().cpu())
        logit_arr = torch.cat(logits).numpy() if logits else np.zeros((0, self.num_classes), np.float32)
        label_arr = torch.cat(labels).numpy() if labels else np.zeros(0, np.int64)
        preds = logit_arr.argmax(1) if len(logit_arr) else np.zeros(0, np.int64)
        return preds, label_arr, logit_arr, {m: torch.cat(v).numpy() for m, v in per_modality.items()}

    def evaluate(self, items: Sequence[ConversationTensors], unimodal: bool = False) -> dict[str, Any]:
        """Metrics of the current weights on ``items``.

        Args:
            items: The split's conversations.
            unimodal: Also score each modality's own unimodal logits (models that have
                them): ``metrics["unimodal"] = {m: {"accuracy", "weighted_f1", "score",
                "ratio"}}`` (:func:`merc.evaluation.imbalance.unimodal_summary`).
        """
        preds, labels, logits, per_modality = self._predict_with_unimodal(items, unimodal)
        metrics = classification_metrics(labels, preds, self.num_classes, self.label_names)
        if len(labels):
            metrics["loss"] = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
        if per_modality:
            summary = unimodal_summary(per_modality, labels, self.num_classes)
            if summary:
                metrics["unimodal"] = summary
        return metrics

    def fit(self) -> dict[str, Any]:
        """Train until ``epochs`` or early stopping; return the best validation metrics."""
        c = self.config
        self.try_resume()
        for plugin in self.plugins:
            plugin.on_fit_start(self)
        bar = tqdm(
            total=c.epochs,
            initial=self.epoch,
            desc=f"train seed {c.seed}",
            disable=not c.show_progress,
            leave=False,
            dynamic_ncols=True,
        )
        while self.epoch < c.epochs and not (c.patience and self.bad_epochs >= c.patience):
            start = time.perf_counter()
            train_loss = self.train_epoch()
            valid = self.evaluate(self.valid_items, unimodal=True)
            valid_unimodal = valid.pop("unimodal", {})
            score = float(valid[c.selection_metric])
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(score)
            else:
                self.scheduler.step()
            improved = score > self.best_score
            if improved:
                self.best_score, self.best_epoch, self.bad_epochs = score, self.epoch, 0
                self.best_state = {k: v.detach().clone().cpu() for k, v in self.model.state_dict().items()}
            else:
                self.bad_epochs += 1
            for plugin in self.plugins:
                plugin.on_epoch_end(self, self.epoch, valid)
            self.epoch_seconds.append(time.perf_counter() - start)
            plugin_metrics = {p.name: m for p in self.plugins if (m := p.epoch_metrics(self))}
            self.history.append(
                {
                    "epoch": self.epoch,
                    "train_loss": train_loss,
                    "valid_loss": valid.get("loss"),
                    "train_loss_terms": dict(self.last_loss_terms),
                    "valid_weighted_f1": valid["weighted_f1"],
                    "valid_accuracy": valid["accuracy"],
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "seconds": self.epoch_seconds[-1],
                    **({"plugins": plugin_metrics} if plugin_metrics else {}),
                    **(
                        {"unimodal": {"train": self.last_unimodal_train, "valid": valid_unimodal}}
                        if self.last_unimodal_train or valid_unimodal
                        else {}
                    ),
                }
            )
            self.epoch += 1
            self.save_checkpoint()
            if improved:
                self.save_best()
            bar.update(1)
            bar.set_postfix(
                loss=f"{train_loss:.3f}",
                valid_wf1=f"{valid['weighted_f1']:.2f}",
                best=f"{self.best_score:.2f}@{self.best_epoch}",
            )
        bar.close()
        if self.best_state is None:
            raise RuntimeError("no epoch was trained (training.epochs must be >= 1)")
        self.save_best()
        return {"best_epoch": self.best_epoch, "best_valid_score": self.best_score, "epochs_run": self.epoch}

    def load_best(self) -> None:
        if self.best_state is None:
            raise RuntimeError("call fit() before using the selected weights")
        self.model.load_state_dict(copy.deepcopy(self.best_state))

    def test(self, unimodal: bool = False) -> dict[str, Any]:
        """Evaluate the selected (best-validation) weights on the test split, once.

        ``unimodal``: in the same pass, also score each modality's unimodal logits
        (see :meth:`evaluate`), so that the split is still touched once.
        """
        if self.test_evaluated:
            raise RuntimeError("the test split is evaluated once per run; re-score a finished run with `merc evaluate`")
        self.load_best()
        self.test_evaluated = True
        return self.evaluate(self.test_items, unimodal=unimodal)


__all__ = [
    "BEST_WEIGHTS",
    "CHECKPOINT",
    "PRECISIONS",
    "PREVIOUS_CHECKPOINT",
    "TrainConfig",
    "Trainer",
    "check_device",
    "check_option",
    "seed_everything",
]
