"""Multi-seed experiments: recipe -> dataset -> model -> Trainer -> results.json.

``run_experiment`` is what ``merc train`` calls. The run folder holds the resolved recipe
(``config.yaml``), its fingerprint (``fingerprint.json``: model, modalities, seeds,
result-deciding recipe, dataset hash; :mod:`merc.training.run_folder`), one folder per
seed (checkpoint, selected weights, history, metrics) and ``results.json`` with test and
validation mean ± std over seeds. Finished seeds are skipped and unfinished ones resume
from their checkpoint, so a killed run is continued by repeating the command; the same
folder with other settings or other data is refused.

``protocol="loso"`` (``merc train --protocol loso``) runs leave-one-session-out
cross-validation instead of the dataset's own splits (:mod:`merc.data.protocols`): one
folder ``fold_<k>/`` per held-out session, each with the ``seed_<s>/`` folders and a
``results.json`` of that fold, ``folds.json`` with every fold's dialogue ids, and a
``results.json`` pooling every (fold, seed) run (:func:`summarise_loso`). Finished seeds
of finished or unfinished folds are reused in the same way.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import numbers
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from merc.config import apply_overrides, check_model_ranges, load_recipe, load_yaml, save_yaml
from merc.data.batching import ConversationTensors, sequence_dims, to_tensors
from merc.data.protocols import (
    DEFAULT_SPLIT_SEED,
    DEFAULT_VALID_SHARE,
    PROTOCOLS,
    Fold,
    check_valid_share,
    fold_dataset,
    folds_record,
    session_folds,
)
from merc.data.registry import (
    dataset_recipe_defaults,
    get_dataset_spec,
    is_dataset_path,
    load_dataset,
    split_sequence_request,
)
from merc.data.schema import MercDataset, class_weights, parse_modalities
from merc.data.transforms import STANDARDIZE_EPS, feature_statistics, standardize_features
from merc.errors import CheckpointError, ConfigError, MercError, RunFolderError, resolve_choice
from merc.evaluation.aggregate import aggregate_seeds
from merc.evaluation.imbalance import plot_imbalance
from merc.evaluation.metrics import HEADLINE_METRICS
from merc.features.spec import feature_specs
from merc.models.base import MercModel
from merc.models.registry import build_model, check_model_arguments, get_model_class
from merc.training.data_checks import DataOptions, check_trainable
from merc.training.plugins.registry import build_plugins, check_plugin_sections, fill_dataset_defaults
from merc.training.run_folder import (
    FINGERPRINT_FILE,
    FOLD_PREFIX,
    FOLDS_FILE,
    IMBALANCE_PLOT,
    RunLock,
    atomic_write_json,
    clear_run_folder,
    fingerprint_differences,
    input_record,
    is_run_folder,
    load_torch_file,
    prepare_out_dir,
    read_fingerprint,
    read_input_record,
    remove_stale_temporaries,
    removed_if_left_empty,
    result_config,
    run_fingerprint,
    write_input_record,
)
from merc.training.trainer import (
    BEST_WEIGHTS,
    TrainConfig,
    Trainer,
    check_device,
    check_state_dict,
    seed_everything,
)

log = logging.getLogger(__name__)


def _write_json(data: Any, path: Path) -> None:
    atomic_write_json(path, data)


def model_for(dataset: MercDataset, model_name: str, model_args: dict[str, Any]) -> MercModel:
    """Build ``model_name`` for ``dataset``'s facts (dims, classes, speakers).

    A model whose constructor has a ``sequence_dims`` parameter (a token/frame-level
    model) also gets ``{modality: d'}`` of the dataset's sequences
    (:func:`merc.data.batching.sequence_dims`; ``{}`` when it carries none, which the
    model may refuse).

    Raises:
        ConfigError: The constructor refuses the options for these facts (a constraint
            that depends on the data, e.g. heads that do not divide a dim).
    """
    facts: dict[str, Any] = {}
    if "sequence_dims" in inspect.signature(get_model_class(model_name).__init__).parameters:
        facts["sequence_dims"] = sequence_dims(dataset)
    try:
        return build_model(
            model_name,
            in_dims=dataset.dims,
            num_classes=dataset.num_classes,
            num_speakers=dataset.num_speakers,
            num_parties=dataset.max_parties,
            **facts,
            **model_args,
        )
    except MercError:
        raise
    except (ValueError, TypeError, RuntimeError, AssertionError, ArithmeticError, MemoryError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        options = ", ".join(f"model.{k}={v!r}" for k, v in model_args.items()) or "its default options"
        raise ConfigError(
            f"{model_name} cannot be built with {options} for dataset {dataset.name!r} ({first}); change the model options"
        ) from None


def prepare_dataset(
    dataset: str | MercDataset,
    modalities: Sequence[str],
    recipe: dict[str, Any],
    data_root: str | Path | None = None,
    show_progress: bool = True,
) -> MercDataset:
    """Load (or narrow) the dataset and apply the recipe's data transforms.

    ``data.standardize`` (default true): z-score each modality with training-split
    statistics (see :mod:`merc.data.transforms`).
    """
    data = load_run_data(dataset, modalities, data_root, show_progress)
    if standardizes(recipe):
        data = standardize_features(data, statistics=training_statistics(data))
    return data


def training_statistics(dataset: MercDataset) -> dict[str, tuple[Any, Any]]:
    """``{modality: (mean [d], std [d])}`` of the training split, as standardisation uses them
    (:func:`merc.data.transforms.feature_statistics`; recorded in the run folder)."""
    return {m: feature_statistics(dataset, m, "train") for m in dataset.modalities}


def standardizes(recipe: dict[str, Any]) -> bool:
    """Whether the recipe z-scores features with training statistics (``data.standardize``, default true)."""
    return DataOptions.from_recipe(recipe).standardize


def resolve_recipe(
    model: str, dataset: str, overrides: Sequence[str] = (), recipe_path: str | Path | None = None
) -> dict[str, Any]:
    """The recipe of ``model`` x ``dataset`` with ``overrides``, plug-in sections filled with
    the dataset's defaults (:attr:`merc.data.registry.DatasetSpec.recipe_defaults`), checked
    before any data loads."""
    recipe = apply_overrides(load_recipe(model, dataset, recipe_path), overrides)
    fill_dataset_defaults(recipe, dataset_recipe_defaults(dataset))
    # Fail early on a bad option: types, ranges and choices of every core section.
    TrainConfig.from_dict(recipe.get("training", {}))
    recipe["model"] = check_model_arguments(model, recipe.get("model") or {})
    check_model_ranges(recipe["model"])
    DataOptions.from_recipe(recipe)
    check_plugin_sections(recipe)
    return recipe


def fit_seed(
    dataset: MercDataset,
    tensors: dict[str, list[ConversationTensors]],
    model_name: str,
    recipe: dict[str, Any],
    seed: int,
    seed_dir: Path | None = None,
    device: str | None = None,
    show_progress: bool = True,
) -> tuple[Trainer, dict[str, Any]]:
    """Build ``model_name`` and its plug-ins from ``recipe`` and train one seed, selecting on
    validation (:meth:`Trainer.fit`); the test split is not touched.

    Returns:
        The trainer (``best_score``, ``best_epoch``, ``history``; :meth:`Trainer.load_best`
        restores the selected weights) and what ``fit`` returned.
    """
    train_cfg = dict(recipe.get("training", {}))
    train_cfg["seed"] = seed
    train_cfg.setdefault("show_progress", show_progress)
    if device is not None:
        train_cfg["device"] = device
    config = TrainConfig.from_dict(train_cfg)
    seed_everything(seed)
    model = model_for(dataset, model_name, dict(recipe.get("model", {})))
    plugins = build_plugins(recipe, dataset)
    trainer = Trainer(
        model,
        tensors,
        dataset.modalities,
        dataset.num_classes,
        config,
        plugins=plugins,
        run_dir=seed_dir,
        label_names=dataset.label_names,
        class_weights=class_weights(dataset),
    )
    return trainer, trainer.fit()


def train_one_seed(
    dataset: MercDataset,
    tensors: dict[str, list[ConversationTensors]],
    model_name: str,
    recipe: dict[str, Any],
    seed: int,
    seed_dir: Path | None,
    device: str | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train, select on validation, test once; return this seed's metrics."""
    start = time.perf_counter()
    trainer, fit = fit_seed(dataset, tensors, model_name, recipe, seed, seed_dir, device, show_progress)
    trainer.load_best()
    # The selected weights' unimodal scores come with the same passes (models with
    # unimodal logits): what each modality's own head achieves inside the joint model.
    valid = trainer.evaluate(trainer.valid_items, unimodal=True)
    test = trainer.test(unimodal=True)
    result = {
        "seed": seed,
        **fit,
        "valid": valid,
        "test": test,
        "epoch_seconds": trainer.epoch_seconds,
        # This run's wall time plus the epochs an earlier, interrupted run trained.
        "seconds": time.perf_counter() - start + sum(trainer.epoch_seconds[: trainer.resumed_at_epoch]),
        "resumed_at_epoch": trainer.resumed_at_epoch,
        "num_parameters": sum(p.numel() for p in trainer.model.parameters()),
    }
    if seed_dir is not None:
        _write_json(trainer.history, seed_dir / "history.json")
        _write_json(result, seed_dir / "metrics.json")
    return result


def seed_seconds(result: Mapping[str, Any]) -> float:
    """Seconds one seed took over all the runs that trained it (older metrics: its epochs' sum)."""
    seconds = result.get("seconds")
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds):
        return float(seconds)
    return float(sum(result.get("epoch_seconds") or []))


