"""Hyper-parameter search on validation (Optuna), then one honest final run.

``merc tune`` searches recipe values (any ``section.key``: a plug-in's, the model's or
the trainer's) with Optuna's TPE sampler. Every trial trains the recipe with the sampled
values for the trial seeds and scores the best validation value of the recipe's selection
metric (``training.selection_metric``), averaged over those seeds; **no trial touches the
test split**. The best values then make one ordinary run (:func:`run_experiment`, into
``OUT/best``) over the final seeds, which is evaluated on the test split once.

What a search space looks like (``--param`` or a preset in ``configs/tune/<name>.yaml``)::

    spcl.epsilon=0.6:1.2             # float, uniform in [0.6, 1.2]
    training.lr=1e-4:3e-4:log        # float, log-uniform
    model.num_layers=1:4             # int (both bounds integers)
    spcl.regularizer=hard,linear     # one of the listed values

The study lives in ``OUT/study.journal`` (Optuna's journal file): an interrupted search is
continued by repeating the command; completed trials are kept, a trial cut off mid-way is
marked failed and sampled again. ``OUT/tune.json`` holds the space, every trial's values
and validation scores, the best values and the final run's summary; ``OUT/tune.png`` plots
the validation score against each searched value.

SPCL's Table 2 gives the ranges its authors searched (epsilon in [0.6, 1.2], alpha in
[1.05, 1.4], learning rate in [1e-4, 3e-4]): ``configs/tune/spcl.yaml``.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from merc.config import configs_dir
from merc.errors import ConfigError, RunFolderError
from merc.evaluation.tables import TUNE_SUMMARY, TUNED_RUN

if TYPE_CHECKING:
    import optuna

    from merc.data.schema import MercDataset

log = logging.getLogger(__name__)

STUDY_FILE = "study.journal"
SPEC_FILE = "tune_spec.json"
PLOT_FILE = "tune.png"
STUDY_NAME = "merc-tune"

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


@dataclass(frozen=True)
class SearchParameter:
    """One searched recipe value.

    Attributes:
        key: Dotted recipe key, e.g. ``"spcl.epsilon"``.
        kind: ``"float"``, ``"int"`` or ``"categorical"``.
        low, high: Bounds of a number (inclusive).
        log: Sample a number log-uniformly (positive bounds).
        choices: The values of a categorical parameter (YAML scalars).
    """

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @classmethod
    def parse(cls, text: str) -> SearchParameter:
        """``KEY=LOW:HIGH[:log]`` (a number range) or ``KEY=A,B,...`` (choices).

        Raises:
            ConfigError: No ``=``, a key that is not ``section.key``, an empty or reversed
                range, a log range that is not positive, fewer than two choices.
        """
        key, sep, spec = text.partition("=")
        key, spec = key.strip(), spec.strip()
        if not sep or not spec:
            raise ConfigError(f"search parameter {text!r}: expected KEY=LOW:HIGH[:log] or KEY=A,B,...")
        if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)+", key):
            raise ConfigError(f"search parameter {text!r}: the key must be section.key, e.g. spcl.epsilon")
        if key.split(".")[0] == "data":
            raise ConfigError(
                f"search parameter {text!r}: data.* options change the data every trial loads; search "
                "model, training or plug-in values"
            )
        match = re.fullmatch(rf"({_NUMBER}):({_NUMBER})(:log)?", spec)
        if match:
            low_text, high_text, log_flag = match.groups()
            is_int = all(re.fullmatch(r"[-+]?\d+", t) for t in (low_text, high_text))
            low, high = float(low_text), float(high_text)
            if not low < high:
                raise ConfigError(f"search parameter {text!r}: LOW must be below HIGH")
            if log_flag and low <= 0:
                raise ConfigError(f"search parameter {text!r}: a log range needs LOW > 0")
            return cls(key, "int" if is_int else "float", low, high, bool(log_flag))
        choices = tuple(yaml.safe_load(c.strip()) for c in spec.split(","))
        if len(choices) < 2 or len(set(map(repr, choices))) != len(choices):
            raise ConfigError(
                f"search parameter {text!r}: expected LOW:HIGH[:log] (numbers) or two or more distinct choices A,B,..."
            )
        return cls(key, "categorical", choices=choices)

    def describe(self) -> str:
        """The parameter as :meth:`parse` reads it."""
        if self.kind == "categorical":
            return f"{self.key}={','.join(map(str, self.choices))}"
        low, high = _bound(self, self.low), _bound(self, self.high)
        return f"{self.key}={low}:{high}{':log' if self.log else ''}"

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value of this parameter."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


def as_overrides(values: Mapping[str, Any]) -> list[str]:
    """``{"spcl.epsilon": 0.7}`` as recipe overrides (``spcl.epsilon=0.7``; YAML scalars)."""
    return [f"{key}={json.dumps(value) if isinstance(value, str) else value}" for key, value in values.items()]


def preset_path(name: str) -> Path:
    return configs_dir() / "tune" / f"{name}.yaml"


def load_preset(name_or_path: str) -> tuple[list[SearchParameter], list[str]]:
    """A search preset: ``configs/tune/<name>.yaml`` or a YAML file.

    The file holds ``params:`` (``{key: "LOW:HIGH[:log]" | [choices]}``) and optionally
    ``overrides:`` (recipe overrides every trial and the final run take, e.g. the plug-in's
    ``spcl.enabled=true``).

    Raises:
        ConfigError: No such preset, or a malformed one.
    """
    path = Path(name_or_path)
    if not path.is_file():
        path = preset_path(name_or_path)
    if not path.is_file():
        known = sorted(p.stem for p in (configs_dir() / "tune").glob("*.yaml"))
        raise ConfigError(f"no search preset {name_or_path!r} (presets: {', '.join(known) or 'none'}; or a YAML file)")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    params = data.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{path}: expected a non-empty 'params:' mapping of key: LOW:HIGH[:log] or [choices]")
    parsed = [
        SearchParameter.parse(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}") for k, v in params.items()
    ]
    overrides = data.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"{path}: 'overrides:' must be a list of section.key=value strings")
    return parsed, list(overrides)


def _check_spec(out: Path, spec: dict[str, Any]) -> None:
    path = out / SPEC_FILE
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored != spec:
            changed = sorted(k for k in set(stored) | set(spec) if stored.get(k) != spec.get(k))
            raise RunFolderError(
                f"{out} holds a search with other settings ({', '.join(changed)}); choose another --out"
            )


def tune(
    model: str,
    dataset: str | MercDataset,
    modalities: str,
    out_dir: str | Path,
    params: Sequence[SearchParameter],
    trials: int = 20,
    trial_seeds: Sequence[int] = (0,),
    final_seeds: Sequence[int] = (0, 1, 2),
    overrides: Sequence[str] = (),
    recipe_path: str | Path | None = None,
    data_root: str | Path | None = None,
    device: str | None = None,
    sampler_seed: int = 0,
    show_progress: bool = True,
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Search ``params`` on validation, then train the best values over ``final_seeds``.

    Args:
        model, dataset, modalities: As for :func:`merc.training.runner.run_experiment`.
        out_dir: Search folder: ``study.journal``, ``tune_spec.json``, ``tune.json``,
            ``tune.png`` and the final run folder ``best/``.
        params: The searched values.
        trials: Completed trials wanted in the study (a resumed search adds the missing ones).
        trial_seeds: Seeds each trial trains (its score: their mean best validation value).
        final_seeds: Seeds of the final run with the best values (empty: no final run).
        overrides: Recipe overrides of every trial and of the final run.
        sampler_seed: Seed of the TPE sampler (the search is reproducible given it).
        show_progress: Progress bars while training.
        report: Called with one line per finished trial (``merc tune`` prints them).

    Returns:
        The ``tune.json`` content.

    Raises:
        ConfigError: A bad parameter, override or seed (checked before any data loads).
        RunFolderError: ``out_dir`` holds another search, or is in use.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from merc.data.schema import parse_modalities
    from merc.training.run_folder import RunLock, atomic_write_json, prepare_out_dir
    from merc.training.runner import check_seeds, resolve_recipe, run_experiment

    if not params:
        raise ConfigError("nothing to search: give --param KEY=LOW:HIGH or --space PRESET")
    if len({p.key for p in params}) != len(params):
        raise ConfigError("a search parameter is given twice")
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    mods = "".join(parse_modalities(modalities))
    dataset_name = dataset if isinstance(dataset, str) else dataset.name
    trial_seeds = check_seeds(trial_seeds, "--trial-seeds")
    final_seeds = check_seeds(final_seeds, "--seeds") if final_seeds else []
    # Every corner of the space must make a valid recipe: checked before any data loads.
    for corner in _corners(params):
        resolve_recipe(model, dataset_name, [*overrides, *as_overrides(corner)], recipe_path)
    selection_metric = resolve_recipe(model, dataset_name, overrides, recipe_path)["training"].get(
        "selection_metric", "weighted_f1"
    )
    spec = {
        "model": model,
        "dataset": dataset_name,
        "modalities": mods,
        "params": [p.describe() for p in params],
        "overrides": list(overrides),
        "recipe": str(recipe_path) if recipe_path else None,
        "trial_seeds": list(trial_seeds),
        "sampler_seed": sampler_seed,
    }
    out = Path(out_dir)
    prepare_out_dir(out)
    with RunLock(out):
        _check_spec(out, spec)
        atomic_write_json(out / SPEC_FILE, spec)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = JournalStorage(JournalFileBackend(str(out / STUDY_FILE)))
        study = optuna.create_study(
            study_name=STUDY_NAME,
            storage=storage,
            direction="maximize",
            load_if_exists=True,
        )
        # Offset by the trials the study holds: a continued search must not replay the
        # random start-up draws of the first part (a fresh search is reproducible from
        # sampler_seed alone).
        study.sampler = optuna.samplers.TPESampler(seed=sampler_seed + len(study.trials))
        _fail_interrupted(study)
        previous_final = _previous_final_overrides(out)
        objective = _Objective(model, dataset, mods, params, trial_seeds, overrides, recipe_path, data_root, device)
        done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        for _ in range(max(0, trials - done)):
            trial = study.ask()
            values = {p.key: p.suggest(trial) for p in params}
            shown = ", ".join(f"{k}={format_value(v)}" for k, v in values.items())
            log.info("trial %d: %s", trial.number, shown)
            try:
                score, record = objective(values, show_progress)
            except BaseException:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            for key, value in record.items():
                trial.set_user_attr(key, value)
            study.tell(trial, score)
            if report is not None:
                report(f"trial {trial.number}: {shown} -> valid {selection_metric} {score:.2f}")
        summary = summarise_study(study, params, selection_metric, spec)
        atomic_write_json(out / TUNE_SUMMARY, summary)
        plot_study(summary, out / PLOT_FILE)
    if final_seeds:
        best_overrides = [*overrides, *as_overrides(summary["best"]["params"])]
        # A continued search can find better values: the final run of the old ones is replaced.
        stale = previous_final is not None and previous_final != best_overrides
        if stale:
            log.warning("the best values changed since the last final run: %s is trained again", out / TUNED_RUN)
        # Recorded before the run starts, so that a continued search knows what an
        # interrupted final run was training.
        summary["final"] = {"run": TUNED_RUN, "overrides": best_overrides, "seeds": list(final_seeds)}
        with RunLock(out):
            atomic_write_json(out / TUNE_SUMMARY, summary)
        results = run_experiment(
            model,
            dataset,
            mods,
            final_seeds,
            out / TUNED_RUN,
            data_root=data_root,
            overrides=best_overrides,
            recipe_path=recipe_path,
            device=device,
            show_progress=show_progress,
            overwrite=stale,
        )
        summary["final"].update(test=results["test"], valid=results["valid"])
        with RunLock(out):
            atomic_write_json(out / TUNE_SUMMARY, summary)
    return summary


def _previous_final_overrides(out: Path) -> list[str] | None:
    """The overrides of the final run a previous search wrote into ``tune.json`` (``None``: none)."""
    try:
        final = json.loads((out / TUNE_SUMMARY).read_text(encoding="utf-8")).get("final")
    except (OSError, ValueError):
        return None
    return list(final["overrides"]) if isinstance(final, dict) and "overrides" in final else None


def _corners(params: Sequence[SearchParameter]) -> list[dict[str, Any]]:
    """Recipes that together hold every bound and every choice of ``params``."""
    low = {p.key: p.choices[0] if p.kind == "categorical" else _bound(p, p.low) for p in params}
    high = {p.key: p.choices[-1] if p.kind == "categorical" else _bound(p, p.high) for p in params}
    middle = [{**low, p.key: c} for p in params if p.kind == "categorical" for c in p.choices[1:-1]]
    return [low, high, *middle]


def _bound(p: SearchParameter, value: float | None) -> Any:
    assert value is not None
    return int(value) if p.kind == "int" else value


def format_value(value: Any) -> str:
    """A searched value as the trial lines show it (floats to 4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _fail_interrupted(study: optuna.Study) -> None:
    """Mark trials an interrupted search left running as failed (they are sampled anew)."""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        log.warning("trial %d was cut off by an interrupted search; it is marked failed", trial.number)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


class _Objective:
    """Trains one trial's recipe for each trial seed; the data loads once per search."""

    def __init__(
        self,
        model: str,
        dataset: str | MercDataset,
        modalities: str,
        params: Sequence[SearchParameter],
        seeds: Sequence[int],
        overrides: Sequence[str],
        recipe_path: str | Path | None,
        data_root: str | Path | None,
        device: str | None,
    ) -> None:
        self.model, self.dataset, self.modalities = model, dataset, modalities
        self.params, self.seeds, self.overrides = params, list(seeds), list(overrides)
        self.recipe_path, self.data_root, self.device = recipe_path, data_root, device
        self._prepared: tuple[Any, Any] | None = None

    def _data(self, recipe: dict[str, Any], show_progress: bool) -> tuple[Any, Any]:
        if self._prepared is None:
            from merc.data.batching import to_tensors
            from merc.training.data_checks import DataOptions, check_trainable
            from merc.training.runner import load_run_data, prepare_dataset

            raw = load_run_data(self.dataset, self.modalities, self.data_root, show_progress)
            check_trainable(raw, DataOptions.from_recipe(recipe))
            data = prepare_dataset(raw, self.modalities, recipe)
            self._prepared = (data, to_tensors(data))
        return self._prepared

    def __call__(self, values: Mapping[str, Any], show_progress: bool) -> tuple[float, dict[str, Any]]:
        from merc.training.runner import fit_seed, resolve_recipe

        name = self.dataset if isinstance(self.dataset, str) else self.dataset.name
        recipe = resolve_recipe(self.model, name, [*self.overrides, *as_overrides(values)], self.recipe_path)
        data, tensors = self._data(recipe, show_progress)
        scores, epochs = [], []
        start = time.perf_counter()
        for seed in self.seeds:
            trainer, _ = fit_seed(data, tensors, self.model, recipe, seed, None, self.device, show_progress)
            scores.append(float(trainer.best_score))
            epochs.append(int(trainer.best_epoch))
        record = {"valid_per_seed": scores, "best_epochs": epochs, "seconds": time.perf_counter() - start}
        return statistics.fmean(scores), record


def summarise_study(
    study: optuna.Study, params: Sequence[SearchParameter], metric: str, spec: Mapping[str, Any]
) -> dict[str, Any]:
    """``tune.json``: the search's settings, its completed trials and the best one."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    rows = [
        {
            "number": t.number,
            "params": {p.key: t.params[p.key] for p in params},
            "valid": t.value,
            **{k: t.user_attrs[k] for k in ("valid_per_seed", "best_epochs", "seconds") if k in t.user_attrs},
        }
        for t in complete
    ]
    if not rows:
        raise RunFolderError("the search has no completed trial")
    best = max(rows, key=lambda r: (r["valid"], -r["number"]))
    return {
        **spec,
        "objective": f"valid {metric}, mean over trial seeds (best epoch of each); the test split is not used",
        "trials": rows,
        "failed_trials": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials),
        "best": {"number": best["number"], "params": best["params"], "valid": best["valid"]},
    }


def plot_study(summary: Mapping[str, Any], path: str | Path) -> Path:
    """One panel per searched value: each trial's validation score against it, the best marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = summary["trials"]
    keys = list(rows[0]["params"])
    fig = Figure(figsize=(4.2 * len(keys), 3.4))
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        xs = [r["params"][key] for r in rows]
        ys = [r["valid"] for r in rows]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        positions = xs if numeric else [sorted(set(map(str, xs))).index(str(x)) for x in xs]
        ax.scatter(positions, ys, c=[r["number"] for r in rows], cmap="viridis", s=28)
        best = summary["best"]
        bx = best["params"][key] if numeric else sorted(set(map(str, xs))).index(str(best["params"][key]))
        ax.scatter([bx], [best["valid"]], marker="*", s=180, c="crimson", label="best")
        if not numeric:
            ax.set_xticks(range(len(set(map(str, xs)))), sorted(set(map(str, xs))))
        ax.set_xlabel(key)
        if i == 0:
            ax.set_ylabel("validation score (%)")
            ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{summary['model']} on {summary['dataset']} ({summary['modalities']}): {len(rows)} trials")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