#: What results.json aggregates of each modality's own head (see Trainer.evaluate).
UNIMODAL_KEYS = ("accuracy", "weighted_f1", "score", "ratio")


def unimodal_aggregate(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{split: {m: {key: {"mean", "std", "per_seed"}}}}`` of the seeds' unimodal scores.

    Only splits and modalities every seed scored (older metrics have none).
    """
    out: dict[str, dict[str, Any]] = {}
    for split in ("test", "valid"):
        per_modality = [r.get(split, {}).get("unimodal") or {} for r in per_seed]
        common = [m for m in (per_modality[0] if per_modality else {}) if all(m in u for u in per_modality)]
        if common:
            out[split] = {m: aggregate_seeds([u[m] for u in per_modality], keys=UNIMODAL_KEYS) for m in common}
    return out


def summarise(
    per_seed: list[dict[str, Any]],
    total_seconds: float,
    reused_seeds: Sequence[int] = (),
    resumed_seeds: Sequence[int] = (),
) -> dict[str, Any]:
    """The aggregate part of ``results.json``.

    Args:
        per_seed: Each seed's ``metrics.json`` content.
        total_seconds: Seconds this invocation spent on the seeds.
        reused_seeds: Seeds finished by an earlier run and reused as they were.
        resumed_seeds: Seeds continued from an earlier run's checkpoint.

    ``timing.total_seconds`` covers the whole run, earlier interrupted parts included:
    this invocation's time plus what the reused seeds and the resumed seeds' restored
    epochs took before.
    """
    epoch_secs = [s for r in per_seed for s in r.get("epoch_seconds", [])]
    earlier = sum(seed_seconds(r) for r in per_seed if r["seed"] in reused_seeds)
    earlier += sum(
        sum((r.get("epoch_seconds") or [])[: int(r.get("resumed_at_epoch") or 0)])
        for r in per_seed
        if r["seed"] in resumed_seeds
    )
    unimodal = unimodal_aggregate(per_seed)
    return {
        "test": aggregate_seeds([r["test"] for r in per_seed]),
        "valid": aggregate_seeds([r["valid"] for r in per_seed]),
        **({"unimodal": unimodal} if unimodal else {}),
        "timing": {
            "total_seconds": total_seconds + earlier,
            "this_run_seconds": total_seconds,
            "epoch_seconds_median": statistics.median(epoch_secs) if epoch_secs else None,
            "reused_seeds": list(reused_seeds),
            "resumed_seeds": list(resumed_seeds),
        },
        "per_seed": [
            {
                "seed": r["seed"],
                "best_epoch": r["best_epoch"],
                "epochs_run": r["epochs_run"],
                "test_weighted_f1": r["test"]["weighted_f1"],
                "valid_weighted_f1": r["valid"]["weighted_f1"],
            }
            for r in per_seed
        ],
    }


def check_seeds(seeds: Sequence[Any], what: str = "--seeds") -> list[int]:
    """The seeds of a run: a set of integers in ``[0, 2**63)``, in the order given.

    Raises:
        ConfigError: No seed, a seed that is not such an integer, or a seed given twice
            (it would count one run twice in the mean and std).
    """
    out: list[int] = []
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**63:
            raise ConfigError(f"{what}: {seed!r} is not an integer in [0, 2**63)")
        if int(seed) in out:
            raise ConfigError(f"{what}: seed {int(seed)} is given twice; seeds are a set, e.g. --seeds 0,1,2")
        out.append(int(seed))
    if not out:
        raise ConfigError("no seeds given; e.g. --seeds 0,1,2")
    return out


def load_run_data(
    dataset: str | MercDataset, mods: Sequence[str], data_root: str | Path | None, show_progress: bool
) -> MercDataset:
    """A registered dataset (or path) loaded with ``mods``, or a loaded one restricted to them."""
    if isinstance(dataset, str):
        return load_dataset(dataset, modalities=mods, data_root=data_root, show_progress=show_progress)
    return dataset.with_modalities(mods)


def _finished_seed(seed_dir: Path, seed: int) -> dict[str, Any] | None:
    """``seed_dir/metrics.json`` of a finished seed, or ``None`` (not finished, or unreadable).

    An unreadable or incomplete ``metrics.json`` (or a missing ``best.pt``) is removed
    with a warning: the seed is then finished again from its checkpoint, which re-scores
    the same selected weights.
    """
    path = seed_dir / "metrics.json"
    if not path.is_file():
        return None
    problem = None
    try:
        result = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        problem, result = f"unreadable ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})", None
    if problem is None and not _valid_metrics(result, seed):
        problem = "incomplete or not this seed's"
    if problem is None and not (seed_dir / BEST_WEIGHTS).is_file():
        problem = f"without its {BEST_WEIGHTS}"
    if problem is None:
        return result
    log.warning("%s is %s; finishing seed %d again from its checkpoint", path, problem, seed)
    path.unlink()
    return None


def _valid_metrics(result: Any, seed: int) -> bool:
    def scores(split: Any) -> bool:
        return isinstance(split, dict) and all(
            isinstance(split.get(k), (int, float)) and not isinstance(split.get(k), bool) and math.isfinite(split[k])
            for k in HEADLINE_METRICS
        )

    return (
        isinstance(result, dict)
        and result.get("seed") == seed
        and isinstance(result.get("best_epoch"), int)
        and isinstance(result.get("epochs_run"), int)
        and scores(result.get("test"))
        and scores(result.get("valid"))
    )


def normalised_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """``recipe`` with its ``training`` and ``data`` options as the run uses them (converted,
    defaults filled), so that spellings of one value (``yes`` / ``true``, ``3.0`` / ``3``)
    make one fingerprint."""
    out = {key: value for key, value in recipe.items()}
    out["training"] = vars(TrainConfig.from_dict(recipe.get("training") or {}))
    data = dict(recipe.get("data") or {})
    out["data"] = {**data, **vars(DataOptions.from_recipe(recipe))}
    return out


def _stored_fingerprint(out: Path) -> dict[str, Any] | None:
    """The fingerprint of what ``out`` holds: ``fingerprint.json``, or one rebuilt from the
    ``config.yaml`` of a run folder written before fingerprints existed (no dataset part)."""
    stored = read_fingerprint(out)
    if stored is not None:
        return stored
    if (out / "config.yaml").is_file():
        previous = load_yaml(out / "config.yaml")
        info = previous.get("data") or {}
        return {
            "model": info.get("model_name"),
            "modalities": info.get("modalities"),
            "seeds": sorted(info.get("seeds") or []),
            "config": result_config(normalised_recipe(previous)),
            "dataset_arg": info.get("dataset_arg"),
        }
    if is_run_folder(out):
        raise RunFolderError(
            f"{out} holds run files but no {FINGERPRINT_FILE} or config.yaml, so what they are cannot be checked; "
            "choose another --out, or --overwrite to discard them"
        )
    return None


def _refuse_mismatch(out: Path, stored: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    diffs = fingerprint_differences(stored, current)
    if diffs:
        raise RunFolderError(
            f"{out} holds a run with other settings ({'; '.join(diffs[:4])}"
            f"{f'; and {len(diffs) - 4} more' if len(diffs) > 4 else ''}); "
            "choose another --out, or rerun with --overwrite to discard it"
        )


def run_experiment(
    model: str,
    dataset: str | MercDataset,
    modalities: str = "t",
    seeds: Sequence[int] = (0,),
    out_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    overrides: Sequence[str] = (),
    recipe_path: str | Path | None = None,
    device: str | None = None,
    show_progress: bool = True,
    overwrite: bool = False,
    protocol: str = "split",
    valid_share: float = DEFAULT_VALID_SHARE,
) -> dict[str, Any]:
    """Train ``model`` on ``dataset`` for every seed and aggregate.

    Everything is checked before any data loads (recipe values, seeds, device, what the
    run folder already holds), the dataset before any epoch (:func:`check_trainable`).
    The run folder is locked while the run works in it (:class:`RunLock`) and carries a
    fingerprint (:mod:`merc.training.run_folder`): rerunning the same command resumes
    it, reusing finished seeds; any other settings or data are refused.

    Args:
        model: Registered model name.
        dataset: Registered dataset name, or a loaded :class:`MercDataset`.
        modalities: e.g. ``"tav"``.
        seeds: One run per seed (a set: no seed twice); mean ± std over them.
        out_dir: Run folder (``None``: nothing written).
        data_root: Folder with the real corpora (see ``merc.data.registry``).
        overrides: ``section.key=value`` recipe overrides.
        recipe_path: Explicit recipe instead of ``configs/<model>/<dataset>.yaml``.
        device: Overrides ``training.device``.
        show_progress: Progress bars.
        overwrite: Discard what ``out_dir`` holds (only a run folder's files) and start afresh.
        protocol: ``"split"`` (default): the dataset's own train/valid/test splits.
            ``"loso"``: leave-one-session-out cross-validation, every seed trained once
            per fold (:mod:`merc.data.protocols`, :func:`summarise_loso`); needs
            dialogues with sessions (IEMOCAP).
        valid_share: ``loso`` only: share of each training session's dialogues held out
            for validation (default 0.1; the draw is fixed, the same for every seed and
            model).

    Returns:
        The ``results.json`` content.

    Raises:
        ConfigError: A bad recipe value, seed or device.
        DataError: Data merc cannot train on.
        RunFolderError: ``out_dir`` holds another run, is in use, or cannot be written.
    """
    mods = parse_modalities(modalities)
    seeds = check_seeds(seeds)
    protocol_record = protocol_options(protocol, valid_share)
    dataset_name = dataset if isinstance(dataset, str) else dataset.name
    recipe = resolve_recipe(model, dataset_name, overrides, recipe_path)
    if device is not None:
        check_device(device, "--device")
        recipe.setdefault("training", {})["device"] = device
    else:
        check_device(recipe.get("training", {}).get("device", "cpu"))
    options = DataOptions.from_recipe(recipe)
    recipe.setdefault("data", {}).update(
        {"dataset_arg": dataset_name, "modalities": "".join(mods), "seeds": list(seeds), "model_name": model}
    )
    run = _run
    if protocol_record is not None:
        recipe["data"]["protocol"] = dict(protocol_record)
        run = _run_loso
        if isinstance(dataset, str):
            check_sessions(dataset, data_root)
    out = Path(out_dir) if out_dir is not None else None
    if out is None:
        return run(model, dataset, mods, seeds, None, recipe, options, data_root, device, show_progress)
    created = prepare_out_dir(out)
    with removed_if_left_empty(out, created), RunLock(out):
        remove_stale_temporaries(out)
        if overwrite and is_run_folder(out):
            clear_run_folder(out)
        stored = _stored_fingerprint(out)
        if stored is not None:
            _refuse_mismatch(
                out,
                stored,
                run_fingerprint(model, "".join(mods), seeds, normalised_recipe(recipe), None, protocol_record),
            )
            if "dataset" not in stored and stored.get("dataset_arg") != dataset_name:
                raise RunFolderError(
                    f"{out} holds a run on dataset {stored.get('dataset_arg')!r}, not {dataset_name!r}; "
                    "choose another --out, or rerun with --overwrite to discard it"
                )
        return run(model, dataset, mods, seeds, out, recipe, options, data_root, device, show_progress, stored)


def _run(
    model: str,
    dataset: str | MercDataset,
    mods: Sequence[str],
    seeds: list[int],
    out: Path | None,
    recipe: dict[str, Any],
    options: DataOptions,
    data_root: str | Path | None,
    device: str | None,
    show_progress: bool,
    stored: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    raw = load_run_data(dataset, mods, data_root, show_progress)
    check_trainable(raw, options)
    recipe["data"]["dataset"] = raw.name
    stats = training_statistics(raw) if options.standardize else None
    data = standardize_features(raw, statistics=stats) if stats is not None else raw
    # Built once before anything is written: options that the constructor or a plug-in
    # refuses for this data fail here, not after the run folder records a run.
    model_for(data, model, dict(recipe.get("model") or {}))
    build_plugins(recipe, data)
    if out is not None:
        fingerprint = run_fingerprint(model, "".join(mods), seeds, normalised_recipe(recipe), raw)
        if stored is not None:
            _refuse_mismatch(out, stored, fingerprint)
            if "dataset" not in stored:
                log.warning("%s was written before run fingerprints: its data cannot be checked", out)
        if stored is None or "dataset" not in stored:
            atomic_write_json(out / FINGERPRINT_FILE, fingerprint)
        if stored is None or not (out / "config.yaml").is_file():
            # A resumed run keeps the config.yaml it started with (evaluate reads it).
            save_yaml(recipe, out / "config.yaml")
        # What merc bundle / merc predict need to prepare new inputs as these were
        # (deterministic given the fingerprinted data, so a resume rewrites the same).
        write_input_record(out, input_record(raw, feature_specs(raw), stats is not None, STANDARDIZE_EPS), stats)
    tensors = to_tensors(data)
    per_seed, reused, resumed, seconds = _train_seeds(data, tensors, model, recipe, seeds, out, device, show_progress)
    results = {
        "model": model,
        "dataset": data.name,
        "modalities": "".join(mods),
        "seeds": list(seeds),
        **summarise(per_seed, seconds, reused, resumed),
    }
    if out is not None:
        _write_json(results, out / "results.json")
        write_imbalance_plot(out, seeds)
    return results


# -- leave-one-session-out cross-validation -------------------------------------------------------
#: How results.json of a ``--protocol loso`` run computes its headline ``std``.
LOSO_STD_OVER = "folds x seeds: sample std (ddof=1) over every (fold, seed) run"


def protocol_options(protocol: str, valid_share: float = DEFAULT_VALID_SHARE) -> dict[str, Any] | None:
    """The record of a run's evaluation protocol: ``None`` for the dataset's own splits.

    For ``loso``: ``{"name": "loso", "valid_share": ..., "split_seed": 0}``, what
    ``config.yaml`` (``data.protocol``) and the fingerprint hold.

    Raises:
        ConfigError: An unknown protocol, or a share outside ``(0, 1)``.
    """
    name = resolve_choice("protocol (--protocol)", protocol, PROTOCOLS)
    if name == "split":
        return None
    return {"name": name, "valid_share": check_valid_share(valid_share), "split_seed": DEFAULT_SPLIT_SEED}


def check_sessions(dataset: str, data_root: str | Path | None) -> None:
    """Refuse a registered dataset without session ids before any feature is computed.

    Reads the dataset's annotations only (for a dataset with generated features, those of
    the corpus it is built on); a dataset path is checked once loaded.

    Raises:
        DataError: A dialogue without a session ("loso needs session ids ...").
    """
    name = split_sequence_request(dataset)[0]
    if is_dataset_path(name):
        return
    spec = get_dataset_spec(name)
    annotations = load_dataset(spec.annotations_of or name, data_root=data_root, validate=False, show_progress=False)
    annotations.name = name
    session_folds(annotations)


def _protocol_of(recipe: Mapping[str, Any]) -> dict[str, Any]:
    protocol = (recipe.get("data") or {}).get("protocol")
    if not isinstance(protocol, Mapping) or protocol.get("name") != "loso":
        raise ConfigError(f"not a leave-one-session-out recipe (data.protocol is {protocol!r})")
    return dict(protocol)


def _check_stored_folds(out: Path, record: list[dict[str, Any]]) -> None:
    """Refuse to resume a LOSO folder whose ``folds.json`` holds other folds than this run makes."""
    path = out / FOLDS_FILE
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, OSError):
        stored = None
    if stored != record:
        raise RunFolderError(
            f"{path} holds other folds than this run makes (other dialogues or another validation draw); "
            "choose another --out, or rerun with --overwrite to discard it"
        )


def _run_loso(
    model: str,
    dataset: str | MercDataset,
    mods: Sequence[str],
    seeds: list[int],
    out: Path | None,
    recipe: dict[str, Any],
    options: DataOptions,
    data_root: str | Path | None,
    device: str | None,
    show_progress: bool,
    stored: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`_run` for ``--protocol loso``: every seed on every fold, into ``out/fold_<k>/``.

    Each fold is a dataset of its own (:func:`merc.data.protocols.fold_dataset`):
    standardisation statistics, class weights and plug-in schedules come from the
    fold's training dialogues only, the model is selected on the fold's validation
    dialogues, and the held-out session is scored once with the selected weights.
    """
    protocol = _protocol_of(recipe)
    raw = load_run_data(dataset, mods, data_root, show_progress)
    folds = session_folds(raw, protocol["valid_share"], protocol["split_seed"])
    fold_raws = [fold_dataset(raw, fold) for fold in folds]
    for fold_raw in fold_raws:
        check_trainable(fold_raw, options)
    recipe["data"]["dataset"] = raw.name
    # As in _run: options the model or a plug-in refuses fail before anything is written.
    model_for(fold_raws[0], model, dict(recipe.get("model") or {}))
    build_plugins(recipe, fold_raws[0])
    record = folds_record(folds)
    if out is not None:
        fingerprint = run_fingerprint(model, "".join(mods), seeds, normalised_recipe(recipe), raw, protocol)
        if stored is not None:
            _refuse_mismatch(out, stored, fingerprint)
        _check_stored_folds(out, record)
        if stored is None or "dataset" not in stored:
            atomic_write_json(out / FINGERPRINT_FILE, fingerprint)
        if stored is None or not (out / "config.yaml").is_file():
            save_yaml(recipe, out / "config.yaml")
        atomic_write_json(out / FOLDS_FILE, record)
    per_fold: list[tuple[Fold, list[dict[str, Any]], dict[str, Any]]] = []
    for fold, fold_raw in zip(folds, fold_raws, strict=True):
        k = fold.held_out_session
        stats = training_statistics(fold_raw) if options.standardize else None
        data = standardize_features(fold_raw, statistics=stats) if stats is not None else fold_raw
        fold_dir = out / f"{FOLD_PREFIX}{k}" if out is not None else None
        if fold_dir is not None:
            fold_dir.mkdir(exist_ok=True)
            remove_stale_temporaries(fold_dir)
        log.info(
            "loso fold %d: session %d held out (%s)", k, k, ", ".join(f"{s} {len(v)}" for s, v in fold.splits().items())
        )
        per_seed, reused, resumed, seconds = _train_seeds(
            data, to_tensors(data), model, recipe, seeds, fold_dir, device, show_progress
        )
        summary = {
            "model": model,
            "dataset": data.name,
            "modalities": "".join(mods),
            "seeds": list(seeds),
            "fold": k,
            "held_out_session": k,
            "dialogues": {split: len(ids) for split, ids in fold.splits().items()},
            "utterances": {split: sum(len(c) for c in convs) for split, convs in data.splits.items()},
            **summarise(per_seed, seconds, reused, resumed),
        }
        if fold_dir is not None:
            _write_json(summary, fold_dir / "results.json")
            write_imbalance_plot(fold_dir, seeds)
        per_fold.append((fold, per_seed, summary))
    results = {
        "model": model,
        "dataset": raw.name,
        "modalities": "".join(mods),
        "seeds": list(seeds),
        **summarise_loso([(summary, per_seed) for _, per_seed, summary in per_fold], protocol),
    }
    if out is not None:
        _write_json(results, out / "results.json")
    return results


def _pooled(values: Sequence[Mapping[str, Any]], key: str = "per_run") -> dict[str, dict[str, Any]]:
    """:func:`aggregate_seeds` of the headline metrics, its list of values named ``key``."""
    return {
        metric: {"mean": entry["mean"], "std": entry["std"], "n": len(entry["per_seed"]), key: entry["per_seed"]}
        for metric, entry in aggregate_seeds(values).items()
    }


def summarise_loso(
    folds: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]], protocol: Mapping[str, Any]
) -> dict[str, Any]:
    """The aggregate part of a LOSO run's ``results.json``.

    Args:
        folds: Per fold (in fold order) its summary (``fold_<k>/results.json``: ``fold``,
            ``held_out_session``, ``dialogues``, ``utterances``, ``timing``, ``test`` and
            ``valid`` over seeds) and its seeds' ``metrics.json`` contents.
        protocol: The protocol record (:func:`protocol_options`).

    Returns:
        - ``test`` / ``valid``: per headline metric (weighted F1, accuracy = WA, macro
          F1, UA) ``mean`` and ``std`` over every (fold, seed) run pooled (sample std,
          ``ddof=1``, ``n`` = folds x seeds; :data:`LOSO_STD_OVER`), and ``per_run``,
          the values in the order of ``runs``;
        - ``runs``: per (fold, seed) its selected epoch and test / valid metrics;
        - ``fold_means``: per split and metric the mean over folds of each fold's mean
          over seeds, ``std`` over the folds (``per_fold``);
        - ``seed_means``: per split and metric each seed's cross-validated score (its
          mean over the folds), ``mean`` and ``std`` over seeds (``per_seed``), the
          spread of the whole 5-fold estimate from one training seed to another;
        - ``folds``: per fold its held-out session, split sizes and mean ± std over seeds;
        - ``protocol`` and ``timing`` (summed over the folds).

        Every fold has every seed, so the three means are equal; only the stds differ.
    """
    runs: list[dict[str, Any]] = []
    for summary, per_seed in folds:
        for result in per_seed:
            runs.append(
                {
                    "fold": summary["fold"],
                    "seed": result["seed"],
                    "best_epoch": result["best_epoch"],
                    "epochs_run": result["epochs_run"],
                    "test": {k: result["test"][k] for k in HEADLINE_METRICS if k in result["test"]},
                    "valid": {k: result["valid"][k] for k in HEADLINE_METRICS if k in result["valid"]},
                }
            )
    seeds = [int(r["seed"]) for r in folds[0][1]] if folds else []
    out: dict[str, Any] = {
        "protocol": {
            **protocol,
            "folds": [int(summary["fold"]) for summary, _ in folds],
            "held_out": "session",
            "std_over": LOSO_STD_OVER,
        }
    }
    for split in ("test", "valid"):
        out[split] = _pooled([r[split] for r in runs])
    out["runs"] = runs
    out["fold_means"] = {}
    out["seed_means"] = {}
    for split in ("test", "valid"):
        fold_means = [{k: v["mean"] for k, v in summary[split].items()} for summary, _ in folds]
        out["fold_means"][split] = _pooled(fold_means, "per_fold")
        seed_means = [
            {k: statistics.fmean([r[split][k] for r in runs if r["seed"] == seed]) for k in runs[0][split]}
            for seed in seeds
        ]
        out["seed_means"][split] = aggregate_seeds(seed_means)
    out["folds"] = [
        {
            "fold": summary["fold"],
            "held_out_session": summary["held_out_session"],
            "dialogues": summary["dialogues"],
            "utterances": summary["utterances"],
            "test": summary["test"],
            "valid": summary["valid"],
            "per_seed": summary["per_seed"],
        }
        for summary, _ in folds
    ]
    timings = [summary["timing"] for summary, _ in folds]
    epoch_secs = [s for _, per_seed in folds for r in per_seed for s in r.get("epoch_seconds", [])]

    def run_names(key: str) -> list[str]:
        return [f"{FOLD_PREFIX}{s['fold']}/seed_{seed}" for s, _ in folds for seed in s["timing"][key]]

    out["timing"] = {
        "total_seconds": sum(t["total_seconds"] for t in timings),
        "this_run_seconds": sum(t["this_run_seconds"] for t in timings),
        "epoch_seconds_median": statistics.median(epoch_secs) if epoch_secs else None,
        "reused_runs": run_names("reused_seeds"),
        "resumed_runs": run_names("resumed_seeds"),
    }
    return out


def is_loso_run(recipe: Mapping[str, Any]) -> bool:
    """Whether a run's ``config.yaml`` is that of a ``--protocol loso`` run."""
    protocol = (recipe.get("data") or {}).get("protocol") if isinstance(recipe.get("data"), Mapping) else None
    return isinstance(protocol, Mapping) and protocol.get("name") == "loso"


def _train_seeds(
    data: MercDataset,
    tensors: dict[str, list[ConversationTensors]],
    model: str,
    recipe: dict[str, Any],
    seeds: Sequence[int],
    out: Path | None,
    device: str | None,
    show_progress: bool,
) -> tuple[list[dict[str, Any]], list[int], list[int], float]:
    """Every seed of one run folder ``out`` (``seed_<s>/``): ``(per_seed, reused, resumed, seconds)``.

    A finished seed is reused as it is, an unfinished one resumes from its checkpoint.
    """
    start = time.perf_counter()
    per_seed = []
    reused: list[int] = []
    resumed: list[int] = []
    for seed in seeds:
        seed_dir = out / f"seed_{seed}" if out is not None else None
        finished = _finished_seed(seed_dir, seed) if seed_dir is not None else None
        if finished is not None:
            per_seed.append(finished)
            reused.append(seed)
            log.info("seed %d already finished; reusing %s", seed, seed_dir)
            continue
        result = train_one_seed(data, tensors, model, recipe, seed, seed_dir, device, show_progress)
        if result.get("resumed_at_epoch"):
            resumed.append(seed)
        per_seed.append(result)
    return per_seed, reused, resumed, time.perf_counter() - start


def write_imbalance_plot(out: Path, seeds: Sequence[int]) -> Path | None:
    """``imbalance.png`` of a run folder from its seeds' histories (models with unimodal logits)."""
    histories = {}
    for seed in seeds:
        path = out / f"seed_{seed}" / "history.json"
        if path.is_file():
            histories[seed] = json.loads(path.read_text(encoding="utf-8"))
    return plot_imbalance(histories, out / IMBALANCE_PLOT)


def _load_weights(model: MercModel, path: Path) -> None:
    """Load selected weights into ``model``, every failure a :class:`CheckpointError`."""
    state = load_torch_file(path, "selected weights")
    try:
        check_state_dict(model, state)
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or ["?"])[0][:200]
        raise CheckpointError(
            f"{path}: the weights do not fit {model.model_name} with this dataset's dims and classes ({first}); "
            "the run folder holds another model's weights: train again with --overwrite"
        ) from None


def selected_trainers(run: Path, recipe: dict[str, Any], data: MercDataset, device: str = "cpu") -> dict[int, Trainer]:
    """An evaluation-only :class:`Trainer` per seed of a finished run, holding the
    weights selected on validation (``best.pt``, loaded with ``weights_only=True``)."""
    info = run_info(run, recipe)
    trainers: dict[int, Trainer] = {}
    for seed in info["seeds"]:
        seed_dir = run / f"seed_{seed}"
        weights = seed_dir / BEST_WEIGHTS
        if not weights.is_file() or not (seed_dir / "metrics.json").is_file():
            raise ConfigError(
                f"{seed_dir} has not finished (no {BEST_WEIGHTS} or metrics.json); "
                "rerun `merc train` with the same --out to finish it"
            )
        model = model_for(data, info["model_name"], dict(recipe.get("model") or {}))
        _load_weights(model, weights)
        empty: dict[str, list[ConversationTensors]] = {"train": [], "valid": [], "test": []}
        trainers[seed] = Trainer(
            model,
            empty,
            data.modalities,
            data.num_classes,
            TrainConfig(device=device, show_progress=False),
            label_names=data.label_names,
        )
    return trainers


def run_info(run: Path, recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The ``data`` section of a run's ``config.yaml``, checked to hold what ``merc train`` wrote.

    Raises:
        ConfigError: A key is missing or of the wrong type (an edited or foreign config).
    """
    where = run / "config.yaml"
    info = recipe.get("data")
    if not isinstance(info, Mapping):
        raise ConfigError(f"{where} has no data section; it was not written by `merc train` (train again)")
    missing = [k for k in ("model_name", "modalities", "seeds") if k not in info]
    if "dataset_arg" not in info and "dataset" not in info:
        missing.append("dataset")
    if missing:
        raise ConfigError(f"{where}: its data section lacks {', '.join(missing)}; restore the file or train again")
    if is_loso_run(recipe):
        raise ConfigError(
            f"{run} is a leave-one-session-out run (--protocol loso): its selected weights are per fold "
            f"({run / FOLD_PREFIX}K/seed_S), and this command works on runs of a dataset's own splits; "
            "use its results.json (or merc report), or train with --protocol split"
        )
    seeds = info["seeds"]
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"{where}: data.seeds must be a list of seeds, not {seeds!r}")
    checked = check_seeds(seeds, f"{where}: data.seeds")
    for key in ("model_name", "modalities"):
        if not isinstance(info[key], str):
            raise ConfigError(f"{where}: data.{key} must be a string, not {info[key]!r}")
    dataset = info.get("dataset_arg", info.get("dataset"))
    if not isinstance(dataset, str):
        raise ConfigError(f"{where}: data.dataset_arg must be a string, not {dataset!r}")
    return {
        **info,
        "seeds": checked,
        "dataset_arg": dataset,
        "modalities": "".join(parse_modalities(info["modalities"])),
    }


def recorded_inputs(
    run: Path, recipe: dict[str, Any], data_root: str | Path | None = None
) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]] | None]:
    """A run's ``inputs.json`` and standardisation statistics (:func:`write_input_record`).

    A run trained before merc recorded them gets them rebuilt from its training data,
    exactly as training computed them; the data must be the run's (its hash in
    ``fingerprint.json``).

    Raises:
        RunFolderError: The record is unreadable, or the data differ from the run's.
        DataError: The run's data cannot be loaded.
    """
    found = read_input_record(run)
    if found is not None:
        return found
    info = run_info(run, recipe)
    options = DataOptions.from_recipe(recipe)
    log.warning("%s was trained before merc recorded its inputs: rebuilding them from its training data", run)
    raw = load_run_data(info["dataset_arg"], parse_modalities(info["modalities"]), data_root, True)
    stored = read_fingerprint(run)
    if stored is not None:
        diffs = fingerprint_differences(
            stored,
            run_fingerprint(info["model_name"], info["modalities"], info["seeds"], normalised_recipe(recipe), raw),
        )
        if diffs:
            raise RunFolderError(
                f"cannot rebuild the inputs of {run}: {'; '.join(diffs[:3])}; give the data it was trained on"
            )
    stats = training_statistics(raw) if options.standardize else None
    return input_record(raw, feature_specs(raw), stats is not None, STANDARDIZE_EPS), stats


def open_run_folder(run_dir: str | Path, bundle_hint: bool = False) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """A finished or unfinished run folder's path, its ``config.yaml`` and :func:`run_info`.

    Raises:
        ConfigError: Not a folder, or a folder without ``config.yaml``.
    """
    run = Path(run_dir)
    hint = " or a bundle file" if bundle_hint else ""
    if not run.is_dir():
        raise ConfigError(f"{run} is not a folder; pass the --out of `merc train`{hint}")
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run} is not a merc run folder (no config.yaml); pass the --out of `merc train`")
    recipe = load_yaml(run / "config.yaml")
    return run, recipe, run_info(run, recipe)


def evaluate_run(run_dir: str | Path, data_root: str | Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """Re-score a finished run's selected weights on its validation and test splits.

    Rebuilds the dataset and models from ``config.yaml`` and loads each seed's
    ``best.pt`` with ``weights_only=True``. The dataset must be the one the run was
    trained on (its hash in ``fingerprint.json``), and ``config.yaml`` must agree with the
    fingerprint. Writes ``evaluation.json``.

    Raises:
        ConfigError: Not a run folder, an edited config, an unfinished seed.
        RunFolderError: The data or the config differ from the run's fingerprint; the
            folder is in use.
        CheckpointError: Selected weights unreadable or of another model.
    """
    run, recipe, info = open_run_folder(run_dir)
    device = check_device(device, "--device")
    TrainConfig.from_dict(recipe.get("training") or {})
    recipe["model"] = check_model_arguments(info["model_name"], recipe.get("model") or {})
    options = DataOptions.from_recipe(recipe)
    stored = read_fingerprint(run)
    mods = parse_modalities(info["modalities"])
    with RunLock(run):
        raw = load_run_data(info["dataset_arg"], mods, data_root, False)
        check_trainable(raw, options)
        if stored is None:
            log.warning(
                "%s has no %s (an older run): cannot check it is evaluated on its own data", run, FINGERPRINT_FILE
            )
        else:
            diffs = fingerprint_differences(
                stored,
                run_fingerprint(info["model_name"], "".join(mods), info["seeds"], normalised_recipe(recipe), raw),
            )
            if diffs:
                raise RunFolderError(
                    f"cannot evaluate {run}: {'; '.join(diffs[:3])}; evaluate it on the data and config.yaml it "
                    "was trained with, or train again with --overwrite"
                )
        data = standardize_features(raw, statistics=training_statistics(raw)) if options.standardize else raw
        tensors = to_tensors(data)
        per_seed: list[dict[str, Any]] = []
        for seed, trainer in selected_trainers(run, recipe, data, device).items():
            per_seed.append(
                {"seed": seed, "valid": trainer.evaluate(tensors["valid"]), "test": trainer.evaluate(tensors["test"])}
            )
        results = {
            "model": info["model_name"],
            "dataset": data.name,
            "modalities": info["modalities"],
            "seeds": info["seeds"],
            "test": aggregate_seeds([r["test"] for r in per_seed]),
            "valid": aggregate_seeds([r["valid"] for r in per_seed]),
        }
        _write_json(results, run / "evaluation.json")
    return results
